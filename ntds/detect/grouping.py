"""Grouping and the alert budget: alerts a person can read in a day.

Like Prometheus Alertmanager, but on the sensor and on the data's own clock.
Repeats of one (kind, host, application, pattern) are one group. A new group
waits `group_wait_s` to collect its repeats, then goes out as one alert: for
flow alerts `count` says how many flows it folds, for host-level alerts it is
the largest count the detector reported (ports, hosts, attempts); repeats after that are collected and sent
together at most every `group_interval_s`. A repeat of a higher tier than the
group has sent goes out at once: an escalation is never held back. A group
quiet for `group_interval_s` is forgotten (its next repeat starts a new group).
Both waits at 0 turn grouping off: every alert goes out on its own.

Beyond `budget_per_hour` alerts in one hour of data time, further alerts are
not sent one by one: they are folded into one `overflow` alert per hour that
counts them and names the largest groups. Nothing is dropped silently.

Everything is driven by the times of the flows (`advance`), never by the wall
clock, so `ntds-sensor score` on a capture produces exactly what `replay`
sent; a live sensor also calls `advance` with the wall clock when quiet.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass

from ntds.detect.behind import merge_flows
from ntds.detect.explain import duration
from ntds.detect.scoring import TIER_LABELS

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class GroupingOptions:
    group_wait_s: int = 60
    group_interval_s: int = 3600
    budget_per_hour: int = 60
    groups: int = 20_000

    MEANINGS = {
        "group_wait_s": "seconds a new group waits for repeats before its first alert goes out",
        "group_interval_s": "seconds between two alerts of one group (repeats are counted meanwhile); a group "
        "quiet this long is forgotten",
        "budget_per_hour": "alerts one sensor sends per hour of traffic; beyond it they are summarised in one "
        "overflow alert per hour",
        "groups": "groups tracked at once (the least recently active are sent and forgotten first)",
    }


class _Group:
    __slots__ = ("best", "count", "first", "last", "due_ms", "sent_tier", "sent", "touched_ms", "flows", "total")

    def __init__(self) -> None:
        self.best: dict | None = None
        self.count = 0
        self.first = self.last = ""
        self.due_ms = 0
        self.sent_tier = 0
        self.sent = False
        self.touched_ms = 0
        self.flows: list[dict] = []
        self.total = 0


ADDITIVE = ("flow", "intel")
"""Kinds whose alerts each stand for one flow, so a group's count is their sum (a detector's count grows)."""


def group_key(alert: dict) -> tuple[str, str, str, str]:
    return (alert["kind"], alert["src_ip"], alert["application"], alert["pattern"])


class Grouper:
    """Alerts in (with their data time), grouped alerts out."""

    def __init__(self, options: GroupingOptions | None = None) -> None:
        self.o = options or GroupingOptions()
        self.groups: OrderedDict[tuple, _Group] = OrderedDict()
        self.now_ms = 0
        self.hour = -1
        self.sent_this_hour = 0
        self.overflow: Counter = Counter()
        self.overflow_alerts: dict[tuple, dict] = {}
        self.overflow_first = self.overflow_last = ""
        self.evicted = 0
        self._sweep_ms = 0
        self._due: list[tuple[int, int, tuple]] = []  # (due time, tie-break, key): a lazy heap
        self._pushes = 0

    def _schedule(self, key: tuple, due_ms: int) -> None:
        self._pushes += 1
        heapq.heappush(self._due, (due_ms, self._pushes, key))

    # -- in ------------------------------------------------------------------------------

    def add(self, alert: dict, t_ms: int) -> list[dict]:
        """Take one alert (count >= 1); returns what goes out at once (with grouping off: the alert itself)."""
        if self.o.group_wait_s == 0 and self.o.group_interval_s == 0:
            return self._budgeted(alert)
        key = group_key(alert)
        g = self.groups.get(key)
        out: list[dict] = []
        if g is None:
            g = self.groups[key] = _Group()
            g.due_ms = t_ms + self.o.group_wait_s * 1000
            self._schedule(key, g.due_ms)
            if len(self.groups) > self.o.groups:
                old_key, old = self.groups.popitem(last=False)
                self.evicted += 1
                if old.count:
                    out += self._send(old, old_key)
        else:
            self.groups.move_to_end(key)
        g.touched_ms = max(g.touched_ms, t_ms)
        if g.best is None or (alert["tier"], alert["score"]) > (g.best["tier"], g.best["score"]):
            g.best = alert
        # flow alerts: flows folded; host-level alerts carry the detector's own count (ports, hosts, attempts),
        # which grows with each finding of a key: the group keeps the largest
        # (flow and intel alerts are one flow each: their counts add)
        g.count = g.count + alert["count"] if alert["kind"] in ADDITIVE else max(g.count, alert["count"])
        # the flows behind the group: every repeat's (a detector's later findings recount the earlier flows)
        flows, total = alert.get("flows", []), alert.get("flows_total", 0)
        g.flows = merge_flows(g.flows, flows)
        g.total = g.total + total if alert["kind"] in ADDITIVE else max(g.total, total)
        g.first = min(g.first, alert["first_seen"]) if g.first else alert["first_seen"]
        g.last = max(g.last, alert["last_seen"])
        if g.sent and alert["tier"] > g.sent_tier and g.due_ms > t_ms:
            g.due_ms = t_ms  # an escalation goes out with the next step of the clock
            self._schedule(key, t_ms)
        return out

    # -- out -----------------------------------------------------------------------------

    def advance(self, now_ms: int) -> list[dict]:
        """Alerts whose time has come by `now_ms` (data time; never goes backwards)."""
        if now_ms <= self.now_ms:
            return []
        self.now_ms = now_ms
        out = self._roll_hour(now_ms)
        while self._due and self._due[0][0] <= now_ms:
            due_ms, _, key = heapq.heappop(self._due)
            g = self.groups.get(key)
            if g is not None and g.count and g.due_ms == due_ms:
                out += self._send(g, key)
        if now_ms - self._sweep_ms >= 60_000:
            self._sweep_ms = now_ms
            quiet = now_ms - self.o.group_interval_s * 1000
            for key in [k for k, g in self.groups.items() if not g.count and g.touched_ms < quiet]:
                del self.groups[key]
            if len(self._due) > 4 * len(self.groups) + 1024:  # drop stale heap entries now and then
                self._due = [d for d in self._due if d[2] in self.groups and self.groups[d[2]].due_ms == d[0]]
                heapq.heapify(self._due)
        return out

    def close(self) -> list[dict]:
        """Everything still collected (the end of a capture, or a sensor stopping)."""
        out = []
        for key, g in list(self.groups.items()):
            if g.count:
                out += self._send(g, key)
        self.groups.clear()
        self._due.clear()
        return out + self._overflow_alert()

    def _send(self, g: _Group, key: tuple) -> list[dict]:
        alert = dict(g.best)
        alert["count"], alert["first_seen"], alert["last_seen"] = g.count, g.first, g.last
        alert["flows"], alert["flows_total"] = g.flows, max(g.total, len(g.flows))
        g.sent, g.sent_tier = True, max(g.sent_tier, alert["tier"])
        g.best, g.count, g.first, g.last, g.flows, g.total = None, 0, "", "", [], 0
        g.due_ms = self.now_ms + self.o.group_interval_s * 1000
        self._schedule(key, g.due_ms)
        return self._budgeted(alert)

    def _budgeted(self, alert: dict) -> list[dict]:
        if self.sent_this_hour >= self.o.budget_per_hour:
            self._fold(alert)
            return []
        self.sent_this_hour += 1
        return [alert]

    # -- the budget ------------------------------------------------------------------------

    def _roll_hour(self, now_ms: int) -> list[dict]:
        hour = now_ms // HOUR_MS
        if hour == self.hour:
            return []
        out = self._overflow_alert() if self.hour >= 0 else []
        self.hour, self.sent_this_hour = hour, 0
        return out

    def _fold(self, alert: dict) -> None:
        key = group_key(alert)
        self.overflow[key] += alert["count"]
        best = self.overflow_alerts.get(key)
        if best is None or alert["tier"] > best["tier"]:
            self.overflow_alerts[key] = alert
        self.overflow_first = min(self.overflow_first or alert["first_seen"], alert["first_seen"])
        self.overflow_last = max(self.overflow_last, alert["last_seen"])

    def _overflow_alert(self) -> list[dict]:
        if not self.overflow:
            return []
        total = sum(self.overflow.values())
        tier = max(a["tier"] for a in self.overflow_alerts.values())
        kinds = Counter()
        for (kind, *_), n in self.overflow.items():
            kinds[kind] += n
        largest = self.overflow.most_common(10)
        facts = [
            {
                "axis": kind,
                "value": float(n),
                "typical": 0.0,
                "score": float(self.overflow_alerts[(kind, host, app, pattern)]["tier"]),
                "text": f"{n} x {kind} from {host or 'several hosts'}"
                f"{f' ({app})' if app else ''}{f', {pattern}' if pattern else ''}: "
                f"{self.overflow_alerts[(kind, host, app, pattern)]['signature']}",
            }
            for (kind, host, app, pattern), n in largest
        ]
        first, last = self.overflow_first, self.overflow_last
        alert = {
            "kind": "overflow",
            "signature": f"Alert budget of {self.o.budget_per_hour} an hour exceeded: {total} more alerts in "
            f"{len(self.overflow)} groups summarised here ("
            + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            + ")",
            "first_seen": first,
            "last_seen": last,
            "count": total,
            "window_s": HOUR_MS // 1000,
            "src_ip": "",
            "src_port": 0,
            "dst_ip": "",
            "dst_port": 0,
            "protocol": 0,
            "application": "",
            "domain": "",
            "pattern": "",
            "flow_id": "",
            "community_id": "",
            "baseline_id": next(iter(self.overflow_alerts.values()))["baseline_id"],
            "baseline": "budget",
            "score": float(total),
            "tier": tier,
            "tier_label": TIER_LABELS[tier],
            "explanation": facts,
            "features": {},
            "flows": [],
            "flows_total": 0,
            "intel": [],
        }
        self.overflow.clear()
        self.overflow_alerts.clear()
        self.overflow_first = self.overflow_last = ""
        return [alert]


def describe(options: GroupingOptions) -> str:
    """The grouping in one sentence (check-config, logs)."""
    return (
        f"repeats grouped for {duration(options.group_wait_s * 1e6)}, then at most one alert per group every "
        f"{duration(options.group_interval_s * 1e6)}; at most {options.budget_per_hour} alerts an hour"
    )
