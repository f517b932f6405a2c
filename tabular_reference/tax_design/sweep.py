"""Tax-design experiment sweep: (algorithm x temperature [x zero-order c] [x budget]) jobs,
results, statistics and plots.

Each job trains all seeds of one (algorithm, temperature[, c][, budget]) as one batch
(:func:`algorithms.run_batch`) and writes ``OUT/lam{lam}/{label}/`` with ``config.json``,
``metrics.csv`` (iteration, seed, welfare, tau, v1, v2, v3), ``summary.json``,
``final_params.safetensors`` (``theta``, ``rates``) and ``curves.safetensors``. Jobs run in a
process pool (one torch thread per process), longest first. The sweep then writes
``OUT/summary.json`` (:func:`summarise`: per-job rows with the iterations to reach
zero-order-sampled's final welfare, half-gain iterations and final rates; comparisons; the
acceptance figures) and the plots ``welfare_lam{lam}.png`` (mean +- s.e. over seeds, every
algorithm), ``rates_lam{lam}.png`` (tau, v_1, v_2, v_3 vs iteration, HPGD and zero-order-sampled
side by side) and ``rates_lam{lam}_{label}.png``.

The household temperature is ``Job.beta`` in the code; results use the paper's notation
(``lam`` in file names and JSON keys, "lambda" in plot titles).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from align_cbrl.estimators.vocabulary import check_algorithm
from tabular_reference.common.plots import mean_se, plot_learning_curves
from tabular_reference.common.results import ResultsDir
from tabular_reference.tax_design.algorithms import ALGORITHMS, AlgoSettings, History, run_batch
from tabular_reference.tax_design.economy import Economy, EconomyConfig

__all__ = ["Job", "discover", "make_jobs", "reach_iteration", "run_job", "run_sweep", "summarise"]

RATE_NAMES = ("tau", "v1", "v2", "v3")


@dataclass(frozen=True)
class Job:
    algo: str
    beta: float
    seeds: tuple[int, ...]
    iters: int
    settings: AlgoSettings
    n_bins: int = 101

    @property
    def label(self) -> str:
        """Directory / legend name: the algorithm with its budget (environment steps per
        iteration, or per value estimate for ``zero_order_sampled``) and zero-order constant."""
        T = EconomyConfig().episode_length
        st = self.settings
        if self.algo == "zero_order":
            return f"zero_order_c{st.zo_c:g}"
        if self.algo == "zero_order_sampled":
            crn = "_crn" if st.zo_crn else ""
            return f"zero_order_sampled_c{st.zo_c:g}_s{st.zo_episodes * T}{crn}"
        if self.algo in ("hpgd", "naive"):
            return f"{self.algo}_s{st.episodes * T}"
        return self.algo

    def directory(self, out: Path) -> Path:
        return out / f"lam{self.beta:g}" / self.label


def _tail_mean(welfare: np.ndarray, frac: float = 0.1) -> np.ndarray:
    k = max(1, round(frac * (welfare.shape[0] - 1)))
    return welfare[-k:].mean(axis=0)


def run_job(job: Job, out: str, progress: bool = True, position: int | None = None) -> dict:
    """Run one job in this process and write its results directory; returns its summary."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    econ = Economy(EconomyConfig(n_bins=job.n_bins))
    t0 = time.perf_counter()
    c0 = time.process_time()
    hist: History = run_batch(
        econ,
        job.algo,
        [job.beta] * len(job.seeds),
        list(job.seeds),
        job.iters,
        job.settings,
        progress=progress,
        desc=f"lam={job.beta:g} {job.label}",
        position=position,
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    res = ResultsDir(job.directory(Path(out)))
    res.write_config(
        {
            "algo": job.algo,
            "lam": job.beta,
            "seeds": list(job.seeds),
            "iters": job.iters,
            "settings": asdict(job.settings),
            "economy": econ.config.to_dict(),
        }
    )
    rows = []
    for t in range(hist.welfare.shape[0]):
        for r, seed in enumerate(job.seeds):
            rows.append([t, seed, hist.welfare[t, r], *hist.rates[t, r].tolist()])
    res.write_csv("metrics.csv", ["iteration", "seed", "welfare", *RATE_NAMES], rows)
    res.save_arrays(
        "final_params",
        {"theta": hist.theta, "rates": hist.rates[-1], "seeds": np.asarray(job.seeds)},
        {"order": "tau,v1,v2,v3", "map": "rate = 2 * sigmoid(theta)"},
    )
    res.save_arrays(
        "curves",
        {"welfare": hist.welfare, "rates": hist.rates, "grad_norm": hist.grad_norm},
    )
    final_m, final_se = mean_se(hist.welfare[-1])
    tail_m, tail_se = mean_se(_tail_mean(hist.welfare))
    rates_m, rates_se = mean_se(hist.rates[-1])
    summary = {
        "algo": job.algo,
        "label": job.label,
        "lam": job.beta,
        "n_seeds": len(job.seeds),
        "iters": job.iters,
        "initial_welfare": float(hist.welfare[0].mean()),
        "final_welfare_mean": float(final_m),
        "final_welfare_se": float(final_se),
        "last10pct_welfare_mean": float(tail_m),
        "last10pct_welfare_se": float(tail_se),
        "final_rates_mean": dict(zip(RATE_NAMES, rates_m.tolist(), strict=True)),
        "final_rates_se": dict(zip(RATE_NAMES, rates_se.tolist(), strict=True)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "newton_steps": hist.newton_steps,
    }
    res.write_json("summary.json", summary)
    return summary


def reach_iteration(curve: np.ndarray, target: float) -> int | None:
    """First iteration at which the seed-mean ``curve[iters+1, seeds]`` reaches ``target``."""
    mean = curve.mean(axis=1)
    hit = np.nonzero(mean >= target)[0]
    return int(hit[0]) if hit.size else None


def seed_reach(curve: np.ndarray, target: float) -> list[int | None]:
    """Per seed, the first iteration at which ``curve[:, seed]`` reaches ``target`` (None: never)."""
    out: list[int | None] = []
    for k in range(curve.shape[1]):
        hit = np.nonzero(curve[:, k] >= target)[0]
        out.append(int(hit[0]) if hit.size else None)
    return out


def half_gain_iteration(curve: np.ndarray) -> int | None:
    """First iteration at which the seed-mean curve has made half of its own total gain
    ``mean[-1] - mean[0]`` (None if there is no gain)."""
    mean = curve.mean(axis=1)
    gain = mean[-1] - mean[0]
    if not gain > 0:
        return None
    return int(np.nonzero(mean >= mean[0] + 0.5 * gain)[0][0])


def _load_curves(job: Job, out: Path) -> dict[str, np.ndarray]:
    from align_cbrl.utils.io import load_safetensors

    arrays = load_safetensors(job.directory(out) / "curves.safetensors")
    return {k: v.numpy() for k, v in arrays.items()}


def _reference(beta_jobs: Sequence[Job]) -> Job | None:
    """The zero-order-sampled job the others are compared with: without common random numbers
    if there is one, then the largest budget."""
    zs = [j for j in beta_jobs if j.algo == "zero_order_sampled"]
    if not zs:
        return None
    return sorted(zs, key=lambda j: (j.settings.zo_crn, -j.settings.zo_episodes, j.label))[0]


def plot_rates_side_by_side(panels: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """The four rates vs iteration (mean ± s.e. over seeds) in one panel per algorithm;
    ``panels[label] = rates[iters+1, seeds, 4]``."""
    from tabular_reference.common.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.8), dpi=120, sharey=True, squeeze=False
    )
    for ax, (label, rates) in zip(axes[0], panels.items()):
        x = np.arange(rates.shape[0])
        for i, name in enumerate(RATE_NAMES):
            m, se = mean_se(rates[:, :, i], axis=1)
            (line,) = ax.plot(x, m, lw=1.5, label=name)
            ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.25, lw=0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("outer iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rate")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_temperature(
    beta: float, beta_jobs: list[Job], curves: dict, ref: Job | None, out: Path
) -> None:
    """``welfare_lam*.png``, ``rates_lam*_<label>.png`` and ``rates_lam*.png`` of one temperature."""
    x = np.arange(beta_jobs[0].iters + 1)
    plot_learning_curves(
        {k: (x, v["welfare"].T) for k, v in curves.items()},
        out / f"welfare_lam{beta:g}.png",
        ylabel="social welfare F (exact)",
        title=f"Tax design, lambda = {beta:g}: welfare (mean ± s.e. over seeds)",
    )
    for label, v in curves.items():
        plot_learning_curves(
            {name: (x, v["rates"][:, :, i].T) for i, name in enumerate(RATE_NAMES)},
            out / f"rates_lam{beta:g}_{label}.png",
            ylabel="rate",
            title=f"Tax design, lambda = {beta:g}, {label}: tax rates",
        )
    side = [j for j in beta_jobs if j.algo == "hpgd"]
    side = sorted(side, key=lambda j: -j.settings.episodes)[:1] + ([ref] if ref else [])
    if side:
        plot_rates_side_by_side(
            {j.label: curves[j.label]["rates"] for j in side},
            out / f"rates_lam{beta:g}.png",
            f"Tax design, lambda = {beta:g}: tau, v1, v2, v3 (mean ± s.e. over seeds)",
        )


def _row(
    job: Job, curve: dict, summ: dict, ref: Job | None, target: float | None
) -> dict[str, Any]:
    """The summary row of one job (see :func:`summarise`)."""
    w, r = curve["welfare"], curve["rates"]
    row: dict[str, Any] = {
        "lam": job.beta,
        "algo": job.label,
        "final_mean": summ["final_welfare_mean"],
        "final_se": summ["final_welfare_se"],
        "initial": float(w[0].mean()),
        "rates": [float(v) for v in r[-1].mean(axis=0)],
        "half_gain_iteration": half_gain_iteration(w),
        "n_seeds": int(w.shape[1]),
        "n_rising": int((w[-1] > w[0]).sum()),
        "n_vat_ordered": int(((r[-1, :, 2] < r[-1, :, 1]) & (r[-1, :, 1] < r[-1, :, 3])).sum()),
        "seconds": summ.get("seconds"),
        "cpu_seconds": summ.get("cpu_seconds"),
        "reference": ref.label if ref else None,
        "reference_final": target,
        "iters_to_zo_sampled_final": None,
        "n_seeds_reaching": None,
        "mean_curve_reach": None,
    }
    if target is not None:
        per_seed = seed_reach(w, target)
        hits = [k for k in per_seed if k is not None]
        row["iters_to_zo_sampled_final"] = float(np.mean(hits)) if hits else None
        row["n_seeds_reaching"] = len(hits)
        row["reach_per_seed"] = per_seed
        row["mean_curve_reach"] = reach_iteration(w, target)
    return row


def _comparisons(beta: float, curves: dict, iters: int) -> list[dict[str, Any]]:
    """Every non-zero-order job against every zero-order job's final welfare."""
    out = []
    for zo_label, zo in curves.items():
        if not zo_label.startswith("zero_order"):
            continue
        zo_target = float(zo["welfare"][-1].mean())
        for label, v in curves.items():
            if label.startswith("zero_order"):
                continue
            reach = reach_iteration(v["welfare"], zo_target)
            hits = [k for k in seed_reach(v["welfare"], zo_target) if k is not None]
            out.append(
                {
                    "lam": beta,
                    "algo": label,
                    "zero_order": zo_label,
                    "zero_order_final_welfare": zo_target,
                    "iterations_to_reach": reach,
                    "ratio": None if reach is None else reach / iters,
                    "seed_mean_reach": float(np.mean(hits)) if hits else None,
                    "n_seeds_reaching": len(hits),
                }
            )
    return out


def _acceptance(
    beta: float, beta_jobs: list[Job], rows: dict[str, dict], iters: int
) -> list[dict[str, Any]]:
    """Per HPGD job: iterations to the reference's final welfare and the margin over naive."""
    out = []
    for j in beta_jobs:
        if j.algo != "hpgd":
            continue
        h = rows[j.label]
        naive = rows.get(f"naive_s{j.settings.episodes * EconomyConfig().episode_length}")
        entry: dict[str, Any] = {
            "lam": beta,
            "hpgd": j.label,
            "reference": h["reference"],
            "iters_to_reference_final": h["iters_to_zo_sampled_final"],
            "n_seeds_reaching": h["n_seeds_reaching"],
            "reach_fraction": None
            if h["iters_to_zo_sampled_final"] is None
            else h["iters_to_zo_sampled_final"] / iters,
            "naive": None if naive is None else naive["algo"],
            "hpgd_minus_naive": None,
            "hpgd_minus_naive_in_se": None,
        }
        if naive is not None:
            diff = h["final_mean"] - naive["final_mean"]
            se = float(np.hypot(h["final_se"], naive["final_se"]))
            entry["hpgd_minus_naive"] = diff
            entry["hpgd_minus_naive_in_se"] = diff / se if se > 0 else None
        out.append(entry)
    return out


def summarise(jobs: Sequence[Job], summaries: Sequence[dict], out: Path) -> dict[str, Any]:
    """Cross-job summary and plots. ``rows``: one per job (final welfare mean ± s.e., final rates,
    half-gain iteration, seeds whose welfare rose, seeds with the VAT ordered by preference
    ``v2 < v1 < v3``, and the iterations to reach the ``zero_order_sampled`` reference's final
    welfare: per seed, their mean over the seeds that reach it, how many do, and the iteration of
    the seed-mean curve). ``comparisons``: every algorithm vs every zero-order job's final
    welfare. ``acceptance``: per lambda, HPGD vs the reference and vs naive (same budget)."""
    by_label = {(j.beta, j.label): s for j, s in zip(jobs, summaries)}
    report: dict[str, Any] = {
        "jobs": list(summaries),
        "rows": [],
        "comparisons": [],
        "acceptance": [],
    }
    for beta in sorted({j.beta for j in jobs}):
        beta_jobs = sorted((j for j in jobs if j.beta == beta), key=lambda j: j.label)
        curves = {j.label: _load_curves(j, out) for j in beta_jobs}
        iters = beta_jobs[0].iters
        ref = _reference(beta_jobs)
        _plot_temperature(beta, beta_jobs, curves, ref, out)
        target = float(curves[ref.label]["welfare"][-1].mean()) if ref else None
        rows = [_row(j, curves[j.label], by_label[(beta, j.label)], ref, target) for j in beta_jobs]
        report["rows"] += rows
        report["comparisons"] += _comparisons(beta, curves, iters)
        by_algo = {row["algo"]: row for row in rows}
        report["acceptance"] += _acceptance(beta, beta_jobs, by_algo, iters)
    from align_cbrl.utils.io import atomic_write_json

    atomic_write_json(out / "summary.json", report)
    return report


def discover(out: str | os.PathLike[str]) -> tuple[list[Job], list[dict]]:
    """Jobs and summaries of every finished job under ``out`` (``lam*/*/summary.json``)."""
    import json

    jobs, summaries = [], []
    for path in sorted(Path(out).glob("lam*/*/summary.json")):
        config = json.loads((path.parent / "config.json").read_text())
        known = {f.name for f in fields(AlgoSettings)}
        raw = {k: v for k, v in config["settings"].items() if k in known}
        if config["algo"] != "hpgd":  # options only HPGD reads: keep the defaults
            for k in ("form", "leader_q", "critic", "follower_transition"):
                raw.pop(k, None)
        if config["algo"] != "zero_order_sampled":
            for k in ("zo_episodes", "zo_crn"):
                raw.pop(k, None)
        settings = AlgoSettings(**raw)
        jobs.append(
            Job(
                config["algo"],
                float(config["lam"]),
                tuple(config["seeds"]),
                int(config["iters"]),
                settings,
                int(config["economy"]["n_bins"]),
            )
        )
        summaries.append(json.loads(path.read_text()))
    if not jobs:
        raise FileNotFoundError(f"no finished tax-design jobs under {out} (lam*/*/summary.json)")
    return jobs, summaries


def make_jobs(
    algos: Sequence[str],
    betas: Sequence[float],
    seeds: Sequence[int],
    iters: int,
    settings: AlgoSettings,
    zo_cs: Sequence[float],
    n_bins: int = 101,
    budgets: Sequence[int] | None = None,
) -> list[Job]:
    """One job per (algorithm, temperature), per ``c`` for the zero-order methods and per HPGD / naive
    budget (``budgets``: episodes per iteration, default ``[settings.episodes]``); validates the
    inputs."""
    algos = [check_algorithm(a, ALGORITHMS) for a in algos]
    for beta in betas:
        if not beta > 0:
            raise ValueError(f"household temperature lam must be > 0, got {beta}")
    if not seeds:
        raise ValueError("need at least one seed")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    EconomyConfig(n_bins=n_bins)  # validates the grid size
    for c in zo_cs:
        if not c > 0:
            raise ValueError(f"zero-order constant c must be > 0, got {c}")
    budgets = [settings.episodes] if budgets is None else list(budgets)
    jobs = []
    for beta in betas:
        for a in algos:
            if a.startswith("zero_order"):
                variants = [{"zo_c": c} for c in zo_cs]
            elif a in ("hpgd", "naive"):
                variants = [{"episodes": e} for e in budgets]
            else:
                variants = [{}]
            # exact ascent draws nothing: every seed would give the same run
            job_seeds = tuple(seeds[:1]) if a == "exact" else tuple(seeds)
            for v in variants:
                s = AlgoSettings(**{**asdict(settings), **v})  # validates each budget
                jobs.append(Job(a, float(beta), job_seeds, iters, s, n_bins))
    return sorted(jobs, key=lambda j: -_cost(j))


def _cost(job: Job) -> float:
    """Rough CPU milliseconds per outer iteration and 10 runs (measured, 101 bins), used to start
    the longest jobs first so that the pool stays busy."""
    st = job.settings
    return {
        "hpgd": 80 + 0.45 * st.episodes,
        "naive": 60 + 0.35 * st.episodes,
        "zero_order_sampled": 110 + 0.2 * st.zo_episodes,
        "zero_order": 110.0,
        "exact": 60.0,
    }[job.algo]


def run_sweep(
    jobs: Sequence[Job], out: str | os.PathLike[str], workers: int = 2, progress: bool = True
) -> dict[str, Any]:
    """Run ``jobs`` with ``workers`` processes (1 = in this process) and summarise."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if workers == 1:
        summaries = [run_job(j, str(out_path), progress) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            futures = [
                pool.submit(run_job, j, str(out_path), progress, i % workers)
                for i, j in enumerate(jobs)
            ]
            summaries = [f.result() for f in futures]
    report = summarise(jobs, summaries, out_path)
    report["wall_seconds"] = time.perf_counter() - t0
    from align_cbrl.utils.io import atomic_write_json

    atomic_write_json(out_path / "summary.json", report)
    return report


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
