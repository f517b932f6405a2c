"""How a run ends: the one-line message and exit status of each failure users meet, the
context the outer loop adds to them, and leaving a multi-process run without the
interpreter's teardown (docs/reliability.md).

Exit statuses (the ``align-cbrl`` command and the recipes):

* 0: done;
* 1: the environment failed (:class:`~align_cbrl.distributed.PeerGoneError`: a peer process
  is gone; :class:`~align_cbrl.checkpoint.CheckpointWriteError`: a checkpoint could not be
  written), or an unexpected error (printed with its traceback);
* 2: bad input, fixed by the user: configuration, data, a reward function that raises
  (:class:`~align_cbrl.rewards.base.RewardComponentError`) or returns unusable values;
* ``128 + signal``: interrupted (130 SIGINT, 143 SIGTERM;
  :class:`~align_cbrl.trainer.interrupt.TrainingInterrupted`).

**Why a multi-process run leaves with ``os._exit`` from inside the frame that holds the
trainer** (:func:`finish_run`, :func:`report_failure`; the root cause of issue #25's hang, stacks
in docs/reliability.md): freeing the last reference to a gloo process group (a DDP
``c10d::Reducer`` holds one) runs ``~ProcessGroupGloo``, which joins gloo's worker thread
while the freeing thread holds the GIL; if that worker thread is still destroying the last
collective's work object, which owns a Python tensor, it waits for the GIL: a deadlock, after
every output was written. ``destroy_process_group()`` does not prevent it (the reducer still
holds the group), and ``os._exit`` after ``main`` returned comes too late (returning frees
``main``'s locals). So nothing that owns the group is ever freed: after a barrier every rank
waited on, the process ends with ``os._exit`` while those objects are still referenced (on an
error, the traceback keeps them referenced). No C++ destructor runs, so no thread is joined.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed as dist

from align_cbrl.checkpoint import CheckpointWriteError
from align_cbrl.config_parser import ConfigError
from align_cbrl.distributed import peer_gone
from align_cbrl.followers.base import RewardFunctionError
from align_cbrl.rewards.base import ComponentOutputError, RewardComponentError, add_context
from align_cbrl.trainer.interrupt import TrainingInterrupted

__all__ = [
    "failure_status",
    "fault_context",
    "finish_run",
    "leave",
    "multi_process",
    "report_failure",
    "run_and_leave",
]

USAGE_ERRORS = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    RewardFunctionError,
    RewardComponentError,
)
"""Bad input: one ``error: ...`` line, exit status 2."""

_REWARD_ERRORS = (RewardComponentError, ComponentOutputError, RewardFunctionError)


def multi_process() -> bool:
    """Whether this process is one rank of an initialised process group of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def failure_status(err: BaseException, timeout_s: float | None = None) -> tuple[int, str] | None:
    """``(exit status, the line to print)`` of a known failure (module docstring); ``None``
    for anything else (shown with its traceback)."""
    if isinstance(err, TrainingInterrupted):
        return err.exit_status, str(err)
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted by SIGINT; --resume continues from the last complete checkpoint"
    gone = peer_gone(err, timeout_s)
    if gone is not None:
        return 1, f"error: {gone}"
    if isinstance(err, CheckpointWriteError):
        return 1, f"error: {err}"
    if isinstance(err, USAGE_ERRORS):
        return 2, f"error: {err}"
    return None


def leave(code: int) -> NoReturn:
    """Flush the standard streams and end the process now (``os._exit``: no interpreter
    teardown, no C++ destructors; module docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report_failure(err: BaseException, timeout_s: float | None = None) -> int | None:
    """Print the one-line message of a known failure and return its exit status (``None``:
    an unknown error in a single process, for the caller to re-raise). In a multi-process run
    this never returns: the line (prefixed with the rank) or the traceback is printed and the
    process leaves (:func:`leave`) while ``err``'s traceback still holds the frames that own
    the process group."""
    known = failure_status(err, timeout_s)
    multi = multi_process()
    if isinstance(err, SystemExit):  # --help, argparse: Python's own handling, or leave with it
        if multi:
            leave(_system_exit_status(err))
        return None
    if known is None:
        if not multi:
            return None
        traceback.print_exception(err)
        leave(1)
    code, line = known
    if multi:
        line = f"[rank {dist.get_rank()}] {line}"
    print(line, file=sys.stderr, flush=True)
    if multi:
        leave(code)
    return code


def _system_exit_status(err: SystemExit) -> int:
    """The status ``sys.exit(code)`` ends with (a message is printed to stderr, status 1)."""
    if err.code is None or isinstance(err.code, int):
        return int(err.code or 0)
    print(err.code, file=sys.stderr)
    return 1


def finish_run() -> None:
    """The end of a successful run. In a multi-process run: wait for every rank at a barrier,
    then leave with status 0 from inside the caller's frame (never returns; module
    docstring); a rank that fails there reports it (:func:`report_failure`). In a single
    process: return."""
    if not multi_process():
        return
    try:
        dist.barrier()
    except BaseException as err:
        report_failure(err)
    leave(0)


def run_and_leave(main: Callable[[list[str]], Any], argv: list[str]) -> NoReturn:
    """Script entry point (the recipes): run ``main(argv)`` and end the process with its exit
    status. ``main`` ends a multi-process run with :func:`finish_run`; a failure is reported by
    :func:`report_failure` (unknown ones with their traceback, status 1)."""
    try:
        main(argv)
    except BaseException as err:  # its traceback keeps main's frame (and the group) alive
        code = report_failure(err)
        if isinstance(err, SystemExit):
            code = _system_exit_status(err)
        elif code is None:
            traceback.print_exc()
            code = 1
        leave(code)
    leave(0)


def _resume_hint(last: Path | None) -> str:
    if last is None:
        return "no checkpoint yet (--resume starts again from iteration 0)"
    return f"last checkpoint {last}; fix the cause and rerun with --resume to continue from it"


@contextlib.contextmanager
def fault_context(
    last_checkpoint: Callable[[], Path | None], timeout_s: float, where: str | None = None
) -> Iterator[None]:
    """Around a stretch of training (an orchestrated outer iteration, a plugin run's
    ``trainer.train()``): a reward function's error gets ``where`` (e.g. ``in outer iteration
    3 of 5``) and the checkpoint ``--resume`` would continue from appended; a collective that
    failed because a peer is gone becomes :class:`~align_cbrl.distributed.PeerGoneError`
    (stating ``timeout_s``)."""
    try:
        yield
    except _REWARD_ERRORS as err:
        hint = _resume_hint(last_checkpoint())
        add_context(err, hint if where is None else f"{where}; {hint}")
        raise
    except RuntimeError as err:
        gone = peer_gone(err, timeout_s)
        if gone is None:
            raise
        raise gone from err
