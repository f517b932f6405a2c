"""The tax-design economy as a tabular MDP: configuration, asset grid and action tables.

``docs/theory.md`` §6. Households (followers) hold assets ``a`` in ``[-100, 100]``; each step
they choose hours ``h`` (10 levels ``0, 0.89, ..., 8.01``) and the consumption of three goods
``c_j`` (5 levels ``0, 1.25, ..., 5``): ``10 * 5^3 = 1,250`` joint actions. Assets move as

    a' = clip(a + (1 - tau) w h - sum_j c_j, -100, 100) + noise,   noise ~ N(0, 5^2) truncated   (A)

so the next-asset law depends on the action only through the *flow* ``(1 - tau) w h - sum_j c_j``,
i.e. through the pair (hour level, total-consumption level). There are ``10 x 13 = 130`` such
pairs ("flow groups"); this module fixes their indexing, independent of ``tau``.

Discretisation (documented choice). Assets are represented by ``n_bins`` equal bins over
``[-100, 100]`` (default 101, width 1.98); a household in bin ``s`` holds the bin centre ``a_s``.
An odd count puts a bin centre exactly at 0, where the utility ``u(a)`` has its kink and the
initial law ``N(0, 2)`` puts its mass. The width (1.98) is well below the noise std (5), so a
next-asset law spans ~10 bins per 2 std and the bin probabilities of (A) -- integrated exactly
with the normal CDF -- move smoothly with sub-bin changes of the flow (hour steps are
``0.89 (1 - tau)``, consumption steps 1.25). Kernel-integrated transitions keep ``F`` smooth in
``tau`` except on the measure-zero set where some ``a_s + flow`` crosses +-100 (the clip in (A)).

Action index: ``a = hour_index * 125 + 25 * i1 + 5 * i2 + i3`` with ``c_j = 1.25 * i_j``.
Context index ``k``: household type with Cobb-Douglas preferences ``alphas[k]``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_ALPHAS", "Economy", "EconomyConfig"]

_DT = torch.float64
DEFAULT_ALPHAS: tuple[tuple[float, float, float], ...] = ((0.6, 0.3, 0.1), (0.1, 0.7, 0.2))


def _default_hours() -> tuple[float, ...]:
    return tuple(round(0.89 * i, 10) for i in range(10))


@dataclass(frozen=True)
class EconomyConfig:
    """Every constant of the economy (``docs/theory.md`` §6); defaults are the paper's values.

    ``init_std`` is the std of the initial asset law: the paper writes ``N(0, 2)``, read as
    variance 2 (std ``sqrt(2)``); the law is discretised by integrating over the bins and
    truncating to the asset range.
    """

    n_bins: int = 101
    asset_low: float = -100.0
    asset_high: float = 100.0
    noise_std: float = 5.0
    wage: float = 1.0
    hours: tuple[float, ...] = field(default_factory=_default_hours)
    consumption_levels: tuple[float, ...] = (0.0, 1.25, 2.5, 3.75, 5.0)
    prices: tuple[float, float, float] = (1.0, 1.0, 1.0)
    alphas: tuple[tuple[float, float, float], ...] = DEFAULT_ALPHAS
    context_probs: tuple[float, ...] = (0.5, 0.5)
    hours_cost: float = 0.1
    gamma: float = 0.9
    init_mean: float = 0.0
    init_std: float = math.sqrt(2.0)
    episode_length: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.n_bins, int) or self.n_bins < 11 or self.n_bins % 2 == 0:
            raise ValueError(
                f"n_bins must be an odd integer >= 11 (so that a bin centre sits at a = 0), "
                f"got {self.n_bins!r}"
            )
        if not self.asset_low < 0.0 < self.asset_high:
            raise ValueError(
                f"asset range must satisfy asset_low < 0 < asset_high, got "
                f"[{self.asset_low}, {self.asset_high}]"
            )
        if not self.noise_std > 0.0:
            raise ValueError(f"noise_std must be > 0, got {self.noise_std}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must lie in (0, 1), got {self.gamma}")
        if not self.init_std > 0.0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if not isinstance(self.episode_length, int) or self.episode_length < 1:
            raise ValueError(f"episode_length must be an integer >= 1, got {self.episode_length}")
        if len(self.hours) < 1 or any(h < 0 for h in self.hours):
            raise ValueError(f"hours must be a non-empty tuple of values >= 0, got {self.hours}")
        levels = self.consumption_levels
        if len(levels) < 2 or any(b - a <= 0 for a, b in itertools.pairwise(levels)) or levels[0]:
            raise ValueError(
                "consumption_levels must start at 0 and be equally spaced and increasing, "
                f"got {levels}"
            )
        step = levels[1] - levels[0]
        if any(abs(lv - i * step) > 1e-9 for i, lv in enumerate(levels)):
            raise ValueError(f"consumption_levels must be equally spaced, got {levels}")
        if len(self.prices) != 3 or any(p <= 0 for p in self.prices):
            raise ValueError(f"prices must be three values > 0, got {self.prices}")
        if len(self.alphas) < 1 or any(len(a) != 3 or any(x <= 0 for x in a) for a in self.alphas):
            raise ValueError(
                f"alphas must be a list of (alpha_1, alpha_2, alpha_3) with entries > 0, "
                f"got {self.alphas}"
            )
        if len(self.context_probs) != len(self.alphas) or any(p < 0 for p in self.context_probs):
            raise ValueError(
                f"context_probs must give one probability >= 0 per household type "
                f"({len(self.alphas)}), got {self.context_probs}"
            )
        if abs(sum(self.context_probs) - 1.0) > 1e-9:
            raise ValueError(f"context_probs must sum to 1, got {self.context_probs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Economy:
    """Fixed (parameter-independent) tables of the economy, as float64 / long tensors.

    Attributes (``S`` bins, ``A`` actions, ``F`` flow groups, ``G`` max group size, ``C``
    contexts): ``edges[S+1]``, ``centres[S]``, ``width``; ``hours_a[A]``, ``cons_a[A, 3]``,
    ``flow_a[A]`` (flow group of each action); ``hours_f[F]``, ``total_cons_f[F]``;
    ``group_index[F, G]`` / ``group_mask[F, G]`` (actions of each group, padded);
    ``alphas[C, 3]``, ``context_probs[C]``; ``cd_base[C, A] = prod_j (c_j / p_j)^alpha_j``;
    ``mu0[S]`` (initial law).
    """

    def __init__(self, config: EconomyConfig | None = None) -> None:
        self.config = cfg = config or EconomyConfig()
        S = cfg.n_bins
        self.n_states = S
        self.gamma = cfg.gamma
        self.edges = torch.linspace(cfg.asset_low, cfg.asset_high, S + 1, dtype=_DT)
        self.width = (cfg.asset_high - cfg.asset_low) / S
        self.centres = cfg.asset_low + (torch.arange(S, dtype=_DT) + 0.5) * self.width

        hours = torch.tensor(cfg.hours, dtype=_DT)
        levels = torch.tensor(cfg.consumption_levels, dtype=_DT)
        n_h, n_c = len(cfg.hours), len(cfg.consumption_levels)
        combos = torch.tensor(list(itertools.product(range(n_c), repeat=3)), dtype=torch.long)
        n_combo = combos.shape[0]
        self.n_actions = n_h * n_combo
        h_idx = torch.arange(n_h).repeat_interleave(n_combo)
        c_idx = combos.repeat(n_h, 1)  # [A, 3] level indices
        self.hours_a = hours[h_idx]
        self.cons_a = levels[c_idx]
        n_tot = 3 * (n_c - 1) + 1  # total consumption levels 0 .. 3 (n_c - 1)
        tot_idx = c_idx.sum(dim=1)
        self.flow_a = h_idx * n_tot + tot_idx
        self.n_flows = n_h * n_tot
        self.hours_f = hours.repeat_interleave(n_tot)
        self.total_cons_f = (levels[1] - levels[0]) * torch.arange(n_tot, dtype=_DT).repeat(n_h)

        counts = torch.bincount(self.flow_a, minlength=self.n_flows)
        G = int(counts.max())
        order = torch.argsort(self.flow_a, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(self.n_actions) - starts[self.flow_a[order]]
        self.group_index = torch.zeros(self.n_flows, G, dtype=torch.long)
        self.group_mask = torch.zeros(self.n_flows, G, dtype=torch.bool)
        self.group_index[self.flow_a[order], pos] = order
        self.group_mask[self.flow_a[order], pos] = True
        self.group_size = G
        self.position_a = torch.empty(self.n_actions, dtype=torch.long)
        self.position_a[order] = pos

        self.alphas = torch.tensor(cfg.alphas, dtype=_DT)
        self.n_contexts = self.alphas.shape[0]
        self.context_probs = torch.tensor(cfg.context_probs, dtype=_DT)
        prices = torch.tensor(cfg.prices, dtype=_DT)
        ratio = self.cons_a / prices  # [A, 3]
        # prod_j ratio_j^alpha_j, exactly 0 when any c_j = 0 (alpha_j > 0).
        self.cd_base = torch.where(
            (ratio > 0).all(dim=1)[None, :],
            torch.exp((self.alphas[:, None, :] * torch.log(ratio.clamp_min(1e-300))[None]).sum(-1)),
            torch.zeros((), dtype=_DT),
        )
        self.mu0 = self._initial_law()

    def _initial_law(self) -> Tensor:
        """Initial asset law ``N(init_mean, init_std^2)`` integrated over the bins, truncated."""
        cfg = self.config
        z = (self.edges - cfg.init_mean) / cfg.init_std
        cdf = torch.special.ndtr(z)
        mass = cdf[1:] - cdf[:-1]
        return mass / mass.sum()

    def describe(self) -> dict[str, Any]:
        return {
            "n_states": self.n_states,
            "n_actions": self.n_actions,
            "n_flows": self.n_flows,
            "n_contexts": self.n_contexts,
            "bin_width": self.width,
        }
