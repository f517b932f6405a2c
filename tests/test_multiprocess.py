"""End to end with 2 CPU processes: ``accelerate launch --num_processes 2 --config_file
configs/accelerate/cpu.yaml recipes/<recipe>.py grpo`` (torchrun, gloo on loopback) with real TRL
followers on the tiny task.

Each rank trains its data-parallel share of the follower, samples its own prompts and estimates
the hypergradient locally; the all-reduce must leave every rank with bit-identical leader
parameters after every update (``--debug_sync`` compares checksums across ranks after each
update and has each rank write the exact bits of its parameters), and only rank 0 may write the
run's outputs. Each launch has its own timeout and dumps the stacks of stuck processes
(tests/helpers.py); the runs are shared with the fault tests (``two_process_runs`` in
tests/conftest.py, tests/test_multiprocess_faults.py). The lower-level check (same mechanism
without TRL, and equality with the single-process estimate) is tests/test_distributed.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from align_cbrl.metrics import read_jsonl


def test_two_processes_orchestrated_grpo_keep_bit_identical_leaders(two_process_runs):
    out, r0, r1 = two_process_runs("orchestrated")
    assert r0["checksum"] == r1["checksum"]
    assert len(r0["per_update"]) == 3
    assert len(set(r0["per_update"])) == 3  # the leader moved at every iteration
    # only rank 0 wrote: one metrics line per step, one checkpoint, one leader
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["leader/grad_norm"] > 0 for r in rows[1:])
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "leader",
        "metrics.jsonl",
        "summary.json",
    ]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["iter_000003"]


@pytest.mark.slow
def test_two_processes_plugin_grpo_keep_bit_identical_leaders(two_process_runs):
    out, r0, _ = two_process_runs("plugin")
    assert len(r0["per_update"]) == 3
    rows = read_jsonl(out / "leader_metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "checkpoint-6", "leader", "leader_metrics.jsonl"]
    assert (out / "leader" / "config.json").is_file()
