"""What every host-level detector is: a small streaming estimator over flows, with bounded state.

A detector sees every flow the sensor meters (single-packet and unanswered ones
too) as a `FlowTraffic`, in the order flows end. `learn_one` updates its state,
`score_one` says what that flow made the detector conclude about its key (a
`Finding`, or nothing), and `findings` = learn and score in one step. Every table a
detector keeps is a `BoundedTable`: a flood of random sources evicts the
least recently seen keys and counts them, it never exhausts memory.

Each detector declares its options (default and meaning) once; the sensor's
`detectors:` setting overrides them, `check-config` prints them, and the
contract test in tests/test_detectors.py runs over the registry.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from ntds.flows.traffic import FlowTraffic
from ntds.networks import matcher

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58


@dataclass
class Finding:
    """What a detector concluded about one host: becomes an alert of kind `kind`."""

    kind: str
    src_ip: str
    """The responsible host."""
    first_ms: int
    last_ms: int
    count: int
    """Attempts, connections, names or packets behind the finding (the detector says which)."""
    window_s: int
    tier: int
    score: float
    signature: str
    """One line a person reads first: what, who, how much."""
    facts: list[dict] = field(default_factory=list)
    """Explanation items: {"what", "value", "typical", "score", "text"} (text with units)."""
    dst_ip: str = ""
    dst_port: int = 0
    protocol: int = 0
    application: str = ""
    domain: str = ""
    pattern: str = ""
    """What alerts of this kind and host are grouped on besides them (a port, a destination, a domain)."""


@dataclass(frozen=True)
class Option:
    default: Any
    meaning: str
    low: float | None = None

    def check(self, where: str, value: Any) -> None:
        """ValueError naming the option if `value` is not of the default's type or below `low`."""
        if isinstance(self.default, list):
            if not isinstance(value, list) or not all(isinstance(x, type(self.default[0])) for x in value):
                raise ValueError(f"{where} must be a list like {self.default[:3]}")
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(self.default, int) and not (number and float(value).is_integer()):
            raise ValueError(f"{where} must be a whole number")
        if isinstance(self.default, float) and not number:
            raise ValueError(f"{where} must be a number")
        if self.low is not None and value < self.low:
            raise ValueError(f"{where} must be at least {self.low:g}")
        if value > 1e12:
            raise ValueError(f"{where} is out of range")


class BoundedTable:
    """A least-recently-used dict with a size cap; evictions are counted, never silent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: OrderedDict = OrderedDict()
        self.evicted = 0

    def get(self, key: Hashable, make: Callable[[], Any]):
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = make()
            if len(self.rows) > self.limit:
                self.rows.popitem(last=False)
                self.evicted += 1
        else:
            self.rows.move_to_end(key)
        return row

    def pop(self, key: Hashable) -> None:
        self.rows.pop(key, None)

    def __len__(self) -> int:
        return len(self.rows)


class Detector(ABC):
    """Base of every host-level detector (registered in `DETECTORS`)."""

    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Option]] = {}
    """Options of this detector: name -> default and meaning (sensor.yaml `detectors:`)."""

    def __init__(self, local: Callable[[str], bool] | None = None, **options: Any) -> None:
        unknown = set(options) - set(self.OPTIONS) - {"enabled"}
        if unknown:
            raise ValueError(f"{self.kind}: unknown option {sorted(unknown)[0]!r} (known: {', '.join(self.OPTIONS)})")
        for k, v in options.items():
            if k != "enabled":
                self.OPTIONS[k].check(f"{self.kind}.{k}", v)
        self.options = {k: options.get(k, o.default) for k, o in self.OPTIONS.items()}
        for k, v in self.options.items():
            self.__dict__[k] = v
        self.local = local or matcher()
        self.tables: list[BoundedTable] = []

    def table(self, limit: int) -> BoundedTable:
        t = BoundedTable(limit)
        self.tables.append(t)
        return t

    @property
    def evicted(self) -> int:
        return sum(t.evicted for t in self.tables)

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.tables)

    @abstractmethod
    def learn_one(self, flow: FlowTraffic) -> None:
        """Take one finished flow into the state."""

    @abstractmethod
    def score_one(self, flow: FlowTraffic) -> Finding | None:
        """What the state now says about this flow's key (after learn_one)."""

    def counted(self, flow: FlowTraffic, finding: Finding) -> bool:
        """Whether `flow`, one of the responsible host's flows within the finding's time, is one the finding
        counted (it is listed behind the alert). By default: the peer, port and protocol the finding names."""
        host = finding.src_ip
        if finding.dst_ip and (flow.dst_ip if flow.src_ip == host else flow.src_ip) != finding.dst_ip:
            return False
        if finding.dst_port and finding.dst_port not in (flow.dst_port, flow.src_port):
            return False
        return not finding.protocol or flow.protocol == finding.protocol

    def route(self, flow: FlowTraffic) -> Hashable:
        """What this flow's part of the state is kept under: every table of the detector is keyed so that flows
        with the same route meet in the same rows, and only those. Analysis workers (ntds.detect.workers) give
        each route to one process, so a detector's view of a host, a pair or a domain stays whole however many
        processes share the work. By default the flow's source: the host that scans, guesses or tunnels."""
        return flow.src_ip

    def findings(self, flow: FlowTraffic) -> list[Finding]:
        self.learn_one(flow)
        found = self.score_one(flow)
        return [found] if found is not None else []


DETECTORS: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    DETECTORS[cls.kind] = cls
    return cls


def tiered(value: float, levels: tuple[float, float, float]) -> int:
    """The documented severity mapping of a detector: tier 3, 4 or 5 as `value` passes each level."""
    return 5 if value >= levels[2] else 4 if value >= levels[1] else 3 if value >= levels[0] else 0


@lru_cache(maxsize=1 << 16)
def address(ip: str):
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


@lru_cache(maxsize=1 << 16)
def is_group(ip: str) -> bool:
    """Multicast, broadcast or unspecified: nobody's peer, no scan target. Cached: every detector asks it of
    every flow's addresses (uncached it was a tenth of a replay's time)."""
    a = address(ip)
    if a is None:
        return True
    if a.version == 4 and (int(a) & 0xFF) == 0xFF:  # a /24's broadcast address (mostly)
        return True
    return a.is_multicast or a.is_unspecified


@lru_cache(maxsize=1 << 16)
def prefix(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address lies in: where a sweep concentrates."""
    a = address(ip)
    if a is None:
        return ip
    bits = 24 if a.version == 4 else 64
    return str(ipaddress.ip_network(f"{a}/{bits}", strict=False))


SYN, RST, ACK = 2, 4, 16


def flag_probe(flow: FlowTraffic) -> bool:
    """A TCP flow opened by a packet with neither SYN, ACK nor RST: FIN, NULL and XMAS scans (nmap -sF, -sN,
    -sX) and other odd flag mixes. No TCP stack opens a connection so, and every packet after a SYN carries ACK,
    so no conversation, whole or split, begins with one."""
    return flow.protocol == TCP and flow.first_flags >= 0 and not flow.first_flags & (SYN | RST | ACK)


def failed_attempt(flow: FlowTraffic) -> bool:
    """An attempt that got nothing: unanswered, refused (reset without data), or a TCP handshake that never
    carried data (a SYN scan's open ports), and every flag probe. Zeek's scan detection counts the same
    failures."""
    if flag_probe(flow):
        return True
    if not flow.opens:
        return False
    if not flow.answered:
        return True
    return flow.protocol == TCP and flow.payload == 0
