"""A TRL follower's settings: ours, plus TRL's own ``GRPOConfig`` / ``RLOOConfig`` fields.

:class:`TRLFollowerConfig` holds only what TRL has no field for (or where ours differs): the KL
temperature ``beta`` and where the KL enters (``kl_mode``), ``prompts_per_step``, the ``seed``
and LoRA. Every other training setting is a ``GRPOConfig`` / ``RLOOConfig`` field, passed
through unchanged in the ``trl`` mapping and checked against TRL's dataclass fields (an unknown
key is a one-line error with the closest field name).

:func:`trl_config` is the one function that turns it into TRL's config object; the followers,
the orchestrated builders and the plugin recipe all call it, so the same YAML section means the
same TRL settings everywhere.

Why ``scale_rewards="none"`` (the GRPO default here): the leader's hypergradient assumes the
follower maximises ``E[r] - beta * KL(pi || pi_ref)`` (``docs/theory.md §3``); dividing
advantages by the group's reward std rescales the reward per prompt (the effective temperature
becomes ``beta * std``), so the follower would converge somewhere else than
``pi_ref exp(r / beta)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from align_cbrl.followers.base import validate_beta
from align_cbrl.utils.suggest import did_you_mean

__all__ = [
    "FOLLOWER_TRL_DEFAULTS",
    "KL_MODES",
    "TRLFollowerConfig",
    "comparable_settings",
    "trl_config",
    "trl_config_class",
    "trl_field_names",
]

KL_MODES = ("loss", "reward")

FOLLOWER_TRL_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "num_generations": 4,
    "max_completion_length": 16,
    "max_steps": 1_000_000,
    "lr_scheduler_type": "constant",
    "disable_dropout": True,
    "activation_checkpointing": False,
}
"""Where our defaults differ from TRL's: a long LR horizon with a constant schedule (so every
chunk of ``train(k)`` is alike), no dropout (deterministic log-probs), no activation
checkpointing (it only slows small models down). ``scale_rewards="none"`` is added for GRPO."""

_KIND_DEFAULTS: dict[str, dict[str, Any]] = {"grpo": {"scale_rewards": "none"}, "rloo": {}}
_OURS = {"beta": "beta", "seed": "seed", "per_device_train_batch_size": "prompts_per_step"}


def trl_config_class(kind: str) -> type:
    """``GRPOConfig`` for ``"grpo"``, ``RLOOConfig`` for ``"rloo"``."""
    if kind == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if kind == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    raise ValueError(f"TRL trainer kind must be 'grpo' or 'rloo', got {kind!r}")


def trl_field_names(*kinds: str) -> set[str]:
    """The init fields of the TRL config classes of ``kinds`` (all of them together)."""
    return {f.name for kind in kinds for f in dataclasses.fields(trl_config_class(kind)) if f.init}


def _check_keys(settings: Mapping[str, Any], kinds: tuple[str, ...]) -> None:
    known = trl_field_names(*kinds)
    for key in settings:
        if key not in known:
            hint = did_you_mean(key, sorted(known))
            names = "/".join(trl_config_class(k).__name__ for k in kinds)
            raise ValueError(f"trl: {key!r} is not a {names} field{hint}")
        if key in _OURS:
            raise ValueError(f"trl: {key!r} is set by the follower; set {_OURS[key]} instead")


@dataclass
class TRLFollowerConfig:
    """Settings of a GRPO / RLOO follower (see the module docstring).

    Attributes:
        beta: KL temperature (> 0) of the follower's objective ``E[r] - beta * KL(pi || pi_ref)``
            in both KL modes (TRL's ``beta`` is this value with ``kl_mode="loss"`` and RLOO, 0 for
            GRPO with ``kl_mode="reward"``, where the follower applies the KL itself).
        kl_mode: where the KL enters. ``"reward"`` (default): sequence-level penalty in the
            reward, ``r' = r - beta * (log pi_theta(y|p) - log pi_ref(y|p))``, whose fixed point
            is exactly ``pi* ∝ pi_ref exp(r / beta)`` (what the leader's hypergradient assumes,
            ``docs/theory.md §3``). ``"loss"``: GRPO only, TRL's per-token KL term in the loss
            (biased fixed point for multi-token completions). RLOO always uses the reward penalty.
        prompts_per_step: prompts per optimiser step (TRL's ``per_device_train_batch_size`` is
            ``prompts_per_step * num_generations``).
        seed: seeds TRL, the prompt order and :meth:`TRLFollower.sample`.
        lora: ``peft.LoraConfig`` fields (``{}`` = the defaults of
            :func:`align_cbrl.models.real.lora_config`): TRL trains LoRA adapters on the model
            (``peft_config``); checkpoints then hold the adapter weights. ``None``: all weights.
        trl: ``GRPOConfig`` / ``RLOOConfig`` fields, passed through (over
            :data:`FOLLOWER_TRL_DEFAULTS`), e.g. ``{"learning_rate": 1e-3, "num_generations":
            8, "max_completion_length": 32, "temperature": 0.7}``.
    """

    beta: float = 0.05
    kl_mode: Literal["loss", "reward"] = "reward"
    prompts_per_step: int = 2
    seed: int = 0
    lora: dict[str, Any] | None = None
    trl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.beta = validate_beta(self.beta, "TRLFollowerConfig")
        if self.kl_mode not in KL_MODES:
            raise ValueError(
                f"kl_mode={self.kl_mode!r}: use 'reward' (KL as a sequence-level reward penalty, "
                "exact fixed point pi*) or 'loss' (TRL GRPO's per-token KL loss term)"
            )
        if isinstance(self.prompts_per_step, bool) or not isinstance(self.prompts_per_step, int):
            raise ValueError(f"prompts_per_step must be an int >= 1, got {self.prompts_per_step!r}")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.lora is not None:
            from align_cbrl.models.real import lora_config

            if not isinstance(self.lora, dict):
                raise TypeError(f"lora must be a mapping of LoraConfig fields, got {self.lora!r}")
            lora_config(self.lora)  # unknown fields / missing peft fail here, before training
        if not isinstance(self.trl, Mapping):
            raise TypeError(
                f"trl must be a mapping of GRPOConfig/RLOOConfig fields, got {self.trl!r}"
            )
        self.trl = dict(self.trl)
        _check_keys(self.trl, ("grpo", "rloo"))


def _kind_checks(kind: str, config: TRLFollowerConfig, args: dict[str, Any]) -> None:
    """What ``kl_mode`` means for each trainer; the group baseline needs >= 2 completions."""
    n = args["num_generations"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(
            f"num_generations={n}: GRPO/RLOO need >= 2 completions per prompt (the group "
            "baseline); set num_generations >= 2"
        )
    if not int(args["max_completion_length"]) >= 1:
        raise ValueError("max_completion_length must be >= 1")
    if kind == "rloo" and config.kl_mode != "reward":
        raise ValueError(
            "RLOO always puts the KL into the reward (kl_mode='reward'); kl_mode='loss' is a "
            "GRPO setting"
        )
    if kind == "grpo" and config.kl_mode == "reward":
        aggregation = args.get("multi_objective_aggregation", "sum_then_normalize")
        if aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={aggregation!r} normalises the KL penalty "
                "separately from the reward; kl_mode='reward' needs 'sum_then_normalize'"
            )


def trl_config(
    kind: str,
    config: TRLFollowerConfig,
    *,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Any:
    """The ``GRPOConfig`` / ``RLOOConfig`` (``kind``) of a follower configured by ``config``.

    Precedence, lowest first: :data:`FOLLOWER_TRL_DEFAULTS` (+ GRPO's ``scale_rewards="none"``
    and ``use_cpu`` without CUDA), the caller's ``defaults``, ``config.trl``, the caller's
    ``fixed`` settings (``config.trl`` may not set those) and ours: TRL's ``beta`` (0 for GRPO
    with ``kl_mode="reward"``, where the KL is a reward term), ``seed`` and
    ``per_device_train_batch_size = prompts_per_step * num_generations``. With GRPO's
    ``kl_mode="reward"`` a ``reward_weights`` list gets weight 1 appended for the KL term."""
    _check_keys(config.trl, (kind,))
    clash = sorted(set(fixed or {}) & set(config.trl))
    if clash:
        raise ValueError(f"trl: {clash} are set by the follower here; remove them")
    args: dict[str, Any] = {**FOLLOWER_TRL_DEFAULTS, **_KIND_DEFAULTS[kind]}
    if not torch.cuda.is_available():
        args["use_cpu"] = True
    args.update({**(defaults or {}), **config.trl, **(fixed or {})})
    _kind_checks(kind, config, args)
    reward_mode_grpo = kind == "grpo" and config.kl_mode == "reward"
    args["beta"] = 0.0 if reward_mode_grpo else config.beta
    args["seed"] = config.seed
    args["per_device_train_batch_size"] = config.prompts_per_step * args["num_generations"]
    if reward_mode_grpo and args.get("reward_weights") is not None:
        args["reward_weights"] = [*map(float, args["reward_weights"]), 1.0]
    return trl_config_class(kind)(**args)


def comparable_settings(kind: str, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a follower checkpoint must match to continue identically: our fields and
    every TRL field (TRL's default where neither ``trl`` nor :data:`FOLLOWER_TRL_DEFAULTS` sets
    one), from an ``asdict(TRLFollowerConfig)``. ``output_dir`` (TRL's scratch directory) is
    left out."""
    data = dict(saved)
    trl_defaults = {
        f.name: f.default
        for f in dataclasses.fields(trl_config_class(kind))
        if f.init and f.default is not dataclasses.MISSING
    }
    merged = {**trl_defaults, **FOLLOWER_TRL_DEFAULTS, **_KIND_DEFAULTS[kind]}
    merged.update(data.get("trl") or {})
    merged.pop("output_dir", None)
    out = {k: v for k, v in data.items() if k != "trl"}
    out.update({f"trl.{k}": v for k, v in merged.items()})
    return out
