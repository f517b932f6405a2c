"""The global RNG state (Python, NumPy, torch CPU and CUDA) in memory and on disk, one format.

:func:`capture_rng_state` / :func:`restore_rng_state` work in memory (the TRL followers' training
loop captures the state where it pauses after a chunk and restores it when it continues); :func:`save_rng_state` / :func:`load_rng_state` write and read it as
``<name>.safetensors`` (the torch states and NumPy's key array) plus ``<name>.json`` (the
scalars and Python's state): no pickle. Used by :class:`~align_cbrl.checkpoint.CheckpointManager`
and by the followers' checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_cbrl.utils.io import atomic_write_json, load_safetensors, read_json, save_safetensors

__all__ = [
    "capture_rng_state",
    "load_rng_state",
    "restore_rng_state",
    "rng_state_from_files",
    "rng_state_to_files",
    "save_rng_state",
]


def capture_rng_state() -> dict[str, Any]:
    """The current Python, NumPy, torch CPU (and CUDA, when available) RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back a state from :func:`capture_rng_state` (CUDA only when available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch_cpu"])
    if state.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def rng_state_to_files(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """A captured state as (tensors for safetensors, a JSON-able document)."""
    algo, keys, pos, has_gauss, gauss = state["numpy"]
    tensors = {
        "torch_cpu": state["torch_cpu"].clone(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    for i, t in enumerate(state.get("torch_cuda", [])):
        tensors[f"torch_cuda_{i}"] = t.clone()
    py_version, py_state, py_gauss = state["python"]
    meta = {
        "numpy": {
            "algo": algo,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, meta


def rng_state_from_files(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict[str, Any]:
    """Inverse of :func:`rng_state_to_files`."""
    n, p = meta["numpy"], meta["python"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    state: dict[str, Any] = {
        "python": (p["version"], tuple(p["state"]), p["gauss"]),
        "numpy": (n["algo"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]),
        "torch_cpu": tensors["torch_cpu"],
    }
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda_")), key=lambda k: int(k[11:]))
    if cuda:
        state["torch_cuda"] = [tensors[k] for k in cuda]
    return state


def save_rng_state(directory: str | Path, state: Mapping[str, Any], name: str = "rng") -> None:
    """Write ``state`` as ``directory/<name>.safetensors`` + ``directory/<name>.json``."""
    tensors, meta = rng_state_to_files(state)
    save_safetensors(Path(directory) / f"{name}.safetensors", tensors)
    atomic_write_json(Path(directory) / f"{name}.json", meta)


def load_rng_state(directory: str | Path, name: str = "rng") -> dict[str, Any]:
    """Read what :func:`save_rng_state` wrote (the state, not yet restored)."""
    tensors = load_safetensors(Path(directory) / f"{name}.safetensors")
    return rng_state_from_files(tensors, read_json(Path(directory) / f"{name}.json"))
