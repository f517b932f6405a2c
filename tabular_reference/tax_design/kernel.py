"""Asset transition kernel ``K_tau[s, f, s']`` of the economy, exploiting its shift structure.

``docs/theory.md`` §6, equation (A) of :mod:`economy`. For the flow
``phi_f(tau) = (1 - tau) w h_f - C_f`` of flow group ``f`` and bin centre ``a_s``, the pre-noise
mean is ``m = clip(a_s + phi_f, lo, hi)`` and the next bin ``j`` has probability

    K[s, f, j] = (Phi((e_{j+1} - m)/sigma) - Phi((e_j - m)/sigma))
                 / (Phi((hi - m)/sigma) - Phi((lo - m)/sigma))                              (K)

(noise truncated to the range = renormalised). ``K`` is differentiable in ``tau`` through ``m``.

Structure used to avoid materialising the ``[S, F, S]`` tensor per run: if the clip is inactive,
``e_j - m = (j - s - 1/2) width - phi_f``, so the numerator of (K) is a table ``D[f, j - s]`` over
``2S - 1`` offsets, and ``K[s, f, j] = D[f, j - s] / Z[s, f]``. Rows where the clip is active
(``a_s + phi_f`` beyond the range; a few states near the edges) use the two fixed laws centred at
``hi`` / ``lo``. Then (all batched over runs ``R`` and contexts ``C``)

    (K V)[s, f] = (sum_d V[s + d] D[f, d]) / Z[s, f]    (one [C S, L] x [L, F] matmul per run)
    P_pi[s, j]  = sum_f pi(f|s) K[s, f, j]              (one [C S, F] x [F, L] matmul per run)

which is ~S/2 times less memory traffic than the dense contraction. Offsets are further limited
to a fixed band ``d_lo <= d <= d_hi`` covering every flow for ``tau`` in ``[0, 2]`` plus
``BAND_STD = 9`` noise std on each side: entries outside it are below ``Phi(-9) / Z < 2e-19``, under
float64 resolution of a row summing to 1 (with 101 bins: 64 offsets instead of 201).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tabular_reference.tax_design.economy import Economy

__all__ = [
    "BAND_STD",
    "KernelParts",
    "band_offsets",
    "dense_kernel",
    "expected_next",
    "flows",
    "interval_prob",
    "kernel_parts",
    "log_kernel",
    "mix_kernel",
    "next_state_sampler",
    "sample_next_state",
]


BAND_STD = 9.0


def band_offsets(econ: Economy) -> tuple[int, int]:
    """Smallest and largest bin offset ``d = s' - s`` with non-negligible probability (module
    docstring), clipped to ``[-(S-1), S-1]``."""
    cfg = econ.config
    h_max = max(cfg.hours) * cfg.wage
    c_max = econ.total_cons_f.max().item()
    phi_lo, phi_hi = -h_max - c_max, h_max  # tau in [0, 2] => 1 - tau in [-1, 1]
    margin = BAND_STD * cfg.noise_std
    S = econ.n_states
    d_lo = max(-(S - 1), math.floor((phi_lo - margin) / econ.width) - 1)
    d_hi = min(S - 1, math.ceil((phi_hi + margin) / econ.width) + 1)
    return d_lo, d_hi


def interval_prob(a: Tensor, b: Tensor) -> Tensor:
    """``Phi(b) - Phi(a)`` for ``a <= b``, computed on the side of the smaller tail (no
    cancellation when both are far in the upper tail)."""
    upper = a > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): evaluate the mirrored pair there
    lo = torch.where(upper, -b, a)
    hi = torch.where(upper, -a, b)
    return torch.special.ndtr(hi) - torch.special.ndtr(lo)


def flows(econ: Economy, tau: Tensor) -> Tensor:
    """Net asset flow ``phi_f = (1 - tau) w h_f - C_f`` of every flow group, ``[R, F]``."""
    w = econ.config.wage
    return (1.0 - tau)[:, None] * w * econ.hours_f[None, :] - econ.total_cons_f[None, :]


@dataclass(frozen=True)
class KernelParts:
    """Structured representation of ``K_tau`` for ``R`` runs (see module docstring).

    ``D[R, F, L]`` numerators by offset ``d = j - s`` (index ``d - d_lo``), ``Z[R, S, F]``
    normalisers, ``clip_hi / clip_lo[R, S, F]`` rows whose mean is clipped, ``top / bottom[S]``
    the laws of rows clipped at ``hi`` / ``lo``.
    """

    D: Tensor
    Z: Tensor
    clip_hi: Tensor
    clip_lo: Tensor
    top: Tensor
    bottom: Tensor
    d_lo: int


def _clipped_law(econ: Economy, m: float) -> Tensor:
    cfg = econ.config
    z = (econ.edges - m) / cfg.noise_std
    num = interval_prob(z[:-1], z[1:])
    return num / num.sum()


def kernel_parts(econ: Economy, tau: Tensor) -> KernelParts:
    """Build :class:`KernelParts` of (K) for income taxes ``tau[R]`` (differentiable)."""
    cfg = econ.config
    sigma, lo, hi = cfg.noise_std, cfg.asset_low, cfg.asset_high
    phi = flows(econ, tau)  # [R, F]
    d_lo, d_hi = band_offsets(econ)
    offsets = torch.arange(d_lo, d_hi + 1, dtype=phi.dtype)  # d = j - s
    upper = ((offsets + 0.5) * econ.width)[None, None, :] - phi[:, :, None]
    lower = ((offsets - 0.5) * econ.width)[None, None, :] - phi[:, :, None]
    D = interval_prob(lower / sigma, upper / sigma)  # [R, F, L]
    m_raw = econ.centres[None, :, None] + phi[:, None, :]  # [R, S, F]
    clip_hi = m_raw > hi
    clip_lo = m_raw < lo
    m = m_raw.clamp(lo, hi)
    Z = interval_prob((lo - m) / sigma, (hi - m) / sigma)
    return KernelParts(
        D=D,
        Z=Z,
        clip_hi=clip_hi,
        clip_lo=clip_lo,
        top=_clipped_law(econ, hi),
        bottom=_clipped_law(econ, lo),
        d_lo=d_lo,
    )


_INDEX_CACHE: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}


def _indices(S: int, d_lo: int, d_hi: int) -> tuple[Tensor, Tensor]:
    """``hankel[s, k] = s + d_lo + k`` (or ``S``, a zero pad, when out of range) and
    ``shift[s, j] = j - s - d_lo`` (or ``L``, a zero pad, when outside the band)."""
    key = (S, d_lo, d_hi)
    if key not in _INDEX_CACHE:
        L = d_hi - d_lo + 1
        s = torch.arange(S)[:, None]
        j = s + torch.arange(d_lo, d_hi + 1)[None, :]
        hankel = torch.where((j >= 0) & (j < S), j, torch.full_like(j, S))
        k = torch.arange(S)[None, :] - s - d_lo
        shift = torch.where((k >= 0) & (k < L), k, torch.full_like(k, L))
        _INDEX_CACHE[key] = (hankel, shift)
    return _INDEX_CACHE[key]


def _band(parts: KernelParts, S: int) -> tuple[int, int]:
    L = parts.D.shape[-1]
    d_lo = parts.d_lo
    return d_lo, d_lo + L - 1


def expected_next(parts: KernelParts, V: Tensor) -> Tensor:
    """``(K V)[r, c, s, f] = sum_j K[r, s, f, j] V[r, c, j]`` for ``V[R, C, S]``; ``[R, C, S, F]``."""
    R, C, S = V.shape
    hankel, _ = _indices(S, *_band(parts, S))
    V_pad = torch.cat([V, torch.zeros(R, C, 1, dtype=V.dtype)], dim=2)
    Vh = V_pad[:, :, hankel]  # [R, C, S, L]
    KVu = torch.matmul(Vh.reshape(R, C * S, -1), parts.D.transpose(1, 2)).reshape(R, C, S, -1)
    KVu = KVu / parts.Z[:, None]
    top_v = (V * parts.top).sum(-1)[:, :, None, None]
    bot_v = (V * parts.bottom).sum(-1)[:, :, None, None]
    out = torch.where(parts.clip_lo[:, None], bot_v, KVu)
    return torch.where(parts.clip_hi[:, None], top_v, out)


def mix_kernel(parts: KernelParts, weights: Tensor) -> Tensor:
    """``P[r, c, s, j] = sum_f weights[r, c, s, f] K[r, s, f, j]`` for ``weights[R, C, S, F]``
    (with ``weights = pi(f|s)`` this is the follower's state transition matrix)."""
    R, C, S, F = weights.shape
    _, shift = _indices(S, *_band(parts, S))
    clipped = (parts.clip_hi | parts.clip_lo)[:, None]
    w_u = torch.where(clipped, torch.zeros((), dtype=weights.dtype), weights / parts.Z[:, None])
    M = torch.matmul(w_u.reshape(R, C * S, F), parts.D).reshape(R, C, S, -1)  # [R, C, S, L]
    M = torch.cat([M, torch.zeros(R, C, S, 1, dtype=M.dtype)], dim=3)
    P = torch.gather(M, 3, shift.expand(R, C, S, S))
    w_hi = (weights * parts.clip_hi[:, None]).sum(-1)
    w_lo = (weights * parts.clip_lo[:, None]).sum(-1)
    return P + w_hi[..., None] * parts.top + w_lo[..., None] * parts.bottom


def dense_kernel(econ: Economy, tau: Tensor) -> Tensor:
    """Direct evaluation of (K) on the full grid, ``[R, S, F, S]`` (slow; for checks)."""
    cfg = econ.config
    phi = flows(econ, tau)
    m = (econ.centres[None, :, None] + phi[:, None, :]).clamp(cfg.asset_low, cfg.asset_high)
    z = (econ.edges[None, None, None, :] - m[..., None]) / cfg.noise_std
    num = interval_prob(z[..., :-1], z[..., 1:])
    den = interval_prob((cfg.asset_low - m) / cfg.noise_std, (cfg.asset_high - m) / cfg.noise_std)
    return num / den[..., None]


def _mean(econ: Economy, tau: Tensor, s: Tensor, f: Tensor) -> Tensor:
    cfg = econ.config
    phi = (1.0 - tau) * cfg.wage * econ.hours_f[f] - econ.total_cons_f[f]
    return (econ.centres[s] + phi).clamp(cfg.asset_low, cfg.asset_high)


def log_kernel(econ: Economy, tau: Tensor, s: Tensor, f: Tensor, s_next: Tensor) -> Tensor:
    """``log K_tau[s, f, s_next]`` by (K) for sampled transitions (differentiable in ``tau``).

    ``tau`` must broadcast against the index tensors (e.g. ``tau[:, None]`` for ``s[R, T]``).
    """
    cfg = econ.config
    m = _mean(econ, tau, s, f)
    sig = cfg.noise_std
    num = interval_prob((econ.edges[s_next] - m) / sig, (econ.edges[s_next + 1] - m) / sig)
    den = interval_prob((cfg.asset_low - m) / sig, (cfg.asset_high - m) / sig)
    return torch.log(num) - torch.log(den)


def next_state_sampler(econ: Economy, tau: Tensor) -> Tensor:
    """Per-run table ``[R, S, F, 3]`` of (clipped mean ``m``, ``Phi((lo - m)/sigma)``,
    ``Phi((hi - m)/sigma)``) used by :func:`sample_next_state`."""
    cfg = econ.config
    with torch.no_grad():
        phi = flows(econ, tau)
        m = (econ.centres[None, :, None] + phi[:, None, :]).clamp(cfg.asset_low, cfg.asset_high)
        lo = torch.special.ndtr((cfg.asset_low - m) / cfg.noise_std)
        hi = torch.special.ndtr((cfg.asset_high - m) / cfg.noise_std)
        return torch.stack([m, lo, hi], dim=-1)


def sample_next_state(
    econ: Economy,
    table: Tensor,
    run: Tensor,
    s: Tensor,
    f: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Draw ``s' ~ K_tau[s, f, :]`` by inverting the truncated-normal CDF of (A), then binning.

    ``table`` from :func:`next_state_sampler`; ``run``, ``s``, ``f`` broadcastable index tensors.
    """
    with torch.no_grad():
        m, lo, hi = table[run, s, f].unbind(-1)
        u = torch.rand(m.shape, generator=generator, dtype=m.dtype)
        a_next = m + econ.config.noise_std * torch.special.ndtri(lo + u * (hi - lo))
        idx = torch.floor((a_next - econ.config.asset_low) / econ.width).long()
        return idx.clamp(0, econ.n_states - 1)
