"""Zero-order (Gaussian smoothing) gradient estimates, the paper's derivative-free baseline.

For a smoothing radius ``u > 0`` and ``z ~ N(0, I)``,

    g = (F(x + u z) - F(x)) z / u                                                          (ZO)

is an unbiased estimate of the gradient of the Gaussian-smoothed objective
``F_u(x) = E_z F(x + u z)`` (Nesterov & Spokoiny, 2017), which tends to ``dF/dx`` as ``u -> 0``.
The paper uses a decaying radius ``u_t = c / t`` at outer iteration ``t`` (``docs/theory.md`` §8).
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_smoothing_gradient", "sample_directions", "smoothing_radius"]


def sample_directions(
    generator: torch.Generator,
    shape: tuple[int, ...] | torch.Size,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Standard normal perturbation directions ``z ~ N(0, I)`` of the given shape."""
    return torch.randn(tuple(shape), generator=generator, dtype=dtype)


def smoothing_radius(c: float, t: int | torch.Tensor) -> float | torch.Tensor:
    """The decaying radius ``u_t = c / t`` (``t`` counts from 1)."""
    if c <= 0:
        raise ValueError(f"perturbation constant c must be > 0, got {c}")
    if isinstance(t, int) and t < 1:
        raise ValueError(f"outer iteration t counts from 1, got {t}")
    return c / t


def gaussian_smoothing_gradient(
    f_plus: torch.Tensor,
    f_base: torch.Tensor,
    z: torch.Tensor,
    u: float | torch.Tensor,
) -> torch.Tensor:
    """Estimate (ZO), batched: ``f_plus, f_base`` are ``[...]``, ``z`` is ``[..., P]``."""
    u_t = torch.as_tensor(u, dtype=z.dtype, device=z.device)
    if bool((u_t <= 0).any()):
        raise ValueError(f"smoothing radius u must be > 0, got {u}")
    if f_plus.shape != f_base.shape or z.shape[:-1] != f_plus.shape:
        raise ValueError(
            f"shapes disagree: f_plus {tuple(f_plus.shape)}, f_base {tuple(f_base.shape)}, "
            f"z {tuple(z.shape)} (expected z = [..., P] with ... = f's shape)"
        )
    scale = (f_plus - f_base) / u_t
    return scale[..., None] * z
