"""Shared run helpers for the tests (not collected: no ``test_`` prefix): a small orchestrated
run config file for the CLI tests (the enumerable tiny-language task with one exact follower, so
nothing is trained), the tiny-language run config, train-to-the-end and metrics helpers of
the trainer tests, and the recipes' tiny GRPO config with a user reward function for the fault
tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

_EXACT_RUN = """
output_dir: {out}
task: tiny_language
iterations: {iterations}
follower_steps: 0
prompts_per_iteration: 4
num_samples: 4
save_every: 1
eval_samples: 4
tensorboard: {tensorboard}
plots: {plots}
progress: false
leader:
  spec: {{type: weights, init_weights: 0.0, cost_coef: 0.25, cost_kind: l2}}
  lr: 0.1
followers:
  - {{name: exact, trainer: exact, beta: 0.5}}
"""


def write_exact_run_config(
    path: Path, out: str | Path, *, iterations: int, tensorboard: str = "false", plots: str = "true"
) -> Path:
    """Write the run config to ``path`` and return ``path``."""
    text = _EXACT_RUN.format(out=out, iterations=iterations, tensorboard=tensorboard, plots=plots)
    path.write_text(text)
    return path


def tiny_run_config(
    tmp_path: Path, name: str, followers: list[dict[str, Any]], *, leader=None, **overrides: Any
):
    """An orchestrated run on the tiny-language task for the trainer tests: ``followers``
    (copied), the quickstart leader spec with Adam (``leader`` updates these settings),
    ``overrides`` replace the run's top-level keys. No plots, progress or TensorBoard."""
    from align_cbrl.config_parser import from_dict
    from align_cbrl.quickstart import QUICKSTART_CONFIG
    from align_cbrl.trainer import HPGDConfig

    data: dict[str, Any] = {
        "output_dir": str(tmp_path / name),
        "task": "tiny_language",
        "iterations": 4,
        "follower_steps": 0,
        "prompts_per_iteration": 4,
        "num_samples": 8,
        "save_every": 2,
        "eval_samples": 0,
        "plots": False,
        "progress": False,
        "tensorboard": False,
        "leader": {
            "spec": dict(QUICKSTART_CONFIG["leader"]["spec"]),
            "optimizer": "adam",
            "lr": 0.2,
            **(leader or {}),
        },
        "followers": copy.deepcopy(list(followers)),
    }
    data.update(overrides)
    return from_dict(HPGDConfig, data)


def run_trainer(config, **kw):
    """Train ``config`` to the end (closing the trainer); ``(trainer, summary)``."""
    from align_cbrl.trainer import HPGDTrainer

    trainer = HPGDTrainer(config, **kw)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary


def strip_times(records):
    """Metrics records without their wall-clock entries (``time/...``)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def train_until_killed(trainer, iteration: int, monkeypatch) -> None:
    """Run ``trainer.train()`` with a simulated kill when it starts ``iteration`` (its
    ``step`` raises), and check the kill surfaced."""
    import pytest

    real_step = trainer.step

    def step(t):
        if t == iteration:
            raise RuntimeError(f"simulated kill during iteration {iteration}")
        return real_step(t)

    monkeypatch.setattr(trainer, "step", step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer.train()


FLAKY = {"type": "callable", "name": "flaky", "target": "fault_rewards:flaky"}
"""The user reward component of the fault tests (tests/fault_rewards.py)."""


def task_with_flaky(repeat: int = 1) -> dict[str, Any]:
    """The tiny-language task (``TinyLanguageConfig`` fields) with :data:`FLAKY` among its
    components and every prompt listed ``repeat`` times."""
    import dataclasses

    from align_cbrl.trainer.builders import resolve_task

    task = dataclasses.asdict(resolve_task("tiny_language").config)
    task["components"] = [*task["components"], FLAKY]
    task["prompts"] = [p for p in task["prompts"] for _ in range(repeat)]
    return task


def write_flaky_plugin_config(directory: Path) -> Path:
    """``configs/recipes/plugin_grpo_tiny.yaml`` (recipes/plugin.py, TRL-style) with
    :data:`FLAKY` added to the tiny task's reward config and the 4 prompts listed 4 times (16
    rows): the fault tests' plugin runs (6 steps of one prompt per process on at most two
    processes) stay inside one epoch of TRL's sampler, the only span over which TRL's own resume
    keeps the prompt order (docs/trainer.md). Writes three files into ``directory``; returns the
    recipe config's path."""
    import json

    import yaml

    from align_cbrl.data import load_prompts

    root = Path(__file__).resolve().parent.parent
    rows = [r for r in load_prompts("tiny_language") for _ in range(4)]
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = yaml.safe_load((root / "configs" / "rewards" / "tiny_language.yaml").read_text())
    rewards["components"] = [*rewards["components"], FLAKY]
    reward_config = directory / "rewards.yaml"
    reward_config.write_text(yaml.safe_dump(rewards))
    data = yaml.safe_load((root / "configs" / "recipes" / "plugin_grpo_tiny.yaml").read_text())
    data.update(dataset=str(prompts), reward_config=str(reward_config))
    path = directory / "plugin_flaky.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
