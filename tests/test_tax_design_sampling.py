"""Tax design: the numba sampler, the cell-summed HPGD surrogate and the sweep's statistics,
each against an independent computation (exact kernel laws, the per-step autograd surrogate,
hand-counted curves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_cbrl.estimators.trajectory import hpgd_weights
from tabular_reference.tax_design.algorithms import (
    AlgoSettings,
    batch_generator,
    episodes_from_steps,
    sampled_welfare,
)
from tabular_reference.tax_design.economy import Economy, EconomyConfig
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    flat_batch,
    hypergradient,
    leader_q_table,
    leader_rewards,
)
from tabular_reference.tax_design.kernel import expected_next, kernel_parts, log_kernel
from tabular_reference.tax_design.rewards import initial_theta, rates
from tabular_reference.tax_design.sampling import _alias, balanced_contexts, rollout
from tabular_reference.tax_design.solver import leader_values, soft_policy_iteration, welfare
from tabular_reference.tax_design.sweep import half_gain_iteration, reach_iteration, seed_reach

DT = torch.float64


def test_alias_tables_reproduce_rows() -> None:
    """Walker tables: P(k) = (prob[k] + sum_{j: alias[j] = k} (1 - prob[j])) / K, exactly."""
    rng = np.random.default_rng(0)
    p = rng.random((50, 13)) * (rng.random((50, 13)) < 0.7)
    p[:, 0] += 1e-3
    count = rng.integers(1, 14, size=50)
    prob, alias = _alias(p, count)
    for i in range(50):
        K = count[i]
        law = prob[i, :K].copy()
        for j in range(K):
            if alias[i, j] != j:
                law[alias[i, j]] += 1.0 - prob[i, j]
        target = p[i, :K] / p[i, :K].sum()
        assert np.allclose(law / K, target, atol=1e-13), i


@pytest.mark.parametrize("init_mean", [-97.0, 97.0])
def test_rollout_at_the_edges_matches_kernel(init_mean: float) -> None:
    """Starting at the edges of the asset range (clipped means and in-grid rejection): the
    second state's law is mu0^T P_pi (P_pi from the exact, integrated kernel)."""
    econ = Economy(EconomyConfig(init_mean=init_mean, init_std=2.0))
    R, N = 2, 40_000
    theta = initial_theta(R)
    theta[:, 0] = torch.tensor([-3.0, 2.5])  # tau ~ 0.09 (work pays) and ~ 1.85 (it costs)
    sol = soft_policy_iteration(econ, theta, 0.3)
    ctx = balanced_contexts(econ, R, N)
    traj = rollout(econ, sol, rates(theta)[:, 0], ctx, 2, torch.Generator().manual_seed(5))
    clipped = 0
    for r in range(R):
        s0, f0 = traj.states[r, :, 0], traj.flows[r, :, 0]
        clipped += int((sol.parts.clip_hi | sol.parts.clip_lo)[r, s0, f0].sum())
        for k in range(econ.n_contexts):
            sel = ctx[r] == k
            n = int(sel.sum())
            p = econ.mu0 @ sol.P[r, k]
            freq = torch.bincount(traj.states[r, sel, 1], minlength=p.numel()).to(DT) / n
            se = torch.sqrt(p * (1 - p) / n)
            assert ((freq - p).abs() <= 5 * se + 5 / n).all(), (r, k)
    if init_mean < 0:  # at tau ~ 1.85 work costs assets: means clipped at the bottom
        assert clipped > 1000
    else:  # near the top the noise pushes mass past the range: the in-grid redraws
        assert float(traj.states[:, :, 0].double().mean()) > 95


def test_common_random_numbers(econ: Economy) -> None:
    R, N = 3, 8
    theta = initial_theta(R)
    sol = soft_policy_iteration(econ, theta, 0.2)
    ctx = balanced_contexts(econ, R, N)
    a = sampled_welfare(econ, theta, sol, ctx, seed=11)
    b = sampled_welfare(econ, theta, sol, ctx, seed=11)
    c = sampled_welfare(econ, theta, sol, ctx, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="generator or a seed"):
        sampled_welfare(econ, theta, sol, ctx)


def _stepwise_gradient(econ, theta, beta, sol, traj, form, leader_q, critic, follower_transition):
    """Reference: the surrogate built step by step with autograd through every sampled step."""
    b = flat_batch(econ, traj)
    R, C, S = theta.shape[0], econ.n_contexts, econ.n_states
    with torch.no_grad():
        rbar_obs = leader_rewards(econ, theta, b)
    q_table = v_table = None
    if form != "naive" and leader_q == "table":
        q_table = leader_q_table(econ, theta, sol, critic, advantage=form == "mc")
    if form == "covariance" and leader_q != "crossfit":
        v_table = critic.reshape(R, C * S)
    w = hpgd_weights(
        b["joint_state"],
        rbar_obs,
        b["episode_start"],
        econ.gamma,
        beta,
        form=form,
        n_states=C * S,
        actions=b["action"],
        n_actions=econ.n_actions,
        leader_q=leader_q,
        q_table=q_table,
        v_table=v_table,
    )
    rows = torch.arange(R)[:, None]
    expected = expected_next(sol.parts, sol.V)
    v_next = sol.V[rows, b["context"], b["next_state"]]
    v_next = v_next - expected[rows, b["context"], b["state"], b["flow"]]
    th = theta.detach().requires_grad_(True)
    x = rates(th)
    tau, vat = x[:, 0], x[:, 1:]
    shrink = torch.exp(-(econ.alphas[b["context"]] * torch.log1p(vat)[:, None, :]).sum(-1))
    cd = econ.cd_base[b["context"], b["action"]] * shrink
    log_p = log_kernel(econ, tau[:, None], b["state"], b["flow"], b["next_state"])
    if follower_transition == "score":
        rtilde = cd + econ.gamma * log_p * v_next
    else:
        kv = expected_next(kernel_parts(econ, tau), sol.V)
        rtilde = cd + econ.gamma * kv[rows, b["context"], b["state"], b["flow"]]
    surrogate = (w.follower * rtilde + w.leader * leader_rewards(econ, th, b)).sum()
    surrogate = surrogate + (w.transition * log_p).sum()
    return torch.autograd.grad(surrogate, th)[0]


@pytest.mark.parametrize(
    ("form", "leader_q", "follower_transition"),
    [
        ("mc", "table", "expected"),
        ("mc", "table", "score"),
        ("covariance", "table", "expected"),
        ("naive", "table", "expected"),
        ("mc", "crossfit", "score"),
    ],
)
def test_cell_summed_surrogate_matches_stepwise(
    econ: Economy, form: str, leader_q: str, follower_transition: str
) -> None:
    """hypergradient sums the step weights per table cell before autograd: the same gradient as
    differentiating every sampled step (incl. runs whose asset means get clipped)."""
    R, N = 3, 12
    theta = initial_theta(R) + 0.4 * torch.randn(R, 4, generator=torch.Generator().manual_seed(1))
    theta[0, 0] = 3.0  # tau ~ 1.9: large negative flows, clipped rows at the bottom
    beta = torch.full((R,), 0.2, dtype=DT)
    sol = soft_policy_iteration(econ, theta, beta)
    x = rates(theta)
    Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
    traj = rollout(econ, sol, x[:, 0], balanced_contexts(econ, R, N), 200, torch.Generator())
    assert bool((sol.parts.clip_lo[0][traj.states[0, :, :-1], traj.flows[0]]).any())
    args = (econ, theta, beta, sol, traj, form, leader_q, Vbar, follower_transition)
    ref = _stepwise_gradient(*args)
    at = EstimationPoint(econ, theta, beta, sol)
    got, _ = hypergradient(
        at, traj, form=form, leader_q=leader_q, critic=Vbar, follower_transition=follower_transition
    )
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


def test_budget_conversion() -> None:
    assert episodes_from_steps(60_000, 200, "--steps") == 300
    with pytest.raises(ValueError, match="below one 200-step episode"):
        episodes_from_steps(199, 200, "--steps")
    with pytest.raises(ValueError, match="multiple of 400"):
        episodes_from_steps(600, 200, "--zo-steps")
    with pytest.raises(ValueError, match="zero-order episodes"):
        AlgoSettings(zo_episodes=3)
    with pytest.raises(ValueError, match="constant c must be > 0"):
        AlgoSettings(zo_c=0.0)
    s = AlgoSettings()
    assert (s.episodes, s.zo_episodes, s.zo_c, s.zo_crn) == (300, 300, 50.0, False)


def test_reach_and_half_gain() -> None:
    # iterations x seeds
    w = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [2.0, 3.0, 0.5], [4.0, 1.0, 0.5]])
    assert seed_reach(w, 2.0) == [2, 2, None]
    assert reach_iteration(w, 1.5) == 2  # seed means 0, 0.5, 1.83, 1.83
    assert reach_iteration(w, 2.0) is None
    assert half_gain_iteration(w) == 2  # gain 1.83, half 0.917
    assert half_gain_iteration(-w) is None


def test_sampled_welfare_mean_of_both_types(econ: Economy) -> None:
    """Balanced contexts: the sampled welfare estimates F = sum_xi P(xi) F_xi (z-test)."""
    R, N = 8, 40
    theta = initial_theta(R)
    W = welfare(econ, theta, 0.1)
    gen = torch.Generator().manual_seed(9)
    est = torch.stack(
        [
            sampled_welfare(econ, theta, W.follower, balanced_contexts(econ, R, N), gen)
            for _ in range(4)
        ]
    )
    err = (est - W.F).reshape(-1)
    assert abs(err.mean() / (err.std() / err.numel() ** 0.5)) <= 4.5


@pytest.mark.parametrize(
    ("algo", "first_draws"),
    [
        ("zero_order", [0.7427561314837681, 0.3314860008214604]),
        ("zero_order_sampled", [0.6945295333111567, 0.6038199376468457]),
        ("hpgd", [0.4168402843660217, 0.4532702144652774]),
    ],
)
def test_batch_streams_are_those_of_the_published_runs(algo: str, first_draws: list) -> None:
    """Each algorithm's batch stream is the one docs/tax_design.json was produced with (first
    draws recorded at commit 0f59ec3, before the algorithms were renamed)."""
    g = batch_generator(algo, [0, 1], [0.2, 0.5])
    assert torch.rand(2, generator=g, dtype=torch.float64).tolist() == first_draws
