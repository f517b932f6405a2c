"""HPGDTrainer / HPGDReward / leader updates: exact values, resume, baselines, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("trl")

from align_cbrl.config_parser import ConfigError
from align_cbrl.estimators.grouped import grouped_hpgd_gradient
from align_cbrl.followers.base import RewardFunctionError
from align_cbrl.metrics import read_jsonl
from align_cbrl.quickstart import QUICKSTART_CONFIG
from align_cbrl.reference.tiny_language import exact_objective, optimize_exact
from align_cbrl.rewards.base import ComponentOutputError, RewardComponent
from align_cbrl.rewards.registry import register_component
from align_cbrl.trainer import (
    GroupBuffer,
    GroupedSamples,
    HPGDReward,
    HPGDTrainer,
    RunExistsError,
    leader_surrogate,
    leader_update,
)
from align_cbrl.trainer.builders import resolve_task
from align_cbrl.trainer.estimation import Direction
from align_cbrl.trainer.stats import LeaderStats
from tests.helpers import (
    exact_follower,
    run_trainer,
    strip_times,
    tiny_run_config,
    train_until_killed,
)

LEADER = dict(QUICKSTART_CONFIG["leader"]["spec"])  # bounded sigmoid weights, l2 cost 0.25


def make_config(tmp_path, name="run", follower=None, **kw):
    fol = exact_follower("f0")
    fol.update(follower or {})
    return tiny_run_config(tmp_path, name, [fol], **kw)


def run(config, **kw):
    return run_trainer(config, **kw)


# --------------------------------------------------------------------------- reward function
def test_reward_function_is_base_mix_plus_incentive_and_logs_components():
    task = resolve_task("tiny_language")
    leader = task.make_leader(init_weights={"n_words": -0.5, "count_b": 1.5}, cost_coef=0.2)
    reward = HPGDReward(task.bilevel(leader), task.components, name="shaped")
    buffer = GroupBuffer()
    reward.subscribe(buffer)
    prompts = ["a b", "a b", "b c", "b c"]
    completions = ["a a", "", "b", "d b"]
    cats = ["concise", "concise", "b_topic", "b_topic"]
    logged = {}
    out = reward(
        prompts,
        completions,
        category=cats,
        completion_ids=[[0]] * 4,
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    # follower mix 0.5 n_words + 0.5 count_a; incentive -0.5 n_words + 1.5 count_b (all rows)
    n_words = [2, 0, 1, 2]
    count_a = [2, 0, 0, 0]
    count_b = [0, 0, 1, 1]
    expected = [
        0.5 * n + 0.5 * a - 0.5 * n + 1.5 * b
        for n, a, b in zip(n_words, count_a, count_b, strict=True)
    ]
    assert out == pytest.approx(expected, abs=1e-12)
    assert reward.__name__ == "shaped"
    assert logged["shaped/n_words"] == pytest.approx(sum(n_words) / 4)
    assert logged["shaped/count_b"] == pytest.approx(0.5)
    incentive = [-0.5 * n + 1.5 * b for n, b in zip(n_words, count_b, strict=True)]
    assert logged["shaped/incentive"] == pytest.approx(sum(incentive) / 4)
    # the subscribed buffer gets the context column but none of TRL's extras
    assert len(buffer) == 1 and sorted(buffer.batches[0].columns) == ["category"]
    groups = buffer.take(2, beta=0.5, follower="f")
    assert groups.num_groups == 2 and len(buffer) == 0


def test_reward_function_errors():
    task = resolve_task("tiny_language")
    leader = task.make_leader()
    reward = HPGDReward(task.bilevel(leader), task.components)
    with pytest.raises(RewardFunctionError, match="context_column='topic'"):
        reward(["a b"], ["a"], topic=["x"])
    with torch.no_grad():
        leader.theta.fill_(float("nan"))
    with pytest.raises(RewardFunctionError, match="not finite"):
        reward(["a b"], ["a"], category=["concise"])
    with pytest.raises(ValueError, match="must match the leader's component_names"):
        HPGDReward(task.bilevel(leader), task.components[::-1])
    reward2 = HPGDReward(task.bilevel(task.make_leader()), task.components)
    buffer = GroupBuffer()
    reward2.subscribe(buffer)
    reward2(["a b", "b c"], ["a", "b"], category=["concise", "b_topic"])
    with pytest.raises(ValueError, match="mixes prompts"):
        buffer.take(2, beta=0.5, follower="f")


# --------------------------------------------------------------------------- estimation
def test_surrogate_gradient_equals_covariance_formula_over_followers():
    task = resolve_task("tiny_language")
    leader = task.make_leader(init_weights=0.3, cost_coef=0.5, cost_kind="l2")
    bilevel = task.bilevel(leader)
    g = torch.Generator().manual_seed(0)
    batches, expected = [], torch.zeros(leader.flat_parameters().numel(), dtype=torch.float64)
    x0 = leader.flat_parameters()
    for name, beta, prompt_ids in (("f1", 0.5, [0, 2, 3]), ("f2", 2.0, [1, 1])):
        N = 5
        comp = torch.randint(task.num_completions, (len(prompt_ids), N), generator=g)
        prompts = [task.prompts[p] for p in prompt_ids for _ in range(N)]
        ctx = [task.contexts[p] for p in prompt_ids for _ in range(N)]
        scores = task.scores[torch.tensor(prompt_ids)[:, None], comp].reshape(-1, 4)
        batches.append(
            GroupedSamples(name, beta, N, prompts, [""] * len(prompts), {"category": ctx}, scores)
        )

        def f(x, scores=scores, ctx=ctx):
            out = torch.func.functional_call(bilevel, leader.unflatten(x, "leader."), (scores, ctx))
            return out.r, out.rbar

        d_r, d_rbar = torch.autograd.functional.jacobian(f, x0)
        _, rbar = f(x0)
        G = len(prompt_ids)
        # the followers' weighted mean (equal weights), each follower's mean over its groups
        expected += 0.5 * grouped_hpgd_gradient(
            d_r.reshape(G, N, -1), d_rbar.reshape(G, N, -1), rbar.reshape(G, N), beta
        )
    surrogate, stats = leader_surrogate(bilevel, batches, "hpgd", "category")
    (grad,) = torch.autograd.grad(surrogate, leader.theta)
    torch.testing.assert_close(grad.reshape(-1), expected, rtol=1e-10, atol=1e-12)
    assert stats.objective_estimate == pytest.approx(
        0.5 * stats.followers["f1"].leader_reward + 0.5 * stats.followers["f2"].leader_reward
    )


def test_leader_step_clips_and_reports_unclipped_norm():
    w = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        w.weight.zero_()
    opt = torch.optim.SGD(w.parameters(), lr=0.5)
    direction = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)  # norm 5
    norm = leader_update(w, opt, Direction(LeaderStats(), flat=direction), 1.0).grad_norm
    assert norm == pytest.approx(5.0)
    # ascent along the clipped direction: x = 0.5 * (3, 0, 4) / 5
    torch.testing.assert_close(w.weight.reshape(-1), 0.5 * direction / 5.0)
    with pytest.raises(FloatingPointError, match="not updated"):
        leader_update(w, opt, Direction(LeaderStats(), flat=torch.full((3,), math.nan)), 1.0)
    torch.testing.assert_close(w.weight.reshape(-1), 0.5 * direction / 5.0)


# --------------------------------------------------------------------------- orchestrated runs
def test_hpgd_with_exact_follower_reaches_the_exact_optimum(tmp_path):
    config = make_config(tmp_path, iterations=30, save_every=0)
    trainer, summary = run(config)
    b = trainer.bundles[0]
    task = trainer.task.with_log_ref(b.log_ref)
    F0 = trainer.history[0]["objective_exact"]
    fresh = HPGDTrainer(make_config(tmp_path, "fresh"))  # leader at x0
    assert abs(float(exact_objective(task, fresh.bilevel, 0.5).detach()) - F0) < 1e-12
    opt = optimize_exact(task, fresh.bilevel, 0.5, steps=3000, lr=2.0)
    F = summary["eval/objective_exact"]
    F_direct = float(exact_objective(task, trainer.bilevel, 0.5).detach())
    assert abs(F - F_direct) < 1e-12
    assert (F - F0) / (opt.F - F0) >= 0.9
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(31))
    assert {"leader/grad_norm", "f0/base_reward", "f0/incentive", "f0/components/count_b"} <= set(
        records[-1]
    )
    assert (tmp_path / "run" / "leader" / "model.safetensors").is_file()


def test_fixed_and_naive_baselines(tmp_path):
    # fixed: the leader never moves, F stays exactly F(x0)
    trainer, _ = run(make_config(tmp_path, "fixed", leader={"estimator": "fixed"}))
    x0 = HPGDTrainer(make_config(tmp_path, "x0")).leader.flat_parameters()
    assert torch.equal(trainer.leader.flat_parameters(), x0)
    Fs = {r["objective_exact"] for r in trainer.history}
    assert len(Fs) == 1
    # naive from a non-zero incentive: its gradient is d E[rbar] = -d cost only, so it shrinks
    # every weight towards 0 (sigmoid midpoint)
    spec = dict(LEADER, init_weights=1.0)
    trainer, _ = run(
        make_config(tmp_path, "naive", leader={"estimator": "naive", "spec": spec, "lr": 0.05})
    )
    w = trainer.leader.weight_table()
    assert bool((w.abs() < 1.0).all()) and bool((w > 0).all())


def test_zero_order_step_is_residual_feedback(tmp_path):
    config = make_config(
        tmp_path,
        "zo",
        iterations=2,
        save_every=0,
        leader={
            "estimator": "zero_order",
            "optimizer": "sgd",
            "lr": 0.1,
            "max_grad_norm": 0.0,
            "zero_order_u": 0.5,
        },
    )
    trainer, _ = run(config)
    h = trainer.history
    assert h[1]["leader/grad_norm"] == 0.0  # no baseline yet at t = 1
    gen = torch.Generator().manual_seed(config.seed + 1)
    x0 = HPGDTrainer(make_config(tmp_path, "x0")).leader.flat_parameters()
    torch.randn(x0.shape, generator=gen, dtype=x0.dtype)  # z_1
    z2 = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    g = (h[2]["objective_estimate"] - h[1]["objective_estimate"]) * z2 / 0.5
    torch.testing.assert_close(trainer.leader.flat_parameters(), x0 + 0.1 * g)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, monkeypatch):
    full, _ = run(make_config(tmp_path, "full", iterations=5, save_every=2))
    crashing = HPGDTrainer(make_config(tmp_path, "crash", iterations=5, save_every=2))
    train_until_killed(crashing, 4, monkeypatch)
    out = tmp_path / "crash"
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["iter_000002"]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2, 3]
    resumed, _ = run(make_config(tmp_path, "crash", iterations=5, save_every=2), resume=True)
    assert torch.equal(resumed.leader.flat_parameters(), full.leader.flat_parameters())
    assert strip_times(read_jsonl(out / "metrics.jsonl")) == strip_times(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )


def test_resume_with_grpo_follower_is_bit_identical(tmp_path):
    fol = {
        "trainer": "grpo",
        "trl": {"learning_rate": 1e-2, "num_generations": 4},
        "prompts_per_step": 2,
    }
    kw = dict(follower=fol, iterations=3, follower_steps=2, num_samples=4, save_every=1)
    full, _ = run(make_config(tmp_path, "full", **kw))
    run(make_config(tmp_path, "part", **dict(kw, iterations=2)))
    resumed, _ = run(make_config(tmp_path, "part", **kw), resume=True)
    assert torch.equal(resumed.leader.flat_parameters(), full.leader.flat_parameters())
    a = resumed.bundles[0].follower.model.parameters()
    b = full.bundles[0].follower.model.parameters()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert strip_times(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == strip_times(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )
    # the run really moved: the follower trained and the leader changed
    assert full.history[-1]["f0/train_kl"] > 0
    assert not torch.equal(
        full.leader.flat_parameters(),
        HPGDTrainer(make_config(tmp_path, "x0")).leader.flat_parameters(),
    )


# --------------------------------------------------------------------------- errors
def test_existing_run_is_never_touched(tmp_path):
    run(make_config(tmp_path, iterations=2))
    out = tmp_path / "run"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunExistsError, match="--resume"):
        HPGDTrainer(make_config(tmp_path, iterations=2))
    with pytest.raises(ValueError, match="differs from the checkpointed run"):
        HPGDTrainer(make_config(tmp_path, iterations=3, seed=5), resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_beta_zero_follower_is_refused(tmp_path, beta):
    with pytest.raises(ConfigError, match="beta > 0"):
        make_config(tmp_path, follower={"beta": beta})


def test_bad_inputs_are_reported_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        HPGDTrainer(make_config(tmp_path, follower={"model": str(tmp_path / "nope")}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rewards = {"components": [{"type": "length", "name": "n"}], "leader": {"weights": {"n": -1}}}
    with pytest.raises(ValueError, match=r"dataset .* is empty"):
        HPGDTrainer(
            make_config(
                tmp_path,
                task=None,
                rewards=rewards,
                follower={"trainer": "grpo", "model": "tiny-bpe", "dataset": str(empty)},
            )
        )
    with pytest.raises(ValueError, match="unknown reward component type 'nope'"):
        HPGDTrainer(
            make_config(
                tmp_path,
                task=None,
                rewards={"components": [{"type": "nope", "name": "x"}], "leader": {}},
                follower={"trainer": "grpo", "model": "tiny-bpe", "dataset": "quickstart"},
            )
        )
    assert not (tmp_path / "run").exists()


class _Poisonable(RewardComponent):
    """Counts words; returns NaN once ``poisoned`` is set (a reward model going bad)."""

    kind = "test_poisonable"
    poisoned = False

    def score(self, prompts, completions, contexts):
        bad = type(self).poisoned
        return torch.tensor(
            [math.nan if bad else float(len(c.split())) for c in completions], dtype=torch.float64
        )


def test_nan_reward_stops_the_run_and_keeps_what_was_written(tmp_path, monkeypatch):
    register_component("test_poisonable", _Poisonable, overwrite=True)
    monkeypatch.setattr(_Poisonable, "poisoned", False)
    task = dict(resolve_task("tiny_language").config.__dict__)
    task["components"] = [*task["components"], {"type": "test_poisonable", "name": "rm"}]
    trainer = HPGDTrainer(make_config(tmp_path, task=task, iterations=5, save_every=1))
    real_step = trainer.step

    def step(t):
        if t == 3:
            monkeypatch.setattr(_Poisonable, "poisoned", True)
        return real_step(t)

    monkeypatch.setattr(trainer, "step", step)
    with pytest.raises(ComponentOutputError, match="'rm'"):
        trainer.train()
    out = tmp_path / "run"
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "iter_000001",
        "iter_000002",
    ]
    state = json.loads((out / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert state["iteration"] == 2
