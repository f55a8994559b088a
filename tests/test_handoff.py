"""The capture threads' handoff to the analysis loop: order kept, a lone flow delivered at once, bounded."""

from __future__ import annotations

import random
import threading
import time

from sensor.handoff import BATCH, POLL_S, Handoff


def test_items_from_two_threads_arrive_in_each_thread_s_order_and_none_is_lost():
    h = Handoff(capacity=256)
    n = 20_000

    def produce(tag: str, seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(n):
            h.put((tag, i))
            if rnd.random() < 0.001:
                time.sleep(rnd.random() * 0.02)  # bursts and pauses, so partial lists are taken too

    threads = [threading.Thread(target=produce, args=(t, k)) for k, t in enumerate("ab")]
    for t in threads:
        t.start()
    got: list = []
    sizes = set()
    deadline = time.monotonic() + 60
    while len(got) < 2 * n and time.monotonic() < deadline:
        items = h.get(0.05)
        sizes.add(len(items))
        got += items
        if random.random() < 0.01:
            time.sleep(0.005)
    for t in threads:
        t.join()
    assert len(got) == 2 * n
    for tag in "ab":
        assert [i for t, i in got if t == tag] == list(range(n))
    assert BATCH in sizes and any(0 < s < BATCH for s in sizes)  # full lists and partial ones both came


def test_a_lone_item_is_delivered_within_the_poll_and_an_empty_wait_returns_nothing():
    h = Handoff(capacity=1000)
    start = time.monotonic()
    assert h.get(0.05) == [] and time.monotonic() - start >= 0.05
    h.put("lone")
    start = time.monotonic()
    assert h.get(5) == ["lone"]
    assert time.monotonic() - start < POLL_S + 0.5


def test_a_loop_far_behind_holds_the_capture_thread_at_the_bound():
    h = Handoff(capacity=2 * BATCH)
    put = 0

    def produce() -> None:
        nonlocal put
        for i in range(10 * BATCH):
            h.put(i)
            put += 1

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    time.sleep(0.3)
    assert put <= 3 * BATCH  # two lists queued, one being filled (and one waiting to be queued)
    got = []
    while len(got) < 10 * BATCH:
        got += h.get(1)
    t.join(5)
    assert got == list(range(10 * BATCH))
