"""The example configs and recipes outside a checkout (issue #28 item 9): the wheel ships them,
``--config NAME`` finds a shipped config, ``align-cbrl init DIR`` copies them out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from align_cbrl.cli import main
from align_cbrl.examples import config_names, copy_examples, examples_root, resolve_config
from tests.helpers import ROOT


def test_shipped_configs_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: names, not paths
    assert examples_root() == ROOT  # a checkout: its own configs/ and recipes/
    configs = ROOT / "configs"
    assert resolve_config("tiny_language_grpo") == configs / "tiny_language_grpo.yaml"
    assert resolve_config("two_followers.yaml") == configs / "two_followers.yaml"
    assert resolve_config("recipes/grpo_tiny") == configs / "recipes" / "grpo_tiny.yaml"
    assert resolve_config("configs/recipes/grpo_tiny.yaml") == configs / "recipes/grpo_tiny.yaml"
    assert "tiny_language_grpo" in config_names() and "real_model_prompts" not in config_names()
    with pytest.raises(FileNotFoundError, match=r"\(did you mean 'tiny_language_grpo'\?\)"):
        resolve_config("tiny_languag_grpo")
    (tmp_path / "tiny_language_grpo").write_text("iterations: 1\n")  # an existing file wins
    assert resolve_config("tiny_language_grpo") == Path("tiny_language_grpo")


def test_init_copies_configs_and_recipes_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["init", str(tmp_path / "work")]) == 0
    for part in ("configs", "recipes"):
        shipped = sorted(p.relative_to(ROOT / part) for p in (ROOT / part).rglob("*.*"))
        copied = sorted(
            p.relative_to(tmp_path / "work" / part) for p in (tmp_path / "work" / part).rglob("*.*")
        )
        assert copied == [p for p in shipped if "__pycache__" not in str(p)]
    assert "align-cbrl train --config configs/tiny_language_grpo.yaml" in capsys.readouterr().out
    assert main(["init", str(tmp_path / "work")]) == 2
    assert "already exist(s); nothing was copied" in capsys.readouterr().err
    with pytest.raises(NotADirectoryError):
        (tmp_path / "f").write_text("")
        copy_examples(tmp_path / "f")


def test_wheel_ships_the_examples(tmp_path):
    """Build the wheel from a copy of the sources (no build isolation: offline, and nothing is
    written into the checkout) and look inside."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("align_cbrl", "tabular_reference", "configs", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run([*cmd, "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("align_cbrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("configs", "recipes"):
        for p in (ROOT / part).rglob("*.*"):
            if "__pycache__" not in p.parts:
                assert f"align_cbrl/examples/{part}/{p.relative_to(ROOT / part)}" in names, p
    assert "align_cbrl/cli.py" in names and "tabular_reference/mdp.py" in names
