"""Per-sensor quotas: messages per second and bytes stored per UTC day.

One admitted sensor must not fill the disk or starve the others: the receiver
asks `admit` about every message before it parses it. Over a quota, the
message is not acknowledged, so it stays in the sensor's durable spool and is
sent again later (nothing accepted is lost; the spool's own size limit and drop
order apply on the sensor), and the refusal is counted for that sensor.

- Rate: a token bucket per sensor, `sensor_messages_per_s` tokens a second, up
  to BURST_S seconds' worth saved (a sensor catching up after an outage sends
  its window at once).
- Day: the bytes of the sensor's messages stored on the current UTC day (the
  store's count, committed with the messages, so a restart keeps it) plus the
  frames admitted into the batch being stored; beyond `sensor_mb_per_day`,
  nothing of that sensor until the next UTC day.

0 turns either off.
"""

from __future__ import annotations

import time

from aggregator.store import Store, utc_day

BURST_S = 10.0
"""A bucket holds this many seconds of a sensor's message rate."""
TELL_EVERY_S = 60.0
"""A sensor over its quota is logged at most this often."""


class Quotas:
    def __init__(self, store: Store, messages_per_s: float = 0, bytes_per_day: int = 0) -> None:
        self.store = store
        self.rate = float(messages_per_s)
        self.capacity = max(1.0, self.rate * BURST_S)
        self.bytes_per_day = int(bytes_per_day)
        self._buckets: dict[str, list[float]] = {}
        """sensor -> [tokens, monotonic time they were counted]."""
        self._pending: dict[str, int] = {}
        """Bytes admitted into the batch being stored, per sensor (not yet in the store's count)."""
        self._told: dict[str, float] = {}

    @classmethod
    def of(cls, store: Store, cfg) -> Quotas:
        """The quotas aggregator.yaml sets."""
        return cls(store, cfg.sensor_messages_per_s, cfg.sensor_mb_per_day * 10**6)

    def start_batch(self) -> None:
        self._pending.clear()

    def admit(self, sensor: str, size: int) -> str | None:
        """None when a message of `size` bytes from `sensor` is within its quotas (it is counted against them);
        else why not: "rate" or "day"."""
        if self.bytes_per_day:
            used = self.store.today(sensor, utc_day(time.time())) + self._pending.get(sensor, 0)
            if used + size > self.bytes_per_day:
                return "day"
        if self.rate:
            now = time.monotonic()
            bucket = self._buckets.get(sensor)
            if bucket is None:
                if len(self._buckets) > 100_000:  # bounded: ids only come from admitted keys, but still
                    self._buckets.clear()
                bucket = self._buckets[sensor] = [self.capacity, now]
            bucket[0] = min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if bucket[0] < 1.0:
                return "rate"
            bucket[0] -= 1.0
        self._pending[sensor] = self._pending.get(sensor, 0) + size
        return None

    def should_tell(self, sensor: str) -> bool:
        now = time.monotonic()
        if now - self._told.get(sensor, -TELL_EVERY_S) < TELL_EVERY_S:
            return False
        if len(self._told) > 100_000:
            self._told.clear()
        self._told[sensor] = now
        return True

    def describe(self, why: str) -> str:
        if why == "rate":
            return f"{self.rate:g} messages/s"
        return f"{self.bytes_per_day / 1e6:g} MB stored per UTC day"
