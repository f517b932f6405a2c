"""The exact best response on an enumerable task: a follower without follower error.

On a task whose prompts and completions can be listed (``align_cbrl.reference.tiny_language``),
the KL-regularised best response to a reward ``r`` is known in closed form
(``docs/theory.md §3``):

    ``pi*(y|p) ∝ pi_ref(y|p) exp(r(p, y) / beta)``.

:class:`ExactFollower` samples from it, re-evaluating the reward on every completion at each
``sample`` call, so it always best-responds to the current reward; handy to test a leader
without the error of a trained follower (``trainer: exact`` in a run config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from align_cbrl.followers.base import RewardFn, call_reward_function
from align_cbrl.followers.function_follower import FunctionFollower

__all__ = ["ExactFollower"]


class ExactFollower(FunctionFollower):
    """A follower that samples exactly from ``pi*(y|p) ∝ pi_ref(y|p) exp(r(p, y) / beta)``.

    Args:
        prompts, completions: the enumerated prompts and completions.
        log_pi_ref: ``[P, Y]``, ``log_pi_ref[i, j] = log pi_ref(completions[j] | prompts[i])``
            (e.g. from :func:`align_cbrl.models.completion_logprobs`).
        beta: KL temperature (> 0).
        contexts: a column name -> one value per prompt; reaches the reward function as
            kwargs, like a dataset column.
        seed: seed of the private sampling generator (its state is saved by :meth:`save`).
        name: follower name.

    Training is a no-op that counts steps; checkpoints are :class:`FunctionFollower`'s. It
    does not continue training (:attr:`continues_training` is ``False``): every level of the
    multilevel follower schedule would see the same best response, so that schedule refuses it.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        log_pi_ref: torch.Tensor,
        beta: float,
        *,
        contexts: Mapping[str, Sequence[Any]] | None = None,
        seed: int = 0,
        name: str = "exact",
    ) -> None:
        self.prompts = list(prompts)
        self.completions = list(completions)
        self.log_pi_ref = torch.as_tensor(log_pi_ref, dtype=torch.float64)
        if self.log_pi_ref.shape != (len(self.prompts), len(self.completions)):
            raise ValueError(
                f"log_pi_ref has shape {tuple(self.log_pi_ref.shape)}, expected "
                f"[{len(self.prompts)} prompts, {len(self.completions)} completions]"
            )
        self.contexts = {k: list(v) for k, v in (contexts or {}).items()}
        for k, v in self.contexts.items():
            if len(v) != len(self.prompts):
                raise ValueError(
                    f"context column {k!r} has {len(v)} values for {len(self.prompts)} prompts"
                )
        self._index = {p: i for i, p in enumerate(self.prompts)}
        self.generator = torch.Generator().manual_seed(int(seed))
        super().__init__(
            name,
            beta,
            self._sample,
            None,
            state_fn=self._generator_state,
            load_state_fn=self._load_generator_state,
        )

    def log_pi_star(self) -> torch.Tensor:
        """``[P, Y]`` log-probabilities of the best response to the current reward."""
        reward_fn = self.reward_fn
        if reward_fn is None:
            raise RuntimeError(f"follower {self.name!r} has no reward function; set one first")
        rows = []
        for i, p in enumerate(self.prompts):
            kw = {k: [v[i]] * len(self.completions) for k, v in self.contexts.items()}
            r = call_reward_function(reward_fn, [p] * len(self.completions), self.completions, **kw)
            rows.append(torch.tensor(r, dtype=torch.float64))
        return torch.log_softmax(self.log_pi_ref + torch.stack(rows) / self.beta, dim=-1)

    _KIND = "exact best response"  # how sampling errors name this follower

    def _check_request(self, prompts: list[str], gen: Mapping[str, Any]) -> None:
        """Refuse generation settings and prompts outside the enumerated task (one line)."""
        if gen:
            raise ValueError(f"{self._KIND} takes no generation settings, got {dict(gen)}")
        missing = [p for p in prompts if p not in self._index]
        if missing:
            raise ValueError(f"prompts {missing[:5]} are not among the enumerated prompts")

    def _sample(
        self, prompts: list[str], n: int, reward_fn: RewardFn | None = None, **gen: Any
    ) -> list[list[str]]:
        self._check_request(prompts, gen)
        lp = self.log_pi_star()
        out = []
        for p in prompts:
            probs = lp[self._index[p]].exp()
            idx = torch.multinomial(probs, n, replacement=True, generator=self.generator)
            out.append([self.completions[j] for j in idx.tolist()])
        return out

    def sampling_state(self) -> torch.Tensor:
        return self.generator.get_state().clone()

    def set_sampling_state(self, state: Any) -> None:
        self.generator.set_state(state)

    def _generator_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().tolist()}

    def _load_generator_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
