"""Atomic I/O, results directories and the leader optimiser."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from align_cbrl.utils.io import (
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_json,
    save_safetensors,
)
from tabular_reference.common.optim import clip_global_norm, sgd_ascent
from tabular_reference.common.plots import mean_se, plot_learning_curves
from tabular_reference.common.results import ResultsDir


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"F": 1.0})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert read_json(path) == {"F": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_json_is_strict_and_handles_numpy(tmp_path) -> None:
    path = atomic_write_json(
        tmp_path / "a.json", {"x": np.float64(2.5), "nan": float("nan"), "arr": np.arange(3)}
    )
    assert json.loads(path.read_text()) == {"x": 2.5, "nan": None, "arr": [0, 1, 2]}
    atomic_write_text(tmp_path / "broken.json", "{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        read_json(tmp_path / "broken.json")


def test_safetensors_roundtrip(tmp_path) -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "b": np.ones(4, np.float32)}
    save_safetensors(tmp_path / "p.safetensors", tensors, {"algo": "hpgd"})
    back = load_safetensors(tmp_path / "p.safetensors")
    assert torch.equal(back["a"], tensors["a"])
    assert torch.equal(back["b"], torch.ones(4))
    with pytest.raises(FileNotFoundError, match="no safetensors file"):
        load_safetensors(tmp_path / "missing.safetensors")


def test_clip_and_sgd_match_hand_computation() -> None:
    g = np.array([[3.0, 4.0], [0.3, 0.4]])
    clipped = clip_global_norm(g, 1.0)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.3, 0.4]])
    np.testing.assert_allclose(
        clip_global_norm(torch.as_tensor(g), 1.0).numpy(), clipped, rtol=0, atol=1e-15
    )
    x = np.zeros((2, 2))
    np.testing.assert_allclose(sgd_ascent(x, g, np.array([0.1, 1.0])), [[0.06, 0.08], [0.3, 0.4]])
    with pytest.raises(ValueError, match="non-finite"):
        sgd_ascent(x, np.array([[np.nan, 0.0], [0.0, 0.0]]), 0.1)


def test_mean_se_and_results_dir(tmp_path) -> None:
    m, se = mean_se(np.array([[1.0, 2.0], [3.0, 6.0]]))
    np.testing.assert_allclose(m, [2.0, 4.0])
    np.testing.assert_allclose(se, [1.0, 2.0])  # std(ddof=1)/sqrt(2)
    rd = ResultsDir(tmp_path / "run")
    rd.write_config({"lam": 0.001})
    rd.write_csv("metrics.csv", ["iter", "F"], [[0, 0.5], [1, 0.6]])
    rd.save_arrays("params", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="row has 1 fields"):
        rd.write_csv("metrics.csv", ["iter", "F"], [[0]])
    assert (tmp_path / "run" / "metrics.csv").read_text() == "iter,F\n0,0.5\n1,0.6\n"
    png = plot_learning_curves(
        {"hpgd": (np.arange(5), np.random.default_rng(0).random((3, 5)))},
        tmp_path / "run" / "curve.png",
        "F",
        "test",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "run")) == [
        "config.json",
        "curve.png",
        "metrics.csv",
        "params.safetensors",
    ]


def test_replace_directory_swaps_whole_directories(tmp_path) -> None:
    from align_cbrl.utils.io import replace_directory

    final = tmp_path / "ckpt"
    for version in ("v1", "v2"):
        tmp = tmp_path / f".ckpt.{version}.tmp"
        tmp.mkdir()
        (tmp / "state.json").write_text(version)
        if version == "v1":
            (tmp / "only_in_v1.txt").write_text("x")
        replace_directory(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["state.json"]  # nothing of v1 left
    assert (final / "state.json").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or .old leftovers


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_outputs_honour_the_umask(tmp_path, umask) -> None:
    """Files written atomically get 0666 and directories 0777 less the umask (0644 / 0755 under
    022), like ``open`` / ``mkdir``: the leader, a checkpoint directory, JSON and the tabular
    results; tempfile's own 0600 / 0700 must not leak through."""
    from align_cbrl.leaders import WeightLeader
    from align_cbrl.utils.io import atomic_directory, atomic_write_json, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        WeightLeader(["n"], contexts=["q"]).save_pretrained(tmp_path / "leader")
        with atomic_directory(tmp_path / "hpgd_leader") as tmp:
            save_safetensors(tmp / "optimizer.safetensors", {"x": torch.zeros(2)})
        rd = ResultsDir(tmp_path / "tabular")
        rd.write_csv("metrics.csv", ["iter"], [[0]])
        rd.save_arrays("params", {"x": np.zeros(3)})
    finally:
        os.umask(old)
    files = [
        tmp_path / "summary.json",
        *(tmp_path / "leader").iterdir(),
        tmp_path / "hpgd_leader" / "optimizer.safetensors",
        tmp_path / "tabular" / "metrics.csv",
        tmp_path / "tabular" / "params.safetensors",
    ]
    assert len(files) >= 6  # leader/: config.json, model.safetensors (+ model card)
    for f in files:
        assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~umask), f
    for d in (tmp_path / "leader", tmp_path / "hpgd_leader"):
        assert oct(d.stat().st_mode & 0o777) == oct(0o777 & ~umask), d
