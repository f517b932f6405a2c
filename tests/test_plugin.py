"""Plugin mode: HPGDReward + HPGDCallback inside plain TRL GRPOTrainer / RLOOTrainer scripts."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import TrainerControl, TrainerState  # noqa: E402
from trl import GRPOTrainer, RLOOTrainer  # noqa: E402

from align_cbrl.estimators.grouped import grouped_hpgd_gradient  # noqa: E402
from align_cbrl.models import build_tiny_lm  # noqa: E402
from align_cbrl.trainer import HPGDArguments, HPGDCallback, HPGDReward  # noqa: E402
from align_cbrl.trainer.builders import resolve_task  # noqa: E402
from align_cbrl.trainer.callback import CHECKPOINT_DIR  # noqa: E402
from tests.helpers import grpo_args, rloo_args  # noqa: E402

LEADER_METRICS = {
    "leader/grad_norm",
    "leader/groups",
    "objective_estimate",
    "follower/incentive",
    "follower/cost",
    "follower/base_reward",
    "follower/leader_reward",
}


@pytest.fixture(scope="module")
def task_and_model():
    task = resolve_task("tiny_language")
    return task, build_tiny_lm("word", words=task.vocab)


def constant_reward(prompts, completions, **kw):
    return [1.0] * len(completions)


def make_trainer(
    tmp_path,
    task,
    model,
    callback_kw=None,
    *,
    kind="grpo",
    reward_funcs=None,
    repeat=1,
    **args_kw,
):
    leader = task.make_leader(init_weights=0.2, cost_coef=0.25, cost_kind="l2")
    reward = HPGDReward(task.bilevel(leader), task.components)
    cb = HPGDCallback(reward, HPGDArguments(**{"leader_update_every": 2, **(callback_kw or {})}))
    ds = datasets.Dataset.from_dict(
        {"prompt": task.prompts * repeat, "category": task.contexts * repeat}
    )
    cls, args = (
        (GRPOTrainer, grpo_args(tmp_path, **args_kw))
        if kind == "grpo"
        else (RLOOTrainer, rloo_args(tmp_path, **args_kw))
    )
    trainer = cls(
        model=str(model),
        reward_funcs=reward_funcs(reward) if reward_funcs else [reward],
        args=args,
        train_dataset=ds,
        callbacks=[cb],
    )
    return trainer, reward, cb, leader


def record_takes(cb, leader):
    """Wrap the callback's buffer so each update's groups and starting ``x`` are recorded."""
    seen = []
    real_take = cb.buffer.take

    def take(*a, **kw):
        x_before = leader.flat_parameters()
        groups = real_take(*a, **kw)
        seen.append((x_before, groups))
        return groups

    cb.buffer.take = take
    return seen


@pytest.mark.parametrize("weight", [None, 2.5])
def test_callback_step_is_the_hpgd_estimate_of_trls_own_groups(tmp_path, task_and_model, weight):
    """Each leader step is lr x the HPGD estimate of exactly the groups TRL generated since the
    previous update; with reward_weights=[w, ...] the estimate uses w d r_x."""
    task, model = task_and_model
    lr = 0.3
    extra = {}
    if weight is not None:  # a second, leader-independent reward with its own weight
        extra = dict(reward_funcs=lambda r: [r, constant_reward], reward_weights=[weight, 0.3])
    trainer, reward, cb, leader = make_trainer(
        tmp_path,
        task,
        model,
        callback_kw={
            "leader_optimizer": "sgd",
            "leader_lr": lr,
            "leader_max_grad_norm": 0.0,
            **({"leader_reward_index": 0} if weight is not None else {}),
        },
        **extra,
    )
    calls = []
    reward.subscribe(calls.append)
    seen = record_takes(cb, leader)
    trainer.train()
    w = 1.0 if weight is None else weight
    # one reward call per generated batch (no extra generation), one update every 2 steps
    assert len(calls) == 4 and len(seen) == 2 and len(cb.history) == 2
    assert cb.reward_weight == w
    bilevel = reward.bilevel
    for k, (x_before, groups) in enumerate(seen):
        assert groups.num_groups == 4 and groups.group_size == 4 and groups.beta == 0.5
        ctx = groups.columns["category"]
        assert ctx == [task.contexts[task.prompts.index(p)] for p in groups.prompts]

        def f(x, scores=groups.scores, ctx=ctx):
            out = torch.func.functional_call(bilevel, leader.unflatten(x, "leader."), (scores, ctx))
            return out.r, out.rbar

        d_r, d_rbar = torch.autograd.functional.jacobian(f, x_before)
        _, rbar = f(x_before)
        g = grouped_hpgd_gradient(
            w * d_r.reshape(4, 4, -1), d_rbar.reshape(4, 4, -1), rbar.reshape(4, 4), 0.5
        )
        x_after = seen[k + 1][0] if k + 1 < len(seen) else leader.flat_parameters()
        torch.testing.assert_close(x_after, x_before + lr * g, rtol=1e-10, atol=1e-12)
        assert cb.history[k]["leader/grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
        if weight is not None:  # the unweighted formula would be a different step
            g1 = grouped_hpgd_gradient(
                d_r.reshape(4, 4, -1), d_rbar.reshape(4, 4, -1), rbar.reshape(4, 4), 0.5
            )
            assert float((g - g1).norm()) > 1e-3 * float(g.norm())
    assert not torch.equal(seen[0][0], leader.flat_parameters())
    logged = trainer.state.log_history[0]
    assert {"hpgd_reward/n_words", "hpgd_reward/incentive", "rewards/hpgd_reward/mean"} <= set(
        logged
    )


# --------------------------------------------------------------------------- metrics
def test_leader_metrics_reach_log_history_trainer_state_and_tensorboard(tmp_path, task_and_model):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task, model = task_and_model
    trainer, _, cb, _ = make_trainer(
        tmp_path,
        task,
        model,
        report_to="tensorboard",
        save_strategy="steps",
        save_steps=4,
    )
    trainer.train()
    by_step = {r["step"]: r for r in trainer.state.log_history if "loss" in r}
    for step in (2, 4):  # the update steps (update_every=2, logging_steps=1)
        assert set(by_step[step]) >= LEADER_METRICS
        assert by_step[step]["leader/grad_norm"] == cb.history[step // 2 - 1]["leader/grad_norm"]
    for step in (1, 3):
        assert not LEADER_METRICS & set(by_step[step])
    saved = json.loads((tmp_path / "trl" / "checkpoint-4" / "trainer_state.json").read_text())
    assert {k for r in saved["log_history"] for k in r} >= LEADER_METRICS
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {f"train/{k}" for k in LEADER_METRICS}
    assert expected <= tags, sorted(tags)
    steps = [e.step for e in acc.Scalars("train/leader/grad_norm")]
    assert steps == [2, 4]
    # the metrics file in the TRL output dir (the callback's default output_dir)
    from align_cbrl.metrics import read_jsonl

    rows = read_jsonl(tmp_path / "trl" / "leader_metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]


# --------------------------------------------------------------------------- resume
class Crash(RuntimeError):
    pass


def crash_at(step):
    from transformers import TrainerCallback

    class _Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == step:
                raise Crash(f"simulated kill before step {step + 1}")

    return _Crash()


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_plugin_resume_is_bit_identical(tmp_path, task_and_model, kind):
    """Interrupted after checkpoint-4 (leader updated at step 3, one batch buffered since),
    resumed with resume_from_checkpoint: the final leader's safetensors bytes equal an
    uninterrupted run's, and so do the leader metrics in TRL's log history.

    The 6 steps stay inside one epoch (16 rows, 2 prompts per step): TRL 1.16's RepeatSampler
    draws a new permutation per epoch from a generator it does not checkpoint, so TRL itself
    resumes with another prompt order after an epoch boundary (docs/trainer.md)."""
    task, model = task_and_model
    common = dict(
        repeat=4,
        kind=kind,
        callback_kw={"leader_update_every": 3},
        max_steps=6,
        save_strategy="steps",
        save_steps=4,
    )
    full, _, full_cb, _ = make_trainer(tmp_path / "full", task, model, **common)
    full.train()

    crashed, _, _, leader0 = make_trainer(tmp_path / "run", task, model, **common)
    x0 = leader0.flat_parameters()
    crashed.add_callback(crash_at(4))
    with pytest.raises(Crash):
        crashed.train()
    ckpt = tmp_path / "run" / "trl" / "checkpoint-4"
    saved = json.loads((ckpt / CHECKPOINT_DIR / "groups.json").read_text())
    assert [b["step"] for b in saved["batches"]] == [3]  # generated for step 4, not yet used
    assert not (tmp_path / "run" / "trl" / "leader").exists()  # no on_train_end after a kill

    resumed, _, res_cb, leader = make_trainer(tmp_path / "run", task, model, **common)
    assert torch.equal(leader.flat_parameters(), x0)  # a fresh leader before resuming
    resumed.train(resume_from_checkpoint=str(ckpt))
    a = (tmp_path / "full" / "trl" / "leader" / "model.safetensors").read_bytes()
    b = (tmp_path / "run" / "trl" / "leader" / "model.safetensors").read_bytes()
    assert a == b
    assert not torch.equal(leader.flat_parameters(), x0)
    assert res_cb.history == full_cb.history and len(full_cb.history) == 2

    def leader_logs(trainer):
        return [
            {k: v for k, v in r.items() if k in LEADER_METRICS or k == "step"}
            for r in trainer.state.log_history
            if "leader/grad_norm" in r
        ]

    assert leader_logs(resumed) == leader_logs(full) and len(leader_logs(full)) == 2


def test_resume_without_leader_state_is_refused(tmp_path, task_and_model):
    task, model = task_and_model
    trainer, *_ = make_trainer(tmp_path, task, model, save_strategy="steps", save_steps=2)
    trainer.add_callback(crash_at(2))
    with pytest.raises(Crash):
        trainer.train()
    ckpt = tmp_path / "trl" / "checkpoint-2"
    import shutil

    shutil.rmtree(ckpt / CHECKPOINT_DIR)
    trainer, *_ = make_trainer(tmp_path, task, model, save_strategy="steps", save_steps=2)
    with pytest.raises(FileNotFoundError, match=r"holds no leader state.*leader_resume_from="):
        trainer.train(resume_from_checkpoint=str(ckpt))


# --------------------------------------------------------------------------- refusals
def begin(cb, args):
    cb.on_train_begin(args, TrainerState(), TrainerControl())


def test_refused_configurations_name_the_fix(tmp_path, task_and_model):
    task, model = task_and_model
    # beta = 0 and scale_rewards: refused by a real trainer before any generation
    for kw, match in (
        ({"beta": 0.0}, "beta > 0"),
        ({"scale_rewards": "group"}, "set scale_rewards='none'"),
        (
            {"multi_objective_aggregation": "normalize_then_sum"},
            "use 'sum_then_normalize' with scale_rewards='none'",
        ),
    ):
        trainer, reward, *_ = make_trainer(tmp_path, task, model, **kw)
        calls = []
        reward.subscribe(calls.append)
        with pytest.raises(ValueError, match=match):
            trainer.train()
        assert calls == []
    # RLOO normalize_advantages, with the same opt-in as scale_rewards
    trainer, reward, cb, _ = make_trainer(
        tmp_path, task, model, kind="rloo", normalize_advantages=True
    )
    calls = []
    reward.subscribe(calls.append)
    with pytest.raises(ValueError, match="set normalize_advantages=False"):
        trainer.train()
    assert calls == []
    cb.allow_reward_scaling = True
    begin(cb, rloo_args(tmp_path, normalize_advantages=True))  # accepted with the opt-in
    cb.allow_reward_scaling = False
    with pytest.raises(ValueError, match="set reward_clip_range=None"):
        begin(cb, rloo_args(tmp_path, reward_clip_range=(-1.0, 1.0)))
    # several reward weights: the callback must be told which one is its reward's
    with pytest.raises(ValueError, match=r"leader_reward_index=i"):
        begin(cb, grpo_args(tmp_path, reward_weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match=r"leader_reward_index=3 but reward_weights has 2"):
        cb.reward_index = 3
        begin(cb, grpo_args(tmp_path, reward_weights=[1.0, 2.0]))


def test_async_grpo_is_refused(tmp_path, task_and_model):
    async_grpo = pytest.importorskip("trl.experimental.async_grpo")
    task, _ = task_and_model
    reward = HPGDReward(task.bilevel(task.make_leader()), task.components)
    cb = HPGDCallback(reward)
    args = async_grpo.AsyncGRPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False
    )
    with pytest.raises(ValueError, match="AsyncGRPOConfig scores completions in a separate"):
        begin(cb, args)


def test_missing_reward_function_fails_at_the_first_update(tmp_path, task_and_model):
    task, model = task_and_model
    trainer, *_ = make_trainer(
        tmp_path, task, model, reward_funcs=lambda r: [constant_reward], max_steps=2
    )
    with pytest.raises(RuntimeError, match=r"by step 2 .*pass the same HPGDReward object"):
        trainer.train()
