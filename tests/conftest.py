"""Test-wide settings: single-threaded math (2-core machine) and offline Hugging Face."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def econ():
    """The paper's tax-design economy (101 asset bins), built once per test module."""
    from tabular_reference.tax_design.economy import Economy

    return Economy()
