"""ntds aggregator: receives what sensors publish, stores it, builds reports."""

__version__ = "0.1.0"
