"""Validated YAML settings files: one declaration per key, one clear line per mistake.

Both `config/sensor.yaml` and `config/aggregator.yaml` are read through here, so
they fail the same way: unknown keys, wrong types, out-of-range numbers and
missing files name the file, the line and the key, and nothing starts
half-configured. Paths are relative to the settings file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.errors import InputError


@dataclass(frozen=True)
class Setting:
    """kind: str, int, list (of strings), choice (one of `choices`), path (a file or folder)."""

    kind: str
    default: Any
    meaning: str
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    must_exist: bool = False
    check: Callable[[Any], str | None] | None = None
    """Extra validation: returns a problem description, or None."""


def read_mapping(path: Path) -> tuple[dict, dict[str, int]]:
    """The file's top-level mapping and the line of each key."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read configuration: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise InputError(f"{path}{where}: not valid YAML ({problem})") from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict) or not isinstance(node, yaml.MappingNode):
        raise InputError(f"{path}: expected a mapping of settings (key: value lines)")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return raw, lines


def load(path: str | Path, settings: dict[str, Setting], skip_exists: frozenset[str] = frozenset()) -> dict:
    """Every setting's effective value (paths resolved); InputError on the first mistake."""
    p = Path(path)
    raw, lines = read_mapping(p)
    base = p.resolve().parent

    def fail(key: str, problem: str) -> InputError:
        where = f", line {lines[key]}" if key in lines else ""
        return InputError(f"{p}{where}: setting {key!r} {problem}")

    for key in raw:
        if key not in settings:
            where = f", line {lines[key]}" if key in lines else ""
            raise InputError(f"{p}{where}: unknown setting {key!r} (known: {', '.join(settings)})")
    out = {}
    missing = []  # reported after every value is known good: a typo matters more than an absent file
    for key, s in settings.items():
        value = raw.get(key, s.default)
        if s.kind in ("str", "path", "choice"):
            if not isinstance(value, str):
                raise fail(key, "must be text")
            if not value and s.default:
                raise fail(key, "must not be empty")
            if s.kind == "choice" and value not in s.choices:
                raise fail(key, f"must be one of {', '.join(s.choices)}, not {value!r}")
        elif s.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail(key, "must be a whole number")
            if s.low is not None and value < s.low:
                raise fail(key, f"must be at least {s.low}")
            if s.high is not None and value > s.high:
                raise fail(key, f"must be at most {s.high}")
        elif s.kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise fail(key, "must be a list of text items")
        if s.kind == "path" and value:
            value = Path(value) if Path(value).is_absolute() else base / value
            if s.must_exist and key not in skip_exists and not value.exists():
                missing.append(fail(key, f"names {value}, which does not exist"))
        if s.check is not None and value not in ("", None):
            problem = s.check(value)
            if problem:
                raise fail(key, problem)
        out[key] = value
    if missing:
        raise missing[0]
    return out


def describe(settings: dict[str, Setting], values: dict) -> str:
    """The effective configuration as YAML, each key with its meaning (for check-config)."""
    import yaml

    lines = []
    for key, s in settings.items():
        v = values[key]
        v = str(v) if isinstance(v, Path) else v
        dumped = yaml.safe_dump({key: v}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"# {s.meaning}\n{dumped}")
    return "\n".join(lines) + "\n"
