"""Everything that touches TRL's (and transformers') private internals, in one place.

The followers continue a TRL trainer K steps at a time and score the KL penalty of
``kl_mode="reward"`` with TRL's own log-prob code; the plugin callback writes into TRL's metric
store. That needs private hooks and attributes, which change between TRL releases, so they are
all here, behind :func:`check_trl_version`: the supported range is :data:`SUPPORTED_TRL`
(tested with :data:`TESTED_TRL`, the version ``pyproject.toml`` pins). Outside it the followers
refuse to start with a one-line error instead of failing somewhere inside a training step.

What is used, and why:

* :class:`ChunkedTrainer` (mixed into ``GRPOTrainer`` / ``RLOOTrainer`` by
  :func:`make_trainer_class`) overrides 7 private hooks: ``_load_from_checkpoint``,
  ``_load_optimizer_and_scheduler`` and ``_load_rng_state`` (the one resume of a follower
  loaded from a checkpoint is served from memory; TRL's loop otherwise runs once per follower,
  :mod:`align_cbrl.followers.trl_loop`);
  ``_get_train_sampler`` (the prompt order depends only on ``(seed, epoch)``); ``_generate``,
  ``_calculate_rewards`` and ``_generate_and_score_completions`` (``kl_mode="reward"``: see the
  token ids TRL sampled, keep the logged reward equal to the task reward).
* :func:`token_logprobs` calls ``_get_per_token_logps_and_entropies`` and reads ``_tokenizer``
  and ``pad_to_multiple_of``; :func:`build_reference_model` uses TRL's model helpers and the
  policy's ``config._attn_implementation``.
* :func:`trl_step` / :func:`set_trl_step` (``_step``, TRL's micro-step counter, part of a
  follower checkpoint), :func:`tied_weight_keys` (``_tied_weights_keys``),
  :func:`metric_store` (``_metrics``), :func:`scores_out_of_process` (TRL's async trainers).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from align_cbrl.utils.rng import restore_rng_state

__all__ = [
    "SUPPORTED_TRL",
    "TESTED_TRL",
    "ChunkedTrainer",
    "build_reference_model",
    "check_trl_version",
    "make_trainer_class",
    "metric_store",
    "scores_out_of_process",
    "set_trl_step",
    "tied_weight_keys",
    "token_logprobs",
    "trainer_reward_funcs",
    "trl_step",
]

SUPPORTED_TRL = ">=1.16.0,<1.17"
"""TRL versions whose private hooks this module matches."""
TESTED_TRL = "1.16.0"
"""The version the test suite runs against (pinned in ``pyproject.toml``)."""


def check_trl_version(version: str | None = None) -> str:
    """Return the installed TRL version (or ``version``), or raise ``ImportError`` when it is
    missing or outside :data:`SUPPORTED_TRL`."""
    from packaging.specifiers import SpecifierSet

    if version is None:
        try:
            import trl
        except ImportError as err:
            raise ImportError(
                f"TRL followers need trl{SUPPORTED_TRL}: pip install 'align-cbrl[trl]'"
            ) from err
        version = str(trl.__version__)
    if version not in SpecifierSet(SUPPORTED_TRL):
        raise ImportError(
            f"trl {version} is installed but align_cbrl's TRL followers support trl"
            f"{SUPPORTED_TRL} (tested with {TESTED_TRL}; they override private TRL hooks, see "
            f"align_cbrl/followers/trl_compat.py): pip install 'trl=={TESTED_TRL}'"
        )
    return version


@functools.cache
def _epoch_seeded_sampler() -> type:
    """TRL's ``RepeatSampler`` with a permutation that depends only on ``(seed, epoch)``."""
    from trl.trainer.utils import RepeatSampler

    class EpochSeededRepeatSampler(RepeatSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self):  # type: ignore[no-untyped-def]
            if self.shuffle:
                self.generator = torch.Generator()
                self.generator.manual_seed(int(self.seed or 0) * 1_000_003 + self.epoch)
            return super().__iter__()

    return EpochSeededRepeatSampler


class ChunkedTrainer:
    """Mixin for a TRL trainer class (:func:`make_trainer_class`): ``train(resume_from_checkpoint=
    ...)`` resumes from in-memory state, and ``kl_mode="reward"`` sees the sampled token ids.

    The follower sets ``_acbrl_sched_state`` / ``_acbrl_optim_state`` / ``_acbrl_rng`` before
    such a resume (each is used once) and ``_acbrl_kl_term`` (a
    :class:`~align_cbrl.followers.kl_penalty.KLPenalty`) for GRPO with ``kl_mode="reward"``."""

    _acbrl_sched_state: dict[str, Any] | None = None
    _acbrl_optim_state: dict[str, Any] | None = None
    _acbrl_rng: dict[str, Any] | None = None
    _acbrl_kl_term: Any = None
    _acbrl_prompt_ids: list[list[int]] | None = None
    _acbrl_task_rewards: torch.Tensor | None = None

    # --- kl_mode="reward": see the token ids TRL sampled, keep the logged reward = r ---------
    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._generate(*args, **kwargs)  # type: ignore[misc]
        if self._acbrl_kl_term is not None:
            self._acbrl_prompt_ids = [list(map(int, ids)) for ids in out[0]]
        return out

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)  # type: ignore[misc]
        if self._acbrl_kl_term is not None:  # the task reward: every column but the KL term
            w = self.reward_weights.to(rewards_per_func.device)  # type: ignore[attr-defined]
            self._acbrl_task_rewards = (rewards_per_func[:, :-1] * w[:-1]).nansum(dim=1)
        return rewards_per_func

    def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._generate_and_score_completions(*args, **kwargs)  # type: ignore[misc]
        term = self._acbrl_kl_term
        if term is None:
            return out
        from trl.trainer.utils import nanstd

        t: Any = self
        metrics = t._metrics["train" if t.model.training else "eval"]
        task = self._acbrl_task_rewards
        if task is not None and metrics.get("reward"):
            # TRL logged the mean of r - beta*log(pi/pi_ref); report the task reward r as in
            # kl_mode="loss" and RLOO (the KL term has its own rewards/kl_penalty/*)
            metrics["reward"][-1] = torch.nanmean(task).item()
            metrics["reward_std"][-1] = nanstd(task).item()
        if term.last_stats is not None:  # RLOO's "kl": mean per-token log(pi/pi_ref)
            stats = t.accelerator.reduce(term.last_stats, reduction="sum")
            metrics["kl"].append((stats[0] / stats[1].clamp(min=1.0)).item())
        self._acbrl_task_rewards = None
        self._acbrl_prompt_ids = None
        term.last_stats = None
        return out

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        t: Any = self
        return _epoch_seeded_sampler()(
            data_source=t.train_dataset if dataset is None else dataset,
            mini_repeat_count=t.num_generations,
            batch_size=t.args.generation_batch_size // t.num_generations,
            repeat_count=t.num_iterations * t.args.steps_per_generation,
            shuffle=t.shuffle_dataset,
            seed=t.args.seed,
        )

    # --- resume hooks: serve the state from memory instead of checkpoint files -------------
    def _load_from_checkpoint(self, resume_from_checkpoint: Any, model: Any = None) -> None:
        return None  # weights live in memory (load() already put them there)

    def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
        t: Any = self
        if self._acbrl_optim_state is not None:
            t.optimizer.load_state_dict(self._acbrl_optim_state)
            self._acbrl_optim_state = None
        if self._acbrl_sched_state is not None and t.lr_scheduler is not None:
            t.lr_scheduler.load_state_dict(self._acbrl_sched_state)
            lrs = t.lr_scheduler.get_last_lr()
            for group, lr in zip(t.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
        self._acbrl_sched_state = None

    def _load_rng_state(self, checkpoint: Any) -> None:
        if self._acbrl_rng is not None:
            restore_rng_state(self._acbrl_rng)
            self._acbrl_rng = None


@functools.cache
def make_trainer_class(base: type) -> type:
    """``base`` (``GRPOTrainer`` / ``RLOOTrainer``) with the :class:`ChunkedTrainer` hooks."""
    return type(base.__name__, (ChunkedTrainer, base), {"__qualname__": base.__qualname__})


def token_logprobs(
    trainer: Any, ref_model: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``log pi_theta``, ``log pi_ref`` and the completion mask, ``[B, T]`` each, for
    the batch laid out exactly as TRL lays it out for its loss (prompt ids left-padded,
    completion ids right-padded, TRL's pad id and ``pad_to_multiple_of``), from TRL's own
    ``_get_per_token_logps_and_entropies`` (sampling temperature applied), without gradient."""
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import pad

    t = trainer
    device = t.accelerator.device

    def padded(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
        return pad(
            [torch.tensor(r, dtype=torch.long) for r in rows],
            padding_value=value,
            padding_side=side,
            pad_to_multiple_of=t.pad_to_multiple_of,
        ).to(device)

    pad_id = t._tokenizer.pad_token_id
    input_ids = torch.cat(
        [padded(prompt_ids, pad_id, "left"), padded(completion_ids, pad_id, "right")], dim=1
    )
    completion_mask = padded([[1] * len(r) for r in completion_ids], 0, "right")
    prompt_mask = padded([[1] * len(r) for r in prompt_ids], 0, "left")
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_mask.size(1)
    batch_size = t.args.per_device_train_batch_size
    with (
        torch.no_grad(),
        disable_gradient_checkpointing(t.model, t.args.gradient_checkpointing_kwargs),
    ):
        logp, _, _ = t._get_per_token_logps_and_entropies(
            t.model, input_ids, attention_mask, keep, batch_size=batch_size
        )
        logp_ref, _, _ = t._get_per_token_logps_and_entropies(
            ref_model, input_ids, attention_mask, keep, batch_size=batch_size
        )
    return logp, logp_ref, completion_mask


def build_reference_model(trainer: Any, model_path: str) -> Any:
    """A frozen copy of the initial model, loaded from ``model_path`` the way TRL loads its own
    reference model (same init kwargs, dropout off, fused log-prob head at the sampling
    temperature)."""
    from trl.trainer.utils import (
        add_fused_lm_head,
        create_model_from_path,
        disable_dropout_in_model,
    )

    args = trainer.args
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(
        trainer, "is_fsdp_enabled", False
    ):
        raise ValueError(
            "kl_mode='reward' does not support DeepSpeed/FSDP here; use kl_mode='loss'"
        )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs.setdefault("dtype", policy.dtype)
    kwargs.setdefault("attn_implementation", policy.config._attn_implementation)
    ref = create_model_from_path(model_path, **kwargs)
    if args.disable_dropout:
        disable_dropout_in_model(ref)
    if args.cast_lm_head_to_fp32:
        ref.lm_head = ref.lm_head.float()
    add_fused_lm_head(
        ref, temperature=trainer.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32
    )
    ref.requires_grad_(False)
    return trainer.accelerator.prepare_model(ref, evaluation_mode=True)


def trl_step(trainer: Any) -> int:
    """TRL's micro-step counter (which buffered generation batch comes next)."""
    return int(getattr(trainer, "_step", 0))


def set_trl_step(trainer: Any, step: int) -> None:
    if hasattr(trainer, "_step"):
        trainer._step = int(step)


def tied_weight_keys(model: Any) -> set[str]:
    """Parameter names a ``transformers`` model ties to others (absent from its state dict)."""
    return set(getattr(model, "_tied_weights_keys", None) or [])


def metric_store(log_metric: Any) -> dict[str, Any] | None:
    """TRL's per-mode metric store (``trainer._metrics``) behind the ``log_metric`` hook it
    passes to reward functions; ``None`` when the hook has no such store."""
    metrics = getattr(getattr(log_metric, "__self__", None), "_metrics", None)
    return metrics if isinstance(metrics, dict) else None


def trainer_reward_funcs(log_metric: Any) -> list[Any] | None:
    """The trainer's ``reward_funcs`` behind the ``log_metric`` hook TRL passes to reward
    functions (a bound method of the trainer); ``None`` when it has none."""
    funcs = getattr(getattr(log_metric, "__self__", None), "reward_funcs", None)
    return list(funcs) if isinstance(funcs, list | tuple) else None


def scores_out_of_process(args: Any) -> str | None:
    """Name of the config class if it belongs to a trainer that scores in another process
    (TRL's ``AsyncGRPOTrainer``)."""
    for cls in type(args).__mro__:
        if cls.__module__.startswith("trl.experimental.async") or cls.__name__.startswith("Async"):
            return cls.__name__
    return None
