"""Followers trained with TRL's ``GRPOTrainer`` / ``RLOOTrainer``, continued K steps at a time.

How "continue K steps" works (the basis of checkpoint/resume):

* One TRL trainer is built per follower and reused. Each :meth:`TRLFollower.train` call runs the
  trainer's own ``train()`` loop, re-entered with ``resume_from_checkpoint`` pointing at a
  private state directory, and a callback stops it after K optimiser steps.
* Everything a resume would read from disk is served from memory instead: the weights and the
  optimiser object simply stay alive, the LR-scheduler state dict and the RNG states
  (python/numpy/torch) are snapshotted at the stopping step and restored on re-entry, the
  ``TrainerState`` goes through a tiny ``trainer_state.json``.
* The prompt order is a pure function of ``(seed, epoch)`` (the epoch is set by the trainer),
  so the trainer's "skip the batches already seen in this epoch" logic lands on the same
  batch as an uninterrupted run.
* :meth:`save` writes the same state to disk (model via ``save_pretrained``); :meth:`load`
  puts it back in memory, so a fresh process continues identically.

The result: ``train(k); train(k)`` equals ``train(2 * k)`` bit-for-bit on CPU (tested), and
``save -> new process -> load -> train`` equals not stopping.

Why ``scale_rewards="none"`` (GRPO default here): the leader's hypergradient assumes the
follower maximises ``E[r] - beta * KL(pi || pi_ref)``. Dividing advantages by the group's
reward std rescales the reward per prompt (the effective temperature becomes
``beta * std``), so the follower would converge somewhere else than ``pi_ref exp(r/beta)``.

Where the KL enters (``TRLFollowerConfig.kl_mode``):

* ``"reward"`` (default; the only mode of RLOO): the KL is a sequence-level reward penalty,
  ``r'(p, y) = r(p, y) - beta * (log pi_theta(y|p) - log pi_ref(y|p))``, log-probs summed over
  the completion tokens (EOS included). The REINFORCE gradient of ``E[r']`` is the gradient of
  ``E[r] - beta * KL(pi || pi_ref)``, whose maximiser is exactly ``pi*``; at ``pi*`` every
  completion has the same ``r' = beta * log Z(p)``, so the group-centred advantages vanish there.
  RLOO does this natively; for GRPO, TRL's ``beta`` is set to 0 and the follower adds the
  penalty as a second reward function (:class:`_KLPenalty`, logged as ``kl_penalty``) computed
  without gradient by the current policy and a frozen reference model loaded from the model
  directory.
* ``"loss"`` (GRPO only): TRL's own per-token KL estimate in the loss (with TRL's default
  ``use_bias_correction_kl=True`` its gradient is the per-token reverse-KL gradient). It ignores
  the KL of *later* tokens, and GRPO's group-mean baseline shrinks the reward part of the
  gradient by ``(G - 1) / G`` but not the KL part, so the fixed point is biased away from
  ``pi*``. ``docs/followers.md`` reports measured distances.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from align_cbrl.followers.base import (
    Follower,
    RewardFn,
    call_reward_function,
    reward_function_name,
    validate_beta,
)

__all__ = ["GRPOFollower", "RLOOFollower", "TRLFollower", "TRLFollowerConfig"]

_STATE_FORMAT = 1
_FOLLOWER_JSON = "follower.json"
_KL_MODES = ("loss", "reward")
KL_PENALTY_NAME = "kl_penalty"
"""Name under which the ``kl_mode="reward"`` penalty ``-beta * log(pi/pi_ref)`` is logged
(``rewards/kl_penalty/mean``)."""


@dataclass
class TRLFollowerConfig:
    """Settings shared by the GRPO and RLOO followers.

    Attributes:
        beta: KL temperature (> 0) of the follower's objective ``E[r] - beta * KL(pi || pi_ref)``
            in both KL modes (TRL's ``beta`` is this value with ``kl_mode="loss"``, 0 with
            ``kl_mode="reward"``, where the follower applies the KL itself).
        kl_mode: where the KL enters. ``"reward"`` (default): sequence-level penalty in the
            reward, ``r' = r - beta * (log pi_theta(y|p) - log pi_ref(y|p))``, whose fixed point
            is exactly ``pi* ∝ pi_ref exp(r / beta)`` (what the leader's hypergradient assumes).
            ``"loss"``: GRPO only, TRL's per-token KL term in the loss (biased fixed point for
            multi-token completions). RLOO always uses the reward penalty and refuses ``"loss"``.
        learning_rate: AdamW learning rate.
        num_generations: completions per prompt in each training group (>= 2).
        prompts_per_step: prompts per optimiser step (a step sees
            ``prompts_per_step * num_generations`` completions).
        max_completion_length: maximum generated tokens.
        temperature: sampling temperature (training and :meth:`TRLFollower.sample`).
        seed: seeds TRL, the prompt order and :meth:`TRLFollower.sample`.
        max_steps: horizon of the learning-rate schedule (training may stop earlier).
        lr_scheduler_type: transformers scheduler name; ``"constant"`` keeps every chunk alike.
        warmup_steps: scheduler warm-up steps.
        max_grad_norm: gradient clipping (0 disables).
        weight_decay: AdamW weight decay.
        scale_rewards: GRPO only; ``"none"`` keeps the optimised objective ``E[r] - beta KL``.
        loss_type: GRPO only; TRL loss aggregation (``None`` = TRL's default, ``"dapo"``).
        disable_dropout: disable dropout so log-probs are deterministic.
        activation_checkpointing: trade compute for memory (TRL turns it on by default; off
            here because it only slows small models down).
        output_dir: TRL's scratch directory (nothing is saved there); default a temp dir.
        trust_remote_code: forwarded to model/tokenizer loading (off unless you enable it).
        lora: ``peft.LoraConfig`` fields (``{}`` = the defaults of
            :func:`align_cbrl.models.real.lora_config`): TRL trains LoRA adapters on the model
            (``peft_config``); :meth:`TRLFollower.save` / :meth:`TRLFollower.load` then hold the
            adapter weights (``adapter_model.safetensors``). ``None``: all weights are trained.
        trl_kwargs: any other ``GRPOConfig``/``RLOOConfig`` field, passed through.
    """

    beta: float = 0.05
    kl_mode: Literal["loss", "reward"] = "reward"
    learning_rate: float = 1e-5
    num_generations: int = 4
    prompts_per_step: int = 2
    max_completion_length: int = 16
    temperature: float = 1.0
    seed: int = 0
    max_steps: int = 1_000_000
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    scale_rewards: str = "none"
    loss_type: str | None = None
    disable_dropout: bool = True
    activation_checkpointing: bool = False
    output_dir: str | None = None
    trust_remote_code: bool = False
    trl_kwargs: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.beta = validate_beta(self.beta, "TRLFollowerConfig")
        if self.lora is not None:
            from align_cbrl.models.real import lora_config

            if not isinstance(self.lora, dict):
                raise TypeError(f"lora must be a mapping of LoraConfig fields, got {self.lora!r}")
            lora_config(self.lora)  # unknown fields / missing peft fail here, before training
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: GRPO/RLOO need >= 2 completions per "
                "prompt (the group baseline); set num_generations >= 2"
            )
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.max_completion_length < 1:
            raise ValueError("max_completion_length must be >= 1")
        if self.kl_mode not in _KL_MODES:
            raise ValueError(
                f"kl_mode={self.kl_mode!r}: use 'reward' (KL as a sequence-level reward penalty, "
                "exact fixed point pi*) or 'loss' (TRL GRPO's per-token KL loss term)"
            )
        if self.scale_rewards not in ("none", "group", "batch"):
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r}: use 'none' (recommended), 'group' or 'batch'"
            )
        reserved = {"beta", "max_steps", "save_strategy", "report_to", "logging_steps"}
        clash = reserved & set(self.trl_kwargs)
        if clash:
            raise ValueError(
                f"trl_kwargs may not set {sorted(clash)}; use the TRLFollowerConfig fields "
                "(beta, max_steps) or leave them to the follower"
            )


class _RewardSlot:
    """The single reward function TRL sees; it forwards to the follower's current function and
    validates its output (length, NaN/inf) with an error that names the function and index."""

    def __init__(self) -> None:
        self.fn: RewardFn | None = None
        self.__name__ = "reward"

    def set(self, fn: RewardFn) -> None:
        if not callable(fn):
            raise TypeError(f"reward function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.__name__ = reward_function_name(fn)

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        if self.fn is None:
            raise RuntimeError(
                "the follower has no reward function: call follower.set_reward_function(fn) "
                "before follower.train(...)"
            )
        return call_reward_function(self.fn, prompts, completions, **kwargs)


class _KLPenalty:
    """The KL term of ``kl_mode="reward"`` (GRPO), registered with TRL as a second reward
    function named ``kl_penalty``: for every completion ``y`` of prompt ``p`` it returns

        ``-beta * (log pi_theta(y|p) - log pi_ref(y|p))``,  ``log pi(y|p) = sum_t log pi(y_t|p, y_<t)``,

    summed over the completion tokens TRL sampled (its ``completion_ids``: cut after the first
    EOS, EOS included; a truncated completion has no EOS). TRL sums it with the task reward, so
    the advantages are built from ``r' = r - beta * log(pi_theta / pi_ref)``.

    The batch is laid out exactly as TRL lays it out for its loss: the prompt ids TRL generated
    from (stashed by the trainer's ``_generate``) left-padded, the completion ids right-padded,
    both with TRL's ``pad`` (same pad id, ``pad_to_multiple_of``); the per-token log-probs come
    from TRL's own ``_get_per_token_logps_and_entropies`` (sampling temperature applied, like the
    loss), for the current policy and for a frozen reference model, without gradient.
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.__name__ = KL_PENALTY_NAME
        self.trainer: Any = None
        self.ref_model: Any = None
        self.last_stats: torch.Tensor | None = None  # [sum of token log-ratios, tokens]

    def token_logprobs(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token ``log pi_theta``, ``log pi_ref`` and the completion mask, ``[B, T]`` each."""
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import pad

        t = self.trainer
        device = t.accelerator.device
        pad_id = t._tokenizer.pad_token_id
        multiple = t.pad_to_multiple_of

        def padded(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
            return pad(
                [torch.tensor(r, dtype=torch.long) for r in rows],
                padding_value=value,
                padding_side=side,
                pad_to_multiple_of=multiple,
            )

        ones = [[1] * len(r) for r in prompt_ids]
        c_ones = [[1] * len(r) for r in completion_ids]
        input_ids = torch.cat(
            [padded(prompt_ids, pad_id, "left"), padded(completion_ids, pad_id, "right")], dim=1
        ).to(device)
        completion_mask = padded(c_ones, 0, "right").to(device)
        attention_mask = torch.cat([padded(ones, 0, "left").to(device), completion_mask], dim=1)
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
                self.ref_model, input_ids, attention_mask, keep, batch_size=batch_size
            )
        return logp, logp_ref, completion_mask

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        prompt_ids = getattr(self.trainer, "_acbrl_prompt_ids", None)
        if completion_ids is None or prompt_ids is None or len(prompt_ids) != len(completion_ids):
            raise RuntimeError(
                "kl_mode='reward' needs the prompt and completion token ids of the batch TRL "
                "sampled; they are missing (custom rollout or tool calls are not supported in this "
                "mode: use kl_mode='loss')"
            )
        if any(len(c) == 0 for c in completion_ids):
            raise RuntimeError("TRL passed an empty completion; cannot score it")
        logp, logp_ref, mask = self.token_logprobs(prompt_ids, completion_ids)
        log_ratio = ((logp - logp_ref) * mask).sum(dim=1)
        self.last_stats = torch.stack([log_ratio.sum(), mask.sum().to(log_ratio.dtype)])
        return (-self.beta * log_ratio).tolist()


class _StopAfter:
    """TrainerCallback (built lazily to keep transformers an optional import): stops the
    trainer at ``target`` global steps, snapshots RNG states there, and records logs."""

    @staticmethod
    def make(owner: TRLFollower) -> Any:
        from transformers import TrainerCallback

        class StopAfterCallback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if owner._target_step is not None and state.global_step >= owner._target_step:
                    owner._rng_snapshot = _get_rng_state()
                    control.should_training_stop = True
                return control

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> Any:
                if logs and "train_runtime" not in logs:
                    owner._chunk_logs.append(dict(logs, step=state.global_step))
                return control

        return StopAfterCallback()


def _get_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG state as (tensors for safetensors, JSON-able dict): no pickle."""
    version, keys, pos, has_gauss, gauss = state["numpy"]
    tensors = {
        "cpu": state["cpu"].clone(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    for i, t in enumerate(state.get("cuda", [])):
        tensors[f"cuda_{i}"] = t.clone()
    py_version, py_state, py_gauss = state["python"]
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [version, int(pos), int(has_gauss), float(gauss)],
        "num_cuda": len(state.get("cuda", [])),
    }
    return tensors, meta


def _rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    py_version, py_state, py_gauss = meta["python"]
    version, pos, has_gauss, gauss = meta["numpy"]
    state: dict[str, Any] = {
        "python": (py_version, tuple(py_state), py_gauss),
        "numpy": (version, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss),
        "cpu": tensors["cpu"],
    }
    if meta.get("num_cuda"):
        state["cuda"] = [tensors[f"cuda_{i}"] for i in range(meta["num_cuda"])]
    return state


def _make_trainer_class(base: type) -> type:
    """Subclass a TRL trainer so that re-entering ``train()`` resumes from in-memory state."""
    from trl.trainer.utils import RepeatSampler

    class _EpochSeededRepeatSampler(RepeatSampler):
        """``RepeatSampler`` whose permutation depends only on ``(seed, epoch)``."""

        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self):  # type: ignore[no-untyped-def]
            if self.shuffle:
                self.generator = torch.Generator()
                self.generator.manual_seed(int(self.seed or 0) * 1_000_003 + self.epoch)
            return super().__iter__()

    class Chunked(base):  # type: ignore[misc, valid-type]
        _acbrl_sched_state: dict[str, Any] | None = None
        _acbrl_optim_state: dict[str, Any] | None = None
        _acbrl_rng: dict[str, Any] | None = None
        _acbrl_kl_term: _KLPenalty | None = None  # set for GRPO with kl_mode="reward"
        _acbrl_prompt_ids: list[list[int]] | None = None
        _acbrl_task_rewards: torch.Tensor | None = None

        # --- kl_mode="reward": see the token ids TRL sampled, keep the logged reward = r -----
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            out = super()._generate(*args, **kwargs)
            if self._acbrl_kl_term is not None:
                self._acbrl_prompt_ids = [list(map(int, ids)) for ids in out[0]]
            return out

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            rewards_per_func = super()._calculate_rewards(*args, **kwargs)
            if self._acbrl_kl_term is not None:  # the task reward: every column but the KL term
                w = self.reward_weights.to(rewards_per_func.device)
                self._acbrl_task_rewards = (rewards_per_func[:, :-1] * w[:-1]).nansum(dim=1)
            return rewards_per_func

        def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> Any:
            out = super()._generate_and_score_completions(*args, **kwargs)
            term = self._acbrl_kl_term
            if term is not None:
                from trl.trainer.utils import nanstd

                metrics = self._metrics["train" if self.model.training else "eval"]
                task = self._acbrl_task_rewards
                if task is not None and metrics.get("reward"):
                    # TRL logged the mean of r - beta*log(pi/pi_ref); report the task reward r as
                    # in kl_mode="loss" and RLOO (the KL term has its own rewards/kl_penalty/*)
                    metrics["reward"][-1] = torch.nanmean(task).item()
                    metrics["reward_std"][-1] = nanstd(task).item()
                if term.last_stats is not None:  # RLOO's "kl": mean per-token log(pi/pi_ref)
                    stats = self.accelerator.reduce(term.last_stats, reduction="sum")
                    metrics["kl"].append((stats[0] / stats[1].clamp(min=1.0)).item())
                self._acbrl_task_rewards = None
                self._acbrl_prompt_ids = None
                term.last_stats = None
            return out

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            if dataset is None:
                dataset = self.train_dataset
            return _EpochSeededRepeatSampler(
                data_source=dataset,
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                shuffle=self.shuffle_dataset,
                seed=self.args.seed,
            )

        # --- resume hooks: serve the state from memory instead of checkpoint files ---------
        def _load_from_checkpoint(self, resume_from_checkpoint: Any, model: Any = None) -> None:
            return None  # weights live in memory (load() already put them there)

        def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
            if self._acbrl_optim_state is not None:
                self.optimizer.load_state_dict(self._acbrl_optim_state)
                self._acbrl_optim_state = None
            if self._acbrl_sched_state is not None and self.lr_scheduler is not None:
                self.lr_scheduler.load_state_dict(self._acbrl_sched_state)
                for group, lr in zip(
                    self.optimizer.param_groups, self.lr_scheduler.get_last_lr(), strict=True
                ):
                    group["lr"] = lr

        def _load_scaler(self, checkpoint: Any) -> None:
            return None

        def _load_rng_state(self, checkpoint: Any) -> None:
            if self._acbrl_rng is not None:
                _set_rng_state(self._acbrl_rng)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:  # never save inside TRL
            return None

    Chunked.__name__ = base.__name__
    Chunked.__qualname__ = base.__qualname__
    return Chunked


class TRLFollower(Follower):
    """Common machinery of :class:`GRPOFollower` and :class:`RLOOFollower` (do not use directly).

    Args:
        model: directory of a causal LM saved with ``save_pretrained`` (TRL loads the reference
            model from the same path). Build a tiny one with
            :func:`align_cbrl.models.build_tiny_lm`.
        train_dataset: ``datasets.Dataset`` with a ``"prompt"`` column and any context columns
            (e.g. ``"category"``); every extra column reaches the reward function as a kwarg.
        reward_fn: optional initial reward function (TRL signature); see
            :meth:`set_reward_function`.
        config: :class:`TRLFollowerConfig`.
        name: follower name (logs, checkpoints).
        callbacks: extra ``transformers.TrainerCallback`` objects for the TRL trainer.
    """

    trainer_kind: ClassVar[str] = "base"

    def __init__(
        self,
        model: str | os.PathLike[str],
        train_dataset: Any,
        reward_fn: RewardFn | None = None,
        config: TRLFollowerConfig | None = None,
        *,
        name: str | None = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        config = config if config is not None else TRLFollowerConfig()
        if not isinstance(config, TRLFollowerConfig):
            raise TypeError(f"config must be a TRLFollowerConfig, got {type(config).__name__}")
        super().__init__(name or self.trainer_kind, config.beta)
        self.config = config
        self.model_path = self._check_model_dir(model)
        self._check_dataset(train_dataset)
        self._reward = _RewardSlot()
        if reward_fn is not None:
            self._reward.set(reward_fn)
        self._target_step: int | None = None
        self._rng_snapshot: dict[str, Any] | None = None
        self._chunk_logs: list[dict[str, Any]] = []
        self._sample_calls = 0
        self._tmp = Path(tempfile.mkdtemp(prefix=f"align_cbrl_{self.trainer_kind}_"))
        self._state_dir = self._tmp / "resume"
        self._state_dir.mkdir()
        self.trainer = self._build_trainer(train_dataset, callbacks or [])
        self.tokenizer = self.trainer.processing_class

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_model_dir(model: Any) -> Path:
        if not isinstance(model, str | os.PathLike):
            raise TypeError(
                "model must be the path of a directory saved with save_pretrained (TRL loads the "
                f"reference model from it), got {type(model).__name__}"
            )
        path = Path(model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no model directory at {path} (config.json not found). Pass a directory written "
                "by save_pretrained, or build a tiny local one: "
                "`from align_cbrl.models import build_tiny_lm; path = build_tiny_lm('bpe')`."
            )
        return path

    def _check_dataset(self, ds: Any) -> None:
        try:
            from datasets import Dataset
        except ImportError as err:  # pragma: no cover
            raise ImportError(
                "TRL followers need `datasets`: pip install 'align-cbrl[trl]'"
            ) from err
        if not isinstance(ds, Dataset):
            raise TypeError(
                f"train_dataset must be a datasets.Dataset, got {type(ds).__name__}; build one "
                "with datasets.Dataset.from_dict({'prompt': [...], 'category': [...]})"
            )
        if "prompt" not in ds.column_names:
            raise ValueError(
                f"train_dataset has no 'prompt' column (columns: {ds.column_names}); add one"
            )
        if len(ds) == 0:
            raise ValueError("train_dataset is empty; give at least one prompt")
        if len(ds) < self.config.prompts_per_step:
            raise ValueError(
                f"train_dataset has {len(ds)} prompts but prompts_per_step="
                f"{self.config.prompts_per_step}; lower prompts_per_step or add prompts"
            )
        empty = [i for i, p in enumerate(ds["prompt"]) if not isinstance(p, str) or not p]
        if empty:
            raise ValueError(f"train_dataset prompts at rows {empty[:10]} are empty or not strings")

    def _trl_args(self) -> dict[str, Any]:
        c = self.config
        args: dict[str, Any] = {
            "output_dir": c.output_dir or str(self._tmp / "trl"),
            "beta": c.beta,
            "learning_rate": c.learning_rate,
            "num_generations": c.num_generations,
            "per_device_train_batch_size": c.prompts_per_step * c.num_generations,
            "max_completion_length": c.max_completion_length,
            "temperature": c.temperature,
            "seed": c.seed,
            "data_seed": c.seed,
            "max_steps": c.max_steps,
            "lr_scheduler_type": c.lr_scheduler_type,
            "warmup_steps": c.warmup_steps,
            "max_grad_norm": c.max_grad_norm,
            "weight_decay": c.weight_decay,
            "disable_dropout": c.disable_dropout,
            "activation_checkpointing": c.activation_checkpointing,
            "trust_remote_code": c.trust_remote_code,
            "report_to": "none",
            "save_strategy": "no",
            "logging_steps": 1,
            "disable_tqdm": True,
            "bf16": False,
            "fp16": False,
            "dataloader_num_workers": 0,
        }
        if not torch.cuda.is_available():
            args["use_cpu"] = True
        args.update(self._kind_args())
        args.update(c.trl_kwargs)
        return args

    def _kind_args(self) -> dict[str, Any]:
        return {}

    def _trl_classes(self) -> tuple[type, type]:
        raise NotImplementedError

    def _kl_reward_term(self) -> _KLPenalty | None:
        """The extra reward function carrying the KL penalty, if this follower adds one."""
        return None

    def _build_reference_model(self, trainer: Any) -> Any:
        """A frozen copy of the initial model, loaded from the model directory the way TRL loads
        its own reference model (same init kwargs, dropout off, fused log-prob head at the
        sampling temperature). Always the base model, never a checkpoint: :meth:`load` only
        touches the policy."""
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
        ref = create_model_from_path(str(self.model_path), **kwargs)
        if args.disable_dropout:
            disable_dropout_in_model(ref)
        if args.cast_lm_head_to_fp32:
            ref.lm_head = ref.lm_head.float()
        add_fused_lm_head(
            ref, temperature=trainer.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32
        )
        ref.requires_grad_(False)
        return trainer.accelerator.prepare_model(ref, evaluation_mode=True)

    def _build_trainer(self, train_dataset: Any, callbacks: list[Any]) -> Any:
        from transformers import AutoTokenizer, PrinterCallback, ProgressCallback

        trainer_cls, config_cls = self._trl_classes()
        trl_config = config_cls(**self._trl_args())
        tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, padding_side="left", trust_remote_code=self.config.trust_remote_code
        )
        chunked = _make_trainer_class(trainer_cls)
        kl_term = self._kl_reward_term()
        peft_kwargs: dict[str, Any] = {}
        if self.config.lora is not None:
            from align_cbrl.models.real import lora_config

            peft_kwargs["peft_config"] = lora_config(self.config.lora)
        trainer = chunked(
            model=str(self.model_path),
            reward_funcs=[self._reward] if kl_term is None else [self._reward, kl_term],
            args=trl_config,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            callbacks=[_StopAfter.make(self), *callbacks],
            **peft_kwargs,
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        if kl_term is not None:
            kl_term.trainer = trainer
            kl_term.ref_model = self._build_reference_model(trainer)
            trainer._acbrl_kl_term = kl_term
        spg = trainer.args.steps_per_generation * trainer.num_iterations
        ga = trainer.args.gradient_accumulation_steps
        self._steps_per_generation_cycle = max(1, spg // ga)
        return trainer

    # ------------------------------------------------------------------ interface
    @property
    def global_step(self) -> int:
        """Optimiser steps taken so far (across all :meth:`train` calls and resumes)."""
        return int(self.trainer.state.global_step)

    @property
    def model(self) -> Any:
        """The policy being trained (a ``transformers`` model)."""
        return self.trainer.model

    def set_reward_function(self, fn: RewardFn) -> None:
        self._reward.set(fn)
        self.trainer.reward_func_names[0] = self._reward.__name__

    def train(self, steps: int) -> dict[str, Any]:
        """Run ``steps`` more optimiser steps of the TRL trainer, warm-started.

        Returns ``{"global_step", "steps", "seconds", "seconds_per_step", "logs"}`` plus the
        mean over the chunk of every numeric metric TRL logged (``reward``, ``kl``, ...)."""
        steps = self._check_steps(steps)
        if self._reward.fn is None:
            raise RuntimeError(
                "the follower has no reward function: call set_reward_function(fn) first"
            )
        if steps == 0:
            return {"global_step": self.global_step, "steps": 0, "logs": []}
        cycle = self._steps_per_generation_cycle
        if steps % cycle or self.global_step % cycle:
            raise ValueError(
                f"steps={steps} must be a multiple of {cycle} (steps_per_generation x "
                "num_iterations / gradient_accumulation_steps) so chunks start on a fresh "
                "generation batch"
            )
        start = self.global_step
        if start + steps > self.trainer.args.max_steps:
            raise ValueError(
                f"training to step {start + steps} exceeds config.max_steps="
                f"{self.trainer.args.max_steps}; raise max_steps"
            )
        self._target_step = start + steps
        self._chunk_logs = []
        resume = None
        if start > 0 or self._rng_snapshot is not None:
            self.trainer._acbrl_rng = self._rng_snapshot
            resume = str(self._state_dir)
        else:
            # first chunk: start from the configured seed, whatever ran since construction
            from transformers import set_seed

            set_seed(self.config.seed)
        t0 = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - t0
        self._target_step = None
        if self.global_step != start + steps:
            raise RuntimeError(
                f"TRL stopped at step {self.global_step} instead of {start + steps}; the dataset "
                "may be too small for the requested steps"
            )
        self._remember_state()
        return self._summarise(steps, seconds)

    def _remember_state(self) -> None:
        """Snapshot what a re-entry needs: trainer state (json), scheduler state, RNG (taken at
        the stopping step by the callback)."""
        self.trainer.state.save_to_json(str(self._state_dir / "trainer_state.json"))
        if self.trainer.lr_scheduler is not None:
            self.trainer._acbrl_sched_state = copy.deepcopy(self.trainer.lr_scheduler.state_dict())

    def _summarise(self, steps: int, seconds: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "global_step": self.global_step,
            "steps": steps,
            "seconds": seconds,
            "seconds_per_step": seconds / steps,
            "logs": self._chunk_logs,
        }
        keys = {k for log in self._chunk_logs for k, v in log.items() if isinstance(v, int | float)}
        for k in sorted(keys - {"step", "epoch"}):
            vals = [
                float(log[k]) for log in self._chunk_logs if isinstance(log.get(k), int | float)
            ]
            out[k] = float(np.mean(vals))
        return out

    @torch.no_grad()
    def sample(self, prompts: list[str], n: int, **gen: Any) -> list[list[str]]:
        """``n`` completions per prompt from the current policy.

        Uses the trainer's generation config (the training settings); ``gen`` overrides fields
        of it (e.g. ``temperature``). Tokenization, EOS truncation and decoding follow TRL.
        Sampling runs on a private RNG stream (seeded by ``config.seed`` and a call counter) so
        it never changes what training does next."""
        return self.sample_with_ids(prompts, n, **gen)[0]

    @torch.no_grad()
    def sample_with_ids(
        self, prompts: list[str], n: int, **gen: Any
    ) -> tuple[list[list[str]], list[list[list[int]]]]:
        """Like :meth:`sample`, also returning the generated token ids (EOS included)."""
        prompts = self._check_sample_args(prompts, n)
        if not prompts:
            return [], []
        gen_cfg = copy.deepcopy(self.trainer.generation_config)
        unknown = gen_cfg.update(**gen)
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}")
        tok = self.tokenizer
        prompt_ids = tok(text=prompts)["input_ids"]
        for p, ids in zip(prompts, prompt_ids, strict=True):
            if not ids:
                raise ValueError(f"prompt {p!r} tokenizes to zero tokens; use a non-empty prompt")
        rows = [ids for ids in prompt_ids for _ in range(n)]
        width = max(len(r) for r in rows)
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        device = next(model.parameters()).device
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        was_training = model.training
        model.eval()  # dropout is off either way; eval() lets generation use the KV cache
        seed = (int(self.config.seed) * 7919 + 104_729 * (self._sample_calls + 1)) % (2**63 - 1)
        self._sample_calls += 1
        try:
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=gen_cfg,
                )
        finally:
            model.train(was_training)
        completions = out[:, width:].cpu()
        eos_ids = set(self.trainer.eos_token_ids)
        ids_list: list[list[int]] = []
        for row in completions.tolist():
            cut = next((k for k, t in enumerate(row) if t in eos_ids), None)
            ids_list.append(row if cut is None else row[: cut + 1])
        texts = tok.batch_decode(ids_list, skip_special_tokens=True)
        grouped = [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
        grouped_ids = [ids_list[i * n : (i + 1) * n] for i in range(len(prompts))]
        return grouped, grouped_ids

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write model (``save_pretrained``), tokenizer, optimizer/scheduler state, RNG state,
        TRL ``TrainerState`` and follower metadata into ``directory``, atomically: everything
        is written to a sibling temp directory that then replaces ``directory``."""
        from align_cbrl.utils.io import atomic_write_json, replace_directory, save_safetensors

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent)
        )
        try:
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            model.save_pretrained(tmp / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "model")
            optimizer = self.trainer.optimizer
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if self.trainer.lr_scheduler is not None:
                torch.save(self.trainer.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            rng = self._rng_snapshot
            if rng is not None:
                tensors, meta = _rng_to_files(rng)
                save_safetensors(tmp / "rng_state.safetensors", tensors)
                atomic_write_json(tmp / "rng_state.json", meta)
            self.trainer.state.save_to_json(str(tmp / "trainer_state.json"))
            atomic_write_json(
                tmp / _FOLLOWER_JSON,
                {
                    "format": _STATE_FORMAT,
                    "kind": self.trainer_kind,
                    "name": self.name,
                    "beta": self.beta,
                    "global_step": self.global_step,
                    "trl_step": int(getattr(self.trainer, "_step", 0)),
                    "sample_calls": self._sample_calls,
                    "base_model": str(self.model_path),
                    "reward_function": self._reward.__name__,
                    "config": asdict(self.config),
                },
            )
            replace_directory(tmp, directory)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore a :meth:`save` directory into this follower (built with the same model path,
        dataset and config); the next :meth:`train` continues exactly where the saved one
        stopped. The reward function is not saved: set it again."""
        from safetensors.torch import load_file

        from align_cbrl.utils.io import read_json

        directory = Path(directory)
        meta_path = directory / _FOLLOWER_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a follower checkpoint ({_FOLLOWER_JSON} missing)"
            )
        meta = read_json(meta_path)
        if meta.get("format") != _STATE_FORMAT:
            raise ValueError(f"{meta_path}: unsupported checkpoint format {meta.get('format')!r}")
        if meta.get("kind") != self.trainer_kind:
            raise ValueError(
                f"{directory} holds a {meta.get('kind')!r} follower; this is {self.trainer_kind!r}"
            )
        if float(meta.get("beta", -1)) != self.beta:
            raise ValueError(
                f"{directory} was saved with beta={meta.get('beta')} but this follower has "
                f"beta={self.beta}; build it with the saved config"
            )
        mine = asdict(self.config)
        saved = dict(meta.get("config", {}))
        # checkpoints written before kl_mode existed: GRPO trained with TRL's KL loss term
        saved.setdefault("kl_mode", "loss" if self.trainer_kind == "grpo" else "reward")
        diffs = sorted(k for k in mine if k != "output_dir" and saved.get(k, mine[k]) != mine[k])
        if diffs:
            raise ValueError(
                f"{directory} was saved with a different config ({diffs}); build the follower "
                "with the saved config to continue identically"
            )
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        lora = self.config.lora is not None
        weights_file = (
            directory / "model" / ("adapter_model.safetensors" if lora else "model.safetensors")
        )
        if not weights_file.is_file():
            raise FileNotFoundError(f"{weights_file} is missing; the checkpoint is incomplete")
        state = load_file(str(weights_file))
        if lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, state)
            missing = [k for k in result.missing_keys if "lora_" in k]
            unexpected = list(result.unexpected_keys)
        else:
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = set(getattr(model, "_tied_weights_keys", None) or [])
            missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise ValueError(
                f"{weights_file} does not match the model at {self.model_path}: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        if (directory / "optimizer.pt").is_file():
            if self.trainer.optimizer is None:
                self.trainer.create_optimizer()
            opt_state = torch.load(
                directory / "optimizer.pt", map_location="cpu", weights_only=True
            )
            self.trainer.optimizer.load_state_dict(opt_state)
        if (directory / "scheduler.pt").is_file():
            self.trainer._acbrl_sched_state = torch.load(
                directory / "scheduler.pt", map_location="cpu", weights_only=True
            )
        if (directory / "rng_state.safetensors").is_file():
            tensors = load_file(str(directory / "rng_state.safetensors"))
            self._rng_snapshot = _rng_from_files(tensors, read_json(directory / "rng_state.json"))
        shutil.copyfile(directory / "trainer_state.json", self._state_dir / "trainer_state.json")
        from transformers import TrainerState

        self.trainer.state = TrainerState.load_from_json(str(directory / "trainer_state.json"))
        if hasattr(self.trainer, "_step"):
            self.trainer._step = int(meta.get("trl_step", 0))
        self._sample_calls = int(meta.get("sample_calls", 0))

    def close(self) -> None:
        """Delete the follower's scratch directory."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            shutil.rmtree(self._tmp, ignore_errors=True)


class GRPOFollower(TRLFollower):
    """A follower trained with TRL's ``GRPOTrainer`` (``beta > 0``, ``scale_rewards="none"``).

    With ``config.kl_mode="reward"`` (default) TRL runs with ``beta=0`` and the follower adds
    the sequence-level penalty ``-beta * (log pi_theta(y|p) - log pi_ref(y|p))`` to the reward
    (a second reward function, logged as ``rewards/kl_penalty/*``; ``kl`` is logged as the mean
    per-token log-ratio, like RLOO). The maximiser of ``E[r'] = E[r] - beta KL(pi || pi_ref)``
    is exactly ``pi* ∝ pi_ref exp(r / beta)``. With ``kl_mode="loss"`` TRL's per-token KL loss
    term is used instead (TRL's ``beta = config.beta``)."""

    trainer_kind: ClassVar[str] = "grpo"

    def _kind_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"scale_rewards": self.config.scale_rewards}
        if self.config.loss_type is not None:
            args["loss_type"] = self.config.loss_type
        return args

    def _trl_args(self) -> dict[str, Any]:
        args = super()._trl_args()
        if self.config.kl_mode == "reward":
            args["beta"] = 0.0  # no KL in TRL's loss, no TRL reference model: _KLPenalty does it
            aggregation = args.get("multi_objective_aggregation", "sum_then_normalize")
            if aggregation != "sum_then_normalize":
                raise ValueError(
                    f"multi_objective_aggregation={aggregation!r} normalises the KL penalty "
                    "separately from the reward; kl_mode='reward' needs 'sum_then_normalize'"
                )
            if args.get("reward_weights") is not None:  # weight 1 for the KL penalty term
                args["reward_weights"] = [*map(float, args["reward_weights"]), 1.0]
        return args

    def _kl_reward_term(self) -> _KLPenalty | None:
        return _KLPenalty(self.beta) if self.config.kl_mode == "reward" else None

    def _trl_classes(self) -> tuple[type, type]:
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig


class RLOOFollower(TRLFollower):
    """A follower trained with TRL's ``RLOOTrainer`` (KL as a sequence-level reward penalty)."""

    trainer_kind: ClassVar[str] = "rloo"

    def _kind_args(self) -> dict[str, Any]:
        if self.config.kl_mode != "reward":
            raise ValueError(
                "RLOO always puts the KL into the reward (kl_mode='reward'); kl_mode='loss' is a "
                "GRPO setting"
            )
        if self.config.scale_rewards != "none":
            raise ValueError("scale_rewards is a GRPO setting; RLOO uses normalize_advantages")
        if self.config.loss_type is not None:
            raise ValueError("loss_type is a GRPO setting; leave it None for RLOO")
        return {}

    def _trl_classes(self) -> tuple[type, type]:
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig
