"""Markdown tables of ``docs/accelerated.md`` from the JSON files the Four-Rooms benches write.

Run: ``PYTHONPATH=. python bench/accelerated_report.py --bias results/accelerated/four_rooms_bias.json
--equal results/accelerated/equal_lr0.5.json results/accelerated/equal_lr0.1.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def bias_tables(path: str) -> str:
    d = json.loads(Path(path).read_text())
    out = []
    for res in d["results"]:
        out.append(
            f"\n**Follower start: {res['start']}** (||exact dF/dx|| = {res['exact_norm']:.4f})\n"
        )
        out.append(
            "| follower sweeps n | rel. bias of the mean | ± s.e. | cosine | spread / estimate "
            "| (HG) at the learned policy: rel. bias | cosine |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for r in res["plain"]:
            p = r.get("plug_in", {"rel_bias": 0.0, "cosine": 1.0})  # n = inf: (HG) itself
            out.append(
                f"| {r['n']} | {r['rel_bias']:.3f} | {r['rel_se']:.3f} | {r['cosine']:.3f} | "
                f"{r['rel_spread']:.2f} | {p['rel_bias']:.4f} | {p['cosine']:.4f} |"
            )
        out.append(
            "\n| multilevel n0, J_max (top level) | sweeps / estimate (expected) | rel. bias "
            "| ± s.e. | cosine | spread / estimate |"
        )
        out.append("|---|---|---|---|---|---|")
        for r in res["multilevel"]:
            out.append(
                f"| {r['base_steps']}, {r['max_level']} ({r['top']}) | {r['sweeps']:.1f} "
                f"({r['expected_sweeps']:.1f}) | {r['rel_bias']:.3f} | {r['rel_se']:.3f} | "
                f"{r['cosine']:.3f} | {r['rel_spread']:.2f} |"
            )
        c = res.get("level_difference_rms")
        if c:
            out.append(
                "\n| coupling | rms norm of g_k - g_(k-1), relative to the exact norm; k = 1, 2, ... |"
            )
            out.append("|---|---|")
            for name, v in c.items():
                out.append(f"| {name} | {', '.join(f'{x:.2f}' for x in v)} |")
    return "\n".join(out)


def equal_table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    a = d["args"]
    head = (
        f"\n**lam {a['lam']}, budget cost {a['beta']}, lr {a['lr']}, {a['seeds']} seeds, "
        f"budget {a['budget']} follower sweeps per run, {a['steps']} sampled steps per "
        f"estimate; F* = {sum(d['F_star']) / len(d['F_star']):.4f} (exact ascent, lr "
        f"{a['star_lr']}, {a['star_iters']} iterations)**\n\n"
    )
    rows = [
        "| method | final F | ± s.e. | gap F* - F | ± s.e. | sweeps | outer iterations "
        "| sampled env steps | levels drawn (J = 0, 1, ...) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        rows.append(
            f"| {r['method']} | {r['F']:.4f} | {r['F_se']:.4f} | {r['gap']:.4f} | "
            f"{r['gap_se']:.4f} | {r['sweeps']:.0f} | {r['iters']:.0f} | {r['env_steps']:.3g} | "
            f"{r.get('levels', '')} |"
        )
    return head + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bias", default=None)
    ap.add_argument("--equal", nargs="*", default=[])
    args = ap.parse_args()
    if args.bias:
        print(bias_tables(args.bias))
    for p in args.equal:
        print(equal_table(p))


if __name__ == "__main__":
    main()
