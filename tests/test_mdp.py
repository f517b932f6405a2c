"""Dense MDP oracle (tabular_reference.mdp) against independent answers."""

from __future__ import annotations

import math

import pytest
import torch

from tabular_reference import mdp

D = torch.float64


def _random_mdp(seed: int, S: int = 6, A: int = 3, K: int = 4, terminal: bool = True):
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(S, A, S, generator=g, dtype=D) ** 3
    P = P / P.sum(-1, keepdim=True)
    term = torch.zeros(S, dtype=torch.bool)
    if terminal:
        term[-1] = True
    # parametrised rewards and transitions: r = r0 + Wr x, rbar = rb0 + Wb x, logits of P
    r0 = torch.randn(S, A, generator=g, dtype=D)
    Wr = torch.randn(S, A, K, generator=g, dtype=D)
    rb0 = torch.randn(S, A, generator=g, dtype=D)
    Wb = torch.randn(S, A, K, generator=g, dtype=D) * 0.5
    WP = torch.randn(S, A, S, K, generator=g, dtype=D) * 0.5
    logP = torch.log(P)
    mu0 = torch.softmax(torch.randn(S, generator=g, dtype=D), 0)
    mu0[-1] = 0.0
    mu0 = mu0 / mu0.sum()
    # terminal rewards must not depend on the action
    r0[term] = r0[term][:, :1]
    Wr[term] = Wr[term][:, :1]
    rb0[term] = rb0[term][:, :1]
    Wb[term] = Wb[term][:, :1]

    def build(x):
        r = r0 + Wr @ x
        rbar = rb0 + Wb @ x
        Px = torch.softmax(logP + WP @ x, dim=-1)
        return Px, r, rbar

    return build, term, mu0, (Wr, Wb, WP, logP)


def _F(build, x, gamma, beta, term, mu0, prior=None):
    P, r, rbar = build(x)
    sol = mdp.soft_solve(mdp.SoftMDP(P, r, gamma, beta, term, prior, tol=1e-13))
    return float(mdp.leader_value(P, sol.pi, rbar, gamma, mu0, term))


def test_bandit_closed_form():
    """One state, terminal after one step: V = beta*logsumexp(r/beta), pi = softmax(r/beta)."""
    r = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=D)
    P = torch.zeros(1, 4, 1, dtype=D)
    P[..., 0] = 1.0
    beta = 0.25
    sol = mdp.soft_solve(mdp.SoftMDP(P, r, 0.0, beta))
    assert sol.V.item() == pytest.approx(beta * math.log(sum(math.exp(v / beta) for v in r[0])))
    torch.testing.assert_close(sol.pi[0], torch.softmax(r[0] / beta, 0))
    prior = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=D)
    sol = mdp.soft_solve(mdp.SoftMDP(P, r, 0.0, beta, prior=prior))
    expect = prior[0] * torch.exp(r[0] / beta)
    torch.testing.assert_close(sol.pi[0], expect / expect.sum())
    assert sol.V.item() == pytest.approx(beta * math.log(float(expect.sum())))


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_solution_is_fixed_point(beta):
    build, term, _, _ = _random_mdp(0)
    P, r, _ = build(torch.zeros(4, dtype=D))
    problem = mdp.SoftMDP(P, r, 0.9, beta, term, tol=1e-12)
    sol = mdp.soft_solve(problem)
    assert sol.residual <= 1e-12
    # independent check: plain soft value iteration from zero converges to the same V
    V = torch.zeros(6, dtype=D)
    for _ in range(3000):
        V, _, _ = mdp.soft_bellman_operator(problem, V)
    torch.testing.assert_close(sol.V, V, atol=1e-10, rtol=0)
    assert sol.V[-1].item() == pytest.approx(r[-1, 0].item())  # terminal: no entropy bonus
    torch.testing.assert_close(sol.pi.sum(-1), torch.ones(6, dtype=D))


def test_leader_value_matches_enumerated_rollouts():
    """f = mu0^T Vbar equals the truncated sum_t gamma^t E[rbar] computed by propagating the
    state distribution forward (independent of the linear solve)."""
    build, term, mu0, _ = _random_mdp(1)
    P, r, rbar = build(torch.zeros(4, dtype=D))
    gamma = 0.8
    sol = mdp.soft_solve(mdp.SoftMDP(P, r, gamma, 0.3, term))
    f = mdp.leader_value(P, sol.pi, rbar, gamma, mu0, term)
    d = mu0.clone()
    total = 0.0
    for t in range(400):
        live = d * (~term)
        total += gamma**t * float((live[:, None] * sol.pi * rbar).sum())
        total += gamma**t * float((d * term) @ rbar[:, 0])
        d = torch.einsum("s,sa,sat->t", live, sol.pi, P)
    assert float(f) == pytest.approx(total, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_prior", [False, True])
def test_exact_hypergradient_vs_finite_differences(seed, with_prior):
    build, term, mu0, (Wr, Wb, WP, _) = _random_mdp(seed)
    gamma, beta = 0.9, 0.2
    prior = None
    if with_prior:
        prior = torch.softmax(
            torch.randn(6, 3, generator=torch.Generator().manual_seed(9), dtype=D), -1
        )
    x = torch.randn(4, generator=torch.Generator().manual_seed(100 + seed), dtype=D) * 0.3
    P, r, rbar = build(x)
    # dP/dx for P = softmax(logP + WP x): dP = P * (WP - sum_t P WP)
    dP = P[..., None] * (WP - torch.einsum("sat,satk->sak", P, WP)[:, :, None, :])
    problem = mdp.SoftMDP(P, r, gamma, beta, term, prior)
    F, g = mdp.exact_hypergradient(problem, rbar, mu0, mdp.InputJacobians(Wr, Wb, dP))
    assert float(F) == pytest.approx(_F(build, x, gamma, beta, term, mu0, prior), rel=1e-12)
    h = 1e-5
    fd = torch.zeros(4, dtype=D)
    for k in range(4):
        e = torch.zeros(4, dtype=D)
        e[k] = h
        fd[k] = (
            _F(build, x + e, gamma, beta, term, mu0, prior)
            - _F(build, x - e, gamma, beta, term, mu0, prior)
        ) / (2 * h)
    assert float((g - fd).norm() / fd.norm()) < 1e-6
    # autograd through the implicit-function layer gives the same vector
    xa = x.clone().requires_grad_(True)
    P, r, rbar = build(xa)
    pi = mdp.soft_best_response(mdp.SoftMDP(P, r, gamma, beta, term, prior))
    Fa = mdp.leader_value(P, pi, rbar, gamma, mu0, term)
    (ga,) = torch.autograd.grad(Fa, xa)
    torch.testing.assert_close(ga, g, atol=1e-10, rtol=1e-8)


def test_bad_input_errors():
    P = torch.full((2, 2, 2), 0.5)
    r = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="beta"):
        mdp.soft_solve(mdp.SoftMDP(P, r, 0.9, 0.0))
    with pytest.raises(ValueError, match="gamma"):
        mdp.soft_solve(mdp.SoftMDP(P, r, 1.0, 0.1))
    with pytest.raises(ValueError, match="shape"):
        mdp.soft_solve(mdp.SoftMDP(P, torch.zeros(3, 2), 0.9, 0.1))
