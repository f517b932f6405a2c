"""HPGD for KL-regularised language-model followers from completions grouped by prompt
(``docs/theory.md`` §3).

The follower's best response to reward ``r_x`` with KL coefficient ``beta > 0`` is
``pi*(y|p) ∝ pi_ref(y|p) exp(r_x(p, y) / beta)`` and the leader's hypergradient is

    dF/dx = E_p [ E_{y~pi*} d rbar_x(p, y) + (1/beta) Cov_{y~pi*}( d r_x(p, y), rbar_x(p, y) ) ].

With ``N >= 2`` completions ``y_1..y_N ~ pi*(.|p)`` per prompt (a GRPO/RLOO group), the unbiased
per-group estimate is

    g = mean_i d rbar_i + (1/beta) 1/(N-1) sum_i (d r_i - mean d r)(rbar_i - mean rbar),   (HPGD)

which is the gradient of the one-backward surrogate

    S = mean_i rbar_i + (1/beta) 1/(N-1) sum_i stopgrad(rbar_i - mean rbar) r_i.           (SUR)

The naive estimate keeps only the direct term ``mean_i d rbar_i`` (it ignores how the follower
reacts). Tensors are shaped ``[G, N]`` (G groups = prompts, N completions each); ``beta`` is a
scalar or one value per group (several followers with different temperatures). The estimate
over groups is ``sum_g w_g g_g`` with ``w_g = 1/G`` by default (groups drawn from ``P(p)``).

Exactness assumptions: the followers optimise ``E[r_x] - beta KL(pi || pi_ref)`` exactly, with
the rewards ``r_x`` used here unscaled. TRL's group-std scaling changes the follower's objective:
use ``scale_rewards="none"`` (and a ``beta > 0``; GRPO's default ``beta=0.0`` has no regularised
best response) when the leader's hypergradient must be exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from align_cbrl.estimators.temperature import check_beta
from align_cbrl.estimators.zero_order import gaussian_smoothing_gradient, sample_directions

__all__ = [
    "check_beta",
    "group_weights",
    "grouped_hpgd_gradient",
    "hpgd_surrogate",
    "naive_gradient",
    "naive_surrogate",
    "zero_order_gradient",
]


def group_weights(weights: Tensor | Sequence[float] | None, groups: int) -> Tensor:
    """Weights ``w_g`` of the groups in the estimate ``sum_g w_g g_g`` (default ``1/G``)."""
    if weights is None:
        return torch.full((groups,), 1.0 / groups, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).detach()
    if w.shape != (groups,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(
            f"group weights must be {groups} finite non-negative numbers, got {w.tolist()}"
        )
    return w


def _check_groups(r: Tensor | None, rbar: Tensor, min_n: int) -> tuple[int, int]:
    if rbar.dim() != 2:
        raise ValueError(
            f"rewards must be shaped [G, N] (G prompts, N completions each), got rbar {tuple(rbar.shape)}"
        )
    if r is not None and r.shape != rbar.shape:
        raise ValueError(
            f"r {tuple(r.shape)} and rbar {tuple(rbar.shape)} must have the same [G, N] shape"
        )
    G, N = rbar.shape
    if G < 1:
        raise ValueError("give at least one group")
    if min_n > N:
        raise ValueError(
            f"the HPGD covariance term needs N >= 2 completions per prompt (got N={N}); sample "
            f"several completions per prompt (GRPO/RLOO num_generations >= 2)"
        )
    return G, N


def hpgd_surrogate(
    r: Tensor, rbar: Tensor, beta: float | Tensor, weights: Tensor | Sequence[float] | None = None
) -> Tensor:
    """Scalar surrogate (SUR) whose gradient in ``x`` is the HPGD estimate (HPGD).

    ``r, rbar``: ``[G, N]`` follower / leader rewards of the sampled completions, computed
    differentiably from the leader's parameters. Call ``.backward()`` (or ascend it)."""
    G, N = _check_groups(r, rbar, 2)
    b = check_beta(beta, G).to(rbar.dtype)
    w = group_weights(weights, G).to(rbar.dtype)
    adv = (rbar - rbar.mean(dim=1, keepdim=True)).detach()
    per_group = rbar.mean(dim=1) + (adv * r).sum(dim=1) / ((N - 1) * b)
    return (w * per_group).sum()


def naive_surrogate(rbar: Tensor, weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """Scalar whose gradient is the naive estimate ``sum_g w_g mean_i d rbar_{g,i}``."""
    G, _ = _check_groups(None, rbar, 1)
    w = group_weights(weights, G).to(rbar.dtype)
    return (w * rbar.mean(dim=1)).sum()


def grouped_hpgd_gradient(
    d_r: Tensor,
    d_rbar: Tensor,
    rbar: Tensor,
    beta: float | Tensor,
    weights: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Explicit covariance form (HPGD) from per-sample gradients.

    ``d_r, d_rbar``: ``[G, N, D]`` gradients of ``r_x`` and ``rbar_x`` of each completion
    w.r.t. the ``D`` leader parameters; ``rbar``: ``[G, N]``. Returns ``[D]``."""
    G, N = _check_groups(None, rbar, 2)
    if d_r.shape[:2] != (G, N) or d_rbar.shape != d_r.shape or d_r.dim() != 3:
        raise ValueError(
            f"d_r {tuple(d_r.shape)} and d_rbar {tuple(d_rbar.shape)} must both be [G, N, D] with "
            f"[G, N] = {(G, N)}"
        )
    b = check_beta(beta, G).to(rbar.dtype)
    w = group_weights(weights, G).to(rbar.dtype)
    dr_c = d_r - d_r.mean(dim=1, keepdim=True)
    rb_c = rbar - rbar.mean(dim=1, keepdim=True)
    cov = (dr_c * rb_c[..., None]).sum(dim=1) / (N - 1)  # [G, D]
    per_group = d_rbar.mean(dim=1) + cov / b[:, None]
    return (w[:, None] * per_group).sum(dim=0)


def naive_gradient(d_rbar: Tensor, weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """Naive (direct-term-only) estimate ``sum_g w_g mean_i d rbar_{g,i}`` from ``[G, N, D]``."""
    if d_rbar.dim() != 3:
        raise ValueError(f"d_rbar must be [G, N, D], got {tuple(d_rbar.shape)}")
    w = group_weights(weights, d_rbar.shape[0]).to(d_rbar.dtype)
    return (w[:, None] * d_rbar.mean(dim=1)).sum(dim=0)


def zero_order_gradient(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    u: float,
    generator: torch.Generator,
    num_directions: int = 1,
    f_base: Tensor | None = None,
) -> Tensor:
    """Gaussian-smoothing baseline (``docs/theory.md`` §8):
    ``g = mean_j (F(x + u z_j) - F(x)) z_j / u`` with ``z_j ~ N(0, I)``.

    ``objective(x_flat) -> scalar`` estimates ``F`` at a flat parameter vector (for LM
    followers: re-train / re-sample the followers under the perturbed leader and average
    ``rbar``). ``f_base`` reuses an already computed ``F(x)``. Returns ``[D]``."""
    if x.dim() != 1:
        raise ValueError(f"x must be a flat parameter vector [D], got {tuple(x.shape)}")
    if num_directions < 1:
        raise ValueError("num_directions must be >= 1")
    x = x.detach()
    z = sample_directions(generator, (num_directions, x.numel()), dtype=x.dtype)
    with torch.no_grad():
        base = objective(x) if f_base is None else f_base
        f_plus = torch.stack(
            [torch.as_tensor(objective(x + u * z[j])) for j in range(num_directions)]
        )
        f0 = torch.as_tensor(base, dtype=f_plus.dtype).expand(num_directions)
        return gaussian_smoothing_gradient(f_plus.to(z.dtype), f0.to(z.dtype), z, u).mean(dim=0)
