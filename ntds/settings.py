"""Validated YAML settings files: each setting declared once, one clear line per mistake.

A program's configuration is a frozen dataclass whose fields are declared with
`setting(...)`: type, default, meaning, range, and whether a running program
can take a new value on SIGHUP. Loading, `check-config`'s description and the
reload rules all come from those declarations, so a new setting is one line.

Both `config/sensor.yaml` and `config/aggregator.yaml` are read through here, so
they fail the same way: unknown keys, wrong types, out-of-range numbers and
missing files name the file, the line and the key, and nothing starts
half-configured. Paths are relative to the settings file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from ntds.errors import InputError


@dataclass(frozen=True)
class Setting:
    """kind: str, int, list (of strings), choice (one of `choices`), path (a file or folder), mapping (of
    names to settings of their own, checked by `check`), records (a list of mappings, checked by `check`)."""

    kind: str
    default: Any
    meaning: str
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    must_exist: bool = False
    reload: bool = False
    """A running program takes a new value on SIGHUP; otherwise a change needs a restart."""
    secret: bool = False
    """A key file: not needed with --insecure (plain text on loopback)."""
    check: Callable[[Any], str | None] | None = None
    """Extra validation: returns a problem description, or None."""


def setting(kind: str, default: Any, meaning: str, **options: Any) -> Any:
    """A dataclass field declaring one setting (see `Setting` for the options)."""
    return field(metadata={"setting": Setting(kind, default, meaning, **options)})


class Settings:
    """Base of a program's configuration dataclass: `load`, `describe`, `reloaded`."""

    path: Path
    KIND: ClassVar[str] = "configuration"

    @classmethod
    def declared(cls) -> dict[str, Setting]:
        """Every setting in declaration order."""
        return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}

    @classmethod
    def load(cls, path: str | Path, insecure: bool = False) -> Self:
        """The validated configuration; with insecure (the --insecure flag) key files are not needed."""
        declared = cls.declared()
        skip = frozenset(k for k, s in declared.items() if s.secret) if insecure else frozenset()
        values = load_values(path, declared, skip)
        return cls(path=Path(path), **cls.finish(Path(path), values))

    @classmethod
    def finish(cls, path: Path, values: dict) -> dict:
        """Checks that involve several settings, or conversions; the values as the dataclass takes them."""
        return values

    def describe(self) -> str:
        """The effective configuration as YAML, each key with its meaning (for check-config)."""
        import yaml

        lines = []
        for key, s in self.declared().items():
            v = getattr(self, key)
            v = str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v
            v = "" if v is None else v
            dumped = yaml.safe_dump({key: v}, default_flow_style=True, width=1000).strip()[1:-1]
            restart = "" if s.reload else " (restart to change)"
            lines.append(f"# {s.meaning}{restart}\n{dumped}")
        return "\n".join(lines) + "\n"

    def reloaded(self, new: Self) -> tuple[Self, list[str]]:
        """(what a running program uses after SIGHUP, the changed settings that wait for a restart)."""
        declared = self.declared()
        changed = [k for k in declared if getattr(new, k) != getattr(self, k)]
        fixed = [k for k in changed if not declared[k].reload]
        take = {k: getattr(new, k) for k in changed if declared[k].reload}
        return dataclasses.replace(self, **take), fixed  # type: ignore[type-var]


MAX_FILE_BYTES = 1024 * 1024
"""A settings file is a few KB; anything bigger is a mistake (or an attack), refused before parsing."""


def read_mapping(path: Path) -> tuple[dict, dict[str, int]]:
    """The file's top-level mapping and the line of each key."""
    import yaml

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: a configuration file of over {MAX_FILE_BYTES // 1024} KB is not one")
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
    except RecursionError:
        raise InputError(f"{path}: not a configuration (nested too deeply)") from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict) or not isinstance(node, yaml.MappingNode):
        raise InputError(f"{path}: expected a mapping of settings (key: value lines)")
    lines: dict[str, int] = {}
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode):
            if k.value in lines:
                raise InputError(
                    f"{path}, line {k.start_mark.line + 1}: setting {k.value!r} is given twice (first on line "
                    f"{lines[k.value]})"
                )
            lines[k.value] = k.start_mark.line + 1
    return raw, lines


def load_values(path: str | Path, settings: dict[str, Setting], skip_exists: frozenset[str] = frozenset()) -> dict:
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
        elif s.kind == "records":
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise fail(key, "must be a list of mappings")
        elif s.kind == "mapping":
            if value is None:
                value = {}
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise fail(key, "must be a mapping of names to settings")
        elif s.kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise fail(key, "must be a list of text items")
            value = list(value)
        if s.kind == "path" and value:
            value = Path(value) if Path(value).is_absolute() else base / value
            if s.must_exist and key not in skip_exists and not value.exists():
                missing.append(fail(key, f"names {value}, which does not exist"))
        if s.check is not None and value not in ("", None, {}, []):
            problem = s.check(value)
            if problem:
                raise fail(key, problem)
        out[key] = value
    if missing:
        raise missing[0]
    return out
