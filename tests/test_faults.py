"""Faults in one process (docs/reliability.md): a user's reward function that raises or returns
NaN / inf / the wrong number of scores, SIGINT / SIGTERM (once, and a second time), a checkpoint
write that fails. Each test checks what the user sees (the one line, the exit status), what is
left on disk (the last checkpoint intact and loadable) and that ``--resume`` after the cause is
gone ends bit-identical to a run that never failed. The orchestrated runs use one exact follower
(seconds); the user's function is tests/fault_rewards.py. Two-process faults:
tests/test_multiprocess_faults.py."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align_cbrl.checkpoint import CheckpointManager
from align_cbrl.cli import main
from align_cbrl.config_parser import to_dict
from align_cbrl.leaders import load_leader
from align_cbrl.leaders.base import STATE_FILE
from align_cbrl.metrics import read_jsonl
from align_cbrl.rewards.base import RewardComponentError
from tests.helpers import (
    exact_follower,
    launch_pythonpath,
    strip_times,
    task_with_flaky,
    tiny_run_config,
    write_flaky_plugin_config,
)

FAULT_ENV = ("FAULT_MODE", "FAULT_AFTER", "FAULT_ONCE")


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch):
    for key in FAULT_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """4 outer iterations of one exact follower on the tiny task with ``flaky`` among the
    components; checkpoints after iterations 2 and 4, all kept."""
    tmp = tmp_path_factory.mktemp("faults")
    fol = [exact_follower()]
    cfg = tiny_run_config(
        tmp, "unused", fol, iterations=4, save_every=2, keep_checkpoints=10, task=task_with_flaky()
    )
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(config), "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory) -> Path:
    """The run that never failed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train(config_file, out) == 0
    return out


def assert_same_run(out: Path, ref: Path) -> None:
    """Bit-identical leader, same metrics (wall times aside)."""
    assert (out / "leader" / STATE_FILE).read_bytes() == (ref / "leader" / STATE_FILE).read_bytes()
    assert strip_times(read_jsonl(out / "metrics.jsonl")) == strip_times(
        read_jsonl(ref / "metrics.jsonl")
    )


def assert_last_checkpoint(out: Path, iteration: int, ref: Path) -> None:
    """The latest checkpoint is ``iteration``, complete (no partial directory beside it) and
    loads into a leader; byte-equal to the reference run's checkpoint of that iteration when
    the reference has one."""
    mgr = CheckpointManager(out)
    assert [p.name for p in sorted(mgr.root.iterdir())][-1] == f"iter_{iteration:06d}"
    assert not [p.name for p in mgr.root.iterdir() if p.name.startswith(".")]
    ckpt = mgr.latest()
    leader = load_leader(ref / "leader")
    assert mgr.load(ckpt, leader=leader, restore_rng=False)["iteration"] == iteration
    same = ref / "checkpoints" / ckpt.name / "leader.safetensors"
    if same.is_file():
        assert (ckpt / "leader.safetensors").read_bytes() == same.read_bytes()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            "raise",
            r"reward component 'flaky' \(tests\.fault_rewards:flaky\) raised ZeroDivisionError: "
            r"simulated bug in the user's reward function at fault_rewards\.py:\d+",
        ),
        ("nan", r"reward component 'flaky' returned a non-finite score nan at index 5"),
        ("inf", r"reward component 'flaky' returned a non-finite score inf at index 5"),
        (
            "short",
            r"reward component 'flaky' returned 20 scores for a batch of 21 \(prompt, "
            r"completion\) pairs",
        ),
    ],
)
def test_a_failing_reward_function_stops_with_one_line_and_resume_is_bit_identical(
    config_file, reference, tmp_path, monkeypatch, capsys, mode, message
):
    out = tmp_path / "run"
    monkeypatch.setenv("FAULT_MODE", mode)
    monkeypatch.setenv("FAULT_AFTER", str(out / "checkpoints" / "iter_000002"))
    assert train(config_file, out) == 2
    ckpt = out / "checkpoints" / "iter_000002"
    expected = (
        f"error: {message}, in outer iteration 3 of 4; last checkpoint {re.escape(str(ckpt))}; "
        "fix the cause and rerun with --resume to continue from it"
    )
    assert re.fullmatch(expected, one_line(capsys.readouterr().err))
    assert_last_checkpoint(out, 2, reference)
    monkeypatch.delenv("FAULT_MODE")  # the function is fixed
    assert train(config_file, out, "--resume") == 0
    assert_same_run(out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_iteration_boundary_with_a_checkpoint(
    config_file, reference, tmp_path, monkeypatch, capsys, sig
):
    """The signal arrives during iteration 3; the run finishes it, writes checkpoint 3 (not a
    scheduled one) and exits with 128 + signal; --resume ends as if nothing happened."""
    out = tmp_path / "run"
    monkeypatch.setenv("FAULT_MODE", sig.name)
    monkeypatch.setenv("FAULT_AFTER", str(out / "checkpoints" / "iter_000002"))
    monkeypatch.setenv("FAULT_ONCE", str(tmp_path / "sent"))
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert train(config_file, out) == 128 + sig
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
    err = capsys.readouterr().err
    assert (
        f"{sig.name} received: stopping after the current outer iteration and writing a "
        f"checkpoint; send {sig.name} again to stop at once"
    ) in err
    ckpt = out / "checkpoints" / "iter_000003"
    assert one_line(err) == (
        f"interrupted by {sig.name}: stopped after outer iteration 3 of 4 and wrote checkpoint "
        f"{ckpt}; run the same command with --resume to continue"
    )
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert_last_checkpoint(out, 3, reference)
    assert train(config_file, out, "--resume") == 0
    assert_same_run(out, reference)


def test_a_second_signal_exits_at_once_and_keeps_the_last_checkpoint(
    config_file, reference, tmp_path
):
    """SIGTERM twice, 1.5 s apart, during iteration 3 (a real process: it must really end):
    status 143 at once, no checkpoint 3, checkpoint 2 intact; --resume ends bit-identical."""
    out = tmp_path / "run"
    env = dict(
        os.environ,
        FAULT_MODE="SIGTERMx2",
        FAULT_AFTER=str(out / "checkpoints" / "iter_000002"),
        FAULT_ONCE=str(tmp_path / "sent"),
        PYTHONPATH=launch_pythonpath(),
    )
    cmd = [
        sys.executable,
        "-m",
        "align_cbrl.cli",
        "train",
        "--config",
        str(config_file),
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "SIGTERM received: stopping after the current outer iteration" in proc.stderr
    assert (
        "second SIGTERM: exiting now without a checkpoint; the last complete checkpoint is kept "
        "and --resume continues from it"
    ) in proc.stderr
    assert "interrupted by" not in proc.stderr  # it did not wait for the boundary
    assert_last_checkpoint(out, 2, reference)
    assert train(config_file, out, "--resume") == 0
    assert_same_run(out, reference)


def test_a_failing_checkpoint_write_keeps_the_previous_one(
    config_file, reference, tmp_path, monkeypatch, capsys
):
    """The disk fills while checkpoint 4 is written (leader, optimiser, RNG and follower files
    are in, ``state.json`` fails): one line, status 1, no partial directory, checkpoint 2
    intact and used by --resume, which ends bit-identical."""
    import align_cbrl.checkpoint as checkpoint

    real = checkpoint.atomic_write_json

    def full_disk(path, obj, **kw):
        if Path(path).name == "state.json" and obj.get("iteration") == 4:
            assert (Path(path).parent / "leader.safetensors").is_file()  # partway
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, obj, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "atomic_write_json", full_disk)
    assert train(config_file, out) == 1
    mgr = CheckpointManager(out)
    assert one_line(capsys.readouterr().err) == (
        f"error: could not write checkpoint {mgr.path_for(4)} (No space left on device); the "
        f"previous checkpoint {mgr.path_for(2)} is intact; free space or fix the directory, "
        "then rerun with --resume"
    )
    assert_last_checkpoint(out, 2, reference)
    monkeypatch.setattr(checkpoint, "atomic_write_json", real)  # space freed
    assert train(config_file, out, "--resume") == 0
    assert_same_run(out, reference)


def test_plugin_reward_error_names_the_step_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """Plugin mode (recipes/plugin.py in this process): ``flaky`` raises at step 5, after
    TRL's checkpoint-4; the error names the function, the step and that checkpoint, which is
    intact; the fixed function resumed from it ends with the unfailed run's leader bytes."""
    pytest.importorskip("trl")
    import importlib

    plugin = importlib.import_module("plugin")  # recipes/ is on the path (pyproject)
    config = write_flaky_plugin_config(tmp_path)

    def run(out: Path, *extra: str) -> None:
        plugin.main(["grpo", "--config", str(config), "--output_dir", str(out), *extra])

    run(tmp_path / "ref")
    out = tmp_path / "run"
    ckpt = out / "checkpoint-4"
    monkeypatch.setenv("FAULT_MODE", "raise")
    monkeypatch.setenv("FAULT_AFTER", str(ckpt / "hpgd_leader"))
    with pytest.raises(RewardComponentError) as info:
        run(out)
    assert re.fullmatch(
        r"reward component 'flaky' \(tests\.fault_rewards:flaky\) raised ZeroDivisionError: simulated "
        r"bug in the user's reward function at fault_rewards\.py:\d+, at training step 5, last "
        rf"checkpoint {re.escape(str(ckpt))}; fix the cause and rerun with --resume to continue "
        "from it",
        str(info.value),
    )
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    saved = load_leader(ckpt / "hpgd_leader" / "leader")
    assert saved.flat_parameters().isfinite().all()
    monkeypatch.delenv("FAULT_MODE")
    run(out, "--resume")
    ref = (tmp_path / "ref" / "leader" / STATE_FILE).read_bytes()
    assert (out / "leader" / STATE_FILE).read_bytes() == ref
    rows, ref_rows = (read_jsonl(d / "leader_metrics.jsonl") for d in (out, tmp_path / "ref"))
    assert strip_times(rows) == strip_times(ref_rows) and [r["step"] for r in rows] == [2, 4, 6]


def test_collective_timeout_must_be_positive(config_file, tmp_path, capsys):
    assert train(config_file, tmp_path / "run", "--collective_timeout", "0") == 2
    assert one_line(capsys.readouterr().err).endswith(
        "collective_timeout must be a number of seconds > 0, got 0"
    )
    assert not (tmp_path / "run").exists()
