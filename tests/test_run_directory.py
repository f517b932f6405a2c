"""The run directory as one unit (issue 11): up-front validation, ``--overwrite`` replacing the
whole directory, ``--resume`` from wherever the directory is reached, a run without checkpoint,
TensorBoard after a resume, and the training plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("trl")

from align_cbrl.cli import main
from align_cbrl.metrics import read_jsonl
from tests.helpers import write_exact_run_config


def write_config(tmp_path: Path, out: str | Path = "run", tensorboard: str = "false") -> Path:
    return write_exact_run_config(
        tmp_path / "config.yaml", out, iterations=2, tensorboard=tensorboard, plots="false"
    )


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl")]


def test_negative_follower_learning_rate_fails_before_anything_is_written(tmp_path, capsys):
    cfg = write_config(tmp_path, tmp_path / "run")
    args = ["--followers.0.trainer", "grpo", "--followers.0.trl.learning_rate", "-0.001"]
    assert main(["train", "--config", str(cfg), *args]) == 2
    err = capsys.readouterr().err
    assert err == "error: followers.0 ('exact'): learning_rate must be a number > 0, got -0.001\n"
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_whole_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, run, tensorboard="true")
    assert main(["train", "--config", str(cfg)]) == 0
    (run / "training.png").write_bytes(b"old plot")  # as with plots: true (not needed here)
    assert {"summary.json", "leader", "training.png", "tensorboard"} <= set(os.listdir(run))
    # mark every directory of the old run, so any survivor would be visible
    for d in [p for p in run.rglob("*") if p.is_dir()]:
        (d / "old-run.marker").write_text("old")
    old = all_files(run)
    assert main(["train", "--config", str(cfg), "--overwrite", "--iterations", "1"]) == 0
    new = all_files(run)
    assert not any(name.endswith("old-run.marker") for name in new)
    # the new run writes tensorboard/ too, but no training.png (plots: false), one checkpoint
    assert "training.png" not in new and "checkpoints/iter_000002" not in new
    assert steps(run) == [0, 1]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one events file, the new run's
    assert old - new  # the old run's files went
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    capsys.readouterr()


def test_overwrite_refuses_a_directory_with_other_files(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, run)
    assert main(["train", "--config", str(cfg)]) == 0
    (run / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--config", str(cfg), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "also holds files that are not part of a run (notes.txt)" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_from_a_relative_path_after_cd_elsewhere(tmp_path, monkeypatch, capsys):
    (tmp_path / "a" / "b").mkdir(parents=True)
    cfg = write_config(tmp_path, "run")  # output_dir relative to the working directory
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(cfg)]) == 0
    monkeypatch.chdir(tmp_path / "a" / "b")
    rel = ["--config", "../../config.yaml", "--output_dir", "../../run"]
    assert main(["train", *rel, "--resume", "--iterations", "3"]) == 0
    assert steps(tmp_path / "run") == [0, 1, 2, 3]
    # the directory moved: found where it lives now
    os.replace(tmp_path / "run", tmp_path / "a" / "moved")
    assert (
        main(["train", *rel[:2], "--output_dir", "../moved", "--resume", "--iterations", "4"]) == 0
    )
    assert steps(tmp_path / "a" / "moved") == [0, 1, 2, 3, 4]
    # a real change is still refused, naming the key
    capsys.readouterr()
    args = [*rel[:2], "--output_dir", "../moved", "--resume", "--seed", "1"]
    assert main(["train", *args]) == 2
    assert "the config differs from the checkpointed run in ['seed']" in capsys.readouterr().err


def test_resume_compares_paths_resolved(tmp_path, monkeypatch):
    from align_cbrl.trainer.run_dir import resume_differences

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"prompt": "hi"}\n')
    saved = {
        "cwd": str(tmp_path),
        "config": {"output_dir": "run", "followers": [{"dataset": "data/p.jsonl"}]},
    }
    monkeypatch.chdir(tmp_path / "data")
    same = {"output_dir": "../run", "followers": [{"dataset": "p.jsonl"}]}
    other = {"output_dir": "../run", "followers": [{"dataset": "../p.jsonl"}]}
    assert resume_differences(saved, same) == []
    assert resume_differences(saved, other) == ["followers"]


def test_a_run_without_checkpoint_resumes_as_a_fresh_start(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, run)
    # what a crash before the first checkpoint leaves
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "objective_exact": 7.0}) + "\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (metrics.jsonl, tensorboard)" in err
    assert "It has no checkpoint yet, so --resume starts it again from iteration 0." in err
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    err = capsys.readouterr().err
    assert (
        f"--resume: no checkpoint under {run / 'checkpoints'} yet; starting the run from "
        "iteration 0 (the unfinished run's files are replaced)" in err
    )
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2] and records[0]["objective_exact"] != 7.0
    assert not (run / "tensorboard").exists()  # tensorboard: false in the new run


def test_tensorboard_does_not_repeat_steps_after_resume(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = write_config(tmp_path, run, tensorboard="true")
    assert main(["train", "--config", str(cfg), "--iterations", "3", "--save_every", "2"]) == 0
    # a kill after iteration 3 was logged but before its checkpoint was written
    import shutil

    shutil.rmtree(run / "checkpoints" / "iter_000003")
    assert main(["train", "--config", str(cfg), "--iterations", "3", "--resume"]) == 0
    assert len(list((run / "tensorboard").iterdir())) == 2  # one events file per session
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("objective_exact")]
    jsonl = [(r["step"], r["objective_exact"]) for r in read_jsonl(run / "metrics.jsonl")]
    assert [s for s, _ in tb] == [0, 1, 2, 3]
    assert [v for _, v in tb] == pytest.approx([v for _, v in jsonl], rel=1e-6)  # float32
    capsys.readouterr()


def test_tensorboard_missing(tmp_path, monkeypatch, capsys):
    import sys

    import align_cbrl.metrics as metrics

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert not metrics.tensorboard_available()
    cfg = write_config(tmp_path, tmp_path / "run")
    assert main(["train", "--config", str(cfg), "--tensorboard", "true"]) == 2
    assert capsys.readouterr().err == f"error: {metrics.TENSORBOARD_MISSING}\n"
    assert not (tmp_path / "run").exists()
    # auto: one line, once per process, says it is off and why
    monkeypatch.setattr(metrics, "_TB_NOTICE_SHOWN", False)
    metrics.MetricsLogger(tmp_path / "a", tensorboard="auto")
    metrics.MetricsLogger(tmp_path / "b", tensorboard="auto")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tensorboard: off (the tensorboard package is not installed")
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_model_building_progress_bars_follow_the_progress_setting(tmp_path, monkeypatch, capfd):
    from transformers.utils import logging as hf_logging

    from align_cbrl.config_parser import load_config
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    monkeypatch.setenv("ALIGN_CBRL_CACHE", str(tmp_path / "cache"))  # build, not reuse
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        seen = {}
        for progress in (False, True):
            over = {"output_dir": str(tmp_path / f"r{progress}"), "progress": progress}
            over.update({"followers.0.trainer": "grpo", "followers.0.trl.num_generations": 2})
            config = load_config(HPGDConfig, write_config(tmp_path), over)
            capfd.readouterr()
            HPGDTrainer(config).close()
            out, err = capfd.readouterr()
            seen[progress] = out + err
        assert "Loading weights" not in seen[False] and "Writing model shards" not in seen[False]
        assert "Loading weights" in seen[True]  # the bars exist; progress: false hides them
        assert hf_logging.is_progress_bar_enabled()  # and the setting is restored
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_training_plot_title_integer_ticks_and_exact_optimum(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from align_cbrl.config_parser import load_config
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    over = {"output_dir": str(tmp_path / "run"), "plots": True, "iterations": 3}
    trainer = HPGDTrainer(load_config(HPGDConfig, write_config(tmp_path), over))
    summary = trainer.train()
    F = [r["objective_exact"] for r in trainer.history]
    optimum = summary["exact_optimum"]
    assert optimum >= max(F[0], F[-1])  # ascent from x0 and from the final leader
    (fig,) = figures
    assert fig._suptitle.get_text() == (
        "run: leader estimator hpgd, 3 outer iterations x 0 follower steps; "
        "followers exact (exact, beta 0.5)"
    )
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    line = lines[f"exact F(x*) = {optimum:.3f}"]
    assert list(line.get_ydata()) == [optimum, optimum]
    assert list(lines["exact F(x)"].get_ydata()) == pytest.approx(F)
