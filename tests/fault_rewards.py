"""A user reward function that misbehaves on demand, for the fault tests (not collected: no
``test_`` prefix). ``callable`` reward components name it as ``tests.fault_rewards:flaky``.

``flaky`` scores each completion by its number of words. Once the directory named by
``$FAULT_AFTER`` exists (a checkpoint of the run: the fault then strikes in the next iteration
or step, whatever the launch timing), it does what ``$FAULT_MODE`` says:

* ``raise``: raises ``ZeroDivisionError`` (a bug in the user's function);
* ``nan`` / ``inf``: returns that value for row 5;
* ``short``: returns one score too few;
* ``SIGINT`` / ``SIGTERM``: sends the signal to its own process once (``$FAULT_ONCE`` names a
  marker file); ``SIGTERMx2``: twice, 1.5 s apart (a second signal, not a repeat).

Without ``$FAULT_MODE`` it never misbehaves (the unfailed reference run, and the "fixed"
function a resumed run uses).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def flaky(prompts: list[str], completions: list[str], **columns: object) -> list[float]:
    scores = [float(len(c.split())) for c in completions]
    mode, after = os.environ.get("FAULT_MODE"), os.environ.get("FAULT_AFTER")
    if not mode or not after or not Path(after).is_dir():
        return scores
    if mode == "raise":
        raise ZeroDivisionError("simulated bug in the user's reward function")
    if mode in ("nan", "inf"):
        scores[5] = float(mode)
        return scores
    if mode == "short":
        return scores[:-1]
    once = Path(os.environ["FAULT_ONCE"])
    if not once.exists():
        once.touch()
        sig = signal.Signals[mode.removesuffix("x2")]
        os.kill(os.getpid(), sig)
        if mode.endswith("x2"):
            time.sleep(1.5)
            os.kill(os.getpid(), sig)
    return scores
