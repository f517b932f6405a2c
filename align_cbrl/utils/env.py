"""Process defaults shared by the command line, the quickstart, the recipes and the tests:
single-threaded math, offline Hugging Face, a non-interactive plotting backend, and quiet
library logging."""

from __future__ import annotations

import os
import warnings

__all__ = ["ENV_DEFAULTS", "quiet_libraries", "set_cpu_defaults"]

ENV_DEFAULTS: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}
"""Environment variables set unless already set (call before torch is imported)."""


def set_cpu_defaults(threads: int | None = 1) -> None:
    """Set :data:`ENV_DEFAULTS` (an already-set variable is left alone), then
    ``torch.set_num_threads(threads)``; ``threads=None`` takes ``$OMP_NUM_THREADS``."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]) if threads is None else threads)


def quiet_libraries() -> None:
    """Hide transformers' per-load progress bars and deprecation chatter (errors still show)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
