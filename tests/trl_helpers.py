"""Shared helpers for the TRL-backed tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

from trl import GRPOConfig, RLOOConfig

_SMALL_CPU_RUN = dict(
    beta=0.5,
    num_generations=4,
    per_device_train_batch_size=8,
    max_completion_length=2,
    learning_rate=1e-2,
    max_steps=4,
    lr_scheduler_type="constant",
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    disable_tqdm=True,
    use_cpu=True,
    seed=0,
    bf16=False,
)


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    """A small CPU GRPOConfig for the plugin tests; ``kw`` overrides single fields."""
    args = dict(_SMALL_CPU_RUN, output_dir=str(tmp_path / "trl"), scale_rewards="none")
    args["activation_checkpointing"] = False
    args.update(kw)
    return GRPOConfig(**args)


def rloo_args(tmp_path, **kw) -> RLOOConfig:
    """The RLOO counterpart of :func:`grpo_args` (unnormalised advantages)."""
    args = dict(_SMALL_CPU_RUN, output_dir=str(tmp_path / "trl"), normalize_advantages=False)
    args.update(kw)
    return RLOOConfig(**args)
