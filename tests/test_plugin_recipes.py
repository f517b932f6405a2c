"""The TRL-style plugin recipe checkpoints through TRL and continues with ``--resume``."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from align_cbrl import load_leader
from align_cbrl.cli import main as cli_main
from align_cbrl.metrics import read_jsonl
from align_cbrl.trainer.callback import CHECKPOINT_DIR
from tests.helpers import ROOT


@pytest.mark.parametrize(("kind", "config"), [("grpo", "plugin_grpo_tiny.yaml")])
def test_plugin_recipe_resumes_from_its_trl_checkpoint(tmp_path, kind, config):
    main = importlib.import_module("plugin").main  # recipes/ is on the path (pyproject)
    out = tmp_path / "run"
    base = [kind, "--config", str(ROOT / "configs" / "recipes" / config), "--output_dir", str(out)]
    main([*base, "--max_steps", "4"])
    ckpt = out / "checkpoint-4"
    assert (ckpt / CHECKPOINT_DIR / "state.json").is_file()
    after_two = load_leader(ckpt / CHECKPOINT_DIR / "leader").flat_parameters()
    assert load_leader(out / "leader").flat_parameters().equal(after_two)
    # align-cbrl export of the TRL checkpoint: its leader, with reward spec and summary
    assert cli_main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    assert load_leader(tmp_path / "exported").flat_parameters().equal(after_two)
    doc = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert doc["training"]["iterations"] == 2 and len(doc["rewards"]["components"]) == 5
    main([*base, "--max_steps", "6", "--resume"])
    rows = read_jsonl(out / "leader_metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6]  # continued at step 5, one more update
    assert (out / "checkpoint-6" / CHECKPOINT_DIR / "state.json").is_file()
    assert not load_leader(out / "leader").flat_parameters().equal(after_two)
