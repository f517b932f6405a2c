"""The estimator interface of the tabular harnesses (Four-Rooms, tax design; ``docs/validate.md``).

An estimator is a function ``estimate(batch, model) -> hypergradient``:

* ``batch`` (:class:`Batch`): what the leader observed in one outer iteration, ``R`` independent
  runs x ``T`` steps (episodes concatenated, starts marked): states, actions, the follower's and
  the leader's rewards, contexts, and the per-step gradients with respect to the leader's
  parameters ``x`` of the follower's (pseudo-)reward, of the leader's reward and (where ``x``
  moves the dynamics) of ``log P_x`` (:class:`StepGradients`, ``docs/theory.md`` §4);
* ``model`` (:class:`Model`): the constants (``gamma``, the follower temperature ``beta``, index
  bounds), the follower's policy (which the leader observes act; the BC-HG code reads it), a
  per-job ``memory`` dict for estimators that carry state across iterations (critics), a
  seeded generator, and the harness's own ``handles`` (legitimate ones and oracles, documented
  per harness).

It returns either the hypergradient, an array ``[R, P]`` (one estimate of ``dF/dx`` per run,
``P`` leader parameters), or per-step weights
(:class:`align_cbrl.estimators.trajectory.HPGDWeights`, ``g = sum_t follower_t d rtilde_t +
leader_t d rbar_t + transition_t d log P_t``) that the harness contracts with its Jacobians.
Runs are independent: a harness may call an estimator on subsets of its runs
(``batch.runs`` names them within the job; index per-run state in ``model.memory`` by it).

Estimators are looked up by name in a per-harness registry (the built-in forms register there,
some with a fused fast path the harness runs instead of the function) or given as
``"package.module:function"`` (:func:`resolve`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from align_cbrl.estimators.trajectory import HPGDWeights
from align_cbrl.utils.imports import import_callable

__all__ = [
    "ENVS",
    "Batch",
    "Estimator",
    "EstimatorError",
    "Model",
    "StepGradients",
    "Term",
    "check_result",
    "register",
    "registered",
    "resolve",
]

ENVS = ("four-rooms", "tax-design")
# (table[R, K, P], index[R, T] (-1: no term at that step), coef[R, T] or None for 1)
Term = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class StepGradients:
    """Per-step gradients ``g[r, t] = d f_t / dx`` (``[R, T, P]``) of a per-step quantity
    ``f_t``, stored as lookups into small tables,
    ``g[r, t] = sum_i coef_i[r, t] * table_i[r, index_i[r, t]]``, built on first use (the
    tables come from analytic Jacobians or forward-mode autodiff)."""

    def __init__(self, build: Callable[[], list[Term]], shape: tuple[int, int, int]) -> None:
        self._build = build
        self._terms: list[Term] | None = None
        self.shape = shape  # (R, T, P)

    def terms(self) -> list[Term]:
        if self._terms is None:
            self._terms = self._build()
        return self._terms

    def contract(self, weights: np.ndarray | torch.Tensor) -> np.ndarray:
        """``sum_t weights[r, t] g[r, t]`` -> ``[R, P]``."""
        R, T, P = self.shape
        w = np.asarray(weights.detach() if isinstance(weights, torch.Tensor) else weights)
        if w.shape != (R, T):
            raise ValueError(f"weights must have shape {(R, T)}, got {w.shape}")
        out = np.zeros((R, P))
        for table, index, coef in self.terms():
            K = table.shape[1]
            wc = w if coef is None else w * coef
            keep = index >= 0
            flat = (np.arange(R)[:, None] * K + index)[keep]
            sums = np.bincount(flat, wc[keep], minlength=R * K).reshape(R, K)
            out += np.einsum("rk,rkp->rp", sums, table)
        return out

    def dense(self, runs: slice | np.ndarray | None = None) -> np.ndarray:
        """The gradients themselves, ``[r, T, P]`` for the selected runs (``R x T x P`` floats:
        select a few runs at a time on long batches)."""
        sel = np.arange(self.shape[0])[slice(None) if runs is None else runs]
        out = np.zeros((len(sel), self.shape[1], self.shape[2]))
        for table, index, coef in self.terms():
            rows = table[sel[:, None], np.maximum(index[sel], 0)]  # [r, T, P]
            scale = (index[sel] >= 0) * (1.0 if coef is None else coef[sel])
            out += rows * scale[..., None]
        return out


@dataclass(frozen=True)
class Batch:
    """One outer iteration's observations, ``[R, T]`` arrays (runs x steps, episodes
    concatenated). ``states`` / ``next_states``: state index (Four-Rooms: the cell; tax design:
    ``type * n_bins + bin``, so different contexts never share a state); ``next_states`` is -1
    where the successor was not observed (the episode's last step). ``follower_grad``: gradient
    of the follower's per-step (pseudo-)reward ``rtilde_t`` (its reward ``r_x(s_t, a_t)``, plus
    ``gamma (K_x V*)(s_t, a_t)`` where ``x`` moves the dynamics, ``docs/theory.md`` §4);
    ``leader_grad``: of ``rbar_x(s_t, a_t)``; ``transition_grad``: of
    ``log P_x(s_{t+1} | s_t, a_t)`` (None where ``x`` does not move the dynamics). ``runs[R]``:
    the rows' run indices within the job."""

    states: np.ndarray
    actions: np.ndarray
    episode_start: np.ndarray
    follower_rewards: np.ndarray
    leader_rewards: np.ndarray
    contexts: np.ndarray
    next_states: np.ndarray
    follower_grad: StepGradients
    leader_grad: StepGradients
    transition_grad: StepGradients | None
    runs: np.ndarray

    @property
    def n_runs(self) -> int:
        return int(self.states.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.states.shape[1])

    def tensor(self, name: str) -> torch.Tensor:
        """Field ``name`` as a torch tensor (shares memory), for the core's estimators."""
        return torch.from_numpy(np.ascontiguousarray(getattr(self, name)))


@dataclass(frozen=True)
class Model:
    """The constants an estimator may use. ``beta[R]``: follower temperature per row;
    ``policy[R, n_states, n_actions]``: the follower's policy ``pi(a|s)`` (observable: the
    leader watches it act); ``n_params``: ``P``; ``max_episode_steps``: the sampler's cut;
    ``n_runs``: runs in the job (size per-run state by it); ``rng``: the job's generator;
    ``memory``: per job, kept across calls (empty at the job's start); ``handles``: the
    harness's objects (documented per harness; the ones marked *oracle* read the exact model,
    which a sample-based estimator must not)."""

    env: str
    gamma: float
    beta: np.ndarray
    n_states: int
    n_actions: int
    n_contexts: int
    n_params: int
    max_episode_steps: int
    policy_source: np.ndarray | Callable[[], np.ndarray] = field(repr=False)
    n_runs: int
    rng: np.random.Generator
    memory: dict[str, Any] = field(default_factory=dict)
    handles: Mapping[str, Any] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def policy(self) -> np.ndarray:
        """``pi(a|s)``, ``[R, n_states, n_actions]`` (built on first use when the harness gave a
        function: the tax design's is 1,250 actions wide)."""
        src = self.policy_source
        if isinstance(src, np.ndarray):
            return src
        if "policy" not in self._cache:
            self._cache["policy"] = src()
        return self._cache["policy"]


class EstimatorError(ValueError):
    """An estimator that cannot be resolved or returned something unusable (one line)."""


@dataclass(frozen=True)
class Estimator:
    """A named estimator: ``fn(batch, model)``; ``fused``: the harness's fast-path key (a
    built-in whose fused kernel computes the same estimate from the same kind of samples);
    ``oracle``: it reads exact-model handles."""

    name: str
    fn: Callable[[Batch, Model], Any]
    fused: Any = None
    oracle: bool = False
    doc: str = ""


_REGISTRY: dict[str, dict[str, Estimator]] = {env: {} for env in ENVS}
# packages that register estimators when imported (looked up on the first name lookup)
_PLUGINS = ("tabular_reference.peers",)
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for name in _PLUGINS:
            importlib.import_module(name)


def register(env: str, estimator: Estimator) -> Estimator:
    """Add ``estimator`` to ``env``'s registry (a later registration of a name replaces it)."""
    if env not in _REGISTRY:
        raise ValueError(f"unknown harness {env!r}; choose one of {', '.join(ENVS)}")
    _REGISTRY[env][estimator.name] = estimator
    return estimator


def registered(env: str) -> dict[str, Estimator]:
    """The registry of ``env`` (name -> :class:`Estimator`)."""
    _load_plugins()
    return dict(_REGISTRY[env])


def resolve(spec: str | Estimator | Callable[[Batch, Model], Any], env: str) -> Estimator:
    """A registered name of ``env``, an ``Estimator``, a function, or
    ``"package.module:function"``; any failure is one :class:`EstimatorError` line that says
    what to fix."""
    if isinstance(spec, Estimator):
        return spec
    if callable(spec):
        name = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', '?')}"
        return Estimator(name, spec)
    if not isinstance(spec, str):
        raise EstimatorError(f"estimator must be a name or 'module:function', got {spec!r}")
    _load_plugins()
    names = _REGISTRY[env]
    if spec in names:
        return names[spec]
    if ":" not in spec:
        raise EstimatorError(
            f"unknown estimator {spec!r} for {env}; choose one of {', '.join(sorted(names))} "
            "or give 'package.module:function'"
        )
    try:
        fn = import_callable(spec)
    except (ImportError, AttributeError, TypeError) as err:
        raise EstimatorError(f"estimator {spec!r}: {err}") from err
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError as err:
        raise EstimatorError(f"estimator {spec!r} must accept (batch, model): {err}") from err
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        pass
    return Estimator(spec, fn)


def check_result(result: Any, n_runs: int, n_params: int, name: str) -> np.ndarray | HPGDWeights:
    """The estimator's return value as ``float64 [R, P]`` or :class:`HPGDWeights`; wrong types,
    shapes and non-finite values are one-line :class:`EstimatorError` s naming the estimator."""
    if isinstance(result, HPGDWeights):
        for part in ("follower", "leader", "transition"):
            w = getattr(result, part)
            if w.ndim != 2 or w.shape[0] != n_runs:
                raise EstimatorError(
                    f"estimator {name!r} returned HPGDWeights.{part} of shape {tuple(w.shape)}; "
                    f"expected [{n_runs}, T] (one weight per sampled step)"
                )
            if not bool(torch.isfinite(torch.as_tensor(w)).all()):
                raise EstimatorError(f"estimator {name!r} returned non-finite {part} weights")
        return result
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().numpy()
    if not isinstance(result, np.ndarray):
        raise EstimatorError(
            f"estimator {name!r} returned {type(result).__name__}; expected an array "
            f"[{n_runs}, {n_params}] (one hypergradient per run) or HPGDWeights"
        )
    if result.shape != (n_runs, n_params):
        raise EstimatorError(
            f"estimator {name!r} returned shape {result.shape}; expected [{n_runs}, {n_params}] "
            "(one hypergradient per run)"
        )
    if not np.isfinite(result).all():
        bad = int(np.argmax(~np.isfinite(result).all(1)))
        raise EstimatorError(f"estimator {name!r} returned NaN/inf (first in run {bad})")
    return result.astype(np.float64, copy=False)
