"""Two CPU processes (gloo, loopback) keep one leader: bit-identical parameters on every rank,
equal (to round-off) to the single-process estimate over all groups, and only rank 0 writes; a
rank whose peer stops answering fails within the collective timeout with a one-line message."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

from align_cbrl.distributed import LeaderSync, parameter_checksum
from tests.helpers import start_ranks, wait_or_dump

WORKER = Path(__file__).with_name("dist_worker.py")


def _launch(world: int, out_dir: Path) -> list[dict]:
    procs, logs = start_ranks([sys.executable, str(WORKER), str(out_dir)], world)
    outputs = wait_or_dump(procs, logs, timeout=120)
    for p, out in zip(procs, outputs):
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


def test_a_silent_peer_fails_the_collective_within_its_timeout(tmp_path: Path) -> None:
    """Rank 1 stays alive but stops answering before the first all-reduce (tests/dist_worker.py
    ``hang``); rank 0 must give up after ``collective_timeout`` (5 s here) with the one-line
    "a peer process is gone" error and exit status 1, not wait 30 minutes."""
    cmd = [sys.executable, str(WORKER), str(tmp_path), "hang"]
    procs, logs = start_ranks(cmd, 2, COLLECTIVE_TIMEOUT="5")
    try:
        outputs = wait_or_dump(procs[:1], logs[:1], timeout=120)
        ended = time.time()
    finally:
        procs[1].kill()
        procs[1].wait()
    silent = float(re.search(r"rank 1 silent at ([0-9.]+)", logs[1].read_text()).group(1))
    print(f"rank 0 exited {ended - silent:.2f} s after rank 1 went silent (timeout 5 s)")
    assert procs[0].returncode == 1, outputs[0]
    lines = [line for line in outputs[0].splitlines() if "peer process is gone" in line]
    assert len(lines) == 1, outputs[0]
    assert lines[0].startswith("[rank 0] error: a peer process is gone: rank 0 of 2 lost contact")
    assert "(collective_timeout 5 s)" in lines[0] and "Timed out waiting" in lines[0]
    assert "--resume" in lines[0] and "Traceback" not in outputs[0]
    # 5 s of timeout, plus the time to print and leave (generous: the host is shared)
    assert 5.0 <= ended - silent < 5.0 + 15.0, ended - silent
