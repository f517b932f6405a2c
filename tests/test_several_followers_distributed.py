"""Several followers on several processes: ``accelerate launch --num_processes 2
--config_file configs/accelerate/cpu.yaml`` (torchrun, gloo on loopback). The followers'
estimates are combined with the same weights as in one process: both ranks hold bit-identical
leaders, equal to the single-process combination of all groups to 1e-12
(tests/several_followers_worker.py; the single-follower analogue is tests/test_distributed.py
and tests/test_multiprocess.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, accelerate_launch, launch_pythonpath

pytest.importorskip("accelerate")

WORKER = Path(__file__).with_name("several_followers_worker.py")


def launch(mode: str, processes: int, out: Path) -> list[dict]:
    """Run the worker in ``mode`` on ``processes`` ranks; every rank's sync report (its leader's
    exact bits), with ``values``, the parameters read back from them, added."""
    out.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join([launch_pythonpath(), str(ROOT / "recipes")])
    accelerate_launch(WORKER, [mode, str(out)], processes, PYTHONPATH=pythonpath)
    reports = [
        json.loads((out / f"{mode}_of_{processes}" / f"rank{r}.json").read_text())
        for r in range(processes)
    ]
    return [r | {"values": [float.fromhex(h) for h in r["hex"]]} for r in reports]


def test_two_processes_combine_followers_like_one_process(tmp_path):
    r0, r1 = launch("combine", 2, tmp_path / "two")
    assert (r0["world_size"], r1["world_size"]) == (2, 2)
    assert r0["hex"] == r1["hex"], "ranks disagree at the bit level"
    (single,) = launch("combine", 1, tmp_path / "one")
    two, one = torch.tensor(r0["values"]), torch.tensor(single["values"])
    print(f"two processes vs one: max |difference| {float((two - one).abs().max()):.3g}")
    torch.testing.assert_close(two, one, rtol=1e-12, atol=1e-12)
    assert (one != 0).sum() > 4  # the leader moved


def test_two_processes_orchestrated_two_followers_keep_bit_identical_leaders(tmp_path):
    r0, r1 = launch("trainer", 2, tmp_path)
    assert r0["hex"] == r1["hex"]
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # only rank 0 wrote
    assert rows[-1]["leader/groups"] == 4.0  # per rank: 2 prompts x 2 followers
    assert {"short/weight", "long/weight", "short/objective_exact", "objective_exact"} <= set(
        rows[-1]
    )
