"""HPGD as a plugin of a plain TRL ``GRPOTrainer`` script: two objects, TRL owns the loop.

    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 1 \
        recipes/grpo_plugin.py --config configs/recipes/grpo_tiny.yaml

The script is an ordinary GRPO script plus ``HPGDReward`` (the shaped reward ``r_x``, given to
TRL as its reward function; it buffers TRL's own scored groups) and ``HPGDCallback`` (a
``TrainerCallback`` that moves the leader one HPGD step every ``follower_steps`` optimiser steps
from those groups; no extra generation). It reads the same ``HPGDConfig`` YAML as the
orchestrated recipe: ``followers[0]`` configures GRPO, ``follower_steps`` is the leader's update
interval, ``iterations`` the number of leader updates (``max_steps = iterations x
follower_steps``). TRL's KL is in the loss here (``beta`` of ``GRPOConfig``); ``kl_mode`` is an
orchestrated-only setting and is ignored.

Multi-process: TRL generates whole groups on every rank; the callback broadcasts the leader at
the start and all-reduces its hypergradient with group-count weights, so all ranks hold the same
leader; only rank 0 writes ``leader_metrics.jsonl`` and ``leader/``.

Checkpoints: TRL saves ``<output_dir>/trl/checkpoint-<step>`` every ``save_every`` leader
updates (``save_every x follower_steps`` optimiser steps; none with ``save_every: 0``), and the
callback writes the leader, its optimiser and the buffered groups into each
(``checkpoint-<step>/hpgd_leader``). ``--resume`` continues from the latest one
(``trainer.train(resume_from_checkpoint=True)``).

Arguments: ``--config FILE.yaml``, dotted overrides, ``--resume``, ``--debug_sync DIR``
(compare the leader across ranks after every update; each rank writes ``DIR/rank<r>.json``).
"""

from __future__ import annotations

import sys

from recipe_utils import (
    cpu_defaults,
    finish,
    make_sync_check_callback,
    pop_flags,
    write_sync_report,
)

cpu_defaults()  # before torch is imported

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from align_cbrl.config_parser import ConfigError, load_config, parse_overrides  # noqa: E402
from align_cbrl.data import load_prompts  # noqa: E402
from align_cbrl.models.real import lora_config  # noqa: E402
from align_cbrl.trainer import HPGDCallback, HPGDConfig, HPGDReward  # noqa: E402
from align_cbrl.trainer.builders import (  # noqa: E402
    bilevel_for,
    build_leader_from_config,
    build_reward_setup,
    resolve_model,
    resolve_task,
)
from align_cbrl.trainer.estimation import build_optimizer  # noqa: E402


def main(argv: list[str]) -> None:
    flags, argv = pop_flags(argv, switches=["--resume"], options=["--debug_sync"])
    config_path, overrides = parse_overrides(argv)
    if config_path is None:
        raise ConfigError("give --config FILE.yaml (see configs/recipes/)")
    config = load_config(HPGDConfig, config_path, overrides)
    if len(config.followers) != 1 or config.followers[0].trainer != "grpo":
        raise ConfigError("this recipe trains exactly one follower with trainer: grpo")
    if config.leader.estimator not in ("hpgd", "naive"):
        raise ConfigError("plugin mode supports leader.estimator hpgd or naive")
    fc, lc = config.followers[0], config.leader
    state = PartialState()  # joins the process group `accelerate launch` set up

    # 1. Prompts, reward components and the leader: the same YAML sections as orchestrated runs.
    task = resolve_task(config.task)
    setup = build_reward_setup(config, task)
    rows = task.dataset_rows() if fc.dataset is None else load_prompts(fc.dataset)
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

    # 3. A plain GRPO script.
    args = GRPOConfig(
        output_dir=f"{config.output_dir}/trl",
        beta=fc.beta,  # > 0: the follower's KL temperature (GRPO's default 0.0 is refused)
        scale_rewards=fc.scale_rewards,  # "none": the follower maximises E[r] - beta KL
        num_generations=fc.num_generations,
        per_device_train_batch_size=fc.prompts_per_step * fc.num_generations,
        max_completion_length=task.config.max_words if task else fc.max_completion_length,
        temperature=fc.temperature,
        learning_rate=fc.learning_rate,
        lr_scheduler_type=fc.lr_scheduler_type,
        max_grad_norm=fc.max_grad_norm,
        max_steps=config.iterations * config.follower_steps,
        seed=fc.seed,
        logging_steps=config.follower_steps,
        save_strategy="steps" if config.save_every else "no",
        save_steps=max(1, config.save_every * config.follower_steps),
        save_total_limit=config.keep_checkpoints,
        report_to="none",
        disable_tqdm=not config.progress,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        **({"loss_type": fc.loss_type} if fc.loss_type else {}),
        **fc.trl_kwargs,
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[reward],
        args=args,
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
            f"{len(hpgd.history)} leader updates over {trainer.state.global_step} GRPO steps on "
            f"{state.num_processes} process(es); last objective estimate "
            f"{last.get('objective_estimate', float('nan')):.4f}"
        )
        print(f"leader under {config.output_dir}/leader, metrics in leader_metrics.jsonl")
    finish(state)  # barrier, then tear the process group down before Python exits


if __name__ == "__main__":
    main(sys.argv[1:])
    from recipe_utils import exit_now

    exit_now()  # skip interpreter finalisation (see recipe_utils.exit_now)
