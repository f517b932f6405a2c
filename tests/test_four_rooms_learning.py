"""Four-Rooms learning followers and accelerated HPGD (docs/accelerated.md) against exact
answers: the dense oracle's soft Bellman operator, the exact solver, today's HPGD outer loop,
the telescoping identity of the multilevel estimate, and the one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_cbrl.estimators.multilevel import MultilevelSchedule
from tabular_reference import mdp
from tabular_reference.four_rooms import coupled_sampling, hpgd_kernels
from tabular_reference.four_rooms.accelerated import (
    LearningConfig,
    multilevel_hypergradient,
    run_learning,
)
from tabular_reference.four_rooms.algorithms import RunConfig, run
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA
from tabular_reference.four_rooms.hypergradient import hypergradient
from tabular_reference.four_rooms.kernel_args import Walk, sampler_model
from tabular_reference.four_rooms.leader import penalties, softmax
from tabular_reference.four_rooms.learning import LearningFollower
from tabular_reference.four_rooms.solver import FollowerSolver

GOALS = np.array(E.goals)


def _cfg(beta: float = 0.005, **kw) -> RunConfig:
    base = dict(algo="hpgd", beta=beta, budget_cost=1.0, lrs=[0.1], seeds=[0], tol=1e-12)
    base.update(kw)
    return RunConfig(**base)


def _dense(x: np.ndarray, goal: int, plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense oracle's P[S, 4, S], state-based rewards r[S, 4] (goal 1) and terminal mask."""
    S = E.n_cells
    P = torch.tensor(E.dense_transitions(plan))
    r = torch.tensor(np.repeat(penalties(softmax(x))[0][:, None], 4, 1))
    r[goal] = 1.0
    term = torch.zeros(S, dtype=torch.bool)
    term[goal] = True
    return P, r, term


@pytest.mark.parametrize("beta", [0.001, 0.005])
def test_sweeps_equal_dense_soft_bellman_operator(beta):
    """Each sweep is one application of mdp.soft_bellman_operator, from a random table."""
    cfg = _cfg(beta)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.0, (1, 105))
    for k, goal in enumerate(E.goals):
        f = LearningFollower(1, GOALS, cfg)
        V0 = rng.normal(0, 0.5, (1, E.n_cells))
        V0[0, goal] = 1.0
        f.set_tables(np.array([k]), V0)
        P, r, term = _dense(x, goal, cfg.model.plan)
        problem = mdp.SoftMDP(P, r, GAMMA, beta, term)
        V = torch.tensor(V0[0])
        for step in range(1, 6):
            f.advance(x, np.array([k]), 1)
            V, _, pi = mdp.soft_bellman_operator(problem, V)
            np.testing.assert_allclose(f.V[0, k], V.numpy(), rtol=0, atol=1e-12)
            assert f.updates[0] == step
        sol = f.solution(x, np.array([k]))
        _, _, pi = mdp.soft_bellman_operator(problem, V)
        pi = pi.numpy()
        pi[goal] = 0.25
        np.testing.assert_allclose(sol.pi[0], pi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.001, 0.005])
def test_many_sweeps_reach_the_exact_solver(beta):
    """n large: the learned table and policy are the exact solver's (Newton, tol 1e-12)."""
    cfg = _cfg(beta)
    x = np.random.default_rng(5).normal(0, 1.0, (1, 105))
    solver = FollowerSolver(1, GOALS, cfg)
    for k in range(2):
        exact = solver.solve(x, np.array([k]), True)
        f = LearningFollower(1, GOALS, cfg)
        f.advance(x, np.array([k]), 4000)
        sol = f.solution(x, np.array([k]), want_grad=True)
        np.testing.assert_allclose(sol.V[0], exact.V[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(sol.pi[0], exact.pi[0], rtol=0, atol=1e-8)
        assert sol.F[0] == pytest.approx(exact.F[0], abs=1e-10)
        np.testing.assert_allclose(sol.grad_penalty[0], exact.grad_penalty[0], rtol=1e-6, atol=1e-8)
        assert f.last_residual[0] <= 1e-12


def test_warm_start_continues_and_cold_start_restarts():
    cfg = _cfg()
    x = np.zeros((1, 105))
    warm, cold = LearningFollower(1, GOALS, cfg), LearningFollower(1, GOALS, cfg, warm_start=False)
    one = LearningFollower(1, GOALS, cfg)
    ctx = np.array([0])
    for f in (warm, cold):
        f.advance(x, ctx, 3)
        f.advance(x, ctx, 4)
    one.advance(x, ctx, 7)
    np.testing.assert_array_equal(warm.V, one.V)  # 3 + 4 sweeps == 7 sweeps
    fresh = LearningFollower(1, GOALS, cfg)
    fresh.advance(x, ctx, 4)
    np.testing.assert_array_equal(cold.V, fresh.V)  # restarted: only the last 4 count


def test_exact_follower_reproduces_todays_hpgd():
    """n = inf (no follower steps, no schedule) is algorithms.run's hpgd, same random streams."""
    cfg = _cfg(lrs=[0.1], seeds=[0, 1], iters=20, eval_every=5, eval_last=1, tol=1e-10)
    ref = run(cfg, progress=False)
    got = run_learning(cfg, LearningConfig(eval_every=5))
    np.testing.assert_array_equal(got.final_x, ref.final_x)
    np.testing.assert_array_equal(got.trace_iter, ref.eval_iters)
    np.testing.assert_allclose(got.trace_F.T, ref.F, rtol=0, atol=1e-9)


@pytest.mark.parametrize("coupling", ["episodes", "stream"])
def test_multilevel_levels_telescope_to_the_top_level(coupling):
    """With common random numbers every level estimate is a function of (table, sampler state):
    sum_J p_J (g_0 + (g_J - g_{J-1}) / p_J) over forced J equals the top level's g exactly."""
    cfg = _cfg(steps_per_iter=2000)
    sched = MultilevelSchedule(2, 3, (0.5, 0.3, 0.2))
    x = np.random.default_rng(2).normal(0, 0.3, (1, 105))
    ctx = np.array([1])
    state0 = hpgd_kernels.seed_state(17)
    total, tops = np.zeros(105), []
    for J in (1, 2, 3):
        f = LearningFollower(1, GOALS, cfg)
        st = state0.copy()
        est = multilevel_hypergradient(f, x, ctx, 0, cfg, sched, st, level=J, coupling=coupling)
        assert est.follower_steps == 2 * 2**J and f.updates[0] == 2 * 2**J
        total += sched.level_probabilities[J - 1] * est.gradient.numpy()
        tops.append(est.top.numpy())
    np.testing.assert_allclose(total, tops[-1], rtol=1e-9, atol=1e-12)
    if coupling == "stream":  # the top estimate: the plain one after 16 sweeps, same state
        f = LearningFollower(1, GOALS, cfg)
        f.advance(x, ctx, 16)
        st = state0[None].copy()
        g = hypergradient(f.solution(x, ctx), cfg, "mc", None, None, "crossfit", st)
        np.testing.assert_array_equal(g[0], tops[-1])


def test_episode_synchronised_sampler_follows_the_fused_step_rule():
    """Episode e of the coupled sampler is the fused sampler's episode from the same state;
    the next episode restarts its own stream (independent of the first one's length)."""
    cfg = _cfg(steps_per_iter=400, n_envs=1)
    x = np.random.default_rng(4).normal(0, 0.3, (1, 105))
    f = LearningFollower(1, GOALS, cfg)
    f.advance(x, np.array([0]), 300)
    pi = f.solution(x, np.array([0])).pi[0]
    T = 400
    sampler = sampler_model(cfg.model.sample, 1, T)
    tab = hpgd_kernels.alias_buffers(E.n_cells)
    hpgd_kernels.build_alias(pi, sampler, tab)
    out = [np.empty(T, np.int64) for _ in range(3)]
    n_ep = coupled_sampling.sample_run_coupled(sampler, tab, Walk(GOALS[0], *out), np.uint64(99))
    assert n_ep >= 2
    ends = np.flatnonzero(out[2] == 0)
    for e in (1, 2):
        st = np.empty(4, np.uint64)
        coupled_sampling._episode_state(np.uint64(99), e, st)
        ref = [np.empty(T, np.int64) for _ in range(3)]
        hpgd_kernels.sample_run(sampler, tab, Walk(GOALS[0], *ref), st)
        lo, hi = ends[e - 1], ends[e] if e < len(ends) else T
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_array_equal(a[lo:hi], b[: hi - lo])


def test_budget_stops_each_run_at_its_follower_updates():
    cfg = _cfg(seeds=[0, 1], steps_per_iter=1000, tol=1e-10)
    plain = run_learning(cfg, LearningConfig(follower_steps=5, budget=50, eval_every=3))
    assert list(plain.iters) == [10, 10] and list(plain.updates) == [50, 50]
    acc = run_learning(cfg, LearningConfig(base_steps=2, max_level=2, budget=40))
    assert (acc.updates >= 40).all() and (acc.updates < 40 + 8).all()
    assert sum(acc.iters) == len(acc.levels)
    assert np.isfinite(acc.trace_F).all() and acc.trace_updates.shape == acc.trace_F.shape


@pytest.mark.parametrize(
    "learn,match",
    [
        (LearningConfig(base_steps=4, max_level=0), "max_level must be >= 1"),
        (LearningConfig(base_steps=4, max_level=2, probabilities=[0.5, 0.4]), "sum to 1"),
        (LearningConfig(base_steps=4, max_level=2, warm_start=False), "without warm start"),
        (LearningConfig(base_steps=4), "needs both base_steps and max_level"),
        (LearningConfig(follower_steps=4, base_steps=4, max_level=2), "not both"),
        (LearningConfig(follower_steps=0), "follower_steps must be >= 1"),
        (LearningConfig(budget=100), "needs a learning follower"),
    ],
)
def test_bad_input_is_refused_before_training(learn, match, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(LearningFollower, "advance", no_training)
    monkeypatch.setattr(FollowerSolver, "solve", no_training)
    with pytest.raises(ValueError, match=match):
        run_learning(_cfg(), learn)


def test_learning_needs_a_fused_estimator():
    with pytest.raises(ValueError, match="fused estimators"):
        run_learning(_cfg(algo="hpgd-cov"), LearningConfig(follower_steps=2))


def test_cli_runs_and_refuses_bad_input(tmp_path, capsys):
    from tabular_reference.cli import main

    out = tmp_path / "run"
    common = ["four-rooms-learning", "--seeds", "1", "--steps-per-iter", "500", "--out", str(out)]
    assert main([*common, "--base-steps", "2", "--max-level", "2", "--budget", "30"]) == 0
    assert (out / "summary.json").exists() and (out / "config.json").exists()
    assert "hpgd-mlmc n0=2 J=2: final F" in capsys.readouterr().out
    for bad, msg in [
        (["--base-steps", "2", "--max-level", "0"], "max_level must be >= 1"),
        (["--base-steps", "2", "--max-level", "2", "--probs", "0.5,0.4"], "sum to 1"),
        (["--base-steps", "2", "--max-level", "2", "--no-warm-start"], "without warm start"),
    ]:
        assert main([*common, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
