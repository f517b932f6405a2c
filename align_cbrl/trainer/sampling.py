"""Step 2 of the orchestrated outer iteration: ``G_f`` prompts x ``N`` completions per follower.

:class:`GroupSampler` draws each follower's prompt rows from one generator shared by all
processes (seeded with the run's ``seed``, checkpointed by the trainer): with the task's
``prompt_probs`` restricted to the follower's prompts when it trains on an enumerable task's
prompts (so the sampled objective is the logged exact one), uniformly otherwise. Every rank
draws all ranks' prompts and keeps its own slice, so the generator's state stays
rank-independent while ranks see different prompts. The follower samples ``N`` completions of
each prompt (one group) and the reward components score them once, as
:class:`~align_cbrl.trainer.estimation.GroupedSamples`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from align_cbrl.distributed import LeaderSync
from align_cbrl.reference.tiny_language import TinyLanguageTask
from align_cbrl.rewards.base import RewardComponent, score_components
from align_cbrl.trainer.builders import FollowerBundle
from align_cbrl.trainer.estimation import GroupedSamples

__all__ = ["GroupSampler", "task_prompt_probs"]


def task_prompt_probs(task: TinyLanguageTask | None, b: FollowerBundle) -> torch.Tensor | None:
    """The task's prompt probabilities of follower ``b``'s rows if it trains on the task's
    prompts (all of them or the subset of its ``contexts``) and they are not uniform
    (``None``: draw rows uniformly)."""
    if task is None or b.log_ref is None or b.prompt_index is None:
        return None
    probs = task.prompt_probs[b.prompt_index]
    if bool((probs == probs[0]).all()):
        return None
    return probs


class GroupSampler:
    """Scored completion groups of the followers ``bundles`` (module docstring).

    Args:
        bundles: the built followers with their prompt rows.
        task: the enumerable task (prompt probabilities), or ``None``.
        components: the reward components that score every completion.
        seed: seeds :attr:`generator`, the prompt draws.
    """

    def __init__(
        self,
        bundles: Sequence[FollowerBundle],
        task: TinyLanguageTask | None,
        components: Sequence[RewardComponent],
        seed: int,
    ) -> None:
        self.bundles = list(bundles)
        self.components = list(components)
        self.generator = torch.Generator().manual_seed(seed)
        self.prompt_probs = [task_prompt_probs(task, b) for b in self.bundles]

    def draw_prompts(self, i: int, count: int) -> torch.Tensor:
        """``count`` row indices of follower ``i``'s dataset from :attr:`generator`: with the
        task's prompt probabilities when set (:func:`task_prompt_probs`), else uniform."""
        probs = self.prompt_probs[i]
        if probs is None:
            return torch.randint(len(self.bundles[i].rows), (count,), generator=self.generator)
        return torch.multinomial(probs, count, replacement=True, generator=self.generator)

    def sample(self, b: FollowerBundle, prompt_idx: list[int], n: int) -> GroupedSamples:
        """``n`` completions of each row ``prompt_idx`` of follower ``b``, scored."""
        rows = [b.rows[i] for i in prompt_idx]
        groups = b.follower.sample([r["prompt"] for r in rows], n)
        prompts = [r["prompt"] for r in rows for _ in range(n)]
        completions = [c for g in groups for c in g]
        keys = sorted({k for r in rows for k in r} - {"prompt"})
        columns = {k: [r.get(k) for r in rows for _ in range(n)] for k in keys}
        scores = score_components(self.components, prompts, completions, columns)
        return GroupedSamples(
            b.config.name,
            b.follower.beta,
            n,
            prompts,
            completions,
            columns,
            scores,
            objective_weight=b.config.weight,
        )

    def sample_groups(
        self, groups: Sequence[int], n: int, sync: LeaderSync
    ) -> list[GroupedSamples]:
        """Each follower ``i``'s ``groups[i]`` groups of ``n`` on this rank: one prompt draw of
        ``groups[i] * world_size`` rows for all ranks, this rank's slice kept."""
        world, rank = sync.world_size, sync.rank
        batches = []
        for i, (b, G) in enumerate(zip(self.bundles, groups, strict=True)):
            idx = self.draw_prompts(i, G * world)[rank * G : (rank + 1) * G]
            batches.append(self.sample(b, idx.tolist(), n))
        return batches

    def state(self) -> tuple[torch.Tensor, list[Any]]:
        """The random state :meth:`sample_groups` consumes: :attr:`generator`'s and every
        follower's (:meth:`~align_cbrl.followers.base.Follower.sampling_state`)."""
        return self.generator.get_state(), [b.follower.sampling_state() for b in self.bundles]

    def set_state(self, state: tuple[torch.Tensor, list[Any]]) -> None:
        """Restore a :meth:`state`: the next :meth:`sample_groups` draws the same prompts with
        the same sampling random numbers."""
        self.generator.set_state(state[0])
        for b, s in zip(self.bundles, state[1], strict=True):
            b.follower.set_sampling_state(s)
