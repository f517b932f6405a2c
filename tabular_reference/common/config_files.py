"""YAML (or JSON) files holding one mapping: run configs, selected settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_mapping"]


def read_mapping(path: Path, what: str, missing_hint: str = "") -> dict[str, Any]:
    """The mapping stored in ``path`` (YAML; JSON is YAML). One-line errors:
    ``FileNotFoundError`` (with ``missing_hint``) or ``ValueError("malformed <what> ...")``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}{missing_hint}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"malformed {what} {path}: {' '.join(str(exc).split())}") from exc
    if isinstance(data, dict):
        return data
    raise ValueError(f"malformed {what} {path}: expected a mapping, got {type(data).__name__}")
