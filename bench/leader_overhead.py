"""Leader overhead per outer iteration: leader time / follower training time (target <= 5%).

Orchestrated mode (:class:`align_cbrl.trainer.HPGDTrainer`, one TRL GRPO follower): per outer
iteration the trainer records

* ``time/follower_train``: the follower's K GRPO steps (generation, reward incl. the incentive,
  loss, optimiser step);
* ``time/sample``: drawing G x N extra completions for the estimate and scoring the components;
* ``time/leader``: the leader's estimate + backward + all-reduce + clipping + optimiser step.

Plugin mode (:class:`HPGDCallback` in a plain ``GRPOTrainer``): the leader's cost is the time
inside the callback's updates plus the time of the reward function (component scoring + the
incentive; TRL would score its base reward anyway, so this over-counts); compared with the
trainer's total training time.

Usage: ``python bench/leader_overhead.py [--iterations 5] [--follower-steps 10]``. Numbers depend
on the machine's load; run it on an idle machine for stable figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in (
    ("OMP_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("HF_HUB_OFFLINE", "1"),
    ("MPLBACKEND", "Agg"),
):
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def orchestrated(config_name: str, iterations: int, steps: int) -> dict[str, float]:
    from bench_common import QUIET_RUN

    from align_cbrl.config_parser import load_config
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            HPGDConfig,
            ROOT / "configs" / f"{config_name}.yaml",
            {"output_dir": tmp, "iterations": iterations, "follower_steps": steps, **QUIET_RUN},
        )
        trainer = HPGDTrainer(cfg)
        trainer.train()
        trainer.close()
    hist = trainer.history[1:]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in hist)

    train, sample, leader = med("time/follower_train"), med("time/sample"), med("time/leader")
    return {
        "follower_train_s": train,
        "sample_s": sample,
        "leader_s": leader,
        "leader_ratio": leader / train,
        "leader_plus_sampling_ratio": (leader + sample) / train,
    }


# the plugin run's GRPO settings besides its output directory and length
PLUGIN_GRPO = {
    "beta": 0.5,
    "scale_rewards": "none",
    "num_generations": 8,
    "per_device_train_batch_size": 16,
    "max_completion_length": 2,
    "learning_rate": 1e-2,
    "report_to": "none",
    "save_strategy": "no",
    "disable_tqdm": True,
    "use_cpu": True,
    "activation_checkpointing": False,
    "seed": 0,
    "bf16": False,
}


def plugin(steps: int, update_every: int) -> dict[str, float]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from align_cbrl.models import build_tiny_lm
    from align_cbrl.trainer import HPGDArguments, HPGDCallback, HPGDReward
    from align_cbrl.trainer.builders import resolve_task

    task = resolve_task("tiny_language")
    model = build_tiny_lm("word", words=task.vocab)
    leader = task.make_leader(
        parametrization="sigmoid", lo=-2.0, hi=2.0, init_weights=0.0, cost_coef=0.25
    )
    reward = HPGDReward(task.bilevel(leader), task.components)
    cb = HPGDCallback(reward, HPGDArguments(leader_update_every=update_every, leader_lr=0.2))
    spent = {"reward": 0.0, "update": 0.0}
    call, update = reward.__call__, cb.update

    def timed_call(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return call(*a, **k)
        finally:
            spent["reward"] += time.perf_counter() - t0

    def timed_update(step: int):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return update(step)
        finally:
            spent["update"] += time.perf_counter() - t0

    def reward_fn(prompts, completions, **kw):  # type: ignore[no-untyped-def]
        return timed_call(prompts, completions, **kw)

    reward_fn.__name__ = "hpgd_reward"
    cb.update = timed_update  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, max_steps=steps, logging_steps=steps, **PLUGIN_GRPO)
        ds = Dataset.from_dict({"prompt": task.prompts, "category": task.contexts})
        trainer = GRPOTrainer(
            model=str(model), reward_funcs=[reward_fn], args=args, train_dataset=ds, callbacks=[cb]
        )
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    follower = total - spent["reward"] - spent["update"]
    return {
        "train_total_s": total,
        "reward_fn_s": spent["reward"],
        "leader_updates_s": spent["update"],
        "leader_ratio": spent["update"] / follower,
        "leader_plus_reward_ratio": (spent["update"] + spent["reward"]) / follower,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--follower-steps", type=int, default=10)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from align_cbrl.cli import quiet_libraries

    quiet_libraries()
    print(
        f"orchestrated, {args.iterations} iterations x {args.follower_steps} GRPO steps (medians)"
    )
    print(
        "| config | follower train s | extra sampling s | leader s | leader/train | (leader+sampling)/train |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("tiny_language_grpo", "quickstart"):
        r = orchestrated(name, args.iterations, args.follower_steps)
        print(
            f"| {name} | {r['follower_train_s']:.3f} | {r['sample_s']:.3f} | {r['leader_s']:.4f} "
            f"| {100 * r['leader_ratio']:.2f}% | {100 * r['leader_plus_sampling_ratio']:.2f}% |"
        )
    steps = args.iterations * args.follower_steps
    r = plugin(steps, args.follower_steps)
    print(f"\nplugin, {steps} GRPO steps, update every {args.follower_steps}")
    print(
        "| train total s | reward fn s | leader updates s | leader/train | (leader+reward fn)/train |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {r['train_total_s']:.2f} | {r['reward_fn_s']:.3f} | {r['leader_updates_s']:.3f} | "
        f"{100 * r['leader_ratio']:.2f}% | {100 * r['leader_plus_reward_ratio']:.2f}% |"
    )


if __name__ == "__main__":
    main()
