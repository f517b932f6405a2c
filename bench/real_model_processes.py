"""Running the arms of ``bench/real_model.py``, each in its own process (resumable: finished
arms are skipped, a half-trained arm continues from its last checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent / "real_model.py"


def run_arms(
    arms: Sequence[str],
    root: Path,
    config_path: str,
    overrides: Mapping[str, Any],
    jobs: int,
    requires: Callable[[str], Path | None] = lambda _: None,
) -> int:
    """Run the unfinished runs (``<arm>/s<seed>``), each in its own process, at most ``jobs``
    at a time, in order; a run whose ``requires(run)`` file does not exist yet waits for it
    (it is another run's output). Returns 0, or the first non-zero exit status (the other
    running runs are waited for)."""
    todo = []
    for arm in arms:
        if (root / arm / "heldout.json").is_file():
            print(f"[real_model] {arm}: done, skipped", flush=True)
        else:
            todo.append(arm)
    running: dict[str, subprocess.Popen[bytes]] = {}

    def stop(*_: Any) -> None:  # ending the bench ends its arms (they resume on the next run)
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _poll_arms(todo, running, root, config_path, overrides, jobs, requires)
    except KeyboardInterrupt:
        stop()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _poll_arms(
    todo: list[str],
    running: dict[str, subprocess.Popen[bytes]],
    root: Path,
    config_path: str,
    overrides: Mapping[str, Any],
    jobs: int,
    requires: Callable[[str], Path | None],
) -> int:
    status = 0
    while todo or running:
        while todo and len(running) < jobs and status == 0:
            ready = [a for a in todo if (f := requires(a)) is None or f.is_file()]
            if not ready:
                if not running:  # nothing running will ever write what they wait for
                    print(f"[real_model] {todo}: their inputs are missing", flush=True)
                    return 1
                break
            arm = ready[0]
            todo.remove(arm)
            print(f"[real_model] {arm}: running (output {root / arm})", flush=True)
            cmd = [sys.executable, str(BENCH), "--arm", arm]
            cmd += ["--config", config_path]
            for k, v in overrides.items():
                cmd += [f"--{k}", json.dumps(v)]
            running[arm] = subprocess.Popen(cmd)
        if status != 0:
            todo.clear()
        for arm, proc in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[arm]
            if rc != 0:
                print(f"[real_model] {arm} failed (exit {rc}); rerun to resume", flush=True)
                status = status or rc
            else:
                print(f"[real_model] {arm}: finished", flush=True)
        time.sleep(2.0)
    return status
