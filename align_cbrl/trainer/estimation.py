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

The update minimises ``-S``: backward, :meth:`LeaderSync.all_reduce_gradients` (group-count
weighted mean over processes; it equals the single-process combination because every rank
holds the same number of groups per follower), global-norm clipping, optimiser step
(:mod:`align_cbrl.trainer.strategies` composes these steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from align_cbrl.estimators.combine import follower_weights
from align_cbrl.estimators.grouped import hpgd_surrogate, naive_surrogate
from align_cbrl.objective import BilevelRewards
from align_cbrl.trainer.stats import FollowerStats, LeaderStats

__all__ = ["GroupedSamples", "build_optimizer", "leader_surrogate"]


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
