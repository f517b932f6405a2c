"""The learning tabular follower and the multilevel follower schedule of the orchestrated
trainer (``docs/theory.md`` §3, §9): exact fixed point, one step against a closed form, config
errors, equivalence with plain HPGD, bit-identical resume."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from align_cbrl.config_parser import ConfigError, load_config, parse_overrides
from align_cbrl.followers import ExactFollower, FunctionFollower
from align_cbrl.followers.learning import SoftmaxFollower
from align_cbrl.metrics import read_jsonl
from align_cbrl.quickstart import QUICKSTART_CONFIG
from align_cbrl.reference.tiny_language import TinyLanguageTask, exact_policy
from align_cbrl.trainer import HPGDConfig, HPGDTrainer
from align_cbrl.trainer.follower_schedule import build_follower_schedule
from tests.helpers import run_trainer, strip_times, tiny_run_config, train_until_killed

LEADER = dict(QUICKSTART_CONFIG["leader"]["spec"])


def _task_follower(lr=0.4, beta=0.5, cls=SoftmaxFollower, **kw):
    task = TinyLanguageTask()
    bilevel = task.bilevel(task.make_leader(init_weights=0.3))
    col = task.config.context_column
    extra = {"lr": lr} if cls is SoftmaxFollower else {}
    f = cls(
        task.prompts,
        task.texts,
        task.log_ref,
        beta,
        contexts={col: list(task.contexts)},
        **extra,
        **kw,
    )
    from align_cbrl.trainer import HPGDReward

    f.set_reward_function(HPGDReward(bilevel, task.components, context_column=col))
    return task, bilevel, f


# --------------------------------------------------------------------------- the follower
def test_softmax_follower_converges_to_the_exact_best_response():
    task, bilevel, f = _task_follower(lr=0.4, beta=0.5)  # eta beta = 0.2
    with torch.no_grad():
        pi_star = exact_policy(task, bilevel, 0.5)
    f.train(200)
    err = float((f.log_policy().exp() - pi_star).abs().max())
    assert err < 1e-8  # (1 - eta beta)^200 = 0.8^200 ~ 4e-20: rounding only
    assert f.continues_training and f.global_step == 200


def test_softmax_follower_one_step_is_the_mirror_descent_closed_form():
    task, bilevel, f = _task_follower(lr=0.6, beta=0.5)
    with torch.no_grad():
        r, _ = task.rewards(bilevel)
    f.train(1)
    # independent: pi_1 ∝ pi_0 exp(eta (r - beta (log pi_0 - log pi_ref))), pi_0 = pi_ref
    log_ref = torch.log_softmax(task.log_ref, -1)
    expected = torch.softmax(log_ref + 0.6 * r, dim=-1)
    torch.testing.assert_close(f.log_policy().exp(), expected, rtol=0, atol=1e-14)
    # warm start: train(a); train(b) == train(a + b) bit for bit
    _, _, g = _task_follower(lr=0.6, beta=0.5)
    g.train(3)
    f.train(2)
    assert torch.equal(f.logits, g.logits)


def test_softmax_follower_checkpoint_and_sampling_state(tmp_path):
    _, _, f = _task_follower()
    f.train(3)
    prompts = f.prompts[:2]
    state = f.sampling_state()
    first = f.sample(prompts, 6)
    f.set_sampling_state(state)
    assert f.sample(prompts, 6) == first  # common random numbers replay the same draws
    f.save(tmp_path / "f")
    _, _, g = _task_follower()
    g.load(tmp_path / "f")
    assert torch.equal(f.logits, g.logits) and g.global_step == 3
    assert f.sample(prompts, 5) == g.sample(prompts, 5)
    with pytest.raises(ValueError, match="lr \\* beta < 2"):
        _task_follower(lr=5.0, beta=0.5)


def test_which_followers_continue_training():
    _, _, exact = _task_follower(cls=ExactFollower)
    assert not exact.continues_training
    assert not FunctionFollower(
        "u", 0.5, lambda p, n, **k: [["a"] * n for _ in p]
    ).continues_training
    trained = FunctionFollower("t", 0.5, lambda p, n, **k: [], lambda s, **k: None)
    assert trained.continues_training
    restarts = FunctionFollower(
        "r", 0.5, lambda p, n, **k: [], lambda s, **k: None, continues_training=False
    )
    assert not restarts.continues_training


# --------------------------------------------------------------------------- config
def make_config(tmp_path, name="run", schedule=None, follower=None, **kw):
    fol = {"name": "f0", "trainer": "tabular", "beta": 0.5, "trl": {"learning_rate": 0.4}}
    fol.update(follower or {})
    leader = {"optimizer": "sgd", "lr": 0.2, "max_grad_norm": 0.0, **kw.pop("leader", {})}
    if schedule is not None:
        leader["follower_schedule"] = schedule
    return tiny_run_config(
        tmp_path, name, kw.pop("followers", [fol]), leader=leader, **{"follower_steps": 2, **kw}
    )


MLMC = {"kind": "mlmc", "base_steps": 1, "max_level": 3}


@pytest.mark.parametrize(
    ("schedule", "follower", "leader", "match"),
    [
        (dict(MLMC, max_level=0), None, None, "max_level must be >= 1"),
        (dict(MLMC, probabilities=[0.5, 0.3, 0.1]), None, None, "must sum to 1"),
        (dict(MLMC, probabilities=[0.5, 0.5]), None, None, "one probability per level"),
        (dict(MLMC, base_steps=0), None, None, "base_steps must be >= 1"),
        (MLMC, {"trainer": "exact"}, None, "continue training"),
        (MLMC, None, {"estimator": "zero_order"}, "hpgd or naive"),
        ({"kind": "sometimes"}, None, None, "is not one of"),
    ],
)
def test_bad_schedules_are_one_line_errors_at_config_load(
    tmp_path, schedule, follower, leader, match
):
    kw = {}
    if leader:
        kw["leader"] = {"spec": dict(LEADER), **leader, "follower_schedule": schedule}
        schedule = None
    with pytest.raises(ConfigError, match=match) as err:
        make_config(tmp_path, schedule=schedule, follower=follower, **kw)
    assert "\n" not in str(err.value)


def test_follower_that_cannot_continue_is_refused_before_training(tmp_path):
    config = make_config(tmp_path, schedule=MLMC)
    _, _, exact = _task_follower(cls=ExactFollower)
    with pytest.raises(ValueError, match="does not; use kind 'fixed'") as err:
        build_follower_schedule(config, [exact])
    assert "\n" not in str(err.value)
    assert build_follower_schedule(make_config(tmp_path), [exact]) is None  # fixed: fine


def test_schedule_from_yaml_and_dotted_overrides(tmp_path):
    path, overrides = parse_overrides(
        [
            "--config",
            "configs/tiny_language_mlmc.yaml",
            "--leader.follower_schedule.max_level",
            "2",
            "--leader.follower_schedule.probabilities",
            "[0.75, 0.25]",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    cfg = load_config(HPGDConfig, path, overrides)
    sc = cfg.leader.follower_schedule
    assert (sc.kind, sc.max_level, sc.probabilities) == ("mlmc", 2, [0.75, 0.25])
    assert sc.schedule(cfg.follower_steps).level_probabilities == (0.75, 0.25)
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(HPGDConfig, path, {"leader.follower_schedule.probabilities": [0.5, 0.25, 0.1]})
    # the shipped example runs (a few iterations)
    short = {"iterations": 3, "save_every": 0, "eval_samples": 0, "plots": False}
    trainer = run(load_config(HPGDConfig, path, {**overrides, **short, "progress": False}))
    assert trainer.history[-1]["mlmc/follower_steps_total"] >= 3 * 2


# --------------------------------------------------------------------------- the trainer
def run(config, **kw):
    return run_trainer(config, **kw)[0]


def test_single_sure_level_equals_plain_hpgd_with_twice_the_steps(tmp_path):
    # max_level 1 with p_1 = 1: g = g_0 + (g_1 - g_0) / 1 = g_1, the estimate after 2 n_0 steps
    # with the same prompts and sampling random numbers as plain HPGD with K = 2 n_0
    sure = {"kind": "mlmc", "base_steps": 2, "max_level": 1, "probabilities": [1.0]}
    mlmc = run(make_config(tmp_path, "mlmc", schedule=sure, iterations=3))
    plain = run(make_config(tmp_path, "plain", follower_steps=4, iterations=3))
    # equal up to the rounding of g_0 + (g_1 - g_0) (same samples: the same completions)
    x, y = mlmc.leader.flat_parameters(), plain.leader.flat_parameters()
    torch.testing.assert_close(x, y, rtol=0, atol=1e-14)
    assert not torch.equal(y, HPGDTrainer(make_config(tmp_path, "x0")).leader.flat_parameters())
    f, g = mlmc.bundles[0].follower.logits, plain.bundles[0].follower.logits
    torch.testing.assert_close(f, g, rtol=0, atol=1e-12)
    h = mlmc.history
    assert [r["mlmc/level"] for r in h[1:]] == [1, 1, 1]
    assert [r["mlmc/follower_steps_total"] for r in h[1:]] == [4, 8, 12]
    for a, b in zip(h[1:], plain.history[1:], strict=True):
        assert a["objective_estimate"] == b["objective_estimate"]  # identical completions
        assert abs(a["objective_exact"] - b["objective_exact"]) < 1e-12
        assert abs(a["leader/grad_norm"] - b["leader/grad_norm"]) < 1e-12


def test_mlmc_resume_after_crash_is_bit_identical(tmp_path, monkeypatch):
    kw = dict(schedule=MLMC, iterations=5, save_every=2)
    full = run(make_config(tmp_path, "full", **kw))
    levels = [r["mlmc/level"] for r in full.history[1:]]
    assert len(set(levels)) > 1  # the draws really vary
    crashing = HPGDTrainer(make_config(tmp_path, "crash", **kw))
    train_until_killed(crashing, 4, monkeypatch)
    resumed = run(make_config(tmp_path, "crash", **kw), resume=True)
    assert torch.equal(resumed.leader.flat_parameters(), full.leader.flat_parameters())
    assert torch.equal(resumed.bundles[0].follower.logits, full.bundles[0].follower.logits)
    assert strip_times(read_jsonl(tmp_path / "crash" / "metrics.jsonl")) == strip_times(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )


@pytest.mark.slow
@pytest.mark.parametrize(("coupling", "calls"), [("common", 1), ("independent", 2)])
def test_mlmc_with_a_grpo_follower_replays_its_sampling_stream(tmp_path, coupling, calls):
    fol = {"trainer": "grpo", "trl": {"learning_rate": 1e-2, "num_generations": 4}}
    sure = {"kind": "mlmc", "base_steps": 1, "max_level": 1, "probabilities": [1.0]}
    config = make_config(
        tmp_path, schedule=dict(sure, coupling=coupling), follower=fol, iterations=1, num_samples=4
    )
    trainer = run(config)
    f = trainer.bundles[0].follower
    assert f.continues_training and f.global_step == 2
    # levels 0 and 1 each sample once; common coupling rewinds the seed counter in between
    assert f.sampling_state() == calls
    assert trainer.history[-1]["mlmc/follower_steps_total"] == 2


def test_checkpoints_from_before_the_schedule_setting_still_resume(tmp_path):
    import json

    fixed = {"follower": {"trainer": "exact"}, "follower_steps": 0, "save_every": 1}
    run(make_config(tmp_path, "old", iterations=2, **fixed))
    state = tmp_path / "old" / "checkpoints" / "iter_000002" / "state.json"
    data = json.loads(state.read_text())
    del data["config"]["leader"]["follower_schedule"]  # as written before this setting
    state.write_text(json.dumps(data))
    resumed = run(make_config(tmp_path, "old", iterations=3, **fixed), resume=True)
    assert [r["step"] for r in resumed.history] == [0, 1, 2, 3]
    # a schedule change is still a config change (the 'fixed' default spelled out resumes)
    old = make_config(tmp_path, "old", iterations=4, **fixed)
    old.leader.follower_schedule.max_level = 5  # kind fixed: ignored, but not the same config
    with pytest.raises(ValueError, match="checkpointed run in \\['leader'\\]"):
        HPGDTrainer(old, resume=True)


def test_single_sure_level_with_two_weighted_followers_equals_plain_hpgd(tmp_path):
    # several followers (issue #13) under mlmc: each level samples each follower's own group
    # count and weights its estimate as the fixed path does, so the identity above still holds
    sure = {"kind": "mlmc", "base_steps": 1, "max_level": 1, "probabilities": [1.0]}
    two = [
        {
            "name": "f0",
            "trainer": "tabular",
            "beta": 0.5,
            "trl": {"learning_rate": 0.4},
            "weight": 1.0,
            "prompts_per_iteration": 2,
        },
        {
            "name": "f1",
            "trainer": "tabular",
            "beta": 1.0,
            "trl": {"learning_rate": 0.3},
            "weight": 3.0,
            "prompts_per_iteration": 5,
        },
    ]
    mlmc = run(make_config(tmp_path, "mlmc2", schedule=sure, iterations=3, followers=two))
    plain = run(make_config(tmp_path, "plain2", follower_steps=2, iterations=3, followers=two))
    x, y = mlmc.leader.flat_parameters(), plain.leader.flat_parameters()
    torch.testing.assert_close(x, y, rtol=0, atol=1e-14)
    for a, b in zip(h := mlmc.history[1:], plain.history[1:], strict=True):
        assert a["objective_estimate"] == b["objective_estimate"]
        assert abs(a["objective_exact"] - b["objective_exact"]) < 1e-12
    assert [r["mlmc/follower_steps_total"] for r in h] == [2, 4, 6]
