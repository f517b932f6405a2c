"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, atomic directories.

A checkpoint is a directory ``<output_dir>/checkpoints/iter_<NNNNNN>/`` holding

* ``leader.safetensors``            -- the leader's ``state_dict``;
* ``leader_optimizer.safetensors`` + ``leader_optimizer.json`` -- optimiser tensors / scalars;
* ``rng.safetensors`` + ``rng.json`` -- torch, numpy and Python RNG states;
* ``state.json``                    -- iteration, config, metrics, anything JSON-serialisable;
* any sub-directories written by ``extra_writers`` (e.g. followers via ``save_pretrained``).

The directory is assembled under a temporary name and moved into place with ``os.replace``, so a
kill at any moment leaves either the complete checkpoint or none, and never touches older ones.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_cbrl.utils.io import (
    atomic_write_json,
    load_safetensors,
    read_json,
    replace_directory,
    save_safetensors,
)

__all__ = [
    "CheckpointManager",
    "capture_rng_state",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "restore_rng_state",
]

_ITER_RE = re.compile(r"^iter_(\d{6,})$")


# --------------------------------------------------------------------------- optimiser state
def optimizer_state_to_files(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton_state: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        entry: dict[str, Any] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                name = f"state.{pid}.{key}"
                tensors[name] = value
                entry[key] = {"__tensor__": name}
            else:
                entry[key] = value
        skeleton_state[str(pid)] = entry
    return tensors, {"state": skeleton_state, "param_groups": list(state["param_groups"])}


def optimizer_state_from_files(tensors: Mapping[str, torch.Tensor], skeleton: Mapping) -> dict:
    """Inverse of :func:`optimizer_state_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in skeleton["state"].items():
        restored = {}
        for key, value in entry.items():
            if isinstance(value, dict) and "__tensor__" in value:
                restored[key] = tensors[value["__tensor__"]]
            else:
                restored[key] = value
        state[int(pid)] = restored
    return {"state": state, "param_groups": [dict(g) for g in skeleton["param_groups"]]}


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors + JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {
            "algo": np_state[0],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state(
        (
            n["algo"],
            tensors["numpy_keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# --------------------------------------------------------------------------- manager
class CheckpointManager:
    """Writes and finds checkpoints under ``<output_dir>/checkpoints``; keeps the last ``keep``."""

    def __init__(self, output_dir: str | os.PathLike[str], keep: int | None = 3) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep

    def path_for(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:06d}"

    def list(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _ITER_RE.match(p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        items = self.list()
        return items[-1][1] if items else None

    def save(
        self,
        iteration: int,
        *,
        leader: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        state: Mapping[str, Any] | None = None,
        extra_writers: Mapping[str, Callable[[Path], None]] | None = None,
    ) -> Path:
        """Write checkpoint ``iteration`` atomically and prune old ones; return its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(iteration)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            save_safetensors(tmp / "leader.safetensors", leader.state_dict())
            if optimizer is not None:
                tensors, skeleton = optimizer_state_to_files(optimizer.state_dict())
                save_safetensors(tmp / "leader_optimizer.safetensors", tensors)
                atomic_write_json(tmp / "leader_optimizer.json", skeleton)
            rng_tensors, rng_meta = capture_rng_state()
            save_safetensors(tmp / "rng.safetensors", rng_tensors)
            atomic_write_json(tmp / "rng.json", rng_meta)
            for name, writer in (extra_writers or {}).items():
                writer(tmp / name)
            atomic_write_json(tmp / "state.json", {"iteration": iteration, **dict(state or {})})
            replace_directory(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def _prune(self) -> None:
        if self.keep is None:
            return
        items = self.list()
        for _, path in items[: max(0, len(items) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        leader: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore leader (and optimiser, RNG) in place; return ``state.json``'s contents."""
        path = Path(path)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no state.json); pick one listed under "
                f"{self.root}"
            )
        leader.load_state_dict(load_safetensors(path / "leader.safetensors"))
        if optimizer is not None and (path / "leader_optimizer.json").is_file():
            optimizer.load_state_dict(
                optimizer_state_from_files(
                    load_safetensors(path / "leader_optimizer.safetensors"),
                    read_json(path / "leader_optimizer.json"),
                )
            )
        if restore_rng:
            restore_rng_state(
                load_safetensors(path / "rng.safetensors"), read_json(path / "rng.json")
            )
        return read_json(path / "state.json")
