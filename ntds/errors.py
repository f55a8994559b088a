"""Errors a user can cause, turned into one line at the command-line boundary."""


class InputError(Exception):
    """Bad input from the user: the message is the whole story, no traceback needed."""
