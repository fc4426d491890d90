"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class ZoftError(Exception):
    """A problem with the user's input or environment, explained in one line."""
