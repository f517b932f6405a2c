"""Two CPU processes (gloo, loopback) keep one leader: bit-identical parameters on every rank,
equal (to round-off) to the single-process estimate over all groups, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from launch_helpers import free_port

from align_cbrl.distributed import LeaderSync, parameter_checksum

WORKER = Path(__file__).with_name("dist_worker.py")


def _launch(world: int, out_dir: Path) -> list[dict]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    return [json.loads((out_dir / f"result_{r}_of_{world}.json").read_text()) for r in range(world)]


def test_two_gloo_processes_hold_bit_identical_leaders(tmp_path: Path) -> None:
    two = tmp_path / "two"
    one = tmp_path / "one"
    two.mkdir()
    one.mkdir()
    r0, r1 = _launch(2, two)
    assert r0["hex"] == r1["hex"], "ranks disagree at the bit level"
    assert r0["digest"] == r1["digest"]
    # The weighted all-reduce reproduces the single-process estimate over all 12 groups.
    (single,) = _launch(1, one)
    flat2 = torch.tensor([v for p in r0["params"] for v in p])
    flat1 = torch.tensor([v for p in single["params"] for v in p])
    torch.testing.assert_close(flat2, flat1, rtol=1e-12, atol=1e-12)
    # Only the main process wrote its file.
    assert sorted(p.name for p in two.iterdir()) == [
        "rank0_only.json",
        "result_0_of_2.json",
        "result_1_of_2.json",
    ]


def test_single_process_is_a_no_op() -> None:
    sync = LeaderSync()
    assert sync.world_size == 1 and sync.is_main_process
    m = torch.nn.Linear(2, 1)
    m.weight.grad = torch.ones_like(m.weight)
    before = parameter_checksum(m.parameters())
    sync.broadcast(m)
    assert sync.all_reduce_gradients(m, n_groups=3) == 3.0
    assert torch.equal(m.weight.grad, torch.ones_like(m.weight))
    assert sync.assert_identical(m) == before
