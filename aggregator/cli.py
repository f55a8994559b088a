"""`ntds-aggregator`: the central side's command line (commands arrive with the later issues)."""

from __future__ import annotations

import argparse
import sys

from aggregator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntds-aggregator", description="ntds aggregator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
