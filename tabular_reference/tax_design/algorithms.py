"""Leader algorithms for the tax design: one outer loop, five gradient sources (``docs/theory.md``
§2, §6, §8).

``run_batch`` trains ``R`` independent planners at once (one per seed / temperature) with SGD
ascent and global-norm clipping (:func:`tabular_reference.common.optim.sgd_ascent`). At every
outer iteration ``t = 1..iters`` the households are re-solved exactly (warm-started Newton), the
exact welfare ``F(theta_t)`` is recorded, and the gradient comes from

``hpgd``        sampled trajectories only, :func:`hypergradient.hypergradient`; default form ``"mc"``
                with ``leader_q="table"`` and the leader critic learned from past trajectories
                (:class:`critic.MonteCarloCritic`) and the Rao-Blackwellised follower
                transition term (``follower_transition="expected"``);
``naive``       the same trajectories, direct terms only (``d rbar`` and the planner's own
                ``d log P`` term), i.e. the follower's response ignored (``form="naive"``);
``zero_order``  Gaussian smoothing ``(F_xi(theta + u_t z) - F_xi(theta)) z / u_t`` with exact
                values, one sampled household type per iteration, ``u_t = c / t`` (an oracle
                baseline: it reads values HPGD has to estimate);
``zero_order_sampled``  the published baseline (``docs/theory.md`` §7): the same smoothing with
                Monte-Carlo welfare (:func:`sampled_welfare`) from ``zo_episodes`` sampled
                200-step episodes at ``theta + u_t z`` and as many at ``theta`` (default 300 +
                300, i.e. 60,000 steps per value), both household types in equal shares,
                ``u_t = 50 / t``; the two estimates share their uniforms when ``zo_crn``
                (common random numbers);
``exact``       the exact hypergradient (:func:`hypergradient.exact_hypergradient`; the AMD-like
                reference).

Algorithm names are checked by :func:`align_cbrl.estimators.vocabulary.check_algorithm`; the
household temperature is ``beta`` in the code
(``--lam`` on the command line and ``"lam"`` in results files, the paper's notation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from align_cbrl.estimators.vocabulary import check_algorithm
from align_cbrl.estimators.zero_order import (
    gaussian_smoothing_gradient,
    sample_directions,
    smoothing_radius,
)
from tabular_reference.common.estimator_api import Estimator, resolve
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.estimators import builtin_hpgd, estimate
from tabular_reference.tax_design.hypergradient import (
    FOLLOWER_TRANSITION,
    FORMS,
    LEADER_Q,
    exact_hypergradient,
)
from tabular_reference.tax_design.rewards import asset_welfare, initial_theta, rates, welfare_action
from tabular_reference.tax_design.sampling import (
    balanced_contexts,
    draw_seed,
    rollout,
    sampled_returns,
)
from tabular_reference.tax_design.solver import (
    FollowerSolution,
    check_temperature,
    leader_values,
    soft_policy_iteration,
)

__all__ = [
    "ALGORITHMS",
    "AlgoSettings",
    "History",
    "batch_generator",
    "episodes_from_steps",
    "run_batch",
    "sampled_welfare",
]

ALGORITHMS: tuple[str, ...] = ("hpgd", "zero_order", "zero_order_sampled", "naive", "exact")
ZO_CONSTANTS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)
CRITICS: tuple[str, ...] = ("learned", "exact")


@dataclass(frozen=True)
class AlgoSettings:
    """Hyper-parameters of the outer loop. ``episodes``: sampled 200-step episodes per outer
    iteration and run for HPGD and naive (split equally between the two household types; 300 =
    the published 60,000 steps, 50 = the earlier 10,000); ``zo_episodes``: episodes per value
    estimate of ``zero_order_sampled`` (at ``theta + u_t z`` and again at ``theta``);
    ``zo_crn``: common random numbers for those two estimates; ``form``/``leader_q``: the
    core estimator's options; ``critic``: the leader value table of ``leader_q="table"``
    (``"learned"``: :class:`critic.MonteCarloCritic` from past
    trajectories; ``"exact"``: the model's ``Vbar``); ``zo_c``: the
    zero-order constant ``c`` of ``u_t = c / t``; ``tol``: household solver tolerance;
    ``estimator``: another estimator in HPGD's place (a registered name or
    ``"module:function"``, ``docs/validate.md``; ``form`` / ``leader_q`` / ``critic`` are then
    unused)."""

    lr: float = 0.01
    max_norm: float = 1.0
    episodes: int = 300
    zo_episodes: int = 300
    zo_crn: bool = False
    form: str = "mc"
    leader_q: str = "table"
    critic: str = "learned"
    follower_transition: str = "expected"
    zo_c: float = 50.0
    tol: float = 1e-11
    estimator: str | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not self.max_norm > 0:
            raise ValueError(f"clipping norm must be > 0, got {self.max_norm}")
        if not isinstance(self.episodes, int) or self.episodes < 2 or self.episodes % 2:
            raise ValueError(
                f"episodes per iteration must be an even integer >= 2 (one share per household "
                f"type), got {self.episodes!r}"
            )
        if not isinstance(self.zo_episodes, int) or self.zo_episodes < 2 or self.zo_episodes % 2:
            raise ValueError(
                f"zero-order episodes per value estimate must be an even integer >= 2 (one share "
                f"per household type), got {self.zo_episodes!r}"
            )
        if self.form not in FORMS:
            raise ValueError(f"unknown HPGD form {self.form!r}; choose one of {', '.join(FORMS)}")
        if self.follower_transition not in FOLLOWER_TRANSITION:
            raise ValueError(
                f"unknown follower_transition {self.follower_transition!r}; choose one of "
                f"{', '.join(FOLLOWER_TRANSITION)}"
            )
        if self.leader_q not in LEADER_Q:
            raise ValueError(
                f"unknown leader_q {self.leader_q!r}; choose one of {', '.join(LEADER_Q)}"
            )
        if self.critic not in CRITICS:
            raise ValueError(f"unknown critic {self.critic!r}; choose one of {', '.join(CRITICS)}")
        if not self.zo_c > 0:
            raise ValueError(f"zero-order constant c must be > 0, got {self.zo_c}")
        if not 0 < self.tol < 1e-3:
            raise ValueError(f"solver tolerance must lie in (0, 1e-3), got {self.tol}")
        if self.estimator is not None:
            resolve(self.estimator, "tax-design")


@dataclass(frozen=True)
class History:
    """Per-iteration record of a batch of runs: ``welfare[iters+1, R]`` (exact ``F`` at
    ``theta_0 .. theta_iters``), ``rates[iters+1, R, 4]`` (``tau, v_1, v_2, v_3``),
    ``grad_norm[iters, R]`` (unclipped estimate norms), ``theta[R, 4]`` final logits and the
    Newton steps spent."""

    welfare: np.ndarray
    rates: np.ndarray
    grad_norm: np.ndarray
    theta: np.ndarray
    newton_steps: int


def episodes_from_steps(steps: int, episode_length: int, what: str, n_types: int = 2) -> int:
    """Number of ``episode_length``-step episodes in a budget of ``steps`` environment steps;
    the budget must hold at least one episode per household type and split into whole episodes,
    an equal number per type."""
    if not isinstance(steps, int) or steps < episode_length:
        raise ValueError(
            f"{what}: a budget of {steps!r} steps is below one {episode_length}-step episode"
        )
    unit = episode_length * n_types
    if steps % unit:
        raise ValueError(
            f"{what}: the budget ({steps} steps) must be a multiple of {unit} (whole "
            f"{episode_length}-step episodes, as many for each of the {n_types} household types)"
        )
    return steps // episode_length


def hpgd_estimator(algo: str, settings: AlgoSettings) -> Estimator:
    """The estimator of ``hpgd`` / ``naive``: ``settings.estimator`` if given, else the
    built-in of ``settings.form`` / ``leader_q`` / ``critic`` (``form="naive"`` for ``naive``)."""
    if settings.estimator is not None and algo == "hpgd":
        return resolve(settings.estimator, "tax-design")
    form = "naive" if algo == "naive" else settings.form
    return builtin_hpgd(form, settings.leader_q, settings.critic)


def sampled_welfare(
    econ: Economy,
    theta: Tensor,
    follower: FollowerSolution,
    contexts: Tensor,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> Tensor:
    """Monte-Carlo welfare ``[R]``: the mean over ``contexts.shape[1]`` sampled episodes (household
    type ``contexts[r, n]``, initial bin ``~ mu0``) of the discounted welfare
    ``sum_t gamma^t W(s_t, a_t)`` (``docs/theory.md`` §6; ``F_xi = mu0^T Vbar_xi`` in expectation, up to
    the ``gamma^T`` truncation of the episode). The sampler's seed is ``seed`` or, if omitted,
    drawn from ``generator``; equal seeds give common random numbers."""
    if seed is None:
        if generator is None:
            raise ValueError("sampled_welfare needs a generator or a seed")
        seed = draw_seed(generator)
    x = rates(theta.detach())
    w_action = welfare_action(econ, x[:, 0], x[:, 1:])
    returns = sampled_returns(
        econ, follower, asset_welfare(econ), w_action, contexts, econ.config.episode_length, seed
    )
    return returns.mean(-1)


# The random streams were keyed by the algorithms' earlier hyphenated names; keying by those
# keeps every published tax-design result (docs/tax_design.json) reproducible bit for bit.
_STREAM_NAME = {"zero_order": "zero-order", "zero_order_sampled": "zero-order-sampled"}


def batch_generator(algo: str, seeds: Sequence[int], betas: Sequence[float]) -> torch.Generator:
    """One generator per batch, seeded from ``sha256("tax-design|algo|seeds|temperatures")``."""
    name = _STREAM_NAME.get(algo, algo)
    key = f"tax-design|{name}|{list(seeds)}|{[round(float(v), 12) for v in betas]}"
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


class _Gradients:
    """The gradient of each algorithm for one batch of runs, sharing its random stream, the
    stratified household types and (HPGD) the learned leader critic."""

    def __init__(
        self, econ: Economy, algo: str, beta: Tensor, settings: AlgoSettings, gen: torch.Generator
    ) -> None:
        R = beta.shape[0]
        self.econ, self.algo, self.beta, self.settings, self.gen = econ, algo, beta, settings, gen
        self.contexts = balanced_contexts(econ, R, settings.episodes)
        self.zo_contexts = balanced_contexts(econ, R, settings.zo_episodes)
        self.newton = 0  # Newton steps of the extra solves (perturbed / exact)
        # the estimator of hpgd / naive (estimators.builtin_hpgd of the settings, or
        # settings.estimator), its memory across iterations (the learned critic) and generator
        self.estimator = hpgd_estimator(algo, settings)
        self.memory: dict = {}
        self.est_rng = np.random.default_rng([gen.initial_seed(), 13])

    def __call__(
        self, theta: Tensor, sol: FollowerSolution, Vbar: Tensor, F_ctx: Tensor, t: int
    ) -> Tensor:
        if self.algo in ("hpgd", "naive"):
            return self._hpgd(theta, sol, Vbar)
        if self.algo == "exact":
            _, grad, _ = exact_hypergradient(
                self.econ, theta, self.beta, V0=sol.V, tol=self.settings.tol
            )
            return grad
        return self._zero_order(theta, sol, F_ctx, t)

    def _hpgd(self, theta: Tensor, sol: FollowerSolution, Vbar: Tensor) -> Tensor:
        econ = self.econ
        L = econ.config.episode_length
        traj = rollout(econ, sol, rates(theta)[:, 0], self.contexts, L, self.gen)
        return estimate(
            self.estimator,
            econ,
            theta,
            self.beta,
            sol,
            traj,
            memory=self.memory,
            rng=self.est_rng,
            follower_transition=self.settings.follower_transition,
            leader_values=Vbar if self.estimator.oracle else None,
        )

    def _zero_order(self, theta: Tensor, sol: FollowerSolution, F_ctx: Tensor, t: int) -> Tensor:
        econ, st, gen = self.econ, self.settings, self.gen
        R = theta.shape[0]
        z = sample_directions(gen, (R, 4))
        u = smoothing_radius(st.zo_c, t + 1)
        if self.algo == "zero_order":
            ctx = torch.multinomial(econ.context_probs, R, replacement=True, generator=gen)
        theta_p = theta + u * z
        sol_p = soft_policy_iteration(econ, theta_p, self.beta, V0=sol.V, tol=st.tol)
        self.newton += sol_p.iters
        if self.algo == "zero_order":
            xp = rates(theta_p)
            Vbar_p = leader_values(econ, sol_p.P, sol_p.pi_f, sol_p.log_pa, xp[:, 0], xp[:, 1:])
            rows = torch.arange(R)
            f_plus, f_zero = (Vbar_p @ econ.mu0)[rows, ctx], F_ctx[rows, ctx]
        else:  # zero-order-sampled
            seed_p = draw_seed(gen)
            seed_0 = seed_p if st.zo_crn else draw_seed(gen)
            f_plus = sampled_welfare(econ, theta_p, sol_p, self.zo_contexts, seed=seed_p)
            f_zero = sampled_welfare(econ, theta, sol, self.zo_contexts, seed=seed_0)
        return gaussian_smoothing_gradient(f_plus, f_zero, z, u)


def run_batch(
    econ: Economy,
    algo: str,
    betas: Sequence[float],
    seeds: Sequence[int],
    iters: int,
    settings: AlgoSettings,
    *,
    progress: bool = True,
    desc: str | None = None,
    position: int | None = None,
) -> History:
    """Train ``len(seeds)`` planners (run ``r`` with household temperature ``betas[r]``) for
    ``iters`` outer iterations with algorithm ``algo``."""
    algo = check_algorithm(algo, ALGORITHMS)
    if len(betas) != len(seeds) or not seeds:
        raise ValueError(f"need one temperature per seed, got {len(betas)} and {len(seeds)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    R = len(seeds)
    beta = check_temperature(torch.tensor(list(betas), dtype=torch.float64), R)
    gradient = _Gradients(econ, algo, beta, settings, batch_generator(algo, seeds, betas))
    theta = initial_theta(R)
    welfare = np.zeros((iters + 1, R))
    rate_hist = np.zeros((iters + 1, R, 4))
    grad_norm = np.zeros((iters, R))
    V_warm: Tensor | None = None
    newton = 0
    bar = tqdm(
        range(iters + 1), desc=desc or algo, disable=not progress, position=position, leave=True
    )
    for t in bar:
        sol = soft_policy_iteration(econ, theta, beta, V0=V_warm, tol=settings.tol)
        V_warm = sol.V
        newton += sol.iters
        x = rates(theta)
        Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
        F_ctx = Vbar @ econ.mu0
        welfare[t] = (F_ctx @ econ.context_probs).numpy()
        rate_hist[t] = x.numpy()
        if t == iters:
            break
        grad = gradient(theta, sol, Vbar, F_ctx, t)
        grad_norm[t] = torch.linalg.vector_norm(grad, dim=1).numpy()
        theta = sgd_ascent(theta, grad, settings.lr, settings.max_norm)
        if progress and t % 20 == 0:
            bar.set_postfix(F=f"{welfare[t].mean():.3f}")
    bar.close()
    return History(welfare, rate_hist, grad_norm, theta.numpy(), newton + gradient.newton)
