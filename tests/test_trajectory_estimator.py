"""The reordered per-step weights of the trajectory HPGD estimator equal the textbook double sums.

The reference below materialises, for every step, the Monte-Carlo return of an explicit random
gradient vector (``Dhat_t``), its per-state visit average (``Dbar``) and the leader returns, and
evaluates the three estimator forms exactly as written in the reference notes (section 2) with
plain Python loops. ``hpgd_weights`` must reproduce them to round-off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align_cbrl.estimators import (
    discounted_returns,
    hpgd_weights,
    per_state_sum,
    segmented_scan,
    time_in_episode,
)


def _random_batch(rng: np.random.Generator, n_runs: int, n_steps: int, n_states: int):
    states = rng.integers(0, n_states, size=(n_runs, n_steps))
    starts = rng.random((n_runs, n_steps)) < 0.15
    starts[:, 0] = True
    rbar = rng.normal(size=(n_runs, n_steps)) * (rng.random((n_runs, n_steps)) < 0.5)
    return (
        torch.as_tensor(states),
        torch.as_tensor(rbar, dtype=torch.float64),
        torch.as_tensor(starts),
    )


def _episodes(starts_row: np.ndarray) -> list[tuple[int, int]]:
    idx = [*list(np.flatnonzero(starts_row)), len(starts_row)]
    return [(idx[i], idx[i + 1]) for i in range(len(idx) - 1)]


def _reference(states, rbar, starts, dr, gamma, lam, form, baseline=None):
    """Loops over runs/episodes/steps; dr is [R, T, P] explicit per-step gradient vectors."""
    n_runs, n_steps, n_par = dr.shape
    out = np.zeros((n_runs, n_par))
    for r in range(n_runs):
        eps = _episodes(starts[r])
        g_hat = np.zeros(n_steps)
        d_hat = np.zeros((n_steps, n_par))
        tau = np.zeros(n_steps, dtype=int)
        for a, b in eps:
            for t in range(a, b):
                tau[t] = t - a
                g_hat[t] = sum(gamma ** (k - t) * rbar[r, k] for k in range(t, b))
                d_hat[t] = sum(gamma ** (k - t) * dr[r, k] for k in range(t, b))
        d_bar = {}
        for s in set(states[r].tolist()):
            mask = states[r] == s
            d_bar[s] = d_hat[mask].mean(axis=0)
        total = np.zeros(n_par)
        for t in range(n_steps):
            s = int(states[r, t])
            if form == "mc":
                total += gamma ** tau[t] * (d_hat[t] - d_bar[s]) * g_hat[t] / lam
            elif form == "covariance":
                total += gamma ** tau[t] * d_hat[t] * (g_hat[t] - baseline[s]) / lam
        out[r] = total / len(eps)
    return out


@pytest.mark.parametrize("form", ["mc", "covariance", "naive"])
@pytest.mark.parametrize("gamma", [0.9, 0.99, 1.0])
def test_weights_match_explicit_double_sums(form: str, gamma: float) -> None:
    rng = np.random.default_rng(0)
    n_states, n_par = 5, 3
    states, rbar, starts = _random_batch(rng, n_runs=3, n_steps=60, n_states=n_states)
    dr = rng.normal(size=(3, 60, n_par))
    baseline = rng.normal(size=n_states)
    lam = 0.37
    w = hpgd_weights(
        states,
        rbar,
        starts,
        gamma,
        lam,
        form=form,
        n_states=n_states,
        baseline=torch.as_tensor(baseline),
    )
    got = torch.einsum("rt,rtp->rp", w.follower, torch.as_tensor(dr)).numpy()
    want = _reference(states.numpy(), rbar.numpy(), starts.numpy(), dr, gamma, lam, form, baseline)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_direct_and_transition_weights() -> None:
    rng = np.random.default_rng(1)
    states, rbar, starts = _random_batch(rng, n_runs=2, n_steps=40, n_states=4)
    gamma = 0.95
    w = hpgd_weights(states, rbar, starts, gamma, 1.0, form="naive", n_states=4)
    g_hat = discounted_returns(rbar, starts, gamma).numpy()
    for r in range(2):
        eps = _episodes(starts[r].numpy())
        for a, b in eps:
            for t in range(a, b):
                assert w.leader[r, t].item() == pytest.approx(gamma ** (t - a) / len(eps))
                want = gamma ** (t - a + 1) * g_hat[r, t + 1] / len(eps) if t + 1 < b else 0.0
                assert w.transition[r, t].item() == pytest.approx(want, abs=1e-12)
    assert torch.equal(w.n_episodes, starts.sum(1).double())
    assert torch.count_nonzero(w.follower) == 0


def test_scan_matches_loop_and_long_episodes_are_stable() -> None:
    # One 300-step episode at gamma = 0.9: gamma^-300 ~ 5e13 would wreck a rescaled cumsum.
    rng = np.random.default_rng(2)
    vals = rng.normal(size=(1, 300))
    starts = np.zeros((1, 300), dtype=bool)
    starts[0, 0] = True
    got = segmented_scan(torch.as_tensor(vals), torch.as_tensor(starts), 0.9, reverse=True)
    want = np.zeros(300)
    acc = 0.0
    for t in range(299, -1, -1):
        acc = vals[0, t] + 0.9 * acc
        want[t] = acc
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-12, atol=1e-12)
    fwd = segmented_scan(torch.as_tensor(vals), torch.as_tensor(starts), 1.0, reverse=False)
    np.testing.assert_allclose(fwd[0].numpy(), np.cumsum(vals[0]), rtol=1e-12, atol=1e-10)


def test_time_in_episode_and_per_state_sum() -> None:
    starts = torch.tensor([[True, False, False, True, False], [True, True, False, False, True]])
    assert time_in_episode(starts).tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 0]]
    states = torch.tensor([[0, 1, 1, 2, 0], [2, 2, 2, 1, 0]])
    w = torch.arange(10, dtype=torch.float64).reshape(2, 5)
    got = per_state_sum(w, states, 3)
    assert got.tolist() == [[0 + 4, 1 + 2, 3], [9, 8, 5 + 6 + 7]]


def test_unbiased_on_a_two_armed_bandit_with_exact_answer() -> None:
    """One-step episodes: the "mc" form is the per-state covariance estimator.

    A single state with two actions, follower reward r_x(a) = x * [a == 1], temperature lam:
    pi*(1) = sigmoid(x / lam); leader reward rbar(a) = [a == 0] * 2 + [a == 1] * 0.5 gives
    F(x) = 2 (1 - p) + 0.5 p, dF/dx = -1.5 p (1 - p) / lam exactly.
    """
    lam, x = 0.5, 0.3
    p = 1.0 / (1.0 + math.exp(-x / lam))
    exact = -1.5 * p * (1 - p) / lam
    gen = torch.Generator().manual_seed(0)
    n_runs, n_steps = 4000, 50
    actions = (torch.rand(n_runs, n_steps, generator=gen) < p).long()
    rbar = torch.where(actions == 1, 0.5, 2.0).double()
    starts = torch.ones(n_runs, n_steps, dtype=torch.bool)
    states = torch.zeros(n_runs, n_steps, dtype=torch.long)
    w = hpgd_weights(states, rbar, starts, 0.99, lam, form="mc", n_states=1)
    d_r = actions.double()  # d r_x / dx per step
    est = (w.follower * d_r).sum(1)
    # Per-state centring uses the visit average: expectation (n-1)/n of the covariance.
    mean, se = est.mean().item(), est.std().item() / math.sqrt(n_runs)
    assert abs(mean - exact * (n_steps - 1) / n_steps) < 3 * se
    cov = hpgd_weights(
        states,
        rbar,
        starts,
        0.99,
        lam,
        form="covariance",
        n_states=1,
        baseline=torch.tensor([2.0 * (1 - p) + 0.5 * p]),
    )
    est_cov = (cov.follower * d_r).sum(1)
    assert abs(est_cov.mean().item() - exact) < 3 * est_cov.std().item() / math.sqrt(n_runs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": 0.0}, "lam must be > 0"),
        ({"lam": -1.0}, "lam must be > 0"),
        ({"form": "bogus"}, "unknown HPGD form"),
        ({"form": "covariance"}, "needs a leader baseline"),
        ({"gamma": 1.5}, "gamma must lie"),
    ],
)
def test_bad_input_is_refused(kwargs, match) -> None:
    states = torch.zeros(1, 3, dtype=torch.long)
    rbar = torch.zeros(1, 3, dtype=torch.float64)
    starts = torch.tensor([[True, False, False]])
    args = {"gamma": 0.9, "lam": 1.0, "form": "mc"} | kwargs
    with pytest.raises(ValueError, match=match):
        hpgd_weights(
            states, rbar, starts, args["gamma"], args["lam"], form=args["form"], n_states=1
        )


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"episode_start\[:, 0\] must be True"):
        hpgd_weights(
            torch.zeros(1, 2, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.float64),
            torch.tensor([[False, True]]),
            0.9,
            1.0,
            n_states=1,
        )
    with pytest.raises(ValueError, match="shape mismatch"):
        hpgd_weights(
            torch.zeros(1, 3, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.float64),
            torch.tensor([[True, False]]),
            0.9,
            1.0,
            n_states=1,
        )
    with pytest.raises(ValueError, match="NaN"):
        hpgd_weights(
            torch.zeros(1, 2, dtype=torch.long),
            torch.tensor([[0.0, float("nan")]]),
            torch.tensor([[True, False]]),
            0.9,
            1.0,
            n_states=1,
        )
    with pytest.raises(ValueError, match="state indices"):
        per_state_sum(torch.ones(1, 2), torch.tensor([[0, 5]]), 3)
