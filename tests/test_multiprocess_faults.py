"""Faults of two-process runs (docs/reliability.md), compared with the uninterrupted runs of
tests/test_multiprocess.py (the ``two_process_runs`` fixture):

* a dead rank: rank 1 of an orchestrated run is SIGKILLed after the first checkpoint; rank 0
  must stop within the collective timeout (30 s here) with one line saying a peer is gone, and
  a relaunch with ``--resume`` ends bit-identical to the uninterrupted run;
* plugin mode: a user reward function raises at step 5, after TRL's ``checkpoint-4``, on both
  ranks; resumed with ``--resume`` (``resume_from_checkpoint``) after the fix, both ranks hold
  the uninterrupted run's leader bits.

The ranks of the dead-rank run are started directly (no launcher agent, which would kill the
survivor itself), each with its own log; every wait has a timeout and dumps the stacks of stuck
processes (tests/helpers.py)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    launch,
    launch_pythonpath,
    recipe_args,
    start_ranks,
    strip_times,
    sync_reports,
    wait_or_dump,
    write_flaky_plugin_config,
)

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from align_cbrl.metrics import read_jsonl

TIMEOUT_S = 30


def wait_for(path: Path, procs, logs, timeout: float = 300) -> None:
    """Poll until ``path`` exists; fail (with the stacks) if the run ends or hangs first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            wait_or_dump(procs, logs, timeout=0)
            pytest.fail(
                f"{path} never appeared:\n" + "\n".join(log.read_text()[-3000:] for log in logs)
            )
        time.sleep(0.05)


def test_a_dead_rank_stops_its_peer_within_the_timeout_and_resume_is_bit_identical(
    two_process_runs, tmp_path
):
    ref, ref0, _ = two_process_runs("orchestrated")
    out, sync_dir = tmp_path / "run", tmp_path / "sync"
    config = ROOT / "configs" / "recipes" / "grpo_tiny.yaml"
    args = recipe_args(config, out, sync_dir, "--collective_timeout", str(TIMEOUT_S))
    script = str(ROOT / "recipes" / "orchestrated.py")
    procs, logs = start_ranks([sys.executable, script, *args], 2)
    wait_for(out / "checkpoints" / "iter_000001" / "state.json", procs, logs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 3 * TIMEOUT_S
    while procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.monotonic() - killed
    outputs = wait_or_dump(procs, logs, timeout=max(1.0, deadline - time.monotonic()))
    print(f"rank 0 exited {took:.2f} s after rank 1 was killed")
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1, outputs[0][-3000:]
    assert took < TIMEOUT_S
    lines = [line for line in outputs[0].splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in outputs[0], outputs[0][-3000:]
    assert lines[0].startswith(
        "[rank 0] error: a peer process is gone: rank 0 of 2 lost contact with the other ranks "
        f"in a collective (collective_timeout {TIMEOUT_S} s): "
    )
    assert lines[0].endswith(
        "; relaunch all processes with --resume to continue from the last checkpoint"
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["iter_000001"]

    code, output = launch(ROOT / "recipes" / "orchestrated.py", [*args, "--resume"], 2)
    assert code == 0, output[-3000:]
    r0, r1 = sync_reports(sync_dir)
    assert r0["hex"] == r1["hex"] == ref0["hex"]
    assert strip_times(read_jsonl(out / "metrics.jsonl")) == strip_times(
        read_jsonl(ref / "metrics.jsonl")
    )


def test_plugin_two_processes_resume_after_a_failed_step_bit_identically(
    two_process_runs, tmp_path
):
    ref, ref0, _ = two_process_runs("plugin")
    out, sync_dir = tmp_path / "run", tmp_path / "sync"
    args = recipe_args(write_flaky_plugin_config(tmp_path), out, sync_dir)
    script = ROOT / "recipes" / "plugin.py"
    ckpt = out / "checkpoint-4"
    fault = {"FAULT_MODE": "raise", "FAULT_AFTER": str(ckpt / "hpgd_leader")}
    code, output = launch(script, args, 2, PYTHONPATH=launch_pythonpath(), **fault)
    assert code != 0
    line = next(line for line in output.splitlines() if line.startswith("[rank 0] error:"))
    assert line.startswith(
        "[rank 0] error: reward component 'flaky' (tests.fault_rewards:flaky) raised ZeroDivisionError: "
        "simulated bug in the user's reward function at fault_rewards.py:"
    )
    assert line.endswith(
        f", at training step 5, last checkpoint {ckpt}; fix the cause and rerun with --resume "
        "to continue from it"
    )
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]

    code, output = launch(script, [*args, "--resume"], 2, PYTHONPATH=launch_pythonpath())
    assert code == 0, output[-3000:]
    r0, r1 = sync_reports(sync_dir)
    assert r0["hex"] == r1["hex"] == ref0["hex"]
    assert len(r0["per_update"]) == 1  # the third update; the first two came from checkpoint-4
    rows, ref_rows = (read_jsonl(d / "leader_metrics.jsonl") for d in (out, ref))
    assert strip_times(rows) == strip_times(ref_rows) and [r["step"] for r in rows] == [2, 4, 6]
