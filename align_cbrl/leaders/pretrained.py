"""A trained leader as a Hugging Face style folder (``docs/shaping_artifact.md``):

* ``config.json``: ``{"format": "align_cbrl-leader", "leader": spec, "rewards": reward spec,
  "training": summary}``. ``spec`` is :meth:`Leader.spec` (type, component names, contexts,
  parametrisation, cost); ``rewards`` the components' specs and both mixes
  (:mod:`align_cbrl.rewards.spec`), or ``null``; ``training`` the run's summary, or ``null``;
* ``model.safetensors``: the parameters, with the leader spec in its metadata (a folder whose
  two files describe different leaders is refused);
* ``README.md``: a model card (:mod:`align_cbrl.leaders.model_card`).

Each file is written atomically, the weights first and ``config.json`` last, so a folder with a
``config.json`` is complete. Nothing is unpickled when loading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from align_cbrl.leaders.base import STATE_FILE, Leader, leader_class
from align_cbrl.leaders.model_card import model_card
from align_cbrl.utils.io import (
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_json,
    save_safetensors,
)

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "STATE_FILE",
    "load_leader",
    "push_to_hub",
    "read_pretrained_config",
    "save_pretrained",
]

CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "align_cbrl-leader"


def _rewards_doc(rewards: Any, leader: Leader) -> dict[str, Any] | None:
    """The reward spec of ``rewards``: a mapping as is, or the ``reward_spec()`` of a shaped
    reward (``HPGDReward`` / ``FrozenShapedReward``)."""
    if rewards is None:
        return None
    doc = rewards.reward_spec() if hasattr(rewards, "reward_spec") else rewards
    if not isinstance(doc, Mapping) or "components" not in doc:
        raise TypeError(
            "rewards must be a shaped reward (HPGDReward, FrozenShapedReward) or its "
            "reward_spec() mapping"
        )
    names = [c.get("name") for c in doc["components"]]
    if names != leader.component_names:
        raise ValueError(
            f"the reward's components {names} are not the leader's {leader.component_names}"
        )
    return dict(doc)


def save_pretrained(
    leader: Leader,
    directory: str | os.PathLike[str],
    *,
    rewards: Any = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write the folder (module docstring) and return its path; other files in ``directory``
    are left alone. Everything is checked (JSON-serialisable, components matching the
    leader) before anything is written."""
    spec = leader.spec()
    doc = {
        "format": FORMAT,
        "leader": spec,
        "rewards": _rewards_doc(rewards, leader),
        "training": None if training is None else dict(training),
    }
    try:
        json.dumps(doc, allow_nan=True)
    except TypeError as err:
        raise ValueError(f"save_pretrained: the leader's description is not JSON ({err})") from err
    card = model_card(leader, doc)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes its metadata map in hash order, so two keys would
    # make the bytes of identical leaders differ between processes
    metadata = {"leader": json.dumps(spec, sort_keys=True)}
    save_safetensors(out / STATE_FILE, dict(leader.state_dict()), metadata=metadata)
    atomic_write_text(out / CARD_FILE, card)
    atomic_write_json(out / CONFIG_FILE, doc)
    return out


def read_pretrained_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a saved leader, checked: a folder without it, or another kind of
    ``config.json`` (a language model's), is a one-line error."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        hint = (
            " (it holds a TRL checkpoint's hpgd_leader/: run align-cbrl export on it)"
            if (directory / "hpgd_leader").is_dir()
            else ""
        )
        raise FileNotFoundError(
            f"cannot load a leader from {str(directory)!r}: {CONFIG_FILE} is missing{hint}"
        )
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "leader" not in doc:
        raise ValueError(
            f'{path} is not a saved align_cbrl leader (no "format": "{FORMAT}"); point to '
            "the folder written by save_pretrained"
        )
    return doc


def load_leader(directory: str | os.PathLike[str]) -> Leader:
    """Rebuild the leader saved by :func:`save_pretrained` (only registered leader types)."""
    directory = Path(directory)
    doc = read_pretrained_config(directory)
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"cannot load a leader from {str(directory)!r}: {STATE_FILE} is missing"
        )
    spec = dict(doc["leader"])
    cls = leader_class(spec.pop("type", None), str(directory / CONFIG_FILE))
    from safetensors import safe_open

    with safe_open(str(state_path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("leader")
    if meta is not None and json.loads(meta) != doc["leader"]:
        raise ValueError(
            f"{CONFIG_FILE} and {STATE_FILE} in {str(directory)!r} describe different leaders "
            "(an interrupted save?); save the leader again"
        )
    leader = cls(**spec)
    state = load_safetensors(state_path)
    odd = set(leader.state_dict()) ^ set(state)
    if odd:
        raise ValueError(
            f"{state_path}: tensors {sorted(odd)} do not match leader type {cls.leader_type!r}"
        )
    leader.load_state_dict(state)
    return leader


def push_to_hub(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload align_cbrl leader",
) -> str:
    """Upload a saved leader folder to the Hugging Face Hub model repository ``repo_id``
    (created if missing) with ``huggingface_hub``; returns the commit URL. Needs network
    access and a token (``token`` or ``huggingface-cli login``)."""
    read_pretrained_config(directory)  # only complete leader folders go up
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ImportError(
            "push_to_hub needs the huggingface_hub package: pip install huggingface_hub"
        ) from err
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        repo_type="model",
        commit_message=commit_message,
    )
    return str(getattr(info, "commit_url", info))
