"""The leader update as small composable strategy objects (shared by both training modes).

Modelled on optax's ``GradientTransformation``: an *estimator* turns completion groups into an
ascent direction for the leader's parameters ``x`` (``docs/theory.md §2``; baselines: §8), and a chain of
gradient transforms turns that direction into a step:

    direction  --(AllReduce)-->  process mean  --(ClipByGlobalNorm)-->  clipped  --(optimiser)-->  x'

Estimators (``leader.estimator`` in the config):

* :class:`HPGD`       -- gradient of ``sum_f c_f hpgd_surrogate(v_f r_f, rbar_f, beta_f)`` (Eq. SUR;
  ``c_f`` the followers' normalised weights, ``v_f`` the weight on ``r_x``), unbiased for
  ``dF/dx = sum_f c_f E_p[E d rbar + (1/beta_f) Cov(v_f d r, rbar)]`` at the best responses;
* :class:`Naive`      -- gradient of ``sum_f c_f mean rbar_f`` (ignores the followers' reaction);
* :class:`ZeroOrder`  -- residual-feedback Gaussian smoothing ``g_t = (F_t - F_{t-1}) z_t / u_t``
  (Zhang et al. 2022): the followers train under ``x_t + u_t z_t`` (:meth:`follower_bilevel`),
  ``F_t`` is the sampled ``sum_f c_f mean rbar_f`` there; no step at the first iteration;
* :class:`Fixed`      -- statistics only, never a step ("no leader").

:class:`LeaderUpdate` runs ``estimator -> AllReduce -> ClipByGlobalNorm -> optimiser.step``
and returns an :class:`~align_cbrl.trainer.stats.UpdateResult`. The orchestrated
:class:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer` and the plugin
:class:`~align_cbrl.trainer.callback.HPGDCallback` both build one with
:func:`build_leader_update`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from align_cbrl.distributed import LeaderSync
from align_cbrl.objective import BilevelRewards
from align_cbrl.trainer.estimation import GroupedSamples, leader_surrogate
from align_cbrl.trainer.stats import LeaderStats, UpdateResult
from align_cbrl.trainer.tracking import FollowerTracking

__all__ = [
    "ESTIMATORS",
    "HPGD",
    "AllReduce",
    "ClipByGlobalNorm",
    "Direction",
    "Estimator",
    "Fixed",
    "LeaderUpdate",
    "Naive",
    "ZeroOrder",
    "apply_leader_gradient",
    "build_leader_update",
]


# --------------------------------------------------------------------------- directions
@dataclass
class Direction:
    """An ascent direction: a differentiable surrogate ``S(x)`` (its gradient) or a flat
    vector, with the statistics it was estimated from and strategy-specific extras."""

    stats: LeaderStats
    surrogate: Tensor | None = None
    flat: Tensor | None = None
    extra: dict[str, float] | None = None

    @property
    def has_step(self) -> bool:
        return self.surrogate is not None or self.flat is not None


class Estimator:
    """Base class: ``estimate(bilevel, batches, context_column) -> Direction``."""

    name = "estimator"

    def follower_bilevel(self, bilevel: BilevelRewards, iteration: int) -> BilevelRewards:
        """The reward pair the followers train on during ``iteration`` (default: the leader's)."""
        return bilevel

    def sampled_bilevel(self, bilevel: BilevelRewards) -> BilevelRewards:
        """The reward pair the batches of this update were sampled under (default: the
        leader's)."""
        return bilevel

    def estimate(
        self,
        bilevel: BilevelRewards,
        batches: Sequence[GroupedSamples],
        context_column: str | None,
    ) -> Direction:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class HPGD(Estimator):
    """Gradient of ``sum_f c_f hpgd_surrogate(v_f r_f, rbar_f, beta_f)`` (estimation.py, Eq. SUR)."""

    name = "hpgd"

    def estimate(self, bilevel, batches, context_column):  # type: ignore[override]
        surrogate, stats = leader_surrogate(bilevel, batches, "hpgd", context_column)
        return Direction(stats, surrogate=surrogate)


class Naive(Estimator):
    """Gradient of ``sum_f c_f mean rbar_f``: the direct term only (a biased baseline)."""

    name = "naive"

    def estimate(self, bilevel, batches, context_column):  # type: ignore[override]
        surrogate, stats = leader_surrogate(bilevel, batches, "naive", context_column)
        return Direction(stats, surrogate=surrogate)


class Fixed(Estimator):
    """No update; reports the statistics of the groups (the "no leader" baseline)."""

    name = "fixed"

    def estimate(self, bilevel, batches, context_column):  # type: ignore[override]
        with torch.no_grad():
            _, stats = leader_surrogate(bilevel, batches, "naive", context_column)
        return Direction(stats)


class ZeroOrder(Estimator):
    """Residual-feedback zero-order estimate ``g_t = (F_t - F_{t-1}) z_t / u_t``,
    ``u_t = u / t**decay``, ``z_t ~ N(0, I)`` drawn from ``generator`` in
    :meth:`follower_bilevel` (one evaluation per iteration, the previous one as baseline)."""

    name = "zero_order"

    def __init__(self, u: float, decay: float, generator: torch.Generator) -> None:
        if not (math.isfinite(u) and u > 0):
            raise ValueError(f"zero-order smoothing radius must be > 0, got {u!r}")
        self.u = float(u)
        self.decay = float(decay)
        self.generator = generator
        self.prev: float | None = None
        self.z: Tensor | None = None
        self.iteration = 1
        self._perturbed: BilevelRewards | None = None

    def radius(self) -> float:
        return self.u / max(1, self.iteration) ** self.decay

    def follower_bilevel(self, bilevel: BilevelRewards, iteration: int) -> BilevelRewards:
        self.iteration = iteration
        perturbed = copy.deepcopy(bilevel)
        x = bilevel.leader.flat_parameters()
        self.z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        torch.nn.utils.vector_to_parameters(
            x + self.radius() * self.z, perturbed.leader.parameters()
        )
        self._perturbed = perturbed
        return perturbed

    def sampled_bilevel(self, bilevel: BilevelRewards) -> BilevelRewards:
        return self._perturbed if self._perturbed is not None else bilevel

    def estimate(self, bilevel, batches, context_column):  # type: ignore[override]
        with torch.no_grad():
            _, stats = leader_surrogate(
                self.sampled_bilevel(bilevel), batches, "naive", context_column
            )
        F_t = stats.objective_estimate
        flat = None
        if self.prev is not None and self.z is not None:
            flat = (F_t - self.prev) * self.z / self.radius()
        self.prev = F_t
        return Direction(stats, flat=flat, extra={"leader/zero_order_u": self.radius()})

    def state_dict(self) -> dict[str, Any]:
        return {"prev": self.prev, "generator": self.generator.get_state().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev = state.get("prev")
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])


ESTIMATORS: dict[str, type[Estimator]] = {
    "hpgd": HPGD,
    "naive": Naive,
    "fixed": Fixed,
    "zero_order": ZeroOrder,
}


# --------------------------------------------------------------------------- transforms
class AllReduce:
    """Group-count weighted mean of ``.grad`` over processes (:class:`LeaderSync`). With several
    followers it equals the single-process combination ``sum_f c_f mean_g g_{f,g}`` over all
    ranks' groups when every rank holds the same number of groups per follower (as the
    orchestrated trainer draws them); tests/test_several_followers_distributed.py."""

    def __call__(self, leader: torch.nn.Module, n_groups: int, sync: LeaderSync) -> None:
        sync.all_reduce_gradients(leader, n_groups)


class ClipByGlobalNorm:
    """Clip the global gradient norm to ``max_norm`` (0 = off); refuse non-finite gradients."""

    def __init__(self, max_norm: float) -> None:
        if not (math.isfinite(max_norm) and max_norm >= 0):
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {max_norm!r}")
        self.max_norm = float(max_norm)

    def __call__(self, params: list[torch.nn.Parameter]) -> float:
        norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
        if not math.isfinite(norm):
            raise FloatingPointError(
                "the leader's hypergradient is not finite (check the reward components and "
                "beta); the leader was not updated"
            )
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        return norm


def set_ascent_gradient(
    leader: torch.nn.Module, surrogate: Tensor | None = None, flat: Tensor | None = None
) -> list[torch.nn.Parameter]:
    """``.grad = -direction`` for every trainable parameter (the optimiser minimises)."""
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


def apply_leader_gradient(
    leader: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    surrogate: Tensor | None = None,
    flat_gradient: Tensor | None = None,
    n_groups: int,
    max_grad_norm: float,
    sync: LeaderSync | None = None,
) -> float:
    """Ascend ``surrogate`` (or a given flat ascent direction, e.g. zero-order) by one step:
    ``set_ascent_gradient -> AllReduce -> ClipByGlobalNorm(max_grad_norm) -> optimizer.step``
    (0 = no clipping). Returns the hypergradient norm before clipping. A non-finite gradient
    leaves the parameters untouched."""
    params = set_ascent_gradient(leader, surrogate, flat_gradient)
    AllReduce()(leader, n_groups, sync or LeaderSync())
    try:
        norm = ClipByGlobalNorm(max_grad_norm)(params)
    except FloatingPointError:
        optimizer.zero_grad(set_to_none=False)
        raise
    optimizer.step()
    return norm


# --------------------------------------------------------------------------- the update
class LeaderUpdate:
    """``estimator -> AllReduce -> ClipByGlobalNorm -> optimiser`` for one leader.

    Before the step, :attr:`tracking` (:class:`~align_cbrl.trainer.tracking.FollowerTracking`)
    compares the batches with the previous update's: the ``<f>/tracking`` metrics in the
    result's extras, and a warning when a follower does not keep up.

    Args:
        estimator: an :class:`Estimator`.
        optimizer: ``torch.optim`` optimiser over the leader's parameters.
        max_grad_norm: global-norm clipping (0 disables).
    """

    def __init__(
        self, estimator: Estimator, optimizer: torch.optim.Optimizer, max_grad_norm: float
    ) -> None:
        self.estimator = estimator
        self.optimizer = optimizer
        self.clip = ClipByGlobalNorm(max_grad_norm)
        self.tracking = FollowerTracking()

    def follower_bilevel(self, bilevel: BilevelRewards, iteration: int) -> BilevelRewards:
        return self.estimator.follower_bilevel(bilevel, iteration)

    def step(
        self,
        leader: torch.nn.Module,
        bilevel: BilevelRewards,
        batches: Sequence[GroupedSamples],
        context_column: str | None,
        sync: LeaderSync | None = None,
    ) -> UpdateResult:
        sampled_leader = self.estimator.sampled_bilevel(bilevel).leader
        tracked = self.tracking.observe(sampled_leader, batches, context_column, sync)
        direction = self.estimator.estimate(bilevel, batches, context_column)
        norm, stepped = 0.0, False
        if direction.has_step:
            norm = apply_leader_gradient(
                leader,
                self.optimizer,
                surrogate=direction.surrogate,
                flat_gradient=direction.flat,
                n_groups=direction.stats.groups,
                max_grad_norm=self.clip.max_norm,
                sync=sync,
            )
            stepped = True
        return UpdateResult(direction.stats, norm, stepped, {**(direction.extra or {}), **tracked})


def build_leader_update(
    estimator: str,
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    *,
    zero_order_u: float = 0.5,
    zero_order_decay: float = 0.0,
    generator: torch.Generator | None = None,
    allowed: Sequence[str] | None = None,
) -> LeaderUpdate:
    """The :class:`LeaderUpdate` for ``estimator`` (``hpgd``, ``naive``, ``zero_order``,
    ``fixed``; ``allowed`` restricts the choice, e.g. plugin mode has no zero-order)."""
    names = list(allowed) if allowed is not None else list(ESTIMATORS)
    if estimator not in names:
        raise ValueError(f"leader estimator must be one of {names}, got {estimator!r}")
    if estimator == "zero_order":
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        est: Estimator = ZeroOrder(zero_order_u, zero_order_decay, gen)
    else:
        est = ESTIMATORS[estimator]()
    return LeaderUpdate(est, optimizer, max_grad_norm)
