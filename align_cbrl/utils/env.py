"""Process defaults shared by the command line, the quickstart, the recipes and the tests:
single-threaded math, offline Hugging Face, a non-interactive plotting backend, quiet library
logging, and (for the quickstart) pinned CPU kernel paths."""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

__all__ = [
    "ENV_DEFAULTS",
    "KERNEL_PINS",
    "cpu_kernel_paths",
    "pin_cpu_kernels",
    "quiet_libraries",
    "set_cpu_defaults",
]

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


KERNEL_PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels (softmax, sums, ...)
    "MKL_CBWR": "AVX2",  # MKL's code branch (BLAS: the matrix products)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's instruction set
}
"""The kernel paths the quickstart pins on x86-64 CPUs with AVX2 (:func:`pin_cpu_kernels`)."""


def _x86_with_avx2() -> bool:
    """An x86-64 CPU whose flags (``/proc/cpuinfo``) include AVX2 and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return {"avx2", "fma"} <= set(flags.split())


def pin_cpu_kernels() -> dict[str, str]:
    """Pin torch's, MKL's and oneDNN's CPU code paths to AVX2 (:data:`KERNEL_PINS`; a variable
    already set is left alone) and return what was set.

    Float results on a CPU depend on the kernel path: torch dispatches its own kernels by the
    best SIMD level the CPU has (AVX-512 where present) and MKL picks its branch per CPU, and
    each path sums in another order. Over a training run these last-bit differences grow into
    different digits (``docs/quickstart.md``). With the pins every x86-64 CPU with AVX2 takes
    the same path. Only on such CPUs (forcing AVX2 elsewhere would be an illegal instruction);
    call it before the first torch operation."""
    if not _x86_with_avx2():
        return {}
    pinned = {k: v for k, v in KERNEL_PINS.items() if k not in os.environ}
    os.environ.update(pinned)
    return pinned


def cpu_kernel_paths() -> str:
    """The kernel paths in use, e.g. ``"torch AVX2, MKL_CBWR=AVX2, 1 thread"``."""
    import torch

    threads = torch.get_num_threads()
    mkl = os.environ.get("MKL_CBWR", "auto")
    return (
        f"torch {torch.backends.cpu.get_cpu_capability()}, MKL_CBWR={mkl}, {threads} "
        f"thread{'s' if threads != 1 else ''}"
    )
