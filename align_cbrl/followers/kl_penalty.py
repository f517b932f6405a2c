"""The KL term of ``kl_mode="reward"`` for GRPO followers, as a second TRL reward function.

For every completion ``y`` of prompt ``p`` it returns (``docs/theory.md §3``)

    ``-beta * (log pi_theta(y|p) - log pi_ref(y|p))``,  ``log pi(y|p) = sum_t log pi(y_t|p, y_<t)``,

summed over the completion tokens TRL sampled (its ``completion_ids``: cut after the first EOS,
EOS included; a truncated completion has no EOS). TRL sums it with the task reward, so the
advantages are built from ``r' = r - beta * log(pi_theta / pi_ref)``: the REINFORCE gradient of
``E[r']`` is the gradient of ``E[r] - beta * KL(pi || pi_ref)``, whose maximiser is exactly
``pi* ∝ pi_ref exp(r / beta)``; at ``pi*`` every completion has the same ``r' = beta log Z(p)``,
so the group-centred advantages vanish there. RLOO applies this penalty natively.

The log-probabilities come from TRL's own code for the loss (:func:`trl_compat.token_logprobs`,
sampling temperature applied), for the current policy and a frozen reference model loaded from
the model directory (:func:`trl_compat.build_reference_model`), without gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from align_cbrl.followers.trl_compat import token_logprobs

__all__ = ["KL_PENALTY_NAME", "KLPenalty"]

KL_PENALTY_NAME = "kl_penalty"
"""Name under which the penalty is logged (``rewards/kl_penalty/mean``)."""


class KLPenalty:
    """The reward function ``-beta * log(pi_theta / pi_ref)`` (module docstring). ``trainer``
    and ``ref_model`` are set once the TRL trainer exists; the trainer stashes the prompt ids
    it generated from (``_acbrl_prompt_ids``, :class:`trl_compat.ChunkedTrainer`)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.__name__ = KL_PENALTY_NAME
        self.trainer: Any = None
        self.ref_model: Any = None
        self.last_stats: torch.Tensor | None = None  # [sum of token log-ratios, tokens]

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        prompt_ids = getattr(self.trainer, "_acbrl_prompt_ids", None)
        if completion_ids is None or prompt_ids is None or len(prompt_ids) != len(completion_ids):
            raise RuntimeError(
                "kl_mode='reward' needs the prompt and completion token ids of the batch TRL "
                "sampled; they are missing (custom rollout or tool calls are not supported in this "
                "mode: use kl_mode='loss')"
            )
        if any(len(c) == 0 for c in completion_ids):
            raise RuntimeError("TRL passed an empty completion; cannot score it")
        logp, logp_ref, mask = token_logprobs(
            self.trainer, self.ref_model, prompt_ids, completion_ids
        )
        log_ratio = ((logp - logp_ref) * mask).sum(dim=1)
        self.last_stats = torch.stack([log_ratio.sum(), mask.sum().to(log_ratio.dtype)])
        return (-self.beta * log_ratio).tolist()
