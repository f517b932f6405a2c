"""One leader update from completion groups (``docs/theory.md §3``, HPGD for LM followers).

Shared by the orchestrated :class:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer` and the plugin
:class:`~align_cbrl.trainer.callback.HPGDCallback`. For each follower ``f`` the samples are
``G_f`` groups of ``N`` completions of one prompt each (the layout GRPO/RLOO generate). With
``r = r_x`` and ``rbar = rbar_x`` computed differentiably from the component scores, the ascent
direction is the gradient of

    S(x) = sum_f  c_f hpgd_surrogate(v_f r_f, rbar_f, beta_f)               (HPGD, Eq. SUR)
    S(x) = sum_f  c_f naive_surrogate(rbar_f)                               (naive baseline)

``c_f`` is follower ``f``'s normalised weight in the leader's objective (``objective_weight``,
``followers[f].weight`` of a run config; equal by default), so the leader's objective is the
weighted mean ``F(x) = sum_f c_f E_{p~P_f} E_{y~pi*_f} rbar_x(p, y)`` and ``S``'s gradient the
same weighted mean of the followers' estimates, each averaged over its own ``G_f`` groups
(``docs/theory.md §1``, Eq. COMB of :mod:`align_cbrl.estimators.combine`): a follower that
sampled more groups gets a lower-variance estimate, not more weight.

``v_f`` is the weight the follower's trainer puts on ``r_x`` (``reward_weight``: TRL's
``reward_weights``; 1 by default): a follower that maximises ``v r_x + (other rewards) - beta
KL`` has the best response ``pi* ∝ pi_ref exp((v r_x + ...) / beta)``, so its hypergradient uses
``v d r_x`` (equivalently the temperature ``beta / v``); rewards the leader does not control
drop out of ``d``.

The leader's step is one plain function, :func:`leader_update`: ``.grad = -d`` for the
estimator's ascent direction ``d`` (the gradient of ``S``, or a flat vector), then

    all-reduce  (:meth:`LeaderSync.all_reduce_gradients`: the group-count weighted mean over
                 processes; it equals the single-process combination because every rank holds
                 the same number of groups per follower)
    clip        (global norm ``||g|| <= max_grad_norm``; a non-finite ``g`` raises, no step)
    step        (the ``torch.optim`` optimiser, which minimises ``-S``).

The estimators that produce ``d`` are the strategy objects of :mod:`align_cbrl.trainer.strategies`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from align_cbrl.distributed import LeaderSync
from align_cbrl.estimators.combine import follower_weights
from align_cbrl.estimators.grouped import hpgd_surrogate, naive_surrogate
from align_cbrl.objective import BilevelRewards
from align_cbrl.trainer.stats import FollowerStats, LeaderStats, UpdateResult

__all__ = [
    "Direction",
    "GroupedSamples",
    "build_optimizer",
    "leader_surrogate",
    "leader_update",
    "set_ascent_gradient",
]


@dataclass
class GroupedSamples:
    """Scored completions of one follower, ``G`` groups of ``group_size`` consecutive entries.

    ``prompts[i]``, ``completions[i]``, ``columns[c][i]`` and ``scores[i]`` (``[B, K]``) describe
    sample ``i``; entries ``g*N .. g*N+N-1`` share one prompt."""

    follower: str
    beta: float
    group_size: int
    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]]
    scores: Tensor
    reward_weight: float = 1.0
    objective_weight: float = 1.0

    def __post_init__(self) -> None:
        B = len(self.prompts)
        w = self.objective_weight
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(
                f"follower {self.follower!r}: objective_weight (its share of the leader's "
                f"objective) must be a finite number >= 0, got {w!r}"
            )
        if not math.isfinite(self.reward_weight):
            raise ValueError(
                f"follower {self.follower!r}: the weight on the shaped reward must be a finite "
                f"number, got {self.reward_weight!r}"
            )
        if self.group_size < 2:
            raise ValueError(
                f"follower {self.follower!r}: HPGD needs >= 2 completions per prompt "
                f"(num_generations / num_samples), got {self.group_size}"
            )
        if B == 0 or B % self.group_size:
            raise ValueError(
                f"follower {self.follower!r}: {B} samples do not form groups of "
                f"{self.group_size} completions per prompt"
            )
        if len(self.completions) != B or self.scores.shape[0] != B:
            raise ValueError(
                f"follower {self.follower!r}: {B} prompts, {len(self.completions)} completions "
                f"and {self.scores.shape[0]} score rows must match"
            )
        for g in range(B // self.group_size):
            block = self.prompts[g * self.group_size : (g + 1) * self.group_size]
            if any(p != block[0] for p in block):
                raise ValueError(
                    f"follower {self.follower!r}: group {g} mixes prompts ({sorted(set(block))[:3]}); "
                    f"samples must come as {self.group_size} consecutive completions per prompt, "
                    "as GRPO/RLOO generate them (num_generations)"
                )

    @property
    def num_groups(self) -> int:
        return len(self.prompts) // self.group_size

    def contexts(self, column: str | None) -> list[Any] | None:
        """The context values of every sample (``None`` if there is no such column)."""
        if column is None or column not in self.columns:
            return None
        return list(self.columns[column])


def leader_surrogate(
    bilevel: BilevelRewards,
    batches: Sequence[GroupedSamples],
    estimator: str,
    context_column: str | None,
) -> tuple[Tensor, LeaderStats]:
    """The surrogate ``S(x)`` of the module docstring and per-follower statistics.

    ``estimator``: ``"hpgd"`` or ``"naive"``. Statistics (:class:`LeaderStats`, means over the
    samples under the current ``x``): ``rbar``, ``r``, ``r - incentive``, the incentive, its
    absolute value and its cost per follower; ``objective_estimate = sum_f c_f mean rbar_f``.
    The batches' ``objective_weight`` are normalised over the batches given (one-line errors for
    negative weights or a zero sum)."""
    if estimator not in ("hpgd", "naive"):
        raise ValueError(f"estimator must be 'hpgd' or 'naive' here, got {estimator!r}")
    if not batches:
        raise ValueError("no completion groups to estimate from")
    weights = follower_weights(
        [b.objective_weight for b in batches], names=[f"follower {b.follower!r}" for b in batches]
    ).tolist()
    total: Tensor | None = None
    per: dict[str, FollowerStats] = {}
    for b, c in zip(batches, weights, strict=True):
        out = bilevel(b.scores, b.contexts(context_column))
        G, N = b.num_groups, b.group_size
        r, rbar = out.r.reshape(G, N), out.rbar.reshape(G, N)
        if estimator == "hpgd":
            term = c * hpgd_surrogate(b.reward_weight * r, rbar, b.beta)
        else:
            term = c * naive_surrogate(rbar)
        total = term if total is None else total + term
        inc = out.incentive.detach()
        if b.follower in per:
            raise ValueError(f"two batches for follower {b.follower!r}; give each once")
        per[b.follower] = FollowerStats(
            reward=float(r.detach().mean()),
            base_reward=float((out.r.detach() - inc).mean()),
            leader_reward=float(rbar.detach().mean()),
            incentive=float(inc.mean()),
            incentive_abs=float(inc.abs().mean()),
            cost=float(bilevel.leader.cost(inc).mean()),
            groups=G,
            weight=c,
        )
    assert total is not None
    return total, LeaderStats(per)


@dataclass
class Direction:
    """An estimator's ascent direction for the leader's parameters: a differentiable surrogate
    ``S(x)`` (the direction is its gradient) or a flat vector, or neither (no step: ``fixed``,
    zero-order's first iteration), with the statistics it was estimated from and
    estimator-specific metrics (``extra``)."""

    stats: LeaderStats
    surrogate: Tensor | None = None
    flat: Tensor | None = None
    extra: dict[str, float] | None = None

    @property
    def has_step(self) -> bool:
        return self.surrogate is not None or self.flat is not None


def set_ascent_gradient(
    leader: torch.nn.Module, surrogate: Tensor | None = None, flat: Tensor | None = None
) -> list[torch.nn.Parameter]:
    """``.grad = -d`` for every trainable parameter (the optimiser minimises), ``d`` the gradient
    of ``surrogate`` or the slice of ``flat`` in :meth:`~torch.nn.Module.parameters` order;
    returns those parameters."""
    if (surrogate is None) == (flat is None):
        raise ValueError("give exactly one of surrogate / flat_gradient")
    params = [p for p in leader.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    if surrogate is not None:
        (-surrogate).backward()
    else:
        assert flat is not None
        i = 0
        for p in params:
            n = p.numel()
            p.grad = -flat[i : i + n].reshape(p.shape).to(p.dtype).clone()
            i += n
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return params


def _global_norm(params: list[torch.nn.Parameter]) -> float:
    """``||g||_2`` over all parameters' ``.grad``; refuses a non-finite one."""
    norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
    if not math.isfinite(norm):
        raise FloatingPointError(
            "the leader's hypergradient is not finite (check the reward components and "
            "beta); the leader was not updated"
        )
    return norm


def leader_update(
    leader: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    direction: Direction,
    max_grad_norm: float,
    sync: LeaderSync | None = None,
    extra: dict[str, float] | None = None,
) -> UpdateResult:
    """One leader step along ``direction`` (module docstring): ``.grad = -d``; all-reduce
    over processes, weighted by ``direction.stats.groups``; clip by global norm to
    ``max_grad_norm`` (0 = no clipping); ``optimizer.step()``. A direction without a step
    changes nothing (norm 0). Returns the :class:`UpdateResult`: the direction's statistics,
    ``||g||`` before clipping, whether a step was taken, ``direction.extra`` and ``extra``.
    A non-finite ``g`` raises ``FloatingPointError`` and leaves the parameters untouched."""
    if not (math.isfinite(max_grad_norm) and max_grad_norm >= 0):
        raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {max_grad_norm!r}")
    metrics = {**(direction.extra or {}), **(extra or {})}
    if not direction.has_step:
        return UpdateResult(direction.stats, 0.0, False, metrics)
    params = set_ascent_gradient(leader, direction.surrogate, direction.flat)
    (sync or LeaderSync()).all_reduce_gradients(leader, direction.stats.groups)
    try:
        norm = _global_norm(params)
    except FloatingPointError:
        optimizer.zero_grad(set_to_none=False)
        raise
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, float(max_grad_norm))
    optimizer.step()
    return UpdateResult(direction.stats, norm, True, metrics)


def build_optimizer(
    params: Sequence[torch.nn.Parameter] | Any,
    name: str,
    lr: float,
    momentum: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The leader's optimiser: ``"sgd"`` (optionally with momentum) or ``"adam"``."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])))
    raise ValueError(f"leader optimizer must be 'sgd' or 'adam', got {name!r}")
