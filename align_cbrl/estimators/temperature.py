"""The follower temperature ``beta`` (``docs/theory.md`` §1, §3): one check for every estimator.

``beta > 0`` is the KL / entropy coefficient of the followers' regularised best response
``pi* ∝ pi_ref exp(Q* / beta)``; with ``beta = 0`` the best response is not differentiable in the
leader's parameters, so every hypergradient estimator refuses it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BETA_HELP", "check_beta"]

BETA_HELP = (
    "HPGD needs a KL-regularised follower: the follower's KL temperature beta must be > 0. "
    "A follower trained with beta = 0 (TRL GRPOConfig's default beta=0.0) has no regularised "
    "best response; set beta > 0 in the follower's trainer config (and scale_rewards='none' for "
    "exact hypergradients) or give the leader the follower's temperature explicitly"
)


def check_beta(
    beta: float | Tensor, groups: int, *, per: str = "group", help: str = BETA_HELP
) -> Tensor:
    """``beta`` as a float64 tensor ``[groups]`` (a scalar is broadcast; one value per ``per``,
    e.g. per group of completions or per run); refuses non-finite or non-positive values with
    ``help`` and the first offending entry."""
    b = torch.as_tensor(beta, dtype=torch.float64).detach()
    if b.dim() == 0:
        b = b.expand(groups)
    if b.shape != (groups,):
        raise ValueError(
            f"beta must be a scalar or have one value per {per}, shape [{groups}], got {tuple(b.shape)}"
        )
    bad = ~(torch.isfinite(b) & (b > 0))
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise ValueError(f"{help} (got beta={float(b[g])} for {per} {g})")
    return b
