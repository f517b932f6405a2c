"""Exact households, welfare and hypergradient of the tax design (``docs/theory.md`` §1, §2, §6).

Independent references: the soft Bellman equation over all 1,250 actions (no flow grouping), the
generic dense oracle ``tabular_reference.mdp`` (soft policy iteration and the closed-form adjoint
hypergradient), and central finite differences.
"""

from __future__ import annotations

import pytest
import torch

from tabular_reference import mdp
from tabular_reference.tax_design import rewards
from tabular_reference.tax_design.economy import Economy, EconomyConfig
from tabular_reference.tax_design.hypergradient import exact_hypergradient
from tabular_reference.tax_design.kernel import dense_kernel
from tabular_reference.tax_design.solver import soft_policy_iteration, welfare

DT = torch.float64


def _thetas(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return rewards.initial_theta(n) + 0.8 * torch.randn(n, 4, generator=gen, dtype=DT)


def test_soft_bellman_over_all_actions() -> None:
    econ = Economy()
    theta = _thetas(2, 0)
    beta = torch.tensor([0.1, 0.3], dtype=DT)
    sol = soft_policy_iteration(econ, theta, beta, tol=1e-12)
    x = rewards.rates(theta)
    K = dense_kernel(econ, x[:, 0])  # [R, S, F, S]
    KV = torch.einsum("rsfj,rcj->rcsf", K, sol.V)[..., econ.flow_a]  # [R, C, S, A]
    Q = (
        rewards.asset_utility(econ)[None, None, :, None]
        + rewards.household_action_reward(econ, x[:, 1:])[:, :, None, :]
        + econ.gamma * KV
    )
    beta4 = beta[:, None, None, None]
    V_full = beta[:, None, None] * torch.logsumexp(Q / beta4, dim=-1)
    assert (V_full - sol.V).abs().max() < 1e-9
    pi_full = torch.softmax(Q / beta4, dim=-1)
    pi_grouped = sol.pi_f[..., econ.flow_a] * sol.log_pa.exp()[:, :, None, :]
    assert torch.allclose(pi_full, pi_grouped, atol=1e-12)
    assert sol.residual.max() < 1e-12 * sol.V.abs().max()


def test_warm_start_reaches_same_solution() -> None:
    econ = Economy()
    theta = _thetas(2, 1)
    cold = soft_policy_iteration(econ, theta, 0.2, tol=1e-12)
    warm = soft_policy_iteration(econ, theta + 0.01, 0.2, V0=cold.V, tol=1e-12)
    again = soft_policy_iteration(econ, theta + 0.01, 0.2, tol=1e-12)
    assert torch.allclose(warm.V, again.V, atol=1e-9)
    assert warm.iters < again.iters


@pytest.fixture(scope="module")
def small() -> Economy:
    return Economy(EconomyConfig(n_bins=21))


def _dense_problem(econ: Economy, th: torch.Tensor, k: int):
    """Dense ``P[S, A, S]``, ``r``, ``rbar`` of household type ``k`` as functions of theta."""
    x = rewards.rates(th[None])
    P = dense_kernel(econ, x[:, 0])[0][:, econ.flow_a, :]
    r = (
        rewards.asset_utility(econ)[:, None]
        + rewards.household_action_reward(econ, x[:, 1:])[0, k][None, :]
    )
    rbar = (
        rewards.asset_welfare(econ)[:, None]
        + rewards.welfare_action(econ, x[:, 0], x[:, 1:])[0][None, :]
    )
    return P, r, rbar


def test_against_dense_oracle(small: Economy) -> None:
    """Flow-group solver and implicit layer vs the dense 1,250-action oracle (closed-form
    adjoint hypergradient with autograd Jacobians of P, r, rbar)."""
    theta = _thetas(2, 2)
    for beta in (0.1, 0.3):
        F, grad, sol = exact_hypergradient(small, theta, beta)
        W = welfare(small, theta, beta, tol=1e-12)
        assert torch.allclose(F, W.F, atol=1e-9)
        for r_ in range(2):
            F_ref = torch.zeros((), dtype=DT)
            g_ref = torch.zeros(4, dtype=DT)
            for k in range(small.n_contexts):
                th = theta[r_]
                P, r, rbar = _dense_problem(small, th, k)
                dP, dr, drbar = torch.func.jacfwd(lambda t, k=k: _dense_problem(small, t, k))(th)
                problem = mdp.SoftMDP(P, r, small.gamma, beta, tol=1e-12)
                ref = mdp.soft_solve(problem)
                assert torch.allclose(ref.V, sol.V[r_, k], atol=1e-9)
                jac = mdp.InputJacobians(dr=dr, drbar=drbar, dP=dP)
                F_k, g_k = mdp.exact_hypergradient(problem, rbar, small.mu0, jac)
                p = small.context_probs[k]
                F_ref = F_ref + p * F_k
                g_ref = g_ref + p * g_k
            assert F[r_].item() == pytest.approx(F_ref.item(), rel=1e-10)
            assert torch.allclose(grad[r_], g_ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("beta", [0.1, 0.2, 0.3])
def test_hypergradient_matches_central_differences(beta: float) -> None:
    econ = Economy()
    theta = _thetas(2, 3)
    _, grad, _ = exact_hypergradient(econ, theta, beta)
    h = 1e-5
    eye = torch.eye(4, dtype=DT)
    plus = torch.cat([theta + h * eye[k] for k in range(4)])
    minus = torch.cat([theta - h * eye[k] for k in range(4)])
    Fp = welfare(econ, plus, beta, tol=1e-13).F.reshape(4, 2).T
    Fm = welfare(econ, minus, beta, tol=1e-13).F.reshape(4, 2).T
    fd = (Fp - Fm) / (2 * h)
    rel = (fd - grad).norm(dim=1) / grad.norm(dim=1)
    assert (rel < 1e-4).all(), rel


def test_bad_inputs() -> None:
    econ = Economy(EconomyConfig(n_bins=11))
    with pytest.raises(ValueError, match=r"shape \[R, 4\]"):
        welfare(econ, torch.zeros(3, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        welfare(econ, rewards.initial_theta(1), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        welfare(econ, torch.full((1, 4), float("nan"), dtype=DT), 0.1)
    with pytest.raises(ValueError, match="V0 must have shape"):
        welfare(econ, rewards.initial_theta(1), 0.1, V0=torch.zeros(3, dtype=DT))
