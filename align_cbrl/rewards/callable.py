"""Reward component wrapping any Python callable: the function itself, or its import path
``"module.sub:function"`` (the form a YAML config can hold; ``"__main__:fn"`` names a function
of the running script), resolved by :func:`align_cbrl.utils.imports.import_callable`.

The callable is invoked TRL-style, ``fn(prompts=..., completions=..., **context_columns,
**kwargs)``, so existing TRL reward functions plug in unchanged. It may return a list (with
``None`` for samples it does not apply to, if the spec sets ``none_value``) or a tensor. An
exception it raises becomes a one-line :class:`~align_cbrl.rewards.base.RewardComponentError`
naming the component, the function and the line (the original is its ``__cause__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from align_cbrl.rewards.base import Contexts, RewardComponent, RewardComponentError
from align_cbrl.utils.imports import import_callable

__all__ = ["CallableReward", "InMemoryCallableError", "import_callable", "importable_reference"]


class InMemoryCallableError(ValueError):
    """A callable component whose function cannot be named as ``'module:function'``."""


def importable_reference(fn: Callable[..., Any]) -> str | None:
    """``'module:qualname'`` if importing it gives back ``fn`` itself, else ``None`` (lambdas,
    nested functions, objects that are not module attributes)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        found = import_callable(f"{module}:{qualname}")
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return f"{module}:{qualname}" if found is fn else None


class CallableReward(RewardComponent):
    """Score = ``fn(prompts=..., completions=..., **contexts, **kwargs)``.

    ``target`` is a callable or an import path ``"package.module:function"``. With
    ``factory=True`` the target is called once as ``target(**kwargs)`` and the returned
    object is the scorer (then called without ``kwargs``)."""

    kind = "callable"

    def __init__(
        self,
        name: str,
        target: str | Callable[..., Any],
        kwargs: Mapping[str, Any] | None = None,
        factory: bool = False,
        none_value: float | None = None,
    ) -> None:
        super().__init__(name, none_value)
        self._given = {"kwargs": dict(kwargs or {}), "factory": factory, "none_value": none_value}
        if callable(target):
            fn = target
            self.target = f"{getattr(target, '__module__', '?')}:" + getattr(
                target, "__qualname__", type(target).__name__
            )
            self._reference = importable_reference(target)
        elif isinstance(target, str):
            self._reference = target
            fn = import_callable(target)
            self.target = target
        else:
            raise TypeError(
                f"callable component {name!r}: target must be a function or an import path "
                f"'package.module:function', got {type(target).__name__}"
            )
        if factory:
            fn = fn(**dict(kwargs or {}))
            if not callable(fn):
                raise TypeError(
                    f"callable component {name!r}: factory {target!r} returned a non-callable"
                )
            kwargs = None
        self.fn = fn
        self.kwargs = dict(kwargs or {})

    def spec(self) -> dict[str, Any]:
        """``{type: callable, name, target: 'module:function', ...}``; a function that lives
        only in this process (a lambda, a nested function, one defined in ``__main__``) has no
        such reference and is an :class:`InMemoryCallableError`."""
        if self._reference is None or self._reference.startswith("__main__:"):
            raise InMemoryCallableError(
                f"reward component {self.name!r} is the in-memory function {self.target!r}, which "
                "another process cannot import: define it in a module and pass its reference, "
                f"e.g. {{'type': 'callable', 'name': {self.name!r}, 'target': "
                f"'my_module:{self.target.rsplit(':', 1)[-1].rsplit('.', 1)[-1]}'}}"
            )
        spec = {"type": self.kind, "name": self.name, "target": self._reference, **self._given}
        self._spec = spec
        return super().spec()

    def score(
        self, prompts: list[str], completions: list[str], contexts: Contexts
    ) -> Tensor | list:
        cols = dict(contexts or {})
        clash = {"prompts", "completions"} & set(cols)
        if clash:
            raise ValueError(
                f"callable component {self.name!r}: context columns {sorted(clash)} clash with argument names"
            )
        try:
            return self.fn(prompts=prompts, completions=completions, **cols, **self.kwargs)
        except Exception as err:  # the user's function failed: name it, keep the cause
            raise RewardComponentError.wrap(self, err) from err
