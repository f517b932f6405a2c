"""End to end with 2 CPU processes: ``accelerate launch --num_processes 2 --config_file
configs/accelerate/cpu.yaml recipes/<recipe>.py grpo`` (torchrun, gloo on loopback) with real TRL
followers on the tiny task.

Each rank trains its data-parallel share of the follower, samples its own prompts and estimates
the hypergradient locally; the all-reduce must leave every rank with bit-identical leader
parameters after every update (``--debug_sync`` compares checksums across ranks after each
update and has each rank write the exact bits of its parameters), and only rank 0 may write the
run's outputs. The lower-level check (same mechanism without TRL, and equality with the
single-process estimate) is tests/test_distributed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch_helpers import accelerate_launch

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from align_cbrl.metrics import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def launch(recipe: str, kind: str, config: str, out: Path, sync_dir: Path, *extra: str) -> str:
    """``accelerate launch`` 2 CPU processes; returns the combined output."""
    args = [kind, "--config", str(ROOT / "configs" / "recipes" / config), "--output_dir", str(out),
            "--debug_sync", str(sync_dir), *extra]  # fmt: skip
    return accelerate_launch(ROOT / "recipes" / f"{recipe}.py", args, 2)


CONFIGS = {"orchestrated": "grpo_tiny.yaml", "plugin": "plugin_grpo_tiny.yaml"}


def reports(sync_dir: Path) -> tuple[dict, dict]:
    assert sorted(p.name for p in sync_dir.iterdir()) == ["rank0.json", "rank1.json"]
    r0, r1 = (json.loads((sync_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["rank"], r1["rank"]) == (0, 1)
    return r0, r1


def launch_grpo_and_compare(recipe: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """Launch ``recipe grpo`` on 2 processes: the exact bits of every leader parameter agree
    across the ranks, after every one of the 3 leader updates."""
    out, sync_dir = tmp_path / "run", tmp_path / "sync"
    output = launch(recipe, "grpo", CONFIGS[recipe], out, sync_dir)
    assert "on 2 process(es)" in output
    r0, r1 = reports(sync_dir)
    assert r0["hex"] == r1["hex"] and r0["per_update"] == r1["per_update"]
    assert len(r0["per_update"]) == 3
    return out, r0, r1


def test_two_processes_orchestrated_grpo_keep_bit_identical_leaders(tmp_path):
    out, r0, r1 = launch_grpo_and_compare("orchestrated", tmp_path)
    assert r0["checksum"] == r1["checksum"]
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
def test_two_processes_plugin_grpo_keep_bit_identical_leaders(tmp_path):
    out, _, _ = launch_grpo_and_compare("plugin", tmp_path)
    rows = read_jsonl(out / "leader_metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "checkpoint-6", "leader", "leader_metrics.jsonl"]
    assert (out / "leader" / "config.json").is_file()
