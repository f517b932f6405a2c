"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, atomic directories.

A checkpoint is a directory ``<output_dir>/checkpoints/iter_<NNNNNN>/`` holding

* ``leader.safetensors``            -- the leader's ``state_dict``;
* ``leader_optimizer.safetensors`` + ``leader_optimizer.json`` -- optimiser tensors / scalars;
* ``rng.safetensors`` + ``rng.json`` -- torch, numpy and Python RNG states
  (:mod:`align_cbrl.utils.rng`);
* ``state.json``                    -- iteration, config, metrics, anything JSON-serialisable;
* any sub-directories written by ``extra_writers`` (e.g. followers via ``save_pretrained``).

The directory is assembled under a temporary name and moved into place with ``os.replace``, so a
kill at any moment leaves either the complete checkpoint or none, and never touches older ones.
A write that fails (disk full, permissions: any ``OSError``) removes its partial directory and
raises :class:`CheckpointWriteError`, one line naming the checkpoint, the cause and the
previous checkpoint (intact: older ones are pruned only after a new one is complete), from
which ``--resume`` continues. Partial directories left by a killed writer
(``.iter_<N>.<random>.tmp``) are removed by the next save.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from align_cbrl.utils.io import (
    atomic_directory,
    atomic_write_json,
    load_safetensors,
    read_json,
    save_safetensors,
)
from align_cbrl.utils.rng import (
    capture_rng_state,
    load_rng_state,
    restore_rng_state,
    save_rng_state,
)

__all__ = [
    "CheckpointManager",
    "CheckpointWriteError",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
]

_ITER_RE = re.compile(r"^iter_(\d{6,})$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


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
        """Write checkpoint ``iteration`` atomically and prune old ones; return its path.
        Raises :class:`CheckpointWriteError` when the file system refuses (module docstring)."""
        final = self.path_for(iteration)
        previous = self.latest()
        for stale in self.root.glob(".iter_*.tmp") if self.root.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)  # left by a writer that was killed
        try:
            with atomic_directory(final) as tmp:
                save_safetensors(tmp / "leader.safetensors", leader.state_dict())
                if optimizer is not None:
                    tensors, skeleton = optimizer_state_to_files(optimizer.state_dict())
                    save_safetensors(tmp / "leader_optimizer.safetensors", tensors)
                    atomic_write_json(tmp / "leader_optimizer.json", skeleton)
                save_rng_state(tmp, capture_rng_state())
                for name, writer in (extra_writers or {}).items():
                    writer(tmp / name)
                atomic_write_json(tmp / "state.json", {"iteration": iteration, **dict(state or {})})
        except OSError as err:
            kept = (
                f"the previous checkpoint {previous} is intact"
                if previous
                else "there is no earlier one"
            )
            raise CheckpointWriteError(
                f"could not write checkpoint {final} ({err.strerror or err}); {kept}; free space "
                "or fix the directory, then rerun with --resume"
            ) from err
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
            restore_rng_state(load_rng_state(path))
        return read_json(path / "state.json")
