"""How long the followers train per outer iteration: ``leader.follower_schedule``.

* ``kind: fixed`` (default): every iteration trains ``follower_steps`` (K) steps, then one
  HPGD estimate (the plain outer loop of :class:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer`).
* ``kind: mlmc``: the randomised multilevel (accelerated) estimator of ``docs/theory.md`` §9
  (:func:`~align_cbrl.estimators.multilevel.multilevel_estimate`). Each iteration draws a level
  ``J`` in ``1..max_level`` with probability ``p_J`` from a seeded, checkpointed generator; the
  followers (warm-started, on the reward of the current leader) train ``base_steps`` steps and
  the leader estimates ``g_0`` from freshly sampled groups with the same estimator code as the
  fixed path; they continue to ``base_steps * 2**k`` steps for ``k = 1..J``, estimating ``g_k``
  at each, and the leader steps along ``g_0 + (g_J - g_{J-1}) / p_J``. With ``coupling:
  common`` (default) every level replays the same prompt draws and the followers' sampling
  random numbers (:meth:`~align_cbrl.followers.base.Follower.sampling_state`), so ``g_J`` and
  ``g_{J-1}`` differ only through the follower's extra training (§9.4); ``independent`` draws
  fresh samples at each level.

The multilevel path needs followers that continue their training
(:attr:`~align_cbrl.followers.base.Follower.continues_training`); an exact best response
(``trainer: exact``) is refused at config load, any other follower that cannot continue when the
trainer is built, both before anything is trained or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from align_cbrl.config_parser import setting
from align_cbrl.estimators.multilevel import MultilevelSchedule, multilevel_estimate
from align_cbrl.trainer.estimation import Direction, leader_update
from align_cbrl.trainer.stats import Stopwatch
from align_cbrl.utils.io import load_safetensors, save_safetensors

if TYPE_CHECKING:
    from align_cbrl.trainer.hpgd_trainer import HPGDTrainer

__all__ = [
    "LEVEL",
    "SCHEDULE_FILE",
    "STEPS",
    "STEPS_TOTAL",
    "FollowerScheduleConfig",
    "MultilevelFollowerSchedule",
    "build_follower_schedule",
]

SCHEDULE_FILE = "follower_schedule.safetensors"
LEVEL, STEPS, STEPS_TOTAL = "mlmc/level", "mlmc/follower_steps", "mlmc/follower_steps_total"


@dataclass
class FollowerScheduleConfig:
    """``leader.follower_schedule`` (module docstring).

    Attributes:
        kind: ``"fixed"`` (K = ``follower_steps`` per iteration) or ``"mlmc"``.
        base_steps: ``n_0 >= 1``, follower steps of level 0 (``null``: ``follower_steps``).
        max_level: ``J_max >= 1``; level ``j`` trains ``base_steps * 2**j`` steps in all.
        probabilities: ``p_1 .. p_{J_max}`` summing to 1 (``null``: ``p_j ∝ 2^-j``).
        coupling: ``"common"`` (same prompts and sampling random numbers at every level) or
            ``"independent"`` (fresh samples per level).
    """

    kind: Literal["fixed", "mlmc"] = setting(
        "fixed", "fixed (follower_steps per iteration) or mlmc (multilevel, §9)"
    )
    base_steps: int | None = setting(None, "mlmc: follower steps of level 0 (null: follower_steps)")
    max_level: int = setting(3, "mlmc: top level J_max >= 1 (base_steps * 2**J_max steps)")
    probabilities: list[float] | None = setting(
        None, "mlmc: p_1..p_Jmax summing to 1 (null: p_j proportional to 2^-j)"
    )
    coupling: Literal["common", "independent"] = setting(
        "common", "mlmc: common (same prompts / sampling RNG per level) or independent"
    )

    def __post_init__(self) -> None:
        if self.kind == "mlmc":  # the config loader prefixes the path to the one-line error
            self._schedule(1 if self.base_steps is None else self.base_steps)

    def schedule(self, follower_steps: int) -> MultilevelSchedule:
        """The :class:`MultilevelSchedule` (``base_steps`` defaulting to ``follower_steps``);
        its checks raise one-line ``ValueError`` s (``max_level < 1``, probabilities)."""
        base = follower_steps if self.base_steps is None else self.base_steps
        try:
            return self._schedule(base)
        except ValueError as err:
            raise ValueError(f"leader.follower_schedule: {err}") from err

    def _schedule(self, base: int) -> MultilevelSchedule:
        probs = None if self.probabilities is None else tuple(self.probabilities)
        return MultilevelSchedule(base, self.max_level, probs)


def build_follower_schedule(config: Any, followers: list[Any]) -> MultilevelFollowerSchedule | None:
    """``None`` for ``kind: fixed``; else the schedule, after checking that every follower
    continues its training (one-line error naming the follower)."""
    sc = config.leader.follower_schedule
    if sc.kind == "fixed":
        return None
    for f in followers:
        if not f.continues_training:
            raise ValueError(
                f"leader.follower_schedule kind 'mlmc' needs followers that continue training "
                f"(warm start); follower {f.name!r} ({type(f).__name__}) does not; use kind "
                "'fixed' or a learning follower (grpo, rloo, tabular)"
            )
    return MultilevelFollowerSchedule(sc, config.follower_steps, config.seed)


class MultilevelFollowerSchedule:
    """Runs one multilevel outer iteration on an ``HPGDTrainer`` (module docstring).

    The level generator is seeded with ``seed + 2`` (the trainer uses ``seed`` for prompts and
    ``seed + 1`` for zero-order directions) and is checkpointed as ``follower_schedule.safetensors``.
    """

    def __init__(self, config: FollowerScheduleConfig, follower_steps: int, seed: int) -> None:
        self.schedule = config.schedule(follower_steps)
        self.common = config.coupling == "common"
        self.generator = torch.Generator().manual_seed(int(seed) + 2)

    def save(self, path: Path) -> None:
        save_safetensors(path, {"level_gen": self.generator.get_state()})

    def load(self, checkpoint: Path) -> None:
        self.generator.set_state(load_safetensors(checkpoint / SCHEDULE_FILE)["level_gen"])

    def step(self, trainer: HPGDTrainer, t: int) -> dict[str, Any]:
        """Outer iteration ``t`` of ``trainer`` with the multilevel estimate; its metrics. The
        trainer's plain iteration (:meth:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer.step`)
        with its steps 1-3 run at the levels ``0..J`` and ``g_0 + (g_J - g_{J-1}) / p_J`` as
        the direction of step 4 (the same :func:`leader_update`)."""
        trainer.reward_followers(t)
        run = _LevelRun(trainer, self.common)
        est = multilevel_estimate(run.advance, self.schedule, generator=self.generator)
        direction = Direction(run.direction.stats, flat=est.gradient)
        max_norm = trainer.config.leader.max_grad_norm
        result = leader_update(trainer.leader, trainer.optimizer, direction, max_norm, trainer.sync)
        rec: dict[str, Any] = dict(run.train_metrics)
        rec.update(result.to_metrics())
        rec.update(trainer.component_metrics(run.batches))
        total = trainer.history[-1].get(STEPS_TOTAL, 0) if trainer.history else 0
        rec.update(
            {
                LEVEL: est.level,
                "mlmc/p_level": est.probability,
                STEPS: est.follower_steps,
                STEPS_TOTAL: int(total) + est.follower_steps,
                "mlmc/top_grad_norm": float(torch.linalg.vector_norm(est.top)),
                "mlmc/base_grad_norm": run.base_norm,
            }
        )
        run.clock.lap("time/leader")
        return trainer.finish_metrics(rec, run.clock.laps)


class _LevelRun:
    """``advance(steps)`` for :func:`multilevel_estimate`: train every follower ``steps`` more
    steps, sample groups (replaying the first level's random numbers when ``common``) and
    return the leader estimator's flat ascent direction."""

    def __init__(self, trainer: HPGDTrainer, common: bool) -> None:
        self.trainer = trainer
        self.common = common
        self.rng: Any = None  # the first level's GroupSampler.state()
        self.train_metrics: dict[str, float] = {}
        self.clock = Stopwatch()
        self.direction: Any = None
        self.batches: list[Any] = []
        self.base_norm: float | None = None

    def advance(self, steps: int) -> torch.Tensor:
        tr = self.trainer
        self.train_metrics.update(tr.train_followers(steps))
        self.clock.lap("time/follower_train")
        self._replay()
        self.batches = tr.sample_batches()
        self.clock.lap("time/sample")
        self.direction = tr.estimator.estimate(tr.bilevel, self.batches, tr.setup.context_column)
        g = _flat_gradient(tr.leader, self.direction.surrogate)
        if self.base_norm is None:
            self.base_norm = float(torch.linalg.vector_norm(g))
        self.clock.lap("time/leader")
        return g

    def _replay(self) -> None:
        """Capture the sampling random state at the first level, restore it at later ones."""
        if not self.common:
            return
        sampler = self.trainer.sampler
        if self.rng is None:
            self.rng = sampler.state()
        else:
            sampler.set_state(self.rng)


def _flat_gradient(leader: torch.nn.Module, surrogate: torch.Tensor | None) -> torch.Tensor:
    """``d surrogate / dx`` over the leader's trainable parameters, flattened (the order of
    :func:`~align_cbrl.trainer.estimation.set_ascent_gradient`)."""
    params = [p for p in leader.parameters() if p.requires_grad]
    if surrogate is None:
        raise ValueError(
            "leader.follower_schedule kind 'mlmc' needs leader.estimator hpgd or naive"
        )
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).detach()
            for p, g in zip(params, grads, strict=True)
        ]
    )
