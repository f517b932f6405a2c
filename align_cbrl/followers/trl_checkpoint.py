"""A TRL follower's checkpoint directory (:meth:`TRLFollower.save` / :meth:`TRLFollower.load`).

Layout (written atomically: assembled in a hidden sibling, then swapped in,
:func:`~align_cbrl.utils.io.atomic_directory`):

* ``model/`` -- ``save_pretrained`` weights (``adapter_model.safetensors`` with LoRA) and the
  tokenizer;
* ``optimizer.pt``, ``scheduler.pt`` -- their ``state_dict`` (loaded with ``weights_only``);
* ``rng.safetensors`` + ``rng.json`` -- the RNG state at the step where training stopped
  (:mod:`align_cbrl.utils.rng`, the format of the run checkpoints);
* ``trainer_state.json`` -- TRL's ``TrainerState``;
* ``follower.json`` -- kind, name, beta, steps, sample-call counter, base model, config.

Checkpoints of earlier versions (flat config keys, ``rng_state.*`` RNG files) still load.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_cbrl.followers.trl_compat import set_trl_step, tied_weight_keys, trl_step
from align_cbrl.followers.trl_config import comparable_settings
from align_cbrl.utils.io import atomic_directory, atomic_write_json, load_safetensors, read_json
from align_cbrl.utils.rng import load_rng_state, save_rng_state

__all__ = ["FOLLOWER_JSON", "load_trl_follower", "save_trl_follower"]

_STATE_FORMAT = 1
FOLLOWER_JSON = "follower.json"


def save_trl_follower(
    directory: Path,
    trainer: Any,
    tokenizer: Any,
    rng_state: dict[str, Any] | None,
    meta: dict[str, Any],
) -> None:
    """Write the TRL ``trainer``'s model, optimiser, scheduler and state, the ``tokenizer``,
    ``rng_state`` and the follower's ``meta`` (kind, name, beta, global_step, sample_calls,
    base_model, reward_function, config) into ``directory``."""
    with atomic_directory(directory) as tmp:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        if trainer.optimizer is not None:
            torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        if trainer.lr_scheduler is not None:
            torch.save(trainer.lr_scheduler.state_dict(), tmp / "scheduler.pt")
        if rng_state is not None:
            save_rng_state(tmp, rng_state)
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        doc = {"format": _STATE_FORMAT, **meta, "trl_step": trl_step(trainer)}
        atomic_write_json(tmp / FOLLOWER_JSON, doc)


def _check_meta(directory: Path, kind: str, beta: float, config: Any) -> dict[str, Any]:
    """``follower.json``, checked against the follower it is loaded into."""
    meta_path = directory / FOLLOWER_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a follower checkpoint ({FOLLOWER_JSON} missing)"
        )
    meta = read_json(meta_path)
    if meta.get("format") != _STATE_FORMAT:
        raise ValueError(f"{meta_path}: unsupported checkpoint format {meta.get('format')!r}")
    if meta.get("kind") != kind:
        raise ValueError(f"{directory} holds a {meta.get('kind')!r} follower; this is {kind!r}")
    if float(meta.get("beta", -1)) != beta:
        raise ValueError(
            f"{directory} was saved with beta={meta.get('beta')} but this follower has "
            f"beta={beta}; build it with the saved config"
        )
    saved = dict(meta.get("config", {}))
    # checkpoints written before kl_mode existed: GRPO trained with TRL's KL loss term
    saved.setdefault("kl_mode", "loss" if kind == "grpo" else "reward")
    mine = comparable_settings(kind, dataclasses.asdict(config))
    theirs = comparable_settings(kind, saved)
    diffs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diffs:
        raise ValueError(
            f"{directory} was saved with a different config ({diffs}); build the follower "
            "with the saved config to continue identically"
        )
    return meta


def _load_weights(trainer: Any, directory: Path, lora: bool, model_path: Path) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    weights_file = directory / "model" / name
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} is missing; the checkpoint is incomplete")
    state = load_safetensors(weights_file)
    if lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        unexpected = list(result.unexpected_keys)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = tied_weight_keys(model)
        missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match the model at {model_path}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )


def _legacy_rng_state(directory: Path) -> dict[str, Any]:
    """The RNG files of checkpoints written before :mod:`align_cbrl.utils.rng` existed."""
    tensors = load_safetensors(directory / "rng_state.safetensors")
    meta = read_json(directory / "rng_state.json")
    (py_version, py_state, py_gauss), (algo, pos, has_gauss, gauss) = meta["python"], meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    state: dict[str, Any] = {
        "python": (py_version, tuple(py_state), py_gauss),
        "numpy": (algo, keys, pos, has_gauss, gauss),
        "torch_cpu": tensors["cpu"],
    }
    if meta.get("num_cuda"):
        state["torch_cuda"] = [tensors[f"cuda_{i}"] for i in range(meta["num_cuda"])]
    return state


def load_trl_follower(
    directory: Path,
    trainer: Any,
    *,
    kind: str,
    beta: float,
    config: Any,
    model_path: Path,
    resume_dir: Path,
) -> tuple[dict[str, Any] | None, int]:
    """Put a :func:`save_trl_follower` directory back into ``trainer`` (built from the same
    model path, dataset and ``config``; ``resume_dir`` receives ``trainer_state.json``).
    Returns the saved RNG state (``None`` if there is none) and the sample-call counter."""
    from transformers import TrainerState

    meta = _check_meta(directory, kind, beta, config)
    _load_weights(trainer, directory, config.lora is not None, model_path)
    if (directory / "optimizer.pt").is_file():
        if trainer.optimizer is None:
            trainer.create_optimizer()
        state = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        trainer.optimizer.load_state_dict(state)
    if (directory / "scheduler.pt").is_file():
        trainer._acbrl_sched_state = torch.load(
            directory / "scheduler.pt", map_location="cpu", weights_only=True
        )
    rng_state = None
    if (directory / "rng.safetensors").is_file():
        rng_state = load_rng_state(directory)
    elif (directory / "rng_state.safetensors").is_file():
        rng_state = _legacy_rng_state(directory)
    shutil.copyfile(directory / "trainer_state.json", resume_dir / "trainer_state.json")
    trainer.state = TrainerState.load_from_json(str(directory / "trainer_state.json"))
    set_trl_step(trainer, int(meta.get("trl_step", 0)))
    return rng_state, int(meta.get("sample_calls", 0))
