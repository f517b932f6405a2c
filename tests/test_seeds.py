"""One run seed reseeds everything random: followers derive their seed from the run's."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")

from align_cbrl.metrics import read_jsonl
from tests.helpers import run_trainer, strip_times, tiny_run_config

GRPO = {
    "name": "f0",
    "trainer": "grpo",
    "beta": 0.5,
    "prompts_per_step": 2,
    "trl": {"learning_rate": 1e-2, "num_generations": 4},
}


def _config(tmp_path, name, seed, follower_seed=None, followers=1):
    fols = []
    for i in range(followers):
        f = dict(GRPO, name=f"f{i}")
        if follower_seed is not None:
            f["seed"] = follower_seed
        fols.append(f)
    # estimator fixed: the leader never moves, so the follower's training is all that differs
    return tiny_run_config(
        tmp_path,
        name,
        fols,
        leader={"estimator": "fixed"},
        seed=seed,
        iterations=2,
        follower_steps=2,
        num_samples=4,
        save_every=0,
    )


def _follower_logs(tmp_path, name):
    """Per outer iteration (step 0 is the untrained start): the follower's training metrics
    and the exact objective of the trained follower."""
    keep = ("f0/train_reward", "f0/train_kl", "f0/objective_exact")
    records = read_jsonl(tmp_path / name / "metrics.jsonl")[1:]
    return [{k: r[k] for k in keep} for r in records]


def test_follower_seed_defaults_to_run_seed_plus_index(tmp_path):
    cfg = _config(tmp_path, "a", seed=7, followers=2)
    assert [f.seed for f in cfg.followers] == [None, None]
    assert [cfg.follower_seed(i) for i in range(2)] == [7, 8]
    assert [f.seed for f in cfg.seeded_followers()] == [7, 8]
    assert cfg.seeds() == {"run": 7, "followers": {"f0": 7, "f1": 8}}
    explicit = _config(tmp_path, "b", seed=7, follower_seed=3, followers=2)
    assert explicit.seeds() == {"run": 7, "followers": {"f0": 3, "f1": 3}}


def test_run_seed_changes_the_followers_training_unless_they_pin_their_own(tmp_path):
    s0, _ = run_trainer(_config(tmp_path, "s0", seed=0))
    s1, summary = run_trainer(_config(tmp_path, "s1", seed=1))
    pinned, _ = run_trainer(_config(tmp_path, "pinned", seed=1, follower_seed=0))
    logs = {n: _follower_logs(tmp_path, n) for n in ("s0", "s1", "pinned")}
    assert len(logs["s0"]) == 2 and logs["s0"][0]["f0/train_kl"] > 0  # it trained
    # a new run seed retrains the follower from another LoRA/model init, prompt order, samples
    assert logs["s1"] != logs["s0"]
    params = lambda t: list(t.bundles[0].follower.model.parameters())  # noqa: E731
    assert not all(torch.equal(p, q) for p, q in zip(params(s0), params(s1), strict=True))
    # a follower that sets its own seed keeps it whatever the run's seed
    assert logs["pinned"] == logs["s0"]
    assert all(torch.equal(p, q) for p, q in zip(params(s0), params(pinned), strict=True))
    assert summary["seeds"] == {"run": 1, "followers": {"f0": 1}}
    on_disk = json.loads((tmp_path / "s1" / "summary.json").read_text())
    assert on_disk["seeds"] == {"run": 1, "followers": {"f0": 1}}
    # and the leader's own sampling follows the run seed (fixed leader: same parameters)
    assert strip_times(read_jsonl(tmp_path / "s0" / "metrics.jsonl")) != strip_times(
        read_jsonl(tmp_path / "s1" / "metrics.jsonl")
    )
