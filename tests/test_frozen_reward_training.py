"""FrozenShapedReward inside plain TRL GRPO / RLOO runs: a follower trained on the frozen reward
of a saved leader ends bit for bit where a follower trained with the same leader held fixed
(HPGDReward + HPGDCallback with the ``fixed`` estimator) ends, so its exact leader objective
``F = sum_p P(p) sum_y pi(y|p) rbar(p, y)`` is the same. Also: the plugin's configuration
check accepts ``use_vllm=True`` (colocate and server) configs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import TrainerControl, TrainerState  # noqa: E402
from trl import GRPOTrainer, RLOOTrainer  # noqa: E402

from align_cbrl import FrozenShapedReward, HPGDArguments, HPGDCallback, HPGDReward  # noqa: E402
from align_cbrl.models import build_tiny_lm, completion_logprobs  # noqa: E402
from align_cbrl.trainer.builders import resolve_task  # noqa: E402
from tests.helpers import grpo_args, rloo_args  # noqa: E402

TRAINERS = {"grpo": (GRPOTrainer, grpo_args), "rloo": (RLOOTrainer, rloo_args)}


@pytest.fixture(scope="module")
def task_and_model():
    task = resolve_task("tiny_language")
    return task, build_tiny_lm("word", words=task.vocab)


def exact_objective_of(trainer, task, bilevel) -> float:
    """``F`` of the trained follower's own policy over every completion of the task."""
    tokens = [list(t) for t in task.tokens]
    pi = completion_logprobs(trainer.model, trainer.processing_class, task.prompts, tokens).exp()
    torch.testing.assert_close(pi.sum(-1), torch.ones(len(task.prompts), dtype=pi.dtype))
    with torch.no_grad():
        _, rbar = task.rewards(bilevel)
    return float((task.prompt_probs * (pi * rbar).sum(-1)).sum())


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_frozen_reward_run_equals_the_fixed_leader_run(tmp_path, task_and_model, kind):
    task, model = task_and_model
    cls, make_args = TRAINERS[kind]
    spec = dict(parametrization="sigmoid", lo=-2.0, hi=2.0, init_std=0.7, seed=3)
    leader = task.make_leader(**spec, cost_coef=0.25, cost_kind="l2")
    x = leader.flat_parameters()
    ds = datasets.Dataset.from_dict({"prompt": task.prompts * 2, "category": task.contexts * 2})

    live = HPGDReward(task.bilevel(leader), task.components)
    fixed = HPGDCallback(live, HPGDArguments(leader_estimator="fixed", leader_update_every=2))
    with_fixed = cls(
        model=str(model),
        reward_funcs=[live],
        args=make_args(tmp_path / "fixed"),
        train_dataset=ds,
        callbacks=[fixed],
    )
    with_fixed.train()
    assert torch.equal(leader.flat_parameters(), x) and len(fixed.history) == 2
    F_fixed = exact_objective_of(with_fixed, task, live.bilevel)

    live.save_pretrained(tmp_path / "leader")
    frozen = FrozenShapedReward.from_pretrained(tmp_path / "leader")
    on_frozen = cls(
        model=str(model),
        reward_funcs=[frozen],
        args=make_args(tmp_path / "frozen"),
        train_dataset=ds,
    )
    on_frozen.train()
    F_frozen = exact_objective_of(on_frozen, task, frozen.bilevel)

    trained = dict(on_frozen.model.named_parameters())
    for name, p in with_fixed.model.named_parameters():
        assert torch.equal(p, trained[name]), name
    assert F_frozen == F_fixed
    # the runs trained the follower (its F moved away from the untrained model's)
    untrained = cls(
        model=str(model), reward_funcs=[frozen], args=make_args(tmp_path / "x0"), train_dataset=ds
    )
    assert abs(exact_objective_of(untrained, task, frozen.bilevel) - F_frozen) > 1e-6
    print(f"{kind}: F frozen {F_frozen!r} fixed {F_fixed!r}, difference {F_frozen - F_fixed!r}")


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_plugin_check_accepts_vllm_configs(tmp_path, task_and_model, kind, mode):
    """Only the configuration is built (no vLLM engine or server): the callback's check, which
    refuses TRL settings that bias the hypergradient, lets use_vllm=True through."""
    task, _ = task_and_model
    args = TRAINERS[kind][1](tmp_path, use_vllm=True, vllm_mode=mode)
    assert args.use_vllm and args.vllm_mode == mode
    cb = HPGDCallback(HPGDReward(task.bilevel(task.make_leader()), task.components))
    cb.on_train_begin(args, TrainerState(), TrainerControl())
    assert cb.beta == 0.5 and cb.group_size == 4
