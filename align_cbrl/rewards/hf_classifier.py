"""Reward component from a local Hugging Face sequence-classification model (a reward model).

Loads ``AutoModelForSequenceClassification`` and its tokenizer from a local directory
(:func:`align_cbrl.rewards.model_dirs.resolve_model_dir`), with ``trust_remote_code=False``
unless the spec turns it on, and scores (prompt, completion) pairs in batches under
``torch.no_grad()``. The score of a sample is the logit of output ``label_index`` (for a
one-output reward model, its only logit), as used for ``r_x`` / ``rbar`` (``docs/theory.md §3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align_cbrl.rewards.base import Contexts
from align_cbrl.rewards.model_dirs import PretrainedModelReward
from align_cbrl.utils.signatures import forwards_to

__all__ = ["SequenceClassifierReward"]

_INPUTS = ("pair", "concat", "completion")


class SequenceClassifierReward(PretrainedModelReward):
    """Score = ``scale * logits[:, label_index]`` of a local sequence-classification model.

    Args:
        name: component name.
        model: model directory, or the name of an installed package that ships one.
        label_index: which output logit is the reward (default 0).
        inputs: ``"pair"`` tokenises (prompt, completion) as a text pair, ``"concat"`` scores
            ``prompt + completion`` as one text, ``"completion"`` scores the completion alone.
        batch_size, max_length, device: batching, truncation length and torch device.
        trust_remote_code: passed to ``from_pretrained``; off unless you enable it.
    """

    kind = "hf_classifier"

    @forwards_to(PretrainedModelReward.__init__, skip=5)
    def __init__(
        self,
        name: str,
        model: str | Path,
        label_index: int = 0,
        inputs: str = "pair",
        batch_size: int = 16,
        max_length: int = 512,
        **loading: Any,
    ) -> None:
        # loading: device, scale, trust_remote_code, none_value (PretrainedModelReward's)
        from transformers import AutoModelForSequenceClassification

        if inputs not in _INPUTS:
            raise ValueError(
                f"hf_classifier component {name!r}: inputs must be one of {_INPUTS}, got {inputs!r}"
            )
        if batch_size < 1:
            raise ValueError(f"hf_classifier component {name!r}: batch_size must be >= 1")
        super().__init__(
            name,
            model,
            f"reward model of component {name!r}",
            AutoModelForSequenceClassification,
            batch_size=batch_size,
            max_length=max_length,
            **loading,
        )
        n_out = int(self.model.config.num_labels)
        if not 0 <= label_index < n_out:
            raise ValueError(
                f"hf_classifier component {name!r}: label_index {label_index} out of range for a "
                f"model with {n_out} outputs"
            )
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"hf_classifier component {name!r}: tokenizer in {self.model_dir} has neither "
                    f"a pad nor an eos token; set pad_token when saving it"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index, self.inputs = label_index, inputs

    def _encode(self, prompts: list[str], completions: list[str]) -> dict[str, Tensor]:
        if self.inputs == "pair":
            return self.tokenize(prompts, completions)
        if self.inputs == "concat":
            return self.tokenize([p + c for p, c in zip(prompts, completions)])
        return self.tokenize(completions)

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], contexts: Contexts) -> Tensor:
        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self._encode(
                prompts[s : s + self.batch_size], completions[s : s + self.batch_size]
            )
            logits = self.model(**enc).logits
            out.append(logits[:, self.label_index].to(torch.float64).cpu())
        if not out:
            return torch.zeros(0, dtype=torch.float64)
        return self.scale * torch.cat(out)
