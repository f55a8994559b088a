"""ntds aggregator: the central program (receiver, store, archive, reports, baseline commands, its CLI)."""

from ntds import __version__

__all__ = ["__version__"]
