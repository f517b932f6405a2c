"""The enumerable "tiny language" task: exact ``pi*``, ``F``, ``dF/dx`` for LM followers
(``docs/theory.md`` §3, exact answers on an enumerable task).

**Completions.** Words ``vocab`` (default ``["a", "b", "c", "d"]``, token ids ``0..V-1``) and an
end-of-sequence token ``EOS`` (id ``V``). The completion set is exactly what a causal LM over
``vocab + [EOS]`` produces with ``max_new_tokens = L`` (``max_words``) and
``min_new_tokens = min_words`` (default 1):

* every word sequence of length ``k`` with ``min_words <= k <= L - 1``, followed by ``EOS``
  (token ids ``(w_1, ..., w_k, EOS)``), and
* every word sequence of length ``L``, truncated (token ids ``(w_1, ..., w_L)``, no EOS).

So there are ``sum_{k=min_words}^{L} V^k`` completions (84 for V=4, L=3, min_words=1), enumerated
by length, then lexicographically in token ids. Their text is ``" ".join(words)`` (EOS is not
part of the text), so text-based reward components score them. The generating LM's vocabulary
must be exactly ``vocab + [EOS]`` (pad = EOS), or other ids suppressed (``suppress_tokens``).

**Prompts / contexts.** A few prompts (texts over the same vocabulary) with a ``category``
column; the follower's base reward and the leader's objective conflict differently per category
(defaults: the follower likes long completions with many "a"; the leader wants short ones for
``concise``, many "b" for ``b_topic`` and no "d" for ``no_d``).

**Reference policy.** ``log_ref[P, Y]``: any finite table of log-probabilities over the
enumerated completions per prompt (rows are renormalised, so unnormalised scores are fine); by
default a fixed seeded random softmax. Plug in the exact log-probs of a real tiny LM with
:meth:`TinyLanguageTask.with_log_ref`.

**Exact quantities** (``beta`` scalar or one per prompt):
``pi*_x(y|p) = softmax_y(log pi_ref(y|p) + r_x(p, y) / beta)`` (:func:`exact_policy`),
``F(x) = sum_p P(p) sum_y pi*_x(y|p) rbar_x(p, y)`` (:func:`exact_objective`),
``dF/dx`` by autograd through both (:func:`exact_gradient`), the bilevel optimum by gradient
ascent (:func:`optimize_exact`), and a sampler of ``N`` completions per prompt from ``pi*_x``
(:func:`sample_completions`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.func import functional_call

from align_cbrl.estimators.temperature import check_beta
from align_cbrl.leaders.base import Leader
from align_cbrl.leaders.weights import WeightLeader
from align_cbrl.objective import BilevelRewards
from align_cbrl.rewards.base import score_components
from align_cbrl.rewards.registry import build_components

__all__ = [
    "EOS",
    "ExactOptimum",
    "TinyLanguageConfig",
    "TinyLanguageTask",
    "ascend_exact",
    "enumerate_completions",
    "exact_gradient",
    "exact_objective",
    "exact_policy",
    "optimize_exact",
    "reward_jacobians",
    "sample_completions",
    "sample_prompts",
]

EOS = "<eos>"
MAX_COMPLETIONS = 100_000


def _default_prompts() -> list[dict[str, Any]]:
    return [
        {"prompt": "a b", "category": "concise"},
        {"prompt": "c a", "category": "concise"},
        {"prompt": "b c", "category": "b_topic"},
        {"prompt": "d a", "category": "no_d"},
    ]


def _default_components() -> list[dict[str, Any]]:
    return [
        {"type": "length", "name": "n_words", "unit": "words"},
        {"type": "keyword", "name": "count_a", "keywords": ["a"]},
        {"type": "keyword", "name": "count_b", "keywords": ["b"]},
        {"type": "keyword", "name": "count_d", "keywords": ["d"]},
        {"type": "format", "name": "starts_with_c", "pattern": r"c(\s\S+)*"},
    ]


@dataclass
class TinyLanguageConfig:
    """Configuration of the tiny-language task (all fields YAML-friendly).

    ``follower`` / ``leader`` are :class:`~align_cbrl.rewards.mix.MixConfig` mappings over the
    ``components``; ``prompt_probs`` default to uniform; ``ref_scale`` is the std of the
    random reference logits drawn with ``ref_seed``."""

    vocab: list[str] = field(default_factory=lambda: ["a", "b", "c", "d"])
    max_words: int = 3
    min_words: int = 1
    prompts: list[dict[str, Any]] = field(default_factory=_default_prompts)
    prompt_probs: list[float] | None = None
    context_column: str = "category"
    components: list[dict[str, Any]] = field(default_factory=_default_components)
    follower: dict[str, Any] = field(
        default_factory=lambda: {"weights": {"n_words": 0.5, "count_a": 0.5}}
    )
    leader: dict[str, Any] = field(
        default_factory=lambda: {
            "weights": {},
            "by_context": {
                "concise": {"n_words": -1.0},
                "b_topic": {"count_b": 1.0},
                "no_d": {"count_d": -1.0, "starts_with_c": 0.5},
            },
        }
    )
    ref_seed: int = 0
    ref_scale: float = 1.0

    @classmethod
    def from_yaml(cls, path: str | Path) -> TinyLanguageConfig:
        """Load from YAML (``yaml.safe_load``); any subset of the fields, e.g. a reward config
        file with ``components`` / ``follower`` / ``leader`` (configs/rewards/tiny_language.yaml)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{str(path)!r} is not valid YAML: {err}") from err
        known = sorted(f.name for f in fields(cls))
        if isinstance(data, dict) and set(data) <= set(known):
            return cls(**data)
        if isinstance(data, dict):
            extra = sorted(set(data) - set(known))
            raise ValueError(f"{str(path)!r}: unknown field(s) {extra}; known: {known}")
        raise ValueError(f"{str(path)!r} must contain a mapping of TinyLanguageConfig fields")


def enumerate_completions(
    vocab_size: int, max_words: int, min_words: int = 1
) -> list[tuple[int, ...]]:
    """Token-id tuples of the completion set (module docstring), EOS id = ``vocab_size``."""
    if vocab_size < 1 or max_words < 1 or not 0 <= min_words <= max_words:
        raise ValueError(
            f"need vocab_size >= 1 and 0 <= min_words <= max_words >= 1, got {vocab_size}, "
            f"{min_words}, {max_words}"
        )
    total = sum(vocab_size**k for k in range(min_words, max_words + 1))
    if total > MAX_COMPLETIONS:
        raise ValueError(
            f"{total} completions is too many to enumerate (limit {MAX_COMPLETIONS}); "
            f"reduce the vocabulary or max_words"
        )
    out: list[tuple[int, ...]] = []
    for k in range(min_words, max_words + 1):
        for words in itertools.product(range(vocab_size), repeat=k):
            out.append(words + ((vocab_size,) if k < max_words else ()))
    return out


class TinyLanguageTask:
    """Enumerated prompts x completions with fixed component scores ``[P, Y, K]``."""

    def __init__(self, config: TinyLanguageConfig | None = None, log_ref: Tensor | None = None):
        cfg = config or TinyLanguageConfig()
        self.config = cfg
        if len(set(cfg.vocab)) != len(cfg.vocab) or any(
            (not w) or any(ch.isspace() for ch in w) or w == EOS for w in cfg.vocab
        ):
            raise ValueError(
                f"vocab must be distinct non-empty words without spaces, got {cfg.vocab}"
            )
        self.vocab = list(cfg.vocab)
        self.eos_id = len(self.vocab)
        self.tokens = enumerate_completions(len(self.vocab), cfg.max_words, cfg.min_words)
        self.texts = [
            " ".join(self.vocab[t] for t in toks if t != self.eos_id) for toks in self.tokens
        ]
        self._index_by_tokens = {t: i for i, t in enumerate(self.tokens)}
        self._index_by_text = {t: i for i, t in enumerate(self.texts)}
        if not cfg.prompts:
            raise ValueError("give at least one prompt")
        col = cfg.context_column
        for i, p in enumerate(cfg.prompts):
            if not isinstance(p, Mapping) or "prompt" not in p or col not in p:
                raise ValueError(
                    f"prompts[{i}] must be a mapping with 'prompt' and {col!r}, got {p!r}"
                )
        self.prompts = [str(p["prompt"]) for p in cfg.prompts]
        self.contexts = [p[col] for p in cfg.prompts]
        self.context_values = list(dict.fromkeys(self.contexts))
        P = len(self.prompts)
        self.prompt_probs = self._check_probs(
            torch.full((P,), 1.0 / P, dtype=torch.float64)
            if cfg.prompt_probs is None
            else cfg.prompt_probs
        )
        self.components = build_components(cfg.components)
        self.component_names = [c.name for c in self.components]
        Y = len(self.tokens)
        flat_p = [p for p in self.prompts for _ in range(Y)]
        flat_y = self.texts * P
        flat_c = {col: [c for c in self.contexts for _ in range(Y)]}
        self.scores = score_components(self.components, flat_p, flat_y, flat_c).reshape(P, Y, -1)
        if log_ref is None:
            g = torch.Generator().manual_seed(cfg.ref_seed)
            log_ref = cfg.ref_scale * torch.randn(P, Y, generator=g, dtype=torch.float64)
        self.log_ref = self._check_log_ref(log_ref)

    # --- sizes and lookups ---------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def num_completions(self) -> int:
        return len(self.tokens)

    def _check_log_ref(self, log_ref: Tensor) -> Tensor:
        t = torch.as_tensor(log_ref, dtype=torch.float64).detach()
        if t.shape != (self.num_prompts, self.num_completions):
            raise ValueError(
                f"log_ref must be [P, Y] = [{self.num_prompts}, {self.num_completions}] (prompts x "
                f"enumerated completions, see .tokens / .texts), got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            p, y = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise ValueError(
                f"log_ref has a non-finite entry at prompt {p}, completion {y} ({self.texts[y]!r})"
            )
        return torch.log_softmax(t, dim=-1)

    def _check_probs(self, probs: Tensor | Sequence[float]) -> Tensor:
        t = torch.as_tensor(probs, dtype=torch.float64).detach()
        P = self.num_prompts
        if (
            t.shape != (P,)
            or not bool(((t >= 0) & torch.isfinite(t)).all())
            or abs(float(t.sum()) - 1) > 1e-9
        ):
            raise ValueError(
                f"prompt_probs must be {P} non-negative numbers summing to 1, got {t.tolist()}"
            )
        return t

    def with_log_ref(self, log_ref: Tensor) -> TinyLanguageTask:
        """A copy of the task with another reference policy table ``[P, Y]``."""
        new = copy.copy(self)
        new.log_ref = self._check_log_ref(log_ref)
        return new

    def with_prompt_probs(self, probs: Tensor | Sequence[float]) -> TinyLanguageTask:
        """A copy of the task with another context distribution ``P(p)`` (``[P]``, summing to 1;
        zeros allowed: a follower that never sees those prompts)."""
        new = copy.copy(self)
        new.prompt_probs = self._check_probs(probs)
        return new

    def index_of_tokens(self, token_ids: Sequence[int]) -> int:
        """Index of a generated completion given its token ids (EOS included if generated;
        tokens after the first EOS are ignored, as padding)."""
        toks = [int(t) for t in token_ids]
        if self.eos_id in toks:
            toks = toks[: toks.index(self.eos_id) + 1]
        key = tuple(toks)
        if key not in self._index_by_tokens:
            raise KeyError(
                f"token ids {key} are not in the completion set (vocab {self.vocab}, EOS id {self.eos_id})"
            )
        return self._index_by_tokens[key]

    def index_of_text(self, text: str) -> int:
        key = " ".join(text.split())
        if key not in self._index_by_text:
            raise KeyError(f"completion text {text!r} is not in the completion set")
        return self._index_by_text[key]

    def dataset_rows(self) -> list[dict[str, Any]]:
        """The prompts as dataset rows ``{"prompt": ..., <context column>: ...}``."""
        return [dict(p) for p in self.config.prompts]

    # --- leader / rewards ----------------------------------------------------------------
    def make_leader(self, **kwargs: Any) -> WeightLeader:
        """A per-context :class:`WeightLeader` over this task's components and categories."""
        kwargs.setdefault("contexts", self.context_values)
        kwargs.setdefault("context_column", self.config.context_column)
        return WeightLeader(self.component_names, **kwargs)

    def bilevel(self, leader: Leader | None = None) -> BilevelRewards:
        """The task's follower / leader reward pair around ``leader`` (default: zero weights)."""
        leader = self.make_leader() if leader is None else leader
        if leader.component_names != self.component_names:
            raise ValueError(
                f"leader components {leader.component_names} != task components {self.component_names}"
            )
        return BilevelRewards(leader, self.config.follower, self.config.leader)

    def rewards(
        self, bilevel: BilevelRewards, params: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(r, rbar)``, each ``[P, Y]``, differentiable in the leader's parameters (or in
        ``params``, a ``functional_call`` override of ``bilevel``'s parameters)."""
        P, Y, K = self.scores.shape
        flat_ctx = [c for c in self.contexts for _ in range(Y)]
        args = (self.scores.reshape(P * Y, K), flat_ctx)
        out = bilevel(*args) if params is None else functional_call(bilevel, dict(params), args)
        return out.r.reshape(P, Y), out.rbar.reshape(P, Y)


def _beta_column(beta: float | Tensor, P: int) -> Tensor:
    return check_beta(beta, P)[:, None]


def _policy_and_leader_reward(
    task: TinyLanguageTask,
    bilevel: BilevelRewards,
    beta: float | Tensor,
    params: Mapping[str, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """``(pi*_x, rbar_x)``, each ``[P, Y]``, differentiable in ``x``."""
    r, rbar = task.rewards(bilevel, params)
    pi = torch.softmax(task.log_ref + r / _beta_column(beta, task.num_prompts), dim=-1)
    return pi, rbar


def exact_policy(
    task: TinyLanguageTask,
    bilevel: BilevelRewards,
    beta: float | Tensor,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``pi*_x[P, Y] = softmax(log pi_ref + r_x / beta)`` (differentiable in ``x``)."""
    return _policy_and_leader_reward(task, bilevel, beta, params)[0]


def exact_objective(
    task: TinyLanguageTask,
    bilevel: BilevelRewards,
    beta: float | Tensor,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``F(x) = sum_p P(p) sum_y pi*_x(y|p) rbar_x(p, y)`` (scalar, differentiable)."""
    pi, rbar = _policy_and_leader_reward(task, bilevel, beta, params)
    return (task.prompt_probs * (pi * rbar).sum(-1)).sum()


def exact_gradient(task: TinyLanguageTask, bilevel: BilevelRewards, beta: float | Tensor) -> Tensor:
    """Exact ``dF/dx`` as a flat vector (leader parameter order), by autograd through
    :func:`exact_objective` (independent of the HPGD formula)."""
    x = bilevel.leader.flat_parameters().requires_grad_(True)
    F = exact_objective(task, bilevel, beta, bilevel.leader.unflatten(x, "leader."))
    (g,) = torch.autograd.grad(F, x)
    return g


def reward_jacobians(
    task: TinyLanguageTask, bilevel: BilevelRewards
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(r[P, Y], rbar[P, Y], d_r[P, Y, D], d_rbar[P, Y, D])``: rewards and their exact
    per-completion gradients in the flat leader parameters (for vectorised estimator checks)."""
    x0 = bilevel.leader.flat_parameters()

    def f(x: Tensor) -> tuple[Tensor, Tensor]:
        return task.rewards(bilevel, bilevel.leader.unflatten(x, "leader."))

    d_r, d_rbar = torch.autograd.functional.jacobian(f, x0, vectorize=True)
    r, rbar = f(x0)
    return r.detach(), rbar.detach(), d_r, d_rbar


def sample_prompts(task: TinyLanguageTask, num_groups: int, generator: torch.Generator) -> Tensor:
    """``num_groups`` prompt indices drawn i.i.d. from ``P(p)`` (LongTensor ``[G]``)."""
    return torch.multinomial(task.prompt_probs, num_groups, replacement=True, generator=generator)


def sample_completions(
    task: TinyLanguageTask,
    bilevel: BilevelRewards,
    beta: float | Tensor,
    n: int,
    generator: torch.Generator,
    prompt_idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Simulated exact follower: ``N = n`` completions per group drawn i.i.d. from ``pi*_x``.

    ``prompt_idx`` (``[G]``) selects the prompt of each group (default: every prompt once).
    Returns ``(prompt_idx[G], completion_idx[G, N])``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if prompt_idx is None:
        prompt_idx = torch.arange(task.num_prompts)
    with torch.no_grad():
        pi = exact_policy(task, bilevel, beta)
    comp = torch.multinomial(pi[prompt_idx], n, replacement=True, generator=generator)
    return prompt_idx, comp


@dataclass
class ExactOptimum:
    """Result of :func:`optimize_exact`: the optimised reward pair (a copy), ``x*`` (flat),
    ``F(x*)``, the ``F`` history (initial value, then one entry per step) and the final
    gradient norm."""

    bilevel: BilevelRewards
    x: Tensor
    F: float
    history: list[float]
    grad_norm: float


def optimize_exact(
    task: TinyLanguageTask,
    bilevel: BilevelRewards,
    beta: float | Tensor,
    steps: int = 500,
    lr: float = 1.0,
    tol: float = 1e-8,
) -> ExactOptimum:
    """Exact bilevel optimisation of :func:`exact_objective` by gradient ascent with the exact
    gradient (:func:`ascend_exact`). Finds a local optimum; ``bilevel`` is not modified."""

    def objective(best: BilevelRewards, params: Mapping[str, Tensor]) -> Tensor:
        return exact_objective(task, best, beta, params)

    return ascend_exact(bilevel, objective, steps=steps, lr=lr, tol=tol)


def ascend_exact(
    bilevel: BilevelRewards,
    objective: Callable[[BilevelRewards, Mapping[str, Tensor]], Tensor],
    steps: int = 500,
    lr: float = 1.0,
    tol: float = 1e-8,
) -> ExactOptimum:
    """Gradient ascent on an exact objective ``F = objective(bilevel, params)`` (``params`` a
    ``functional_call`` override of the leader's parameters, prefixed ``leader.``):
    ``x <- x + eta_t dF/dx``, where ``eta_t <= lr`` is found by backtracking (halve until the
    Armijo condition ``F(x + eta g) >= F(x) + 1e-4 eta ||g||^2`` holds; the next step starts
    from ``2 eta_t``), so ``F`` never decreases. Finds a local optimum; stops once
    ``||dF/dx|| <= tol`` or after ``steps`` steps. ``bilevel`` is not modified (the objective
    receives a copy)."""
    if steps < 0 or not lr > 0 or not tol >= 0:
        raise ValueError(f"need steps >= 0, lr > 0 and tol >= 0, got {steps}, {lr}, {tol}")
    best = copy.deepcopy(bilevel)
    leader = best.leader

    def value_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
        xg = x.clone().requires_grad_(True)
        F = objective(best, leader.unflatten(xg, "leader."))
        (g,) = torch.autograd.grad(F, xg)
        return F.detach(), g

    x = leader.flat_parameters()
    F, g = value_and_grad(x)
    history = [float(F)]
    eta = lr
    for step in range(steps):
        if not (torch.isfinite(F) and torch.isfinite(g).all()):
            raise FloatingPointError(
                f"exact bilevel ascent: non-finite F or gradient at step {step}"
            )
        gg = float(g @ g)
        if gg**0.5 <= tol:
            break
        while True:
            x_new = x + eta * g
            F_new, g_new = value_and_grad(x_new)
            if torch.isfinite(F_new) and float(F_new) >= float(F) + 1e-4 * eta * gg:
                break
            eta *= 0.5
            if eta < 1e-16:
                raise FloatingPointError(
                    f"exact bilevel ascent: no ascent step found at step {step} (||g||={gg**0.5:.3e})"
                )
        x, F, g = x_new, F_new, g_new
        history.append(float(F))
        eta = min(2 * eta, lr)
    torch.nn.utils.vector_to_parameters(x, leader.parameters())
    return ExactOptimum(bilevel=best, x=x, F=float(F), history=history, grad_norm=float(g.norm()))
