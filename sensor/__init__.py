"""ntds sensor: the tap-host program (pipeline, spool, link, capture control, summaries, its CLI)."""

from ntds import __version__

__all__ = ["__version__"]
