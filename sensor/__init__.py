"""ntds sensor: everything that runs on the tap host."""

__version__ = "0.1.0"
