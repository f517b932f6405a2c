"""The accelerate recipes (recipes/*.py) run end to end in one process on the tiny task, refuse
mismatched configs, and the accelerate configs are valid for ``accelerate launch``.

The recipes are run in-process (``main(argv)``), which is what ``accelerate launch
--num_processes 1`` amounts to; tests/test_multiprocess.py launches them with 2 processes."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from align_cbrl.config_parser import ConfigError
from align_cbrl.leaders import load_leader
from align_cbrl.metrics import read_jsonl
from tests.helpers import ROOT

CONFIGS = ROOT / "configs"


def recipe(name: str):
    """The recipe script ``recipes/<name>.py`` as a module (recipes/ is on the path through
    pyproject's pytest settings, as a script's own directory is when it runs)."""
    return importlib.import_module(name)


def run(name: str, kind: str, config: str, out: Path, *extra: str) -> None:
    recipe(name).main(
        [kind, "--config", str(CONFIGS / "recipes" / config), "--output_dir", str(out), *extra]
    )


@pytest.mark.parametrize(
    ("name", "config", "kind"),
    [
        ("orchestrated", "grpo_tiny.yaml", "grpo"),
        ("orchestrated", "rloo_tiny.yaml", "rloo"),
    ],
)
def test_orchestrated_recipe_runs_and_moves_the_leader(tmp_path, name, config, kind):
    out = tmp_path / "run"
    run(name, kind, config, out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["leader/grad_norm"] > 0 for r in rows[1:])
    assert all(f"{kind}/train_reward" in r for r in rows[1:])
    assert (out / "checkpoints" / "iter_000003" / "followers" / kind / "follower.json").is_file()
    weights = load_leader(out / "leader").weight_table().detach()
    assert weights.abs().max() > 0.05  # started at 0
    assert rows[-1]["objective_exact"] != rows[0]["objective_exact"]


@pytest.mark.parametrize(
    ("kind", "config"), [("grpo", "plugin_grpo_tiny.yaml"), ("rloo", "plugin_rloo_tiny.yaml")]
)
def test_plugin_recipe_runs_and_moves_the_leader(tmp_path, kind, config):
    """The TRL-style recipe (one YAML for TrlParser) trains, updates the leader every 2 steps
    and leaves the final leader as a save_pretrained folder whose frozen reward is the leader's."""
    out = tmp_path / "run"
    run("plugin", kind, config, out)
    rows = read_jsonl(out / "leader_metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6]  # every leader_update_every = 2, 3 updates
    assert all(r["leader/groups"] == 2 for r in rows)  # 2 optimiser steps x 1 prompt each
    # a group whose completions all have the same rbar carries no signal: some updates may be 0
    assert any(r["leader/grad_norm"] > 0 for r in rows)
    leader = load_leader(out / "leader")
    assert leader.weight_table().detach().abs().max() > 0.05
    doc = json.loads((out / "leader" / "config.json").read_text())
    assert doc["training"]["iterations"] == 3 and doc["training"]["estimator"] == "hpgd"
    assert doc["rewards"]["components"][0] == {"type": "length", "name": "n_words", "unit": "words"}


@pytest.mark.parametrize(
    ("name", "kind", "config"),
    [
        ("orchestrated", "grpo", "rloo_tiny.yaml"),
        ("orchestrated", "rloo", "grpo_tiny.yaml"),
        ("plugin", "rloo", "plugin_grpo_tiny.yaml"),
    ],
)
def test_recipe_refuses_the_other_trainer(tmp_path, name, kind, config):
    with pytest.raises(ValueError, match="trainer"):
        run(name, kind, config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_orchestrated_recipe_needs_a_trainer_kind_and_a_config_and_reports_bad_keys(tmp_path):
    main = recipe("orchestrated").main
    with pytest.raises(ConfigError, match=r"\{grpo,rloo\}"):
        main(["--config", str(CONFIGS / "recipes" / "grpo_tiny.yaml")])
    with pytest.raises(ConfigError, match="--config"):
        main(["grpo", "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="learning_rat"):
        run(
            "orchestrated",
            "grpo",
            "grpo_tiny.yaml",
            tmp_path / "r",
            "--followers.0.learning_rat",
            "1",
        )
    with pytest.raises(ValueError, match="--debug_sync needs a value"):
        main(["grpo", "--debug_sync"])


def test_plugin_recipe_needs_a_trainer_kind_and_a_config_and_reports_bad_keys(tmp_path, capsys):
    main = recipe("plugin").main
    config = str(CONFIGS / "recipes" / "plugin_grpo_tiny.yaml")
    with pytest.raises(ValueError, match=r"\{grpo,rloo\}"):
        main(["--config", config])
    with pytest.raises(ValueError, match="--config"):
        main(["grpo", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="learning_rte"):
        main(["grpo", "--config", config, "--learning_rte", "1"])
    bad = tmp_path / "zero_order.yaml"  # YAML values skip argparse's choices: checked after
    bad.write_text(
        Path(config).read_text().replace("leader_estimator: hpgd", "leader_estimator: zero_order")
    )
    with pytest.raises(ValueError, match="zero_order needs the orchestrated trainer"):
        main(["grpo", "--config", str(bad)])
    with pytest.raises(SystemExit):  # argparse: an option without its value
        main(["grpo", "--config", config, "--debug_sync"])
    assert not (tmp_path / "r").exists()


def test_plugin_recipe_help_lists_trl_and_leader_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe("plugin").main(["grpo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    keys = ["--reward_config", "--model_name_or_path", "--learning_rate", "--scale_rewards"]
    keys += ["--leader_update_every", "--leader_lr", "--leader_spec"]
    assert [k for k in keys if k not in text] == []


def test_pop_flags_splits_recipe_switches_from_overrides():
    from align_cbrl.config_parser import pop_flags

    flags, rest = pop_flags(
        ["--config", "c.yaml", "--overwrite", "--debug_sync=/tmp/x", "--leader.lr", "0.1"],
        switches=["--overwrite", "--resume"],
        options=["--debug_sync"],
    )
    assert flags == {"overwrite": True, "resume": False, "debug_sync": "/tmp/x"}
    assert rest == ["--config", "c.yaml", "--leader.lr", "0.1"]


ACCELERATE_CONFIGS = ["cpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"]


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_configs_load_and_follow_trl(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / "accelerate" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))  # accelerate's own parser (what `launch` uses)
    raw = yaml.safe_load(path.read_text())
    expected = {
        "cpu": ("MULTI_GPU", "no", True),
        "multi_gpu": ("MULTI_GPU", "bf16", False),
        "deepspeed_zero2": ("DEEPSPEED", "bf16", False),
        "deepspeed_zero3": ("DEEPSPEED", "bf16", False),
        "fsdp2": ("FSDP", "bf16", False),
    }[name]
    assert (str(cfg.distributed_type).split(".")[-1], cfg.mixed_precision, cfg.use_cpu) == expected
    assert raw["compute_environment"] == "LOCAL_MACHINE" and raw["num_machines"] == 1
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-1])
    if name == "fsdp2":
        assert raw["fsdp_config"]["fsdp_version"] == 2
