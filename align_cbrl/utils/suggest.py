"""The "did you mean" hint of every one-line error that rejects a name (config keys, TRL
fields, context values, callable targets)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["did_you_mean"]


def did_you_mean(name: Any, options: Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` with the closest of ``options`` to ``name`` (compared as
    text, :func:`difflib.get_close_matches`), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
