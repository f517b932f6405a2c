"""Tax-design learning households (docs/accelerated.md) against exact answers: the dense
oracle's soft Bellman operator over all 1,250 actions, the exact solver, the exact
hypergradient, and today's exact path (n = inf); one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch

from tabular_reference import mdp
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    exact_hypergradient,
    hypergradient,
)
from tabular_reference.tax_design.kernel import dense_kernel
from tabular_reference.tax_design.learning import (
    LearningHouseholds,
    learned_solution,
    policy_hypergradient,
)
from tabular_reference.tax_design.rewards import (
    asset_utility,
    household_action_reward,
    initial_theta,
    rates,
)
from tabular_reference.tax_design.sampling import balanced_contexts, rollout
from tabular_reference.tax_design.solver import leader_values, soft_policy_iteration

DT = torch.float64
BETA = torch.tensor([0.2, 0.5], dtype=DT)


def _theta(seed: int = 0) -> torch.Tensor:
    return initial_theta(2) + 0.3 * torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))


def test_sweeps_equal_dense_soft_bellman_operator(econ: Economy) -> None:
    """Each sweep is mdp.soft_bellman_operator over the 1,250 actions (no flow-group reduction),
    from a random table; the policy is the operator's, marginalised to flow groups."""
    theta = _theta(1)
    x = rates(theta)
    V0 = 5.0 * torch.randn(
        2, econ.n_contexts, econ.n_states, generator=torch.Generator().manual_seed(2), dtype=DT
    )
    hh = LearningHouseholds(econ, 2, BETA)
    hh.set_table(V0)
    K = dense_kernel(econ, x[:, 0])  # [R, S, F, S]
    ra = household_action_reward(econ, x[:, 1:])  # [R, C, A]
    Vs = V0.clone()
    for step in range(1, 4):
        sol = hh.advance(theta, 1)
        assert hh.updates == step
        for r in (0, 1):
            P = K[r][:, econ.flow_a, :]  # [S, A, S]
            for c in range(econ.n_contexts):
                rew = asset_utility(econ)[:, None] + ra[r, c][None, :]
                problem = mdp.SoftMDP(P, rew, econ.gamma, float(BETA[r]))
                TV, _, pi = mdp.soft_bellman_operator(problem, Vs[r, c])
                torch.testing.assert_close(sol.V[r, c], TV, rtol=0, atol=1e-12)
                Vs[r, c] = TV
    for r in (0, 1):  # the learned policy: softmax of one more lookahead
        P = K[r][:, econ.flow_a, :]
        for c in range(econ.n_contexts):
            rew = asset_utility(econ)[:, None] + ra[r, c][None, :]
            problem = mdp.SoftMDP(P, rew, econ.gamma, float(BETA[r]))
            _, _, pi = mdp.soft_bellman_operator(problem, Vs[r, c])
            pi_f = torch.zeros(econ.n_states, econ.n_flows, dtype=DT).index_add(1, econ.flow_a, pi)
            torch.testing.assert_close(sol.pi_f[r, c], pi_f, rtol=0, atol=1e-12)
            pa = sol.pi_f[r, c][:, econ.flow_a] * sol.log_pa[r, c].exp()[None, :]
            torch.testing.assert_close(pa, pi, rtol=0, atol=1e-12)


def test_many_sweeps_reach_the_exact_solver(econ: Economy) -> None:
    theta = _theta(3)
    exact = soft_policy_iteration(econ, theta, BETA, tol=1e-12)
    hh = LearningHouseholds(econ, 2, BETA)
    sol = hh.advance(theta, 400)
    torch.testing.assert_close(sol.V, exact.V, rtol=0, atol=1e-8 * float(exact.V.abs().max()))
    torch.testing.assert_close(sol.pi_f, exact.pi_f, rtol=0, atol=1e-8)
    torch.testing.assert_close(sol.P, exact.P, rtol=0, atol=1e-8)
    assert (sol.residual <= 1e-8).all() and sol.iters == 400


def test_warm_start_continues_and_cold_start_restarts(econ: Economy) -> None:
    theta = _theta(4)
    warm, cold = LearningHouseholds(econ, 2, BETA), LearningHouseholds(econ, 2, BETA, False)
    one, fresh = LearningHouseholds(econ, 2, BETA), LearningHouseholds(econ, 2, BETA)
    for hh in (warm, cold):
        hh.advance(theta, 3)
        hh.advance(theta, 4)
    one.advance(theta, 7)
    fresh.advance(theta, 4)
    torch.testing.assert_close(warm.V, one.V, rtol=0, atol=0)  # 3 + 4 sweeps == 7 sweeps
    torch.testing.assert_close(cold.V, fresh.V, rtol=0, atol=0)  # restarted: the last 4 count
    assert warm.updates == 7 and cold.updates == 7


def test_infinite_budget_is_the_exact_solver_and_todays_hpgd(econ: Economy) -> None:
    """n = None: the exact solver's FollowerSolution (warm-started from the table), hence the
    same trajectories and HPGD estimate as today's exact path with the same generator."""
    theta = _theta(5)
    hh = LearningHouseholds(econ, 2, BETA)
    hh.advance(theta, 5)
    V5 = hh.V.clone()
    sol = hh.advance(theta, None, tol=1e-11)
    ref = soft_policy_iteration(econ, theta, BETA, V0=V5, tol=1e-11)
    for name in ("V", "pi_f", "log_pa", "P", "residual"):
        torch.testing.assert_close(getattr(sol, name), getattr(ref, name), rtol=0, atol=0)
    assert sol.iters == ref.iters and hh.updates == 5
    torch.testing.assert_close(hh.V, ref.V, rtol=0, atol=0)
    x = rates(theta)
    ctx = balanced_contexts(econ, 2, 20)
    Vbar = leader_values(econ, ref.P, ref.pi_f, ref.log_pa, x[:, 0], x[:, 1:])
    grads = []
    for s in (sol, ref):
        traj = rollout(econ, s, x[:, 0], ctx, 200, torch.Generator().manual_seed(7))
        grads.append(hypergradient(EstimationPoint(econ, theta, BETA, s), traj, critic=Vbar)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_policy_hypergradient_at_the_exact_households_is_exact(econ: Economy) -> None:
    theta = _theta(6)
    _, g, sol = exact_hypergradient(econ, theta, BETA, tol=1e-12)
    torch.testing.assert_close(
        policy_hypergradient(econ, theta, BETA, sol), g, rtol=1e-8, atol=1e-9
    )
    learned = learned_solution(econ, theta, BETA, sol.V)  # the exact table as a learned one
    torch.testing.assert_close(
        policy_hypergradient(econ, theta, BETA, learned), g, rtol=1e-8, atol=1e-9
    )


def test_policy_hypergradient_is_the_mean_of_hpgd_at_a_learned_policy(econ: Economy) -> None:
    """After 4 sweeps HPGD (covariance form, exact leader table of the learned policy)
    estimates the plug-in formula at the learned policy, not the exact hypergradient: z-test
    per component over 300 independent estimates (|z| <= 4.5)."""
    theta = _theta(7)[:1]
    beta = BETA[:1]
    hh = LearningHouseholds(econ, 1, beta)
    sol = hh.advance(theta, 4)
    target = policy_hypergradient(econ, theta, beta, sol)
    x = rates(theta)
    Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
    gen = torch.Generator().manual_seed(11)
    ctx = balanced_contexts(econ, 1, 100)
    draws = []
    for _ in range(300):
        traj = rollout(econ, sol, x[:, 0], ctx, 200, gen)
        draws.append(
            hypergradient(
                EstimationPoint(econ, theta, beta, sol), traj, form="covariance", critic=Vbar
            )[0][0]
        )
    g = torch.stack(draws)
    z = (g.mean(0) - target[0]) / (g.std(0) / len(draws) ** 0.5)
    assert (z.abs() <= 4.5).all(), z
    exact = exact_hypergradient(econ, theta, beta)[1][0]  # and the test can tell them apart
    assert ((g.mean(0) - exact) / (g.std(0) / len(draws) ** 0.5)).abs().max() > 4.5


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_budget_is_refused(econ: Economy, n) -> None:
    hh = LearningHouseholds(econ, 2, BETA)
    with pytest.raises(ValueError, match="follower sweeps n must be an integer >= 1"):
        hh.advance(_theta(), n)
    assert hh.updates == 0 and (hh.V == 0).all()


def test_bad_shapes_are_refused(econ: Economy) -> None:
    hh = LearningHouseholds(econ, 2, BETA)
    with pytest.raises(ValueError, match="theta has 3 runs"):
        hh.advance(initial_theta(3), 1)
    with pytest.raises(ValueError, match="V must have shape"):
        hh.set_table(torch.zeros(2, econ.n_states))
    with pytest.raises(ValueError, match="beta must be > 0"):
        LearningHouseholds(econ, 2, 0.0)
