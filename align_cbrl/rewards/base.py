"""The reward-component interface (``docs/theory.md §3``: the follower's reward
``r_x(p, y)`` and the leader's ``rbar(p, y)`` are both built from named component scores).

A component scores a batch of (prompt, completion) pairs, optionally with per-sample context
columns (the prompt's metadata, e.g. ``category``), and returns a float tensor ``[B]``. Every
output is validated here so that a misbehaving component is named together with the offending
sample index instead of silently poisoning a training run, and a component that raises is
named together with the exception and the line it came from (:class:`RewardComponentError`,
raised by ``callable`` components; the trainers add the step: :func:`add_context`).
"""

from __future__ import annotations

import copy
import json
import math
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ComponentOutputError",
    "RewardComponent",
    "RewardComponentError",
    "add_context",
    "score_components",
    "validate_scores",
]

Contexts = dict[str, list[Any]] | None


class ComponentOutputError(ValueError):
    """A reward component returned an unusable output (wrong length, NaN/inf, None)."""


class RewardComponentError(RuntimeError):
    """A user's reward function (a ``callable`` component) raised while scoring (one line: the
    component, its function, the exception and where it was raised; chained to the original
    exception)."""

    @classmethod
    def wrap(cls, component: RewardComponent, err: Exception) -> RewardComponentError:
        origin = getattr(component, "target", None)
        frames = traceback.extract_tb(err.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        said = " ".join(str(err).split())[:300]
        return cls(
            f"reward component {component.name!r}"
            + (f" ({origin})" if origin else "")
            + f" raised {type(err).__name__}"
            + (f": {said}" if said else "")
            + where
        )


def add_context(err: BaseException, where: str) -> None:
    """Append ``where`` (a step, an outer iteration, what to do next) to the one-line message
    of ``err`` in place, so the re-raised error keeps its traceback."""
    if err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}, {where}", *err.args[1:])


def validate_scores(
    name: str, raw: Any, batch_size: int, none_value: float | None = None
) -> Tensor:
    """Turn a component's raw output into a finite float64 tensor ``[B]``.

    ``raw`` may be a tensor, a numpy array or a list of numbers. ``None`` entries (TRL reward
    functions return them for samples they do not apply to) are replaced by ``none_value``
    when it is set and are an error otherwise. Raises :class:`ComponentOutputError` naming the
    component and the first offending index."""
    if raw is None:
        raise ComponentOutputError(f"reward component {name!r} returned None instead of scores")
    if isinstance(raw, Tensor):
        t = raw.detach()
        if t.dim() == 2 and t.shape[-1] == 1:
            t = t[:, 0]
        if t.dim() != 1:
            raise ComponentOutputError(
                f"reward component {name!r} returned a tensor of shape {tuple(t.shape)}; "
                f"expected one score per sample, shape [{batch_size}]"
            )
        values = t.to(torch.float64).cpu()
    else:
        try:
            seq = list(raw)
        except TypeError as err:
            raise ComponentOutputError(
                f"reward component {name!r} returned {type(raw).__name__}; expected a list or "
                f"tensor of {batch_size} scores"
            ) from err
        out: list[float] = []
        for i, v in enumerate(seq):
            if v is None:
                if none_value is None:
                    raise ComponentOutputError(
                        f"reward component {name!r} returned None at index {i}; set "
                        f"'none_value' in its spec if None means 'not applicable'"
                    )
                v = none_value
            if isinstance(v, Tensor):
                v = v.item()
            try:
                out.append(float(v))
            except (TypeError, ValueError) as err:
                raise ComponentOutputError(
                    f"reward component {name!r} returned a non-number {v!r} at index {i}"
                ) from err
        values = torch.tensor(out, dtype=torch.float64)
    if values.numel() != batch_size:
        raise ComponentOutputError(
            f"reward component {name!r} returned {values.numel()} scores for a batch of "
            f"{batch_size} (prompt, completion) pairs"
        )
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0, 0])
        raise ComponentOutputError(
            f"reward component {name!r} returned a non-finite score {values[i].item()} at index {i}"
        )
    return values


def _check_batch(prompts: Sequence[str], completions: Sequence[str], contexts: Contexts) -> int:
    if isinstance(prompts, str) or isinstance(completions, str):
        raise TypeError("prompts and completions must be lists of strings, not a single string")
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; give one prompt "
            f"per completion (repeat a prompt for each of its completions)"
        )
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if not isinstance(p, str) or not isinstance(c, str):
            raise TypeError(
                f"prompt/completion at index {i} must be strings, got "
                f"{type(p).__name__}/{type(c).__name__} (chat-format messages: pass their text)"
            )
    for col, vals in (contexts or {}).items():
        if len(vals) != len(prompts):
            raise ValueError(
                f"context column {col!r} has {len(vals)} values for a batch of {len(prompts)}"
            )
    return len(prompts)


class RewardComponent:
    """Base class: a named scorer ``(prompts, completions, contexts) -> Tensor[B]`` (float64).

    Subclasses implement :meth:`score`; :meth:`__call__` checks the batch and validates the
    output (:func:`validate_scores`). ``none_value`` declares what a ``None`` score means (by
    default ``None`` is an error)."""

    kind: str = "component"
    _spec: dict[str, Any] | None = None  # set per instance by build_component

    def __init__(self, name: str, none_value: float | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a reward component needs a non-empty string 'name'")
        self.name = name
        self.none_value = none_value

    def spec(self) -> dict[str, Any]:
        """The JSON spec ``{type, name, ...}`` from which ``build_component`` rebuilds this
        component (stored in a saved leader's ``config.json``). Components built from a spec
        mapping by :func:`~align_cbrl.rewards.registry.build_component` know theirs."""
        if self._spec is None:
            raise ValueError(
                f"reward component {self.name!r} ({type(self).__name__}) has no spec to save: "
                "build it with build_components([{'type': ..., 'name': ...}]) or give its class "
                "a spec() method"
            )
        spec = copy.deepcopy(self._spec)
        try:
            json.dumps(spec)
        except TypeError as err:
            raise ValueError(
                f"reward component {self.name!r}: its spec is not JSON ({err}); use plain "
                "numbers, strings, lists and mappings in it"
            ) from err
        return spec

    def score(
        self, prompts: list[str], completions: list[str], contexts: Contexts
    ) -> Tensor | Sequence[float | None]:
        raise NotImplementedError

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        contexts: Contexts = None,
    ) -> Tensor:
        batch = _check_batch(prompts, completions, contexts)
        raw = self.score(list(prompts), list(completions), contexts)
        return validate_scores(self.name, raw, batch, self.none_value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def score_components(
    components: Sequence[RewardComponent],
    prompts: Sequence[str],
    completions: Sequence[str],
    contexts: Contexts = None,
) -> Tensor:
    """Stack the scores of several components: ``Tensor[B, K]`` (float64), column ``k`` =
    ``components[k]``. Component names must be unique."""
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError(f"reward component names must be unique, got {names}")
    if not components:
        raise ValueError("give at least one reward component")
    cols = [c(prompts, completions, contexts) for c in components]
    return torch.stack(cols, dim=-1)


def is_finite_number(v: Any) -> bool:
    """True for an int/float that is finite (used by spec validation)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
