"""Scans: one source trying many ports of one host (port scan), or one port of many hosts (host sweep).

Only failed attempts count (unanswered, refused, or a handshake that never
carried data), over a sliding window, as in Zeek's scan detection (15 ports or
25 hosts in 5 minutes by default; references, not limits). A sweep must either
concentrate on one /24 (or /64) or be almost all failures over many hosts, so a
peer-to-peer client's fan-out across the Internet, which partly succeeds and
spreads over many networks, stays quiet. Multicast and broadcast destinations
are never targets. UDP probes count as TCP ones do: an unanswered UDP flow is
a failed attempt.

Two more flavours:
- **Flag probes** (FIN, NULL, XMAS and other mixes without SYN, ACK or RST,
  `base.flag_probe`): no TCP stack opens a conversation so, so `probes`
  distinct ports (or hosts) probed that way make a scan however few.
- **Slow scans and small sweeps**: over `slow_window_s` (an hour) the same
  counts, and for a sweep `few_hosts` hosts of one network, make a scan when
  nearly all of the source's attempts there failed (`slow_failed`): nmap's
  -T0/-T1 timings wait minutes between probes, and a sweep of a dozen hosts
  that all fail is probing, not use.
"""

from __future__ import annotations

from collections import Counter

from ntds.detect.explain import duration
from ntds.detect.hosts.base import (
    Detector,
    Finding,
    Option,
    failed_attempt,
    flag_probe,
    is_group,
    prefix,
    register,
    tiered,
)
from ntds.flows.traffic import FlowTraffic
from ntds.networks import protocol_name


def _finding(det: Detector, flow: FlowTraffic, w, n: int, threshold: int, tier: int, what: str, text: str,
             signature: str, strength: float, **where) -> Finding:  # fmt: skip
    """A scan finding: `n` failures (ports or hosts) in the window `w` against the detector's `threshold`."""
    return Finding(
        kind=det.kind, src_ip=flow.src_ip, protocol=flow.protocol, first_ms=w.first_ms, last_ms=w.last_ms, count=n,
        window_s=det.window_s, tier=tier, score=strength, signature=signature,
        facts=[{"what": what, "value": n, "typical": threshold, "score": strength, "text": text}], **where,
    )  # fmt: skip


def _story(det: Detector, w, why: str, probes: int, noun: str, head: str, text: str, tried: str,
           plain: str = "") -> tuple[str, str]:  # fmt: skip
    """A scan's explanation and signature by what made it: flag probes, a slow count (or a small one, all
    failed), or failures in the window. `head` names it ("Port scan of 10.0.0.1"), `tried` says how much."""
    if why == "flag probes":
        return (f"{probes} {noun}s probed with TCP flags no stack opens a connection with (FIN, NULL, XMAS: no SYN, "
                f"ACK or RST; threshold {det.probes}); {text}",
                f"{head}: {probes} {noun}s probed by FIN, NULL or XMAS")  # fmt: skip
    if why == "slow":
        slow = (w.last_ms - w.first_ms) / 1000 > det.window_s
        return text, f"{'Slow ' + head[0].lower() + head[1:] if slow else head}: {tried}, {w.failed_share():.0%} failed"
    return text, f"{head}: {tried}{', ' + plain if plain else ''}"


def _next_level(threshold: float, levels: tuple[float, float, float], reported_tier: int) -> float:
    """The count the next tier needs (tier 3 first, then 4, then 5; nothing beyond 5)."""
    if reported_tier >= 5:
        return float("inf")
    return threshold * levels[max(reported_tier - 2, 0)]


class _Window:
    """Distinct items (ports or hosts) with their last time, pruned to a sliding window.

    Stale items are dropped when the table has doubled since the last pruning, and a table over `cap` is cut to
    three quarters of it (the newest): both cost O(1) per item over time, where pruning at every item past a
    fixed size made a busy source's every flow cost a sort of the whole table."""

    __slots__ = ("seen", "first_ms", "last_ms", "attempts", "failures", "reported_tier", "probed", "prune_at",
                 "adds", "counted")  # fmt: skip

    def __init__(self) -> None:
        self.seen: dict = {}
        self.probed: dict = {}
        """Items tried with a flag probe (a subset of `seen`)."""
        self.first_ms = self.last_ms = 0
        self.attempts = self.failures = 0
        self.reported_tier = 0
        self.prune_at = 64
        self.adds = 0
        """Items added or refreshed: each can raise any count by at most one."""
        self.counted = (0, 0, 0, 0)
        """(time, items within the longest window then, the most of them in one network, adds then) of the last
        full count (host sweeps)."""

    def add(self, item, t_ms: int, window_ms: int, cap: int, probe: bool = False) -> None:
        if self.seen and t_ms - self.last_ms > window_ms:  # quiet for a whole window: a new episode
            self.seen, self.probed, self.reported_tier, self.attempts, self.failures = {}, {}, 0, 0, 0
            self.prune_at = 64
        if not self.seen:
            self.first_ms = t_ms
        self.seen[item] = t_ms
        self.adds += 1
        if probe and len(self.probed) < cap:
            self.probed[item] = t_ms
        if t_ms > self.last_ms:
            self.last_ms = t_ms
        if len(self.seen) >= self.prune_at or len(self.seen) > cap:
            horizon = self.last_ms - window_ms
            self.seen = {k: v for k, v in self.seen.items() if v >= horizon}
            if len(self.seen) > cap:  # keep the newest: counts above cap read as "at least 3/4 of cap"
                self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1])[-(cap * 3 // 4) :])
            self.first_ms = min(self.seen.values(), default=t_ms)
            self.prune_at = max(64, 2 * len(self.seen))

    def count(self, now_ms: int, window_ms: int) -> int:
        horizon = now_ms - window_ms
        return sum(1 for v in self.seen.values() if v >= horizon)

    def failed_share(self) -> float:
        return self.failures / max(self.attempts, 1)


SLOW = {
    "slow_window_s": Option(3600, "longer window for slow scans, seconds (0: none)", 0),
    "slow_failed": Option(0.9, "share of the source's attempts there that must have failed, in the longer window", 0),
}
PROBES = Option(5, "distinct targets probed with TCP flags no stack opens with (FIN, NULL, XMAS) that make a scan", 1)


def _why(n: int, probes: int, threshold: int, probe_threshold: int, slow: bool) -> tuple[float, str]:
    """The strength of a scan and what made it: failures in the window, flag probes, or the slow count."""
    by_probes = probes / probe_threshold
    by_count = n / threshold
    if by_probes > by_count:
        return by_probes, "flag probes"
    return by_count, "slow" if slow else "failures"


class _Scan(Detector):
    """What both scans count: the source's failed attempts."""

    def counted(self, flow: FlowTraffic, finding: Finding) -> bool:
        return flow.src_ip == finding.src_ip and failed_attempt(flow) and super().counted(flow, finding)


@register
class PortScan(_Scan):
    kind = "port-scan"
    OPTIONS = {
        "ports": Option(15, "distinct ports of one host with failed attempts that make a scan", 2),
        "probes": PROBES,
        "window_s": Option(300, "sliding window, seconds", 1),
        **SLOW,
        "sources": Option(20_000, "(source, target) pairs tracked at once (the least recent are dropped)", 100),
    }
    TIERS = (1, 100 / 15, 1000 / 15)  # x ports: tier 3; about 100: tier 4; about 1,000: tier 5

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.pairs = self.table(self.sources)

    def learn_one(self, flow: FlowTraffic) -> None:
        key = (flow.src_ip, flow.dst_ip, flow.protocol)
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            w = self.pairs.rows.get(key) if flow.opens else None
            if w is not None:  # an attempt that worked, to a host this source has failed on
                w.attempts += 1
            return
        w = self.pairs.get(key, _Window)
        keep = max(self.window_s, self.slow_window_s) * 1000
        w.add(flow.dst_port, flow.start_ms, keep, max(4 * self.ports, 2000), flag_probe(flow))
        w.attempts += 1
        w.failures += 1

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            return None
        key = (flow.src_ip, flow.dst_ip, flow.protocol)
        w = self.pairs.rows.get(key)
        probes = len(w.probed) if w is not None else 0
        if w is None or (len(w.seen) < _next_level(self.ports, self.TIERS, w.reported_tier)
                         and probes < _next_level(self.probes, self.TIERS, w.reported_tier)):  # fmt: skip
            return None  # the cheap bound: not even counting stale entries could reach the next tier
        n = w.count(flow.start_ms, self.window_s * 1000)
        slow = False
        if n < self.ports and self.slow_window_s > self.window_s and w.failed_share() >= self.slow_failed:
            n, slow = w.count(flow.start_ms, self.slow_window_s * 1000), True
        strength, why = _why(n, probes, self.ports, self.probes, slow)
        tier = tiered(strength, self.TIERS)
        if tier <= w.reported_tier:
            return None
        w.reported_tier = tier
        ports = sorted(w.seen)
        proto = protocol_name(flow.protocol)
        span = (w.last_ms - w.first_ms) / 1000
        window = duration((self.slow_window_s if slow else self.window_s) * 1e6)
        text = (f"{n} distinct {proto} ports failed in {duration(max(span, 1) * 1e6)} (threshold {self.ports} in "
                f"{window}{f', {w.failed_share():.0%} of attempts failed' if slow else ''}); ports "
                f"{', '.join(map(str, ports[:8]))}{', ...' if len(ports) > 8 else ''}")  # fmt: skip
        text, signature = _story(self, w, why, probes, "port", f"Port scan of {flow.dst_ip}", text,
                                 f"{n} {proto} ports tried", "none answered with data")  # fmt: skip
        return _finding(self, flow, w, n, self.ports, tier, "ports", text, signature, strength=strength,
                        dst_ip=flow.dst_ip, pattern=flow.dst_ip)  # fmt: skip


@register
class HostSweep(_Scan):
    kind = "host-sweep"
    OPTIONS = {
        "hosts": Option(25, "distinct hosts of one network (/24, /64) with failed attempts on one port", 2),
        "wide_hosts": Option(200, "distinct hosts anywhere, when nearly all attempts failed", 2),
        "wide_failed": Option(0.9, "share of failed attempts a wide sweep needs", 0),
        "few_hosts": Option(10, "distinct hosts of one network, in the longer window, when nearly all failed", 2),
        "probes": PROBES,
        "window_s": Option(300, "sliding window, seconds", 1),
        **SLOW,
        "sources": Option(20_000, "(source, port) pairs tracked at once", 100),
    }
    TIERS = (1, 4, 40)  # 25 hosts: tier 3; 100: tier 4; 1,000: tier 5

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.keys = self.table(self.sources)

    def learn_one(self, flow: FlowTraffic) -> None:
        probe = flag_probe(flow)
        if not (flow.opens or probe) or is_group(flow.dst_ip):
            return
        w = self.keys.get((flow.src_ip, flow.dst_port, flow.protocol), _Window)
        if failed_attempt(flow):
            keep = max(self.window_s, self.slow_window_s) * 1000
            w.add(flow.dst_ip, flow.start_ms, keep, max(4 * self.wide_hosts, 4000), probe)
            w.failures += 1
        w.attempts += 1

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not failed_attempt(flow) or is_group(flow.dst_ip):
            return None
        w = self.keys.rows.get((flow.src_ip, flow.dst_port, flow.protocol))
        if w is None:
            return None
        probes = len(w.probed)
        failed_share = w.failed_share()
        slow_ok = self.slow_window_s > self.window_s and failed_share >= self.slow_failed
        least = min(self.hosts, self.few_hosts) if slow_ok else self.hosts
        need = _next_level(least, self.TIERS, w.reported_tier)
        if probes < _next_level(self.probes, self.TIERS, w.reported_tier):
            if len(w.seen) < need:
                return None
            # A source failing on thousands of hosts (a P2P client) would be recounted at every flow: since the
            # last count, later in time, each count can have grown by at most the items added since (the wide
            # one only matters when nearly all attempts failed).
            then, wide, concentrated, adds = w.counted
            most = wide if failed_share >= self.wide_failed else concentrated
            if flow.start_ms >= then and most + w.adds - adds < need:
                return None
            horizon = flow.start_ms - max(self.window_s, self.slow_window_s) * 1000
            hosts = [h for h, t in w.seen.items() if t >= horizon]
            by_net = Counter(map(prefix, hosts))
            w.counted = (flow.start_ms, len(hosts), max(by_net.values(), default=0), w.adds)
        n, where, slow = self._count(w, flow.start_ms, self.window_s, failed_share)
        if n < self.hosts and slow_ok:
            n, where, slow = self._count(w, flow.start_ms, self.slow_window_s, failed_share)
            n, slow = (n, True) if n >= self.few_hosts else (0, False)
            threshold = self.few_hosts
        else:
            threshold = self.hosts
            n = n if n >= self.hosts else 0
        strength, why = _why(n, probes, threshold, self.probes, slow)
        tier = tiered(strength, self.TIERS)
        if tier <= w.reported_tier:
            return None
        w.reported_tier = tier
        proto = protocol_name(flow.protocol)
        span = (w.last_ms - w.first_ms) / 1000
        window = duration((self.slow_window_s if slow else self.window_s) * 1e6)
        text = (f"{n} hosts {where} failed on {proto} port {flow.dst_port} in {duration(max(span, 1) * 1e6)} "
                f"(threshold {threshold} in {window}; {failed_share:.0%} of {w.attempts} attempts failed)")  # fmt: skip
        text, signature = _story(self, w, why, probes, "host", f"Host sweep on {proto} port {flow.dst_port}", text,
                                 f"{n} hosts {where} tried")  # fmt: skip
        return _finding(self, flow, w, max(n, probes), threshold, tier, "hosts", text, signature, strength=strength,
                        dst_port=flow.dst_port, pattern=str(flow.dst_port))  # fmt: skip

    def _count(self, w: _Window, now_ms: int, window_s: int, failed_share: float) -> tuple[int, str, bool]:
        """Hosts that failed within `window_s`: those of the busiest network, or all of them for a wide sweep."""
        horizon = now_ms - window_s * 1000
        hosts = [h for h, t in w.seen.items() if t >= horizon]
        by_net: dict[str, int] = {}
        for h in hosts:
            net = prefix(h)
            by_net[net] = by_net.get(net, 0) + 1
        net, concentrated = max(by_net.items(), key=lambda kv: kv[1], default=("", 0))
        if len(hosts) >= self.wide_hosts and failed_share >= self.wide_failed and concentrated < self.hosts:
            return len(hosts), f"across {len(by_net)} networks", False
        return concentrated, f"in {net}", False
