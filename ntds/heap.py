"""The cyclic garbage collector, set for processes that hold large long-lived tables.

CPython collects its youngest generation after every 700 net allocations of container objects (dicts, lists,
objects), and each collection of an older generation walks every object that has reached it. A sensor makes
and drops several containers a flow (the flow's record, its summary rows, wire objects) while it keeps
hundreds of thousands of long-lived ones (the detectors' tables, the packet ring's index, the baseline): at the
default thresholds the collector alone took about a tenth of the sensor's CPU on the real mix of captures
(docs/benchmarks.md, issue 28). Flows make few reference cycles, so collecting less often costs little memory.
"""

from __future__ import annotations

import gc

YOUNG = 50_000
"""Net container allocations between collections of the youngest generation (CPython's default: 700)."""
OLDER, OLDEST = 50, 100
"""Collections of one generation between collections of the next (defaults 10 and 10; CPython also waits for
the oldest until a quarter of its objects are new). Measured on the real mix: 17.4 CPU-s in the sensor's
process at the defaults, 13.4-14.4 at these, 13.7-14.0 with the collector off."""


def settle() -> None:
    """Raise the thresholds, and move what exists now (the modules and what they built on import) out of the
    collector's sight: it lives as long as the process. Processes forked afterwards (meters, analysis
    workers) inherit both."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDEST)
