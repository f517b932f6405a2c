"""Plugin mode: HPGDReward + HPGDCallback inside a plain TRL GRPOTrainer script."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import GRPOTrainer  # noqa: E402
from trl_helpers import grpo_args  # noqa: E402

from align_cbrl.estimators.grouped import hpgd_gradient  # noqa: E402
from align_cbrl.models import build_tiny_lm  # noqa: E402
from align_cbrl.trainer import HPGDCallback, HPGDReward  # noqa: E402
from align_cbrl.trainer.builders import resolve_task  # noqa: E402


@pytest.fixture(scope="module")
def task_and_model():
    task = resolve_task("tiny_language")
    return task, build_tiny_lm("word", words=task.vocab)


def make_trainer(tmp_path, task, model, callback_kw=None, **args_kw):
    leader = task.make_leader(init_weights=0.2, cost_coef=0.25, cost_kind="l2")
    reward = HPGDReward(task.bilevel(leader), task.components)
    cb = HPGDCallback(reward, **{"update_every": 2, **(callback_kw or {})})
    ds = datasets.Dataset.from_dict({"prompt": task.prompts, "category": task.contexts})
    trainer = GRPOTrainer(
        model=str(model),
        reward_funcs=[reward],
        args=grpo_args(tmp_path, **args_kw),
        train_dataset=ds,
        callbacks=[cb],
    )
    return trainer, reward, cb, leader


def test_callback_step_is_the_hpgd_estimate_of_trls_own_groups(tmp_path, task_and_model):
    task, model = task_and_model
    lr = 0.3
    trainer, reward, cb, leader = make_trainer(
        tmp_path,
        task,
        model,
        callback_kw={
            "optimizer": None,
            "optimizer_name": "sgd",
            "lr": lr,
            "max_grad_norm": 0.0,
        },
    )
    seen = []
    real_take = reward.take_groups

    def take_groups(group_size, beta, follower="trl"):
        x_before = leader.flat_parameters()
        groups = real_take(group_size, beta, follower)
        seen.append((x_before, groups))
        return groups

    reward.take_groups = take_groups
    trainer.train()
    # one reward call per generated batch (no extra generation), one update every 2 steps
    assert reward.calls == 4 and len(seen) == 2 and len(cb.history) == 2
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
        g = hpgd_gradient(d_r.reshape(4, 4, -1), d_rbar.reshape(4, 4, -1), rbar.reshape(4, 4), 0.5)
        x_after = seen[k + 1][0] if k + 1 < len(seen) else leader.flat_parameters()
        torch.testing.assert_close(x_after, x_before + lr * g, rtol=1e-10, atol=1e-12)
        assert cb.history[k]["hpgd/grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert not torch.equal(seen[0][0], leader.flat_parameters())
    # per-component means reach TRL's logs
    logged = trainer.state.log_history[0]
    assert {"hpgd_reward/n_words", "hpgd_reward/incentive", "rewards/hpgd_reward/mean"} <= set(
        logged
    )


def test_callback_refuses_beta_zero_and_reward_scaling(tmp_path, task_and_model):
    task, model = task_and_model
    trainer, reward, *_ = make_trainer(tmp_path, task, model, beta=0.0)
    with pytest.raises(ValueError, match="beta > 0"):
        trainer.train()
    assert reward.calls == 0  # refused before any generation
    trainer, reward, *_ = make_trainer(tmp_path, task, model, scale_rewards="group")
    with pytest.raises(ValueError, match="scale_rewards='none'"):
        trainer.train()
    assert reward.calls == 0


def test_callback_saves_leader_and_metrics(tmp_path, task_and_model):
    task, model = task_and_model
    out = tmp_path / "hpgd"
    trainer, _, cb, leader = make_trainer(
        tmp_path, task, model, callback_kw={"output_dir": out}, max_steps=2
    )
    trainer.train()
    from align_cbrl.leaders import load_leader
    from align_cbrl.metrics import read_jsonl

    loaded = load_leader(out / "leader")
    assert torch.equal(loaded.flat_parameters(), leader.flat_parameters())
    assert [r["step"] for r in read_jsonl(out / "leader_metrics.jsonl")] == [2]
    assert len(cb.history) == 1
