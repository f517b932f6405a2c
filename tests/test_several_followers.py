"""Several followers (``docs/theory.md`` §1, §3 "Several followers"): the weighted mean of the
followers' objectives and estimates (``align_cbrl.estimators.combine``) against the exact
reference with two followers that differ in temperature, reference policy and prompts
(``align_cbrl.reference.several_followers``)."""

from __future__ import annotations

import math

import pytest
import torch

from align_cbrl.estimators.combine import (
    combine_estimates,
    combined_hpgd_surrogate,
    follower_group_weights,
    follower_weights,
)
from align_cbrl.estimators.grouped import grouped_hpgd_gradient
from align_cbrl.reference import tiny_language as tl
from align_cbrl.reference.several_followers import (
    ExactFollowerSpec,
    combined_gradient,
    combined_objective,
    follower_objectives,
    follower_policies,
    optimize_combined,
    restricted_prompt_probs,
)
from tests.helpers import tiny_bilevel


def two_followers(task: tl.TinyLanguageTask, weights=(1.0, 3.0)) -> list[ExactFollowerSpec]:
    """f1: beta 0.5, the task's reference, all prompts; f2: beta 1.5, another reference table,
    prompts 1..3 only (another context distribution)."""
    g = torch.Generator().manual_seed(11)
    other_ref = 2.0 * torch.randn(task.num_prompts, task.num_completions, generator=g)
    return [
        ExactFollowerSpec.on(task, "f1", 0.5, weight=weights[0]),
        ExactFollowerSpec.on(
            task, "f2", 1.5, log_ref=other_ref, prompt_index=[1, 2, 3], weight=weights[1]
        ),
    ]


def expected_n2_estimate(spec: ExactFollowerSpec, bilevel) -> torch.Tensor:
    """``E[ghat_i]`` of one follower: its N = 2 group estimate (HPGD) averaged over every
    prompt and every ordered pair ``(y1, y2)`` with probability ``P_i(p) pi*_i(y1|p) pi*_i(y2|p)``."""
    task = spec.task
    (pi,) = follower_policies([spec], bilevel)
    _r, rbar, d_r, d_rbar = tl.reward_jacobians(task, bilevel)
    Y = task.num_completions
    y1, y2 = (
        t.reshape(-1) for t in torch.meshgrid(torch.arange(Y), torch.arange(Y), indexing="ij")
    )
    idx = torch.stack([y1, y2], dim=1)  # [Y*Y, 2]: all ordered pairs
    total = torch.zeros(d_r.shape[-1], dtype=torch.float64)
    for p in range(task.num_prompts):
        w = task.prompt_probs[p] * pi[p, y1] * pi[p, y2]
        if float(w.sum()) == 0.0:
            continue
        total += grouped_hpgd_gradient(d_r[p][idx], d_rbar[p][idx], rbar[p][idx], spec.beta, w)
    return total


# --------------------------------------------------------------------------- acceptance 1
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 3.0), (0.0, 2.0)])
def test_combined_estimator_is_unbiased_for_the_exact_combined_gradient(task, weights):
    """E of sum_i w_i ghat_i (N = 2, by enumeration) == exact dF/dx of F = sum_i w_i F_i."""
    bl = tiny_bilevel(task, seed=3, cost_kind="l2")
    fols = two_followers(task, weights)
    exact = combined_gradient(fols, bl)
    per = [expected_n2_estimate(f, bl) for f in fols]
    combined = combine_estimates(per, [f.weight for f in fols])
    assert torch.allclose(combined, exact, rtol=1e-10, atol=1e-12)
    # each follower's estimate is unbiased for its own F_i (different beta, pi_ref, P_i)
    for f, e in zip(fols, per, strict=True):
        single = tl.exact_gradient(f.task, bl, f.beta)
        assert torch.allclose(e, single, rtol=1e-10, atol=1e-12)
    # the followers really differ, and the weights matter
    assert (per[0] - per[1]).abs().max() > 1e-2
    assert (exact - 0.5 * (per[0] + per[1])).abs().max() > 1e-3 or weights == (1.0, 1.0)


def test_combined_surrogate_gradient_is_the_weighted_mean_of_follower_means(task):
    """d/dx of sum_i w_i SUR_i == sum_i w_i mean_g g_{i,g} (Eq. COMB), with unequal group
    counts; a follower that sampled more groups gets no more weight."""
    bl = tiny_bilevel(task, seed=5, cost_kind="l2")
    fols = two_followers(task)
    gen = torch.Generator().manual_seed(0)
    _r, rb0, d_r, d_rbar = tl.reward_jacobians(task, bl)
    r_all, rbar_all = task.rewards(bl)
    rs, rbars, grads, counts, sels = [], [], [], [], []
    for f, G in zip(fols, (2, 7), strict=True):
        prompts = tl.sample_prompts(f.task, G, gen)
        p_idx, c_idx = tl.sample_completions(f.task, bl, f.beta, 4, gen, prompts)
        sel = (p_idx[:, None], c_idx)
        rs.append(r_all[sel])
        rbars.append(rbar_all[sel])
        grads.append(grouped_hpgd_gradient(d_r[sel], d_rbar[sel], rb0[sel], f.beta))
        counts.append(G)
        sels.append(sel)
    w = [f.weight for f in fols]
    sur = combined_hpgd_surrogate(rs, rbars, [f.beta for f in fols], w)
    params = list(bl.leader.parameters())
    g_sur = torch.autograd.grad(sur, params, retain_graph=True)[0].reshape(-1)
    expected = 0.25 * grads[0] + 0.75 * grads[1]
    assert torch.allclose(g_sur, expected, rtol=1e-12, atol=1e-13)
    assert torch.allclose(combine_estimates(grads, w), expected, rtol=1e-14, atol=1e-15)
    # the same as one grouped sum with per-group weights w_i / G_i and per-group betas
    gw = follower_group_weights(counts, w)
    assert gw.tolist() == pytest.approx([0.125] * 2 + [0.75 / 7] * 7)
    one_sum = grouped_hpgd_gradient(
        torch.cat([d_r[s] for s in sels]),
        torch.cat([d_rbar[s] for s in sels]),
        torch.cat([rb0[s] for s in sels]),
        torch.tensor([0.5] * 2 + [1.5] * 7),
        gw,
    )
    assert torch.allclose(one_sum, expected, rtol=1e-12, atol=1e-13)
    # repeating follower 2's groups three times changes nothing
    rep = combined_hpgd_surrogate(
        [rs[0], rs[1].repeat(3, 1)], [rbars[0], rbars[1].repeat(3, 1)], [0.5, 1.5], w
    )
    g_rep = torch.autograd.grad(rep, list(bl.leader.parameters()))[0].reshape(-1)
    assert torch.allclose(g_rep, g_sur, rtol=1e-12, atol=1e-13)


def test_follower_weights_are_normalised_and_bad_weights_refused():
    assert follower_weights(None, 4).tolist() == [0.25] * 4
    assert follower_weights([1, 3]).tolist() == [0.25, 0.75]
    assert follower_weights([0.0, 2.0]).tolist() == [0.0, 1.0]
    for bad, match in [
        ([1.0, -0.5], "weight must be a finite number >= 0"),
        ([1.0, math.nan], "weight must be a finite number >= 0"),
        ([math.inf, 1.0], "weight must be a finite number >= 0"),
        ([0.0, 0.0], "sum to zero"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            follower_weights(bad, names=["a", "b"])
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^b: weight"):
        follower_weights([1.0, -1.0], names=["a", "b"])
    with pytest.raises(ValueError, match="one weight per follower"):
        follower_weights([1.0], 2)
    with pytest.raises(ValueError, match="at least one group"):
        follower_group_weights([3, 0])
    with pytest.raises(ValueError, match="one shape"):
        combine_estimates([torch.zeros(2), torch.zeros(3)])


# --------------------------------------------------------------------------- exact reference
def test_exact_reference_with_two_followers(task):
    bl = tiny_bilevel(task, seed=1, cost_kind="l2")
    fols = two_followers(task)
    F1, F2 = (float(F.detach()) for F in follower_objectives(fols, bl))
    assert float(combined_objective(fols, bl).detach()) == pytest.approx(
        0.25 * F1 + 0.75 * F2, abs=1e-14
    )
    # follower 2 never sees prompt 0: its distribution is the task's restricted to 1..3
    assert fols[1].task.prompt_probs.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    pi1, pi2 = follower_policies(fols, bl)
    r, _ = task.rewards(bl)
    expected = torch.softmax(fols[1].task.log_ref + r.detach() / 1.5, dim=-1)
    assert torch.allclose(pi2, expected, atol=1e-14) and not torch.allclose(pi1, pi2)
    # one follower of weight 1 is the single-follower reference
    one = [ExactFollowerSpec.on(task, "only", 0.5)]
    assert float(combined_objective(one, bl).detach()) == float(
        tl.exact_objective(task, bl, 0.5).detach()
    )
    opt = optimize_combined(fols, bl, steps=300, lr=2.0)
    F0 = float(combined_objective(fols, bl).detach())
    assert opt.F > F0 + 0.05
    assert all(b >= a - 1e-12 for a, b in zip(opt.history, opt.history[1:], strict=False))
    assert opt.grad_norm < 0.1 * float(combined_gradient(fols, bl).norm())
    # the combined optimum is not either follower's own optimum
    own = optimize_combined(fols[:1], bl, steps=300, lr=2.0)
    assert (own.x - opt.x).abs().max() > 1e-2


def test_restricted_prompt_probs_and_errors(task):
    skewed = task.with_prompt_probs([0.1, 0.2, 0.3, 0.4])
    assert restricted_prompt_probs(skewed, [1, 3]).tolist() == pytest.approx([0, 1 / 3, 0, 2 / 3])
    assert restricted_prompt_probs(skewed, [3, 3, 0]).tolist() == pytest.approx(
        [0.1 / 0.9, 0, 0, 0.8 / 0.9]
    )
    with pytest.raises(ValueError, match="at least one prompt"):
        restricted_prompt_probs(task, [])
    with pytest.raises(ValueError, match="must lie in"):
        restricted_prompt_probs(task, [4])
    with pytest.raises(ValueError, match="probability 0"):
        restricted_prompt_probs(task.with_prompt_probs([0.5, 0.5, 0, 0]), [2, 3])
    with pytest.raises(ValueError, match="prompt_probs must be"):
        task.with_prompt_probs([0.5, 0.5, 0.5, -0.5])
    with pytest.raises(ValueError, match="unique"):
        combined_objective([two_followers(task)[0]] * 2, tiny_bilevel(task, seed=3, cost_kind="l2"))
