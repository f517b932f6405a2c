"""HPGD as a plugin of a plain TRL ``GRPOTrainer`` / ``RLOOTrainer`` script, configured the TRL
way: one YAML read by TRL's ``TrlParser`` holds the script's keys, TRL's ``GRPOConfig`` /
``RLOOConfig`` and ``ModelConfig`` keys and the leader's ``leader_*`` keys (``HPGDArguments``).

    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 1 \
        recipes/plugin.py grpo --config configs/recipes/plugin_grpo_tiny.yaml
    (or: recipes/plugin.py rloo --config configs/recipes/plugin_rloo_tiny.yaml)
    recipes/plugin.py grpo --help        # every key: script, GRPOConfig, ModelConfig, leader_*

The script is an ordinary TRL script plus ``HPGDReward`` (the shaped reward ``r_x``, TRL's reward
function) and ``HPGDCallback`` (moves the leader one HPGD step every ``leader_update_every``
optimiser steps from the groups TRL generated; no extra generation). The KL is TRL's own:
GRPO's per-token KL in the loss (``beta``), RLOO's sequence-level KL in the reward; set
``scale_rewards: none`` (GRPO) and keep ``normalize_advantages: false`` (RLOO) for an unbiased
hypergradient. It uses only names exported by ``align_cbrl``.

Outputs under ``output_dir``: TRL's ``checkpoint-<step>/`` (each with ``hpgd_leader/``),
``leader_metrics.jsonl`` and the final ``leader/`` (a ``save_pretrained`` folder: reuse it with
``FrozenShapedReward.from_pretrained``). ``--resume`` continues from the latest checkpoint.
Multi-process: the leader is broadcast at the start and its hypergradient all-reduced, so all
ranks hold the same leader; ``--debug_sync DIR`` makes each rank write ``DIR/rank<r>.json``.

Faults (docs/reliability.md): every collective waits at most ``ddp_timeout`` seconds (TRL's key;
the process group is set up with it before anything else), so a rank whose peer died exits with
status 1 and one line; a reward function that raises stops the run with one line naming it, the
training step and the last checkpoint (status 2); Ctrl-C exits with 130; a finished
multi-process run leaves through a barrier and ``os._exit``, never tearing the process group
down (the exit hang of issue #25).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from recipe_utils import RECIPE_KINDS, make_sync_check_callback, write_sync_report

from align_cbrl import set_cpu_defaults

set_cpu_defaults(threads=None)  # before torch is imported

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402
from trl import (  # noqa: E402
    GRPOConfig,
    GRPOTrainer,
    ModelConfig,
    RLOOConfig,
    RLOOTrainer,
    TrlParser,
    get_peft_config,
)

from align_cbrl import (  # noqa: E402
    BilevelRewards,
    HPGDArguments,
    HPGDCallback,
    HPGDReward,
    build_components,
    build_leader,
    build_tiny_lm,
    fault_context,
    finish_run,
    init_process_group,
    load_leader,
    load_prompts,
    load_reward_config,
    run_and_leave,
)
from align_cbrl.trainer.validation import check_dataset_for_leader  # noqa: E402


@dataclass
class ScriptArguments:
    """The script's own keys (next to TRL's and the leader's in the same YAML)."""

    dataset: str = field(
        default="tiny_language",
        metadata={
            "help": "prompt rows: an embedded set (tiny_language, quickstart) or a .jsonl/.json/.yaml file with 'prompt' and the context column"
        },
    )
    reward_config: str = field(
        default="configs/rewards/tiny_language.yaml",
        metadata={
            "help": "reward config YAML: the components, the follower's base mix and the leader's objective mix"
        },
    )
    tiny_vocab: list[str] = field(
        default_factory=lambda: ["a", "b", "c", "d"],
        metadata={
            "help": "vocabulary of the word-level tiny LM built for model_name_or_path: tiny-word"
        },
    )
    model_seed: int = field(default=0, metadata={"help": "initialisation seed of a tiny-* model"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the latest checkpoint in output_dir"}
    )
    debug_sync: str | None = field(
        default=None,
        metadata={"help": "compare the leader across ranks after every update; DIR/rank<r>.json"},
    )


def parse(argv: list[str]) -> tuple[str, ScriptArguments, Any, ModelConfig, Any]:
    """``(kind, script, trl_args, model_args, hpgd_args)`` from ``grpo|rloo --config FILE.yaml
    [--key value ...]``; configuration errors are one-line ``ValueError`` s."""
    if not argv or argv[0] not in RECIPE_KINDS:
        raise ValueError(
            f"usage: plugin.py {{{','.join(RECIPE_KINDS)}}} --config FILE.yaml [--key value ...]: "
            "name the follower trainer first"
        )
    kind, rest = argv[0], argv[1:]
    config_class = GRPOConfig if kind == "grpo" else RLOOConfig
    parser = TrlParser((ScriptArguments, config_class, ModelConfig, HPGDArguments))
    if "--config" not in rest and not {"-h", "--help"} & set(rest):
        raise ValueError("give --config FILE.yaml (see configs/recipes/plugin_*.yaml)")
    try:
        script, trl_args, model_args, hpgd_args = parser.parse_args_and_config(rest)
    except ValueError as err:
        hint = f" (a config for the other trainer? this is {config_class.__name__})"
        raise ValueError(f"plugin.py {kind}: {str(err).splitlines()[0]}{hint}") from err
    return kind, script, trl_args, model_args, hpgd_args


def build_leader_for(hpgd_args: Any, names: list[str], contexts: list[Any], column: str) -> Any:
    """``leader_init`` (a saved leader) or ``leader_spec`` with the components and contexts."""
    if hpgd_args.leader_init is not None:
        return load_leader(hpgd_args.leader_init)
    spec = {"type": "weights", "component_names": names, **(hpgd_args.leader_spec or {})}
    if spec["type"] == "weights":
        spec.setdefault("contexts", list(dict.fromkeys(contexts)))
        spec.setdefault("context_column", column)
    return build_leader(spec)


def main(argv: list[str]) -> None:
    kind, script, trl_args, model_args, hpgd_args = parse(argv)
    # joins the process group `accelerate launch` set up, collectives limited to ddp_timeout
    state = init_process_group(trl_args.ddp_timeout)

    # 1. Prompts, reward components, mixes and the leader.
    rows = load_prompts(script.dataset)
    rewards = load_reward_config(script.reward_config)
    components = build_components(rewards.components)
    column = (rewards.leader or {}).get("context_column", "category")
    torch.manual_seed(trl_args.seed)
    leader = build_leader_for(
        hpgd_args, [c.name for c in components], [r.get(column) for r in rows], column
    )

    # 2. The two plugin objects.
    reward = HPGDReward(
        BilevelRewards(leader, rewards.follower, rewards.leader), components, context_column=column
    )
    check_dataset_for_leader(rows, reward.bilevel, column, "plugin.py")  # before the model loads
    hpgd = HPGDCallback(reward, hpgd_args)
    callbacks = [hpgd]
    if script.debug_sync:
        callbacks.append(make_sync_check_callback(hpgd))

    # 3. A plain GRPO / RLOO script.
    model = model_args.model_name_or_path or "tiny-word"
    if model in ("tiny-word", "tiny-bpe"):
        words = script.tiny_vocab if model == "tiny-word" else None
        model = str(build_tiny_lm(model[5:], seed=script.model_seed, words=words))
    if model_args.dtype not in (None, "auto"):
        trl_args.model_init_kwargs = {
            "dtype": model_args.dtype,
            **(trl_args.model_init_kwargs or {}),
        }
    trainer = (GRPOTrainer if kind == "grpo" else RLOOTrainer)(
        model=model,
        reward_funcs=[reward],
        args=trl_args,
        train_dataset=Dataset.from_list(rows),
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),
    )

    def last_checkpoint() -> str | None:
        out = trainer.args.output_dir
        return get_last_checkpoint(out) if os.path.isdir(out) else None

    with fault_context(last_checkpoint, trl_args.ddp_timeout):  # one-line errors + what to do
        trainer.train(resume_from_checkpoint=True if script.resume else None)

    if script.debug_sync:
        write_sync_report(script.debug_sync, hpgd.sync, leader, callbacks[-1].digests)
    if state.is_main_process:
        last = hpgd.history[-1] if hpgd.history else {}
        print(
            f"{len(hpgd.history)} leader updates over {trainer.state.global_step} "
            f"{kind.upper()} steps on {state.num_processes} process(es); last objective "
            f"estimate {last.get('objective_estimate', float('nan')):.4f}"
        )
        print(f"leader under {trl_args.output_dir}/leader, metrics in leader_metrics.jsonl")
    finish_run()  # several processes: barrier, then leave here, with the trainer still referenced


if __name__ == "__main__":
    run_and_leave(main, sys.argv[1:])  # one-line errors, exit statuses (docs/reliability.md)
