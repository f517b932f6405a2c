"""Checks shared by both modes, run before any model is built or any file written: settings
that would let a run finish with a wrong leader are one-line errors that say what to fix.

* :func:`check_reward_scaling`: TRL settings that rescale or clip the follower's rewards
  (``scale_rewards``, ``multi_objective_aggregation="normalize_then_sum"``, RLOO's
  ``normalize_advantages`` and ``reward_clip_range``), so that it no longer maximises
  ``E[r] - beta KL`` and the hypergradient is biased (``docs/theory.md §3``). Refused unless the
  explicit opt-in is set: ``HPGDCallback(allow_reward_scaling=True)`` in plugin mode,
  ``followers.N.allow_reward_scaling: true`` in orchestrated runs.
* :func:`check_context_names`: every context named by a reward mix's ``by_context`` or by the
  leader's ``contexts`` must occur in the data; a typo (``qiuck`` for ``quick``) would leave the
  leader's goal, or its parameters, for that context silently unused.
* :func:`check_dataset_for_leader`: plugin mode's dataset (TRL's ``train_dataset``): not empty,
  has the context column, every context value known to the leader, plus
  :func:`check_context_names`.
* :func:`check_writable_directory`: the output directory can be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from align_cbrl.objective import BilevelRewards
from align_cbrl.utils.suggest import did_you_mean

__all__ = [
    "check_context_names",
    "check_dataset_for_leader",
    "check_reward_scaling",
    "check_writable_directory",
    "mix_contexts",
]

_MISSING = object()


def _setting(settings: Any, key: str, default: Any) -> Any:
    """``settings[key]`` of a mapping (a ``trl:`` section) or ``settings.key`` (TRL's config)."""
    if isinstance(settings, Mapping):
        return settings.get(key, default)
    value = getattr(settings, key, _MISSING)
    return default if value is _MISSING else value


def check_reward_scaling(settings: Any, who: str, opt_in: str) -> None:
    """Refuse TRL settings that rescale or clip rewards (module docstring). ``settings`` is a
    ``GRPOConfig`` / ``RLOOConfig`` or a mapping of their fields; ``who`` starts the message,
    ``opt_in`` (``"(or ... to accept the bias)"``) ends it."""
    scaling = _setting(settings, "scale_rewards", "none")
    if scaling not in ("none", False, None):
        raise ValueError(
            f"{who}: scale_rewards={scaling!r} divides each group's rewards by their std, so the "
            "follower optimises another objective than E[r] - beta KL and the hypergradient is "
            f"biased; set scale_rewards='none' {opt_in}"
        )
    if _setting(settings, "multi_objective_aggregation", None) == "normalize_then_sum":
        raise ValueError(
            f"{who}: multi_objective_aggregation='normalize_then_sum' standardises each reward "
            "per group, so the follower does not maximise E[sum w r] - beta KL; use "
            f"'sum_then_normalize' with scale_rewards='none' {opt_in}"
        )
    if _setting(settings, "normalize_advantages", False):
        raise ValueError(
            f"{who}: normalize_advantages=True divides RLOO's advantages by their batch std (the "
            f"same bias as scale_rewards); set normalize_advantages=False {opt_in}"
        )
    clip = _setting(settings, "reward_clip_range", None)
    if clip is not None:
        raise ValueError(
            f"{who}: reward_clip_range={clip!r} clips the rewards, so the follower does not "
            f"maximise E[r] - beta KL; set reward_clip_range=None {opt_in}"
        )


def check_context_names(
    present: Iterable[Any], column: str, named: Mapping[str, Iterable[Any]]
) -> None:
    """Every context in ``named`` (``{where: context values}``, e.g.
    ``{"rewards.leader.by_context": ["qiuck", ...]}``) must be one of the ``column`` values
    ``present`` in the data; otherwise a one-line error with the closest value."""
    known = list(dict.fromkeys(present))
    for where, names in named.items():
        for name in names:
            if name not in known:
                raise ValueError(
                    f"{where}: context {name!r} is the {column!r} of no dataset row"
                    f"{did_you_mean(name, known)}; the rows have {known}. A context no row has "
                    "is never used (the leader's goal or parameters for it stay untouched): fix "
                    "the name or remove it"
                )


def mix_contexts(bilevel: BilevelRewards) -> tuple[list[Any], list[Any]]:
    """The ``by_context`` keys of the leader's mix and of the follower's base mix."""
    return list(bilevel.upper.mix.config.by_context), list(bilevel.follower.config.by_context)


def _column_values(dataset: Any, column: str) -> list[Any] | None:
    """The values of ``column`` of a ``datasets.Dataset`` or a list of rows; ``None`` when the
    dataset has no such column."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(dataset[column]) if column in names else None
    rows = list(dataset)
    if any(not isinstance(r, Mapping) or column not in r for r in rows):
        return None
    return [r[column] for r in rows]


def check_dataset_for_leader(
    dataset: Any, bilevel: BilevelRewards, column: str | None, who: str = "HPGDCallback"
) -> None:
    """Plugin mode, before any generation: the training dataset (a ``datasets.Dataset`` or a
    list of rows; streaming datasets are not inspected) is not empty, has the context
    ``column``, every context value has a row in the leader (or a ``default_context``), and
    the mixes' ``by_context`` and the leader's contexts name values that occur
    (:func:`check_context_names`)."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise ValueError(
            f"{who}: the training dataset is empty; nothing would be generated and the leader "
            "would be saved untrained. Give the trainer a train_dataset with prompts"
        )
    if column is None:
        return
    values = _column_values(dataset, column)
    if values is None:
        columns = list(getattr(dataset, "column_names", None) or [])
        raise ValueError(
            f"{who}: the training dataset has no {column!r} column (its columns: {columns}); add "
            f"it, or name the column that holds each prompt's context with "
            f"HPGDReward(..., context_column=...){did_you_mean(column, columns)}"
        )
    index = getattr(bilevel.leader, "context_index", None)
    present = list(dict.fromkeys(values))
    if index is not None and index.default is None:
        unknown = [v for v in present if v not in index.values]
        if unknown:
            raise ValueError(
                f"{who}: the dataset's {column!r} values {unknown} have no row in the leader "
                f"(its contexts: {index.values}){did_you_mean(unknown[0], index.values)}; add "
                "them to the leader's contexts or give it a default_context"
            )
    leader_mix, follower_mix = mix_contexts(bilevel)
    named = {
        "the leader's mix (BilevelRewards upper=) by_context": leader_mix,
        "the follower's mix (BilevelRewards follower=) by_context": follower_mix,
        "the leader's contexts": [] if index is None else index.values,
    }
    check_context_names(present, column, named)


def check_writable_directory(path: str | os.PathLike[str], who: str = "output_dir") -> None:
    """Raise a one-line ``ValueError`` unless files can be created in ``path`` (or, if it
    does not exist yet, in its nearest existing parent), checked by creating and removing an
    empty temporary directory (also catches read-only file systems, and works for root)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return  # a file where a directory belongs: reported where the directory is planned
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".align_cbrl_write_check.", dir=probe))
    except OSError as err:
        where = "" if probe == path else f" ({probe} is where it would be created)"
        raise ValueError(
            f"{who} {str(path)!r} is not writable{where}: {err.strerror or err}; choose a "
            "directory you can write to"
        ) from err


def follower_scaling_opt_in(index: int) -> str:
    """The opt-in phrase of orchestrated follower ``index``."""
    return f"(or set followers.{index}.allow_reward_scaling: true to accept the bias)"


def named_config_contexts(
    leader_mix: Mapping[str, Any] | None,
    follower_mix: Mapping[str, Any] | None,
    leader_spec: Mapping[str, Any],
) -> dict[str, Sequence[Any]]:
    """Orchestrated runs: the contexts the config names, by config key."""

    def keys(mix: Any) -> list[Any]:
        by = mix.get("by_context") if isinstance(mix, Mapping) else getattr(mix, "by_context", None)
        return list(by or {})

    return {
        "rewards.leader.by_context": keys(leader_mix),
        "rewards.follower.by_context": keys(follower_mix),
        "leader.spec.contexts": list(leader_spec.get("contexts") or []),
    }
