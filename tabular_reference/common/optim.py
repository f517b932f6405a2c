"""The paper's leader optimiser: plain SGD (ascent) with global-norm clipping, batched over runs.

``x <- x + lr * g * min(1, max_norm / ||g||_2)``, with one norm per run (row).
"""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def clip_global_norm(grad: Array, max_norm: float) -> Array:
    """Scale each row ``grad[r]`` so that its L2 norm is at most ``max_norm`` (rows: runs)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if isinstance(grad, torch.Tensor):
        norms = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        scale = torch.clamp(max_norm / torch.clamp(norms, min=1e-300), max=1.0)
        return grad * scale
    norms = np.linalg.norm(grad, axis=-1, keepdims=True)
    scale = np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))
    return grad * scale


def sgd_ascent(
    params: Array, grad: Array, lr: float | Array, max_norm: float | None = 1.0
) -> Array:
    """One ascent step ``params + lr * clip(grad)``; ``lr`` is a float or one value per run."""
    if not (bool(np.all(np.isfinite(np.asarray(grad))))):
        raise ValueError(
            "non-finite leader gradient (NaN/inf); lower the learning rate or check inputs"
        )
    g = grad if max_norm is None else clip_global_norm(grad, max_norm)
    if isinstance(lr, float | int):
        return params + lr * g
    lr_col = lr[:, None] if lr.ndim == 1 else lr
    return params + lr_col * g
