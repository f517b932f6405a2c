"""Relative bias of gradient estimates against an exact gradient (the learning-follower benches
of ``docs/accelerated.md``)."""

from __future__ import annotations

import numpy as np

__all__ = ["bias_summary", "point_bias"]


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


def point_bias(g: np.ndarray, exact: np.ndarray) -> dict:
    """One vector ``g`` against ``exact``: relative error and cosine."""
    ne = np.linalg.norm(exact)
    return {
        "rel_bias": float(np.linalg.norm(g - exact) / ne),
        "cosine": float(g @ exact / (np.linalg.norm(g) * ne)),
    }
