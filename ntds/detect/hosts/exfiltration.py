"""Exfiltration: a local host sending one external destination far more than it sends anyone as a rule.

Per (local host, external destination) the bytes sent (from the local side)
and received are kept in hourly buckets over a sliding day; per local host, the
largest daily volume it sent any destination on each of its recent days. A
pair is suspect when its last day's upload is above an absolute floor, above
`factor` times the host's own recent norm (the median of those daily maxima,
once the host has `min_history_days` of history; before that, `new_host_factor`
times the floor), and mostly one way (upload at least `ratio` times the
download). A slow leak spread over hours adds up in the day's
buckets; a host that backs up to the same cloud every night has that volume as
its norm and stays quiet.
"""

from __future__ import annotations

import statistics

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import Detector, Finding, Option, is_group, register, tiered
from ntds.flows.traffic import FlowTraffic

HOUR_MS = 3_600_000
DAY_HOURS = 24


class _Pair:
    __slots__ = ("up", "down", "flows", "hour", "first_ms", "last_ms", "reported_tier", "sent", "received")

    def __init__(self) -> None:
        self.up = [0] * DAY_HOURS  # bytes sent per hour of the sliding day (ring, indexed by hour % 24)
        self.down = [0] * DAY_HOURS
        self.flows = [0] * DAY_HOURS  # flows per hour: the alert's count is flows, not bytes
        self.sent = self.received = 0
        """Sums of `up` and `down`, kept as they change: every flow asks for them."""
        self.hour = -1  # the newest hour written
        self.first_ms = self.last_ms = 0
        self.reported_tier = 0

    def advance(self, hour: int) -> None:
        if self.hour < 0:
            self.hour = hour
            return
        for h in range(self.hour + 1, min(hour, self.hour + DAY_HOURS) + 1):
            k = h % DAY_HOURS
            self.sent -= self.up[k]
            self.received -= self.down[k]
            self.up[k] = self.down[k] = self.flows[k] = 0
        self.hour = max(self.hour, hour)

    def add(self, hour: int, up: int, down: int) -> None:
        k = hour % DAY_HOURS
        self.up[k] += up
        self.down[k] += down
        self.flows[k] += 1
        self.sent += up
        self.received += down


class _Host:
    __slots__ = ("days", "day", "day_max")

    def __init__(self) -> None:
        self.days: list[int] = []  # largest daily upload to one destination, recent days
        self.day = -1
        self.day_max = 0


@register
class Exfiltration(Detector):
    kind = "exfiltration"
    OPTIONS = {
        "floor_bytes": Option(100_000_000, "bytes one host must send one external destination in a day", 1),
        "factor": Option(10.0, "times the host's own usual daily maximum to one destination", 1),
        "ratio": Option(3.0, "upload must be this many times the download", 0),
        "history_days": Option(7, "days of each host's history kept for its norm", 1),
        "min_history_days": Option(2, "days of history before a host's own norm is trusted", 1),
        "new_host_factor": Option(5.0, "until then the threshold is this many times the floor", 1),
        "pairs": Option(100_000, "(host, destination) pairs tracked at once", 100),
        "hosts": Option(20_000, "local hosts with a history kept", 100),
    }
    TIERS = (1, 5, 25)  # the excess over the threshold

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.pairs_table = self.table(self.pairs)
        self.hosts_table = self.table(self.hosts)

    def _sides(self, flow: FlowTraffic) -> tuple[str, str, int, int] | None:
        """(local host, external destination, bytes sent by the local host, bytes received)."""
        src_local, dst_local = self.local(flow.src_ip), self.local(flow.dst_ip)
        if src_local == dst_local or is_group(flow.dst_ip) or is_group(flow.src_ip):
            return None
        if src_local:
            return flow.src_ip, flow.dst_ip, flow.bytes_fwd, flow.bytes_bwd
        return flow.dst_ip, flow.src_ip, flow.bytes_bwd, flow.bytes_fwd

    def route(self, flow: FlowTraffic) -> str:
        """The local host, whichever end it is: its uploads are counted per destination and over all of them."""
        sides = self._sides(flow)
        return sides[0] if sides else flow.src_ip

    def findings(self, flow: FlowTraffic) -> list[Finding]:
        sides = self._sides(flow)  # once for both steps: it is most of their cost
        if sides is None:
            return []
        self._learn(flow, sides)
        found = self._score(flow, sides)
        return [found] if found is not None else []

    def learn_one(self, flow: FlowTraffic) -> None:
        sides = self._sides(flow)
        if sides is not None:
            self._learn(flow, sides)

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        sides = self._sides(flow)
        return self._score(flow, sides) if sides is not None else None

    def _learn(self, flow: FlowTraffic, sides: tuple[str, str, int, int]) -> None:
        host, remote, up, down = sides
        hour = flow.start_ms // HOUR_MS
        p = self.pairs_table.get((host, remote), _Pair)
        p.advance(hour)
        p.add(hour, up, down)
        p.first_ms = p.first_ms or flow.start_ms
        p.last_ms = max(p.last_ms, flow.end_ms)
        h = self.hosts_table.get(host, _Host)
        day = hour // DAY_HOURS
        if day != h.day:
            if h.day >= 0:
                h.days = (h.days + [h.day_max])[-self.history_days :]
            h.day, h.day_max = day, 0
        h.day_max = max(h.day_max, p.sent)

    def _score(self, flow: FlowTraffic, sides: tuple[str, str, int, int]) -> Finding | None:
        host, remote, _, _ = sides
        p = self.pairs_table.rows.get((host, remote))
        h = self.hosts_table.rows.get(host)
        if p is None or h is None:
            return None
        sent, received = p.sent, p.received
        if sent < self.floor_bytes or sent < self.ratio * received:
            return None
        known = len(h.days) >= self.min_history_days
        norm = statistics.median(h.days) if h.days else 0
        threshold = max(self.floor_bytes, self.factor * norm) if known else self.floor_bytes * self.new_host_factor
        if sent < threshold:
            return None
        tier = tiered(sent / threshold, self.TIERS)
        if tier <= p.reported_tier:
            return None
        p.reported_tier = tier
        span = (p.last_ms - p.first_ms) / 1000
        usual = (
            f"usually at most {size(norm)} a day to one destination"
            if known
            else f"{len(h.days)} days of history, too few for a norm"
        )
        return Finding(
            kind=self.kind,
            src_ip=host,
            dst_ip=remote,
            protocol=flow.protocol,
            application=flow.application,
            first_ms=p.first_ms,
            last_ms=p.last_ms,
            count=sum(p.flows),
            window_s=DAY_HOURS * 3600,
            tier=tier,
            score=sent / threshold,
            signature=f"Exfiltration to {remote}: {size(sent)} sent in {duration(max(span, 1) * 1e6)}, "
            f"{size(received)} received",
            facts=[
                {
                    "what": "bytes sent",
                    "value": sent,
                    "typical": norm,
                    "score": sent / threshold,
                    "text": f"{size(sent)} sent to {remote} in the last day ({usual}; threshold {size(threshold)})",
                },
                {
                    "what": "upload/download",
                    "value": sent / max(received, 1),
                    "typical": self.ratio,
                    "score": sent / max(received, 1) / self.ratio,
                    "text": f"{size(sent)} up against {size(received)} down",
                },
            ],
            pattern=remote,
        )
