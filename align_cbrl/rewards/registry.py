"""Registry of reward-component types and YAML loading (components swappable by config).

A component spec is a mapping with a ``type`` (a registered name), a ``name`` (unique within a
config) and the type's parameters, e.g. ``{type: length, name: brevity, target: 3}``. In Python
a spec may also be a plain function (a TRL-style reward function ``fn(prompts, completions,
**columns)``), which becomes a ``callable`` component named after the function; the ``callable``
type's ``target`` accepts the function itself as well as ``"module:function"``. A reward
config file (read with ``yaml.safe_load`` only) has the form::

    components:            # the named scores s_k(p, y)
      - {type: length, name: brevity, target: 3}
      - {type: keyword, name: says_please, keywords: [please]}
    follower:              # optional: the follower's base reward mix (see MixConfig)
      weights: {brevity: 1.0}
    leader:                # optional: the leader's objective rbar (see MixConfig)
      weights: {says_please: 1.0}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_cbrl.rewards.base import RewardComponent
from align_cbrl.rewards.callable import CallableReward
from align_cbrl.rewards.embedding import EmbeddingSimilarityReward
from align_cbrl.rewards.hf_classifier import SequenceClassifierReward
from align_cbrl.rewards.rule_based import FormatReward, KeywordReward, LengthReward

__all__ = [
    "RewardConfig",
    "build_component",
    "build_components",
    "known_components",
    "load_reward_config",
    "register_component",
]

Factory = Callable[..., RewardComponent]
_REGISTRY: dict[str, Factory] = {}


def register_component(kind: str, factory: Factory, overwrite: bool = False) -> Factory:
    """Register ``factory(name=..., **params) -> RewardComponent`` under ``kind``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("component type must be a non-empty string")
    if not callable(factory):
        raise TypeError(f"factory for component type {kind!r} must be callable")
    if kind in _REGISTRY and not overwrite and _REGISTRY[kind] is not factory:
        raise ValueError(f"component type {kind!r} is already registered; pass overwrite=True")
    _REGISTRY[kind] = factory
    return factory


def known_components() -> list[str]:
    """Sorted names of the registered component types."""
    return sorted(_REGISTRY)


for _kind, _cls in (
    ("length", LengthReward),
    ("keyword", KeywordReward),
    ("format", FormatReward),
    ("hf_classifier", SequenceClassifierReward),
    ("embedding_similarity", EmbeddingSimilarityReward),
    ("callable", CallableReward),
):
    register_component(_kind, _cls)


def _accepted(factory: Factory) -> tuple[set[str], bool]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set(), True
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return {n for n, p in sig.parameters.items() if p.kind is not p.VAR_POSITIONAL}, var_kw


def build_component(spec: Mapping[str, Any] | Callable[..., Any]) -> RewardComponent:
    """Build one component from its spec (``type``, ``name`` and the type's parameters), or
    wrap a Python function as a ``callable`` component named ``fn.__name__``."""
    if isinstance(spec, RewardComponent):
        return spec
    if callable(spec) and not isinstance(spec, Mapping):
        name = getattr(spec, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"reward function {spec!r} has no usable __name__; wrap it as "
                "{'type': 'callable', 'name': ..., 'target': fn}"
            )
        return CallableReward(name=name, target=spec)
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"a component spec must be a mapping or a function, got {type(spec).__name__}: {spec!r}"
        )
    params = dict(spec)
    kind = params.pop("type", None)
    if kind is None:
        raise ValueError(
            f"component spec {dict(spec)!r} has no 'type'; known types: {known_components()}"
        )
    if kind not in _REGISTRY:
        raise ValueError(
            f"unknown reward component type {kind!r}; known types: {known_components()}"
        )
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"component spec of type {kind!r} needs a non-empty string 'name'")
    factory = _REGISTRY[kind]
    accepted, var_kw = _accepted(factory)
    unknown = sorted(set(params) - accepted)
    if unknown and not var_kw:
        raise ValueError(
            f"component {name!r} (type {kind!r}): unknown parameter(s) {unknown}; "
            f"accepted: {sorted(accepted)}"
        )
    try:
        comp = factory(**params)
    except TypeError as err:
        raise ValueError(f"component {name!r} (type {kind!r}): bad parameters: {err}") from err
    if not isinstance(comp, RewardComponent):
        raise TypeError(
            f"factory for component type {kind!r} returned {type(comp).__name__}, not a RewardComponent"
        )
    comp._spec = {"type": kind, **params}  # what a saved leader stores (RewardComponent.spec)
    return comp


def build_components(
    specs: Sequence[Mapping[str, Any] | Callable[..., Any]],
) -> list[RewardComponent]:
    """Build a list of components (specs, functions or built components); names must be
    unique."""
    if isinstance(specs, Mapping | str) or not isinstance(specs, Sequence):
        raise TypeError("'components' must be a list of component specs")
    comps = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        try:
            comp = build_component(spec)
        except (ValueError, TypeError) as err:
            raise type(err)(f"components[{i}]: {err}") from err
        if comp.name in seen:
            raise ValueError(
                f"components[{i}]: duplicate component name {comp.name!r} (also components[{seen[comp.name]}])"
            )
        seen[comp.name] = i
        comps.append(comp)
    return comps


@dataclass
class RewardConfig:
    """A reward config file: component specs plus optional follower / leader mixes
    (:class:`align_cbrl.rewards.mix.MixConfig` mappings)."""

    components: list[dict[str, Any]]
    follower: dict[str, Any] | None = None
    leader: dict[str, Any] | None = None
    source: str | None = field(default=None, compare=False)

    @property
    def component_names(self) -> list[str]:
        return [str(s.get("name")) for s in self.components]

    def build_components(self) -> list[RewardComponent]:
        return build_components(self.components)


def load_reward_config(path: str | Path) -> RewardConfig:
    """Read a reward config YAML (``yaml.safe_load``) into a :class:`RewardConfig`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reward config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"reward config {str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"reward config {str(path)!r} must be a mapping with a 'components' list")
    allowed = {"components", "follower", "leader"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise ValueError(
            f"reward config {str(path)!r}: unknown top-level key(s) {extra}; allowed: {sorted(allowed)}"
        )
    comps = data.get("components")
    if not isinstance(comps, list) or not comps:
        raise ValueError(f"reward config {str(path)!r}: 'components' must be a non-empty list")
    for key in ("follower", "leader"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ValueError(f"reward config {str(path)!r}: {key!r} must be a mapping")
    return RewardConfig(
        components=[dict(c) if isinstance(c, dict) else c for c in comps],
        follower=data.get("follower"),
        leader=data.get("leader"),
        source=str(path),
    )
