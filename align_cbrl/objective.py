"""The leader's upper objective ``rbar`` and the follower's shaped reward ``r_x``
(``docs/theory.md`` §1 and §3, language-model followers).

For a prompt ``p`` with context value ``c`` and a completion ``y`` with component scores
``s(p, y) in R^K``:

* follower reward   ``r_x(p, y)    = sum_k a_{c,k} s_k(p, y) + i_x(p, y)``  (base mix + incentive),
* leader reward     ``rbar_x(p, y) = sum_k b_{c,k} s_k(p, y) - cost_x(p, y)``,

with fixed per-context weights ``a`` (:class:`~align_cbrl.rewards.mix.ComponentMix`, the
follower's own reward models) and ``b`` (what the leader wants), the leader's incentive
``i_x`` (:class:`~align_cbrl.leaders.base.Leader`) and its cost ``cost_x = Leader.cost(i_x)``.
The leader maximises ``F(x) = E_p E_{y ~ pi*_x(.|p)} rbar_x(p, y)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

from align_cbrl.leaders.base import Leader
from align_cbrl.rewards.mix import ComponentMix, MixConfig

__all__ = ["BilevelRewards", "RewardPair", "UpperObjective"]


class RewardPair(NamedTuple):
    """Per-sample follower reward ``r``, leader reward ``rbar`` and incentive ``i`` ([B] each)."""

    r: Tensor
    rbar: Tensor
    incentive: Tensor


class UpperObjective(nn.Module):
    """``rbar = sum_k b_{c,k} s_k - cost``: the leader's reward per (prompt, completion)."""

    def __init__(
        self, component_names: Sequence[str], weights: MixConfig | Mapping[str, Any] | None
    ) -> None:
        super().__init__()
        self.mix = ComponentMix(component_names, weights)

    def forward(
        self, scores: Tensor, contexts: Sequence[Any] | Tensor | None, cost: Tensor | None = None
    ) -> Tensor:
        rbar = self.mix(scores, contexts)
        return rbar if cost is None else rbar - cost


class BilevelRewards(nn.Module):
    """Both rewards from one batch of component scores; differentiable in the leader's ``x``.

    Args:
        leader: the incentive model (its parameters are ``x``).
        follower: weights of the follower's base reward mix (``None`` = no base reward).
        upper: weights of the leader's objective mix.

    ``forward(scores[B, K], contexts, features=None) -> RewardPair``. Contexts are the raw
    context values (e.g. categories) of each sample's prompt, shared by leader and mixes. A
    tensor of integer row indices is refused: the leader numbers its rows in its context order
    and each mix in its ``by_context`` order (shared weights last), so one index would name
    different contexts in the two tables."""

    def __init__(
        self,
        leader: Leader,
        follower: MixConfig | Mapping[str, Any] | None,
        upper: MixConfig | Mapping[str, Any] | None,
    ) -> None:
        super().__init__()
        names = leader.component_names
        self.leader = leader
        self.follower = ComponentMix(names, follower)
        self.upper = UpperObjective(names, upper)

    @property
    def component_names(self) -> list[str]:
        return list(self.leader.component_names)

    def forward(
        self,
        scores: Tensor,
        contexts: Sequence[Any] | Tensor | None = None,
        features: Tensor | None = None,
    ) -> RewardPair:
        if isinstance(contexts, Tensor) and not contexts.is_floating_point():
            raise TypeError(
                "BilevelRewards: pass the contexts as a list of values (e.g. the batch's "
                "categories), not a tensor of row indices; the leader and the reward mixes "
                "number their rows differently"
            )
        inc = self.leader(scores, contexts, features)
        r = self.follower(scores, contexts).to(inc.dtype) + inc
        rbar = self.upper(scores, contexts, self.leader.cost(inc)).to(inc.dtype)
        return RewardPair(r=r, rbar=rbar, incentive=inc)
