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
  ``(1/lam) sum_t gamma^tau_t dA(s_t,a_t) Ghat_t / n_episodes``.

``--dynamics`` picks the preset: the exact gradient is in its planning model, trajectories come
from its sampling model (so ``published`` also shows the planning/sampling mismatch).

If ``oracle dA`` matches the exact gradient while ``mc traj`` does not, the bias comes from
using Dhat_t (a return over the SAME future as Ghat_t) in place of dQ*(s_t, a_t):
E[Dhat_t Ghat_t | s_t, a_t] = dQ* Qbar + Cov(Dhat_t, Ghat_t | s_t, a_t).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/four_rooms_estimator_bias.py [--n 200]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.trajectory import (
    discounted_returns,
    hpgd_weights,
    per_state_sum,
    time_in_episode,
)
from tabular_reference import mdp
from tabular_reference.four_rooms import kernels as K
from tabular_reference.four_rooms.algorithms import RunConfig, _Solver
from tabular_reference.four_rooms.dynamics import PRESETS, resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA, MAX_EPISODE_STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="independent estimates to average")
    ap.add_argument("--lam", type=float, default=0.005)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--dynamics", default="paper", help=f"preset: {' | '.join(PRESETS)}")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, lam, beta = args.n, args.lam, args.beta
    model = resolve_dynamics(args.dynamics)
    x = np.repeat(np.random.default_rng(11).normal(0, 0.3, (1, 105)), n, axis=0)
    cfg = RunConfig(
        algo="hpgd", lam=lam, beta=beta, lrs=[0.1], seeds=list(range(n)), dynamics=model.name
    )
    solver = _Solver(n, np.array(E.goals), cfg)
    P = E.dense_transitions(model.plan)
    rows = []
    S, T = E.n_cells, 10_000
    K.seed_rng(5)
    np.random.seed(5)
    print(
        f"dynamics {model.name} (plan {model.plan.as_list()}, sample {model.sample.as_list()}), "
        f"lam={lam}, beta={beta}, {n} estimates x {T} steps; metrics in penalty space "
        "(non-goal cells)"
    )
    for k in range(2):
        _F, gpen, _mug, pi, _sig, goal, vgoal, _V = solver.solve(x, np.full(n, k), True)
        g = int(goal[0])
        exact = gpen[0].copy()
        # exact dV/dpen (columns) and dA(s, a) = gamma sum_s' (P(s'|s,a) - P_pi(s'|s)) dV(s')
        Ppi = np.einsum("sa,sat->st", pi[0], P)
        Ppi[g] = 0.0
        Mm = np.eye(S) - GAMMA * Ppi
        rhs = np.eye(S)
        rhs[g] = 0.0
        dV = np.linalg.solve(Mm, rhs)  # dV[s, j] = dV(s)/dpen(j)
        dA = GAMMA * np.einsum("sat,tj->saj", P - Ppi[:, None, :], dV)
        dA[g] = 0.0
        st = np.empty((n, T), np.int64)
        ac = np.empty((n, T), np.int64)
        lr = np.empty((n, T))
        es = np.empty((n, T), np.bool_)
        K.sample_with_actions(
            pi, goal, vgoal, E.start, E.target, E.nbr, *model.sample.as_list(), 5, T // 5,
            MAX_EPISODE_STEPS, st, ac, lr, es,
        )  # fmt: skip
        stt, lrt, est = torch.from_numpy(st), torch.from_numpy(lr), torch.from_numpy(es)
        out = {}
        w = hpgd_weights(stt, lrt, est, GAMMA, lam, form="mc", n_states=S, leader_q="trajectory")
        out["mc traj"] = per_state_sum(w.follower, stt, S).numpy().mean(0)
        act = torch.from_numpy(ac)
        w = hpgd_weights(
            stt,
            lrt,
            est,
            GAMMA,
            lam,
            form="mc",
            n_states=S,
            actions=act,
            n_actions=4,
            leader_q="crossfit",
        )
        out["mc xfit"] = per_state_sum(w.follower, stt, S).numpy().mean(0)
        tau = time_in_episode(est)
        done = (stt == g) | (tau == MAX_EPISODE_STEPS - 1)
        w = published_hpgd_weights(
            stt, act, lrt, est, GAMMA, lam, n_states=S, n_actions=4, done=done
        )
        out["published"] = per_state_sum(w.follower, stt, S).numpy().mean(0)
        sol_vbar = mdp.policy_evaluation(
            torch.tensor(P),
            torch.tensor(pi[0]),
            torch.tensor(np.where(np.arange(S) == g, vgoal[0], 1.0 * (np.arange(S) == E.target))),
            GAMMA,
            torch.tensor(np.arange(S) == g),
        ).numpy()
        w = hpgd_weights(
            stt,
            lrt,
            est,
            GAMMA,
            lam,
            form="covariance",
            n_states=S,
            leader_q="trajectory",
            baseline=torch.tensor(np.repeat(sol_vbar[None], n, 0)),
        )
        out["cov* traj"] = per_state_sum(w.follower, stt, S).numpy().mean(0)
        G = discounted_returns(lrt, est, GAMMA).numpy()
        gp = GAMMA ** time_in_episode(est).numpy()
        n_ep = es.sum(1)
        Wsa = np.zeros((n, S, 4))
        np.add.at(
            Wsa,
            (np.repeat(np.arange(n), T), st.ravel(), ac.ravel()),
            (gp * G / n_ep[:, None]).ravel(),
        )
        out["oracle dA"] = np.einsum("rsa,saj->rj", Wsa, dA).mean(0) / lam
        mask = np.arange(S) != g
        print(f"goal {E.cells[g]}: |exact| = {np.linalg.norm(exact[mask]):.3f}")
        for name, v in out.items():
            v = v.copy()
            v[~mask] = 0.0
            cos = v[mask] @ exact[mask] / np.linalg.norm(v[mask]) / np.linalg.norm(exact[mask])
            rel = np.linalg.norm(v[mask] - exact[mask]) / np.linalg.norm(exact[mask])
            ratio = np.linalg.norm(v[mask]) / np.linalg.norm(exact[mask])
            print(
                f"  {name:10s} cosine {cos:7.4f}  |mean|/|exact| {ratio:8.3f}  "
                f"rel. error {rel:8.3f}"
            )
            rows.append(
                {
                    "goal": list(E.cells[g]),
                    "estimator": name,
                    "cosine": float(cos),
                    "norm_ratio": float(ratio),
                    "rel_error": float(rel),
                }
            )
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"dynamics": model.to_dict(), "lam": lam, "beta": beta, "n": n, "steps": T}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
