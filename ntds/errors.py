"""Errors a user can cause, turned into one line at the command-line boundary."""


class InputError(Exception):
    """Bad input from the user: the message is the whole story, no traceback needed."""


def one_line(message: object) -> str:
    """An error as the one line a user sees: white space folded, control characters escaped."""
    from ntds.logs import printable

    return printable(" ".join(str(message).split()), limit=1000)
