"""A week of flows from two sensors whose every number is known by construction.

Each flow is drawn from a short list of conversation kinds (web to the
Internet, a download from the Internet, DNS to the site's server, a transfer
between two peers, a probe nobody answers, SSDP chatter), so the test knows
its traffic class, its client, its country and whether it was answered
without asking the sensor's rules. `expected()` computes the report's numbers
from those facts in plain Python; the report code computes them from the
archive with Dask. Tests compare the two.

Data spans Sunday 2026-11-15 (week 46) to Monday 2026-11-23 (week 48), sensor
tap-a has no data on Wednesday 2026-11-18 and sensor tap-b only sends on three
days, so the week boundary, an empty day and two sensors are all in play.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aggregator.archive import Archive
from aggregator.store import Store
from ntds.flows.traffic import FlowTraffic
from ntds.wire import schema as wire
from sensor.geo import GeoIP
from sensor.summaries import Summariser
from sensor.traffic_classes import TrafficClasses

LOCAL_NETS = ["10.1.0.0/16"]
SERVER = "10.1.0.2"
HOSTS = [f"10.1.0.{i}" for i in range(10, 16)]
REMOTE = {"8.8.8.8": "US", "81.2.69.160": "GB", "200.1.1.1": "CO", "203.0.113.9": "AU"}
GEO_CSV = "\n".join(f"{ip},{ip},{cc}" for ip, cc in REMOTE.items()) + "\n"
WEEK = "2026-W47"
FIRST = date(2026, 11, 16)
INTERVAL_S = 900
DAYS = {
    "tap-a": [date(2026, 11, 15) + timedelta(days=i) for i in range(9) if i != 3],
    "tap-b": [date(2026, 11, 16), date(2026, 11, 20), date(2026, 11, 22)],
}
HEALTH = {"tap-a": [(date(2026, 11, 15), 2), (date(2026, 11, 19), 5), (date(2026, 11, 23), 9)]}
"""(day, cumulative spool drops) health messages: 3 drops fall in week 47."""
DROPS_PER_DAY = 7


def _ms(day: int, hour: int) -> int:
    return int(datetime(2026, 11, 16 + day, hour, tzinfo=UTC).timestamp() * 1000)


FINDINGS = [
    # (sensor, kind, host, target, port, count, tier, day, hour): host-level alerts as the detectors send them
    ("tap-a", "port-scan", "10.1.0.13", "10.1.0.2", 0, 120, 4, 1, 9),
    ("tap-a", "port-scan", "10.1.0.13", "10.1.0.14", 0, 30, 3, 1, 10),
    ("tap-a", "host-sweep", "10.1.0.13", "", 445, 80, 3, 2, 9),
    ("tap-b", "port-scan", "203.0.113.9", "10.1.0.11", 0, 1500, 5, 4, 3),
    ("tap-a", "beacon", "10.1.0.12", "81.2.69.160", 443, 40, 4, 2, 12),
    ("tap-a", "beacon", "10.1.0.12", "81.2.69.160", 443, 90, 5, 3, 12),
    ("tap-a", "brute-force", "10.1.0.15", "10.1.0.2", 22, 60, 3, 5, 23),
]
"""Host-level alerts of week 47, by construction: the report's scanners and beacons are checked against these."""


def host_alerts() -> list[tuple[str, dict]]:
    from ntds.detect.alerts import host_alert
    from ntds.detect.hosts.base import Finding

    out = []
    for sensor, kind, host, target, port, count, tier, day, hour in FINDINGS:
        f = Finding(kind=kind, src_ip=host, first_ms=_ms(day, hour), last_ms=_ms(day, hour) + 600_000, count=count,
                    window_s=300, tier=tier, score=tier + count / 10_000, signature=f"{kind} by {host}",
                    facts=[{"what": "interval" if kind == "beacon" else "count", "value": 300.0 + count,
                            "typical": 0.0, "score": 1.0, "text": f"{count} of them"}],
                    dst_ip=target, dst_port=port, protocol=6, pattern=f"{target}:{port}")  # fmt: skip
        out.append((sensor, host_alert(f, "scenario baseline")))
    return out


@dataclass
class Truth:
    """One flow and what it is by construction."""

    sensor: str
    flow: FlowTraffic
    tier: int | None
    cls: str
    client_is_src: bool
    unanswered: str | None
    country: str | None
    score: float


def _flow(rng, t_ms, src, dst, sport, dport, proto, pf, bf, pb, bb, app, opens=True) -> FlowTraffic:
    return FlowTraffic(t_ms, src, dst, sport, dport, proto, pf, bf, pb, bb, app, opens)


def flows() -> list[Truth]:
    rng = random.Random(47)
    out: list[Truth] = []
    for sensor, days in DAYS.items():
        for day in days:
            base = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
            for _ in range(rng.randint(40, 70)):
                t = base + rng.randrange(0, 86_400_000)
                h = rng.choice(HOSTS)
                kind = rng.randrange(8)
                tier = rng.choice([0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5])
                score = round(rng.uniform(0, 10), 3)
                if kind == 0:  # web to the Internet
                    r = rng.choice(list(REMOTE))
                    f = _flow(rng, t, h, r, 40000 + rng.randrange(999), 443, 6, 10, 1500, 12, 9000, "TLS")
                    out.append(Truth(sensor, f, tier, "external", True, None, REMOTE[r], score))
                elif kind == 1:  # the remote end spoke first (NFStream orientation: src = remote)
                    r = rng.choice(list(REMOTE))
                    f = _flow(rng, t, r, h, 443, 40000 + rng.randrange(999), 6, 30, 40_000, 20, 1200, "QUIC")
                    out.append(Truth(sensor, f, tier, "external", False, None, REMOTE[r], score))
                elif kind == 2:  # DNS to the site's server
                    f = _flow(rng, t, h, SERVER, 50000 + rng.randrange(999), 53, 17, 1, 70, 1, 150, "DNS")
                    out.append(Truth(sensor, f, tier, "local_service", True, None, None, score))
                elif kind == 3:  # a transfer between peers
                    p = rng.choice([x for x in HOSTS if x != h])
                    n = rng.randrange(1000, 90_000)
                    f = _flow(rng, t, h, p, 45000 + rng.randrange(999), 445, 6, 20, n, 15, n // 7, "SMB")
                    out.append(Truth(sensor, f, tier, "peer_to_peer", True, None, None, score))
                elif kind == 4:  # a peer that does not answer
                    p = rng.choice([x for x in HOSTS if x != h])
                    f = _flow(rng, t, h, p, 46000, 22, 6, 1, 60, 0, 0, "Unknown")
                    out.append(Truth(sensor, f, None, "peer_to_peer", True, "p2p_one_way", None, score))
                elif kind == 5:  # SSDP search, multicast, nobody answers
                    f = _flow(rng, t, h, "239.255.255.250", 50000, 1900, 17, 1, 160, 0, 0, "SSDP")
                    out.append(Truth(sensor, f, None, "other", True, "ssdp_no_answer", None, score))
                elif kind == 6:  # a SYN to the Internet, unanswered
                    r = rng.choice(list(REMOTE))
                    f = _flow(rng, t, h, r, 47000, 8080, 6, 2, 120, 0, 0, "HTTP")
                    out.append(Truth(sensor, f, tier, "external", True, "unanswered", REMOTE[r], score))
                else:  # the tail of a split TCP conversation: one-way but not an attempt
                    r = rng.choice(list(REMOTE))
                    f = _flow(rng, t, h, r, 48000, 443, 6, 3, 180, 0, 0, "TLS", opens=False)
                    out.append(Truth(sensor, f, tier, "external", True, None, REMOTE[r], score))
    out.sort(key=lambda x: (x.sensor, x.flow.start_ms))
    return out


def flow_id(x: Truth) -> str:
    f = x.flow
    return f"{f.src_ip}-{f.dst_ip}-{f.src_port}-{f.dst_port}-{f.protocol}"


def alert_body(x: Truth) -> dict:
    """A flow alert as a version 2 sensor sent it, upgraded as the aggregator upgrades it."""
    f = x.flow
    return wire.upgrade_body(
        "alert",
        {
            "time": datetime.fromtimestamp(f.start_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
            "flow_id": f"{f.src_ip}-{f.dst_ip}-{f.src_port}-{f.dst_port}-{f.protocol}",
            "src_ip": f.src_ip,
            "src_port": f.src_port,
            "dst_ip": f.dst_ip,
            "dst_port": f.dst_port,
            "protocol": f.protocol,
            "application": f.application,
            "baseline": "application",
            "score": x.score,
            "tier": x.tier,
            "tier_label": f"tier {x.tier}",
            "explanation": [{"axis": "volume", "value": float(f.bytes_fwd), "typical": 100.0, "score": x.score}],
        },
    )


def build_archive(folder: Path, min_alert_tier: int = 3) -> tuple[Store, Archive, list[Truth]]:
    """Summarise the flows per sensor as the sensor does, send them through the wire codec into a
    store, and export the archive."""
    truth = flows()
    geo_path = folder / "geo.csv"
    geo_path.write_text(GEO_CSV)
    store = Store(folder / "store.db")
    for sensor in DAYS:
        s = Summariser(TrafficClasses(LOCAL_NETS, [SERVER]), GeoIP(geo_path), INTERVAL_S)
        messages: list[wire.Message] = []

        def send(kind: str, body: dict, created: str, sensor: str = sensor, messages: list = messages) -> None:
            m = wire.Message(kind, sensor, len(messages) + 1, created, body)
            messages.append(wire.decode(wire.encode(m)))

        for day, dropped in HEALTH.get(sensor, []):
            body = dict(wire.EXAMPLES["health"], spool_dropped=dict.fromkeys(wire.DROP_ORDER, 0) | {"alert": dropped})
            send("health", body, f"{day.isoformat()}T12:00:00Z")
        mine = [x for x in truth if x.sensor == sensor]
        for i, day in enumerate(DAYS[sensor], 1):
            for x in mine:
                if datetime.fromtimestamp(x.flow.start_ms / 1000, UTC).date() == day:
                    s.add(x.flow, x.tier)
                    if x.tier is not None and x.tier >= min_alert_tier:
                        send("alert", alert_body(x), wire.now_iso())
            s.capture(1000 * i, DROPS_PER_DAY * i, 3)
            for body in s.close():
                send("summary", body, wire.now_iso())
        for owner, body in host_alerts():
            if owner == sensor:
                send("alert", body, wire.now_iso())
        store.store(messages)
    archive = Archive(folder / "archive")
    archive.export(store, today=date(2026, 11, 24))
    return store, archive, truth


def add_stats(store: Store, n: int) -> None:
    """Population statistics (what `baseline learn` reads) from one more sensor, tap-stats, in the week."""
    messages = []
    for i in range(n):
        body = json.loads(json.dumps(wire.EXAMPLES["stats"]))
        body["interval_start"] = f"2026-11-{17 + i % 5:02d}T{i % 24:02d}:00:00Z"
        messages.append(wire.decode(wire.encode(wire.Message("stats", "tap-stats", i + 1, wire.now_iso(), body))))
    store.store(messages)


def expected(truth: list[Truth], sensors: list[str] | None = None) -> dict:
    """The report's numbers for week 47, from the construction facts alone."""
    days = [FIRST + timedelta(days=i) for i in range(7)]
    prev = [FIRST - timedelta(days=7 - i) for i in range(7)]

    def day_of(x: Truth) -> date:
        return datetime.fromtimestamp(x.flow.start_ms / 1000, UTC).date()

    picked = [x for x in truth if sensors is None or x.sensor in sensors]
    week = [x for x in picked if day_of(x) in days]
    e: dict = {"per_sensor": defaultdict(lambda: defaultdict(int)), "hours": defaultdict(set)}
    throughput = {
        c: {"bytes_up": [0] * 7, "bytes_down": [0] * 7} for c in ("external", "local_service", "peer_to_peer")
    }
    apps: dict[str, int] = defaultdict(int)
    prev_apps: dict[str, int] = defaultdict(int)
    tiers_per_day = [[0] * 7 for _ in range(6)]
    unanswered = {k: {"flows": [0] * 7, "bytes": [0] * 7} for k in ("ssdp_no_answer", "p2p_one_way", "unanswered")}
    pairs: dict = defaultdict(lambda: {"flows": 0, "bytes": 0, "days": set(), "one_way": 0, "two_way": 0})
    countries: dict = defaultdict(lambda: {"flows": 0, "bytes_in": 0, "bytes_out": 0, "max_tier": 0})
    for x in picked:
        if day_of(x) in prev:
            prev_apps[x.flow.application] += 1
    for x in week:
        f, d = x.flow, days.index(day_of(x))
        ps = e["per_sensor"][x.sensor]
        ps["flows"] += 1
        ps["bytes"] += f.bytes_fwd + f.bytes_bwd
        ps["packets"] += f.packets_fwd + f.packets_bwd
        e["hours"][x.sensor].add(f.start_ms // 3_600_000)
        up, down = (f.bytes_fwd, f.bytes_bwd) if x.client_is_src else (f.bytes_bwd, f.bytes_fwd)
        if x.cls in throughput:
            throughput[x.cls]["bytes_up"][d] += up
            throughput[x.cls]["bytes_down"][d] += down
        apps[f.application] += 1
        if x.tier is not None:
            tiers_per_day[x.tier][d] += 1
        if x.unanswered:
            unanswered[x.unanswered]["flows"][d] += 1
            unanswered[x.unanswered]["bytes"][d] += f.bytes_fwd
        if x.cls == "peer_to_peer":
            p = pairs[tuple(sorted([f.src_ip, f.dst_ip], key=lambda ip: int(ip.split(".")[-1])))]
            p["flows"] += 1
            p["bytes"] += f.bytes_fwd + f.bytes_bwd
            p["days"].add(d)
            p["one_way" if f.packets_bwd == 0 else "two_way"] += 1
        if x.country:
            c = countries[x.country]
            c["flows"] += 1
            c["bytes_in"] += down
            c["bytes_out"] += up
            if x.tier is not None:
                c["max_tier"] = max(c["max_tier"], x.tier)
    e["throughput"] = throughput
    e["apps"], e["prev_apps"] = dict(apps), dict(prev_apps)
    e["tiers_per_day"] = tiers_per_day
    e["unanswered"] = unanswered
    e["pairs"] = dict(pairs)
    e["countries"] = dict(countries)
    flows = [(x.tier, x.score, x.flow.start_ms, "flow", flow_id(x)) for x in week if x.tier is not None and x.tier >= 3]
    hosts = [(tier, tier + count / 10_000, _ms(day, hour), kind, host)
             for sensor, kind, host, _, _, count, tier, day, hour in FINDINGS
             if sensors is None or sensor in sensors]  # fmt: skip
    e["rarest"] = [(kind, who, tier) for tier, _, _, kind, who in sorted(
        flows + hosts, key=lambda a: (-a[0], -a[1], a[2]))[:20]]  # fmt: skip
    e["drops"] = {s: DROPS_PER_DAY * sum(1 for d in DAYS[s] if d in days) for s in DAYS}
    return e
