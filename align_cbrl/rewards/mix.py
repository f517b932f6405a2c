"""Fixed weighted sums of component scores, per context (``docs/theory.md §3``).

Both the follower's base reward (the part of ``r_x`` the leader does not control) and the
leader's own reward ``rbar`` are mixes ``sum_k w_{c,k} s_k(p, y)`` of the named component scores
``s_k``, with weights that may depend on the prompt's context value ``c`` (e.g. its category).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from align_cbrl.rewards.contexts import ContextIndex

__all__ = ["ComponentMix", "MixConfig"]


@dataclass
class MixConfig:
    """Weights of a component mix.

    ``weights``: component name -> weight, used for every context (components not named get
    weight 0). ``by_context``: context value -> {component name -> weight} overrides applied on
    top of ``weights`` for that context value. ``strict``: if true, context values missing from
    ``by_context`` are an error; otherwise they use ``weights``."""

    weights: dict[str, float] = field(default_factory=dict)
    by_context: dict[Any, dict[str, float]] = field(default_factory=dict)
    context_column: str = "category"
    strict: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MixConfig:
        if data is None:
            return cls()
        allowed = {"weights", "by_context", "context_column", "strict"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise ValueError(f"mix config: unknown key(s) {extra}; allowed: {sorted(allowed)}")
        return cls(**dict(data))


class ComponentMix(nn.Module):
    """``mix(s, c) = sum_k W[c, k] s_k`` with a fixed (non-trainable) weight table ``W``.

    ``forward(scores[B, K], contexts)``: ``contexts`` are raw context values (list), row
    indices into ``context_values`` (LongTensor) or ``None`` (all rows use ``weights``)."""

    def __init__(
        self, component_names: Sequence[str], config: MixConfig | Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        cfg = config if isinstance(config, MixConfig) else MixConfig.from_dict(config)
        self.component_names = list(component_names)
        self.config = cfg
        pos = {n: k for k, n in enumerate(self.component_names)}

        def row(weights: Mapping[str, float], base: Tensor, where: str) -> Tensor:
            out = base.clone()
            for n, w in weights.items():
                if n not in pos:
                    raise ValueError(
                        f"{where}: unknown component {n!r}; known components: {self.component_names}"
                    )
                if (
                    not isinstance(w, int | float)
                    or isinstance(w, bool)
                    or not torch.isfinite(torch.tensor(float(w)))
                ):
                    raise ValueError(f"{where}: weight of {n!r} must be a finite number, got {w!r}")
                out[pos[n]] = float(w)
            return out

        default = row(cfg.weights, torch.zeros(len(pos), dtype=torch.float64), "mix weights")
        values = list(cfg.by_context)
        rows = [row(cfg.by_context[v], default, f"mix by_context[{v!r}]") for v in values]
        self.context_values = values
        self._contexts = ContextIndex(values, column=cfg.context_column) if values else None
        self.register_buffer("table", torch.stack([*rows, default]))  # last row: ``weights``

    def weights_for(self, contexts: Sequence[Any] | Tensor | None, batch: int) -> Tensor:
        """Weight rows ``[B, K]`` for a batch of contexts."""
        n_rows = self.table.shape[0]
        if contexts is None:
            if self.config.strict:
                raise ValueError(
                    f"this mix is strict per {self.config.context_column!r}: pass the batch's "
                    f"context values"
                )
            return self.table[-1].expand(batch, -1)
        if isinstance(contexts, Tensor) and not contexts.is_floating_point():
            rows = contexts.long().reshape(-1)
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
                raise IndexError(
                    f"mix context rows must lie in 0..{n_rows - 1} (last = shared weights)"
                )
        else:
            if isinstance(contexts, str) or not isinstance(contexts, Sequence):
                raise TypeError("contexts must be a list of context values or a LongTensor of rows")
            out = []
            for i, v in enumerate(contexts):
                if self._contexts is not None and v in self.config.by_context:
                    out.append(self._contexts.index_of(v, i))
                elif self.config.strict:
                    raise KeyError(
                        f"mix: unknown {self.config.context_column!r} value {v!r} at batch index "
                        f"{i}; known: {self.context_values}; add it to by_context or set strict: false"
                    )
                else:
                    out.append(n_rows - 1)
            rows = torch.tensor(out, dtype=torch.long)
        if rows.numel() != batch:
            raise ValueError(f"got {rows.numel()} contexts for a batch of {batch}")
        return self.table[rows]

    def forward(self, scores: Tensor, contexts: Sequence[Any] | Tensor | None = None) -> Tensor:
        if scores.dim() != 2 or scores.shape[1] != len(self.component_names):
            raise ValueError(
                f"scores must have shape [B, {len(self.component_names)}] (components "
                f"{self.component_names}), got {tuple(scores.shape)}"
            )
        w = self.weights_for(contexts, scores.shape[0]).to(scores.dtype)
        return (w * scores).sum(-1)
