"""Per-step cost of a follower step, orchestrated vs plugin mode, in one run.

Both modes train the same tiny GRPO follower from one config (default
``configs/recipes/grpo_tiny.yaml``; ``--iterations`` chunks of ``--follower-steps`` K steps):

* orchestrated: :class:`~align_cbrl.trainer.HPGDTrainer` (``kl_mode`` as configured); a chunk's
  cost is the iteration's ``time/follower_train`` (the K TRL steps only, not the leader's extra
  sampling or its update);
* plugin: a plain ``GRPOTrainer`` + ``HPGDReward`` + ``HPGDCallback``, built as
  ``recipes/plugin.py`` builds it (TRL's KL in the loss); a chunk's cost is the time between two
  leader updates (the K TRL steps plus the callback's update, about a millisecond).

The first chunk of each run (start-up, first generation) is left out; the figures are the
median and mean seconds per step over the other chunks, pooled over ``--repeats`` runs of each
mode, run alternately so that load on a shared machine hits both alike. The ratio is
orchestrated / plugin (medians).

Usage: ``python bench/orchestrated_step_cost.py [--iterations 12] [--follower-steps 2]
[--repeats 2] [--config configs/recipes/grpo_tiny.yaml] [--profile FILE]`` (``--profile``
writes a cProfile of one extra orchestrated run's ``train()`` to FILE and prints its top 25).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from align_cbrl.utils.env import quiet_libraries, set_cpu_defaults  # noqa: E402

set_cpu_defaults()  # before torch is imported


def load(config: Path, iterations: int, steps: int, out: str) -> Any:
    from align_cbrl.config_parser import load_config
    from align_cbrl.trainer import HPGDConfig

    overrides = {"output_dir": out, "iterations": iterations, "follower_steps": steps}
    overrides |= {"save_every": 0, "eval_samples": 0, "plots": False, "progress": False}
    return load_config(HPGDConfig, config, overrides | {"tensorboard": False})


def orchestrated(config: Path, iterations: int, steps: int, profile: str | None = None) -> list:
    """Seconds per follower step of every chunk but the first."""
    from align_cbrl.trainer import HPGDTrainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = HPGDTrainer(load(config, iterations, steps, tmp))
        try:
            if profile is None:
                trainer.train()
            else:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.runcall(trainer.train)
                prof.dump_stats(profile)
                pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        finally:
            trainer.close()
    return [r["time/follower_train"] / steps for r in trainer.history[2:]]


def plugin(config: Path, iterations: int, steps: int) -> list[float]:
    """Seconds per step of every chunk between two leader updates but the first."""
    import dataclasses

    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    from align_cbrl.followers.trl_config import trl_config
    from align_cbrl.trainer import HPGDArguments, HPGDCallback, HPGDReward, builders

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % steps == 0:  # after HPGDCallback's update of this step
                marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load(config, iterations, steps, tmp)
        fc = cfg.seeded_followers()[0]
        task = builders.resolve_task(cfg.task)
        setup = builders.build_reward_setup(cfg, task)
        rows = builders.dataset_rows(fc, task, "followers.0")
        model = builders.resolve_model(fc.model, fc.model_seed, task, "followers.0")
        col = setup.context_column
        leader = builders.build_leader_from_config(
            cfg, setup, [r.get(col) for r in rows] if col else []
        )
        reward = HPGDReward(
            builders.bilevel_for(leader, setup), setup.components, context_column=col
        )
        settings = HPGDArguments(
            leader_update_every=steps, leader_lr=cfg.leader.lr, leader_output_dir=tmp
        )
        hpgd = HPGDCallback(reward, settings)
        follower = dataclasses.replace(builders.follower_trl_config(fc, task, "f"), kl_mode="loss")
        args = trl_config(
            "grpo",
            follower,
            defaults={
                "output_dir": f"{tmp}/trl",
                "max_steps": iterations * steps,
                "logging_steps": steps,
            },
            fixed={"save_strategy": "no", "report_to": "none", "disable_tqdm": True},
        )
        trainer = GRPOTrainer(
            model=str(model),
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model, padding_side="left"),
            callbacks=[hpgd, Clock()],
        )
        trainer.remove_callback(PrinterCallback)  # no per-step log lines
        trainer.train()
    return [(b - a) / steps for a, b in itertools.pairwise(marks)]


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.4f} s, mean {statistics.fmean(xs):.4f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/recipes/grpo_tiny.yaml")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--follower-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", default=None)
    a = parser.parse_args()
    quiet_libraries()
    orch: list[float] = []
    plug: list[float] = []
    for _ in range(a.repeats):
        plug += plugin(a.config, a.iterations, a.follower_steps)
        orch += orchestrated(a.config, a.iterations, a.follower_steps)
    print(f"{a.config.name}, K = {a.follower_steps}, {a.iterations} chunks x {a.repeats} runs")
    print(f"plugin:       {summary(plug)} per step ({len(plug)} chunks)")
    print(f"orchestrated: {summary(orch)} per step ({len(orch)} chunks)")
    ratio = statistics.median(orch) / statistics.median(plug)
    print(f"ratio orchestrated / plugin (medians): {ratio:.2f}")
    if a.profile:
        orchestrated(a.config, a.iterations, a.follower_steps, profile=a.profile)


if __name__ == "__main__":
    main()
