"""TRL's ``train()`` kept running across chunks: a worker thread that pauses between them.

Contract of :class:`LiveTrainLoop` (design and measurements: ``docs/followers.md``):

* :meth:`~LiveTrainLoop.run_to` trains to a global step and returns once the loop has *logged*
  that step; the loop then waits, paused, before anything of the next step runs;
* exactly one thread runs at a time (a strict hand-off), so the caller owns the trainer while
  the loop is paused: it may sample, save, swap the reward function;
* the RNG state (Python, NumPy, torch) is captured at the pause and put back when the loop
  continues, so nothing the caller does in between changes the training stream;
* an exception raised inside the loop is raised again, the same object, by ``run_to``;
* the worker blocks SIGINT / SIGTERM, so signals reach the main thread; it is a daemon thread
  and :meth:`~LiveTrainLoop.stop` ends a paused loop at once: it never keeps a process alive.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from align_cbrl.utils.rng import capture_rng_state, restore_rng_state

__all__ = ["LiveTrainLoop"]

_POLL_S = 0.5  # the caller wakes this often while it waits, so its signal handlers run
_GO, _STOP = "go", "stop"


class _StopLoop(BaseException):
    """Raised inside TRL's loop to end it (a ``BaseException``: no ``except Exception`` in the
    libraries it unwinds through may swallow it)."""


class LiveTrainLoop:
    """One follower's TRL training loop, run once and paused after every chunk.

    ``callback()`` must be among the trainer's callbacks; ``run_to(target, prepare)`` continues
    the paused loop, or, when none is paused, calls ``prepare()`` in the caller's thread and
    runs the function it returns (which calls ``trainer.train(...)``) in a new worker thread.
    State: ``"idle"`` (no loop), ``"running"``, ``"paused"``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "idle"
        self.target: int | None = None
        self.logs: list[dict[str, Any]] = []
        self.rng_state: dict[str, Any] | None = None  # captured at the last pause
        self._to_worker: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._to_caller: queue.SimpleQueue[tuple[str, BaseException | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._due = False  # the target step is done; pause at its log
        self._stopping = False

    # ------------------------------------------------------------------ caller side
    def run_to(self, target: int, prepare: Callable[[], Callable[[], Any]]) -> None:
        """Train until global step ``target`` and return with the loop paused there (or ended:
        the caller checks the step). Re-raises the loop's exception, if any."""
        self.settle()
        self.target, self.logs, self._due = target, [], False
        if self.state == "paused":
            self.state = "running"
            self._to_worker.put(_GO)
        else:  # fresh queues: nothing of an earlier loop reaches this one
            self._to_worker, self._to_caller = queue.SimpleQueue(), queue.SimpleQueue()
            self._stopping = False
            self._thread = threading.Thread(
                target=self._work, args=(prepare(),), name=f"trl-loop-{self.name}", daemon=True
            )
            self.state = "running"
            self._thread.start()
        self._wait()

    def settle(self) -> None:
        """Wait for a chunk that is still running (its caller was interrupted, e.g. by Ctrl-C)."""
        if self.state == "running" and self._thread is not threading.current_thread():
            self._wait()

    def stop(self, timeout: float | None = None) -> None:
        """End the loop: a paused one at once; a running one at its next step boundary, waiting
        at most ``timeout`` seconds (``None``: until it has ended). Errors are dropped."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            self._stopping = True
            return
        self._stopping = True  # a running loop raises at its next callback
        self._to_worker.put(_STOP)  # a paused one (or one about to pause) ends at once
        if sys.is_finalizing():  # threads can no longer run; the daemon ends with the process
            return
        thread.join(timeout)
        if not thread.is_alive():
            self._thread, self.state = None, "idle"

    def _wait(self) -> None:
        while True:  # short timeouts: the main thread's signal handlers run while it waits
            try:
                kind, error = self._to_caller.get(timeout=_POLL_S)
                break
            except queue.Empty:
                continue
        if kind == "paused":
            self.state = "paused"
            return
        if self._thread is not None:
            self._thread.join()
        self._thread, self.state = None, "idle"
        if error is not None:
            raise error

    # ------------------------------------------------------------------ worker side
    def _work(self, start: Callable[[], Any]) -> None:
        if hasattr(signal, "pthread_sigmask"):  # signals go to the main thread
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        event: tuple[str, BaseException | None] = ("ended", None)
        try:
            start()
        except _StopLoop:
            pass
        except BaseException as err:  # handed to the caller, which raises it
            event = ("error", err)
        self._to_caller.put(event)

    def _check_stop(self) -> None:
        if self._stopping:
            raise _StopLoop

    def _pause(self) -> None:
        self._check_stop()
        self._due = False
        self.rng_state = capture_rng_state()
        self._to_caller.put(("paused", None))
        if self._to_worker.get() == _STOP:
            raise _StopLoop
        restore_rng_state(self.rng_state)

    def callback(self) -> Any:
        """The ``TrainerCallback`` that pauses the loop (built lazily: transformers is an
        optional import). It pauses in ``on_log`` of the target step (the followers log every
        step), or at the next ``on_step_begin`` should that step not be logged."""
        from transformers import TrainerCallback

        loop = self

        class PauseAtTarget(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                loop._check_stop()
                if loop._due:
                    loop._pause()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                loop._check_stop()
                if loop.target is not None and state.global_step >= loop.target:
                    loop._due = True

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
                if logs and "train_runtime" not in logs:
                    loop.logs.append(dict(logs, step=state.global_step))
                if loop._due:
                    loop._pause()

        return PauseAtTarget()
