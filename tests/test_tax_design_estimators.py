"""Sampling, HPGD and zero-order estimates of the tax-design hypergradient vs exact answers.

Unbiasedness is checked per component with a z-test against the exact value (mean of ``R``
independent estimates, standard error from their spread; |z| <= 4.5, fixed seeds).
"""

from __future__ import annotations

import pytest
import torch

from align_cbrl.estimators.episodes import discounted_returns, time_in_episode
from align_cbrl.estimators.zero_order import gaussian_smoothing_gradient, sample_directions
from tabular_reference.tax_design.algorithms import AlgoSettings, run_batch, sampled_welfare
from tabular_reference.tax_design.critic import MonteCarloCritic
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    exact_hypergradient,
    flat_batch,
    hypergradient,
    leader_q_table,
    leader_rewards,
)
from tabular_reference.tax_design.kernel import dense_kernel, kernel_parts, mix_kernel
from tabular_reference.tax_design.rewards import asset_welfare, initial_theta, rates, welfare_action
from tabular_reference.tax_design.sampling import balanced_contexts, rollout
from tabular_reference.tax_design.solver import (
    group_average,
    leader_values,
    soft_policy_iteration,
    welfare,
)

DT = torch.float64


Z_MAX = 4.5


def _z(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    n = samples.shape[0]
    se = samples.std(0) / n**0.5
    return (samples.mean(0) - exact) / se


def test_rollout_distribution(econ: Economy) -> None:
    R, N = 4, 500
    theta = initial_theta(R) + 0.3 * torch.randn(R, 4, generator=torch.Generator().manual_seed(0))
    sol = soft_policy_iteration(econ, theta, 0.2)
    gen = torch.Generator().manual_seed(1)
    ctx = balanced_contexts(econ, R, N)
    traj = rollout(econ, sol, rates(theta)[:, 0], ctx, 2, gen)
    for k in range(2):
        sel = ctx[0] == k
        n = int(sel.sum())
        # first flow group: sum_s mu0(s) pi(f|s); second state: mu0^T P_pi
        p_flow = econ.mu0 @ sol.pi_f[0, k]
        p_s2 = econ.mu0 @ sol.P[0, k]
        for draws, p in ((traj.flows[0, sel, 0], p_flow), (traj.states[0, sel, 1], p_s2)):
            freq = torch.bincount(draws, minlength=p.numel()).to(DT) / n
            se = torch.sqrt(p * (1 - p) / n)
            assert ((freq - p).abs() <= 5 * se + 5 / n).all()
    # actions lie in their flow group
    assert torch.equal(econ.flow_a[traj.actions], traj.flows)


def _frozen_policy_gradient(econ: Economy, theta: torch.Tensor, beta: float) -> torch.Tensor:
    """Exact dF/dtheta with the households' policy held fixed (what the naive form targets)."""
    sol = soft_policy_iteration(econ, theta, beta, tol=1e-12)
    th = theta.clone().requires_grad_(True)
    x = rates(th)
    parts = kernel_parts(econ, x[:, 0])
    P = mix_kernel(parts, sol.pi_f)
    Vbar = leader_values(econ, P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
    F = (Vbar @ econ.mu0) @ econ.context_probs
    (g,) = torch.autograd.grad(F.sum(), th)
    return g


def test_naive_form_is_unbiased_for_frozen_policy_gradient(econ: Economy) -> None:
    """Direct term (d rbar) + the planner's transition-score term (d log P, income tax)."""
    R, N, beta = 24, 16, 0.2
    theta = initial_theta(R)
    exact = _frozen_policy_gradient(econ, theta, beta)[0]
    sol = soft_policy_iteration(econ, theta, beta)
    gen = torch.Generator().manual_seed(3)
    traj = rollout(econ, sol, rates(theta)[:, 0], balanced_contexts(econ, R, N), 200, gen)
    at = EstimationPoint(econ, theta, torch.full((R,), beta, dtype=DT), sol)
    g, w = hypergradient(at, traj, form="naive")
    assert torch.all(w.follower == 0)
    assert (_z(g, exact).abs() <= Z_MAX).all(), (g.mean(0), exact)
    assert exact[0].abs() > 10 * (g[:, 0].std() / R**0.5)  # the test has power on tau


def test_table_covariance_is_unbiased_for_exact_hypergradient(econ: Economy) -> None:
    """Full HPGD estimate (reward term for VAT, follower pseudo-reward and planner transition
    terms for the income tax, direct term): core form "covariance" with the exact leader critic
    table (Qbar, Vbar) as leader values."""
    R, N, beta = 24, 40, 0.2
    theta = initial_theta(R)
    _, exact, sol = exact_hypergradient(econ, theta, beta)
    Vbar = welfare(econ, theta, beta).Vbar
    gen = torch.Generator().manual_seed(4)
    traj = rollout(econ, sol, rates(theta)[:, 0], balanced_contexts(econ, R, N), 200, gen)
    beta_t = torch.full((R,), beta, dtype=DT)
    g, _ = hypergradient(
        EstimationPoint(econ, theta, beta_t, sol),
        traj,
        form="covariance",
        leader_q="table",
        critic=Vbar,
    )
    z = _z(g, exact[0])
    assert (z.abs() <= Z_MAX).all(), (g.mean(0), exact[0])
    # power: the VAT components are resolved away from zero and from the naive target
    naive = _frozen_policy_gradient(econ, theta[:1], beta)[0]
    se = g.std(0) / R**0.5
    assert ((g.mean(0)[1:] - naive[1:]).abs() > 4 * se[1:]).all()


def test_table_needs_critic(econ: Economy) -> None:
    theta = initial_theta(2)
    sol = soft_policy_iteration(econ, theta, 0.1)
    traj = rollout(
        econ, sol, rates(theta)[:, 0], balanced_contexts(econ, 2, 2), 3, torch.Generator()
    )
    beta = torch.full((2,), 0.1, dtype=DT)
    with pytest.raises(ValueError, match="needs critic values"):
        hypergradient(EstimationPoint(econ, theta, beta, sol), traj, form="mc", leader_q="table")
    with pytest.raises(ValueError, match="critic must have shape"):
        hypergradient(
            EstimationPoint(econ, theta, beta, sol), traj, critic=torch.zeros(2, 2, 5, dtype=DT)
        )
    with pytest.raises(ValueError, match="unknown leader_q"):
        hypergradient(EstimationPoint(econ, theta, beta, sol), traj, leader_q="bogus")
    with pytest.raises(ValueError, match="unknown HPGD form"):
        hypergradient(EstimationPoint(econ, theta, beta, sol), traj, form="bogus")


def test_zero_order_estimate_matches_gradient(econ: Economy) -> None:
    n, beta, u = 100, 0.3, 1e-4
    theta = initial_theta(1)
    _, exact, sol = exact_hypergradient(econ, theta, beta)
    z = sample_directions(torch.Generator().manual_seed(5), (n, 4))
    base = welfare(econ, theta, beta, tol=1e-13).F.expand(n)
    plus = welfare(econ, theta + u * z, beta, tol=1e-13, V0=sol.V.expand(n, -1, -1)).F
    g = gaussian_smoothing_gradient(plus, base, z, u)
    assert (_z(g, exact[0]).abs() <= Z_MAX).all()


def test_group_average_is_policy_weighted_mean(econ: Economy) -> None:
    theta = initial_theta(1)
    sol = soft_policy_iteration(econ, theta, 0.1)
    x = rates(theta)
    w = welfare_action(econ, x[:, 0], x[:, 1:])
    avg = group_average(econ, sol.log_pa, w)
    f = 57
    members = econ.group_index[f, econ.group_mask[f]]
    p = sol.log_pa[0, 1, members].exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-13)
    assert avg[0, 1, f].item() == pytest.approx((p * w[0, members]).sum().item(), rel=1e-13)


def test_exact_ascent_increases_welfare(econ: Economy) -> None:
    hist = run_batch(econ, "exact", [0.2, 0.2], [0, 1], 5, AlgoSettings(), progress=False)
    start = welfare(econ, initial_theta(1), 0.2).F.item()
    assert hist.welfare[0, 0] == pytest.approx(start, rel=1e-12)
    assert (hist.welfare[1:] > hist.welfare[:-1]).all()
    assert hist.rates.shape == (6, 2, 4)


@pytest.mark.parametrize("algo", ["hpgd", "naive", "zero_order", "zero_order_sampled"])
def test_sampling_algorithms_run(econ: Economy, algo: str) -> None:
    hist = run_batch(econ, algo, [0.1, 0.3], [0, 1], 3, AlgoSettings(episodes=4), progress=False)
    assert hist.welfare.shape == (4, 2) and (hist.grad_norm > 0).all()
    # each step moves theta by at most lr * max_norm (SGD with clipping)
    moved = torch.linalg.vector_norm(torch.as_tensor(hist.theta) - initial_theta(2), dim=1)
    assert (moved <= 3 * 0.01 + 1e-12).all()


def test_sampled_welfare_is_unbiased(econ: Economy) -> None:
    """Monte-Carlo values of the sampled-value zero-order baseline vs the exact F_xi = mu0^T Vbar_xi
    per household type (z-test over runs; 200-step episodes truncate by 0.9^200)."""
    R, N, beta = 16, 20, 0.2
    theta = initial_theta(R) + 0.3 * torch.randn(R, 4, generator=torch.Generator().manual_seed(3))
    W = welfare(econ, theta, beta)
    F_ctx = W.Vbar @ econ.mu0  # [R, C]
    gen = torch.Generator().manual_seed(4)
    for k in range(econ.n_contexts):
        ctx = torch.full((R, N), k, dtype=torch.long)
        est = torch.stack([sampled_welfare(econ, theta, W.follower, ctx, gen) for _ in range(3)])
        err = (est - F_ctx[:, k]).reshape(-1)  # runs differ in theta: compare run-wise errors
        z = err.mean() / (err.std() / err.numel() ** 0.5)
        assert abs(z) <= Z_MAX, (k, float(err.mean()), float(err.std()))
        assert float(err.std()) > 0


def test_settings_errors() -> None:
    with pytest.raises(ValueError, match="even integer"):
        AlgoSettings(episodes=3)
    with pytest.raises(ValueError, match="learning rate"):
        AlgoSettings(lr=-1.0)
    with pytest.raises(ValueError, match="unknown HPGD form"):
        AlgoSettings(form="x")
    with pytest.raises(ValueError, match="unknown leader_q"):
        AlgoSettings(leader_q="x")
    with pytest.raises(ValueError, match="unknown algorithm"):
        run_batch(Economy(), "sgd", [0.1], [0], 1, AlgoSettings(), progress=False)


def test_expected_follower_transition_is_unbiased(econ: Economy) -> None:
    """Rao-Blackwellised follower transition term: same mean, compared with the exact value."""
    R, N, beta = 24, 40, 0.2
    theta = initial_theta(R)
    _, exact, sol = exact_hypergradient(econ, theta, beta)
    Vbar = welfare(econ, theta, beta).Vbar
    traj = rollout(
        econ,
        sol,
        rates(theta)[:, 0],
        balanced_contexts(econ, R, N),
        200,
        torch.Generator().manual_seed(6),
    )
    beta_t = torch.full((R,), beta, dtype=DT)
    kw = {"form": "covariance", "leader_q": "table", "critic": Vbar}
    g_exp, _ = hypergradient(
        EstimationPoint(econ, theta, beta_t, sol), traj, follower_transition="expected", **kw
    )
    g_score, _ = hypergradient(
        EstimationPoint(econ, theta, beta_t, sol), traj, follower_transition="score", **kw
    )
    assert (_z(g_exp, exact[0]).abs() <= Z_MAX).all(), (g_exp.mean(0), exact[0])
    # VAT components do not involve the transition: identical; the tax component differs
    assert torch.allclose(g_exp[:, 1:], g_score[:, 1:], atol=1e-12)
    assert not torch.allclose(g_exp[:, 0], g_score[:, 0])
    with pytest.raises(ValueError, match="follower_transition"):
        hypergradient(
            EstimationPoint(econ, theta, beta_t, sol), traj, follower_transition="x", **kw
        )


def test_learned_critic_matches_exact_values(econ: Economy) -> None:
    """MonteCarloCritic (C): visit averages of within-episode returns vs the exact Vbar."""
    R, N, beta = 1, 400, 0.3
    theta = initial_theta(R)
    W = welfare(econ, theta, beta)
    traj = rollout(
        econ,
        W.follower,
        rates(theta)[:, 0],
        balanced_contexts(econ, R, N),
        200,
        torch.Generator().manual_seed(7),
    )
    b = flat_batch(econ, traj)
    rewards = leader_rewards(econ, theta, b)
    critic = MonteCarloCritic(econ, R, decay=0.0, horizon=100)
    assert critic.values() is None
    critic.update(b["joint_state"], rewards, b["episode_start"])
    values = critic.values()[0].reshape(-1)
    exact = W.Vbar[0].reshape(-1)
    # standard errors from the returns themselves, at cells with >= 200 usable visits
    g_hat = discounted_returns(rewards, b["episode_start"], econ.gamma)[0]
    usable = time_in_episode(b["episode_start"])[0] <= 100
    cells = b["joint_state"][0][usable]
    g_u = g_hat[usable]
    checked = 0
    for cell in torch.unique(cells):
        sel = g_u[cells == cell]
        if sel.numel() < 200:
            continue
        se = sel.std() / sel.numel() ** 0.5
        assert values[cell].item() == pytest.approx(sel.mean().item(), rel=1e-12)
        assert abs(values[cell] - exact[cell]) <= Z_MAX * se
        checked += 1
    assert checked >= 10


def test_learned_critic_errors(econ: Economy) -> None:
    with pytest.raises(ValueError, match="decay"):
        MonteCarloCritic(econ, 1, decay=1.0)
    with pytest.raises(ValueError, match="horizon"):
        MonteCarloCritic(econ, 1, horizon=500)


def test_leader_advantage_table_has_zero_policy_mean(econ: Economy) -> None:
    """Exact critic: Qbar(s, a) by the dense kernel, and E_{a ~ pi*}[Abar(s, a)] = 0."""
    theta = initial_theta(1) + 0.2
    W = welfare(econ, theta, 0.2, tol=1e-12)
    sol = W.follower
    q = leader_q_table(econ, theta, sol, W.Vbar, advantage=False).reshape(1, 2, 101, -1)
    a = leader_q_table(econ, theta, sol, W.Vbar).reshape(1, 2, 101, -1)
    x = rates(theta)
    K = dense_kernel(econ, x[:, 0])[0]  # [S, F, S]
    cont = torch.einsum("sfj,cj->csf", K, W.Vbar[0])[..., econ.flow_a]
    rbar = welfare_action(econ, x[:, 0], x[:, 1:])[0][None, None, :]
    rbar = rbar + asset_welfare(econ)[None, :, None]
    assert torch.allclose(q[0], rbar + econ.gamma * cont, atol=1e-10)
    pi = sol.pi_f[..., econ.flow_a] * sol.log_pa.exp()[:, :, None, :]
    assert (pi * a).sum(-1).abs().max() < 1e-9
