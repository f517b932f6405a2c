"""``FrozenShapedReward``: a trained leader's shaping as a plain TRL reward function.

    r(p, y) = sum_k a_{c,k} s_k(p, y) + i_x(p, y)        (x frozen)

the follower's base mix of the reward components plus the saved leader's incentive, exactly what
:class:`~align_cbrl.trainer.reward_function.HPGDReward` returns at the same leader (the same
code computes both). Each component's batch mean, the incentive, the leader's reward and the
base reward are logged through TRL's ``log_metric``. It holds no callback, no sinks and no
process check, and it pickles (the leader's parameters, the components and the mixes), so it
also runs where rewards are scored in another process: TRL's ``AsyncGRPOTrainer``, vLLM server
mode (``docs/shaping_artifact.md``).

Typical use: learn the shaping on a small run, then train the production model on it::

    reward = FrozenShapedReward.from_pretrained("runs/quickstart/hpgd_leader/leader")
    GRPOTrainer(model=..., reward_funcs=[reward], ...)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

from align_cbrl.leaders.base import Leader
from align_cbrl.leaders.pretrained import load_leader, read_pretrained_config
from align_cbrl.objective import BilevelRewards
from align_cbrl.rewards.base import RewardComponent
from align_cbrl.rewards.spec import components_from_spec
from align_cbrl.trainer.reward_function import ShapedReward

__all__ = ["FrozenShapedReward"]

_UNSET: Any = object()


class FrozenShapedReward(ShapedReward):
    """Base mix + a frozen leader's incentive (module docstring).

    Args:
        leader: the trained leader; a copy with ``requires_grad=False`` is kept, so later
            changes to ``leader`` do not reach this reward.
        components: the reward components, in the order of ``leader.component_names``.
        follower_mix, leader_mix: the base mix ``a`` and the leader's objective mix ``b``
            (``MixConfig`` mappings; ``b`` only enters the logged ``leader_reward``).
        context_column, name, log_components: as for :class:`HPGDReward`.
    """

    def __init__(
        self,
        leader: Leader,
        components: Sequence[RewardComponent],
        follower_mix: Mapping[str, Any] | None,
        leader_mix: Mapping[str, Any] | None = None,
        *,
        context_column: str | None = "category",
        name: str = "frozen_shaped_reward",
        log_components: bool = True,
    ) -> None:
        frozen = copy.deepcopy(leader).requires_grad_(False).eval()
        super().__init__(
            BilevelRewards(frozen, follower_mix, leader_mix),
            components,
            context_column=context_column,
            name=name,
            log_components=log_components,
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        components: Sequence[Any] | None = None,
        follower_mix: Mapping[str, Any] | None = _UNSET,
        leader_mix: Mapping[str, Any] | None = _UNSET,
        context_column: str | None = _UNSET,
        **kwargs: Any,
    ) -> FrozenShapedReward:
        """The reward saved with the leader in ``directory`` (``leader.save_pretrained(dir,
        rewards=...)``, orchestrated runs' and the plugin's final ``leader/``). ``components``
        (specs, functions or built components, named as saved) replace the saved ones, e.g.
        for components that were in-memory functions; the mixes and the context column can be
        replaced the same way (needed when the folder holds no reward spec)."""
        doc = read_pretrained_config(directory)
        saved = doc.get("rewards")
        source = f"{os.fspath(directory)}/config.json"
        if saved is None:
            if components is None or follower_mix is _UNSET:
                raise ValueError(
                    f"{source} holds no reward spec (the leader was saved without rewards=); "
                    "pass components=[...] and follower_mix=... (and leader_mix=...)"
                )
            saved = {"components": [{"name": n} for n in doc["leader"]["component_names"]]}
        comps = components_from_spec(saved, components, source)
        return cls(
            load_leader(directory),
            comps,
            saved.get("follower") if follower_mix is _UNSET else follower_mix,
            saved.get("leader") if leader_mix is _UNSET else leader_mix,
            context_column=(
                saved.get("context_column", "category")
                if context_column is _UNSET
                else context_column
            ),
            **kwargs,
        )
