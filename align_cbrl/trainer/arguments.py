"""``HPGDArguments``: the leader's settings of plugin mode, one dataclass that TRL's
``TrlParser`` reads next to ``GRPOConfig`` / ``RLOOConfig`` from the same YAML and command line.

Every key starts with ``leader_`` so none collides with a TRL field (``max_grad_norm``, ``beta``
and ``output_dir`` exist in both). The leader's own settings are not repeated here: they are
:class:`~align_cbrl.trainer.config.LeaderConfig`'s fields (the ``leader:`` section of an
orchestrated run) with the prefix, their defaults and help text, generated from it
(``leader_lr`` is ``LeaderConfig.lr``, ...); :meth:`HPGDArguments.leader_config` gives that
``LeaderConfig`` back. The plugin's own settings (``leader_update_every``, ...) are declared
in :class:`PluginSettings`. ``leader_spec`` is a mapping in YAML or a JSON string on the
command line::

    parser = TrlParser((GRPOConfig, HPGDArguments))
    trl_args, hpgd_args = parser.parse_args_and_config()      # --config run.yaml
    callback = HPGDCallback(reward, hpgd_args)
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from align_cbrl.config_parser import setting
from align_cbrl.trainer.config import LeaderConfig

__all__ = ["PLUGIN_ESTIMATORS", "PREFIX", "HPGDArguments", "PluginSettings"]

PREFIX = "leader_"
PLUGIN_ESTIMATORS = ("hpgd", "naive", "fixed")

# LeaderConfig fields that plugin mode uses, with the type TrlParser is given for each (None:
# LeaderConfig's own). zero_order_* and follower_schedule need the orchestrated trainer.
_SHARED: dict[str, Any] = {
    "spec": dict[str, Any] | str | None,  # a YAML mapping, or JSON text on the command line
    "estimator": Literal[PLUGIN_ESTIMATORS],
    "optimizer": None,
    "lr": None,
    "momentum": None,
    "adam_betas": None,
    "max_grad_norm": None,
    "init": None,
}


@dataclass
class PluginSettings:
    """What only plugin mode needs (the base of :class:`HPGDArguments`)."""

    leader_update_every: int = setting(10, "K: optimiser steps between two leader updates (>= 1)")
    leader_reward_index: int | None = setting(
        None,
        "position of the HPGDReward in reward_funcs; needed only when reward_weights has several entries (its weight w enters as w d r_x)",
    )
    leader_allow_reward_scaling: bool = setting(
        False,
        "accept scale_rewards, normalize_then_sum, RLOO normalize_advantages or reward_clip_range (the hypergradient is then biased)",
    )
    leader_follower_beta: float | None = setting(
        None, "the follower's KL temperature; null = the TRL config's beta"
    )
    leader_follower_name: str = setting("follower", "the follower's name in metric keys")
    leader_output_dir: str | None = setting(
        None, "where leader_metrics.jsonl and the final leader/ go; null = the TRL output_dir"
    )
    leader_resume_from: str | None = setting(
        None,
        "TRL checkpoint directory to restore the leader from when it lies outside the TRL output_dir",
    )

    def __post_init__(self) -> None:
        k = self.leader_update_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"leader_update_every must be an int >= 1, got {k!r}")
        i = self.leader_reward_index
        if i is not None and (isinstance(i, bool) or not isinstance(i, int) or i < 0):
            raise ValueError(f"leader_reward_index must be an int >= 0 or null, got {i!r}")
        name = self.leader_follower_name
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"leader_follower_name must be a non-empty name without '/', got {name!r}"
            )
        spec = getattr(self, "leader_spec", None)
        if isinstance(spec, str):
            try:
                self.leader_spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"leader_spec must be a mapping (JSON on the command line), got {spec!r}"
                ) from err
        if getattr(self, "leader_estimator", "hpgd") not in PLUGIN_ESTIMATORS:
            raise ValueError(
                f"leader_estimator must be one of {PLUGIN_ESTIMATORS} in plugin mode, got "
                f"{self.leader_estimator!r} (zero_order needs the orchestrated trainer)"
            )
        self.leader_config()  # LeaderConfig's own checks (lr > 0, two adam_betas, ...)

    def leader_config(self) -> LeaderConfig:
        """The :class:`LeaderConfig` these settings share with orchestrated runs."""
        shared = {f.name[len(PREFIX) :]: getattr(self, f.name) for f in _shared_fields(self)}
        if shared.get("spec") is None:
            shared.pop("spec", None)
        return LeaderConfig(**shared)


def _shared_fields(obj: Any) -> list[dataclasses.Field]:
    return [f for f in fields(obj) if f.name[len(PREFIX) :] in _SHARED]


def _generated_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """``(leader_<name>, type, field)`` for the :data:`_SHARED` fields of LeaderConfig."""
    hints = typing.get_type_hints(LeaderConfig)
    out = []
    for f in fields(LeaderConfig):
        if f.name not in _SHARED:
            continue
        kw: dict[str, Any] = {"metadata": {"help": f"{f.metadata['help']} (leader.{f.name})"}}
        if f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        else:
            kw["default"] = f.default
        out.append((PREFIX + f.name, _SHARED[f.name] or hints[f.name], field(**kw)))
    return out


HPGDArguments = dataclasses.make_dataclass(
    "HPGDArguments",
    _generated_fields(),
    bases=(PluginSettings,),
    namespace={
        "__module__": __name__,
        "__doc__": "The leader's settings of plugin mode (module docstring): "
        + ", ".join(PREFIX + n for n in _SHARED)
        + " from LeaderConfig, and the plugin's own PluginSettings.",
    },
)
