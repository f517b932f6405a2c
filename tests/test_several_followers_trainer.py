"""Orchestrated runs with two followers that differ in model (two tiny LMs: two reference
policies), temperature ``beta``, prompts (context subsets) and group count, checked against the
exact two-follower reference (``docs/theory.md §1``, ``align_cbrl.reference.several_followers``):
the leader objective is the weighted mean ``F = sum_f w_f F_f``, the run reaches >= 90% of the
exact optimal improvement, checkpoints resume, and bad follower settings fail before training."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from align_cbrl.config_parser import ConfigError
from align_cbrl.metrics import read_jsonl
from align_cbrl.quickstart import QUICKSTART_CONFIG
from align_cbrl.reference.several_followers import (
    combined_objective,
    follower_objectives,
    optimize_combined,
)
from align_cbrl.trainer import GroupedSamples, HPGDConfig, HPGDTrainer, leader_surrogate
from align_cbrl.trainer.builders import resolve_task
from align_cbrl.trainer.exact_reference import exact_followers
from tests.helpers import ROOT, exact_follower, run_trainer, strip_times, tiny_run_config

LEADER = dict(QUICKSTART_CONFIG["leader"]["spec"])  # bounded sigmoid weights, l2 cost 0.25

SHORT = exact_follower(
    "short", 0.5, model_seed=0, contexts=["concise", "b_topic"], weight=1.0, prompts_per_iteration=2
)
LONG = exact_follower(
    "long", 1.0, model_seed=1, contexts=["b_topic", "no_d"], weight=2.0, prompts_per_iteration=6
)
LONG["seed"] = 1


def make_config(tmp_path, name="run", followers=None, **kw):
    return tiny_run_config(
        tmp_path, name, followers if followers is not None else [SHORT, LONG], **kw
    )


def run(config, **kw):
    return run_trainer(config, **kw)


def test_two_different_followers_reach_90_percent_of_the_exact_combined_optimum(tmp_path):
    trainer, _ = run(make_config(tmp_path, iterations=30, save_every=0))
    specs = exact_followers(trainer.task, trainer.bundles)
    assert specs is not None and [s.name for s in specs] == ["short", "long"]
    short, long = specs
    # the followers differ: reference policy (model seed), beta, context distribution
    assert not torch.allclose(short.task.log_ref, long.task.log_ref)
    assert (short.beta, long.beta) == (0.5, 1.0)
    assert short.task.prompt_probs.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    assert long.task.prompt_probs.tolist() == pytest.approx([0, 0, 1 / 2, 1 / 2])
    # metrics: per follower and combined, F = (1/3) F_short + (2/3) F_long
    last = trainer.history[-1]
    assert last["short/weight"] == pytest.approx(1 / 3) and last["long/weight"] == pytest.approx(
        2 / 3
    )
    F_short, F_long = (float(F.detach()) for F in follower_objectives(specs, trainer.bilevel))
    assert last["short/objective_exact"] == pytest.approx(F_short, abs=1e-12)
    assert last["long/objective_exact"] == pytest.approx(F_long, abs=1e-12)
    assert last["objective_exact"] == pytest.approx(F_short / 3 + 2 * F_long / 3, abs=1e-12)
    assert last["objective_exact"] == pytest.approx(
        float(combined_objective(specs, trainer.bilevel).detach()), abs=1e-12
    )
    assert last["leader/groups"] == 8.0  # 2 + 6 groups, each follower weighted by w_f only
    assert last["objective_estimate"] == pytest.approx(
        last["short/leader_reward"] / 3 + 2 * last["long/leader_reward"] / 3
    )
    # >= 90% of the exact optimal improvement F(x*) - F(x0), x* by exact ascent from x0
    fresh = HPGDTrainer(make_config(tmp_path, "x0"))
    F0 = float(combined_objective(specs, fresh.bilevel).detach())
    assert trainer.history[0]["objective_exact"] == pytest.approx(F0, abs=1e-12)
    opt = optimize_combined(specs, fresh.bilevel, steps=3000, lr=2.0)
    F = trainer.history[-1]["objective_exact"]
    ratio = (F - F0) / (opt.F - F0)
    print(f"two followers: F0 {F0:.4f} F {F:.4f} F* {opt.F:.4f} improvement ratio {ratio:.3f}")
    assert ratio >= 0.9


def test_each_follower_samples_only_its_own_contexts(tmp_path):
    trainer = HPGDTrainer(make_config(tmp_path))
    batches = []
    for i, b in enumerate(trainer.bundles):
        idx = trainer.sampler.draw_prompts(i, 50).tolist()
        batches.append({b.rows[j]["category"] for j in idx})
    assert batches == [{"concise", "b_topic"}, {"b_topic", "no_d"}]
    assert [b.prompt_index for b in trainer.bundles] == [[0, 1, 2], [2, 3]]


def test_more_groups_do_not_mean_more_weight():
    """Repeating one follower's groups leaves the combined surrogate's gradient unchanged."""
    task = resolve_task("tiny_language")
    leader = task.make_leader(init_weights=0.3, cost_coef=0.5, cost_kind="l2")
    bilevel = task.bilevel(leader)
    g = torch.Generator().manual_seed(0)

    def batch(name, beta, prompt_ids, weight, reps=1):
        N = 4
        comp = torch.randint(task.num_completions, (len(prompt_ids), N), generator=g)
        prompt_ids, comp = prompt_ids * reps, comp.repeat(reps, 1)
        prompts = [task.prompts[p] for p in prompt_ids for _ in range(N)]
        ctx = [task.contexts[p] for p in prompt_ids for _ in range(N)]
        scores = task.scores[torch.tensor(prompt_ids)[:, None], comp].reshape(
            -1, task.scores.shape[-1]
        )
        return GroupedSamples(
            name,
            beta,
            N,
            prompts,
            [""] * len(prompts),
            {"category": ctx},
            scores,
            objective_weight=weight,
        )

    def grad(batches):
        sur, stats = leader_surrogate(bilevel, batches, "hpgd", "category")
        return torch.autograd.grad(sur, leader.theta)[0], stats

    state = g.get_state()
    a, stats_a = grad([batch("f1", 0.5, [0, 1], 1.0), batch("f2", 2.0, [2, 3], 3.0)])
    g.set_state(state)
    b, stats_b = grad([batch("f1", 0.5, [0, 1], 1.0), batch("f2", 2.0, [2, 3], 3.0, reps=5)])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert stats_b.groups == 12 and stats_b.followers["f2"].weight == 0.75
    assert stats_a.objective_estimate == pytest.approx(stats_b.objective_estimate)


def test_two_follower_run_resumes_bit_identically(tmp_path):
    full, _ = run(make_config(tmp_path, "full", iterations=4, save_every=2))
    run(make_config(tmp_path, "part", iterations=2, save_every=2))
    resumed, _ = run(make_config(tmp_path, "part", iterations=4, save_every=2), resume=True)
    assert torch.equal(resumed.leader.flat_parameters(), full.leader.flat_parameters())
    assert strip_times(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == strip_times(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )
    # the weights come from the config: a changed weight is refused on resume
    with pytest.raises(ValueError, match="differs from the checkpointed run in \\['followers'\\]"):
        changed = [SHORT, dict(LONG, weight=5.0)]
        HPGDTrainer(make_config(tmp_path, "part", changed, iterations=6), resume=True)


def test_checkpoint_written_before_the_weight_field_still_resumes(tmp_path):
    run(make_config(tmp_path, "old", [dict(SHORT, contexts=None, prompts_per_iteration=None)]))
    state_path = next((tmp_path / "old" / "checkpoints").iterdir()) / "state.json"
    state = json.loads(state_path.read_text())
    for f in state["config"]["followers"]:
        for key in ("weight", "contexts", "prompts_per_iteration"):
            del f[key]
    state_path.write_text(json.dumps(state))
    single = [dict(SHORT, contexts=None, prompts_per_iteration=None)]
    run(make_config(tmp_path, "old", single, iterations=6), resume=True)


@pytest.mark.parametrize(
    "followers,leader,match",
    [
        ([SHORT, dict(LONG, weight=-1.0)], None, r"weight must be a finite number >= 0"),
        ([SHORT, dict(LONG, weight=float("nan"))], None, r"weight must be a finite number >= 0"),
        ([dict(SHORT, weight=0.0), dict(LONG, weight=0.0)], None, r"sum to zero"),
        ([SHORT, dict(LONG, name="short")], None, r"follower names must be unique"),
        (
            [SHORT, dict(LONG, contexts=["no_d"])],
            {"spec": dict(LEADER, contexts=["concise", "b_topic"])},
            r"followers\.1 \('long'\) shares no context with the leader",
        ),
        (
            [SHORT, LONG],
            {"spec": dict(LEADER, contexts=["concise", "b_topic"])},
            r"followers\.1 \('long'\) has 'category' values \['no_d'\] the leader has no",
        ),
        ([SHORT, dict(LONG, contexts=["nope"])], None, r"contexts \['nope'\] match none"),
        ([SHORT, dict(LONG, contexts=[])], None, r"contexts is empty"),
        ([SHORT, dict(LONG, prompts_per_iteration=0)], None, r"prompts_per_iteration must be"),
    ],
)
def test_bad_followers_fail_in_one_line_before_training(tmp_path, followers, leader, match):
    with pytest.raises(ValueError, match=match) as err:
        kw = {"leader": leader} if leader else {}
        HPGDTrainer(make_config(tmp_path, followers=followers, **kw))
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError | ValueError)
    assert not (tmp_path / "run").exists()


def test_the_two_followers_config_loads():

    from align_cbrl.config_parser import load_config

    path = ROOT / "configs" / "two_followers.yaml"
    config = load_config(HPGDConfig, path, {"output_dir": "unused"})
    a, b = config.followers
    assert config.normalised_weights() == pytest.approx([1 / 3, 2 / 3])
    assert a.model_seed != b.model_seed and a.trainer == b.trainer == "grpo"
    assert a.beta != b.beta and a.contexts != b.contexts
    assert [config.groups_of(0), config.groups_of(1)] == [2, 4]


def test_the_two_followers_config_runs_with_grpo_followers(tmp_path):

    from align_cbrl.config_parser import load_config

    path = ROOT / "configs" / "two_followers.yaml"
    small = {"iterations": 1, "follower_steps": 1, "num_samples": 2, "eval_samples": 0}
    config = load_config(
        HPGDConfig,
        path,
        {"output_dir": str(tmp_path / "run"), "progress": False, "plots": False, **small},
    )
    trainer, _ = run(config)
    last = trainer.history[-1]
    assert last["leader/grad_norm"] > 0 and last["leader/groups"] == 6.0
    F = last["concise_writer/objective_exact"] / 3 + 2 * last["topic_writer/objective_exact"] / 3
    assert last["objective_exact"] == pytest.approx(F, abs=1e-12)
