"""Did-you-mean fixes for a name that names nothing: the closest known name, or the list of them.

Shared by every room that checks a name against a registry or the config (``config``, ``signals``), so a
typo gets the same kind of fix wherever it is made.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word``, or None when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def fix_for(word: str, choices: Iterable[str], what: str) -> str:
    """The fix for an unknown ``word``: ``did you mean 'x'? (what: a, b)``, else ``use one of the what: a, b``."""
    options = sorted(choices)
    guess = did_you_mean(word, options)
    listing = ", ".join(options) if options else "none defined"
    if guess:
        return f"did you mean '{guess}'? ({what}: {listing})"
    return f"use one of the {what}: {listing}"


__all__ = ["did_you_mean", "fix_for"]
