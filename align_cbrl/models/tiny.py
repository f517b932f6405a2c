"""Tiny causal language models and tokenizers built locally (random init, no downloads).

Two tokenizer kinds:

* ``"bpe"``: a byte-level BPE trained on a small embedded English corpus, wrapped as a
  :class:`~transformers.PreTrainedTokenizerFast`. Any text can be tokenized. For smoke tests and
  the quickstart.
* ``"word"``: a word-level tokenizer over an explicit vocabulary plus one EOS token (also the pad
  token), one token per word. Built for the enumerable "tiny language" task: the model's output
  vocabulary is *exactly* the completion words plus EOS, so the probabilities of the enumerated
  completions (word sequences up to length ``L``, ending with EOS or truncated at ``L``) sum to 1.
  There is no UNK, BOS or separate pad token that could take probability mass; prompts must be
  written with the same words.

:func:`build_tiny_lm` saves model + tokenizer with ``save_pretrained`` (safetensors) into a cache
directory keyed by a hash of the full build configuration, builds it in a temporary directory
and moves it into place with :func:`os.replace`, so concurrent or interrupted builds never leave
a half-written model. Later calls reuse the cached directory.

:func:`completion_logprobs` computes exact log-probabilities of every enumerated completion under
a causal LM, batched; with the ``"word"`` kind it gives the exact ``pi_ref`` table of the task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from align_cbrl.utils.io import replace_directory

__all__ = [
    "DEFAULT_EOS",
    "TINY_CORPUS",
    "build_bpe_tokenizer",
    "build_tiny_lm",
    "build_word_tokenizer",
    "completion_logprobs",
    "default_cache_dir",
    "enumerate_completions",
    "hf_progress_bars",
    "load_tiny_lm",
    "require_model_dir",
]

DEFAULT_EOS = "<eos>"
_MARKER = "align_cbrl_tiny.json"
_BUILD_VERSION = 1  # bump when the build recipe changes (invalidates old cache entries)

TINY_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A small model learns to write short and helpful answers.",
    "Please answer the question politely and briefly.",
    "The leader pays an incentive when the answer is safe and useful.",
    "Followers are trained with reinforcement learning from a reward model.",
    "Write a short poem about the sea, the sun and the sky.",
    "Explain why the sky is blue in one sentence.",
    "The cat sat on the mat and looked at the bird.",
    "Good answers are clear, correct and kind.",
    "Bad answers are rude, wrong or far too long.",
    "What is two plus two? Two plus two is four.",
    "Tell me a story about a robot who learns to paint.",
    "The weather today is sunny with a light breeze.",
    "Summarize the text in a few words.",
    "Thank you for your help, that was very useful.",
    "Context: science. Question: what is water made of? Answer: hydrogen and oxygen.",
    "Context: cooking. Question: how long to boil an egg? Answer: about nine minutes.",
    "Context: travel. Question: what should I pack? Answer: light clothes and water.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Punctuation: , . ! ? ; : ' \" ( ) - and spaces.",
)

Kind = Literal["bpe", "word"]

_DEFAULT_MODEL_CFG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "initializer_range": 0.2,
}


@contextlib.contextmanager
def hf_progress_bars(enabled: bool) -> Any:
    """With ``enabled=False``, transformers' own progress bars ("Loading weights", "Writing
    model shards") are off within the block and the previous setting is restored afterwards;
    with ``True`` the setting is left as it is (the CLI turns them off globally)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


def default_cache_dir() -> Path:
    """``$ALIGN_CBRL_CACHE/tiny`` if set, else ``~/.cache/align_cbrl/tiny``."""
    root = os.environ.get("ALIGN_CBRL_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "align_cbrl"
    return base / "tiny"


def build_bpe_tokenizer(
    vocab_size: int = 320, corpus: Sequence[str] = TINY_CORPUS, eos_token: str = "<|endoftext|>"
):
    """Train a byte-level BPE on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``.

    The 256 byte symbols are always in the vocabulary, so any text can be encoded. The EOS token
    doubles as the pad token; there is no BOS token (prompts are encoded as they are)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE; use >= 258")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, pad_token=eos_token, padding_side="left"
    )


def build_word_tokenizer(words: Sequence[str], eos_token: str = DEFAULT_EOS):
    """Word-level tokenizer: one token per word of ``words`` (ids ``0..V-1``) plus ``eos_token``
    (id ``V``, also the pad token). Text is split on whitespace and decodes to ``" ".join(words)``.

    Encoding a word outside the vocabulary raises an error (there is deliberately no UNK token:
    it would take probability mass outside the enumerated completions)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(words)
    if not words:
        raise ValueError("build_word_tokenizer needs at least one word")
    bad = [w for w in words if not isinstance(w, str) or not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"words must be non-empty strings without whitespace; got {bad!r}")
    if len(set(words)) != len(words):
        raise ValueError(f"words contain duplicates: {words!r}")
    if eos_token in words:
        raise ValueError(f"eos_token {eos_token!r} must not also be a word")
    vocab = {w: i for i, w in enumerate(words)}
    vocab[eos_token] = len(words)
    # WordLevel needs an unk token name; it is not in the vocabulary, so unknown words fail loudly.
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk-not-in-vocab>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, pad_token=eos_token, padding_side="left"
    )


def _cache_key(spec: dict[str, Any]) -> str:
    import transformers

    payload = dict(spec, _build_version=_BUILD_VERSION, _torch=torch.__version__.split("+")[0])
    payload["_transformers"] = transformers.__version__
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_tiny_lm(
    kind: Kind = "bpe",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    words: Sequence[str] | None = None,
    eos_token: str | None = None,
    bpe_vocab_size: int = 320,
    corpus: Sequence[str] = TINY_CORPUS,
    force: bool = False,
    **cfg: Any,
) -> Path:
    """Build (or reuse) a tiny random-init Llama causal LM + tokenizer and return its directory.

    Args:
        kind: ``"bpe"`` (byte-level BPE trained on ``corpus``) or ``"word"`` (one token per word
            of ``words`` plus EOS; for the enumerable tiny-language task).
        cache_dir: parent directory of the cache; default :func:`default_cache_dir`. The model
            lives in ``<cache_dir>/<kind>-<hash of the full config>``.
        seed: seed of the random initialisation.
        words: the vocabulary for ``kind="word"`` (required there, rejected for ``"bpe"``).
        eos_token: EOS (= pad) token; defaults to ``"<eos>"`` (word) / ``"<|endoftext|>"`` (bpe).
        bpe_vocab_size, corpus: BPE training settings.
        force: rebuild even if a cached copy exists (the new copy replaces the old atomically).
        **cfg: ``LlamaConfig`` overrides (``hidden_size``, ``num_hidden_layers``, ...).

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``.
    """
    from transformers import LlamaConfig

    if kind not in ("bpe", "word"):
        raise ValueError(f"kind must be 'bpe' or 'word', got {kind!r}")
    if kind == "word" and not words:
        raise ValueError("kind='word' needs words=[...] (the completion vocabulary)")
    if kind == "bpe" and words is not None:
        raise ValueError("words=... is only used with kind='word'")
    model_cfg = dict(_DEFAULT_MODEL_CFG)
    unknown = set(cfg) - set(LlamaConfig().to_dict())
    if unknown:
        raise ValueError(f"unknown LlamaConfig fields {sorted(unknown)}")
    model_cfg.update(cfg)
    eos = eos_token or (DEFAULT_EOS if kind == "word" else "<|endoftext|>")
    spec: dict[str, Any] = {"kind": kind, "seed": seed, "eos": eos, "model": model_cfg}
    if kind == "word":
        spec["words"] = list(words or [])
    else:
        spec["bpe_vocab_size"] = bpe_vocab_size
        spec["corpus"] = list(corpus)

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{kind}-{_cache_key(spec)}"
    if (final / _MARKER).is_file() and not force:
        return final
    root.mkdir(parents=True, exist_ok=True)
    if kind == "word":
        tokenizer = build_word_tokenizer(spec["words"], eos_token=eos)
    else:
        tokenizer = build_bpe_tokenizer(bpe_vocab_size, corpus, eos_token=eos)
    _write_model_dir(final, _random_llama(tokenizer, model_cfg, seed), tokenizer, spec, force)
    return final


def _random_llama(tokenizer: Any, model_cfg: dict[str, Any], seed: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` over ``tokenizer`` (seeded, without
    touching the global RNG), sampling with plain temperature 1 by default."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **model_cfg,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
    )
    return model


def _write_model_dir(
    final: Path, model: Any, tokenizer: Any, spec: dict[str, Any], force: bool
) -> None:
    """Save into a hidden sibling, then move it to ``final`` (``force``: replacing the old
    copy; otherwise a copy another process finished first is kept: identical content)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(spec, indent=2, default=str) + "\n")
        if force and final.exists():
            replace_directory(tmp, final)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / _MARKER).is_file():
                    raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)


def require_model_dir(path: str | os.PathLike[str], who: str | None = None) -> Path:
    """``path`` (``~`` expanded) if it holds a ``save_pretrained`` model (``config.json``), else
    a ``FileNotFoundError`` that says how to get one; ``who`` prefixes the message."""
    path = Path(os.path.expanduser(path))
    if not (path / "config.json").is_file():
        prefix = f"{who}: " if who else ""
        raise FileNotFoundError(
            f"{prefix}no model directory at {str(path)!r} (config.json not found); give a "
            "directory written by save_pretrained, or build a tiny local one with "
            "align_cbrl.models.build_tiny_lm('bpe') (model: tiny-word / tiny-bpe in a run config)"
        )
    return path


def load_tiny_lm(path: str | os.PathLike[str]):
    """Load ``(model, tokenizer)`` from a directory made by :func:`build_tiny_lm` (or any local
    causal-LM directory). Raises ``FileNotFoundError`` with a fix when the path is wrong."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = require_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=False)
    return model, tokenizer


def enumerate_completions(
    num_words: int, max_len: int, eos_token_id: int
) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """All completions of the tiny-language task, in a fixed order.

    Word ids are ``0..num_words-1``. Returns ``(word_seqs, token_ids)``: ``word_seqs[j]`` is the
    tuple of word ids (length 0..max_len, shortest first, lexicographic within a length) and
    ``token_ids[j]`` the generated tokens: the words followed by EOS when shorter than
    ``max_len``, the words alone (truncated) at length ``max_len``."""
    import itertools

    if num_words < 1 or max_len < 1:
        raise ValueError("num_words and max_len must be >= 1")
    seqs: list[tuple[int, ...]] = []
    for length in range(max_len + 1):
        seqs.extend(itertools.product(range(num_words), repeat=length))
    toks = [list(s) + ([eos_token_id] if len(s) < max_len else []) for s in seqs]
    return seqs, toks


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completion_token_ids: Sequence[Sequence[int]],
    batch_size: int = 256,
) -> Tensor:
    """Exact ``log pi(y_j | prompt_i)`` for every prompt ``i`` and completion ``j``: ``[P, Y]``.

    ``completion_token_ids[j]`` are the generated token ids of completion ``j`` (including its
    terminating EOS if any). Prompts are tokenized exactly like TRL does
    (``tokenizer(text=prompts)``, no padding). The sum of the token log-probs is computed with
    one forward pass per batch of (prompt, completion) pairs, left-padded with an attention mask
    and explicit position ids so padding cannot change the result. float32 logits,
    ``log_softmax`` over the full vocabulary (no temperature / top-k: the sampling distribution
    of TRL's default generation settings)."""
    if len(prompts) == 0 or len(completion_token_ids) == 0:
        raise ValueError("completion_logprobs needs at least one prompt and one completion")
    prompt_ids = tokenizer(text=list(prompts))["input_ids"]
    for p, ids in zip(prompts, prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {p!r} tokenizes to zero tokens; use a non-empty prompt")
    comps = [list(map(int, c)) for c in completion_token_ids]
    if any(len(c) == 0 for c in comps):
        raise ValueError("every completion needs at least one token (an empty one is [eos])")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.empty(len(prompts), len(comps), dtype=torch.float64)
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(comps))]
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            seqs = [list(prompt_ids[i]) + comps[j] for i, j in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, width - len(s) :] = torch.tensor(s)
                mask[r, width - len(s) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
            ).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            for r, (i, j) in enumerate(chunk):
                n = len(comps[j])
                out[i, j] = tok_lp[r, width - 1 - n :].double().sum()
    finally:
        model.train(was_training)
    return out
