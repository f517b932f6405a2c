"""YAML configs into (nested) dataclasses, with command-line overrides.

Follows TRL's ``TrlParser`` conventions -- ``--config file.yaml`` supplies values, ``--field value``
on the command line overrides them, an ``env:`` mapping in the YAML sets environment variables --
and extends them to nested sections: ``--leader.lr 0.05`` or ``--followers.0.beta 0.2`` override
one field of a nested dataclass or list element. Values given on the command line are parsed as
YAML scalars (``0.1`` -> float, ``true`` -> bool, ``[1, 2]`` -> list).

:func:`pop_flags` takes a command's own switches (``--resume``, ``--debug_sync DIR``) off the
argument list first; the CLI and the recipes share it.

Errors name the offending key and say what is allowed: unknown keys list the valid ones (with a
close-match suggestion), type mismatches give the expected type. Files are read with
``yaml.safe_load`` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from align_cbrl.utils.suggest import did_you_mean

__all__ = [
    "ConfigError",
    "add_config_arguments",
    "field_type",
    "from_dict",
    "is_bool_field",
    "load_config",
    "parse_overrides",
    "pop_flags",
    "set_dotted",
    "setting",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, with the dotted path of the offending key."""


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config dataclass field with its help text: ``field(default=default,
    metadata={"help": doc})``, or ``default_factory=factory`` for mutable defaults. The
    ``align-cbrl`` CLI and TRL's ``TrlParser`` show ``metadata["help"]``."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": doc})
    return dataclasses.field(default=default, metadata={"help": doc})


def _suggest(key: str, options: Sequence[str]) -> str:
    return f"{did_you_mean(key, options)}; valid keys: {', '.join(sorted(options))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (dataclasses, lists, dicts, unions, scalars)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            with contextlib.suppress(ConfigError):
                return _coerce(value, arg, path)
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            hint = did_you_mean(value, args)
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path=path)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, rejecting unknown keys (one-line
    ``unknown config key ...`` errors with the closest valid key)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(str(key), list(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in {path}" if path else ""
        raise ConfigError(f"missing required config key(s){where}: {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list structure (for JSON/YAML dumps)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b]...[z] = value`` for ``dotted = "a.b...z"`` (list entries by index,
    missing mappings and lists created on the way), as a command-line override does."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(f"--{dotted}: index {idx} out of range (list has {len(node)})")
            node = node[idx]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ConfigError(f"--{dotted}: index {idx} out of range (list has {len(node)})")
        node[idx] = value
    else:
        node[last] = value


def field_type(cls: Any, dotted: str) -> Any:
    """The annotated type of the (nested) field ``dotted`` of dataclass ``cls`` (list entries by
    index: ``followers.0.beta``); ``None`` when there is no such field."""
    tp: Any = cls
    for part in dotted.split("."):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            tp = inner[0] if len(inner) == 1 else tp
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif (origin in (list, Sequence) or tp is list) and part.isdigit():
            tp = args[0] if args else Any
        else:
            return None
    return tp


def is_bool_field(tp: Any) -> bool:
    """``True`` for ``bool`` and unions that accept a bool (``bool | str``)."""
    if tp is bool:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in typing.get_args(tp)


def parse_overrides(
    argv: Sequence[str], cls: type | None = None
) -> tuple[str | None, dict[str, Any]]:
    """Split ``[--config F] [--a.b V | --a.b=V]...`` into the config path and a dotted mapping.

    Keys may use dashes or underscores (``--output-dir`` = ``--output_dir``). Values are YAML
    scalars. With the config dataclass ``cls``, a boolean key also works as a flag:
    ``--progress`` (true) and ``--no-progress`` (false), besides ``--progress false``."""
    config_path = None
    overrides: dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; overrides look like --key value")
        key, eq, val = tok[2:].partition("=")
        key = key.replace("-", "_")
        i += 1
        if not eq:
            flag = None
            negated = cls is not None and key.startswith("no_") and field_type(cls, key) is None
            if negated and is_bool_field(field_type(cls, key[3:])):
                key, flag = key[3:], False
            at_flag = i >= len(argv) or argv[i].startswith("--")
            if flag is None and cls is not None and at_flag and is_bool_field(field_type(cls, key)):
                flag = True
            if flag is not None:
                overrides[key] = flag
                continue
            if i >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            val = argv[i]
            i += 1
        if key == "config":
            config_path = val
            continue
        try:
            overrides[key] = yaml.safe_load(val) if val != "" else ""
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"--{key} {val!r} is not a valid YAML value ({first})") from exc
    return config_path, overrides


def pop_flags(
    argv: Sequence[str], switches: Sequence[str] = (), options: Sequence[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Remove ``--switch`` (boolean) and ``--option VALUE`` arguments from ``argv``.

    Returns ``({name: value}, remaining)``; absent switches are ``False``, absent options
    ``None``. The remaining arguments are the config overrides for :func:`parse_overrides`."""
    rest = list(argv)
    found: dict[str, Any] = {s.lstrip("-").replace("-", "_"): False for s in switches}
    found.update({o.lstrip("-").replace("-", "_"): None for o in options})
    for s in switches:
        while s in rest:
            rest.remove(s)
            found[s.lstrip("-").replace("-", "_")] = True
    for o in options:
        key = o.lstrip("-").replace("-", "_")
        for i, tok in enumerate(rest):
            if tok == o:
                if i + 1 >= len(rest):
                    raise ValueError(f"{o} needs a value")
                found[key] = rest[i + 1]
                del rest[i : i + 2]
                break
            if tok.startswith(o + "="):
                found[key] = tok.split("=", 1)[1]
                del rest[i]
                break
    return found, rest


# --------------------------------------------------------------------------- help text
def _metavar(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        return "LIST"
    if origin in (dict, Mapping) or tp is dict:
        return "MAPPING"
    names = {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}
    return names.get(tp, "VALUE")


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section_type(tp: Any) -> tuple[type | None, bool]:
    """``(dataclass, is_list)`` when ``tp`` is a dataclass or a list of dataclasses."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp, False
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def add_config_arguments(parser: Any, cls: type) -> None:
    """Document every key of config dataclass ``cls`` on an ``argparse`` parser: one argument
    group per section (top level, nested dataclasses, lists of dataclasses as ``name.N``), each
    key with its type, default and help text from the field's ``metadata["help"]`` (the
    convention of TRL's ``HfArgumentParser``). Used for ``--help`` output only; the values are
    parsed by :func:`parse_overrides`."""

    def add_section(title: str, tp: type, prefix: str, description: str | None) -> None:
        group = parser.add_argument_group(title, description)
        hints = typing.get_type_hints(tp)
        nested = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            ftp = hints[f.name]
            sub, is_list = _section_type(ftp)
            if sub is not None:
                nested.append((f, sub, is_list))
                continue
            key = f"--{prefix}{f.name}"
            names = [key]
            if is_bool_field(ftp):
                names.append(f"--no-{prefix}{f.name}")
            default = _field_default(f)
            text = str(f.metadata.get("help", "")).strip()
            if default is dataclasses.MISSING:
                text += " (required)"
            else:
                text += f" (default: {_yaml_value(default)})"
            kwargs: dict[str, Any] = (
                {"action": "store_true"} if is_bool_field(ftp) else {"metavar": _metavar(ftp)}
            )
            group.add_argument(
                *names, help=text.replace("%", "%%"), dest=f"{prefix}{f.name}", **kwargs
            )
        for f, sub, is_list in nested:
            name = f"{prefix}{f.name}.N" if is_list else f"{prefix}{f.name}"
            help_text = str(f.metadata.get("help", "")).strip() or None
            kind = f"{sub.__name__}, a list: N = 0, 1, ..." if is_list else sub.__name__
            add_section(f"{name} ({kind})", sub, f"{name}.", help_text)

    add_section("config keys (top level)", cls, "", None)


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Read ``path`` (YAML mapping), apply dotted ``overrides``, build ``cls``; sets ``env:`` vars."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            yamls = sorted(q.name for q in p.glob("*.yaml"))
            hint = f" (it holds {', '.join(yamls)})" if yamls else ""
            raise ConfigError(f"--config {p} is a directory; give a YAML file{hint}")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must contain a YAML mapping at the top level")
        data = loaded
    env = data.pop("env", None)
    if env is not None:
        if not isinstance(env, dict):
            raise ConfigError("`env` must be a mapping of environment variables")
        for k, v in env.items():
            os.environ[str(k)] = str(v)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return from_dict(cls, data)
