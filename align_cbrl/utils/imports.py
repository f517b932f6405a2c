"""Resolve ``"package.module:attr.sub"`` import paths to Python objects (reward callables on the
language-model side, estimators of the tabular harnesses): the form a YAML config or a command
line can hold; ``"__main__:fn"`` names a function of the running script."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from align_cbrl.utils.suggest import did_you_mean

__all__ = ["CallableAttributeError", "CallableImportError", "import_callable"]


class CallableImportError(ImportError, ValueError):
    """The module of a callable target cannot be imported (a configuration error: a
    ``ValueError`` too, so the command line prints it as one line)."""


class CallableAttributeError(AttributeError, ValueError):
    """The module of a callable target has no such function (also a ``ValueError``)."""


def import_callable(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.sub"`` and return the callable it names.

    Raises (one line each, naming the target): ``ValueError`` when the string is malformed,
    :class:`CallableImportError` when the module cannot be imported,
    :class:`CallableAttributeError` (with the closest name) when the attribute path is missing
    (both also ``ValueError``s, so command lines print them as one line), ``TypeError`` when
    it resolves to something that is not callable."""
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
        raise CallableImportError(
            f"cannot import module {mod_name!r} of callable target {target!r}: {err} (the "
            "current directory is searched first; run from the directory that holds it)"
        ) from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise CallableAttributeError(
                f"callable target {target!r}: {mod_name!r} has no attribute path {attr_path!r}"
                f"{did_you_mean(part, public)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(
            f"callable target {target!r} resolved to a non-callable {type(obj).__name__}"
        )
    return obj
