"""Followers trained with TRL's ``GRPOTrainer`` / ``RLOOTrainer``, continued K steps at a time.

How "continue K steps" works (the basis of checkpoint/resume; ``docs/followers.md``):

* One TRL trainer is built per follower, and its ``train()`` loop runs once, in a worker thread
  (:class:`~align_cbrl.followers.trl_loop.LiveTrainLoop`): each :meth:`TRLFollower.train`
  call lets it run K more optimiser steps and returns once it has paused after them. Weights,
  optimiser, scheduler, dataloader and TRL's generation counter simply stay alive; the RNG
  state is captured at the pause and restored when the loop continues.
* The prompt order is a pure function of ``(seed, epoch)`` (the epoch is set by the trainer),
  so a loop resumed from a checkpoint, which skips the batches already seen in the epoch, lands
  on the same batch as an uninterrupted run.
* :meth:`save` writes the paused state to disk (:mod:`align_cbrl.followers.trl_checkpoint`);
  :meth:`load` puts it back in memory and the next :meth:`train` starts the loop once with
  ``resume_from_checkpoint``, served from memory
  (:class:`~align_cbrl.followers.trl_compat.ChunkedTrainer`).

The result: ``train(k); train(k)`` equals ``train(2 * k)`` bit-for-bit on CPU (tested), and
``save -> new process -> load -> train`` equals not stopping.

Where the KL enters (``TRLFollowerConfig.kl_mode``, ``docs/theory.md §3``):

* ``"reward"`` (default; the only mode of RLOO): a sequence-level reward penalty
  ``r' = r - beta * log(pi_theta(y|p) / pi_ref(y|p))`` with the exact fixed point ``pi*``. RLOO
  does this natively; for GRPO, TRL's ``beta`` is 0 and the follower adds the penalty as a
  second reward function (:class:`~align_cbrl.followers.kl_penalty.KLPenalty`).
* ``"loss"`` (GRPO only): TRL's own per-token KL estimate in the loss. It ignores the KL of
  *later* tokens, and GRPO's group-mean baseline shrinks the reward part of the gradient by
  ``(G - 1) / G`` but not the KL part, so the fixed point is biased away from ``pi*``.
  ``docs/followers.md`` reports measured distances.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from align_cbrl.followers.base import (
    Follower,
    RewardFn,
    call_reward_function,
    reward_function_name,
)
from align_cbrl.followers.kl_penalty import KLPenalty
from align_cbrl.followers.trl_checkpoint import load_trl_follower, save_trl_follower
from align_cbrl.followers.trl_compat import (
    build_reference_model,
    check_trl_version,
    make_trainer_class,
)
from align_cbrl.followers.trl_config import TRLFollowerConfig, trl_config
from align_cbrl.followers.trl_loop import LiveTrainLoop

__all__ = ["GRPOFollower", "RLOOFollower", "TRLFollower", "TRLFollowerConfig"]

_STOP_TIMEOUT_S = 10.0  # close() waits this long for a loop that is mid-step (daemon thread)


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


def _train_in_this_thread(trainer: Any, resume: str | None) -> None:
    """The worker thread's body: TRL's ``train()`` (on the trainer's CUDA device: the current
    device is per thread)."""
    device = trainer.accelerator.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    trainer.train(resume_from_checkpoint=resume)


def _check_model_dir(model: Any) -> Path:
    if not isinstance(model, str | os.PathLike):
        raise TypeError(
            "model must be the path of a directory saved with save_pretrained (TRL loads the "
            f"reference model from it), got {type(model).__name__}"
        )
    from align_cbrl.models.tiny import require_model_dir

    return require_model_dir(model)


def _check_dataset(ds: Any, prompts_per_step: int) -> None:
    try:
        from datasets import Dataset
    except ImportError as err:  # pragma: no cover
        raise ImportError("TRL followers need `datasets`: pip install 'align-cbrl[trl]'") from err
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
    if len(ds) < prompts_per_step:
        raise ValueError(
            f"train_dataset has {len(ds)} prompts but prompts_per_step={prompts_per_step}; "
            "lower prompts_per_step or add prompts"
        )
    empty = [i for i, p in enumerate(ds["prompt"]) if not isinstance(p, str) or not p]
    if empty:
        raise ValueError(f"train_dataset prompts at rows {empty[:10]} are empty or not strings")


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
        check_trl_version()
        config = config if config is not None else TRLFollowerConfig()
        if not isinstance(config, TRLFollowerConfig):
            raise TypeError(f"config must be a TRLFollowerConfig, got {type(config).__name__}")
        super().__init__(name or self.trainer_kind, config.beta)
        self.config = config
        self.model_path = _check_model_dir(model)
        _check_dataset(train_dataset, config.prompts_per_step)
        self._reward = _RewardSlot()
        if reward_fn is not None:
            self._reward.set(reward_fn)
        self._loop = LiveTrainLoop(self.name)
        self._sample_calls = 0
        self._tmp = Path(tempfile.mkdtemp(prefix=f"align_cbrl_{self.trainer_kind}_"))
        self._state_dir = self._tmp / "resume"
        self._state_dir.mkdir()
        self.trainer = self._build_trainer(train_dataset, callbacks or [])
        self.tokenizer = self.trainer.processing_class

    # ------------------------------------------------------------------ construction
    def trl_args(self) -> Any:
        """This follower's ``GRPOConfig`` / ``RLOOConfig``
        (:func:`~align_cbrl.followers.trl_config.trl_config`): chunked training logs every
        step (the loop pauses at the log of a chunk's last step) and saves nothing inside TRL; full precision and no dataloader workers unless
        ``config.trl`` says otherwise."""
        return trl_config(
            self.trainer_kind,
            self.config,
            defaults={
                "output_dir": str(self._tmp / "trl"),
                "bf16": False,
                "fp16": False,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
            },
            fixed={
                "report_to": "none",
                "save_strategy": "no",
                "logging_strategy": "steps",
                "logging_steps": 1,
                "data_seed": self.config.seed,
            },
        )

    def _trl_trainer_class(self) -> type:
        raise NotImplementedError

    def _kl_reward_term(self) -> KLPenalty | None:
        """The extra reward function carrying the KL penalty, if this follower adds one."""
        return None

    def _build_trainer(self, train_dataset: Any, callbacks: list[Any]) -> Any:
        from transformers import AutoTokenizer, PrinterCallback, ProgressCallback

        args = self.trl_args()
        tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, padding_side="left", trust_remote_code=args.trust_remote_code
        )
        kl_term = self._kl_reward_term()
        peft_kwargs: dict[str, Any] = {}
        if self.config.lora is not None:
            from align_cbrl.models.real import lora_config

            peft_kwargs["peft_config"] = lora_config(self.config.lora)
        trainer = make_trainer_class(self._trl_trainer_class())(
            model=str(self.model_path),
            reward_funcs=[self._reward] if kl_term is None else [self._reward, kl_term],
            args=args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            callbacks=[self._loop.callback(), *callbacks],
            **peft_kwargs,
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        if kl_term is not None:
            kl_term.trainer = trainer
            kl_term.ref_model = build_reference_model(trainer, str(self.model_path))
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

    def _check_chunk(self, steps: int) -> None:
        cycle = self._steps_per_generation_cycle
        if steps % cycle or self.global_step % cycle:
            raise ValueError(
                f"steps={steps} must be a multiple of {cycle} (steps_per_generation x "
                "num_iterations / gradient_accumulation_steps) so chunks start on a fresh "
                "generation batch"
            )
        if self.global_step + steps > self.trainer.args.max_steps:
            raise ValueError(
                f"training to step {self.global_step + steps} exceeds max_steps="
                f"{self.trainer.args.max_steps}; raise trl.max_steps"
            )

    def train(self, steps: int) -> dict[str, Any]:
        """Run ``steps`` more optimiser steps of the TRL trainer, warm-started.

        Returns ``{"global_step", "steps", "seconds", "seconds_per_step", "logs"}`` plus the
        mean over the chunk of every numeric metric TRL logged (``reward``, ``kl``, ...)."""
        steps = self._check_steps(steps)
        if self._reward.fn is None:
            raise RuntimeError(
                "the follower has no reward function: call set_reward_function(fn) first"
            )
        self._loop.settle()
        if steps == 0:
            return {"global_step": self.global_step, "steps": 0, "logs": []}
        self._check_chunk(steps)
        start = self.global_step
        t0 = time.perf_counter()
        self._loop.run_to(start + steps, self._loop_start)
        seconds = time.perf_counter() - t0
        if self.global_step != start + steps:
            raise RuntimeError(
                f"TRL stopped at step {self.global_step} instead of {start + steps}; the dataset "
                "may be too small for the requested steps"
            )
        return self._summarise(steps, seconds)

    def _loop_start(self) -> Any:
        """The function a new training loop runs in its worker thread (it holds the trainer,
        not the follower): TRL's ``train()`` from the configured seed at step 0, else resumed
        from the in-memory state (after :meth:`load`, or after a loop that ended early)."""
        trainer = self.trainer
        if self.global_step == 0 and self._loop.rng_state is None:
            # the first chunk: start from the configured seed, whatever ran since construction
            from transformers import set_seed

            set_seed(self.config.seed)
            return functools.partial(_train_in_this_thread, trainer, None)
        trainer.state.save_to_json(str(self._state_dir / "trainer_state.json"))
        trainer._acbrl_rng = self._loop.rng_state
        if trainer._acbrl_sched_state is None and trainer.lr_scheduler is not None:
            trainer._acbrl_sched_state = copy.deepcopy(trainer.lr_scheduler.state_dict())
        return functools.partial(_train_in_this_thread, trainer, str(self._state_dir))

    def _summarise(self, steps: int, seconds: float) -> dict[str, Any]:
        logs = self._loop.logs
        out: dict[str, Any] = {
            "global_step": self.global_step,
            "steps": steps,
            "seconds": seconds,
            "seconds_per_step": seconds / steps,
            "logs": logs,
        }
        keys = {k for log in logs for k, v in log.items() if isinstance(v, int | float)}
        for k in sorted(keys - {"step", "epoch"}):
            vals = [float(log[k]) for log in logs if isinstance(log.get(k), int | float)]
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

    def sampling_state(self) -> int:
        """The sampling call counter: it alone seeds :meth:`sample`'s private RNG stream."""
        return self._sample_calls

    def set_sampling_state(self, state: Any) -> None:
        self._sample_calls = int(state)

    def _generate(self, rows: list[list[int]], gen_cfg: Any) -> torch.Tensor:
        """Left-padded ``generate`` on a private RNG stream; returns the new tokens."""
        width = max(len(r) for r in rows)
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        device = next(model.parameters()).device
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
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
        return out[:, width:].cpu()

    @torch.no_grad()
    def sample_with_ids(
        self, prompts: list[str], n: int, **gen: Any
    ) -> tuple[list[list[str]], list[list[list[int]]]]:
        """Like :meth:`sample`, also returning the generated token ids (EOS included)."""
        self._loop.settle()
        prompts = self._check_sample_args(prompts, n)
        if not prompts:
            return [], []
        gen_cfg = copy.deepcopy(self.trainer.generation_config)
        unknown = gen_cfg.update(**gen)
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}")
        prompt_ids = self.tokenizer(text=prompts)["input_ids"]
        for p, ids in zip(prompts, prompt_ids, strict=True):
            if not ids:
                raise ValueError(f"prompt {p!r} tokenizes to zero tokens; use a non-empty prompt")
        completions = self._generate([ids for ids in prompt_ids for _ in range(n)], gen_cfg)
        eos_ids = set(self.trainer.eos_token_ids)
        ids_list: list[list[int]] = []
        for row in completions.tolist():
            cut = next((k for k, t in enumerate(row) if t in eos_ids), None)
            ids_list.append(row if cut is None else row[: cut + 1])
        texts = self.tokenizer.batch_decode(ids_list, skip_special_tokens=True)
        grouped = [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
        grouped_ids = [ids_list[i * n : (i + 1) * n] for i in range(len(prompts))]
        return grouped, grouped_ids

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write model (``save_pretrained``), tokenizer, optimizer/scheduler state, RNG state,
        TRL ``TrainerState`` and follower metadata into ``directory``, atomically
        (:mod:`align_cbrl.followers.trl_checkpoint`)."""
        self._loop.settle()
        meta = {
            "kind": self.trainer_kind,
            "name": self.name,
            "beta": self.beta,
            "global_step": self.global_step,
            "sample_calls": self._sample_calls,
            "base_model": str(self.model_path),
            "reward_function": self._reward.__name__,
            "config": dataclasses.asdict(self.config),
        }
        rng = self._loop.rng_state  # taken where the loop paused
        save_trl_follower(Path(directory), self.trainer, self.tokenizer, rng, meta)

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore a :meth:`save` directory into this follower (built with the same model path,
        dataset and config); the next :meth:`train` continues exactly where the saved one
        stopped. The reward function is not saved: set it again."""
        self._loop.stop()  # the next train() starts the loop again, from the loaded state
        rng_state, self._sample_calls = load_trl_follower(
            Path(directory),
            self.trainer,
            kind=self.trainer_kind,
            beta=self.beta,
            config=self.config,
            model_path=self.model_path,
            resume_dir=self._state_dir,
        )
        self._loop.rng_state = rng_state

    def close(self) -> None:
        """End the training loop and delete the follower's scratch directory."""
        self._loop.stop(timeout=_STOP_TIMEOUT_S)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class GRPOFollower(TRLFollower):
    """A follower trained with TRL's ``GRPOTrainer`` (``beta > 0``, ``scale_rewards="none"``).

    With ``config.kl_mode="reward"`` (default) TRL runs with ``beta=0`` and the follower adds
    the sequence-level penalty ``-beta * (log pi_theta(y|p) - log pi_ref(y|p))`` to the reward
    (a second reward function, logged as ``rewards/kl_penalty/*``; ``kl`` is logged as the mean
    per-token log-ratio, like RLOO). The maximiser of ``E[r'] = E[r] - beta KL(pi || pi_ref)``
    is exactly ``pi* ∝ pi_ref exp(r / beta)``. With ``kl_mode="loss"`` TRL's per-token KL loss
    term is used instead (TRL's ``beta = config.beta``)."""

    trainer_kind: ClassVar[str] = "grpo"

    def _kl_reward_term(self) -> KLPenalty | None:
        return KLPenalty(self.beta) if self.config.kl_mode == "reward" else None

    def _trl_trainer_class(self) -> type:
        from trl import GRPOTrainer

        return GRPOTrainer


class RLOOFollower(TRLFollower):
    """A follower trained with TRL's ``RLOOTrainer`` (KL as a sequence-level reward penalty)."""

    trainer_kind: ClassVar[str] = "rloo"

    def _trl_trainer_class(self) -> type:
        from trl import RLOOTrainer

        return RLOOTrainer
