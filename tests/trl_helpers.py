"""Shared helpers for the TRL-backed tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

from trl import GRPOConfig


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    """A small CPU GRPOConfig for the plugin tests; ``kw`` overrides single fields."""
    args = dict(
        output_dir=str(tmp_path / "trl"),
        beta=0.5,
        scale_rewards="none",
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
        activation_checkpointing=False,
        seed=0,
        bf16=False,
    )
    args.update(kw)
    return GRPOConfig(**args)
