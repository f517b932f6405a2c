"""Leaders that weight named reward components, shared or per context (``docs/theory.md``
§1, §3, with the parametrisations of :mod:`align_cbrl.leaders.parametrization`).

``i_x(p, y) = sum_k w_{c(p), k}(x) * s_k(p, y)``, where ``s_k`` are the component scores,
``c(p)`` the prompt's context value (e.g. its ``category``) and ``w_c = g(theta_c)`` one row of
a table of weights per context value (a single shared row if no contexts are given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from align_cbrl.leaders.base import Leader, register_leader
from align_cbrl.leaders.parametrization import WeightParametrization
from align_cbrl.utils.signatures import forwards_to

__all__ = ["WeightLeader"]


@register_leader
class WeightLeader(Leader):
    """Incentive = context-dependent weighted sum of component scores.

    Args:
        component_names: the ``K`` components (columns of ``component_scores``).
        contexts: known values of the context column (one weight row each); ``None`` = one
            shared row and contexts are ignored.
        context_column: name of the column (for messages and configs).
        default_context: a value from ``contexts`` whose row serves unknown values; ``None``
            makes unknown values an error.
        parametrization, lo, hi, budget, unused_slot: see ``WeightParametrization``.
        init_weights: initial weights: a number for all components, or {name: weight}
            (others 0 for ``free``, midpoint for ``sigmoid``); ignored by ``softmax_budget``.
        init_std, seed: Gaussian noise added to the raw parameters at initialisation
            (``softmax_budget`` logits ~ ``N(0, init_std^2)``, the paper's 0.01).
        cost_coef, cost_kind: the leader's cost of incentives (see ``Leader.cost``).
    """

    leader_type = "weights"

    @forwards_to(Leader.__init__, skip=2)
    def __init__(
        self,
        component_names: Sequence[str],
        contexts: Sequence[Any] | None = None,
        context_column: str = "category",
        default_context: Any | None = None,
        parametrization: str = "free",
        lo: float = 0.0,
        hi: float = 1.0,
        budget: float = 1.0,
        unused_slot: bool = True,
        init_weights: float | Mapping[str, float] | None = None,
        init_std: float = 0.0,
        seed: int = 0,
        dtype: str = "float64",
        **cost: Any,
    ) -> None:
        # cost: the leader's cost of incentives (cost_coef, cost_kind), which Leader checks
        super().__init__(
            component_names,
            contexts=contexts,
            context_column=context_column,
            default_context=default_context,
            **cost,
        )
        self.param = WeightParametrization(parametrization, lo, hi, budget, unused_slot)
        self.init_weights, self.init_std, self.seed, self.dtype_name = (
            init_weights,
            init_std,
            seed,
            dtype,
        )
        tdtype = getattr(torch, dtype)
        K = len(self.component_names)
        C = 1 if contexts is None else len(self.context_index)
        if parametrization == "softmax_budget":
            raw = torch.zeros(C, self.param.raw_size(K), dtype=tdtype)
        else:
            w0 = self._initial_weights(init_weights, tdtype)
            raw = self.param.inverse(w0).expand(C, K).clone()
        if init_std > 0:
            g = torch.Generator().manual_seed(seed)
            raw = raw + init_std * torch.randn(raw.shape, generator=g, dtype=tdtype)
        self.theta = nn.Parameter(raw)

    def _initial_weights(
        self, init: float | Mapping[str, float] | None, dtype: torch.dtype
    ) -> Tensor:
        K = len(self.component_names)
        base = 0.0 if self.param.mode == "free" else 0.5 * (self.param.lo + self.param.hi)
        w = torch.full((K,), float(base), dtype=dtype)
        if isinstance(init, int | float):
            w[:] = float(init)
        elif isinstance(init, Mapping):
            for n, v in init.items():
                if n not in self.component_names:
                    raise ValueError(
                        f"init_weights: unknown component {n!r}; known: {self.component_names}"
                    )
                w[self.component_names.index(n)] = float(v)
        elif init is not None:
            raise TypeError("init_weights must be a number, a {component: weight} mapping or None")
        return w

    def weight_table(self, labelled: bool = False) -> Tensor | dict[Any, dict[str, float]]:
        """Current weights ``[C, K]``: rows in the order of ``contexts`` (one row without
        contexts), columns in the order of ``component_names``. ``labelled=True``: the same
        numbers as ``{context: {component: weight}}`` (context ``"all"`` without contexts)."""
        table = self.param.weights(self.theta)
        if not labelled:
            return table
        rows = ["all"] if self.context_index is None else list(self.context_index.values)
        values = table.detach().tolist()
        return {
            c: dict(zip(self.component_names, values[i], strict=True)) for i, c in enumerate(rows)
        }

    def extra_repr(self) -> str:
        """``print(leader)``: its parametrisation, cost and current weight table (labelled)."""
        p = self.param
        bounds = f" in [{p.lo:g}, {p.hi:g}]" if p.mode == "sigmoid" else ""
        head = (
            f"components={self.component_names}, parametrization={p.mode}{bounds}, "
            f"cost={self.cost_coef:g} * {self.cost_kind}"
        )
        table = self.weight_table(labelled=True)
        assert isinstance(table, dict)
        column = "" if self.context_index is None else self.context_index.column
        width = max(len(column), *(len(str(c)) for c in table))
        cols = [max(9, len(n)) for n in self.component_names]
        lines = [
            f"{column:<{width}}  "
            + "  ".join(f"{n:>{w}}" for n, w in zip(self.component_names, cols, strict=True))
        ]
        for c, row in table.items():
            cells = "  ".join(f"{v:>{w}.4f}" for v, w in zip(row.values(), cols, strict=True))
            lines.append(f"{c!s:<{width}}  {cells}")
        return head + "\nweights:\n" + "\n".join(lines)

    def rows(self, contexts: Sequence[Any] | Tensor | None, batch: int) -> Tensor:
        if self.context_index is None:
            return torch.zeros(batch, dtype=torch.long)
        if contexts is None:
            raise ValueError(
                f"this leader has one weight row per {self.context_column!r} value; pass the "
                f"batch's context values (known: {self.context_index.values})"
            )
        return self.context_index.encode(contexts, batch)

    def incentive(self, component_scores: Tensor, contexts: Any, features: Tensor | None) -> Tensor:
        table = self.param.weights(self.theta)
        w = table[self.rows(contexts, component_scores.shape[0])]
        return (w * component_scores.to(w.dtype)).sum(-1)

    def config(self) -> dict[str, Any]:
        cfg = self.base_config()
        cfg.update(
            **{
                ("parametrization" if k == "mode" else k): v
                for k, v in self.param.to_dict().items()
            },
            init_weights=dict(self.init_weights)
            if isinstance(self.init_weights, Mapping)
            else self.init_weights,
            init_std=self.init_std,
            seed=self.seed,
            dtype=self.dtype_name,
        )
        return cfg
