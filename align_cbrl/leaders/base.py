"""Leader (incentive) models: the leader's parameters ``x`` (``docs/theory.md`` §1).

A leader maps a batch of component scores ``s[B, K]`` (plus each sample's context value and
optional features) to an incentive ``i_x(p, y)`` that is added to the follower's reward,
``r_x = r_base + i_x`` (``docs/theory.md`` §3). Its ``nn.Parameter``s are ``x``; everything is
differentiable in them so that ``d r_x`` and ``d rbar_x`` come from autograd. A leader may pay
for its incentives: ``cost_x(p, y) = cost_coef * |i_x(p, y)|`` (``"l1"``) or
``cost_coef * i_x(p, y)^2`` (``"l2"``), which the upper objective subtracts from ``rbar``.

State is saved as ``leader.safetensors`` (parameters, with the config in its metadata) plus
``leader.json`` (the config: type and constructor arguments), both written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from align_cbrl.rewards.contexts import ContextIndex
from align_cbrl.utils.io import atomic_write_json, load_safetensors, read_json, save_safetensors

__all__ = ["Leader", "build_leader", "known_leaders", "load_leader", "register_leader"]

_LEADERS: dict[str, type[Leader]] = {}
CONFIG_FILE = "leader.json"
STATE_FILE = "leader.safetensors"


def register_leader(cls: type[Leader]) -> type[Leader]:
    """Class decorator: make a leader type loadable by :func:`load_leader`."""
    name = cls.leader_type
    if name in _LEADERS and _LEADERS[name] is not cls:
        raise ValueError(f"leader type {name!r} is already registered")
    _LEADERS[name] = cls
    return cls


def known_leaders() -> list[str]:
    return sorted(_LEADERS)


class Leader(nn.Module):
    """Common base: ``forward(component_scores[B, K], contexts, features=None) -> Tensor[B]``.

    Subclasses implement :meth:`incentive` and :meth:`config` (JSON-serialisable constructor
    arguments, so ``type(self)(**self.config())`` rebuilds an equivalent module). The base holds
    what every leader shares: the component names, the cost of incentives and the known context
    values (``contexts`` of the column ``context_column``; ``default_context`` serves unknown
    values; ``context_index`` is ``None`` without contexts)."""

    leader_type: ClassVar[str] = "leader"

    def __init__(
        self,
        component_names: Sequence[str],
        cost_coef: float = 0.0,
        cost_kind: str = "l1",
        contexts: Sequence[Any] | None = None,
        context_column: str = "category",
        default_context: Any | None = None,
    ) -> None:
        super().__init__()
        names = list(component_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"component_names must be non-empty and unique, got {names}")
        if cost_kind not in ("l1", "l2"):
            raise ValueError(f"cost_kind must be 'l1' or 'l2', got {cost_kind!r}")
        if not float(cost_coef) >= 0.0:
            raise ValueError(f"cost_coef must be >= 0, got {cost_coef}")
        self.component_names = names
        self.cost_coef = float(cost_coef)
        self.cost_kind = cost_kind
        self.context_index = (
            None if contexts is None else ContextIndex(contexts, context_column, default_context)
        )
        self.context_column, self.default_context = context_column, default_context

    # --- interface -----------------------------------------------------------------------
    def incentive(
        self,
        component_scores: Tensor,
        contexts: Sequence[Any] | Tensor | None,
        features: Tensor | None,
    ) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def forward(
        self,
        component_scores: Tensor,
        contexts: Sequence[Any] | Tensor | None = None,
        features: Tensor | None = None,
    ) -> Tensor:
        K = len(self.component_names)
        if component_scores.dim() != 2 or component_scores.shape[1] != K:
            raise ValueError(
                f"{type(self).__name__}: component_scores must have shape [B, {K}] (components "
                f"{self.component_names}), got {tuple(component_scores.shape)}"
            )
        out = self.incentive(component_scores, contexts, features)
        if out.shape != component_scores.shape[:1]:
            raise RuntimeError(
                f"{type(self).__name__} produced shape {tuple(out.shape)}, expected [B]"
            )
        return out

    def cost(self, incentive: Tensor) -> Tensor:
        """Leader's cost of paying ``incentive`` ([B]): ``cost_coef * |i|`` or ``cost_coef * i^2``."""
        if self.cost_coef == 0.0:
            return torch.zeros_like(incentive)
        if self.cost_kind == "l1":
            return self.cost_coef * incentive.abs()
        return self.cost_coef * incentive.square()

    def flat_parameters(self) -> Tensor:
        """All parameters ``x`` as one detached flat vector (in ``named_parameters`` order)."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def unflatten(self, x: Tensor, prefix: str = "") -> dict[str, Tensor]:
        """``{prefix + name: tensor}`` views of a flat vector ``x`` shaped like the parameters,
        for ``torch.func.functional_call`` (``x`` may carry gradients)."""
        total = sum(p.numel() for p in self.parameters())
        if x.dim() != 1 or x.numel() != total:
            raise ValueError(
                f"flat vector has {x.numel()} entries (shape {tuple(x.shape)}), the leader has "
                f"{total} parameters"
            )
        out: dict[str, Tensor] = {}
        i = 0
        for name, p in self.named_parameters():
            out[prefix + name] = x[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out

    def base_config(self) -> dict[str, Any]:
        """The constructor arguments of the base (components, cost, contexts)."""
        return {
            "component_names": list(self.component_names),
            "cost_coef": self.cost_coef,
            "cost_kind": self.cost_kind,
            "contexts": None if self.context_index is None else list(self.context_index.values),
            "context_column": self.context_column,
            "default_context": self.default_context,
        }

    # --- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``leader.safetensors`` then ``leader.json`` into ``directory`` (atomically)."""
        directory = Path(directory)
        doc = {"leader_type": self.leader_type, "config": self.config()}
        text = json.dumps(doc, sort_keys=True)
        json.loads(text)  # config must be JSON-serialisable before anything is written
        state = {k: v for k, v in self.state_dict().items()}
        save_safetensors(directory / STATE_FILE, state, metadata={"leader": text})
        atomic_write_json(directory / CONFIG_FILE, doc)
        return directory


def build_leader(spec: dict[str, Any]) -> Leader:
    """Build a leader from a YAML/JSON spec ``{type: <leader type>, ...constructor args}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(
            f"a leader spec must be a mapping with a 'type'; known types: {known_leaders()}"
        )
    params = dict(spec)
    kind = params.pop("type")
    if kind not in _LEADERS:
        raise ValueError(f"unknown leader type {kind!r}; known types: {known_leaders()}")
    import inspect

    accepted = set(inspect.signature(_LEADERS[kind]).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"leader type {kind!r}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}"
        )
    return _LEADERS[kind](**params)


def load_leader(directory: str | Path) -> Leader:
    """Rebuild a leader saved by :meth:`Leader.save` (no pickle; only registered types)."""
    directory = Path(directory)
    cfg_path, state_path = directory / CONFIG_FILE, directory / STATE_FILE
    for p in (cfg_path, state_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"cannot load leader from {str(directory)!r}: {p.name} is missing"
            )
    doc = read_json(cfg_path)
    if not isinstance(doc, dict) or "leader_type" not in doc or "config" not in doc:
        raise ValueError(f"{cfg_path} must contain 'leader_type' and 'config'")
    kind = doc["leader_type"]
    if kind not in _LEADERS:
        raise ValueError(f"{cfg_path}: unknown leader type {kind!r}; known: {known_leaders()}")
    from safetensors import safe_open

    with safe_open(str(state_path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("leader")
    if meta is not None and json.loads(meta) != json.loads(json.dumps(doc, sort_keys=True)):
        raise ValueError(
            f"{cfg_path.name} and {state_path.name} in {str(directory)!r} describe different "
            f"leaders (an interrupted save?); save the leader again"
        )
    leader = _LEADERS[kind](**doc["config"])
    state = load_safetensors(state_path)
    missing = set(leader.state_dict()) ^ set(state)
    if missing:
        raise ValueError(
            f"{state_path}: tensors {sorted(missing)} do not match leader type {kind!r}"
        )
    leader.load_state_dict(state)
    return leader
