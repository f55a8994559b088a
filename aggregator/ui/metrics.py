"""Prometheus metrics of the aggregator, read from the store at each scrape (`prometheus_client`).

The store is the truth (the receiver, the broadcaster and the UI are separate
threads or processes), so the metrics are computed from it on demand rather
than counted in one process: a scrape of the UI sees what `serve` stored.
Label values are sensor ids, alert kinds, receiver names and fixed words
(login outcomes), never strings from traffic or from login attempts.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from aggregator.manager import Manager
from aggregator.receiver import BUSY_EPISODES_KEY, BUSY_SINCE_KEY
from aggregator.sensors import describe
from aggregator.store import Store


class StoreCollector:
    def __init__(self, store: Store, manager: Manager) -> None:
        self.store = store
        self.manager = manager

    def collect(self):
        db = self.store.db
        stored = CounterMetricFamily("ntds_messages_stored", "messages stored, by type", labels=["type"])
        for kind, n in db.execute("SELECT type, COUNT(*) FROM messages GROUP BY type"):
            stored.add_metric([kind], n)
        yield stored
        rejected = CounterMetricFamily("ntds_messages_rejected", "messages and connections refused, by reason",
                                       labels=["reason"])  # fmt: skip
        for reason, n in db.execute("SELECT reason, count FROM rejections"):
            rejected.add_metric([reason], n)
        yield rejected
        now = time.time()
        seen = GaugeMetricFamily("ntds_sensor_last_seen_seconds", "seconds since each sensor's last message",
                                 labels=["sensor"])  # fmt: skip
        packets = CounterMetricFamily("ntds_sensor_packets", "packets the sensor's capture delivered",
                                      labels=["sensor"])  # fmt: skip
        drops = CounterMetricFamily("ntds_sensor_packets_dropped", "packets the capture dropped", labels=["sensor"])
        backlog = GaugeMetricFamily("ntds_sensor_spool_messages", "messages waiting in the sensor's spool",
                                    labels=["sensor"])  # fmt: skip
        for row in self.store.sensors():
            s = describe(row, now)
            seen.add_metric([s["sensor"]], s["age_s"])
            packets.add_metric([s["sensor"]], s["packets_seen"] or 0)
            drops.add_metric([s["sensor"]], s["packets_dropped"] or 0)
            backlog.add_metric([s["sensor"]], s["backlog"] or 0)
        yield from (seen, packets, drops, backlog)
        alerts = CounterMetricFamily("ntds_alerts", "alerts stored, by kind and tier", labels=["kind", "tier"])
        for kind, tier, n in db.execute("SELECT kind, tier, COUNT(*) FROM alerts GROUP BY kind, tier"):
            alerts.add_metric([kind, str(tier)], n)
        yield alerts
        outbox = GaugeMetricFamily("ntds_broadcast_deliveries", "outbox deliveries by receiver and status",
                                   labels=["receiver", "status"])  # fmt: skip
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone():
            for receiver, status, n in db.execute("SELECT receiver, status, COUNT(*) FROM outbox GROUP BY 1, 2"):
                outbox.add_metric([receiver, status], n)
        yield outbox
        since = float(self.store.state(BUSY_SINCE_KEY) or 0)
        busy = GaugeMetricFamily("ntds_receiver_busy_seconds", "how long the receiver has been behind (every batch "
                                 "full; sensors hold their resends), 0 while it keeps up")  # fmt: skip
        busy.add_metric([], max(0.0, now - since) if since else 0.0)
        yield busy
        episodes = CounterMetricFamily("ntds_receiver_busy_episodes", "times the receiver fell behind")
        episodes.add_metric([], int(self.store.state(BUSY_EPISODES_KEY) or 0))
        yield episodes
        silences = GaugeMetricFamily("ntds_silences_active", "silences in force")
        silences.add_metric([], len(self.manager.silences(active_only=True)))
        yield silences
        counted = self.manager.counters()
        logins = CounterMetricFamily("ntds_ui_logins", "alert manager login attempts, by outcome (wrong: a wrong "
                                     "password or an unknown name; locked: refused unchecked while locked)",
                                     labels=["outcome"])  # fmt: skip
        for outcome in ("ok", "wrong", "locked", "expired", "spent"):
            logins.add_metric([outcome], counted.get("login_" + outcome, 0))
        yield logins
        lockouts = CounterMetricFamily("ntds_ui_login_lockouts", "locks started on accounts, addresses or browsers")
        lockouts.add_metric([], counted.get("login_lockouts", 0))
        yield lockouts
        locked = GaugeMetricFamily("ntds_ui_login_locked", "accounts, addresses and browsers locked now",
                                   labels=["kind"])  # fmt: skip
        kinds = {"account": 0, "address": 0, "device": 0}
        for lock in self.manager.locks():
            kind = lock["key"].partition(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            locked.add_metric([kind], n)
        yield locked


def exposition(store: Store, manager: Manager) -> bytes:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, manager))
    return generate_latest(registry)
