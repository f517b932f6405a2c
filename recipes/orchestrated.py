"""HPGD leader + TRL GRPO / RLOO followers, orchestrated: align_cbrl owns the outer loop.

    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 1 \
        recipes/orchestrated.py grpo --config configs/recipes/grpo_tiny.yaml
    (or: recipes/orchestrated.py rloo --config configs/recipes/rloo_tiny.yaml)

Per outer iteration every follower trains ``follower_steps`` TRL steps on the current shaped
reward, ``prompts_per_iteration`` prompts x ``num_samples`` completions are sampled per follower
(per process), and the leader takes one HPGD step (docs/trainer.md). Under ``accelerate launch``
with several processes each follower is data-parallel (TRL/accelerate DDP, DeepSpeed or FSDP),
each rank estimates the hypergradient from its own prompts, the estimates are all-reduced with
group-count weights and every rank takes the same leader step; only rank 0 writes outputs.

Arguments: ``grpo`` or ``rloo`` (every follower must use that trainer), ``--config FILE.yaml``
(an ``HPGDConfig``), dotted overrides (``--leader.lr 0.05``, ``--followers.0.beta 0.2``,
``--followers.0.trl.learning_rate 0.02``), ``--overwrite``, ``--resume``,
``--debug_sync DIR`` (every rank checks the leader against the others after each iteration and
writes ``DIR/rank<r>.json`` with its parameters' exact bits).

Faults (docs/reliability.md): SIGINT / SIGTERM stop the run after the current iteration with a
checkpoint (exit status 130 / 143; ``--resume`` continues); a rank whose peer died exits with
status 1 within ``collective_timeout`` seconds; errors are one line.
"""

from __future__ import annotations

import sys

from recipe_utils import (
    check_identical_every_iteration,
    load_recipe_config,
    write_sync_report,
)

from align_cbrl.utils.env import set_cpu_defaults

set_cpu_defaults(threads=None)  # before torch is imported

from align_cbrl.config_parser import ConfigError  # noqa: E402
from align_cbrl.distributed import init_process_group  # noqa: E402
from align_cbrl.trainer import HPGDTrainer  # noqa: E402
from align_cbrl.trainer.faults import finish_run, run_and_leave  # noqa: E402


def main(argv: list[str]) -> None:
    follower_trainer, config, flags = load_recipe_config(
        argv, "orchestrated.py", ["--overwrite", "--resume"]
    )
    for i, follower in enumerate(config.followers):
        if follower.trainer != follower_trainer:
            raise ConfigError(
                f"followers.{i}.trainer is {follower.trainer!r}; this recipe trains "
                f"{follower_trainer!r} followers (use the matching recipe)"
            )

    # Joins the process group `accelerate launch` set up (gloo on CPU, nccl on GPUs), every
    # collective limited to collective_timeout seconds; a no-op for a plain `python recipes/...`.
    state = init_process_group(config.collective_timeout)
    trainer = HPGDTrainer(config, resume=flags["resume"], overwrite=flags["overwrite"])
    digests = check_identical_every_iteration(trainer) if flags["debug_sync"] else []
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if flags["debug_sync"]:
        write_sync_report(flags["debug_sync"], trainer.sync, trainer.leader, digests)

    if state.is_main_process:
        final = summary["final"]
        print(
            f"{config.iterations} iterations x {config.follower_steps} {follower_trainer} steps on "
            f"{state.num_processes} process(es); final objective estimate "
            f"{final['objective_estimate']:.4f}"
        )
        for key in sorted(k for k in summary if k.startswith("eval/") and k.count("/") == 1):
            print(f"{key}: {summary[key]:.4f}")
        print(f"outputs under {config.output_dir}/")
    finish_run()  # several processes: barrier, then leave here, with the trainer still referenced


if __name__ == "__main__":
    run_and_leave(main, sys.argv[1:])  # one-line errors, exit statuses (docs/reliability.md)
