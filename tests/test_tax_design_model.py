"""Tax-design economy: tables, transition kernel, rewards (``docs/theory.md`` §6)."""

from __future__ import annotations

import math

import pytest
import torch

from tabular_reference.tax_design.economy import Economy, EconomyConfig
from tabular_reference.tax_design.kernel import (
    band_offsets,
    dense_kernel,
    expected_next,
    kernel_parts,
    log_kernel,
    mix_kernel,
    next_state_sampler,
    sample_next_state,
)
from tabular_reference.tax_design.rewards import (
    asset_utility,
    asset_welfare,
    household_action_reward,
    initial_theta,
    rates,
    welfare_action,
)

DT = torch.float64


def test_action_tables(econ: Economy) -> None:
    assert econ.n_actions == 1250 and econ.n_flows == 130 and econ.n_states == 101
    hours = sorted(set(econ.hours_a.tolist()))
    assert len(hours) == 10 and hours[-1] == pytest.approx(8.01)
    assert sorted(set(econ.cons_a.flatten().tolist())) == [0.0, 1.25, 2.5, 3.75, 5.0]
    # every (h, c1, c2, c3) combination exactly once
    keys = {(h, *c) for h, c in zip(econ.hours_a.tolist(), econ.cons_a.tolist())}
    assert len(keys) == 1250
    # groups partition the actions, and members share hours and total consumption
    members = econ.group_index[econ.group_mask]
    assert sorted(members.tolist()) == list(range(1250))
    for f in range(econ.n_flows):
        a = econ.group_index[f, econ.group_mask[f]]
        assert torch.all(econ.hours_a[a] == econ.hours_f[f])
        assert torch.allclose(econ.cons_a[a].sum(1), econ.total_cons_f[f].expand(len(a)))
    # group sizes: number of (i, j, k) in {0..4}^3 with i + j + k = n
    sizes = econ.group_mask.sum(1)[:13].tolist()
    brute = [sum(1 for i in range(5) for j in range(5) if 0 <= n - i - j <= 4) for n in range(13)]
    assert sizes == brute


def test_grid_and_initial_law(econ: Economy) -> None:
    assert econ.edges[0] == -100 and econ.edges[-1] == 100
    assert econ.centres[50] == pytest.approx(0.0, abs=1e-12)
    assert econ.mu0.sum() == pytest.approx(1.0, abs=1e-14)
    assert torch.allclose(econ.mu0, econ.mu0.flip(0), atol=1e-15)
    # mass of the central bin = P(|N(0, 2)| < width / 2)
    half = econ.width / 2
    assert econ.mu0[50] == pytest.approx(math.erf(half / (math.sqrt(2) * math.sqrt(2))))


def test_rewards_exact_values(econ: Economy) -> None:
    u = asset_utility(econ)
    a = econ.centres
    assert u[80] == pytest.approx(math.log(a[80].item() / 20 + 1))
    assert u[10] == pytest.approx(a[10].item())
    assert asset_welfare(econ)[10] == a[10] and asset_welfare(econ)[80] == 0
    vat = torch.tensor([[0.2, 0.5, 1.1]], dtype=DT)
    r = household_action_reward(econ, vat)  # [1, C, A]
    a_idx = 3 * 125 + 25 * 2 + 5 * 4 + 1  # h = 2.67, c = (2.5, 5, 1.25)
    h, c = econ.hours_a[a_idx].item(), econ.cons_a[a_idx].tolist()
    assert h == pytest.approx(2.67) and c == [2.5, 5.0, 1.25]
    for k, alpha in enumerate(econ.config.alphas):
        cd = math.prod((c[j] / (1 + vat[0, j].item())) ** alpha[j] for j in range(3))
        assert r[0, k, a_idx].item() == pytest.approx(-0.1 * h * h + cd, rel=1e-13)
    zero_good = 3 * 125 + 25 * 2 + 5 * 0 + 1
    assert r[0, 0, zero_good].item() == pytest.approx(-0.1 * h * h, rel=1e-13)
    tau = torch.tensor([0.4], dtype=DT)
    w = welfare_action(econ, tau, vat)[0, a_idx].item()
    net = [c[j] / (1 + vat[0, j].item()) for j in range(3)]
    rev = sum(vat[0, j].item() * net[j] for j in range(3)) + 0.4 * h
    assert w == pytest.approx(15 * sum(net) / 3 / 5 + 5 * math.log(1 + rev), rel=1e-13)


def test_rates_map() -> None:
    th = initial_theta(3)
    assert torch.allclose(rates(th), torch.full((3, 4), 0.3, dtype=DT))
    with pytest.raises(ValueError, match=r"\(0, 2\)"):
        initial_theta(1, rate=2.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 100}, "odd integer"),
        ({"n_bins": 5}, "odd integer"),
        ({"noise_std": 0.0}, "noise_std"),
        ({"gamma": 1.0}, "gamma"),
        ({"context_probs": (0.3, 0.3)}, "sum to 1"),
        ({"alphas": ((0.5, 0.5),)}, "alphas"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EconomyConfig(**kwargs)


TAUS = torch.tensor([0.0, 0.3, 1.0, 1.9], dtype=DT)


def test_kernel_rows_are_distributions(econ: Economy) -> None:
    K = dense_kernel(econ, TAUS)
    assert K.shape == (4, 101, 130, 101)
    assert (K >= 0).all()
    assert torch.allclose(K.sum(-1), torch.ones((), dtype=DT), atol=1e-14)
    # mean of a row far from the edges = a_s + flow, up to discretisation (bin centres)
    s, f = 50, 3 * 13 + 4  # h = 2.67, C = 5
    mean = (K[1, s, f] * econ.centres).sum()
    assert mean.item() == pytest.approx(0.0 + 0.7 * 2.67 - 5.0, abs=0.05)


def test_kernel_band_holds_all_mass(econ: Economy) -> None:
    K = dense_kernel(econ, TAUS)
    d_lo, d_hi = band_offsets(econ)
    s = torch.arange(101)[:, None]
    j = torch.arange(101)[None, :]
    outside = ((j - s) < d_lo) | ((j - s) > d_hi)
    assert K[:, outside[:, None, :].expand(101, 130, 101)].max() < 1e-17


def test_structured_kernel_matches_dense(econ: Economy) -> None:
    gen = torch.Generator().manual_seed(0)
    K = dense_kernel(econ, TAUS)
    parts = kernel_parts(econ, TAUS)
    assert parts.clip_hi.any() and parts.clip_lo.any()  # clipped rows are exercised
    V = torch.randn(4, 2, 101, generator=gen, dtype=DT) * 30
    assert torch.allclose(expected_next(parts, V), torch.einsum("rsfj,rcj->rcsf", K, V), atol=1e-11)
    w = torch.rand(4, 2, 101, 130, generator=gen, dtype=DT)
    assert torch.allclose(mix_kernel(parts, w), torch.einsum("rcsf,rsfj->rcsj", w, K), atol=1e-12)


def test_log_kernel_and_its_tau_derivative(econ: Economy) -> None:
    gen = torch.Generator().manual_seed(1)
    s = torch.randint(0, 101, (4, 50), generator=gen)
    f = torch.randint(0, 130, (4, 50), generator=gen)
    K = dense_kernel(econ, TAUS)
    # next states near the row's mode, so that log K is well conditioned
    s_next = K[torch.arange(4)[:, None], s, f].argmax(-1)
    s_next = (s_next + torch.randint(-3, 4, (4, 50), generator=gen)).clamp(0, 100)
    tau = TAUS.clone().requires_grad_(True)
    lk = log_kernel(econ, tau[:, None], s, f, s_next)
    ref = torch.log(K[torch.arange(4)[:, None], s, f, s_next])
    assert torch.allclose(lk.detach(), ref, atol=1e-10)
    (g,) = torch.autograd.grad(lk.sum(), tau)
    h = 1e-6
    fd = (
        log_kernel(econ, (TAUS + h)[:, None], s, f, s_next).sum(1)
        - log_kernel(econ, (TAUS - h)[:, None], s, f, s_next).sum(1)
    ) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_next_state_sampler_matches_kernel(econ: Economy) -> None:
    gen = torch.Generator().manual_seed(2)
    tau = torch.tensor([0.3, 1.5], dtype=DT)
    K = dense_kernel(econ, tau)
    table = next_state_sampler(econ, tau)
    n = 100_000
    for r, s, f in [(0, 50, 40), (1, 98, 9), (0, 3, 12)]:  # interior, top clip, bottom clip
        draws = sample_next_state(
            econ, table, torch.full((n,), r), torch.full((n,), s), torch.full((n,), f), gen
        )
        freq = torch.bincount(draws, minlength=101).to(DT) / n
        p = K[r, s, f]
        se = torch.sqrt(p * (1 - p) / n)
        assert ((freq - p).abs() <= 5 * se + 5 / n).all()  # 5 / n: bins with p * n < 1
