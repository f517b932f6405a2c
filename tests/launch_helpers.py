"""Launch helpers for the multi-process tests (not collected: no ``test_`` prefix): a free
loopback port and ``accelerate launch`` on CPU processes with the project's accelerate config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(script: Path, args: list[str], processes: int, **env: str) -> str:
    """``accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes N script
    args`` from the repository root, single-threaded and offline (``env`` adds variables);
    asserts it succeeded and returns its combined output."""
    cmd = [
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
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    full_env.update(env)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output
