"""Scans: one source trying many ports of one host (port scan), or one port of many hosts (host sweep).

Only failed attempts count (unanswered, refused, or a handshake that never
carried data), over a sliding window, as in Zeek's scan detection (15 ports or
25 hosts in 5 minutes by default; references, not limits). A sweep must either
concentrate on one /24 (or /64) or be almost all failures over many hosts, so a
peer-to-peer client's fan-out across the Internet, which partly succeeds and
spreads over many networks, stays quiet. Multicast and broadcast destinations
are never targets.
"""

from __future__ import annotations

from ntds.detect.explain import duration
from ntds.detect.hosts.base import (
    Detector,
    Finding,
    Option,
    failed_attempt,
    is_group,
    prefix,
    register,
    tiered,
)
from ntds.flows.traffic import FlowTraffic
from ntds.networks import protocol_name


def _finding(det: Detector, flow: FlowTraffic, w, n: int, threshold: int, tier: int, what: str, text: str,
             signature: str, **where) -> Finding:  # fmt: skip
    """A scan finding: `n` failures (ports or hosts) in the window `w` against the detector's `threshold`."""
    return Finding(
        kind=det.kind, src_ip=flow.src_ip, protocol=flow.protocol, first_ms=w.first_ms, last_ms=w.last_ms, count=n,
        window_s=det.window_s, tier=tier, score=n / threshold, signature=signature,
        facts=[{"what": what, "value": n, "typical": threshold, "score": n / threshold, "text": text}], **where,
    )  # fmt: skip


def _next_level(threshold: float, levels: tuple[float, float, float], reported_tier: int) -> float:
    """The count the next tier needs (tier 3 first, then 4, then 5; nothing beyond 5)."""
    if reported_tier >= 5:
        return float("inf")
    return threshold * levels[max(reported_tier - 2, 0)]


class _Window:
    """Distinct items (ports or hosts) with their last time, pruned to a sliding window."""

    __slots__ = ("seen", "first_ms", "last_ms", "attempts", "failures", "reported_tier")

    def __init__(self) -> None:
        self.seen: dict = {}
        self.first_ms = self.last_ms = 0
        self.attempts = self.failures = 0
        self.reported_tier = 0

    def add(self, item, t_ms: int, window_ms: int, cap: int) -> None:
        if self.seen and t_ms - self.last_ms > window_ms:  # quiet for a whole window: a new episode
            self.seen, self.reported_tier, self.attempts, self.failures = {}, 0, 0, 0
        if not self.seen:
            self.first_ms = t_ms
        self.seen[item] = t_ms
        self.last_ms = max(self.last_ms, t_ms)
        if len(self.seen) > cap or (len(self.seen) % 64 == 0):
            horizon = self.last_ms - window_ms
            self.seen = {k: v for k, v in self.seen.items() if v >= horizon}
            if len(self.seen) > cap:  # keep the newest: counts above cap read as "at least cap"
                self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1])[-cap:])
            self.first_ms = min(self.seen.values(), default=t_ms)

    def count(self, now_ms: int, window_ms: int) -> int:
        horizon = now_ms - window_ms
        return sum(1 for v in self.seen.values() if v >= horizon)


class _Scan(Detector):
    """What both scans count: the source's failed attempts."""

    def counted(self, flow: FlowTraffic, finding: Finding) -> bool:
        return flow.src_ip == finding.src_ip and failed_attempt(flow) and super().counted(flow, finding)


@register
class PortScan(_Scan):
    kind = "port-scan"
    OPTIONS = {
        "ports": Option(15, "distinct ports of one host with failed attempts that make a scan", 2),
        "window_s": Option(300, "sliding window, seconds", 1),
        "sources": Option(20_000, "(source, target) pairs tracked at once (the least recent are dropped)", 100),
    }
    TIERS = (1, 100 / 15, 1000 / 15)  # x ports: tier 3; about 100: tier 4; about 1,000: tier 5

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.pairs = self.table(self.sources)

    def learn_one(self, flow: FlowTraffic) -> None:
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            return
        w = self.pairs.get((flow.src_ip, flow.dst_ip, flow.protocol), _Window)
        w.add(flow.dst_port, flow.start_ms, self.window_s * 1000, max(4 * self.ports, 2000))

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            return None
        key = (flow.src_ip, flow.dst_ip, flow.protocol)
        w = self.pairs.rows.get(key)
        if w is None or len(w.seen) < _next_level(self.ports, self.TIERS, w.reported_tier):
            return None  # the cheap bound: not even counting stale entries could reach the next tier
        n = w.count(flow.start_ms, self.window_s * 1000)
        tier = tiered(n / self.ports, self.TIERS)
        if tier <= w.reported_tier:
            return None
        w.reported_tier = tier
        ports = sorted(w.seen)
        proto = protocol_name(flow.protocol)
        span = (w.last_ms - w.first_ms) / 1000
        text = (f"{n} distinct {proto} ports failed in {duration(max(span, 1) * 1e6)} (threshold {self.ports} in "
                f"{duration(self.window_s * 1e6)}); ports {', '.join(map(str, ports[:8]))}"
                f"{', ...' if len(ports) > 8 else ''}")  # fmt: skip
        return _finding(self, flow, w, n, self.ports, tier, "ports", text,
                        f"Port scan of {flow.dst_ip}: {n} {proto} ports tried, none answered with data",
                        dst_ip=flow.dst_ip, pattern=flow.dst_ip)  # fmt: skip


@register
class HostSweep(_Scan):
    kind = "host-sweep"
    OPTIONS = {
        "hosts": Option(25, "distinct hosts of one network (/24, /64) with failed attempts on one port", 2),
        "wide_hosts": Option(200, "distinct hosts anywhere, when nearly all attempts failed", 2),
        "wide_failed": Option(0.9, "share of failed attempts a wide sweep needs", 0),
        "window_s": Option(300, "sliding window, seconds", 1),
        "sources": Option(20_000, "(source, port) pairs tracked at once", 100),
    }
    TIERS = (1, 4, 40)  # 25 hosts: tier 3; 100: tier 4; 1,000: tier 5

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.keys = self.table(self.sources)

    def learn_one(self, flow: FlowTraffic) -> None:
        if not flow.opens or is_group(flow.dst_ip):
            return
        w = self.keys.get((flow.src_ip, flow.dst_port, flow.protocol), _Window)
        if failed_attempt(flow):
            w.add(flow.dst_ip, flow.start_ms, self.window_s * 1000, max(4 * self.wide_hosts, 4000))
            w.failures += 1
        w.attempts += 1

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            return None
        w = self.keys.rows.get((flow.src_ip, flow.dst_port, flow.protocol))
        if w is None or len(w.seen) < _next_level(self.hosts, self.TIERS, w.reported_tier):
            return None
        horizon = flow.start_ms - self.window_s * 1000
        hosts = [h for h, t in w.seen.items() if t >= horizon]
        by_net: dict[str, int] = {}
        for h in hosts:
            net = prefix(h)
            by_net[net] = by_net.get(net, 0) + 1
        net, concentrated = max(by_net.items(), key=lambda kv: kv[1], default=("", 0))
        failed_share = w.failures / max(w.attempts, 1)
        wide = len(hosts) >= self.wide_hosts and failed_share >= self.wide_failed
        if concentrated >= self.hosts:
            n, where = concentrated, f"in {net}"
        elif wide:
            n, where = len(hosts), f"across {len(by_net)} networks"
        else:
            return None
        tier = tiered(n / self.hosts, self.TIERS)
        if tier <= w.reported_tier:
            return None
        w.reported_tier = tier
        proto = protocol_name(flow.protocol)
        span = (w.last_ms - w.first_ms) / 1000
        text = (f"{n} hosts {where} failed on {proto} port {flow.dst_port} in {duration(max(span, 1) * 1e6)} "
                f"({failed_share:.0%} of {w.attempts} attempts failed)")  # fmt: skip
        return _finding(self, flow, w, n, self.hosts, tier, "hosts", text,
                        f"Host sweep on {proto} port {flow.dst_port}: {n} hosts {where} tried",
                        dst_port=flow.dst_port, pattern=str(flow.dst_port))  # fmt: skip
