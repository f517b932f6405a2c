"""Stopping an orchestrated run cleanly on SIGINT / SIGTERM (Ctrl-C, a scheduler's pre-emption).

While :class:`StopSignals` is active (the outer loop of
:meth:`~align_cbrl.trainer.HPGDTrainer.train`), the first SIGINT or SIGTERM only records the
request and prints one line. The trainer looks at it at the end of every outer iteration (all
ranks agree on it with one all-reduce, so they stop at the same iteration), writes a
checkpoint of that iteration, waits for every rank, and raises :class:`TrainingInterrupted`;
the command line and the recipes exit with status ``128 + signal`` (130 for SIGINT, 143 for
SIGTERM) and a line saying that ``--resume`` continues. The resumed run ends bit-identical to
an uninterrupted one (the checkpoint is an ordinary one).

A second signal exits at once (status ``128 + signal``) without writing anything: the
checkpoints on disk are complete (written atomically), a half-written one is never visible,
so ``--resume`` continues from the last complete one. A repeat of the first signal within
:data:`REPEAT_WINDOW_S` counts as the same request: under ``accelerate launch`` / ``torchrun``
a terminal's Ctrl-C reaches each worker twice (from the terminal and forwarded by the
launcher), and torchrun forwards a SIGTERM it receives.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["REPEAT_WINDOW_S", "StopSignals", "TrainingInterrupted"]

REPEAT_WINDOW_S = 1.0
"""Seconds after the first signal during which another one counts as the same request."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped at an outer-iteration boundary on a signal, after writing a checkpoint.

    A ``KeyboardInterrupt`` (so ``except Exception`` does not swallow it); ``exit_status`` is
    ``128 + signum``."""

    def __init__(self, signum: int, iteration: int, iterations: int, checkpoint: Path) -> None:
        self.signum = int(signum)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_status = 128 + self.signum
        super().__init__(
            f"interrupted by {signal.Signals(self.signum).name}: stopped after outer iteration "
            f"{iteration} of {iterations} and wrote checkpoint {checkpoint}; run the same "
            "command with --resume to continue"
        )


class StopSignals:
    """Context manager: SIGINT / SIGTERM request a stop (:attr:`signum`) instead of ending the
    process; a second one (after :data:`REPEAT_WINDOW_S`) ends it at once. Outside the main
    thread (where Python cannot install handlers) it does nothing. The previous handlers are
    restored on exit."""

    def __init__(self, repeat_window_s: float = REPEAT_WINDOW_S) -> None:
        self.repeat_window_s = repeat_window_s
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
            print(
                f"{name} received: stopping after the current outer iteration and writing a "
                f"checkpoint; send {name} again to stop at once",
                file=sys.stderr,
                flush=True,
            )
            return
        if time.monotonic() - self._first < self.repeat_window_s:
            return  # the same request, forwarded by a launcher
        print(
            f"second {name}: exiting now without a checkpoint; the last complete checkpoint "
            "is kept and --resume continues from it",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(128 + signum)
