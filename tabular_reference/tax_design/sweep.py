"""Tax-design experiment sweep: (algorithm x temperature [x zero-order c]) jobs, results, plots.

Each job trains all seeds of one (algorithm, lam[, c]) as one batch (:func:`algorithms.run_batch`)
and writes ``OUT/lam{lam}/{label}/`` with ``config.json``, ``metrics.csv`` (iteration, seed,
welfare, tau, v1, v2, v3), ``summary.json`` and ``final_params.safetensors`` (``theta``,
``rates``). Jobs run in a process pool (one torch thread per process). The sweep then writes
``OUT/summary.json`` (final welfare and rates per job, HPGD-vs-zero-order iteration ratio) and the
plots ``welfare_lam{lam}.png`` (mean +- s.e. over seeds, every algorithm) and
``rates_lam{lam}_{label}.png`` (tau, v_1, v_2, v_3 vs iteration).
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

from tabular_reference.common.plots import mean_se, plot_learning_curves
from tabular_reference.common.results import ResultsDir
from tabular_reference.tax_design.algorithms import ALGORITHMS, AlgoSettings, History, run_batch
from tabular_reference.tax_design.economy import Economy, EconomyConfig

__all__ = ["Job", "discover", "make_jobs", "reach_iteration", "run_job", "run_sweep", "summarise"]

RATE_NAMES = ("tau", "v1", "v2", "v3")


@dataclass(frozen=True)
class Job:
    algo: str
    lam: float
    seeds: tuple[int, ...]
    iters: int
    settings: AlgoSettings
    n_bins: int = 101

    @property
    def label(self) -> str:
        if self.algo.startswith("zero-order"):
            return f"{self.algo}_c{self.settings.zo_c:g}"
        return self.algo

    def directory(self, out: Path) -> Path:
        return out / f"lam{self.lam:g}" / self.label


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
        [job.lam] * len(job.seeds),
        list(job.seeds),
        job.iters,
        job.settings,
        progress=progress,
        desc=f"lam={job.lam:g} {job.label}",
        position=position,
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    res = ResultsDir(job.directory(Path(out)))
    res.write_config(
        {
            "algo": job.algo,
            "lam": job.lam,
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
        "lam": job.lam,
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


def _load_curves(job: Job, out: Path) -> dict[str, np.ndarray]:
    from align_cbrl.utils.io import load_safetensors

    arrays = load_safetensors(job.directory(out) / "curves.safetensors")
    return {k: v.numpy() for k, v in arrays.items()}


def summarise(jobs: Sequence[Job], summaries: Sequence[dict], out: Path) -> dict[str, Any]:
    """Cross-job summary (HPGD vs zero-order reach ratio) and plots."""
    report: dict[str, Any] = {"jobs": list(summaries), "comparisons": []}
    for lam in sorted({j.lam for j in jobs}):
        lam_jobs = [j for j in jobs if j.lam == lam]
        curves = {j.label: _load_curves(j, out) for j in lam_jobs}
        x = np.arange(lam_jobs[0].iters + 1)
        plot_learning_curves(
            {k: (x, v["welfare"].T) for k, v in curves.items()},
            out / f"welfare_lam{lam:g}.png",
            ylabel="social welfare F (exact)",
            title=f"Tax design, lambda = {lam:g}: welfare (mean ± s.e. over seeds)",
        )
        for label, v in curves.items():
            plot_learning_curves(
                {name: (x, v["rates"][:, :, i].T) for i, name in enumerate(RATE_NAMES)},
                out / f"rates_lam{lam:g}_{label}.png",
                ylabel="rate",
                title=f"Tax design, lambda = {lam:g}, {label}: tax rates",
            )
        iters = lam_jobs[0].iters
        for zo_label, zo in curves.items():
            if not zo_label.startswith("zero-order"):
                continue
            target = float(zo["welfare"][-1].mean())
            for label, v in curves.items():
                if label.startswith("zero-order"):
                    continue
                reach = reach_iteration(v["welfare"], target)
                report["comparisons"].append(
                    {
                        "lam": lam,
                        "algo": label,
                        "zero_order": zo_label,
                        "zero_order_final_welfare": target,
                        "iterations_to_reach": reach,
                        "ratio": None if reach is None else reach / iters,
                    }
                )
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
    lams: Sequence[float],
    seeds: Sequence[int],
    iters: int,
    settings: AlgoSettings,
    zo_cs: Sequence[float],
    n_bins: int = 101,
) -> list[Job]:
    """One job per (algorithm, lam), and per ``c`` for zero-order; validates the inputs."""
    for a in algos:
        if a not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {a!r}; choose from {', '.join(ALGORITHMS)}")
    for lam in lams:
        if not lam > 0:
            raise ValueError(f"household temperature lam must be > 0, got {lam}")
    if not seeds:
        raise ValueError("need at least one seed")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    EconomyConfig(n_bins=n_bins)  # validates the grid size
    for c in zo_cs:
        if not c > 0:
            raise ValueError(f"zero-order constant c must be > 0, got {c}")
    jobs = []
    for lam in lams:
        for a in algos:
            for c in zo_cs if a.startswith("zero-order") else [settings.zo_c]:
                s = AlgoSettings(**{**asdict(settings), "zo_c": c})
                jobs.append(Job(a, float(lam), tuple(seeds), iters, s, n_bins))
    # Longest first (sampling algorithms), so that the pool stays busy.
    cost = {"hpgd": 3, "naive": 3, "zero-order-sampled": 3, "exact": 2, "zero-order": 1}
    return sorted(jobs, key=lambda j: -cost[j.algo])


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
