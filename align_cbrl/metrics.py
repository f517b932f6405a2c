"""Metrics for long runs: JSONL (always), TensorBoard (when installed), resumable.

``metrics.jsonl`` gets one JSON object per logged step. On resume from iteration ``k`` the file is
rewritten to keep only records with ``step <= k`` (atomically), so an interrupted-and-resumed run
produces the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from align_cbrl.utils.io import atomic_write_text

__all__ = ["TENSORBOARD_MISSING", "MetricsLogger", "read_jsonl", "tensorboard_available"]

TENSORBOARD_MISSING = (
    "tensorboard: true, but the tensorboard package is not installed; pip install tensorboard "
    "(it is in align-cbrl's default install) or set tensorboard: false / auto"
)
_TB_NOTICE_SHOWN = False


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (it needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _notice_tensorboard_off(path: Path) -> None:
    global _TB_NOTICE_SHOWN
    if not _TB_NOTICE_SHOWN:
        _TB_NOTICE_SHOWN = True
        print(
            "tensorboard: off (the tensorboard package is not installed; pip install tensorboard); "
            f"no tensorboard/ directory is written, metrics go to {path.name}",
            file=sys.stderr,
        )


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i} is not valid JSON ({exc})") from exc
    return records


def _clean(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append-only JSONL metrics with optional TensorBoard mirroring (main process only)."""

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        tensorboard: bool | str = "auto",
        enabled: bool = True,
        filename: str = "metrics.jsonl",
        purge_step: int | None = None,
    ) -> None:
        """``tensorboard``: ``True`` (an error when the package is missing), ``False`` or
        ``"auto"`` (on when installed; otherwise a one-line notice, once per process, says that
        no ``tensorboard/`` is written and why). ``purge_step``: on resume, the first step that
        will be logged again; TensorBoard hides the earlier run's events from that step on
        (``SummaryWriter(purge_step=...)``), so no step appears twice."""
        self.enabled = enabled
        self.path = Path(output_dir) / filename
        self._tb = None
        if not enabled:
            return
        if tensorboard is True and not tensorboard_available():
            raise ValueError(TENSORBOARD_MISSING)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(Path(output_dir) / "tensorboard"), purge_step=purge_step
            )
        elif tensorboard == "auto":
            _notice_tensorboard_off(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (used when resuming from a checkpoint at ``step``)."""
        if not self.enabled:
            return
        kept = [r for r in read_jsonl(self.path) if r.get("step", -1) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
