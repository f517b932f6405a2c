"""A one-state bandit gives the same answers through the dense tabular oracle
(``tabular_reference.mdp``) and through the language-model core (``docs/theory.md`` §3:
a prompt is a one-step MDP whose actions are the completions)."""

from __future__ import annotations

import pytest
import torch

mdp = pytest.importorskip("tabular_reference.mdp")

from align_cbrl.estimators.grouped import grouped_hpgd_gradient  # noqa: E402
from align_cbrl.reference import tiny_language as tl  # noqa: E402


@pytest.fixture(scope="module")
def bandit() -> tl.TinyLanguageTask:
    """One prompt (one state); its 14 completions (vocab 2, up to 3 words) are the arms."""
    cfg = tl.TinyLanguageConfig(vocab=["a", "b"], max_words=3)
    cfg.components = [c for c in cfg.components if c["name"] in ("n_words", "count_a", "count_b")]
    cfg.prompts = [{"prompt": "a b", "category": "concise"}]
    cfg.leader = {"by_context": {"concise": {"n_words": -1.0, "count_b": 0.5}}}
    return tl.TinyLanguageTask(cfg)


@pytest.mark.parametrize("beta,seed", [(0.3, 0), (1.0, 1), (2.5, 2)])
def test_bandit_matches_tabular_reference(
    bandit: tl.TinyLanguageTask, beta: float, seed: int
) -> None:
    task = bandit
    bl = task.bilevel(task.make_leader(init_std=0.5, seed=seed, cost_coef=0.2))
    r, rbar, d_r, d_rbar = tl.reward_jacobians(task, bl)
    Y = task.num_completions
    P = torch.ones(1, Y, 1, dtype=torch.float64)  # one state, every arm returns to it
    prior = torch.softmax(task.log_ref, -1)  # [1, Y]
    mu0 = torch.ones(1, dtype=torch.float64)
    # gamma = 0: a one-step problem (a contextual bandit), as for an LM completion
    problem = mdp.SoftMDP(P, r, gamma=0.0, beta=beta, prior=prior)
    sol = mdp.soft_solve(problem)
    pi = tl.exact_policy(task, bl, beta).detach()
    assert torch.allclose(sol.pi, pi, atol=1e-13)
    F_tab, g_tab = mdp.exact_hypergradient(problem, rbar, mu0, mdp.InputJacobians(d_r, d_rbar))
    F = tl.exact_objective(task, bl, beta).detach()
    assert torch.allclose(F_tab, F, atol=1e-13)
    g = tl.exact_gradient(task, bl, beta)
    assert torch.allclose(g_tab, g, atol=1e-12)
    # the autograd route of the oracle (implicit-function layer) agrees too
    x = bl.leader.flat_parameters().requires_grad_(True)
    r_x, rbar_x = task.rewards(bl, bl.leader.unflatten(x, "leader."))
    pi_x = mdp.soft_best_response(mdp.SoftMDP(P, r_x, 0.0, beta, prior=prior))
    (g_auto,) = torch.autograd.grad(mdp.leader_value(P, pi_x, rbar_x, 0.0, mu0), x)
    assert torch.allclose(g_auto, g, atol=1e-12)
    # and the sampled HPGD estimate averages to the same number (within 2 standard errors
    # along the gradient direction)
    gen = torch.Generator().manual_seed(10 + seed)
    reps, n = 3000, 4
    _, comp = tl.sample_completions(task, bl, beta, n, gen, torch.zeros(reps, dtype=torch.long))
    est = torch.stack(
        [
            grouped_hpgd_gradient(d_r[0][c][None], d_rbar[0][c][None], rbar[0][c][None], beta)
            for c in comp[:3]
        ]
    )
    dr_c = d_r[0][comp] - d_r[0][comp].mean(1, keepdim=True)
    rb_c = rbar[0][comp] - rbar[0][comp].mean(1, keepdim=True)
    all_est = d_rbar[0][comp].mean(1) + (dr_c * rb_c[..., None]).sum(1) / (n - 1) / beta
    assert torch.allclose(all_est[:3], est, atol=1e-13)
    u = g_tab / g_tab.norm()
    proj = all_est @ u
    z = (proj.mean() - g_tab @ u) / (proj.std() / reps**0.5)
    assert abs(float(z)) < 2.0
