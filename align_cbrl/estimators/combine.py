"""Several followers: the leader's objective and its hypergradient as a weighted mean over
followers (``docs/theory.md`` §1 "Several followers", §3 "Several followers").

Follower ``i`` has its own reference policy, temperature ``beta_i`` and context distribution
``P_i``; its objective for the leader is ``F_i(x) = E_{p ~ P_i} E_{y ~ pi*_i(.|p)} rbar_x(p, y)``.
With non-negative weights ``c_i`` (``followers[i].weight`` in a run config; default equal) and
``w_i = c_i / sum_j c_j``,

    F(x)  = sum_i w_i F_i(x),                                                          (MEAN)
    dF/dx = sum_i w_i dF_i/dx  ~  sum_i w_i ghat_i,   ghat_i = (1/G_i) sum_g g_{i,g},   (COMB)

where ``g_{i,g}`` is the per-group HPGD estimate (§3, Eq. HPGD) of follower ``i``'s group ``g``
and ``G_i`` its number of groups. Each follower's estimate is a mean over its *own* groups before
the weights apply, so a follower that sampled more groups has a lower-variance estimate, never a
larger weight. As one sum over all groups, group ``g`` of follower ``i`` has the weight
``w_i / G_i`` (:func:`follower_group_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from align_cbrl.estimators.grouped import hpgd_surrogate

__all__ = [
    "combine_estimates",
    "combined_hpgd_surrogate",
    "follower_group_weights",
    "follower_weights",
]


def follower_weights(
    weights: Sequence[float] | Tensor | None,
    count: int | None = None,
    names: Sequence[str] | None = None,
) -> Tensor:
    """The normalised follower weights ``w_i = c_i / sum_j c_j`` of (MEAN) as float64 ``[F]``.

    ``weights``: the raw ``c_i`` (``None``: equal weights ``1/count``); ``names`` label the
    followers in the error messages (default ``follower 0``, ...). Refuses, with a one-line
    ``ValueError``, weights that are not finite, negative, or that sum to zero."""
    if weights is None:
        if count is None or count < 1:
            raise ValueError(f"give at least one follower, got count={count!r}")
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    raw = [float(w) for w in torch.as_tensor(weights, dtype=torch.float64).reshape(-1).tolist()]
    if count is not None and len(raw) != count:
        raise ValueError(f"give one weight per follower: {count} followers, {len(raw)} weights")
    if not raw:
        raise ValueError("give at least one follower weight")
    labels = list(names) if names is not None else [f"follower {i}" for i in range(len(raw))]
    for label, w in zip(labels, raw, strict=True):
        if not math.isfinite(w) or w < 0:
            raise ValueError(
                f"{label}: weight must be a finite number >= 0 (the share of this follower in "
                f"the leader's objective), got {w!r}"
            )
    total = math.fsum(raw)
    if not total > 0:
        raise ValueError(
            f"the follower weights {raw} sum to zero; give at least one follower a weight > 0"
        )
    return torch.tensor([w / total for w in raw], dtype=torch.float64)


def combine_estimates(
    estimates: Sequence[Tensor], weights: Sequence[float] | Tensor | None = None
) -> Tensor:
    """``sum_i w_i ghat_i`` (Eq. COMB) of the followers' estimates ``ghat_i`` (each ``[D]``, or
    scalars such as objective estimates), ``w`` normalised by :func:`follower_weights`."""
    if not estimates:
        raise ValueError("no follower estimates to combine")
    w = follower_weights(weights, len(estimates))
    shape = estimates[0].shape
    if any(e.shape != shape for e in estimates):
        raise ValueError(
            f"the followers' estimates must have one shape, got {[tuple(e.shape) for e in estimates]}"
        )
    total = float(w[0]) * estimates[0]
    for wi, e in zip(w[1:].tolist(), estimates[1:], strict=True):
        total = total + wi * e
    return total


def follower_group_weights(
    group_counts: Sequence[int], weights: Sequence[float] | Tensor | None = None
) -> Tensor:
    """Per-group weights ``w_i / G_i`` of (COMB) for groups concatenated follower by follower
    (``group_counts[i] = G_i >= 1``); they sum to 1 and give every follower its weight ``w_i``
    whatever its number of groups. Float64 ``[sum_i G_i]``."""
    counts = [int(c) for c in group_counts]
    if any(c < 1 for c in counts):
        raise ValueError(f"every follower needs at least one group, got group counts {counts}")
    w = follower_weights(weights, len(counts))
    return torch.cat(
        [
            torch.full((c,), float(wi) / c, dtype=torch.float64)
            for wi, c in zip(w.tolist(), counts, strict=True)
        ]
    )


def combined_hpgd_surrogate(
    r: Sequence[Tensor],
    rbar: Sequence[Tensor],
    betas: Sequence[float | Tensor],
    weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Scalar ``sum_i w_i S_i`` whose gradient is (COMB): ``S_i = hpgd_surrogate(r_i, rbar_i,
    beta_i)`` (Eq. SUR, the mean over follower ``i``'s ``[G_i, N_i]`` groups)."""
    if not (len(r) == len(rbar) == len(betas)) or not r:
        raise ValueError(
            f"give r, rbar and beta for every follower, got {len(r)}, {len(rbar)}, {len(betas)}"
        )
    terms = [hpgd_surrogate(ri, rbi, bi) for ri, rbi, bi in zip(r, rbar, betas, strict=True)]
    return combine_estimates(terms, weights)
