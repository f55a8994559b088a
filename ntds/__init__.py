"""ntds core: what both programs use (flows and features, detection and baselines, the wire schema, settings).

Nothing here imports `sensor` or `aggregator`; both import from here (tests/test_layout.py).
"""

__version__ = "0.2.0"
