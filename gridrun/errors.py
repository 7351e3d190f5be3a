"""The ground floor every module may import: the user-facing error and the nearest-name hint."""
from __future__ import annotations

import difflib

__version__ = "0.2.0"


class GridrunError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


def did_you_mean(key, valid, cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, else ' (valid: a, b, ...)'."""
    valid = [str(v) for v in valid]
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=cutoff)
    return f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"
