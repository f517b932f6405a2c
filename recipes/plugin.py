"""HPGD as a plugin of a plain TRL ``GRPOTrainer`` / ``RLOOTrainer`` script: TRL owns the loop.

    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 1 \
        recipes/plugin.py grpo --config configs/recipes/grpo_tiny.yaml
    (or: recipes/plugin.py rloo --config configs/recipes/rloo_tiny.yaml)

The script is an ordinary GRPO / RLOO script plus ``HPGDReward`` (the shaped reward ``r_x``,
given to TRL as its reward function; it hands TRL's own scored groups to its subscribers) and
``HPGDCallback`` (a ``TrainerCallback`` that moves the leader one HPGD step every
``follower_steps`` optimiser steps from those groups; no extra generation). It reads the same
``HPGDConfig`` YAML as the orchestrated recipe: ``followers[0]`` configures the trainer (its
``trl`` mapping is passed through, as in orchestrated runs), ``follower_steps`` is the leader's
update interval, ``iterations`` the number of leader updates (``max_steps = iterations x
follower_steps``). The KL is TRL's own here: GRPO's per-token KL in the loss (``beta`` of
``GRPOConfig``; ``kl_mode`` is an orchestrated-only setting and is ignored), RLOO's
sequence-level KL in the reward, the setting the HPGD estimate assumes, with unnormalised
advantages (RLOO's default ``normalize_advantages=False``).

Multi-process: TRL generates whole groups on every rank; the callback broadcasts the leader at
the start and all-reduces its hypergradient with group-count weights, so all ranks hold the same
leader; only rank 0 writes ``leader_metrics.jsonl`` and ``leader/``.

Checkpoints: TRL saves ``<output_dir>/trl/checkpoint-<step>`` every ``save_every`` leader
updates (``save_every x follower_steps`` optimiser steps; none with ``save_every: 0``), and the
callback writes the leader, its optimiser and the buffered groups into each
(``checkpoint-<step>/hpgd_leader``). ``--resume`` continues from the latest one
(``trainer.train(resume_from_checkpoint=True)``).

Arguments: ``grpo`` or ``rloo``, ``--config FILE.yaml``, dotted overrides, ``--resume``,
``--debug_sync DIR`` (compare the leader across ranks after every update; each rank writes
``DIR/rank<r>.json``).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from recipe_utils import (
    exit_now,
    finish,
    load_recipe_config,
    make_sync_check_callback,
    write_sync_report,
)

from align_cbrl.utils.env import set_cpu_defaults

set_cpu_defaults(threads=None)  # before torch is imported

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOTrainer, RLOOTrainer  # noqa: E402

from align_cbrl.config_parser import ConfigError  # noqa: E402
from align_cbrl.followers.trl_config import trl_config  # noqa: E402
from align_cbrl.models.real import lora_config  # noqa: E402
from align_cbrl.trainer import HPGDCallback, HPGDConfig, HPGDReward  # noqa: E402
from align_cbrl.trainer.builders import (  # noqa: E402
    bilevel_for,
    build_leader_from_config,
    build_reward_setup,
    dataset_rows,
    follower_trl_config,
    resolve_model,
    resolve_task,
)
from align_cbrl.trainer.estimation import build_optimizer  # noqa: E402


def trl_args(config: HPGDConfig, kind: str, task: Any) -> Any:
    """The ``GRPOConfig`` / ``RLOOConfig``: ``followers[0]`` through the same
    :func:`~align_cbrl.followers.trl_config.trl_config` as orchestrated followers, with TRL's
    own KL and the run's steps, logging and checkpoints."""
    fc = config.seeded_followers()[0]
    follower = follower_trl_config(fc, task, "followers.0")
    follower = dataclasses.replace(follower, kl_mode="loss" if kind == "grpo" else "reward")
    steps = config.follower_steps
    return trl_config(
        kind,
        follower,
        defaults={
            "output_dir": f"{config.output_dir}/trl",
            "max_steps": config.iterations * steps,
            "logging_steps": steps,
            "save_strategy": "steps" if config.save_every else "no",
            "save_steps": max(1, config.save_every * steps),
            "save_total_limit": config.keep_checkpoints,
            "report_to": "none",
            "disable_tqdm": not config.progress,
        },
    )


def main(argv: list[str]) -> None:
    kind, config, flags = load_recipe_config(argv, "plugin.py", ["--resume"])
    if len(config.followers) != 1 or config.followers[0].trainer != kind:
        raise ConfigError(f"this recipe trains exactly one follower with trainer: {kind}")
    if config.leader.estimator not in ("hpgd", "naive"):
        raise ConfigError("plugin mode supports leader.estimator hpgd or naive")
    if config.leader.follower_schedule.kind != "fixed":
        raise ConfigError(
            "plugin mode runs the fixed schedule (TRL drives the steps); "
            "leader.follower_schedule kind 'mlmc' needs the orchestrated trainer"
        )
    fc, lc = config.followers[0], config.leader
    state = PartialState()  # joins the process group `accelerate launch` set up

    # 1. Prompts, reward components and the leader: the same YAML sections as orchestrated runs.
    task = resolve_task(config.task)
    setup = build_reward_setup(config, task)
    rows = dataset_rows(fc, task, "followers.0")
    model_dir = resolve_model(
        fc.model, fc.model_seed, task, "followers.0", gguf_file=fc.gguf_file, dtype=fc.model_dtype
    )
    column = setup.context_column
    torch.manual_seed(config.seed)
    leader = build_leader_from_config(
        config, setup, [r.get(column) for r in rows] if column else []
    )

    # 2. The two plugin objects.
    reward = HPGDReward(bilevel_for(leader, setup), setup.components, context_column=column)
    hpgd = HPGDCallback(
        reward,
        update_every=config.follower_steps,
        optimizer=build_optimizer(
            leader.parameters(), lc.optimizer, lc.lr, lc.momentum, lc.adam_betas
        ),
        estimator=lc.estimator,
        max_grad_norm=lc.max_grad_norm,
        output_dir=config.output_dir,
    )
    callbacks = [hpgd]
    if flags["debug_sync"]:
        callbacks.append(make_sync_check_callback(hpgd))

    # 3. A plain GRPO / RLOO script.
    trainer = (GRPOTrainer if kind == "grpo" else RLOOTrainer)(
        model=str(model_dir),
        reward_funcs=[reward],
        args=trl_args(config, kind, task),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        callbacks=callbacks,
        peft_config=None if fc.lora is None else lora_config(fc.lora),
    )
    trainer.train(resume_from_checkpoint=True if flags["resume"] else None)

    if flags["debug_sync"]:
        write_sync_report(flags["debug_sync"], hpgd.sync, leader, callbacks[-1].digests)
    if state.is_main_process:
        last = hpgd.history[-1] if hpgd.history else {}
        print(
            f"{len(hpgd.history)} leader updates over {trainer.state.global_step} "
            f"{kind.upper()} steps on {state.num_processes} process(es); last objective "
            f"estimate {last.get('objective_estimate', float('nan')):.4f}"
        )
        print(f"leader under {config.output_dir}/leader, metrics in leader_metrics.jsonl")
    finish(state)  # barrier, then tear the process group down before Python exits


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_now()  # skip interpreter finalisation (see recipe_utils.exit_now)
