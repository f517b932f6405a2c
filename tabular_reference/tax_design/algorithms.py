"""Leader algorithms for the tax design: one outer loop, four gradient sources (notes, sections 2-4).

``run_batch`` trains ``R`` independent planners at once (one per seed / temperature) with SGD
ascent and global-norm clipping (:func:`tabular_reference.common.optim.sgd_ascent`). At every
outer iteration ``t = 1..iters`` the households are re-solved exactly (warm-started Newton), the
exact welfare ``F(theta_t)`` is recorded, and the gradient comes from

``hpgd``        sampled trajectories only, :func:`hpgd.hpgd_gradient`; default form ``"mc"``
                with ``leader_q="table"`` and the leader critic learned from past trajectories
                (:class:`critic.MonteCarloCritic`) and the Rao-Blackwellised follower
                transition term (``follower_transition="expected"``);
``naive``       the same trajectories, direct terms only (``d rbar`` and the planner's own
                ``d log P`` term), i.e. the follower's response ignored (``form="naive"``);
``zero-order``  Gaussian smoothing ``(F_xi(theta + u_t z) - F_xi(theta)) z / u_t`` with exact
                values, one sampled household type per iteration, ``u_t = c / t`` (an oracle
                baseline: it reads values HPGD has to estimate);
``zero-order-sampled``  the published baseline (notes, section 5): the same smoothing with
                Monte-Carlo welfare (:func:`sampled_welfare`) from ``zo_episodes`` sampled
                200-step episodes at ``theta + u_t z`` and as many at ``theta`` (default 300 +
                300, i.e. 60,000 steps per value), both household types in equal shares,
                ``u_t = 50 / t``; the two estimates share their uniforms when ``zo_crn``
                (common random numbers);
``exact``       the exact hypergradient (:func:`solver.welfare_and_grad`; the AMD-like reference).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from align_cbrl.estimators.zero_order import (
    gaussian_smoothing_gradient,
    sample_directions,
    smoothing_radius,
)
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.tax_design.critic import MonteCarloCritic
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hpgd import (
    FOLLOWER_TRANSITION,
    FORMS,
    LEADER_Q,
    flat_batch,
    hpgd_gradient,
    leader_rewards,
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
    check_lam,
    leader_values,
    soft_policy_iteration,
    welfare_and_grad,
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

ALGORITHMS: tuple[str, ...] = ("hpgd", "zero-order", "zero-order-sampled", "naive", "exact")
ZO_CONSTANTS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)
CRITICS: tuple[str, ...] = ("learned", "exact")


@dataclass(frozen=True)
class AlgoSettings:
    """Hyper-parameters of the outer loop. ``episodes``: sampled 200-step episodes per outer
    iteration and run for HPGD and naive (split equally between the two household types; 300 =
    the published 60,000 steps, 50 = the earlier 10,000); ``zo_episodes``: episodes per value
    estimate of ``zero-order-sampled`` (at ``theta + u_t z`` and again at ``theta``);
    ``zo_crn``: common random numbers for those two estimates; ``form``/``leader_q``: the
    core estimator's options; ``critic``: the leader value table of ``leader_q="table"``
    (``"learned"``: :class:`critic.MonteCarloCritic` from past
    trajectories; ``"exact"``: the model's ``Vbar``); ``zo_c``: the
    zero-order constant ``c`` of ``u_t = c / t``; ``tol``: household solver tolerance."""

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


def _critic_inputs(
    econ: Economy, theta: Tensor, b: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        rewards = leader_rewards(econ, theta, b)
    return b["joint_state"], rewards, b["episode_start"]


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
    ``sum_t gamma^t W(s_t, a_t)`` (notes, section 4; ``F_xi = mu0^T Vbar_xi`` in expectation, up to
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


def batch_generator(algo: str, seeds: Sequence[int], lams: Sequence[float]) -> torch.Generator:
    """One generator per batch, seeded from (algorithm, seeds, temperatures)."""
    key = f"tax-design|{algo}|{list(seeds)}|{[round(float(v), 12) for v in lams]}"
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


def run_batch(
    econ: Economy,
    algo: str,
    lams: Sequence[float],
    seeds: Sequence[int],
    iters: int,
    settings: AlgoSettings,
    *,
    progress: bool = True,
    desc: str | None = None,
    position: int | None = None,
) -> History:
    """Train ``len(seeds)`` planners (run ``r`` with temperature ``lams[r]``) for ``iters`` outer
    iterations with algorithm ``algo``."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    if len(lams) != len(seeds) or not seeds:
        raise ValueError(f"need one temperature per seed, got {len(lams)} and {len(seeds)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    R = len(seeds)
    lam = check_lam(torch.tensor(list(lams), dtype=torch.float64), R)
    gen = batch_generator(algo, seeds, lams)
    theta = initial_theta(R)
    welfare = np.zeros((iters + 1, R))
    rate_hist = np.zeros((iters + 1, R, 4))
    grad_norm = np.zeros((iters, R))
    V_warm: Tensor | None = None
    newton = 0
    contexts = balanced_contexts(econ, R, settings.episodes)
    zo_contexts = balanced_contexts(econ, R, settings.zo_episodes)
    learned: MonteCarloCritic | None = None
    rows = torch.arange(R)
    bar = tqdm(
        range(iters + 1), desc=desc or algo, disable=not progress, position=position, leave=True
    )
    for t in bar:
        sol = soft_policy_iteration(econ, theta, lam, V0=V_warm, tol=settings.tol)
        V_warm = sol.V
        newton += sol.iters
        x = rates(theta)
        Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
        F_ctx = Vbar @ econ.mu0
        welfare[t] = (F_ctx @ econ.context_probs).numpy()
        rate_hist[t] = x.numpy()
        if t == iters:
            break
        if algo in ("hpgd", "naive"):
            traj = rollout(econ, sol, x[:, 0], contexts, econ.config.episode_length, gen)
            batch = flat_batch(econ, traj)
            form = "naive" if algo == "naive" else settings.form
            critic_v = Vbar
            uses_critic = form != "naive" and settings.leader_q != "crossfit"
            if uses_critic and settings.critic == "learned":
                if learned is None:  # first iteration: bootstrap from this batch
                    learned = MonteCarloCritic(econ, R)
                    learned.update(*_critic_inputs(econ, theta, batch))
                critic_v = learned.values()
            grad, _ = hpgd_gradient(
                econ,
                theta,
                lam,
                sol,
                traj,
                form=form,
                leader_q=settings.leader_q,
                critic=critic_v,
                follower_transition=settings.follower_transition,
                batch=batch,
            )
            if learned is not None:
                learned.update(*_critic_inputs(econ, theta, batch))
        elif algo == "zero-order":
            z = sample_directions(gen, (R, 4))
            u = smoothing_radius(settings.zo_c, t + 1)
            ctx = torch.multinomial(econ.context_probs, R, replacement=True, generator=gen)
            theta_p = theta + u * z
            sol_p = soft_policy_iteration(econ, theta_p, lam, V0=sol.V, tol=settings.tol)
            newton += sol_p.iters
            xp = rates(theta_p)
            Vbar_p = leader_values(econ, sol_p.P, sol_p.pi_f, sol_p.log_pa, xp[:, 0], xp[:, 1:])
            f_plus, f_zero = (Vbar_p @ econ.mu0)[rows, ctx], F_ctx[rows, ctx]
            grad = gaussian_smoothing_gradient(f_plus, f_zero, z, u)
        elif algo == "zero-order-sampled":
            z = sample_directions(gen, (R, 4))
            u = smoothing_radius(settings.zo_c, t + 1)
            theta_p = theta + u * z
            sol_p = soft_policy_iteration(econ, theta_p, lam, V0=sol.V, tol=settings.tol)
            newton += sol_p.iters
            seed_p = draw_seed(gen)
            seed_0 = seed_p if settings.zo_crn else draw_seed(gen)
            f_plus = sampled_welfare(econ, theta_p, sol_p, zo_contexts, seed=seed_p)
            f_zero = sampled_welfare(econ, theta, sol, zo_contexts, seed=seed_0)
            grad = gaussian_smoothing_gradient(f_plus, f_zero, z, u)
        else:
            _, grad, _ = welfare_and_grad(econ, theta, lam, V0=sol.V, tol=settings.tol)
        grad_norm[t] = torch.linalg.vector_norm(grad, dim=1).numpy()
        theta = sgd_ascent(theta, grad, settings.lr, settings.max_norm)
        if progress and t % 20 == 0:
            bar.set_postfix(F=f"{welfare[t].mean():.3f}")
    bar.close()
    return History(welfare, rate_hist, grad_norm, theta.numpy(), newton)
