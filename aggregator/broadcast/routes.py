"""Routes and receivers: where alerts go, as plain configuration (Prometheus Alertmanager's model).

`aggregator.yaml` lists receivers (a name, a type and its options) and routes.
A route matches alerts on kind, minimum tier, sensor, application and host
(the responsible host, by address or network) and names one or more
receivers; every matching route applies. Its alerts are grouped by the labels
in `group_by`: a new group waits `group_wait_s` for more, then goes out as one
notification; later alerts of the group go out at most every
`group_interval_s`; alerts of the group still open (neither acknowledged nor
closed) are sent again every `repeat_interval_s` (0: never).

    receivers:
      - {name: soc, type: webhook, url: "https://soc.example/hooks/ntds", secret_file: /etc/ntds/webhook.secret}
      - {name: siem, type: syslog, host: 10.0.0.5, port: 514, protocol: tcp}
      - {name: oncall, type: email, smtp_host: mail.example, from: ntds@example, to: [soc@example]}
      - {name: filebeat, type: eve, path: /var/log/ntds/eve.json}
      - {name: elastic, type: file, format: ecs, path: /var/log/ntds/ecs.json}  # also eve, ocsf; webhook, syslog too
    routes:
      - {receivers: [filebeat]}                                  # everything
      - {match: {min_tier: 4}, receivers: [soc, oncall], group_by: [kind, src_ip]}
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABELS = ("kind", "src_ip", "dst_ip", "application", "sensor", "tier")
"""What group_by can name."""

RECEIVER_OPTIONS: dict[str, dict[str, tuple[type, Any]]] = {
    "webhook": {
        "url": (str, None),
        "secret_file": (str, None),
        "timeout_s": (int, 10),
        "format": (str, "ntds"),
        "max_redirects": (int, 0),
    },  # fmt: skip
    "syslog": {
        "host": (str, None),
        "port": (int, 514),
        "protocol": (str, "udp"),
        "facility": (int, 16),
        "timeout_s": (int, 10),
        "format": (str, "ntds"),
    },  # fmt: skip
    "email": {
        "smtp_host": (str, None),
        "smtp_port": (int, 25),
        "from": (str, None),
        "to": (list, None),
        "starttls": (str, "auto"),
        "ca_file": (str, ""),
        "username": (str, ""),
        "password_file": (str, ""),
        "timeout_s": (int, 10),
    },  # fmt: skip
    "eve": {"path": (str, None), "rotate_mb": (int, 100), "keep": (int, 5), "format": (str, "eve")},
    "file": {"path": (str, None), "rotate_mb": (int, 100), "keep": (int, 5), "format": (str, "eve")},
}
"""Per receiver type: option -> (type, default; None: required). `file` is `eve` under a name that fits its
other formats. `timeout_s` bounds a whole delivery (connect, send, answer), not each read; `max_redirects` is how
many redirects a webhook may follow (0: a redirect is a failed attempt)."""
FORMATS = {"webhook": ("ntds", "eve", "ecs", "ocsf"), "syslog": ("ntds", "eve", "ecs", "ocsf"),
           "eve": ("eve", "ecs", "ocsf"), "file": ("eve", "ecs", "ocsf")}  # fmt: skip
"""Per receiver type: the field sets it can send (`ntds`: the notification or structured data as is)."""
COMMON = {"name": (str, None), "type": (str, None), "rate_per_minute": (int, 60)}


@dataclass(frozen=True)
class ReceiverConfig:
    name: str
    type: str
    rate_per_minute: int
    options: dict


@dataclass(frozen=True)
class Route:
    index: int
    receivers: tuple[str, ...]
    kinds: tuple[str, ...] = ()
    min_tier: int = 0
    sensors: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    hosts: tuple = ()
    group_by: tuple[str, ...] = ("kind", "src_ip")
    group_wait_s: int = 30
    group_interval_s: int = 300
    repeat_interval_s: int = 4 * 3600
    networks: tuple = field(default=(), compare=False)

    def matches(self, alert: dict, sensor: str) -> bool:
        if self.kinds and alert.get("kind", "flow") not in self.kinds:
            return False
        if alert.get("tier", 0) < self.min_tier:
            return False
        if self.sensors and sensor not in self.sensors:
            return False
        if self.applications and alert.get("application") not in self.applications:
            return False
        if self.networks:
            try:
                ip = ipaddress.ip_address(alert.get("src_ip", ""))
            except ValueError:
                return False
            if not any(ip in n for n in self.networks if n.version == ip.version):
                return False
        return True

    def labels(self, alert: dict, sensor: str) -> dict:
        values = {**alert, "sensor": sensor}
        return {k: values.get(k, "") for k in self.group_by}


def _typed(where: str, key: str, value, kind: type):
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9):
        raise ValueError(f"{where}: {key} must be a whole number")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be text")
    if kind is list and (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}: {key} must be a list of text items")
    return value


def parse_receivers(items: list, base: Path) -> dict[str, ReceiverConfig]:
    """Validated receivers by name; ValueError names the first problem."""
    out: dict[str, ReceiverConfig] = {}
    for i, item in enumerate(items):
        where = f"receiver {i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        kind = item.get("type")
        if kind not in RECEIVER_OPTIONS:
            raise ValueError(f"{where}: type must be one of {', '.join(RECEIVER_OPTIONS)}")
        known = COMMON | RECEIVER_OPTIONS[kind]
        unknown = set(item) - set(known)
        if unknown:
            raise ValueError(f"{where}: unknown option {sorted(unknown)[0]!r} for a {kind} receiver")
        values = {}
        for key, (t, default) in known.items():
            if key not in item:
                if default is None:
                    raise ValueError(f"{where}: {kind} receivers need {key}")
                values[key] = default
            else:
                values[key] = _typed(where, key, item[key], t)
        name = values["name"]
        if not name or name in out:
            raise ValueError(f"{where}: name must be given once")
        for key in ("secret_file", "path", "ca_file", "password_file"):
            if values.get(key):
                p = Path(values[key])
                values[key] = str(p if p.is_absolute() else base / p)
        for key in ("secret_file", "ca_file", "password_file"):
            if values.get(key) and not Path(values[key]).is_file():
                raise ValueError(f"{where}: {key} {values[key]} does not exist")
        if kind == "webhook" and not values["url"].startswith(("http://", "https://")):
            raise ValueError(f"{where}: url must be http:// or https://")
        if kind == "syslog" and values["protocol"] not in ("udp", "tcp"):
            raise ValueError(f"{where}: protocol must be udp or tcp")
        if kind == "email" and values["starttls"] not in ("auto", "require", "never"):
            raise ValueError(f"{where}: starttls must be auto, require or never")
        if kind in FORMATS and values["format"] not in FORMATS[kind]:
            raise ValueError(f"{where}: format must be one of {', '.join(FORMATS[kind])} for a {kind} receiver")
        if "timeout_s" in values and values["timeout_s"] < 1:
            raise ValueError(f"{where}: timeout_s must be at least 1")
        if values.get("max_redirects", 0) > 10:
            raise ValueError(f"{where}: max_redirects must be 0..10")
        if values["rate_per_minute"] < 1:
            raise ValueError(f"{where}: rate_per_minute must be at least 1")
        options = {k: v for k, v in values.items() if k not in COMMON}
        out[name] = ReceiverConfig(name, kind, values["rate_per_minute"], options)
    return out


ROUTE_KEYS = {"match", "receivers", "group_by", "group_wait_s", "group_interval_s", "repeat_interval_s"}
MATCH_KEYS = {"kind", "min_tier", "sensor", "application", "host"}


def _strings(where: str, key: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(_typed(where, key, value, list))


def parse_routes(items: list, receivers: dict[str, ReceiverConfig]) -> list[Route]:
    out = []
    for i, item in enumerate(items):
        where = f"route {i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        unknown = set(item) - ROUTE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        names = _strings(where, "receivers", item.get("receivers", []))
        missing = [n for n in names if n not in receivers]
        if missing:
            raise ValueError(f"{where}: no receiver named {missing[0]!r}")
        match = item.get("match") or {}
        if not isinstance(match, dict) or set(match) - MATCH_KEYS:
            raise ValueError(f"{where}: match takes {', '.join(sorted(MATCH_KEYS))}")
        hosts = _strings(where, "host", match["host"]) if "host" in match else ()
        try:
            networks = tuple(ipaddress.ip_network(h, strict=False) for h in hosts)
        except ValueError:
            raise ValueError(f"{where}: match.host must be addresses or networks") from None
        group_by = _strings(where, "group_by", item.get("group_by", ["kind", "src_ip"]))
        if set(group_by) - set(LABELS):
            raise ValueError(f"{where}: group_by takes {', '.join(LABELS)}")
        min_tier = _typed(where, "min_tier", match.get("min_tier", 0), int)
        if min_tier > 5:
            raise ValueError(f"{where}: match.min_tier must be 0..5")
        out.append(Route(
            index=i, receivers=names, kinds=_strings(where, "kind", match["kind"]) if "kind" in match else (),
            min_tier=min_tier, sensors=_strings(where, "sensor", match["sensor"]) if "sensor" in match else (),
            applications=_strings(where, "application", match["application"]) if "application" in match else (),
            hosts=hosts, networks=networks, group_by=group_by,
            group_wait_s=_typed(where, "group_wait_s", item.get("group_wait_s", 30), int),
            group_interval_s=_typed(where, "group_interval_s", item.get("group_interval_s", 300), int),
            repeat_interval_s=_typed(where, "repeat_interval_s", item.get("repeat_interval_s", 4 * 3600), int),
        ))  # fmt: skip
    return out
