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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from align_cbrl.estimators.multilevel import MultilevelSchedule, multilevel_estimate
from align_cbrl.trainer.stats import UpdateResult, leader_weight_metrics
from align_cbrl.trainer.strategies import apply_leader_gradient
from align_cbrl.utils.io import load_safetensors, save_safetensors

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

    kind: Literal["fixed", "mlmc"] = field(
        default="fixed",
        metadata={"help": "fixed (follower_steps per iteration) or mlmc (multilevel, §9)"},
    )
    base_steps: int | None = field(
        default=None, metadata={"help": "mlmc: follower steps of level 0 (null: follower_steps)"}
    )
    max_level: int = field(
        default=3, metadata={"help": "mlmc: top level J_max >= 1 (base_steps * 2**J_max steps)"}
    )
    probabilities: list[float] | None = field(
        default=None,
        metadata={"help": "mlmc: p_1..p_Jmax summing to 1 (null: p_j proportional to 2^-j)"},
    )
    coupling: Literal["common", "independent"] = field(
        default="common",
        metadata={"help": "mlmc: common (same prompts / sampling RNG per level) or independent"},
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

    def step(self, trainer: Any, t: int) -> dict[str, Any]:
        """Outer iteration ``t`` of ``trainer`` with the multilevel estimate; its metrics."""
        reward = trainer._reward_for_followers(t)
        for b in trainer.bundles:
            b.follower.set_reward_function(reward)
        run = _LevelRun(trainer, self.common)
        est = multilevel_estimate(run.advance, self.schedule, generator=self.generator)
        t0 = time.perf_counter()
        norm = apply_leader_gradient(
            trainer.leader,
            trainer.optimizer,
            flat_gradient=est.gradient,
            n_groups=run.direction.stats.groups,
            max_grad_norm=trainer.leader_update.clip.max_norm,
            sync=trainer.sync,
        )
        rec: dict[str, Any] = dict(run.train_metrics)
        rec.update(UpdateResult(run.direction.stats, norm, True).to_metrics())
        for bt in run.batches:
            for k, c in enumerate(trainer.setup.components):
                rec[f"{bt.follower}/components/{c.name}"] = float(bt.scores[:, k].mean())
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
        exact = trainer.exact_objective()
        if exact is not None:
            rec.update(exact)
        rec["time/follower_train"] = run.seconds["train"]
        rec["time/sample"] = run.seconds["sample"]
        rec["time/leader"] = run.seconds["leader"] + time.perf_counter() - t0
        rec.update(leader_weight_metrics(trainer.leader))
        return rec


class _LevelRun:
    """``advance(steps)`` for :func:`multilevel_estimate`: train every follower ``steps`` more
    steps, sample groups (replaying the first level's random numbers when ``common``) and
    return the leader estimator's flat ascent direction."""

    def __init__(self, trainer: Any, common: bool) -> None:
        self.trainer = trainer
        self.common = common
        self.rng: tuple[torch.Tensor, list[Any]] | None = None
        self.train_metrics: dict[str, float] = {}
        self.seconds = {"train": 0.0, "sample": 0.0, "leader": 0.0}
        self.direction: Any = None
        self.batches: list[Any] = []
        self.base_norm: float | None = None

    def advance(self, steps: int) -> torch.Tensor:
        tr = self.trainer
        t0 = time.perf_counter()
        self.train_metrics.update(tr.train_followers(steps))
        t1 = time.perf_counter()
        self._replay()
        self.batches = tr.sample_batches()
        t2 = time.perf_counter()
        est = tr.leader_update.estimator
        self.direction = est.estimate(tr.bilevel, self.batches, tr.setup.context_column)
        g = _flat_gradient(tr.leader, self.direction.surrogate)
        if self.base_norm is None:
            self.base_norm = float(torch.linalg.vector_norm(g))
        self.seconds["train"] += t1 - t0
        self.seconds["sample"] += t2 - t1
        self.seconds["leader"] += time.perf_counter() - t2
        return g

    def _replay(self) -> None:
        """Capture the sampling random state at the first level, restore it at later ones."""
        if not self.common:
            return
        tr = self.trainer
        if self.rng is None:
            states = [b.follower.sampling_state() for b in tr.bundles]
            self.rng = (tr._prompt_gen.get_state(), states)
            return
        tr._prompt_gen.set_state(self.rng[0])
        for b, s in zip(tr.bundles, self.rng[1], strict=True):
            b.follower.set_sampling_state(s)


def _flat_gradient(leader: torch.nn.Module, surrogate: torch.Tensor | None) -> torch.Tensor:
    """``d surrogate / dx`` over the leader's trainable parameters, flattened (the order of
    :func:`~align_cbrl.trainer.strategies.set_ascent_gradient`)."""
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
