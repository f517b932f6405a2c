"""A follower that *learns* on an enumerable task: a tabular softmax policy trained by exact
mirror-descent steps on its KL-regularised objective (``docs/theory.md`` §3, §9).

Per prompt ``p`` the policy is ``pi_theta(.|p) = softmax(theta[p])`` over the task's enumerated
completions, started at ``pi_ref`` (``theta = log pi_ref``). One training step with step size
``eta`` is mirror ascent (KL proximal step) on ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``:

    log pi_{t+1} = log pi_t + eta (r - beta (log pi_t - log pi_ref)) + const
                 = (1 - eta beta) log pi_t + eta beta (log pi_ref + r / beta) + const      (MD)

so ``log pi_t - log pi* = (1 - eta beta)^t (log pi_0 - log pi*)`` up to per-prompt constants:
for ``0 < eta beta < 2`` the policy converges geometrically to the exact best response
``pi* ∝ pi_ref exp(r / beta)`` (``eta beta = 1`` reaches it in one step). The reward table is
evaluated once per :meth:`train` call (the reward stays fixed during one call, as in an outer
iteration of the leader), so ``train(a); train(b)`` equals ``train(a + b)`` bit for bit.

Sampling is by inverse CDF from the follower's private generator (one uniform per completion),
so restoring :meth:`sampling_state` replays the same uniforms: two policies sampled with the
same state give completions that differ only where their CDFs straddle a uniform (common random
numbers; the coupling of the multilevel estimator, §9.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from align_cbrl.followers.base import RewardFn
from align_cbrl.followers.exact import ExactFollower

__all__ = ["SoftmaxFollower"]


class SoftmaxFollower(ExactFollower):
    """Tabular softmax follower trained by exact mirror-descent steps (module docstring).

    Args:
        prompts, completions, log_pi_ref, beta, contexts, seed, name: as
            :class:`~align_cbrl.followers.exact.ExactFollower`.
        lr: the step size ``eta`` of (MD); ``0 < lr * beta < 2`` (convergence).

    Its checkpoint (``save`` / ``load``) holds the logits and the sampling generator, so a
    resumed follower continues bit-identically. ``log_policy()`` is the current policy ``[P, Y]``.
    """

    _KIND = "the tabular follower"

    def __init__(self, *args: Any, lr: float, name: str = "softmax", **kwargs: Any) -> None:
        # args / kwargs are ExactFollower's (prompts, completions, log_pi_ref, beta; contexts,
        # seed): this follower starts as that one and only adds the step size
        super().__init__(*args, name=name, **kwargs)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            raise ValueError(f"follower {name!r}: lr must be a finite number, got {lr!r}")
        if not 0 < lr * self.beta < 2:
            raise ValueError(
                f"follower {name!r}: need 0 < lr * beta < 2 for the mirror-descent follower to "
                f"converge, got lr={lr}, beta={self.beta}; lower lr (lr * beta = 1 is one-step exact)"
            )
        self.lr = float(lr)
        self.logits = torch.log_softmax(self.log_pi_ref.clone(), dim=-1)
        self._train_fn = self._train
        self._continues = True

    def log_policy(self) -> torch.Tensor:
        """``[P, Y]`` log-probabilities of the current policy."""
        return torch.log_softmax(self.logits, dim=-1)

    def _train(self, steps: int, reward_fn: RewardFn | None = None) -> dict[str, Any]:
        del reward_fn  # log_pi_star() reads the current reward function
        target = self.log_pi_star()  # log pi_ref + r / beta, normalised per prompt
        a = self.lr * self.beta
        logits = self.logits
        for _ in range(steps):
            logits = torch.log_softmax((1.0 - a) * logits + a * target, dim=-1)
        self.logits = logits
        kl = (logits.exp() * (logits - target)).sum(-1).mean()
        return {"kl": float(kl)}  # mean KL(pi_t || pi*) over prompts after the chunk

    def _sample(
        self, prompts: list[str], n: int, reward_fn: RewardFn | None = None, **gen: Any
    ) -> list[list[str]]:
        self._check_request(prompts, gen)
        cdf = self.log_policy().exp().cumsum(-1)
        out = []
        for p in prompts:
            row = cdf[self._index[p]]
            u = torch.rand(n, generator=self.generator, dtype=torch.float64) * row[-1]
            idx = torch.searchsorted(row, u, right=True).clamp_(max=row.numel() - 1)
            out.append([self.completions[j] for j in idx.tolist()])
        return out

    def _generator_state(self) -> dict[str, Any]:
        return {**super()._generator_state(), "logits": self.logits.tolist()}

    def _load_generator_state(self, state: Mapping[str, Any]) -> None:
        super()._load_generator_state(state)
        logits = torch.tensor(state["logits"], dtype=torch.float64)
        if logits.shape != self.logits.shape:
            raise ValueError(
                f"follower {self.name!r}: checkpoint logits {tuple(logits.shape)} do not match "
                f"{tuple(self.logits.shape)} (prompts x completions)"
            )
        self.logits = logits
