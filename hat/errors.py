"""Errors whose message says what to change. The command-line tools print them as one line."""

from __future__ import annotations


class HatError(RuntimeError):
    """Something the user can fix (a damaged checkpoint, a run that diverged, ...); the message
    names the file or setting and what to do."""
