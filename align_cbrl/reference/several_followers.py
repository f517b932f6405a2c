"""Exact reference with several followers on the enumerable tiny-language task
(``docs/theory.md`` §1 and §3 "Several followers"; :mod:`align_cbrl.estimators.combine`).

Follower ``i`` has its own reference policy ``log pi_ref_i[P, Y]`` (e.g. another tiny model),
temperature ``beta_i``, context distribution ``P_i`` over the task's prompts (a prompt subset
is a distribution with zeros) and weight ``c_i >= 0``. With ``w_i = c_i / sum_j c_j``:

    pi*_i(y|p) = softmax_y(log pi_ref_i(y|p) + r_x(p, y) / beta_i),
    F_i(x)     = sum_p P_i(p) sum_y pi*_i(y|p) rbar_x(p, y),
    F(x)       = sum_i w_i F_i(x),                                                      (MEAN)

``dF/dx`` by autograd through (MEAN) (:func:`combined_gradient`, independent of the HPGD
formula) and the bilevel optimum by exact ascent (:func:`optimize_combined`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from align_cbrl.estimators.combine import follower_weights
from align_cbrl.objective import BilevelRewards
from align_cbrl.reference.tiny_language import (
    ExactOptimum,
    TinyLanguageTask,
    ascend_exact,
    exact_objective,
    exact_policy,
)

__all__ = [
    "ExactFollowerSpec",
    "combined_gradient",
    "combined_objective",
    "follower_objectives",
    "follower_policies",
    "optimize_combined",
    "restricted_prompt_probs",
]


def restricted_prompt_probs(task: TinyLanguageTask, prompt_index: Sequence[int]) -> Tensor:
    """A follower's context distribution when it draws its prompts from the rows
    ``prompt_index`` (indices into ``task.prompts``, repeats allowed) with probabilities
    proportional to the task's ``P(p)``: ``P_i(p) ∝ P(p) * #{rows of p}``, zero elsewhere
    (float64 ``[P]``)."""
    idx = torch.as_tensor(list(prompt_index), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("a follower needs at least one prompt")
    if int(idx.min()) < 0 or int(idx.max()) >= task.num_prompts:
        raise ValueError(
            f"prompt indices must lie in 0..{task.num_prompts - 1}, got {idx.tolist()}"
        )
    mass = torch.zeros(task.num_prompts, dtype=torch.float64)
    mass.index_add_(0, idx, task.prompt_probs[idx])
    total = float(mass.sum())
    if not total > 0:
        raise ValueError(
            f"the prompts {sorted(set(idx.tolist()))} all have probability 0 under the task's "
            "prompt_probs; give the follower prompts the task can draw"
        )
    return mass / total


@dataclass(frozen=True)
class ExactFollowerSpec:
    """One exact follower: ``task`` carries its reference policy (``task.log_ref``) and its
    context distribution (``task.prompt_probs``; see :meth:`TinyLanguageTask.with_log_ref`,
    :meth:`TinyLanguageTask.with_prompt_probs`); ``beta`` its temperature (scalar or one per
    prompt); ``weight`` its raw weight ``c_i`` in (MEAN)."""

    name: str
    task: TinyLanguageTask
    beta: float | Tensor
    weight: float = 1.0

    @classmethod
    def on(
        cls,
        task: TinyLanguageTask,
        name: str,
        beta: float | Tensor,
        *,
        log_ref: Tensor | None = None,
        prompt_index: Sequence[int] | None = None,
        weight: float = 1.0,
    ) -> ExactFollowerSpec:
        """The follower ``name`` on ``task`` with reference table ``log_ref`` (default: the
        task's) drawing its prompts from the rows ``prompt_index`` (default: all prompts with
        the task's ``P(p)``; :func:`restricted_prompt_probs`)."""
        view = task if log_ref is None else task.with_log_ref(log_ref)
        if prompt_index is not None:
            view = view.with_prompt_probs(restricted_prompt_probs(task, prompt_index))
        return cls(name, view, beta, weight)


def _check(followers: Sequence[ExactFollowerSpec]) -> Tensor:
    if not followers:
        raise ValueError("give at least one follower")
    names = [f.name for f in followers]
    if len(set(names)) != len(names):
        raise ValueError(f"follower names must be unique, got {names}")
    return follower_weights([f.weight for f in followers], names=names)


def follower_objectives(
    followers: Sequence[ExactFollowerSpec],
    bilevel: BilevelRewards,
    params: Mapping[str, Tensor] | None = None,
) -> list[Tensor]:
    """``[F_1(x), ..., F_n(x)]``, each follower's own exact objective (differentiable)."""
    _check(followers)
    return [exact_objective(f.task, bilevel, f.beta, params) for f in followers]


def combined_objective(
    followers: Sequence[ExactFollowerSpec],
    bilevel: BilevelRewards,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``F(x) = sum_i w_i F_i(x)`` (Eq. MEAN; scalar, differentiable)."""
    w = _check(followers).tolist()
    values = follower_objectives(followers, bilevel, params)
    total = w[0] * values[0]
    for wi, Fi in zip(w[1:], values[1:], strict=True):
        total = total + wi * Fi
    return total


def combined_gradient(followers: Sequence[ExactFollowerSpec], bilevel: BilevelRewards) -> Tensor:
    """Exact ``dF/dx`` of (MEAN) as a flat vector (leader parameter order), by autograd."""
    x = bilevel.leader.flat_parameters().requires_grad_(True)
    F = combined_objective(followers, bilevel, bilevel.leader.unflatten(x, "leader."))
    (g,) = torch.autograd.grad(F, x)
    return g


def follower_policies(
    followers: Sequence[ExactFollowerSpec], bilevel: BilevelRewards
) -> list[Tensor]:
    """Each follower's best response ``pi*_i[P, Y]`` (no gradient)."""
    with torch.no_grad():
        return [exact_policy(f.task, bilevel, f.beta) for f in followers]


def optimize_combined(
    followers: Sequence[ExactFollowerSpec],
    bilevel: BilevelRewards,
    steps: int = 500,
    lr: float = 1.0,
    tol: float = 1e-8,
) -> ExactOptimum:
    """The bilevel optimum of (MEAN) by exact gradient ascent with backtracking
    (:func:`~align_cbrl.reference.tiny_language.ascend_exact`; a local optimum, ``F`` never
    decreases). ``bilevel`` is not modified."""
    _check(followers)

    def objective(best: BilevelRewards, params: Mapping[str, Tensor]) -> Tensor:
        return combined_objective(followers, best, params)

    return ascend_exact(bilevel, objective, steps=steps, lr=lr, tol=tol)
