"""Test-wide settings: single-threaded math (2-core machine) and offline Hugging Face."""

from align_cbrl.utils.env import set_cpu_defaults

set_cpu_defaults()
