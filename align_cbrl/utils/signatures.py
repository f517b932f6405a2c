"""The signature of a constructor that passes its base class's options on through ``**kwargs``.

The reward-component and leader registries check a spec's options against
``inspect.signature`` of the constructor, so a subclass that forwards the base's options
(``def __init__(self, <own options>, **kwargs): super().__init__(..., **kwargs)``) instead of
restating them must still show them: :func:`forwards_to` sets its ``__signature__`` to its own
parameters followed by the forwarded ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["forwards_to"]

F = TypeVar("F", bound=Callable[..., Any])


def forwards_to(base: Callable[..., Any], *, skip: int = 1) -> Callable[[F], F]:
    """Decorator for a function whose ``**kwargs`` go on to ``base`` (e.g. a base class's
    ``__init__``).

    The decorated function's ``__signature__`` becomes its own parameters without the
    ``**kwargs``, then, keyword-only (they can only arrive by name), ``base``'s parameters
    after its first ``skip`` (``self`` and whatever the function passes positionally) that the
    function does not declare itself, with ``base``'s defaults and annotations. ``base``'s own
    ``*args`` / ``**kwargs`` are kept out (the function does not accept extra positionals),
    and a ``**kwargs`` of ``base`` stays the last parameter. The function itself is returned
    unchanged; raises ``TypeError`` if it has no ``**kwargs`` to forward."""

    def decorate(fn: F) -> F:
        own = list(inspect.signature(fn).parameters.values())
        var_kw = [p for p in own if p.kind is p.VAR_KEYWORD]
        if not var_kw:
            raise TypeError(f"{fn.__qualname__} has no **kwargs to forward to {base.__qualname__}")
        own = [p for p in own if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        forwarded = list(inspect.signature(base).parameters.values())[skip:]
        extra = [
            p.replace(kind=p.KEYWORD_ONLY)
            for p in forwarded
            if p.name not in names and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        # base's own **kwargs (if any) still accepts whatever it does
        tail = [p for p in forwarded if p.kind is p.VAR_KEYWORD]
        fn.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
            parameters=[*own, *extra, *tail]
        )
        return fn

    return decorate
