"""Distance of TRL followers to the exact best response on the enumerable tiny-language task.

For L (max completion words) in {1, 2, 3}, trains three followers from the same tiny word-level
model and prints ``TV(pi_theta, pi*)`` after 100 / 300 / 1000 optimiser steps:

* GRPO, ``kl_mode="loss"``   (TRL's per-token KL term in the loss),
* GRPO, ``kl_mode="reward"`` (sequence-level KL penalty in the reward, this library's default),
* RLOO                        (TRL's own sequence-level KL penalty in the reward).

Task (as in ``docs/followers.md``): words ``a b c d`` + EOS, prompts ``"a"``, ``"b"``, reward =
number of completion words equal to the prompt's target word (``a -> b``, ``b -> c``) divided by
L, ``beta = 0.5``, 8 completions per prompt, 2 prompts per step, Adam, constant LR.
``pi_theta`` and ``pi_ref`` are enumerated exactly with :func:`completion_logprobs`;
``pi*(y|p) = softmax_y(log pi_ref(y|p) + r(p, y) / beta)``. TV is averaged over the prompts.

Also printed: ``TV(pi_loss_fp, pi*)``, the predicted fixed point of ``kl_mode="loss"`` for a
policy that is tabular in the prefix, by backward induction: at every prefix ``s``,
``pi(a|s) ∝ pi_ref(a|s) exp(c * Q_r(s, a) / beta)`` with ``Q_r`` the expected *task* reward
after ``(s, a)`` under ``pi`` (no credit for the KL of later tokens) and ``c = (G - 1) / G``
(GRPO's group-mean baseline includes the sample itself, which shrinks the reward gradient by
``c`` but not the per-token KL gradient). ``pi*`` is the same recursion with soft values
``Q(s, a) = beta * log E_{pi_ref}[exp(Q / beta)]`` and ``c = 1``.

Run (minutes on 2 CPU cores; use ``nice``)::

    OMP_NUM_THREADS=1 nice -n 10 python bench/follower_fixed_point.py [--steps 100 300 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

WORDS = ["a", "b", "c", "d"]
TARGET = {"a": "b", "b": "c"}
PROMPTS = ["a", "b"]


def make_reward(max_len: int) -> Any:
    """Reward ``r(p, y) = #{words of y equal to TARGET[p]} / L`` (TRL signature)."""

    def target_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [
            sum(w == TARGET[p] for w in c.split()) / max_len
            for p, c in zip(prompts, completions, strict=True)
        ]

    return target_reward


def total_variation(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """``mean_p 0.5 * sum_y |p(y) - q(y)|`` over the rows (prompts)."""
    return float(0.5 * (logp.exp() - logq.exp()).abs().sum(-1).mean())


def prefix_fixed_point(
    seqs: list[tuple[int, ...]],
    log_ref: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    max_len: int,
    *,
    soft: bool,
    scale: float = 1.0,
) -> torch.Tensor:
    """Fixed point of a prefix-tabular policy, by backward induction over prefixes.

    ``seqs[j]`` are the word ids of completion ``j`` (EOS implicit when shorter than
    ``max_len``), ``log_ref[i, j] = log pi_ref(y_j | p_i)``, ``rewards[i, j] = r(p_i, y_j)``.
    At every prefix ``s`` the policy is ``pi(a|s) ∝ pi_ref(a|s) exp(scale * Q(s, a) / beta)``;
    with ``soft=True`` (and ``scale=1``) ``Q`` is the soft value ``beta log E_ref exp(Q/beta)`` of
    the continuation, which gives ``pi*`` exactly; with ``soft=False`` ``Q`` is the expected task
    reward of the continuation under ``pi`` (per-token KL credit only). Returns ``log pi(y_j|p_i)``.
    """
    index = {s: j for j, s in enumerate(seqs)}
    num_words = 1 + max(max(s) for s in seqs if s)
    out = torch.empty_like(log_ref, dtype=torch.float64)
    for i in range(log_ref.size(0)):
        ref_seq = log_ref[i].double()

        def prefix_logmass(s: tuple[int, ...], ref_seq: torch.Tensor = ref_seq) -> torch.Tensor:
            js = [j for j, t in enumerate(seqs) if t[: len(s)] == s]
            return torch.logsumexp(ref_seq[js], 0)

        # children of prefix s: EOS (terminal, if len(s) < max_len) and s + (w,)
        cond: dict[tuple[int, ...], dict[Any, float]] = {}
        value: dict[tuple[int, ...], float] = {}
        for length in range(max_len, -1, -1):
            for s in [t for t in seqs if len(t) == length]:
                if length == max_len:  # truncated: no choice left, Q = r
                    value[s] = float(rewards[i, index[s]])
                    continue
                base = prefix_logmass(s)
                logits: dict[Any, float] = {}
                q: dict[Any, float] = {}
                ref_eos = float(ref_seq[index[s]] - base)
                logits["eos"], q["eos"] = ref_eos, float(rewards[i, index[s]])
                for w in range(num_words):
                    child = (*s, w)
                    logits[w] = float(prefix_logmass(child) - base)
                    q[w] = value[child]
                scores = {a: logits[a] + scale * q[a] / beta for a in logits}
                lz = math.log(sum(math.exp(v) for v in scores.values()))
                cond[s] = {a: v - lz for a, v in scores.items()}
                if soft:
                    value[s] = beta * math.log(
                        sum(math.exp(logits[a] + q[a] / beta) for a in logits)
                    )
                else:
                    value[s] = sum(math.exp(cond[s][a]) * q[a] for a in logits)
        for j, s in enumerate(seqs):
            lp = sum(cond[s[:k]][s[k]] for k in range(len(s)))
            if len(s) < max_len:
                lp += cond[s]["eos"]
            out[i, j] = lp
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every (L, method) pair and return one row per (L, method)."""
    import datasets

    from align_cbrl.followers import GRPOFollower, RLOOFollower, TRLFollowerConfig
    from align_cbrl.models import (
        build_tiny_lm,
        completion_logprobs,
        enumerate_completions,
        load_tiny_lm,
    )

    model_dir = build_tiny_lm("word", cache_dir=args.cache_dir, words=WORDS, seed=args.model_seed)
    _, tok = load_tiny_lm(model_dir)
    ds = datasets.Dataset.from_dict({"prompt": PROMPTS})
    rows: list[dict[str, Any]] = []
    methods = [
        ("GRPO loss", GRPOFollower, "loss"),
        ("GRPO reward", GRPOFollower, "reward"),
        ("RLOO", RLOOFollower, "reward"),
    ]
    for max_len in args.lengths:
        seqs, toks = enumerate_completions(len(WORDS), max_len, tok.eos_token_id)
        texts = [" ".join(WORDS[w] for w in s) for s in seqs]
        reward_fn = make_reward(max_len)
        rewards = torch.tensor(
            [reward_fn([p] * len(texts), texts) for p in PROMPTS], dtype=torch.float64
        )
        ref_model, _ = load_tiny_lm(model_dir)
        log_ref = completion_logprobs(ref_model, tok, PROMPTS, toks)
        log_star = torch.log_softmax(log_ref + rewards / args.beta, -1)
        star_bi = prefix_fixed_point(seqs, log_ref, rewards, args.beta, max_len, soft=True)
        assert torch.allclose(star_bi, log_star, atol=1e-9), "backward induction != pi*"
        c = (args.num_generations - 1) / args.num_generations
        loss_fp = prefix_fixed_point(
            seqs, log_ref, rewards, args.beta, max_len, soft=False, scale=c
        )
        loss_fp_tokens = prefix_fixed_point(seqs, log_ref, rewards, args.beta, max_len, soft=False)
        base = {
            "L": max_len,
            "completions": len(seqs),
            "tv_ref": total_variation(log_ref, log_star),
            "tv_loss_fixed_point": total_variation(loss_fp, log_star),
            "tv_loss_fixed_point_no_group_bias": total_variation(loss_fp_tokens, log_star),
        }
        for name, cls, mode in methods:
            cfg = TRLFollowerConfig(
                beta=args.beta,
                kl_mode=mode,  # type: ignore[arg-type]
                prompts_per_step=2,
                seed=args.seed,
                trl={
                    "learning_rate": args.lr,
                    "num_generations": args.num_generations,
                    "max_completion_length": max_len,
                },
            )
            f = cls(model_dir, ds, reward_fn, cfg)
            tvs: dict[int, float] = {}
            t0 = time.perf_counter()
            for target in args.steps:
                f.train(target - f.global_step)
                tvs[target] = total_variation(
                    completion_logprobs(f.model, tok, PROMPTS, toks), log_star
                )
            seconds = time.perf_counter() - t0
            f.close()
            row = dict(base, method=name, tv=tvs, seconds_per_step=seconds / args.steps[-1])
            rows.append(row)
            print(
                f"L={max_len} {name:<12} "
                + " ".join(f"{s}:{v:.4f}" for s, v in tvs.items())
                + f"  ({row['seconds_per_step']:.3f} s/step)",
                flush=True,
            )
    return rows


def main() -> None:
    """CLI: print the table (and optionally write JSON)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="follower seed (sampling, prompt order)")
    p.add_argument("--model-seed", type=int, default=0, help="tiny model initialisation seed")
    p.add_argument("--cache-dir", default=None, help="tiny-model cache (default: the library's)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    args.steps = sorted(args.steps)
    torch.set_num_threads(1)
    rows = run(args)
    head = " | ".join(f"TV@{s}" for s in args.steps)
    print(f"\n| L | #y | TV(ref,pi*) | TV(loss fixed pt,pi*) | method | {head} | s/step |")
    print("|---|---|---|---|---|" + "---|" * len(args.steps) + "---|")
    for r in rows:
        tvs = " | ".join(f"{r['tv'][s]:.4f}" for s in args.steps)
        print(
            f"| {r['L']} | {r['completions']} | {r['tv_ref']:.3f} | "
            f"{r['tv_loss_fixed_point']:.3f} | {r['method']} | {tvs} | "
            f"{r['seconds_per_step']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
