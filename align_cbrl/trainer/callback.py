"""``HPGDCallback``: HPGD inside an existing TRL GRPO/RLOO script (plugin mode).

Add two objects to the script you already have::

    reward = HPGDReward(bilevel, components)                    # r_x for TRL, buffers groups
    trainer = GRPOTrainer(..., reward_funcs=[reward], callbacks=[HPGDCallback(reward, update_every=10)])

TRL generates ``num_generations`` completions per prompt and calls the reward function once per
generation batch; the reward object keeps the scored groups. Every ``update_every`` optimiser
steps the callback takes the groups generated since the previous update and moves the leader
one step along the HPGD estimate (reference notes section 2)

    dF/dx ≈ mean_g [ mean_i d rbar_i + (1/beta) 1/(N-1) sum_i (d r_i - mean d r)(rbar_i - mean rbar) ]

(gradient of ``hpgd_surrogate``), all-reduced over processes, clipped, one optimiser step. The
next generation batch is rewarded with the updated incentive. No extra generation: the leader
costs one component-scoring pass per batch (done anyway to compute ``r_x``) plus one small
backward pass per update.

``beta`` (the follower's KL temperature) is read from the TRL config (``args.beta``) at
``on_train_begin`` unless given; ``beta <= 0`` (GRPO's default ``0.0``) is refused there, before
any training step. ``scale_rewards`` other than ``"none"`` changes the follower's objective
(the effective temperature becomes ``beta * std``); the callback refuses it unless
``allow_reward_scaling=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from align_cbrl.distributed import LeaderSync
from align_cbrl.followers.base import validate_beta
from align_cbrl.metrics import MetricsLogger
from align_cbrl.trainer.estimation import apply_leader_gradient, build_optimizer, leader_surrogate
from align_cbrl.trainer.reward_function import HPGDReward

__all__ = ["HPGDCallback"]


class HPGDCallback(TrainerCallback):
    """Updates the leader of ``reward`` every ``update_every`` steps from TRL's own groups.

    Args:
        reward: the :class:`HPGDReward` given to the trainer as (one of) its reward functions.
        update_every: K, optimiser steps between leader updates.
        optimizer: a ``torch.optim`` optimiser over the leader's parameters; default built
            from ``optimizer_name`` / ``lr``.
        optimizer_name, lr: ``"adam"`` / ``"sgd"`` and learning rate of the default optimiser.
        estimator: ``"hpgd"`` or ``"naive"`` (direct term only, a baseline).
        max_grad_norm: global-norm clipping (0 disables).
        beta: the follower's KL temperature; default ``args.beta`` of the TRL trainer.
        allow_reward_scaling: accept ``scale_rewards != "none"`` (the estimate is then biased).
        output_dir: if set, leader metrics go to ``<output_dir>/leader_metrics.jsonl`` and the
            leader is saved into each TRL checkpoint (``checkpoint-*/leader``) and at the end
            (``<output_dir>/leader``).
        sync: :class:`LeaderSync` (default: the process group that is initialised when
            training begins; TRL/accelerate initialise it while building the trainer, which
            may happen after this callback is constructed).
    """

    def __init__(
        self,
        reward: HPGDReward,
        update_every: int = 10,
        *,
        optimizer: Any | None = None,
        optimizer_name: str = "adam",
        lr: float = 0.1,
        estimator: str = "hpgd",
        max_grad_norm: float = 1.0,
        beta: float | None = None,
        allow_reward_scaling: bool = False,
        output_dir: str | os.PathLike[str] | None = None,
        sync: LeaderSync | None = None,
    ) -> None:
        if not isinstance(reward, HPGDReward):
            raise TypeError("reward must be the HPGDReward object passed to the trainer")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        if estimator not in ("hpgd", "naive"):
            raise ValueError(f"estimator must be 'hpgd' or 'naive', got {estimator!r}")
        if not reward.buffer_enabled:
            raise ValueError(
                "build the HPGDReward with buffer=True so the callback sees the groups"
            )
        self.reward = reward
        self.leader = reward.bilevel.leader
        self.update_every = update_every
        self.optimizer = optimizer or build_optimizer(self.leader.parameters(), optimizer_name, lr)
        self.estimator = estimator
        self.max_grad_norm = float(max_grad_norm)
        self.beta = None if beta is None else validate_beta(beta, "HPGDCallback")
        self.allow_reward_scaling = allow_reward_scaling
        self.output_dir = None if output_dir is None else Path(output_dir)
        self._given_sync = sync
        self.sync = sync if sync is not None else LeaderSync()
        self.group_size: int | None = None
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}
        self._logger: MetricsLogger | None = None

    # ------------------------------------------------------------------ TRL events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        beta = self.beta if self.beta is not None else getattr(args, "beta", None)
        self.beta = validate_beta(
            beta,
            "HPGDCallback: the TRL trainer's beta (its KL coefficient; GRPOConfig defaults to "
            "beta=0.0)",
        )
        scaling = getattr(args, "scale_rewards", "none")
        if scaling not in ("none", False) and not self.allow_reward_scaling:
            raise ValueError(
                f"HPGDCallback: scale_rewards={scaling!r} divides each group's rewards by their "
                "std, so the follower optimises another objective than E[r] - beta KL and the "
                "hypergradient is biased; set scale_rewards='none' in the TRL config (or pass "
                "allow_reward_scaling=True to accept the bias)"
            )
        n = getattr(args, "num_generations", None)
        if not isinstance(n, int) or n < 2:
            raise ValueError(
                f"HPGDCallback needs num_generations >= 2 completions per prompt, got {n!r}"
            )
        self.group_size = n
        if self._given_sync is None:
            self.sync = LeaderSync()  # the trainer has initialised the process group by now
        self.sync.broadcast(self.leader)
        if self.output_dir is not None and self._logger is None:
            self._logger = MetricsLogger(
                self.output_dir,
                tensorboard=False,
                enabled=self.sync.is_main_process,
                filename="leader_metrics.jsonl",
            )
            self._logger.truncate_after(int(state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.update_every == 0 and self.reward.buffer:
            self.update(int(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs is not None and self._pending:
            logs.update(self._pending)
            self._pending = {}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.output_dir is not None and self.sync.is_main_process:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                self.leader.save(ckpt / "leader")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.output_dir is not None and self.sync.is_main_process:
            self.leader.save(self.output_dir / "leader")
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    # ------------------------------------------------------------------ the update
    def update(self, step: int) -> dict[str, float]:
        """One leader step from everything buffered since the previous update."""
        if self.group_size is None or self.beta is None:
            raise RuntimeError("HPGDCallback.update before on_train_begin")
        samples = self.reward.take_groups(self.group_size, self.beta)
        surrogate, stats = leader_surrogate(
            self.reward.bilevel, [samples], self.estimator, self.reward.context_column
        )
        norm = apply_leader_gradient(
            self.leader,
            self.optimizer,
            surrogate=surrogate,
            n_groups=samples.num_groups,
            max_grad_norm=self.max_grad_norm,
            sync=self.sync,
        )
        record = {
            "hpgd/grad_norm": norm,
            "hpgd/groups": float(samples.num_groups),
            "hpgd/objective_estimate": stats["objective_estimate"],
            "hpgd/incentive": stats["trl/incentive"],
            "hpgd/cost": stats["trl/cost"],
            "hpgd/base_reward": stats["trl/base_reward"],
        }
        self.history.append({"step": float(step), **record})
        self._pending.update(record)
        if self._logger is not None:
            self._logger.log(step, record)
        return record
