"""Resolve ``"package.module:attr.sub"`` import paths to Python objects (reward callables on the
language-model side, estimators of the tabular harnesses): the form a YAML config or a command
line can hold; ``"__main__:fn"`` names a function of the running script."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["import_callable"]


def import_callable(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.sub"`` and return the callable it names.

    Raises (one line each, naming the target): ``ValueError`` when the string is malformed,
    ``ImportError`` when the module cannot be imported, ``AttributeError`` when the attribute
    path is missing, ``TypeError`` when it resolves to something that is not callable."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(
            f"callable target {target!r} must look like 'package.module:function' (one colon)"
        )
    mod_name, attr_path = target.split(":")
    if not mod_name or not attr_path:
        raise ValueError(f"callable target {target!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as err:
        raise ImportError(
            f"cannot import module {mod_name!r} of callable target {target!r}: {err}"
        ) from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise AttributeError(
                f"callable target {target!r}: {mod_name!r} has no attribute path {attr_path!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(
            f"callable target {target!r} resolved to a non-callable {type(obj).__name__}"
        )
    return obj
