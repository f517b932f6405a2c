"""Leader (incentive) models: the leader's parameters ``x`` (``docs/theory.md`` §1).

A leader maps a batch of component scores ``s[B, K]`` (plus each sample's context value and
optional features) to an incentive ``i_x(p, y)`` that is added to the follower's reward,
``r_x = r_base + i_x`` (``docs/theory.md`` §3). Its ``nn.Parameter``s are ``x``; everything is
differentiable in them so that ``d r_x`` and ``d rbar_x`` come from autograd. A leader may pay
for its incentives: ``cost_x(p, y) = cost_coef * |i_x(p, y)|`` (``"l1"``) or
``cost_coef * i_x(p, y)^2`` (``"l2"``), which the upper objective subtracts from ``rbar``.

A leader is saved as a Hugging Face style folder (``config.json``, ``model.safetensors``, a
``README.md`` model card): :meth:`Leader.save_pretrained` and
:func:`~align_cbrl.leaders.pretrained.load_leader` (``docs/shaping_artifact.md``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from align_cbrl.rewards.contexts import ContextIndex

__all__ = ["Leader", "build_leader", "known_leaders", "leader_class", "register_leader"]

_LEADERS: dict[str, type[Leader]] = {}
STATE_FILE = "model.safetensors"  # the parameters of a saved leader (leaders/pretrained.py)


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
    def spec(self) -> dict[str, Any]:
        """``{"type": leader_type, **config()}``: what :func:`build_leader` rebuilds it from."""
        return {"type": self.leader_type, **self.config()}

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        rewards: Any = None,
        training: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into
        ``directory`` (:func:`align_cbrl.leaders.pretrained.save_pretrained`; ``rewards``: the
        shaped reward or its reward spec, ``training``: the run's summary)."""
        from align_cbrl.leaders.pretrained import save_pretrained

        return save_pretrained(self, directory, rewards=rewards, training=training)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        rewards: Any = None,
        training: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Save to a temporary folder and upload it to the Hugging Face Hub repository
        ``repo_id`` (:func:`align_cbrl.leaders.pretrained.push_to_hub`, which takes
        ``kwargs``: ``token``, ``private``, ``commit_message``); returns the commit URL."""
        import tempfile

        from align_cbrl.leaders.pretrained import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, rewards=rewards, training=training)
            return push_to_hub(tmp, repo_id, **kwargs)


def leader_class(kind: str, where: str) -> type[Leader]:
    """The registered class of leader type ``kind`` (``where`` names the source in errors)."""
    if kind not in _LEADERS:
        raise ValueError(f"{where}: unknown leader type {kind!r}; known: {known_leaders()}")
    return _LEADERS[kind]


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
