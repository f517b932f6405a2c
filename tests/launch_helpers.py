"""Launch helpers for the multi-process tests (not collected: no ``test_`` prefix): a free
loopback port, ``accelerate launch`` on CPU processes with the project's accelerate config, ranks
started directly (no launcher agent, for the fault tests), and a wait that never hangs.

Every launch has its own timeout. A launch that hits it does not just fail: the stacks of every
process still alive are dumped first, so the next hang comes with its diagnosis. Each process
runs with ``PYTHONFAULTHANDLER=1``; on the timeout it gets SIGABRT, on which Python's
``faulthandler`` writes the Python stack of every thread to the process's stderr (part of the
failure message), and ``py-spy dump --native`` adds the native frames when ``py-spy`` is
installed (on ``PATH`` or beside the interpreter; optional)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 300
"""Default limit of one launch (a two-process tiny run takes 15-40 s on the 2-core CI host)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**env: str) -> dict[str, str]:
    """The environment of launched processes: single-threaded, offline, faulthandler on."""
    full = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    full.update(PYTHONFAULTHANDLER="1", TOKENIZERS_PARALLELISM="false", **env)
    return full


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.is_file() else None)


def dump_stacks(pids: list[int]) -> str:
    """Native stacks (py-spy, when installed) of ``pids`` and every process below them, then
    SIGABRT to each so that ``faulthandler`` writes its Python stacks to its stderr; returns
    py-spy's output (empty without py-spy)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    report = []
    spy = _py_spy()
    for p in procs:
        if spy and p.is_running() and "python" in p.name():
            cmd = [spy, "dump", "--native", "--pid", str(p.pid)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            report.append(f"--- py-spy dump of {p.pid} ({' '.join(p.cmdline()[-6:])})\n")
            report.append(out.stdout + out.stderr)
    for p in reversed(procs):  # workers first: a launcher then sees them die, not the other way
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGABRT)
    time.sleep(2.0)  # faulthandler writes, the process dies
    return "".join(report)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Wait for every process (all started together) at most ``timeout`` seconds in all;
    return the pids of those still running then."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    return [p.pid for p in procs if p.poll() is None]


def kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every process that still runs and everything below it; reap them."""
    for p in procs:
        if p.poll() is None:
            for child in _children(p.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            p.kill()
        p.wait(timeout=30)


def wait_or_dump(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    """:func:`wait_all`; return the processes' outputs. Past the limit: dump the stacks of what
    is still alive (:func:`dump_stacks`), kill it and fail the test with the stacks and the tail
    of every output."""
    alive = wait_all(procs, timeout)
    if alive:
        spy = dump_stacks(alive)
        kill_all(procs)
        tails = "\n".join(f"=== output of {log.name}\n{log.read_text()[-6000:]}" for log in logs)
        pytest.fail(f"processes {alive} still running after {timeout:.0f} s\n{spy}\n{tails}")
    return [log.read_text() for log in logs]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _log_file(name: str) -> tuple[Path, object]:
    fd, path = tempfile.mkstemp(prefix=f"{name}.", suffix=".log")
    return Path(path), os.fdopen(fd, "w")


def start(cmd: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    """Start ``cmd`` from the repository root, stdout and stderr into one log file."""
    log, fh = _log_file(name)
    with fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


def launch_command(script: Path, args: list[str], processes: int) -> list[str]:
    """``accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes N
    --main_process_port <free> script args``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "cpu.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]


def launch(
    script: Path,
    args: list[str],
    processes: int,
    *,
    timeout: float = LAUNCH_TIMEOUT_S,
    **env: str,
) -> tuple[int, str]:
    """:func:`launch_command` from the repository root (:func:`launch_env`; ``env`` adds
    variables), waited on with :func:`wait_or_dump`; returns ``(exit status, output)``."""
    cmd = launch_command(script, args, processes)
    proc, log = start(cmd, launch_env(**env), Path(script).stem)
    (output,) = wait_or_dump([proc], [log], timeout)
    log.unlink()
    return proc.returncode, output


def accelerate_launch(
    script: Path, args: list[str], processes: int, *, timeout: float = LAUNCH_TIMEOUT_S, **env: str
) -> str:
    """:func:`launch`, asserting that it succeeded; returns the combined output."""
    code, output = launch(script, args, processes, timeout=timeout, **env)
    assert code == 0, output[-4000:]
    return output


def recipe_args(config: Path, out: Path, sync_dir: Path, *extra: str) -> list[str]:
    """``grpo --config CONFIG --output_dir OUT --debug_sync SYNC_DIR EXTRA...``."""
    return ["grpo", "--config", str(config), "--output_dir", str(out),
            "--debug_sync", str(sync_dir), *extra]  # fmt: skip


def pythonpath_with_tests() -> str:
    """``PYTHONPATH`` for launched recipes that import a test module (tests/fault_rewards.py)."""
    return os.pathsep.join([str(ROOT), str(ROOT / "tests")])


def sync_reports(sync_dir: Path) -> tuple[dict, dict]:
    """Both ranks' ``--debug_sync`` reports (``rank0.json``, ``rank1.json``) of a 2-process run."""
    assert sorted(p.name for p in sync_dir.iterdir()) == ["rank0.json", "rank1.json"]
    r0, r1 = (json.loads((sync_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["rank"], r1["rank"]) == (0, 1)
    return r0, r1


def launch_recipe(recipe: str, config: Path, tmp: Path, *extra: str) -> tuple[Path, dict, dict]:
    """Launch ``recipes/<recipe>.py grpo`` on 2 processes with ``--debug_sync``: it succeeds
    and the exact bits of every leader parameter agree across the ranks after every update.
    Returns ``(run directory, rank 0 report, rank 1 report)``."""
    out, sync_dir = tmp / "run", tmp / "sync"
    args = recipe_args(config, out, sync_dir, *extra)
    output = accelerate_launch(
        ROOT / "recipes" / f"{recipe}.py", args, 2, PYTHONPATH=pythonpath_with_tests()
    )
    assert "on 2 process(es)" in output
    r0, r1 = sync_reports(sync_dir)
    assert r0["hex"] == r1["hex"] and r0["per_update"] == r1["per_update"]
    return out, r0, r1


def start_ranks(
    cmd: list[str], processes: int, **env: str
) -> tuple[list[subprocess.Popen], list[Path]]:
    """Start ``processes`` ranks of ``cmd`` directly (``RANK``, ``WORLD_SIZE``, ``MASTER_*``
    set here, no launcher agent: a rank's failure reaches the others only through the process
    group, which is what the fault tests check); each rank's output in its own log."""
    port = str(free_port())
    procs, logs = [], []
    for rank in range(processes):
        rank_env = launch_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(processes),
            LOCAL_WORLD_SIZE=str(processes),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        proc, log = start(cmd, rank_env, f"rank{rank}")
        procs.append(proc)
        logs.append(log)
    return procs, logs
