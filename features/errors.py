"""The one exception type for problems the user fixes, not the code.

Bad data, bad configuration, commands run in the wrong order (an empty event store), a catalogue
naming a column the data lacks: the command line prints a `UserError`'s message as one line and
exits with code 2 (a traceback only with `nba --debug`). Anything else is a bug and keeps its
traceback. It is a ValueError, so code that already catches ValueError still does.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the input or the configuration; its message says what to change."""


def one_line(text: str) -> str:
    """`text` on one line: line breaks become '; ', runs of spaces one space."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    return "; ".join(p for p in parts if p)
