"""Checkpoints round-trip exactly (leader, Adam state, every RNG) and are written atomically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from align_cbrl.checkpoint import CheckpointManager
from align_cbrl.metrics import MetricsLogger, read_jsonl


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(4, 3, dtype=torch.float64)
        loss = (model(x) ** 2).mean() + np.random.rand() + random.random()
        loss.backward()
        opt.step()


def test_resume_continues_bit_identically(tmp_path) -> None:
    def fresh():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        m = torch.nn.Linear(3, 2, dtype=torch.float64)
        return m, torch.optim.Adam(m.parameters(), lr=0.1)

    m_ref, o_ref = fresh()
    _train(m_ref, o_ref, 6)

    m, o = fresh()
    _train(m, o, 3)
    mgr = CheckpointManager(tmp_path, keep=2)
    mgr.save(3, leader=m, optimizer=o, state={"note": "halfway"})
    _train(m, o, 2)  # diverge after the checkpoint: must not matter

    m2 = torch.nn.Linear(3, 2, dtype=torch.float64)
    o2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    state = mgr.load(mgr.latest(), leader=m2, optimizer=o2)
    assert state == {"iteration": 3, "note": "halfway"}
    _train(m2, o2, 3)
    for a, b in zip(m_ref.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pruning_and_failed_write_leave_old_checkpoints(tmp_path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    m = torch.nn.Linear(2, 1)
    for it in (1, 2, 3):
        mgr.save(it, leader=m)
    assert [i for i, _ in mgr.list()] == [2, 3]

    def boom(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        mgr.save(4, leader=m, extra_writers={"follower": boom})
    assert [i for i, _ in mgr.list()] == [2, 3]
    assert not [p for p in mgr.root.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        mgr.load(tmp_path / "nowhere", leader=m)


def test_metrics_truncate_on_resume(tmp_path) -> None:
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(5):
        log.log(step, {"F": torch.tensor(step * 0.5), "bad": float("nan")})
    log.truncate_after(2)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[1] == {"step": 1, "F": 0.5, "bad": None}
