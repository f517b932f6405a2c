"""Relative bias of gradient estimates against an exact gradient (the learning-follower benches
of ``docs/accelerated.md``, ``python -m tabular_reference validate``)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["bias_summary", "cosine_se", "noise_ratio_test", "point_bias"]


def bias_summary(est: np.ndarray, exact: np.ndarray, se_from: np.ndarray | None = None) -> dict:
    """``est[M, d]`` against ``exact[d]``: ``rel_bias = ||mean - exact|| / ||exact||``, its
    standard error ``rel_se`` (from ``est``, or from the independent block means ``se_from``
    when the rows of ``est`` are not independent), the cosine of the mean with ``exact``, the
    spread of one estimate ``sqrt(E||g - mean||^2) / ||exact||`` and ``m = M``."""
    mean = est.mean(0)
    ne = np.linalg.norm(exact)
    spread = np.sqrt(((est - mean) ** 2).sum(1).mean())
    blocks = est if se_from is None else se_from
    se = np.sqrt(((blocks - blocks.mean(0)) ** 2).sum(1).mean() / len(blocks))
    return {
        "rel_bias": float(np.linalg.norm(mean - exact) / ne),
        "rel_se": float(se / ne),
        "cosine": float(mean @ exact / (np.linalg.norm(mean) * ne)),
        "rel_spread": float(spread / ne),
        "m": len(est),
    }


def noise_ratio_test(est: np.ndarray, exact: np.ndarray) -> dict:
    """The noise-normalised squared error of the mean of ``M`` i.i.d. estimates (the Table 1
    unbiasedness statistic, ``tests/test_four_rooms.py``) and its p-value under unbiasedness.

    ``ratio = ||mean - exact||^2 / (tr C / M)`` (``C`` the estimates' sample covariance): for an
    unbiased estimator ``E||mean - exact||^2 = tr C / M``, so ``ratio`` has expectation 1
    whatever the noise level. With the mean Gaussian, ``ratio = sum_i l_i chi2_1 / sum_i l_i``
    (``l_i`` the eigenvalues of ``C``), approximated by ``chi2_nu / nu`` with the effective
    degrees of freedom ``nu = (tr C)^2 / tr(C^2)`` (Satterthwaite); ``p_value = P(chi2_nu >=
    nu ratio)``. A biased estimator's ratio grows like ``M ||bias||^2 / tr C``."""
    M = len(est)
    if M < 3:
        raise ValueError(f"the noise ratio needs at least 3 estimates, got {M}")
    dev = est - est.mean(0)
    tr_c = float((dev**2).sum() / (M - 1))
    err2 = float(((est.mean(0) - exact) ** 2).sum())
    gram = dev @ dev.T / (M - 1)  # same non-zero eigenvalues as C, M x M
    nu = tr_c**2 / float((gram**2).sum()) if tr_c > 0 else 1.0
    ratio = err2 / (tr_c / M) if tr_c > 0 else float("inf") if err2 > 0 else 0.0
    p = torch.special.gammaincc(torch.tensor(nu / 2), torch.tensor(nu * ratio / 2))
    return {"noise_ratio": ratio, "dof": nu, "p_value": float(p) if np.isfinite(ratio) else 0.0}


def cosine_se(est: np.ndarray, exact: np.ndarray, rng: np.random.Generator, n: int = 200) -> float:
    """Bootstrap standard error (``n`` resamples of the ``M`` estimates) of the cosine between
    their mean and ``exact``."""
    M = len(est)
    counts = np.zeros((n, M))
    np.add.at(counts, (np.arange(n)[:, None], rng.integers(M, size=(n, M))), 1.0)
    means = counts @ est / M  # [n, d]: the resampled means
    cos = means @ exact / (np.linalg.norm(means, axis=1) * np.linalg.norm(exact))
    return float(cos.std(ddof=1))


def point_bias(g: np.ndarray, exact: np.ndarray) -> dict:
    """One vector ``g`` against ``exact``: relative error and cosine."""
    ne = np.linalg.norm(exact)
    return {
        "rel_bias": float(np.linalg.norm(g - exact) / ne),
        "cosine": float(g @ exact / (np.linalg.norm(g) * ne)),
    }
