"""The exact reference of an orchestrated run on an enumerable task (``docs/theory.md §1``, §3):
the built followers as :class:`~align_cbrl.reference.several_followers.ExactFollowerSpec`
(each with its reference model's ``log pi_ref``, ``beta``, context distribution and weight), the
exact combined objective ``F = sum_f w_f F_f`` for the metrics, each follower's exact gap to its
best response (:func:`exact_tracking`), and the bilevel optimum by exact ascent (cached within
the process)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from align_cbrl.objective import BilevelRewards
from align_cbrl.reference.several_followers import (
    ExactFollowerSpec,
    follower_objectives,
    optimize_combined,
    restricted_prompt_probs,
)
from align_cbrl.reference.tiny_language import TinyLanguageTask, exact_policy
from align_cbrl.trainer.builders import FollowerBundle

__all__ = [
    "exact_followers",
    "exact_local_optimum",
    "exact_metrics",
    "exact_tracking",
]

# exact local optima F(x*) already computed in this process: (run identity, x bytes) -> F
_OPTIMA: dict[tuple[str, bytes], float] = {}


def exact_followers(
    task: TinyLanguageTask | None, bundles: Sequence[FollowerBundle]
) -> list[ExactFollowerSpec] | None:
    """The followers as exact references on ``task``; ``None`` without a task or when a
    follower's prompts are not the task's. A follower on a subset of the task's prompts has the
    task's ``P(p)`` restricted to them (:func:`restricted_prompt_probs`)."""
    if task is None or any(b.log_ref is None or b.prompt_index is None for b in bundles):
        return None
    specs = []
    for b in bundles:
        assert b.log_ref is not None and b.prompt_index is not None
        view = task.with_log_ref(b.log_ref)
        if not b.full_task:
            view = view.with_prompt_probs(restricted_prompt_probs(task, b.prompt_index))
        specs.append(ExactFollowerSpec(b.config.name, view, b.follower.beta, b.config.weight))
    return specs


def exact_metrics(
    specs: Sequence[ExactFollowerSpec], bilevel: BilevelRewards, weights: Sequence[float]
) -> dict[str, float]:
    """``<f>/objective_exact`` (each ``F_f``) and ``objective_exact = sum_f w_f F_f`` (``weights``
    normalised)."""
    with torch.no_grad():
        values = [float(F) for F in follower_objectives(specs, bilevel)]
    out = {f"{s.name}/objective_exact": F for s, F in zip(specs, values, strict=True)}
    total = weights[0] * values[0]
    for w, F in zip(weights[1:], values[1:], strict=True):
        total += w * F
    out["objective_exact"] = total
    return out


def _follower_log_policy(task: TinyLanguageTask, bundle: FollowerBundle) -> torch.Tensor | None:
    """``log pi_theta[P, Y]`` of the follower's current policy over all the task's prompts and
    completions: the table of a ``tabular`` follower, the best response of an ``exact`` one, a
    TRL follower's model scored exactly (TRL's default sampling: temperature 1, no top-k);
    ``None`` when it cannot be computed."""
    f = bundle.follower
    if callable(getattr(f, "log_policy", None)):  # tabular
        return f.log_policy()
    if callable(getattr(f, "log_pi_star", None)):  # exact: the best response to its reward
        return None if f.reward_fn is None else f.log_pi_star()
    model, tokenizer = getattr(f, "model", None), getattr(f, "tokenizer", None)
    temperature = getattr(getattr(f, "config", None), "trl", {}).get("temperature", 1.0)
    if model is None or tokenizer is None or temperature != 1.0:
        return None
    from align_cbrl.models import completion_logprobs

    with torch.no_grad():
        return completion_logprobs(model, tokenizer, task.prompts, [list(t) for t in task.tokens])


def exact_tracking(
    task: TinyLanguageTask | None, bundles: Sequence[FollowerBundle], bilevel: BilevelRewards
) -> dict[str, float]:
    """``<f>/kl_to_best_response``: the exact gap of each follower to the best response to the
    reward it trained on (``bilevel``), ``sum_p P_f(p) KL(pi_theta(.|p) || pi*_x(.|p))`` in
    nats (0 for a best-responding follower; :mod:`align_cbrl.trainer.tracking` has the sampled
    diagnostic of both modes). Empty without a task; followers whose policy cannot be scored
    are left out."""
    out: dict[str, float] = {}
    specs = exact_followers(task, bundles)
    if task is None or specs is None:
        return out
    for b, spec in zip(bundles, specs, strict=True):
        log_pi = _follower_log_policy(task, b)
        if log_pi is None:
            continue
        with torch.no_grad():
            log_star = torch.log(exact_policy(spec.task, bilevel, spec.beta))
            kl = (log_pi.exp() * (log_pi - log_star)).sum(-1)
        out[f"{b.config.name}/kl_to_best_response"] = float((spec.task.prompt_probs * kl).sum())
    return out


def exact_local_optimum(
    specs: Sequence[ExactFollowerSpec], bilevel: BilevelRewards, x: torch.Tensor, ident: Any
) -> tuple[float, float]:
    """``(F(x*), seconds)``: the local optimum exact ascent on ``F = sum_f w_f F_f``
    (:func:`optimize_combined`, 3000 steps, ``lr`` 2) reaches from leader parameters ``x``,
    cached per run identity ``ident`` (JSON-able) and ``x`` (then 0 seconds)."""
    x = x.detach().to(torch.float64)
    key = (json.dumps(ident, sort_keys=True, default=str), x.numpy().tobytes())
    if key in _OPTIMA:
        return _OPTIMA[key], 0.0
    t0 = time.perf_counter()
    start = copy.deepcopy(bilevel)
    dtype = start.leader.flat_parameters().dtype
    torch.nn.utils.vector_to_parameters(x.to(dtype), start.leader.parameters())
    _OPTIMA[key] = optimize_combined(specs, start, steps=3000, lr=2.0).F
    return _OPTIMA[key], time.perf_counter() - t0
