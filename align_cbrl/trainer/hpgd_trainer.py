"""``HPGDTrainer``: orchestrated contextual bilevel RL with language-model followers.

Outer iteration ``t = 1..T`` (HPGD, ``docs/theory.md §2``, with the language-model estimator of §3):

1. every follower gets the current shaped reward ``r_x`` (:class:`HPGDReward`, no gradient) and
   continues training ``K = follower_steps`` steps (warm-started TRL GRPO/RLOO, or exact);
2. ``G_f`` prompts (``prompts_per_iteration``, or the follower's own) are drawn from each
   follower's dataset (with the task's ``prompt_probs`` restricted to the follower's prompts
   when it trains on an enumerable task's prompts, so the sampled objective is the logged exact
   one; uniformly otherwise) and ``N = num_samples`` completions sampled per prompt; the
   components are scored once (:class:`~align_cbrl.trainer.sampling.GroupSampler`);
3. the leader's estimator (``hpgd``, ``naive``, ``zero_order`` or ``fixed``,
   :mod:`align_cbrl.trainer.strategies`, shared with plugin mode) estimates ``dF/dx`` of
   ``F = sum_f w_f F_f`` (the followers' weighted mean, ``docs/theory.md §1``; each follower's
   estimate is the mean over its own groups);
4. :func:`~align_cbrl.trainer.estimation.leader_update`: all-reduce over processes, clip by
   global norm, one optimiser step.

All four are in :meth:`HPGDTrainer.step`. ``leader.follower_schedule`` kind ``mlmc``: steps 1-3
are the multilevel estimator of §9 (:mod:`align_cbrl.trainer.follower_schedule`).

Metrics per iteration (``metrics.jsonl``, TensorBoard, a tqdm bar) are listed in
``docs/trainer.md``. Checkpoints every ``save_every`` iterations (:class:`CheckpointManager`,
followers via their ``save``); ``resume=True`` continues bit-identically on CPU. At the end:
plots, ``summary.json`` and ``leader/``, a ``save_pretrained`` folder with its model card.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align_cbrl.checkpoint import CheckpointManager
from align_cbrl.config_parser import to_dict
from align_cbrl.distributed import LeaderSync, init_process_group
from align_cbrl.metrics import MetricsLogger, read_jsonl
from align_cbrl.models.tiny import hf_progress_bars
from align_cbrl.trainer.builders import (
    FollowerBundle,
    bilevel_for,
    build_follower,
    build_leader_from_config,
    build_reward_setup,
    check_follower_contexts,
    load_follower_rows,
    resolve_task,
    validate_run_config,
)
from align_cbrl.trainer.config import HPGDConfig
from align_cbrl.trainer.estimation import (
    GroupedSamples,
    build_optimizer,
    leader_surrogate,
    leader_update,
)
from align_cbrl.trainer.exact_reference import (
    exact_followers,
    exact_local_optimum,
    exact_metrics,
    exact_tracking,
)
from align_cbrl.trainer.faults import fault_context
from align_cbrl.trainer.final_leader import save_run_leader
from align_cbrl.trainer.follower_schedule import SCHEDULE_FILE, build_follower_schedule
from align_cbrl.trainer.interrupt import StopSignals, TrainingInterrupted
from align_cbrl.trainer.reward_function import HPGDReward
from align_cbrl.trainer.run_dir import RunExistsError, check_resumable, plan_run_directory
from align_cbrl.trainer.sampling import GroupSampler
from align_cbrl.trainer.stats import (
    ESTIMATOR_LABELS,
    Stopwatch,
    iteration_line,
    leader_weight_metrics,
    progress_fields,
)
from align_cbrl.trainer.strategies import build_estimator
from align_cbrl.trainer.tracking import FollowerTracking
from align_cbrl.utils.io import (
    atomic_write_json,
    load_safetensors,
    remove_directory,
    save_safetensors,
)

__all__ = ["HPGDTrainer", "RunExistsError", "TrainingInterrupted"]

_TRAINER_RNG = "trainer_rng.safetensors"


class HPGDTrainer:
    """Orchestrated HPGD (module docstring).

    Args:
        config: the run's :class:`HPGDConfig`.
        resume: continue from the latest checkpoint in ``config.output_dir`` (the config must
            match, except :data:`~align_cbrl.trainer.run_dir.RESUMABLE_CHANGES`; paths are
            compared resolved, ``output_dir`` not at all); without a checkpoint the run starts
            again from iteration 0 and a line says so.
        overwrite: start from scratch even if ``output_dir`` holds a run: the whole directory
            is moved aside and deleted when :meth:`train` starts (after all validation passed,
            never on an error), so no file of the old run survives
            (:mod:`align_cbrl.trainer.run_dir`).
        sync: :class:`LeaderSync` for multi-process runs (default: the process group that is
            initialised once the followers are built; ``accelerate launch`` / TRL initialise it
            while constructing their trainers, so it is looked up after them).

    Multi-process (``accelerate launch``, torchrun): every rank builds the same leader and
    followers; the leader is broadcast from rank 0, each rank estimates from its own share of
    the prompts (``prompts_per_iteration`` per rank, drawn from one shared generator and split
    by rank, so ranks see different prompts while the generator state stays rank-independent)
    and the hypergradient is all-reduced with group-count weights before every step, so all
    ranks hold bit-identical leader parameters. Only rank 0 writes metrics, checkpoints, the
    leader, the summary and plots.

    Everything is validated here, before anything is written: followers with ``beta <= 0``,
    missing model directories, empty datasets, unknown reward components, an existing run.
    """

    def __init__(
        self,
        config: HPGDConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        sync: LeaderSync | None = None,
    ) -> None:
        if not isinstance(config, HPGDConfig):
            raise TypeError(f"config must be an HPGDConfig, got {type(config).__name__}")
        self.config = config
        self.output_dir = Path(config.output_dir)
        validate_run_config(config)
        self.checkpoints = CheckpointManager(self.output_dir, keep=config.keep_checkpoints)
        self._plan = plan_run_directory(
            self.output_dir, self.checkpoints.latest(), resume=resume, overwrite=overwrite
        )
        if self._plan.resume_from is not None:
            check_resumable(self._plan.resume_from, config)

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before TRL sets up the group its way
            init_process_group(config.collective_timeout)
        self.task = resolve_task(config.task)
        exact = self.task is not None
        with hf_progress_bars(config.progress):
            self.setup = build_reward_setup(config, self.task)
            rows = load_follower_rows(config, self.task, self.setup)  # before any model
            self.bundles: list[FollowerBundle] = [
                build_follower(fc, self.task, self.setup, i, exact, rows[i])
                for i, fc in enumerate(config.seeded_followers())
            ]
        contexts: list[Any] = []
        col = self.setup.context_column
        for b in self.bundles:
            contexts += [r.get(col) for r in b.rows] if col is not None else []
        # looked up only now: building TRL trainers initialises accelerate's process group
        self.sync = sync if sync is not None else LeaderSync()
        torch.manual_seed(config.seed)
        self.leader = build_leader_from_config(config, self.setup, contexts)
        check_follower_contexts(self.leader, self.bundles, col)
        self.weights = config.normalised_weights()
        self.bilevel = bilevel_for(self.leader, self.setup)
        self.optimizer = build_optimizer(
            self.leader.parameters(),
            config.leader.optimizer,
            config.leader.lr,
            config.leader.momentum,
            config.leader.adam_betas,
        )
        self.sync.broadcast(self.leader)
        self._x0 = self.leader.flat_parameters().detach().clone()
        self.exact_optimum_seconds = 0.0
        self.sampler = GroupSampler(self.bundles, self.task, self.setup.components, config.seed)
        self._zo_gen = torch.Generator().manual_seed(config.seed + 1)
        self.estimator = build_estimator(config.leader, generator=self._zo_gen)
        self.tracking = FollowerTracking()
        self.follower_schedule = build_follower_schedule(config, [b.follower for b in self.bundles])
        self.start_iteration = 0
        self._resume_from = self._plan.resume_from
        self.history: list[dict[str, Any]] = []
        self.metrics: MetricsLogger | None = None
        self.eval_batches: list[GroupedSamples] = []

    # ------------------------------------------------------------------ resume
    def _restore(self, ckpt: Path) -> None:
        state = self.checkpoints.load(ckpt, leader=self.leader, optimizer=self.optimizer)
        for b in self.bundles:
            b.follower.load(ckpt / "followers" / b.config.name)
        rng = load_safetensors(ckpt / _TRAINER_RNG)
        self.sampler.generator.set_state(rng["prompt_gen"])
        self._zo_gen.set_state(rng["zo_gen"])
        # the estimator's state besides its generator (zero-order: the baseline F_{t-1})
        self.estimator.load_state_dict({"prev": state.get("zo_prev")})
        self.tracking.load(ckpt / "tracking")
        if self.follower_schedule is not None:
            self.follower_schedule.load(ckpt)
        self.start_iteration = int(state["iteration"])
        self.history = [
            r
            for r in read_jsonl(self.output_dir / "metrics.jsonl")
            if r["step"] <= self.start_iteration
        ]

    def _save(self, iteration: int) -> Path:
        def write_rng(path: Path) -> None:
            gens = {"prompt_gen": self.sampler.generator, "zo_gen": self._zo_gen}
            save_safetensors(path, {k: g.get_state() for k, g in gens.items()})

        writers: dict[str, Callable[[Path], None]] = {_TRAINER_RNG: write_rng}
        zo_prev = self.estimator.state_dict().get("prev")  # None but for zero-order
        writers["tracking"] = self.tracking.save
        for b in self.bundles:
            writers[f"followers/{b.config.name}"] = b.follower.save
        if self.follower_schedule is not None:
            writers[SCHEDULE_FILE] = self.follower_schedule.save
        return self.checkpoints.save(
            iteration,
            leader=self.leader,
            optimizer=self.optimizer,
            state={"config": to_dict(self.config), "zo_prev": zo_prev, "cwd": os.getcwd()},
            extra_writers=writers,
        )

    # ------------------------------------------------------------------ pieces
    def exact_objective(self) -> dict[str, float] | None:
        """Exact ``F(x) = sum_f w_f F_f(x)``, ``F_f = sum_p P_f(p) sum_y pi*_f(y|p) rbar_x(p, y)``
        on the task (each follower with its own ``beta``, reference model and prompts) and each
        ``F_f`` (:mod:`align_cbrl.trainer.exact_reference`); ``None`` without a task."""
        specs = exact_followers(self.task, self.bundles)
        return None if specs is None else exact_metrics(specs, self.bilevel, self.weights)

    def reward_followers(self, t: int) -> HPGDReward:
        """Give every follower its reward for iteration ``t`` and return it: ``r_x`` at the
        current leader or, for zero-order, at the perturbed leader ``x + u_t z_t`` (a copy;
        :meth:`~align_cbrl.trainer.strategies.ZeroOrder.follower_bilevel`)."""
        reward = HPGDReward(
            self.estimator.follower_bilevel(self.bilevel, t),
            self.setup.components,
            context_column=self.setup.context_column,
            name="hpgd_reward",
        )
        for b in self.bundles:
            b.follower.set_reward_function(reward)
        return reward

    # ------------------------------------------------------------------ one iteration
    def step(self, t: int) -> dict[str, Any]:
        """Outer iteration ``t`` of HPGD (``docs/theory.md §2``); returns its metrics.

        1. the followers train ``K = follower_steps`` more steps on the shaped reward ``r_x``;
        2. ``G_f`` prompts x ``N`` completions per follower are sampled and scored;
        3. the estimator (``hpgd`` / ``naive`` / ``zero_order`` / ``fixed``) turns the groups
           into an ascent direction ``d ≈ dF/dx``;
        4. :func:`~align_cbrl.trainer.estimation.leader_update`: all-reduce ``d`` over
           processes, clip it by global norm, one optimiser step of ``x``.

        ``leader.follower_schedule`` kind ``mlmc`` runs 1-3 at several levels instead
        (:meth:`~align_cbrl.trainer.follower_schedule.MultilevelFollowerSchedule.step`)."""
        if self.follower_schedule is not None:
            return self.follower_schedule.step(self, t)
        cfg, context, clock = self.config, self.setup.context_column, Stopwatch()
        # 1. train the followers (zero-order: on the reward at x + u_t z_t)
        reward = self.reward_followers(t)
        rec: dict[str, Any] = self.train_followers(cfg.follower_steps)
        clock.lap("time/follower_train")
        # 2. sample G_f x N per follower (each rank its own share of the prompts)
        batches = self.sample_batches()
        rec.update(exact_tracking(self.task, self.bundles, reward.bilevel))  # gap to pi*
        clock.lap("time/sample")
        # 3. estimate; <f>/tracking compares these groups with the previous update's
        sampled_under = self.estimator.sampled_bilevel(self.bilevel).leader
        tracked = self.tracking.observe(sampled_under, batches, context, self.sync)
        direction = self.estimator.estimate(self.bilevel, batches, context)
        # 4. all-reduce -> clip by global norm -> optimiser step
        result = leader_update(
            self.leader, self.optimizer, direction, cfg.leader.max_grad_norm, self.sync, tracked
        )
        rec.update(result.to_metrics())
        rec.update(self.component_metrics(batches))
        clock.lap("time/leader")
        return self.finish_metrics(rec, clock.laps)

    def train_followers(self, steps: int) -> dict[str, float]:
        """Train every follower ``steps`` more steps; the training metrics each reports as a
        number, ``<f>/train_<reward|kl|loss|entropy>``."""
        rec: dict[str, float] = {}
        for b in self.bundles:
            out = b.follower.train(steps)
            for k in ("reward", "kl", "loss", "entropy"):
                if isinstance(out.get(k), int | float):
                    rec[f"{b.config.name}/train_{k}"] = float(out[k])
        return rec

    def sample_batches(self) -> list[GroupedSamples]:
        """Each follower's ``G_i`` groups of ``N = num_samples`` on this rank (the same count
        per follower on every rank; :meth:`GroupSampler.sample_groups`)."""
        groups = [self.config.groups_of(i) for i in range(len(self.bundles))]
        return self.sampler.sample_groups(groups, self.config.num_samples, self.sync)

    def component_metrics(self, batches: list[GroupedSamples]) -> dict[str, float]:
        """``<f>/components/<c>``: every reward component's mean over follower ``f``'s samples."""
        return {
            f"{b.follower}/components/{c.name}": float(b.scores[:, k].mean())
            for b in batches
            for k, c in enumerate(self.setup.components)
        }

    def finish_metrics(self, rec: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
        """An iteration's metrics ``rec`` completed after the leader's step: the exact ``F``
        (enumerable tasks), the ``time/*`` seconds and the leader's weight table."""
        rec.update(self.exact_objective() or {})
        rec.update(seconds)
        rec.update(leader_weight_metrics(self.leader))
        return rec

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, samples: int | None = None) -> dict[str, float]:
        """Held-out evaluation: ``samples`` fresh completions for every prompt of every
        follower's dataset, scored under the current leader (no update). Reports the leader
        objective estimate, base reward, incentive and cost, and the exact ``F`` on a task."""
        n = samples if samples is not None else self.config.eval_samples
        out: dict[str, float] = {}
        if n >= 2:
            batches = [self.sampler.sample(b, list(range(len(b.rows))), n) for b in self.bundles]
            with torch.no_grad():
                _, stats = leader_surrogate(
                    self.bilevel, batches, "naive", self.setup.context_column
                )
            out.update({f"eval/{k}": v for k, v in stats.to_metrics().items()})
            self.eval_batches = batches  # the final leader's per-context incentive and cost
        exact = self.exact_objective()
        if exact is not None:
            out.update({f"eval/{k}": v for k, v in exact.items()})
        return out

    # ------------------------------------------------------------------ the loop
    def exact_local_optimum(self, x: torch.Tensor | None = None) -> float | None:
        """``F(x*)`` at the local optimum that exact gradient ascent on the combined objective
        ``F = sum_f w_f F_f`` (3000 steps, ``lr`` 2; the reference of ``docs/trainer.md``)
        reaches from leader parameters ``x`` (default: the current leader). Enumerable task
        only, else ``None``. Cached per run setup and ``x`` within the process; the seconds
        spent add to ``exact_optimum_seconds``."""
        specs = exact_followers(self.task, self.bundles)
        if specs is None:
            return None
        x = self.leader.flat_parameters() if x is None else x
        cfg = self.config
        ident = [cfg.task, cfg.leader.spec, cfg.leader.init, [to_dict(f) for f in cfg.followers]]
        F, seconds = exact_local_optimum(specs, self.bilevel, x, ident)
        self.exact_optimum_seconds += seconds
        return F

    def exact_optimum(self) -> float | None:
        """The best ``F(x*)`` known for the run: exact gradient ascent from the initial leader
        ``x0`` and from the current one (``F`` is not concave; the two can reach different
        local optima). Drawn as a line in ``training.png``; ``None`` without an enumerable
        task."""
        found = [self.exact_local_optimum(self._x0), self.exact_local_optimum()]
        found = [F for F in found if F is not None]
        return max(found) if found else None

    def _save_due(self, t: int) -> bool:
        every = self.config.save_every
        return bool(every and t % every == 0) or t == self.config.iterations

    def _iteration(self, t: int, bar: Any) -> None:
        """Outer iteration ``t``: step, log, show, checkpoint when due (rank 0)."""
        cfg, main = self.config, self.sync.is_main_process
        rec = self.step(t)
        self.history.append(self.metrics.log(t, rec))
        bar.set_postfix(progress_fields(rec))
        if main and not cfg.progress:  # one line per iteration instead (logging_steps)
            label = ESTIMATOR_LABELS[cfg.leader.estimator]
            print(iteration_line(label, t, cfg.iterations, rec), flush=True)
        if main and self._save_due(t):
            self._save(t)

    def _stop_after(self, t: int, signum: int) -> None:
        """A stop signal reached some rank during iteration ``t``: checkpoint ``t`` (unless
        just written), wait until it is complete on every rank, raise
        :class:`TrainingInterrupted` (:mod:`align_cbrl.trainer.interrupt`)."""
        if self.sync.is_main_process and not self._save_due(t):
            self._save(t)
        self.sync.barrier()
        self.metrics.close()
        raise TrainingInterrupted(signum, t, self.config.iterations, self.checkpoints.path_for(t))

    def train(self) -> dict[str, Any]:
        """Run (or continue) the T outer iterations; returns a summary (final metrics and
        held-out evaluation), also written to ``<output_dir>/summary.json``. A SIGINT /
        SIGTERM stops the run at the end of the current iteration with a checkpoint
        (:class:`TrainingInterrupted`; :mod:`align_cbrl.trainer.interrupt`)."""
        with hf_progress_bars(self.config.progress):
            return self._train()

    def _train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.config
        main = self.sync.is_main_process
        if self._resume_from is not None:
            self._restore(self._resume_from)
        resumed = self._resume_from is not None
        if main:
            if self._plan.notice:
                print(self._plan.notice, file=sys.stderr)
            if self._plan.replace:
                remove_directory(self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLogger(
            self.output_dir,
            tensorboard=cfg.tensorboard,
            enabled=main,
            purge_step=self.start_iteration + 1 if resumed else None,
        )
        if resumed:
            self.metrics.truncate_after(self.start_iteration)
        if self.start_iteration == 0:
            rec0 = {"objective_estimate": math.nan}
            exact = self.exact_objective()
            if exact is not None:
                rec0.update(exact)
            rec0.update(leader_weight_metrics(self.leader))
            self.history.append(self.metrics.log(0, rec0))
        bar = tqdm(
            range(self.start_iteration + 1, cfg.iterations + 1),
            initial=self.start_iteration,
            total=cfg.iterations,
            desc=ESTIMATOR_LABELS[cfg.leader.estimator],
            disable=not (cfg.progress and main),
            dynamic_ncols=True,
        )
        try:
            with StopSignals() as stop:
                for t in bar:
                    where = f"in outer iteration {t} of {cfg.iterations}"
                    with fault_context(self.checkpoints.latest, cfg.collective_timeout, where):
                        self._iteration(t, bar)
                        signum = self.sync.all_reduce_max(stop.signum or 0)  # ranks agree
                        if signum:
                            self._stop_after(t, signum)
        finally:
            bar.close()
        summary: dict[str, Any] = {"iterations": cfg.iterations, "seeds": cfg.seeds()}
        summary.update(final=self.history[-1], **self.evaluate())
        optimum = self.exact_optimum() if (main and cfg.plots) else None
        if optimum is not None:
            summary["exact_optimum"] = optimum
        if main:
            save_run_leader(self, summary)  # leader/: save_pretrained folder with its card
            atomic_write_json(self.output_dir / "summary.json", summary)
            if cfg.plots:
                from align_cbrl.trainer.plots import plot_run, run_title

                title = run_title(cfg, self.output_dir.name)
                plot_run(
                    self.history, self.output_dir / "training.png", title=title, optimum=optimum
                )
        self.metrics.close()
        return summary

    def close(self) -> None:
        """Release the followers' scratch directories."""
        for b in self.bundles:
            closer = getattr(b.follower, "close", None)
            if callable(closer):
                closer()
