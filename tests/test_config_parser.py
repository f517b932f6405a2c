"""YAML + dotted CLI overrides into nested dataclasses, with errors that say what to fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from align_cbrl.config_parser import ConfigError, load_config, parse_overrides, to_dict


@dataclass
class Follower:
    name: str
    beta: float = 0.1
    trainer: Literal["grpo", "rloo"] = "grpo"


@dataclass
class Leader:
    lr: float = 0.1
    kind: str = "weights"


@dataclass
class Job:
    iterations: int = 3
    leader: Leader = field(default_factory=Leader)
    followers: list[Follower] = field(default_factory=list)
    seed: int | None = None


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ALIGN_TEST_VAR", raising=False)
    p = _write(
        tmp_path,
        "iterations: 5\nenv: {ALIGN_TEST_VAR: x}\nleader: {lr: 0.5}\n"
        "followers:\n  - {name: a}\n  - {name: b, beta: 0.3, trainer: rloo}\n",
    )
    path, ov = parse_overrides(
        ["--config", str(p), "--leader.lr", "0.05", "--followers.1.beta=1", "--seed", "7"]
    )
    cfg = load_config(Job, path, ov)
    assert cfg == Job(
        iterations=5,
        leader=Leader(lr=0.05),
        seed=7,
        followers=[Follower("a"), Follower("b", beta=1.0, trainer="rloo")],
    )
    import os

    assert os.environ["ALIGN_TEST_VAR"] == "x"
    assert to_dict(cfg)["followers"][1] == {"name": "b", "beta": 1.0, "trainer": "rloo"}


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("iteratons: 5\n", {}, r"unknown config key 'iteratons' \(did you mean 'iterations'\?\)"),
        ("leader: {lr: fast}\n", {}, r"leader\.lr: expected a number, got 'fast'"),
        (
            "followers: [{beta: 0.1}]\n",
            {},
            r"missing required config key\(s\) in followers\.0: name",
        ),
        ("followers: [{name: a, trainer: ppo}]\n", {}, r"'ppo' is not one of 'grpo', 'rloo'"),
        ("- just\n- a list\n", {}, "must contain a YAML mapping"),
        ("iterations: [1\n", {}, "not valid YAML"),
        ("followers: [{name: a}]\n", {"followers.3.beta": 1.0}, "index 3 out of range"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(Job, _write(tmp_path, text), overrides)


def test_missing_file_and_bad_argv(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--seed"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["seed=3"])


def test_config_directory_is_named_as_such(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("iterations: 1\n")
    with pytest.raises(ConfigError, match=r"^--config .* is a directory; give a YAML file"):
        load_config(Job, tmp_path)


@dataclass
class Flags:
    progress: bool = True
    tensorboard: bool | str = "auto"
    iterations: int = 3
    leader: Leader = field(default_factory=Leader)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--no-progress"], {"progress": False}),
        (["--progress"], {"progress": True}),
        (["--progress", "false"], {"progress": False}),
        (["--progress=no"], {"progress": False}),
        (["--no-progress", "--iterations", "5"], {"progress": False, "iterations": 5}),
        (["--progress", "--no-tensorboard"], {"progress": True, "tensorboard": False}),
        (["--tensorboard", "auto"], {"tensorboard": "auto"}),
        (["--leader.lr", "-0.5"], {"leader.lr": -0.5}),
    ],
)
def test_boolean_flags(argv, expected) -> None:
    assert parse_overrides(argv, Flags) == (None, expected)


def test_boolean_flags_need_the_config_class_and_a_bool_field() -> None:
    with pytest.raises(ConfigError, match="--iterations needs a value"):
        parse_overrides(["--iterations"], Flags)
    with pytest.raises(ConfigError, match="unexpected argument 'x'"):
        parse_overrides(["--no-progress", "x"], Flags)
    with pytest.raises(ConfigError, match="--progress needs a value"):
        parse_overrides(["--progress"])  # no class: every key takes a value


def test_follower_trl_settings_live_in_the_trl_mapping(tmp_path) -> None:
    """TRL settings of a follower go under ``trl``; the flat keys and ``trl_kwargs`` of
    pre-1.0 configs, and the old ``zero-order`` spelling, are the usual one-line errors."""
    from align_cbrl.trainer.config import HPGDConfig

    today = """
followers:
  - {name: f, trainer: grpo, beta: 0.5, prompts_per_step: 3,
     trl: {learning_rate: 0.02, num_generations: 8, scale_rewards: none, warmup_steps: 1}}
  - {name: g, trainer: rloo, beta: 0.5, trl: {learning_rate: 0.01, num_generations: 4}}
"""
    new = load_config(HPGDConfig, _write(tmp_path, today))
    assert new.followers[1].trl == {"learning_rate": 0.01, "num_generations": 4}
    flat = "followers:\n  - {name: f, beta: 0.5, learning_rate: 0.02}\n"
    keys = "; valid keys: allow_reward_scaling, beta, .*, trainer, trl, weight$"
    with pytest.raises(
        ConfigError, match=rf"^unknown config key 'followers\.0\.learning_rate'{keys}"
    ):
        load_config(HPGDConfig, _write(tmp_path, flat))
    with pytest.raises(ConfigError, match=rf"^unknown config key 'followers\.0\.trl_kwargs'{keys}"):
        load_config(HPGDConfig, _write(tmp_path, today), {"followers.0.trl_kwargs": {}})
    with pytest.raises(ConfigError, match=r"unknown config key 'leader\.zero_order_radius' \(did"):
        load_config(HPGDConfig, None, {"leader.zero_order_radius": 0.5})
    with pytest.raises(ConfigError, match=r"'zero-order' is not one of .* \(did you mean 'zero_"):
        load_config(HPGDConfig, None, {"leader.estimator": "zero-order"})
    dotted = load_config(HPGDConfig, _write(tmp_path, today), {"followers.0.trl.temperature": 0.7})
    assert dotted.followers[0].trl["temperature"] == 0.7
    # the section's defaults sit under what the YAML gives
    assert load_config(HPGDConfig, None, {}).followers[0].trl == {
        "learning_rate": 0.01,
        "num_generations": 8,
    }
