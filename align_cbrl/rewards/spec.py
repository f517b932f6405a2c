"""The reward side of a saved shaping, as JSON: the component specs, the follower's base mix
``a``, the leader's objective mix ``b`` and the context column (``docs/shaping_artifact.md``).

``reward_spec(...)`` describes a reward; ``components_from_spec(spec)`` rebuilds the components
from it (the mixes are plain ``MixConfig`` mappings that ``BilevelRewards`` takes as they are).
A ``callable`` component is stored as its ``'module:function'`` reference. One whose function
lives only in the running process (a lambda, a nested function, one defined in ``__main__``)
is an :class:`~align_cbrl.rewards.callable.InMemoryCallableError`, or, with ``strict=False``,
an entry ``{"name": ..., "type": null, "in_memory": "<where>"}`` that must be supplied again
when the reward is rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from align_cbrl.rewards.base import RewardComponent
from align_cbrl.rewards.callable import InMemoryCallableError
from align_cbrl.rewards.mix import MixConfig
from align_cbrl.rewards.registry import build_components

__all__ = ["components_from_spec", "mix_to_dict", "reward_spec"]


def mix_to_dict(mix: MixConfig | Mapping[str, Any] | None, who: str) -> dict[str, Any] | None:
    """A mix as the JSON mapping ``MixConfig.from_dict`` reads back unchanged."""
    if mix is None:
        return None
    data = asdict(mix) if isinstance(mix, MixConfig) else asdict(MixConfig.from_dict(mix))
    odd = [k for k in data["by_context"] if not isinstance(k, str)]
    if odd:
        raise ValueError(
            f"{who} mix: by_context keys {odd} are not strings, which JSON cannot keep; use "
            "string context values to save this reward"
        )
    return data


def reward_spec(
    components: Sequence[RewardComponent],
    follower_mix: MixConfig | Mapping[str, Any] | None,
    leader_mix: MixConfig | Mapping[str, Any] | None,
    context_column: str | None,
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """``{"components": [spec, ...], "follower": mix, "leader": mix, "context_column": c}``.

    ``strict=False`` keeps an in-memory callable as a placeholder entry instead of raising."""
    specs: list[dict[str, Any]] = []
    for comp in components:
        try:
            specs.append(comp.spec())
        except InMemoryCallableError:
            if strict:
                raise
            specs.append(
                {"name": comp.name, "type": None, "in_memory": getattr(comp, "target", "")}
            )
    doc = {
        "components": specs,
        "follower": mix_to_dict(follower_mix, "follower"),
        "leader": mix_to_dict(leader_mix, "leader"),
        "context_column": context_column,
    }
    json.dumps(doc)  # every part is JSON by now; fail here, before anything is written
    return doc


def components_from_spec(
    spec: Mapping[str, Any], components: Sequence[Any] | None = None, source: str = "config.json"
) -> list[RewardComponent]:
    """The components of a reward spec: rebuilt from their specs, or ``components`` (specs,
    functions or built components) when given, whose names must be the saved ones, in order."""
    saved = [s.get("name") for s in spec.get("components", [])]
    if components is not None:
        built = build_components(list(components))
        names = [c.name for c in built]
        if names != saved:
            raise ValueError(
                f"components {names} must be the saved components {saved} of {source} (same "
                "names, same order)"
            )
        return built
    missing = [s for s in spec.get("components", []) if s.get("type") is None]
    if missing:
        raise ValueError(
            f"{source}: component {missing[0]['name']!r} was the in-memory function "
            f"{missing[0].get('in_memory')!r} when it was saved; pass the components again: "
            "from_pretrained(dir, components=[...])"
        )
    try:
        return build_components([dict(s) for s in spec["components"]])
    except (TypeError, ValueError, ImportError, AttributeError) as err:
        raise ValueError(f"{source}: {err}") from err
