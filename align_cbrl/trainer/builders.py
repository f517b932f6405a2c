"""Turn an :class:`~align_cbrl.trainer.config.HPGDConfig` into objects, validating everything
before anything is trained or written: the enumerable task, reward components and mixes,
datasets, model directories, the leader, the followers.

Each builder raises ``ValueError`` / ``FileNotFoundError`` with a message naming the config key
and what to change.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from align_cbrl.followers.base import Follower
from align_cbrl.leaders import Leader, build_leader, load_leader
from align_cbrl.objective import BilevelRewards
from align_cbrl.reference.several_followers import restricted_prompt_probs
from align_cbrl.reference.tiny_language import TinyLanguageConfig, TinyLanguageTask
from align_cbrl.rewards.base import RewardComponent
from align_cbrl.rewards.registry import build_components, load_reward_config
from align_cbrl.trainer.config import FollowerConfig, HPGDConfig
from align_cbrl.trainer.validation import (
    check_context_names,
    check_reward_scaling,
    check_writable_directory,
    follower_scaling_opt_in,
    named_config_contexts,
)
from align_cbrl.utils.suggest import did_you_mean

__all__ = [
    "FollowerBundle",
    "FollowerRows",
    "RewardSetup",
    "bilevel_for",
    "build_follower",
    "build_leader_from_config",
    "build_reward_setup",
    "check_config_contexts",
    "check_follower_contexts",
    "dataset_rows",
    "exact_log_ref",
    "follower_rows",
    "follower_trl_config",
    "load_follower_rows",
    "resolve_model",
    "resolve_task",
    "select_contexts",
    "validate_run_config",
]


@dataclass
class RewardSetup:
    """Components and mixes of a run (from the task, or from ``rewards``)."""

    components: list[RewardComponent]
    follower_mix: dict[str, Any] | None
    leader_mix: dict[str, Any] | None
    context_column: str | None

    @property
    def component_names(self) -> list[str]:
        return [c.name for c in self.components]


@dataclass
class FollowerBundle:
    """A built follower with its config, prompt rows and, on a task, the task prompt of each
    row (``prompt_index``) and the exact reference table ``log_ref[P, Y]`` over all the task's
    prompts."""

    config: FollowerConfig
    follower: Follower
    rows: list[dict[str, Any]]
    log_ref: torch.Tensor | None = None
    prompt_index: list[int] | None = None

    @property
    def full_task(self) -> bool:
        """Whether the follower draws from all the task's prompts, in the task's order."""
        idx, ref = self.prompt_index, self.log_ref
        return idx is not None and ref is not None and idx == list(range(ref.shape[0]))


def validate_run_config(config: HPGDConfig) -> None:
    """Checks that need no model or dataset, run before anything is built or written: a
    writable ``output_dir``; the followers' optimiser settings (which TRL would otherwise reject
    only at the first training step, after metrics were written); TRL settings that rescale
    rewards (:func:`~align_cbrl.trainer.validation.check_reward_scaling`, the same check as
    plugin mode's, unless ``followers.N.allow_reward_scaling``); ``tensorboard: true`` without
    the package."""
    from align_cbrl.metrics import TENSORBOARD_MISSING, tensorboard_available

    check_writable_directory(config.output_dir)
    for i, fc in enumerate(config.followers):
        who = f"followers.{i} ({fc.name!r})"
        if fc.trainer == "exact":
            continue
        if fc.trainer == "tabular":
            lr = fc.trl.get("learning_rate")
            if not (isinstance(lr, int | float) and math.isfinite(lr) and 0 < lr * fc.beta < 2):
                raise ValueError(
                    f"{who}: trainer 'tabular' needs 0 < learning_rate * beta < 2 (mirror-descent "
                    f"step size; 1 / beta is one-step exact), got learning_rate {lr!r}"
                )
            continue
        positive = {k: fc.trl.get(k, 1.0) for k in ("learning_rate", "temperature")}
        for key, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{who}: {key} must be a number > 0, got {value!r}")
        clip = fc.trl.get("max_grad_norm", 1.0)
        if not (isinstance(clip, int | float) and math.isfinite(clip) and clip >= 0):
            raise ValueError(
                f"{who}: max_grad_norm must be >= 0 (0 disables clipping), got {clip!r}"
            )
        if not fc.allow_reward_scaling:
            check_reward_scaling(fc.trl, f"{who}.trl", follower_scaling_opt_in(i))
    if config.tensorboard is True and not tensorboard_available():
        raise ValueError(TENSORBOARD_MISSING)


def resolve_task(task: str | dict[str, Any] | None) -> TinyLanguageTask | None:
    """The enumerable task of ``config.task`` (embedded name or ``TinyLanguageConfig`` fields)."""
    if task is None:
        return None
    from align_cbrl.data import task_config

    data = task_config(task) if isinstance(task, str) else copy.deepcopy(dict(task))
    known = {f.name for f in fields(TinyLanguageConfig)}
    extra = sorted(set(data) - known)
    if extra:
        raise ValueError(f"task: unknown field(s) {extra}; known: {sorted(known)}")
    try:
        return TinyLanguageTask(TinyLanguageConfig(**data))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"task: {err}") from err


def build_reward_setup(config: HPGDConfig, task: TinyLanguageTask | None) -> RewardSetup:
    """Components + mixes; unknown component types / parameters are reported with the list of
    accepted ones (``align_cbrl.rewards.registry``)."""
    if task is not None:
        return RewardSetup(
            components=list(task.components),
            follower_mix=task.config.follower,
            leader_mix=task.config.leader,
            context_column=task.config.context_column,
        )
    rc = config.rewards
    specs: list[dict[str, Any]] = []
    follower_mix, leader_mix = None, None
    if rc.config is not None:
        loaded = load_reward_config(rc.config)
        specs, follower_mix, leader_mix = loaded.components, loaded.follower, loaded.leader
    if rc.components:
        specs = rc.components
    follower_mix = rc.follower if rc.follower is not None else follower_mix
    leader_mix = rc.leader if rc.leader is not None else leader_mix
    if not specs:
        raise ValueError(
            "no reward components: set rewards.config (a reward config YAML such as "
            "configs/rewards/concise_polite.yaml), rewards.components, or a task"
        )
    try:
        comps = build_components(specs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rewards: {err}") from err
    if leader_mix is None:
        raise ValueError("rewards.leader (the leader's objective mix) is missing; add it")
    column = (leader_mix or {}).get("context_column", "category")
    return RewardSetup(comps, follower_mix, leader_mix, column)


def resolve_model(
    spec: str,
    seed: int,
    task: TinyLanguageTask | None,
    who: str,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
) -> Path:
    """A model directory: ``tiny-word`` / ``tiny-bpe`` are built (cached), ``smollm2`` and
    ``<dir>`` + ``gguf_file`` are dequantised once into a cached directory
    (:mod:`align_cbrl.models.real`), others must exist."""
    from align_cbrl.models import build_tiny_lm, require_model_dir

    if spec == "smollm2" or gguf_file is not None:
        from align_cbrl.models import real

        if spec == "smollm2":
            if gguf_file is not None:
                raise ValueError(f"{who}: model 'smollm2' already names its GGUF; drop gguf_file")
            gguf = real.locate_smollm2_gguf()
        else:
            gguf = Path(os.path.expanduser(spec)) / gguf_file
            if not gguf.is_file():
                raise FileNotFoundError(f"{who}: no GGUF file {gguf_file!r} in {spec!r}")
        return real.gguf_model_dir(gguf, dtype)
    if spec == "tiny-word":
        if task is None:
            raise ValueError(
                f"{who}: model 'tiny-word' needs a task (its vocabulary); set task, or use "
                "model: tiny-bpe or a model directory"
            )
        return build_tiny_lm("word", seed=seed, words=task.vocab)
    if spec == "tiny-bpe":
        return build_tiny_lm("bpe", seed=seed)
    return require_model_dir(spec, who)


def exact_log_ref(model_dir: Path, task: TinyLanguageTask, who: str) -> torch.Tensor:
    """``log pi_ref[P, Y]`` of the task's completions under the model (its tokenizer must map
    the task's words to ids ``0..V-1`` and EOS to ``V``)."""
    from align_cbrl.models import completion_logprobs, load_tiny_lm

    model, tok = load_tiny_lm(model_dir)
    ids = tok.convert_tokens_to_ids([*task.vocab, tok.eos_token])
    if ids != list(range(len(task.vocab) + 1)) or len(tok) != len(task.vocab) + 1:
        raise ValueError(
            f"{who}: the model's tokenizer is not the word-level tokenizer of the task vocabulary "
            f"{task.vocab} (+ EOS); use model: tiny-word for exact evaluation"
        )
    return completion_logprobs(model, tok, task.prompts, [list(t) for t in task.tokens])


def dataset_rows(fc: FollowerConfig, task: TinyLanguageTask | None, who: str) -> list[dict]:
    """The prompt rows of follower ``fc``: its ``dataset``, else the task's prompts."""
    from align_cbrl.data import load_prompts

    if fc.dataset is None:
        if task is None:
            raise ValueError(f"{who}: set dataset (an embedded prompt set or a file) or a task")
        return task.dataset_rows()
    try:
        return load_prompts(fc.dataset)
    except ValueError as err:
        raise ValueError(f"{who}: {err}") from err


def follower_trl_config(fc: FollowerConfig, task: TinyLanguageTask | None, who: str) -> Any:
    """The :class:`~align_cbrl.followers.trl_config.TRLFollowerConfig` of follower section
    ``fc``: its own fields, with ``trl.max_completion_length`` set by the task and the weights
    loaded in ``model_dtype`` (unless ``trl.model_init_kwargs`` says otherwise). Used by the
    orchestrated builders and the plugin recipe alike."""
    from align_cbrl.followers.trl_config import TRLFollowerConfig

    trl = dict(fc.trl)
    if task is not None:
        trl["max_completion_length"] = task.config.max_words
    if fc.model_dtype != "float32":
        trl.setdefault("model_init_kwargs", {"dtype": fc.model_dtype})
    ours = {f.name: getattr(fc, f.name) for f in fields(TRLFollowerConfig) if f.name != "trl"}
    try:
        return TRLFollowerConfig(**ours, trl=trl)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{who}: {err}") from err


def _exact_follower(
    fc: FollowerConfig, task: TinyLanguageTask, log_ref: torch.Tensor, column: str | None
) -> Follower:
    """``trainer: exact`` (:class:`ExactFollower`) or ``tabular`` (:class:`SoftmaxFollower`,
    step size ``trl.learning_rate``)."""
    from align_cbrl.followers.exact import ExactFollower
    from align_cbrl.followers.learning import SoftmaxFollower

    kw: dict[str, Any] = dict(
        beta=fc.beta,
        name=fc.name,
        contexts=None if column is None else {column: list(task.contexts)},
        seed=fc.seed,
    )
    if fc.trainer == "tabular":
        return SoftmaxFollower(task.prompts, task.texts, log_ref, lr=fc.trl["learning_rate"], **kw)
    return ExactFollower(task.prompts, task.texts, log_ref, **kw)


def select_contexts(
    rows: list[dict[str, Any]], fc: FollowerConfig, column: str | None, who: str
) -> list[int]:
    """Positions of the rows whose context is in ``fc.contexts`` (all rows when ``None``);
    every listed context must occur."""
    if fc.contexts is None:
        return list(range(len(rows)))
    if column is None:
        raise ValueError(
            f"{who}: contexts needs a context column; set the leader mix's context_column"
        )
    present = list(dict.fromkeys(r.get(column) for r in rows))
    missing = [c for c in fc.contexts if c not in present]
    if missing:
        raise ValueError(
            f"{who}: contexts {missing} match none of its prompts"
            f"{did_you_mean(missing[0], present)}; their {column!r} values are {present}"
        )
    return [i for i, r in enumerate(rows) if r.get(column) in fc.contexts]


def _task_prompt_index(
    fc: FollowerConfig, rows: list[dict[str, Any]], keep: list[int], task: TinyLanguageTask | None
) -> list[int] | None:
    """The task prompt of each kept row when the follower's prompts are the task's (its
    ``dataset`` is ``None`` or lists exactly the task's prompts), else ``None``."""
    if task is None:
        return None
    if fc.dataset is not None and [r["prompt"] for r in rows] != task.prompts:
        return None
    return keep


@dataclass
class FollowerRows:
    """A follower's dataset rows (``all_rows``), the ones it trains on (``rows``, filtered to
    its ``contexts``) and, on the task's prompts, the task prompt of each (``prompt_index``)."""

    all_rows: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    prompt_index: list[int] | None


def follower_rows(
    fc: FollowerConfig, task: TinyLanguageTask | None, setup: RewardSetup, index: int
) -> FollowerRows:
    """Load and check follower ``index``'s rows (no model is built): every row has the
    context column, ``fc.contexts`` occur."""
    who = f"followers.{index} ({fc.name!r})"
    rows = dataset_rows(fc, task, who)
    if setup.context_column is not None and any(setup.context_column not in r for r in rows):
        raise ValueError(
            f"{who}: every dataset row needs the context column {setup.context_column!r}"
        )
    keep = select_contexts(rows, fc, setup.context_column, who)
    prompt_index = _task_prompt_index(fc, rows, keep, task)
    if task is not None and prompt_index is not None:
        try:
            restricted_prompt_probs(task, prompt_index)
        except ValueError as err:
            raise ValueError(f"{who}: {err}") from err
    return FollowerRows(rows, [rows[i] for i in keep], prompt_index)


def check_config_contexts(
    config: HPGDConfig, setup: RewardSetup, selections: Sequence[FollowerRows]
) -> None:
    """Every context named by ``rewards.leader.by_context``, ``rewards.follower.by_context``
    (or the task's mixes) and ``leader.spec.contexts`` occurs in some follower's dataset;
    before any model is built (:func:`~align_cbrl.trainer.validation.check_context_names`)."""
    column = setup.context_column
    if column is None:
        return
    present = [r.get(column) for s in selections for r in s.all_rows]
    named = named_config_contexts(setup.leader_mix, setup.follower_mix, config.leader.spec)
    check_context_names(present, column, named)


def load_follower_rows(
    config: HPGDConfig, task: TinyLanguageTask | None, setup: RewardSetup
) -> list[FollowerRows]:
    """Every follower's rows (:func:`follower_rows`), with the contexts the config names
    checked against them (:func:`check_config_contexts`); no model is built."""
    selections = [follower_rows(fc, task, setup, i) for i, fc in enumerate(config.followers)]
    check_config_contexts(config, setup, selections)
    return selections


def build_follower(
    fc: FollowerConfig,
    task: TinyLanguageTask | None,
    setup: RewardSetup,
    index: int,
    exact_needed: bool,
    selection: FollowerRows | None = None,
) -> FollowerBundle:
    """Build one follower (TRL GRPO/RLOO or exact sampler) from its config section; its rows
    are filtered to ``fc.contexts`` (:func:`follower_rows`, or the ``selection`` made
    already)."""
    who = f"followers.{index} ({fc.name!r})"
    if selection is None:
        selection = follower_rows(fc, task, setup, index)
    rows, prompt_index = selection.rows, selection.prompt_index
    model_dir = resolve_model(
        fc.model, fc.model_seed, task, who, gguf_file=fc.gguf_file, dtype=fc.model_dtype
    )
    on_task = prompt_index is not None
    log_ref = exact_log_ref(model_dir, task, who) if (on_task and exact_needed) else None
    if fc.trainer in ("exact", "tabular"):
        if task is None or not on_task:
            raise ValueError(
                f"{who}: trainer {fc.trainer!r} needs a task and the task's own prompts"
            )
        if log_ref is None:
            log_ref = exact_log_ref(model_dir, task, who)
        follower = _exact_follower(fc, task, log_ref, setup.context_column)
        return FollowerBundle(fc, follower, rows, log_ref, prompt_index)
    from datasets import Dataset

    from align_cbrl.followers.trl_followers import GRPOFollower, RLOOFollower

    tcfg = follower_trl_config(fc, task, who)
    columns = sorted({k for r in rows for k in r})
    ds = Dataset.from_dict({k: [r.get(k) for r in rows] for k in columns})
    cls = GRPOFollower if fc.trainer == "grpo" else RLOOFollower
    try:
        trl_follower = cls(model_dir, ds, None, tcfg, name=fc.name)
    except ValueError as err:  # TRL settings that only the trainer kind can check
        raise ValueError(f"{who}: {err}") from err
    return FollowerBundle(fc, trl_follower, rows, log_ref, prompt_index)


def build_leader_from_config(
    config: HPGDConfig, setup: RewardSetup, contexts: Sequence[Any]
) -> Leader:
    """The leader from ``leader.spec`` (or ``leader.init``), with ``component_names`` and, for
    weight leaders, the ``contexts`` filled in."""
    lc = config.leader
    if lc.init is not None:
        leader = load_leader(lc.init)
        if leader.component_names != setup.component_names:
            raise ValueError(
                f"leader.init {lc.init!r} has components {leader.component_names}; this run has "
                f"{setup.component_names}"
            )
        return leader
    spec = dict(lc.spec)
    spec.setdefault("type", "weights")
    spec.setdefault("component_names", setup.component_names)
    if spec["component_names"] != setup.component_names:
        raise ValueError(
            f"leader.spec.component_names {spec['component_names']} must equal the reward "
            f"components {setup.component_names}"
        )
    if spec["type"] == "weights" and setup.context_column is not None:
        spec.setdefault("contexts", list(dict.fromkeys(contexts)))
        spec.setdefault("context_column", setup.context_column)
    try:
        return build_leader(spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"leader.spec: {err}") from err


def check_follower_contexts(
    leader: Leader, bundles: Sequence[FollowerBundle], column: str | None
) -> None:
    """Every follower's contexts must be ones the leader has parameters for (a per-context
    leader without a ``default_context``): a follower that shares no context with the leader,
    or has contexts it does not know, is refused here, before training."""
    index = getattr(leader, "context_index", None)
    if column is None or index is None or index.default is not None:
        return
    known = list(index.values)
    for i, b in enumerate(bundles):
        mine = list(dict.fromkeys(r.get(column) for r in b.rows))
        unknown = [c for c in mine if c not in known]
        if not unknown:
            continue
        who = f"followers.{i} ({b.config.name!r})"
        if len(unknown) == len(mine):
            problem = (
                f"shares no context with the leader: its {column!r} values {mine} are none of "
                f"the leader's {known}"
            )
        else:
            problem = f"has {column!r} values {unknown} the leader has no parameters for ({known})"
        raise ValueError(
            f"{who} {problem}; add them to leader.spec.contexts (or set a default_context), or "
            f"restrict the follower with followers.{i}.contexts"
        )


def bilevel_for(leader: Leader, setup: RewardSetup) -> BilevelRewards:
    """The reward pair around ``leader``."""
    return BilevelRewards(leader, setup.follower_mix, setup.leader_mix)
