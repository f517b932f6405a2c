"""The leader's estimators: interchangeable strategies that turn completion groups into an
ascent direction for the leader's parameters ``x`` (``docs/theory.md §2``; baselines: §8).
Shared by both training modes; ``leader.estimator`` in the config picks one:

* :class:`HPGD`       -- gradient of ``sum_f c_f hpgd_surrogate(v_f r_f, rbar_f, beta_f)`` (Eq. SUR;
  ``c_f`` the followers' normalised weights, ``v_f`` the weight on ``r_x``), unbiased for
  ``dF/dx = sum_f c_f E_p[E d rbar + (1/beta_f) Cov(v_f d r, rbar)]`` at the best responses;
* :class:`Naive`      -- gradient of ``sum_f c_f mean rbar_f`` (ignores the followers' reaction);
* :class:`ZeroOrder`  -- residual-feedback Gaussian smoothing ``g_t = (F_t - F_{t-1}) z_t / u_t``
  (Zhang et al. 2022): the followers train under ``x_t + u_t z_t`` (:meth:`follower_bilevel`),
  ``F_t`` is the sampled ``sum_f c_f mean rbar_f`` there; no step at the first iteration;
* :class:`Fixed`      -- statistics only, never a step ("no leader").

An estimator only estimates; the step along its :class:`Direction` is one plain function,
:func:`~align_cbrl.trainer.estimation.leader_update` (all-reduce -> clip by global norm ->
optimiser step). The orchestrated :meth:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer.step`
and the plugin :meth:`~align_cbrl.trainer.callback.HPGDCallback.update` both build theirs with
:func:`build_estimator` from the run's :class:`~align_cbrl.trainer.config.LeaderConfig`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from align_cbrl.objective import BilevelRewards
from align_cbrl.trainer.estimation import Direction, GroupedSamples, leader_surrogate

if TYPE_CHECKING:
    from align_cbrl.trainer.config import LeaderConfig

__all__ = [
    "ESTIMATORS",
    "HPGD",
    "Direction",
    "Estimator",
    "Fixed",
    "Naive",
    "ZeroOrder",
    "build_estimator",
]


# --------------------------------------------------------------------------- estimators
class Estimator:
    """Base class of the leader's estimators (module docstring).

    Contract: :meth:`estimate` turns one update's completion groups into a
    :class:`~align_cbrl.trainer.estimation.Direction` ``d ≈ dF/dx`` (or one without a step)
    and only estimates: it never touches the leader's parameters or gradients. The caller
    steps with :func:`~align_cbrl.trainer.estimation.leader_update`. An estimator that keeps
    state between updates (zero-order: ``F_{t-1}``) exposes it through :meth:`state_dict` /
    :meth:`load_state_dict`, which the checkpoints of both modes hold.
    """

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
        """The direction from ``batches`` (one :class:`GroupedSamples` per follower) for the
        leader of ``bilevel``, with the statistics of the groups."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The state kept between updates (JSON values and tensors; ``{}``: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
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


def build_estimator(
    leader: LeaderConfig,
    *,
    generator: torch.Generator | None = None,
    allowed: Sequence[str] | None = None,
) -> Estimator:
    """The :class:`Estimator` that ``leader.estimator`` names (``hpgd``, ``naive``,
    ``zero_order``, ``fixed``; ``allowed`` restricts the choice: plugin mode has no zero-order).
    ``generator`` draws the zero-order directions ``z_t`` (default: a generator seeded 0)."""
    names = list(allowed) if allowed is not None else list(ESTIMATORS)
    if leader.estimator not in names:
        raise ValueError(f"leader estimator must be one of {names}, got {leader.estimator!r}")
    if leader.estimator == "zero_order":
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        return ZeroOrder(leader.zero_order_u, leader.zero_order_decay, gen)
    return ESTIMATORS[leader.estimator]()
