"""Tiny local model factory: build/cache/reload, tokenizers, exact completion log-probs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from align_cbrl.models import (
    build_tiny_lm,
    build_word_tokenizer,
    completion_logprobs,
    enumerate_completions,
    load_tiny_lm,
)

WORDS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def word_dir(tmp_path_factory):
    return build_tiny_lm("word", cache_dir=tmp_path_factory.mktemp("cache"), words=WORDS)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_build_caches_and_reloads_identically(tmp_path, word_dir):
    p1 = build_tiny_lm("word", cache_dir=tmp_path, words=WORDS, seed=3)
    mtime = (p1 / "model.safetensors").stat().st_mtime_ns
    p2 = build_tiny_lm("word", cache_dir=tmp_path, words=WORDS, seed=3)
    assert p1 == p2
    assert (p2 / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    m1, _ = load_tiny_lm(p1)
    m2, _ = load_tiny_lm(p2)
    s1, s2 = _state(m1), _state(m2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    # deterministic build: same spec elsewhere gives the same weights; another seed does not
    m3, _ = load_tiny_lm(build_tiny_lm("word", cache_dir=tmp_path / "other", words=WORDS, seed=3))
    assert all(torch.equal(s1[k], v) for k, v in _state(m3).items())
    p4 = build_tiny_lm("word", cache_dir=tmp_path, words=WORDS, seed=4)
    assert p4 != p1
    m4, _ = load_tiny_lm(p4)
    assert not torch.equal(
        s1["model.embed_tokens.weight"], m4.state_dict()["model.embed_tokens.weight"]
    )


def test_word_tokenizer_one_token_per_word(word_dir):
    model, tok = load_tiny_lm(word_dir)
    assert len(tok) == len(WORDS) + 1 == model.config.vocab_size
    assert tok.eos_token_id == tok.pad_token_id == len(WORDS)
    assert tok("a c d")["input_ids"] == [0, 2, 3]
    assert tok.decode([1, 0, tok.eos_token_id], skip_special_tokens=True) == "b a"
    with pytest.raises(Exception, match=r"UNK|unk"):
        tok("a zebra")
    with pytest.raises(ValueError, match="duplicates"):
        build_word_tokenizer(["a", "a"])
    with pytest.raises(ValueError, match="whitespace"):
        build_word_tokenizer(["a b"])


def test_bpe_tokenizer_roundtrip(tmp_path):
    path = build_tiny_lm("bpe", cache_dir=tmp_path, hidden_size=16, num_hidden_layers=1)
    model, tok = load_tiny_lm(path)
    text = "Explain why the sky is blue? Ünïcode too: 42!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert tok.eos_token is not None and tok.pad_token_id == tok.eos_token_id


def test_build_errors(tmp_path):
    with pytest.raises(ValueError, match="words"):
        build_tiny_lm("word", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="kind"):
        build_tiny_lm("gpt5", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown LlamaConfig"):
        build_tiny_lm("bpe", cache_dir=tmp_path, hiden_size=3)
    with pytest.raises(FileNotFoundError, match="build_tiny_lm"):
        load_tiny_lm(tmp_path / "nope")


def _manual_logprob(model, prompt_ids, completion):
    """Token-by-token autoregressive log-prob, one unpadded sequence at a time."""
    total = 0.0
    ids = list(prompt_ids)
    for t in completion:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        total += torch.log_softmax(logits, -1)[t].item()
        ids.append(t)
    return total


def test_completion_logprobs_exact_and_normalised(word_dir):
    model, tok = load_tiny_lm(word_dir)
    seqs, toks = enumerate_completions(len(WORDS), 3, tok.eos_token_id)
    assert len(seqs) == 1 + 4 + 16 + 64
    assert toks[0] == [tok.eos_token_id] and toks[-1] == [3, 3, 3]
    prompts = ["a", "b c", "d d a b"]  # different lengths: exercises left padding
    lp = completion_logprobs(model, tok, prompts, toks, batch_size=37)
    assert lp.shape == (3, len(toks))
    torch.testing.assert_close(
        lp.exp().sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    for i, p in enumerate(prompts):
        pids = tok(p)["input_ids"]
        for j in (0, 5, 30, len(toks) - 1):
            assert lp[i, j].item() == pytest.approx(_manual_logprob(model, pids, toks[j]), abs=1e-5)
