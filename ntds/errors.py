"""Errors a user can cause, turned into one line at the command-line boundary."""

import argparse
from typing import NoReturn


class InputError(Exception):
    """Bad input from the user: the message is the whole story, no traceback needed."""


class WorkerFailed(RuntimeError):
    """An analysis worker died or raised (ntds.detect.workers): its detectors' state is gone, so the sensor stops
    with this one line, and what is spooled stays spooled."""


def one_line(message: object) -> str:
    """An error as the one line a user sees: white space folded, control characters escaped."""
    from ntds.logs import printable

    return printable(" ".join(str(message).split()), limit=1000)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line too (`PROG ACTION: error: ...; see --help`), like every other bad
    input: a usage block of a dozen lines buries the one that says what was wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
