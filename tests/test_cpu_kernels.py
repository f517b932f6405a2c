"""The quickstart's pinned CPU kernel paths (align_cbrl.utils.env.pin_cpu_kernels): set on x86-64
CPUs with AVX2 unless the user set them, and honoured by torch when set before its first
operation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from align_cbrl.utils import env


def test_pins_only_unset_variables_on_avx2_cpus(monkeypatch):
    for key in env.KERNEL_PINS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # the user's choice stays
    monkeypatch.setattr(env, "_x86_with_avx2", lambda: True)
    assert env.pin_cpu_kernels() == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setattr(env, "_x86_with_avx2", lambda: False)  # e.g. Arm, or no AVX2
    assert env.pin_cpu_kernels() == {} and "ATEN_CPU_CAPABILITY" not in os.environ


@pytest.mark.skipif(not env._x86_with_avx2(), reason="needs an x86-64 CPU with AVX2")
@pytest.mark.parametrize(("preset", "expected"), [(None, "AVX2"), ("default", "DEFAULT")])
def test_torch_takes_the_pinned_path(preset, expected):
    code = (
        "from align_cbrl.utils.env import pin_cpu_kernels, cpu_kernel_paths; pin_cpu_kernels();"
        "import torch; torch.ones(3).sum(); print(torch.backends.cpu.get_cpu_capability());"
        "print(cpu_kernel_paths())"
    )
    run_env = {k: v for k, v in os.environ.items() if k not in env.KERNEL_PINS}
    if preset is not None:
        run_env["ATEN_CPU_CAPABILITY"] = preset
    out = subprocess.run(
        [sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == expected
    assert out[1].startswith(f"torch {expected}, MKL_CBWR=AVX2")
