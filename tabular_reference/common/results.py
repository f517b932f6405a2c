"""A results directory: config, metrics (CSV/JSON), arrays (safetensors) and plots, written atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_cbrl.utils.io import atomic_write_json, atomic_write_text, save_safetensors


class ResultsDir:
    """Everything one experiment run writes, under one directory.

    Files are never half-written: each write goes through a temporary file and ``os.replace``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: Mapping[str, Any]) -> Path:
        return atomic_write_json(self.file("config.json"), dict(config))

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.file(name), obj)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.file(name), text)

    def write_csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(list(header))
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"{name}: row has {len(row)} fields, header has {len(header)}")
            writer.writerow(list(row))
        return atomic_write_text(self.file(name), buf.getvalue())

    def save_arrays(
        self,
        name: str,
        arrays: Mapping[str, np.ndarray | torch.Tensor],
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        if not name.endswith(".safetensors"):
            name = f"{name}.safetensors"
        return save_safetensors(self.file(name), arrays, metadata)
