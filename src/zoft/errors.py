"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class ZoftError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type when the message is empty), for a ZoftError."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
