"""``HPGDCallback``: HPGD inside an existing TRL GRPO/RLOO script (plugin mode).

Add two objects to the script you already have::

    reward = HPGDReward(bilevel, components)                    # r_x for TRL (a plain function)
    callback = HPGDCallback(reward, HPGDArguments(leader_update_every=10))
    trainer = GRPOTrainer(..., reward_funcs=[reward], callbacks=[callback])

TRL generates ``num_generations`` completions per prompt and calls the reward function once per
generation batch; the callback subscribes its :class:`~align_cbrl.trainer.groups.GroupBuffer`
to the reward and so keeps the scored groups. Every ``leader_update_every`` optimiser steps it
moves the leader one step along the HPGD estimate (``docs/theory.md §3``)

    dF/dx ≈ mean_g [ mean_i d rbar_i + (1/beta) 1/(N-1) sum_i (w d r_i - mean w d r)(rbar_i - mean rbar) ]

(gradient of ``hpgd_surrogate``, ``w`` = TRL's ``reward_weights`` entry of this reward; the
estimator objects of :mod:`align_cbrl.trainer.strategies`), all-reduced over processes,
clipped, one optimiser step (:func:`~align_cbrl.trainer.estimation.leader_update`, as the
orchestrated trainer's step). The next generation batch is rewarded with the updated
incentive. No extra generation.

**Checked before any generation** (``on_train_begin``): ``beta > 0`` (GRPO's default ``0.0`` is
refused); ``scale_rewards != "none"``, ``multi_objective_aggregation="normalize_then_sum"``,
RLOO's ``normalize_advantages=True`` and ``reward_clip_range`` change the follower's objective
(refused unless ``leader_allow_reward_scaling=True``); trainers that score rewards in another
process (TRL's ``AsyncGRPOTrainer``) are refused; the training dataset must not be empty, must have the
context column and only contexts the leader knows, and every context the mixes or the leader
name must occur in it (:mod:`align_cbrl.trainer.validation`, shared with orchestrated runs); the
output directories must be writable. A ``leader_reward_index`` that does not point at the
:class:`HPGDReward` in the trainer's ``reward_funcs`` raises at the first scored batch (before
the first optimiser step), and a leader that has received no scored batch by its first update
(the :class:`HPGDReward` is missing from ``reward_funcs``) raises.

**Checkpoints and resume.** At every TRL checkpoint the callback writes
``checkpoint-<step>/hpgd_leader/`` (the leader as a ``save_pretrained`` folder, its optimiser,
the estimator state, the groups buffered since the last update and the leader's metric history;
safetensors + JSON, atomic).
``trainer.train(resume_from_checkpoint=...)`` restores them at ``on_train_begin``, so an
interrupted and resumed run ends with the same leader bytes as an uninterrupted one (CPU).

**Metrics** (names shared with orchestrated runs, :mod:`align_cbrl.trainer.stats`) go into
TRL's own metric store at the step of the update, so they land in ``trainer.state.log_history``,
``trainer_state.json`` and every ``report_to`` backend; they are also appended to
``<output_dir>/leader_metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from align_cbrl.checkpoint import optimizer_state_from_files, optimizer_state_to_files
from align_cbrl.distributed import LeaderSync
from align_cbrl.followers.base import validate_beta
from align_cbrl.followers.trl_compat import (
    metric_store,
    scores_out_of_process,
    trainer_reward_funcs,
)
from align_cbrl.leaders.base import STATE_FILE
from align_cbrl.metrics import MetricsLogger
from align_cbrl.trainer.arguments import PLUGIN_ESTIMATORS, HPGDArguments, PluginSettings
from align_cbrl.trainer.estimation import build_optimizer, leader_update
from align_cbrl.trainer.final_leader import (
    plugin_training_summary,
    reward_spec_or_warn,
    save_final_leader,
)
from align_cbrl.trainer.groups import GroupBuffer, ScoredBatch
from align_cbrl.trainer.reward_function import HPGDReward
from align_cbrl.trainer.stats import leader_weight_metrics
from align_cbrl.trainer.strategies import build_estimator
from align_cbrl.trainer.tracking import FollowerTracking
from align_cbrl.trainer.validation import (
    check_dataset_for_leader,
    check_reward_scaling,
    check_writable_directory,
)
from align_cbrl.utils.io import (
    atomic_directory,
    atomic_write_json,
    load_safetensors,
    read_json,
    save_safetensors,
)

__all__ = ["CHECKPOINT_DIR", "HPGDCallback"]

CHECKPOINT_DIR = "hpgd_leader"  # inside TRL's checkpoint-<step>/


class HPGDCallback(TrainerCallback):
    """Updates the leader of ``reward`` every ``args.leader_update_every`` steps from TRL's own
    groups.

    Args:
        reward: the :class:`HPGDReward` given to the trainer as (one of) its reward functions.
        args: the leader's settings, :class:`~align_cbrl.trainer.arguments.HPGDArguments`
            (``leader_update_every``, ``leader_lr``, ``leader_estimator``, ...: the
            ``LeaderConfig`` of orchestrated runs with the ``leader_`` prefix, plus the
            plugin's own); default ``HPGDArguments()``. ``leader_spec`` and ``leader_init``
            are not read here (the leader is ``reward``'s).
        optimizer: a ``torch.optim`` optimiser over the leader's parameters; default built
            from ``args.leader_optimizer`` / ``leader_lr`` / ``leader_momentum`` /
            ``leader_adam_betas``.
        sync: :class:`LeaderSync` (default: the process group that is initialised when
            training begins).

    The final leader goes to ``<leader_output_dir or args.output_dir>/leader`` as a
    ``save_pretrained`` folder with the reward's spec and a training summary; a reward with an
    in-memory function component (which a folder cannot name) is saved without its spec, and
    a warning says so when training begins.
    """

    def __init__(
        self,
        reward: HPGDReward,
        args: HPGDArguments | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        sync: LeaderSync | None = None,
    ) -> None:
        if not isinstance(reward, HPGDReward):
            raise TypeError("reward must be the HPGDReward object passed to the trainer")
        args = HPGDArguments() if args is None else args
        if not isinstance(args, PluginSettings):
            raise TypeError(
                f"args must be HPGDArguments (the leader's settings), got {type(args).__name__}"
            )
        self.args = args
        self.leader_config = args.leader_config()  # the settings orchestrated runs read
        self.reward = reward
        self.leader = reward.bilevel.leader
        self.update_every = args.leader_update_every
        lc = self.leader_config
        self.optimizer = optimizer or build_optimizer(
            self.leader.parameters(), lc.optimizer, lc.lr, lc.momentum, lc.adam_betas
        )
        self.estimator = build_estimator(lc, allowed=PLUGIN_ESTIMATORS)
        self.tracking = FollowerTracking()
        beta = args.leader_follower_beta
        self.beta = None if beta is None else validate_beta(beta, "HPGDCallback")
        self._given_beta = self.beta
        self.reward_index = args.leader_reward_index
        self.reward_weight = 1.0
        self.allow_reward_scaling = args.leader_allow_reward_scaling
        self.output_dir = None if args.leader_output_dir is None else Path(args.leader_output_dir)
        self.resume_from = (
            None if args.leader_resume_from is None else Path(args.leader_resume_from)
        )
        self.follower_name = args.leader_follower_name
        self._given_sync = sync
        self.sync = sync if sync is not None else LeaderSync()
        self.group_size: int | None = None
        self.buffer = GroupBuffer()
        self.history: list[dict[str, float]] = []
        self.batches_seen = 0
        self._pending: dict[str, float] = {}
        self._trl_metrics: Any = None
        self._logger: MetricsLogger | None = None
        self._last_groups: Any = None
        reward.subscribe(self._receive)

    # ------------------------------------------------------------------ the reward's sink
    def _receive(self, batch: ScoredBatch) -> None:
        if batch.logger is not None and self.batches_seen == 0:
            self._check_reward_index(batch.logger)
        self.batches_seen += 1
        if batch.logger is not None:
            self._bind_trainer_metrics(batch.logger)
        # keep no reference to the trainer (its bound log_metric) in the buffer: the trainer
        # must stay out of reference cycles so that it is freed when the script drops it
        self.buffer.add(dataclasses.replace(batch, logger=None))

    def _check_reward_index(self, log_metric: Any) -> None:
        """``leader_reward_index`` must name the HPGDReward's position in the trainer's
        ``reward_funcs``: another position would weight the hypergradient with another
        reward's weight."""
        funcs = trainer_reward_funcs(log_metric) or []
        mine = [i for i, f in enumerate(funcs) if f is self.reward]
        i = self.reward_index
        if i is None or not mine or i in mine:
            return
        other = funcs[i] if i < len(funcs) else None
        name = getattr(other, "__name__", type(other).__name__)
        raise ValueError(
            f"HPGDCallback: leader_reward_index={i} points at reward_funcs[{i}] ({name!r}), not at "
            f"the HPGDReward {self.reward.__name__!r}, which is reward_funcs[{mine[0]}]; set "
            f"HPGDArguments(leader_reward_index={mine[0]}) (the hypergradient would use another "
            "reward's weight)"
        )

    def _bind_trainer_metrics(self, log_metric: Any) -> None:
        metrics = metric_store(log_metric)
        if metrics is not None:
            self._trl_metrics = metrics

    # ------------------------------------------------------------------ validation
    def _validate(self, args: Any) -> None:
        async_cls = scores_out_of_process(args)
        if async_cls is not None:
            raise ValueError(
                f"HPGDCallback: {async_cls} scores completions in a separate rollout process, "
                "where the leader's updates never arrive (and the callback never sees the "
                "groups); use GRPOTrainer or RLOOTrainer (use_vllm=True works with them)"
            )
        beta = self._given_beta if self._given_beta is not None else getattr(args, "beta", None)
        self.beta = validate_beta(
            beta,
            "HPGDCallback: the TRL trainer's beta (its KL coefficient; GRPOConfig defaults to "
            "beta=0.0)",
        )
        if not self.allow_reward_scaling:
            opt_in = "(or set HPGDArguments(leader_allow_reward_scaling=True) to accept the bias)"
            check_reward_scaling(args, "HPGDCallback", opt_in)
        n = getattr(args, "num_generations", None)
        if not isinstance(n, int) or n < 2:
            raise ValueError(
                f"HPGDCallback needs num_generations >= 2 completions per prompt, got {n!r}"
            )
        self.group_size = n
        weights = getattr(args, "reward_weights", None)
        if weights is None:
            self.reward_weight = 1.0
        else:
            weights = list(weights)
            if self.reward_index is not None:
                if self.reward_index >= len(weights):
                    raise ValueError(
                        f"HPGDCallback: leader_reward_index={self.reward_index} but reward_weights "
                        f"has {len(weights)} entries"
                    )
                w = weights[self.reward_index]
            elif len(weights) == 1:
                w = weights[0]
            else:
                raise ValueError(
                    f"HPGDCallback: args.reward_weights has {len(weights)} entries {weights}; "
                    "set HPGDArguments(leader_reward_index=i) to the position of the HPGDReward "
                    "in reward_funcs so the hypergradient uses its weight"
                )
            w = float(w)
            if not torch.isfinite(torch.tensor(w)) or w == 0.0:
                raise ValueError(
                    f"HPGDCallback: the HPGDReward's reward weight must be finite and non-zero "
                    f"(with 0 the leader cannot influence the follower), got {w}"
                )
            self.reward_weight = w

    # ------------------------------------------------------------------ TRL events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._validate(args)
        loader = kwargs.get("train_dataloader")
        check_dataset_for_leader(
            getattr(loader, "dataset", None), self.reward.bilevel, self.reward.context_column
        )
        if self._given_sync is None:
            self.sync = LeaderSync()  # the trainer has initialised the process group by now
        if self.sync.is_main_process:
            reward_spec_or_warn(self.reward)  # warns now, not after training
        out = self.output_dir if self.output_dir is not None else Path(args.output_dir)
        for where in dict.fromkeys([out, Path(args.output_dir)]):
            check_writable_directory(where, "HPGDCallback: output directory")
        self._out = out
        step = int(state.global_step)
        if step > 0:
            self._restore(Path(args.output_dir), step)
        else:
            self.buffer.clear()
            self.history, self.batches_seen = [], 0
        self.sync.broadcast(self.leader)
        if self._logger is None:
            self._logger = MetricsLogger(
                out,
                tensorboard=False,
                enabled=self.sync.is_main_process,
                filename="leader_metrics.jsonl",
            )
        self._logger.truncate_after(step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if step % self.update_every:
            return
        if not self.buffer:
            if self.batches_seen == 0:
                raise RuntimeError(
                    f"HPGDCallback: no scored completions reached the leader by step {step} "
                    f"(its first update): pass the same HPGDReward object "
                    f"({self.reward.__name__!r}) in the trainer's reward_funcs"
                )
            return  # no new generation since the last update (steps_per_generation > K)
        self.update(step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        # fallback for trainers without TRL's metric store: later callbacks still see them
        if logs is not None and self._pending:
            logs.update(self._pending)
        self._pending = {}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.sync.is_main_process and ckpt.is_dir():
            self._write_checkpoint(ckpt / CHECKPOINT_DIR, int(state.global_step))
        self.sync.barrier()
        if ckpt.is_dir() and self.sync.world_size > 1:
            self._write_groups(ckpt / f"{CHECKPOINT_DIR}_rank{self.sync.rank}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._trl_metrics = None
        if self.sync.is_main_process:
            save_final_leader(self.reward, self._out / "leader", self.training_summary())
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    def training_summary(self) -> dict[str, Any]:
        """Estimator, updates, last objective estimate and, per context, the incentive paid
        and its cost on the last update's completions (the saved leader's model card)."""
        return plugin_training_summary(
            self.estimator.name,
            self.history,
            self.update_every,
            self.reward.bilevel,
            self._last_groups,
            self.reward.context_column,
        )

    # ------------------------------------------------------------------ the update
    def update(self, step: int) -> dict[str, float]:
        """One leader step from everything buffered since the previous update."""
        if self.group_size is None or self.beta is None:
            raise RuntimeError("HPGDCallback.update before on_train_begin")
        samples = self.buffer.take(
            self.group_size, self.beta, self.follower_name, self.reward_weight
        )
        self._last_groups = samples
        # the orchestrated trainer's steps 3-4 (HPGDTrainer.step) on TRL's groups
        bilevel, context = self.reward.bilevel, self.reward.context_column
        tracked = self.tracking.observe(self.leader, [samples], context, self.sync)
        direction = self.estimator.estimate(bilevel, [samples], context)
        max_norm = self.leader_config.max_grad_norm
        result = leader_update(self.leader, self.optimizer, direction, max_norm, self.sync, tracked)
        record = {**result.to_metrics(), **leader_weight_metrics(self.leader)}
        self.history.append({"step": float(step), **record})
        if self._trl_metrics is not None:
            store = self._trl_metrics.setdefault("train", {})
            for k, v in record.items():
                store.setdefault(k, []).append(v)
        else:
            self._pending.update(record)
        if self._logger is not None:
            self._logger.log(step, record)
        return record

    # ------------------------------------------------------------------ checkpoints
    def _groups_files(self, directory: Path) -> None:
        tensors, doc = self.buffer.state_dict()
        save_safetensors(directory / "groups.safetensors", tensors)
        atomic_write_json(directory / "groups.json", doc)

    def _write_groups(self, final: Path) -> None:
        with atomic_directory(final) as tmp:
            self._groups_files(tmp)

    def _write_checkpoint(self, final: Path, step: int) -> None:
        """Leader, optimiser, estimator state, buffered groups (rank 0's) and history."""
        with atomic_directory(final) as tmp:
            save_final_leader(self.reward, tmp / "leader", self.training_summary())
            tensors, skeleton = optimizer_state_to_files(self.optimizer.state_dict())
            save_safetensors(tmp / "optimizer.safetensors", tensors)
            atomic_write_json(tmp / "optimizer.json", skeleton)
            est = self.estimator.state_dict()
            est_tensors = {k: v for k, v in est.items() if isinstance(v, torch.Tensor)}
            save_safetensors(tmp / "estimator.safetensors", est_tensors)
            self._groups_files(tmp)
            self.tracking.save(tmp)
            atomic_write_json(
                tmp / "state.json",
                {
                    "step": step,
                    "estimator": self.estimator.name,
                    "estimator_state": {k: v for k, v in est.items() if k not in est_tensors},
                    "batches_seen": self.batches_seen,
                    "history": self.history,
                    "world_size": self.sync.world_size,
                },
            )

    def _restore(self, trl_output_dir: Path, step: int) -> None:
        ckpt = self.resume_from or trl_output_dir / f"checkpoint-{step}"
        src = ckpt / CHECKPOINT_DIR
        if not (src / "state.json").is_file():
            raise FileNotFoundError(
                f"HPGDCallback: TRL resumed at step {step} but {src} holds no leader state "
                "(a checkpoint written without this callback, or elsewhere); pass "
                "HPGDArguments(leader_resume_from='<the checkpoint directory>')"
            )
        state = read_json(src / "state.json")
        if int(state["step"]) != step:
            raise ValueError(
                f"HPGDCallback: {src} is from step {state['step']}, TRL resumed at step {step}"
            )
        if state["estimator"] != self.estimator.name:
            raise ValueError(
                f"HPGDCallback: {src} was written with estimator {state['estimator']!r}, this "
                f"callback uses {self.estimator.name!r}"
            )
        if int(state.get("world_size", 1)) != self.sync.world_size:
            raise ValueError(
                f"HPGDCallback: {src} was written by {state.get('world_size')} process(es), "
                f"resuming with {self.sync.world_size}; resume with the same number"
            )
        leader_state = load_safetensors(src / "leader" / STATE_FILE)
        self.leader.load_state_dict(leader_state)
        self.optimizer.load_state_dict(
            optimizer_state_from_files(
                load_safetensors(src / "optimizer.safetensors"), read_json(src / "optimizer.json")
            )
        )
        est_state = dict(state.get("estimator_state") or {})
        est_state.update(load_safetensors(src / "estimator.safetensors"))
        self.estimator.load_state_dict(est_state)
        groups = (
            src if self.sync.world_size == 1 else ckpt / f"{CHECKPOINT_DIR}_rank{self.sync.rank}"
        )
        self.buffer.load_state_dict(
            load_safetensors(groups / "groups.safetensors"), read_json(groups / "groups.json")
        )
        self.tracking.load(src)
        self.batches_seen = int(state["batches_seen"])
        self.history = [dict(r) for r in state["history"]]
