"""A small neural shaping head (``docs/theory.md`` §1: any differentiable ``x``).

``i_x(p, y) = bound * tanh(MLP_x([features, scores, onehot(context)]))`` (or the raw MLP output
when ``bound`` is ``None``). The MLP's weights are the leader's parameters ``x``; features are
whatever the caller computes per sample (e.g. a sentence embedding of the completion).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from align_cbrl.leaders.base import Leader, register_leader
from align_cbrl.utils.signatures import forwards_to

__all__ = ["NeuralShapingLeader"]


@register_leader
class NeuralShapingLeader(Leader):
    """MLP incentive head over per-sample features, component scores and a context one-hot.

    Args:
        component_names: the ``K`` components.
        feature_dim: width ``D`` of ``features[B, D]`` (0 = no features).
        hidden: hidden layer widths (tanh activations).
        use_scores: feed the component scores to the MLP.
        contexts, context_column, default_context: known context values (one-hot input);
            ``None`` = no context input.
        bound: if set, the output is ``bound * tanh(mlp)``.
        seed: initialisation seed.
    """

    leader_type = "neural"

    @forwards_to(Leader.__init__, skip=2)
    def __init__(
        self,
        component_names: Sequence[str],
        feature_dim: int = 0,
        hidden: Sequence[int] = (32,),
        use_scores: bool = True,
        bound: float | None = None,
        seed: int = 0,
        dtype: str = "float64",
        **shared: Any,
    ) -> None:
        # shared: the options every leader has (contexts, context_column, default_context,
        # cost_coef, cost_kind), which Leader checks and keeps
        super().__init__(component_names, **shared)
        if feature_dim < 0:
            raise ValueError(f"feature_dim must be >= 0, got {feature_dim}")
        if bound is not None and not bound > 0:
            raise ValueError(f"bound must be > 0 or None, got {bound}")
        n_ctx = 0 if self.context_index is None else len(self.context_index)
        in_dim = feature_dim + (len(self.component_names) if use_scores else 0) + n_ctx
        if in_dim == 0:
            raise ValueError("the neural leader needs some input: features, scores or contexts")
        self.feature_dim, self.hidden, self.use_scores = feature_dim, list(hidden), use_scores
        self.bound, self.seed, self.dtype_name = bound, seed, dtype
        tdtype = getattr(torch, dtype)
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        widths = [in_dim, *self.hidden, 1]
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            lin = nn.Linear(a, b, dtype=tdtype)
            with torch.no_grad():
                lim = 1.0 / a**0.5
                lin.weight.copy_(
                    (torch.rand(lin.weight.shape, generator=g, dtype=tdtype) * 2 - 1) * lim
                )
                lin.bias.copy_(
                    (torch.rand(lin.bias.shape, generator=g, dtype=tdtype) * 2 - 1) * lim
                )
            layers.append(lin)
            if i < len(widths) - 2:
                layers.append(nn.Tanh())
        self.mlp = nn.Sequential(*layers)

    def incentive(self, component_scores: Tensor, contexts: Any, features: Tensor | None) -> Tensor:
        B = component_scores.shape[0]
        dtype = self.mlp[0].weight.dtype
        parts: list[Tensor] = []
        if self.feature_dim:
            if features is None or features.shape != (B, self.feature_dim):
                got = None if features is None else tuple(features.shape)
                raise ValueError(
                    f"neural leader needs features of shape [{B}, {self.feature_dim}], got {got}"
                )
            parts.append(features.to(dtype))
        if self.use_scores:
            parts.append(component_scores.to(dtype))
        if self.context_index is not None:
            if contexts is None:
                raise ValueError(f"neural leader needs the batch's {self.context_column!r} values")
            rows = self.context_index.encode(contexts, B)
            parts.append(nn.functional.one_hot(rows, len(self.context_index)).to(dtype))
        out = self.mlp(torch.cat(parts, dim=-1))[:, 0]
        return out if self.bound is None else self.bound * torch.tanh(out)

    def config(self) -> dict[str, Any]:
        cfg = self.base_config()
        cfg.update(
            feature_dim=self.feature_dim,
            hidden=list(self.hidden),
            use_scores=self.use_scores,
            bound=self.bound,
            seed=self.seed,
            dtype=self.dtype_name,
        )
        return cfg
