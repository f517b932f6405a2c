"""The completion groups TRL generated, kept by the callback between leader updates.

:class:`~align_cbrl.trainer.reward_function.HPGDReward` is a plain reward function: it scores a
generation batch and returns ``r_x``. Whoever needs the scored batch (the plugin's
:class:`~align_cbrl.trainer.callback.HPGDCallback`) subscribes a sink to it and receives one
:class:`ScoredBatch` per call; the callback's :class:`GroupBuffer` collects them until the next
leader update and turns them into :class:`~align_cbrl.trainer.estimation.GroupedSamples`
(``G`` groups of ``num_generations`` consecutive completions of one prompt, the layout TRL's
``RepeatSampler`` produces). The buffer is part of the callback's checkpoint, so a run resumed
between two leader updates uses the same groups as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from align_cbrl.trainer.estimation import GroupedSamples

__all__ = ["GroupBuffer", "ScoredBatch"]


@dataclass(frozen=True)
class ScoredBatch:
    """One reward call: texts, the dataset columns TRL passed, component scores ``[B, K]`` and
    the optimiser step TRL was at (``None`` outside a trainer). ``logger`` is TRL's
    ``log_metric`` hook of the call (not saved in checkpoints)."""

    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]]
    scores: Tensor
    step: int | None = None
    logger: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)


class GroupBuffer:
    """Scored batches since the last leader update (owned by the callback)."""

    def __init__(self) -> None:
        self.batches: list[ScoredBatch] = []

    def __call__(self, batch: ScoredBatch) -> None:
        self.add(batch)

    def add(self, batch: ScoredBatch) -> None:
        self.batches.append(batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __bool__(self) -> bool:
        return bool(self.batches)

    def clear(self) -> None:
        self.batches = []

    def take(
        self, group_size: int, beta: float, follower: str, reward_weight: float = 1.0
    ) -> GroupedSamples:
        """Everything buffered, as groups of ``group_size`` completions (checks that each group
        shares its prompt); empties the buffer."""
        if not self.batches:
            raise RuntimeError("the group buffer is empty")
        items, self.batches = self.batches, []
        cols = sorted(set.intersection(*(set(b.columns) for b in items)))
        return GroupedSamples(
            follower=follower,
            beta=beta,
            group_size=group_size,
            prompts=[p for b in items for p in b.prompts],
            completions=[c for b in items for c in b.completions],
            columns={k: [v for b in items for v in b.columns[k]] for k in cols},
            scores=torch.cat([b.scores for b in items]),
            reward_weight=reward_weight,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors (the score matrices, for safetensors) and a JSON document (texts, columns).
        Column values must be JSON-serialisable (dataset columns are)."""
        tensors = {f"scores.{i}": b.scores.detach().clone() for i, b in enumerate(self.batches)}
        doc = {
            "batches": [
                {
                    "prompts": b.prompts,
                    "completions": b.completions,
                    "columns": b.columns,
                    "step": b.step,
                }
                for b in self.batches
            ]
        }
        json.dumps(doc)  # fail here, before anything is written, if a column is not JSON
        return tensors, doc

    def load_state_dict(self, tensors: dict[str, Tensor], doc: dict[str, Any]) -> None:
        self.batches = [
            ScoredBatch(
                prompts=list(b["prompts"]),
                completions=list(b["completions"]),
                columns={k: list(v) for k, v in b["columns"].items()},
                scores=tensors[f"scores.{i}"],
                step=b["step"],
            )
            for i, b in enumerate(doc["batches"])
        ]
