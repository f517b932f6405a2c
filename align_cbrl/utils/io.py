"""Atomic, pickle-free file I/O.

Every artefact the library writes (configs, metrics, leader parameters, checkpoints) goes through
these helpers: data are written to a temporary file in the destination directory, flushed and
fsync'ed, then moved into place with :func:`os.replace`, so a crash or a kill never leaves a
half-written file and never destroys the previous version. Tensors are stored as safetensors
(no pickle); structured state as JSON.

Permissions are those of an ordinary ``open`` / ``mkdir``: ``0666`` / ``0777`` less the process
umask (``0644`` / ``0755`` under the usual ``022``), so teammates can read a run on a shared
machine. (``tempfile`` creates its files ``0600`` and directories ``0700`` whatever the umask;
the helpers widen them before the move.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "load_safetensors",
    "read_json",
    "remove_directory",
    "replace_directory",
    "save_safetensors",
]


def current_umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + ``os.replace``),
    with the mode an ordinary ``open`` would give (``0666`` less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0600
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def replace_directory(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Move the fully written directory ``tmp`` to ``final``, replacing any existing ``final``.

    The previous version is first renamed aside and deleted only once the new one is in place,
    so at every moment ``final`` is either the complete old or the complete new directory
    (``tmp`` and ``final`` must be on the same file system, e.g. siblings).
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory atomically: yields an empty hidden sibling of ``final``
    (``.<name>.<random>.tmp``, mode ``0777`` less the umask) to write into; when the block ends
    normally it replaces ``final`` (:func:`replace_directory`), on an error (or a kill) it is
    deleted and ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it 0700
    try:
        yield tmp
        replace_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful replace


def remove_directory(path: str | os.PathLike[str]) -> bool:
    """Remove directory ``path`` as one unit: it is first renamed to a hidden sibling
    (``.<name>.removed-<pid>``; one ``os.rename``, so ``path`` is at every moment either the
    complete old directory or absent), then the sibling is deleted. Returns whether anything was
    removed. A deletion that fails half-way leaves only the hidden sibling, never a mix of old
    files under ``path``."""
    path = Path(path)
    if not path.exists():
        return False
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.removed-{os.getpid()}.", dir=path.parent))
    target = aside / path.name
    os.replace(path, target)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _sanitize(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitize(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Serialise ``obj`` as strict JSON (NaN/inf become ``null``) and write it atomically."""
    obj = json.loads(json.dumps(obj, default=_json_default))
    text = json.dumps(_sanitize(obj), indent=indent, sort_keys=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with an error that names the file when it is malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it or delete it") from exc


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save a flat name->tensor mapping as safetensors, atomically.

    NumPy arrays are converted to torch tensors; tensors are made contiguous and moved to CPU.
    ``metadata`` values must be strings (a safetensors constraint).
    """
    from safetensors.torch import save

    prepared: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        t = (
            torch.from_numpy(np.ascontiguousarray(value))
            if isinstance(value, np.ndarray)
            else value
        )
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"tensor {name!r} has type {type(value).__name__}; expected a tensor/array"
            )
        prepared[name] = t.detach().to("cpu").contiguous()
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    return atomic_write_bytes(path, save(prepared, metadata=meta))


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file into a dict of CPU tensors (no pickle involved)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    return load_file(str(path))
