"""Plugin-mode API without a TRL run: reward weights (exact, by enumeration), the shared
leader estimators and update, prompt probabilities in HPGDTrainer, contexts, callable components,
out-of-process reward calls."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from align_cbrl.config_parser import from_dict
from align_cbrl.followers.base import RewardFunctionError
from align_cbrl.reference.tiny_language import exact_gradient
from align_cbrl.rewards.registry import build_component, build_components
from align_cbrl.trainer import (
    GroupedSamples,
    HPGDReward,
    LeaderConfig,
    build_estimator,
    leader_update,
)
from align_cbrl.trainer.builders import resolve_task
from tests.helpers import exact_follower


def n_a(prompts, completions, **kw):
    """A TRL-style reward function: number of 'a' words."""
    return [float(c.split().count("a")) for c in completions]


def test_reward_weight_estimate_is_the_exact_gradient_of_the_weighted_follower():
    """A follower maximising ``w r_x - beta KL`` has ``pi* ∝ pi_ref exp(w r_x / beta)``. With
    ``pi_ref ∝ exp(-w r_x0 / beta)`` its best response at ``x0`` is uniform, so the mean of the
    N=2 HPGD estimate over *all* ordered completion pairs of every prompt is its exact
    expectation; one SGD step (lr 1, no clipping) through the shared leader_update must equal
    the exact gradient of ``F_w(x) = sum_p P(p) sum_y pi*_w(y|p) rbar_x(p, y)`` (autograd
    through the softmax, independent of the HPGD formula)."""
    task = resolve_task("tiny_language")
    beta, w = 0.5, 2.5
    leader = task.make_leader(init_weights={"n_words": -0.3, "count_b": 0.8}, cost_coef=0.3)
    bilevel = task.bilevel(leader)
    with torch.no_grad():
        r0, _ = task.rewards(bilevel)
    task = task.with_log_ref(-w * r0 / beta)
    P, Y = task.scores.shape[:2]

    x0 = leader.flat_parameters()

    def F_w(x):
        r, rbar = task.rewards(bilevel, leader.unflatten(x, "leader."))
        pi = torch.softmax(task.log_ref + w * r / beta, dim=-1)
        return (task.prompt_probs * (pi * rbar).sum(-1)).sum()

    exact = torch.autograd.functional.jacobian(F_w, x0)
    pi0 = torch.softmax(task.log_ref + w * r0 / beta, dim=-1)
    torch.testing.assert_close(pi0, torch.full_like(pi0, 1.0 / Y))

    y1 = torch.arange(Y).repeat_interleave(Y)
    y2 = torch.arange(Y).repeat(Y)
    pairs = torch.stack([y1, y2], 1).reshape(-1)  # all ordered pairs, flattened [Y*Y*2]
    prompts, completions, ctx, scores = [], [], [], []
    for p in range(P):
        prompts += [task.prompts[p]] * pairs.numel()
        ctx += [task.contexts[p]] * pairs.numel()
        completions += [task.texts[int(y)] for y in pairs]
        scores.append(task.scores[p, pairs])
    scores = torch.cat(scores)

    def step_with(weight):
        with torch.no_grad():
            leader.theta.copy_(x0.reshape(leader.theta.shape))
        opt = torch.optim.SGD(leader.parameters(), lr=1.0)
        estimator = build_estimator(LeaderConfig(estimator="hpgd"))
        batch = GroupedSamples(
            "f", beta, 2, prompts, completions, {"category": ctx}, scores, reward_weight=weight
        )
        result = leader_update(leader, opt, estimator.estimate(bilevel, [batch], "category"), 0.0)
        assert result.stepped and result.stats.groups == P * Y * Y
        return leader.flat_parameters() - x0

    torch.testing.assert_close(step_with(w), exact, rtol=1e-9, atol=1e-12)
    # ignoring the weight (w = 1) is a different, wrong step
    assert float((step_with(1.0) - exact).norm()) > 0.1 * float(exact.norm())


def test_hpgd_trainer_samples_prompts_with_the_task_probabilities(tmp_path):
    """With prompt_probs [0.7, 0.1, 0.1, 0.1] the mean leader step of 200 small SGD steps
    points along the exact gradient of the logged objective ``objective_exact`` (which weights
    prompts by prompt_probs); uniformly drawn prompts would follow another objective, whose
    gradient is far from it (cosine < 0.9)."""
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    T, lr = 200, 1e-4
    from align_cbrl.quickstart import QUICKSTART_CONFIG

    leader = dict(QUICKSTART_CONFIG["leader"]["spec"])  # bounded sigmoid weights, l2 cost
    config = from_dict(
        HPGDConfig,
        {
            "output_dir": str(tmp_path / "run"),
            "task": {"prompt_probs": [0.7, 0.1, 0.1, 0.1]},
            "iterations": T,
            "follower_steps": 0,
            "prompts_per_iteration": 4,
            "num_samples": 8,
            "save_every": 0,
            "eval_samples": 0,
            "plots": False,
            "progress": False,
            "tensorboard": False,
            "leader": {"spec": leader, "optimizer": "sgd", "lr": lr, "max_grad_norm": 0.0},
            "followers": [exact_follower("f0")],
        },
    )
    trainer = HPGDTrainer(config)
    x0 = trainer.leader.flat_parameters()
    task = trainer.task.with_log_ref(trainer.bundles[0].log_ref)
    g = exact_gradient(task, trainer.bilevel, 0.5)
    uniform = task.with_log_ref(task.log_ref)
    uniform.prompt_probs = torch.full((4,), 0.25, dtype=torch.float64)
    g_uniform = exact_gradient(uniform, trainer.bilevel, 0.5)
    try:
        trainer.train()
    finally:
        trainer.close()
    mean_step = (trainer.leader.flat_parameters() - x0) / (lr * T)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    assert cos(g, g_uniform) < 0.9  # the two objectives really differ
    assert cos(mean_step, g) > 0.99


# --------------------------------------------------------------------------- contexts
def test_bilevel_refuses_index_tensors_as_contexts():
    task = resolve_task("tiny_language")
    bilevel = task.bilevel(task.make_leader(init_weights=0.5))
    scores = task.scores[:, 0]
    by_value = bilevel(scores, task.contexts)
    assert torch.isfinite(by_value.r).all()
    with pytest.raises(TypeError, match=r"list of values .* not a tensor of row indices"):
        bilevel(scores, torch.arange(4))


def test_context_column_error_names_the_columns_found():
    task = resolve_task("tiny_language")
    reward = HPGDReward(task.bilevel(task.make_leader()), task.components)
    with pytest.raises(
        RewardFunctionError, match=r"columns are \['topic'\].*context_column='topic'"
    ):
        reward(["a b"], ["a"], topic=["concise"])


# --------------------------------------------------------------------------- components
def test_components_accept_python_functions_and_import_paths():
    by_fn = build_component({"type": "callable", "name": "as", "target": n_a})
    by_path = build_component(
        {"type": "callable", "name": "as", "target": "tests.test_plugin_api:n_a"}
    )
    bare = build_components([n_a, {"type": "length", "name": "len", "unit": "words"}])
    assert [c.name for c in bare] == ["n_a", "len"]
    prompts, completions = ["p", "p"], ["a b a", "b"]
    for comp in (by_fn, by_path, bare[0]):
        torch.testing.assert_close(
            comp(prompts, completions, None), torch.tensor([2.0, 0.0], dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="a function or an import path"):
        build_component({"type": "callable", "name": "x", "target": 3})


# --------------------------------------------------------------------------- processes
def _call_in_child(reward, queue):
    try:
        reward(["a b"], ["a"], category=["concise"])
        queue.put("ok")
    except RewardFunctionError as err:
        queue.put(str(err))


def test_reward_called_in_another_process_is_refused():
    task = resolve_task("tiny_language")
    reward = HPGDReward(task.bilevel(task.make_leader()), task.components)
    reward(["a b"], ["a"], category=["concise"])  # fine in the building process
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_call_in_child, args=(reward, queue))
    child.start()
    child.join(60)
    message = queue.get(timeout=5)
    assert "not in the training process" in message and "AsyncGRPOTrainer" in message


def test_zero_order_strategy_state_round_trips():
    """The zero-order estimator's state (baseline and generator) is what a checkpoint needs."""
    task = resolve_task("tiny_language")
    leader = task.make_leader(init_weights=0.1)
    bilevel = task.bilevel(leader)
    zo = LeaderConfig(estimator="zero_order", zero_order_u=0.5)
    est = build_estimator(zo, generator=torch.Generator().manual_seed(3))
    est.follower_bilevel(bilevel, 1)
    est.prev = 0.25
    state = est.state_dict()
    z_next = torch.randn(leader.flat_parameters().shape, generator=est.generator)
    other = build_estimator(zo, generator=torch.Generator().manual_seed(9))
    other.load_state_dict(state)
    assert other.prev == 0.25
    z_other = torch.randn(leader.flat_parameters().shape, generator=other.generator)
    assert torch.equal(z_next, z_other)
    with pytest.raises(ValueError, match="leader estimator must be one of"):
        build_estimator(zo, allowed=("hpgd", "naive", "fixed"))
