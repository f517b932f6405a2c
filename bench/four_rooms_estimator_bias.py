"""Diagnose the HPGD trajectory estimator on Four-Rooms at a fixed leader parameter x.

Compares, for each goal, the mean of N independent estimates (10,000 steps each, 5 x 2,000)
with the exact gradient dF_xi/dpen (adjoint, validated against finite differences):

* ``mc traj``   -- ``hpgd_weights(form="mc", leader_q="trajectory")`` (Ghat from the same future);
* ``mc xfit``   -- ``hpgd_weights(form="mc", leader_q="crossfit")`` (what ``hpgd`` uses);
* ``cov* traj`` -- ``form="covariance"``, same-trajectory Ghat, EXACT Vbar as baseline;
* ``published`` -- :func:`align_cbrl.estimators.published.published_hpgd_weights`, the published
  code's every-visit tables of both returns from the same batch (``--algo hpgd-published``);
* ``oracle dA`` -- the same trajectories and the same Ghat_t, but the follower factor replaced
  by the exact ``dA(s_t, a_t) = dQ*(s_t,a_t) - dV*(s_t)`` from the model:
  ``(1/lam) sum_t gamma^tau_t dA(s_t,a_t) Ghat_t / n_episodes``
  (:func:`tabular_reference.four_rooms.hypergradient.follower_advantage_gradient`).

``--dynamics`` picks the preset: the exact gradient is in its planning model, trajectories come
from its sampling model (so ``published`` also shows the planning/sampling mismatch).

If ``oracle dA`` matches the exact gradient while ``mc traj`` does not, the bias comes from
using Dhat_t (a return over the SAME future as Ghat_t) in place of dQ*(s_t, a_t):
E[Dhat_t Ghat_t | s_t, a_t] = dQ* Qbar + Cov(Dhat_t, Ghat_t | s_t, a_t).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/four_rooms_estimator_bias.py [--n 200]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from bench_common import four_rooms_parser

from align_cbrl.estimators.episodes import discounted_returns, per_state_sum, time_in_episode
from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.trajectory import hpgd_weights
from tabular_reference import mdp
from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.algorithms import RunConfig
from tabular_reference.four_rooms.dynamics import PRESETS, Dynamics, resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA, MAX_EPISODE_STEPS
from tabular_reference.four_rooms.hypergradient import follower_advantage_gradient
from tabular_reference.four_rooms.kernel_args import Followers, LibrarySamples, sampler_model
from tabular_reference.four_rooms.solver import FollowerSolution, FollowerSolver

STEPS = 10_000  # per estimate: 5 environments x 2,000 steps


def _sample(fs: FollowerSolution, model: Dynamics) -> tuple[np.ndarray, ...]:
    """``STEPS`` steps per run of the solved follower in the preset's sampling model."""
    n = fs.pi.shape[0]
    st, ac = np.empty((n, STEPS), np.int64), np.empty((n, STEPS), np.int64)
    lr, es = np.empty((n, STEPS)), np.empty((n, STEPS), np.bool_)
    kernels.sample_with_actions(
        sampler_model(model.sample, 5, STEPS // 5),
        Followers(fs.pi, fs.goal, fs.goal_value),
        LibrarySamples(st, ac, lr, es),
    )
    return st, ac, lr, es


def _estimates(
    fs: FollowerSolution, model: Dynamics, beta: float, batch: tuple[np.ndarray, ...]
) -> dict[str, np.ndarray]:
    """Mean over the runs of every estimator's per-state follower weights (module docstring)."""
    st, ac, lr, es = batch
    n, S, g = st.shape[0], E.n_cells, int(fs.goal[0])
    stt, lrt, est, act = (torch.from_numpy(a) for a in (st, lr, es, ac))
    out = {}

    def mean_weights(w) -> np.ndarray:
        return per_state_sum(w.follower, stt, S).numpy().mean(0)

    def library(form: str, **kw) -> np.ndarray:
        return mean_weights(hpgd_weights(stt, lrt, est, GAMMA, beta, form=form, n_states=S, **kw))

    out["mc traj"] = library("mc", leader_q="trajectory")
    out["mc xfit"] = library("mc", actions=act, n_actions=4, leader_q="crossfit")
    done = (stt == g) | (time_in_episode(est) == MAX_EPISODE_STEPS - 1)
    out["published"] = mean_weights(
        published_hpgd_weights(stt, act, lrt, est, GAMMA, beta, n_states=S, n_actions=4, done=done)
    )
    cells = np.arange(S)
    vbar = mdp.policy_evaluation(
        torch.tensor(E.dense_transitions(model.plan)),
        torch.tensor(fs.pi[0]),
        torch.tensor(np.where(cells == g, fs.goal_value[0], 1.0 * (cells == E.target))),
        GAMMA,
        torch.tensor(cells == g),
    ).numpy()
    v_table = torch.tensor(np.repeat(vbar[None], n, 0))
    out["cov* traj"] = library("covariance", leader_q="trajectory", v_table=v_table)
    G = discounted_returns(lrt, est, GAMMA).numpy()
    gp = GAMMA ** time_in_episode(est).numpy()
    Wsa = np.zeros((n, S, 4))
    np.add.at(
        Wsa,
        (np.repeat(np.arange(n), STEPS), st.ravel(), ac.ravel()),
        (gp * G / es.sum(1)[:, None]).ravel(),
    )
    dA = follower_advantage_gradient(fs.pi[0], g, model.plan)
    out["oracle dA"] = np.einsum("rsa,saj->rj", Wsa, dA).mean(0) / beta
    return out


def _compare(goal: int, exact: np.ndarray, out: dict[str, np.ndarray]) -> list[dict]:
    """Print and return cosine, norm ratio and relative error against the exact gradient."""
    mask = np.arange(E.n_cells) != goal
    print(f"goal {E.cells[goal]}: |exact| = {np.linalg.norm(exact[mask]):.3f}")
    rows = []
    for name, v in out.items():
        v, e = v[mask], exact[mask]
        cos = v @ e / np.linalg.norm(v) / np.linalg.norm(e)
        rel = np.linalg.norm(v - e) / np.linalg.norm(e)
        ratio = np.linalg.norm(v) / np.linalg.norm(e)
        print(f"  {name:10s} cosine {cos:7.4f}  |mean|/|exact| {ratio:8.3f}  rel. error {rel:8.3f}")
        rows.append(
            {
                "goal": list(E.cells[goal]),
                "estimator": name,
                "cosine": float(cos),
                "norm_ratio": float(ratio),
                "rel_error": float(rel),
            }
        )
    return rows


def main() -> None:
    ap = four_rooms_parser(__doc__)
    ap.add_argument("--n", type=int, default=200, help="independent estimates to average")
    ap.add_argument("--dynamics", default="paper", help=f"preset: {' | '.join(PRESETS)}")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, beta = args.n, args.lam
    model = resolve_dynamics(args.dynamics)
    x = np.repeat(np.random.default_rng(11).normal(0, 0.3, (1, 105)), n, axis=0)
    cfg = RunConfig(
        algo="hpgd",
        beta=beta,
        budget_cost=args.beta,
        lrs=[0.1],
        seeds=list(range(n)),
        dynamics=model.name,
    )
    solver = FollowerSolver(n, np.array(E.goals), cfg)
    rows = []
    kernels.seed_rng(5)
    np.random.seed(5)
    print(
        f"dynamics {model.name} (plan {model.plan.as_list()}, sample {model.sample.as_list()}), "
        f"lam={beta}, beta={args.beta}, {n} estimates x {STEPS} steps; metrics in penalty space "
        "(non-goal cells)"
    )
    for k in range(2):
        fs = solver.solve(x, np.full(n, k), True)
        out = _estimates(fs, model, beta, _sample(fs, model))
        rows += _compare(int(fs.goal[0]), fs.grad_penalty[0].copy(), out)
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"dynamics": model.to_dict(), "lam": beta, "beta": args.beta, "n": n, "steps": STEPS}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
