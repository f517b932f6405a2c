"""The ``align-cbrl`` command, the shipped configs and the quickstart pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")

from align_cbrl.cli import main
from align_cbrl.config_parser import load_config, to_dict
from align_cbrl.data import known_prompt_sets, load_prompts
from align_cbrl.metrics import read_jsonl
from align_cbrl.quickstart import QUICKSTART_CONFIG, format_table
from align_cbrl.trainer import HPGDConfig
from tests.helpers import ROOT, write_exact_run_config


def write_config(tmp_path, out="run"):
    return write_exact_run_config(tmp_path / "config.yaml", tmp_path / out, iterations=3)


def test_train_runs_writes_outputs_and_resumes(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), "--iterations", "2"]) == 0
    out = tmp_path / "run"
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "leader" / "config.json").is_file()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert "eval/objective_exact" in capsys.readouterr().out
    # running again without --resume is refused, nothing changes
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["train", "--config", str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_bytes() == before
    # --resume extends the run to 3 iterations
    assert main(["train", "--config", str(cfg), "--resume", "--no-plots"]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--leader.lrr", "0.1"], "did you mean 'lr'"),
        (["--followers.0.beta", "0"], "beta > 0"),
        (["--num_samples", "1"], "num_samples must be an integer >= 2"),
        (["--followers.0.model", "/no/such/dir"], "no model directory"),
        (["--followers.0.dataset", "nothing-here"], "neither an embedded prompt set"),
    ],
)
def test_train_config_errors_are_one_line(tmp_path, capsys, args, message):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_usage_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["quickstart", "tiny_language_grpo", "tiny_language_rloo", "tiny_language_mlmc"]
)
def test_shipped_configs_load(name):
    config = load_config(HPGDConfig, ROOT / "configs" / f"{name}.yaml")
    assert config.followers and config.leader.estimator == "hpgd"


def test_quickstart_yaml_matches_the_embedded_default():
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    from_yaml = to_dict(load_config(HPGDConfig, ROOT / "configs" / "quickstart.yaml"))
    embedded = to_dict(load_config(HPGDConfig, None, {**QUICKSTART_CONFIG}))
    from_yaml.pop("output_dir")
    embedded.pop("output_dir")
    assert from_yaml == embedded
    assert data["task"] == "quickstart"


def test_format_table_rows():
    results = {
        "HPGD leader": {
            "seconds": 12.4,
            "summary": {
                "eval/objective_exact": 0.5,
                "eval/objective_estimate": 0.4,
                "eval/a/base_reward": 1.0,
                "eval/a/incentive": 0.25,
                "eval/a/cost": 0.125,
            },
        },
        "reference": {"summary": {"eval/objective_exact": 0.75}},
    }
    lines = format_table(results).splitlines()
    assert lines[2] == "| HPGD leader | 0.500 | 0.400 | 1.000 | 0.250 | 0.125 | 12 |"
    assert lines[3] == "| reference | 0.750 | - | - | - | - | - |"


def test_embedded_prompt_sets_and_file_errors(tmp_path):
    assert known_prompt_sets() == ["quickstart", "tiny_language"]
    rows = load_prompts("quickstart")
    assert {r["category"] for r in rows} == {"quick", "polite", "careful"}
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi", "category": "x"}\n\n{"prompt": "", "category": "y"}\n')
    with pytest.raises(ValueError, match=r"row 1 .* non-empty string 'prompt'"):
        load_prompts(str(f))
    f.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_prompts(str(f))


def test_train_help_lists_sections_keys_defaults_and_help(capsys):
    from align_cbrl.trainer.config import FollowerConfig, HPGDConfig, LeaderConfig

    for argv in (["train", "--help"], ["train", "--config", "x.yaml", "--help"], ["train", "-h"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: align-cbrl train --config FILE.yaml")
        for opt in ("--config FILE.yaml", "--resume", "--overwrite", "--version"):
            assert opt in out
        for section in ("config keys (top level):", "rewards (RewardsConfig):"):
            assert section in out
        assert "leader (LeaderConfig):" in out
        assert "followers.N (FollowerConfig, a list: N = 0, 1, ...):" in out
    flat = " ".join(out.split())
    assert "--output_dir STR run directory:" in flat and "(default: runs/hpgd)" in flat
    assert "--progress, --no-progress" in flat
    assert "--leader.lr FLOAT leader learning rate (> 0) (default: 0.1)" in flat
    assert "--followers.N.trainer {grpo,rloo,exact,tabular}" in flat
    # every key of every section, with its help text from the field metadata
    import dataclasses

    for cls, prefix in (
        (HPGDConfig, ""),
        (LeaderConfig, "leader."),
        (FollowerConfig, "followers.N."),
    ):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help metadata"
            if prefix == "" and f.name in ("rewards", "leader", "followers"):
                continue
            assert f"--{prefix}{f.name}" in flat
            # argparse wraps lines (also after hyphens): compare without whitespace
            assert "".join(f.metadata["help"].split()) in "".join(out.split())


def test_version(capsys):
    from align_cbrl import __version__

    for argv in (["--version"], ["train", "--version"]):
        assert main(argv) == 0
        assert capsys.readouterr().out == f"align-cbrl {__version__}\n"
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"align-cbrl {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "progress"),
    [
        ([], True),
        (["--no-progress"], False),
        (["--progress", "false"], False),
        (["--progress"], True),
    ],
)
def test_quickstart_takes_the_same_boolean_flags_as_train(monkeypatch, capsys, argv, progress):
    import align_cbrl.quickstart as qs

    seen = {}

    def fake(output_dir, overrides, progress):
        seen.update(output_dir=output_dir, overrides=overrides, progress=progress)
        return {}

    monkeypatch.setattr(qs, "run_quickstart", fake)
    assert main(["quickstart", "--output_dir", "x", "--iterations", "2", *argv]) == 0
    assert seen == {"output_dir": "x", "overrides": {"iterations": 2}, "progress": progress}
    capsys.readouterr()


def test_train_boolean_flag_styles(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), "--iterations", "1", "--no-plots"]) == 0
    assert not (tmp_path / "run" / "training.png").exists()
    capsys.readouterr()


def test_config_directory_error(tmp_path, capsys):
    assert main(["train", "--config", str(ROOT / "configs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {ROOT / 'configs'} is a directory; give a YAML file")
    assert "quickstart.yaml" in err


CALLABLE_CONFIG = """
output_dir: run
iterations: 1
follower_steps: 0
prompts_per_iteration: 1
num_samples: 2
save_every: 0
eval_samples: 0
tensorboard: false
plots: false
progress: false
rewards:
  components:
    - {type: callable, name: chars, target: "my_reward_mod:chars"}
  follower: {weights: {chars: 1.0}}
  leader: {weights: {chars: 1.0}}
followers:
  - {name: f, model: tiny-bpe, dataset: quickstart, prompts_per_step: 1,
     trl: {num_generations: 2, max_completion_length: 4}}
"""


def test_console_script_imports_a_callable_reward_from_the_working_directory(tmp_path):
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "align-cbrl"
    if not script.is_file():
        pytest.skip("the align-cbrl console script is not installed")
    (tmp_path / "my_reward_mod.py").write_text(
        "def chars(prompts, completions, **columns):\n"
        "    return [float(len(c)) for c in completions]\n"
    )
    (tmp_path / "c.yaml").write_text(CALLABLE_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(script), "train", "--config", "c.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (last,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1:]
    assert last["step"] == 1 and last["f/components/chars"] >= 0
