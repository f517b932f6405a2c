"""``validate``: an estimator against the exact hypergradient and against HPGD
(``docs/validate.md``).

Three measurements, each for the candidate and the reference estimators:

1. **bias** at the harness's fixed point: ``M`` independent estimates of ``steps`` sampled steps
   each per context; relative error of their mean ``||mean - exact|| / ||exact||`` with its
   standard error ``sqrt(tr C / M) / ||exact||``, the cosine of the mean with the exact gradient
   (bootstrap s.e.) and the noise-normalised statistic of the Table 1 unbiasedness test,
   ``||mean - exact||^2 / (tr C / M)`` (expectation 1 if unbiased), with its p-value
   (:func:`tabular_reference.common.bias.noise_ratio_test`);
2. **variance against the number of sampled steps**: the spread of one estimate,
   ``sqrt(tr C) / ||exact||``, and the same bias statistics, at every budget of ``steps_grid``;
3. **outer loop**: the same number of sampled steps per iteration, the same seeds (initial
   points) for every estimator; the exact objective averaged over the last 10% of iterations,
   and the candidate's paired difference to each reference (mean ± s.e. over seeds).

**Verdict.** Unbiased within s.e. when, in every context, the p-value of the noise ratio is at
least ``0.01 / (number of contexts)``; otherwise biased. The line also gives, against each
reference, the spread ratio at the bias budget and the outer-loop difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from align_cbrl.utils.io import atomic_write_json
from tabular_reference.common.bias import bias_summary, cosine_se, noise_ratio_test
from tabular_reference.common.estimator_api import Estimator, EstimatorError, resolve
from tabular_reference.validate.plots import plot_validation

__all__ = ["ALPHA", "Sizes", "measure", "verdict_line"]

ALPHA = 0.01  # family-wise level of the unbiasedness test (split over the contexts)


@dataclass(frozen=True)
class Sizes:
    """How much to measure: ``m`` estimates per (estimator, context, budget), ``warmup`` calls
    of stateful estimators, outer-loop ``seeds`` and ``iters`` (0: none), the base ``seed``."""

    m: int
    warmup: int
    seeds: int
    iters: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.m < 3 or self.warmup < 0 or self.seeds < 1 or self.iters < 0:
            raise ValueError(
                f"need --estimates >= 3, --warmup >= 0, --seeds >= 1 and --iters >= 0; got "
                f"{self.m}, {self.warmup}, {self.seeds}, {self.iters}"
            )


def _stats(est: np.ndarray, exact: np.ndarray, rng: np.random.Generator) -> dict:
    return {
        **bias_summary(est, exact),
        "cosine_se": cosine_se(est, exact, rng),
        **noise_ratio_test(est, exact),
    }


def _measure_bias(harness, ests, exact, sizes, bar) -> tuple[dict, dict]:
    """Bias and variance-vs-steps rows per estimator name; a reference that fails at a budget
    (e.g. no finished episode) is recorded, the candidate's interface errors propagate."""
    rng = np.random.default_rng(sizes.seed)
    budgets = sorted({harness.s.steps, *harness.s.steps_grid})
    bias: dict[str, list] = {n: [] for n in ests}
    curve: dict[str, list] = {n: [] for n in ests}
    for name, est in ests.items():
        for steps in budgets:
            row: dict[str, Any] = {"steps": steps, "contexts": []}
            for k, (_, g_exact) in enumerate(exact):
                bar.set_description(f"{name}: {steps} steps, {harness.contexts[k]}")
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    g = harness.estimates(
                        est, k, steps, sizes.m, sizes.seed + 101 * k, sizes.warmup
                    )
                except EstimatorError:
                    raise
                except (RuntimeError, ValueError) as err:
                    row["contexts"].append({"error": str(err).splitlines()[0]})
                    bar.update()
                    continue
                stats = _stats(g, g_exact, rng)
                stats.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
                row["contexts"].append(stats)
                bar.update()
            curve[name].append(row)
            if steps == harness.s.steps:
                bias[name] = row["contexts"]
    return bias, curve


def _paired(a: list[float], b: list[float]) -> dict:
    d = np.asarray(a) - np.asarray(b)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "se": se, "seeds": len(d)}


def measure(
    harness: Any,
    candidate: str,
    references: list[str],
    sizes: Sizes,
    out: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the three measurements (module docstring), write ``OUT/validate.json`` and
    ``OUT/validate.png``, print the verdict line; returns the results."""
    env = harness.env
    names = [candidate, *[r for r in references if r != candidate]]
    ests: dict[str, Estimator] = {n: resolve(n, env) for n in names}  # errors before any work
    t_start, cpu_start = time.perf_counter(), time.process_time()
    exact = harness.exact()
    n_tasks = len(ests) * len(exact) * len({harness.s.steps, *harness.s.steps_grid})
    with tqdm(total=n_tasks, disable=not progress, desc="estimates", leave=False) as bar:
        bias, curve = _measure_bias(harness, ests, exact, sizes, bar)
    seeds = list(range(sizes.seed, sizes.seed + sizes.seeds))
    outer = {}
    failed = {}
    for name in names if sizes.iters else []:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            outer[name] = harness.outer(name, seeds, sizes.iters, progress)
        except EstimatorError:
            raise
        except (RuntimeError, ValueError) as err:  # e.g. a batch without a finished episode
            failed[name] = str(err).splitlines()[0]
            log(f"outer loop {name} failed: {failed[name]}")
            continue
        outer[name].update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    results = {
        "candidate": candidate,
        "references": names[1:],
        "harness": harness.describe(),
        "sizes": asdict(sizes),
        "contexts": harness.contexts,
        "exact": [{"F": F, "norm": float(np.linalg.norm(g))} for F, g in exact],
        "bias": bias,
        "variance": curve,
        "outer": outer,
        "outer_failed": failed,
        "comparisons": {
            r: _paired(outer[candidate]["F_last"], outer[r]["F_last"])
            for r in names[1:]
            if r in outer
        },
        "oracle": {n: e.oracle for n, e in ests.items()},
    }
    results["unbiased"] = _unbiased(bias[candidate])
    results["verdict"] = verdict_line(results)
    results["wall_s"] = time.perf_counter() - t_start
    results["cpu_s"] = time.process_time() - cpu_start
    out = Path(out)
    atomic_write_json(out / "validate.json", results)
    plot_validation(results, out / "validate.png")
    log(results["verdict"])
    return results


def _unbiased(rows: list[dict]) -> bool | None:
    ps = [r.get("p_value") for r in rows]
    if any(p is None for p in ps):
        return None
    return all(p >= ALPHA / len(ps) for p in ps)


def _fmt_bias(rows: list[dict], contexts: list[str]) -> str:
    parts = []
    for ctx, r in zip(contexts, rows, strict=True):
        if "error" in r:
            parts.append(f"{ctx}: failed ({r['error']})")
            continue
        parts.append(
            f"{ctx}: noise ratio {r['noise_ratio']:.2f} (p = {r['p_value']:.2g}), rel. bias "
            f"{r['rel_bias']:.3f} ± {r['rel_se']:.3f}, "
            f"cosine {r['cosine']:.3f} ± {r['cosine_se']:.3f}"
        )
    return "; ".join(parts)


def verdict_line(res: dict) -> str:
    """One line: biased or not (with the per-context statistics), then against each reference
    the spread ratio at the bias budget and the outer-loop difference."""
    cand, contexts = res["candidate"], res["contexts"]
    state = {True: "UNBIASED within s.e.", False: "BIASED", None: "NOT MEASURED"}
    head = f"verdict [{res['harness']['env']}/{res['harness']['preset']}] {cand}: "
    head += f"{state[res['unbiased']]} ({_fmt_bias(res['bias'][cand], contexts)})"
    tails = []
    for ref in res["references"]:
        spreads = [
            (c.get("rel_spread"), r.get("rel_spread"))
            for c, r in zip(res["bias"][cand], res["bias"][ref], strict=True)
        ]
        ratio = [f"{a / b:.2f}x" for a, b in spreads if a is not None and b]
        tail = f"vs {ref}: spread {'/'.join(ratio) or 'n/a'}"
        if ref in res.get("outer_failed", {}):
            tail += f", outer loop failed ({res['outer_failed'][ref]})"
        if ref in res["comparisons"]:
            c = res["comparisons"][ref]
            F_c, F_r = (np.mean(res["outer"][n]["F_last"]) for n in (cand, ref))
            tail += (
                f", outer-loop F {F_c:.4f} vs {F_r:.4f} (diff {c['diff']:+.4f} ± {c['se']:.4f}, "
                f"{c['seeds']} seeds)"
            )
        tails.append(tail)
    return head + (" | " + "; ".join(tails) if tails else "")
