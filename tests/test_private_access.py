"""The trainer's seams are public: no code reaches into ``HPGDTrainer``'s private state, nor
into the private state of the trainer package's other objects (estimators, the callback,
tracking, the group sampler, the rewards), from outside.

Scanned (the ``ast`` of every ``.py`` file): ``align_cbrl/`` except
``align_cbrl/trainer/hpgd_trainer.py`` (the owner of that state), ``recipes/`` and ``bench/``.
An *access* is an attribute ``R._name`` (read, write or delete; ``_name`` one leading
underscore, not a dunder) whose receiver ``R`` is not the object's own ``self`` / ``cls`` /
``super()``. Two rules, each reported as ``file:line: R._name (rule)``:

1. **HPGDTrainer's private state.** ``_name`` is one that ``HPGDTrainer`` defines privately:
   a ``_method`` or ``_property`` of the class, or an attribute it assigns as ``self._name``;
   the names are read from ``hpgd_trainer.py`` itself, so a new private attribute is covered
   at once. The receiver's name does not matter: ``trainer._x``, ``self.trainer._x``,
   ``self._trainer._x`` and ``tr._x`` are all reported. (TRL's own trainer objects are also
   called ``trainer``; what sets ours apart is the attribute: the TRL adapter's
   ``trainer._step`` / ``t._metrics`` / ``trainer._acbrl_kl_term`` are TRL-trainer attributes,
   not ``HPGDTrainer``'s, and are not reported.)
2. **The trainer package's other objects** (the ``_zo_prev``-style reach into another object,
   e.g. ``trainer.estimator._perturbed`` or ``callback._trl_metrics``). ``_name`` is defined
   privately (as above) by a class of ``align_cbrl/trainer/``, and the access is outside that
   class's own module. Not applied to the TRL adapter modules ``align_cbrl/followers/trl_*.py``:
   their receivers are TRL objects (the adapter is where TRL internals are touched, by design),
   and the followers layer cannot hold a trainer-package object other than the reward function
   it is given, because it does not import the trainer (``tests/test_import_rules.py``).

Each rule is shown to fail on a source string that breaks it
(:func:`test_each_rule_reports_what_it_forbids`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINER_PACKAGE = ROOT / "align_cbrl" / "trainer"
HPGD_TRAINER = TRAINER_PACKAGE / "hpgd_trainer.py"
SCANNED = ("align_cbrl", "recipes", "bench")
TRL_ADAPTER_GLOB = "align_cbrl/followers/trl_*.py"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(cls: ast.ClassDef) -> set[str]:
    """The private methods / properties of ``cls`` and the attributes it assigns to
    ``self._name`` anywhere in its body."""
    names = {
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and _is_private(n.name)
    }
    for n in ast.walk(cls):
        if (
            isinstance(n, ast.Attribute)
            and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
            and _is_private(n.attr)
        ):
            names.add(n.attr)
    return names


def _class_privates(path: Path) -> dict[str, set[str]]:
    """``{class name: its private names}`` for every class defined in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: _private_names(n) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}


def trainer_privates() -> set[str]:
    """Rule 1's names: what ``HPGDTrainer`` defines privately."""
    return _class_privates(HPGD_TRAINER)["HPGDTrainer"]


def package_privates() -> dict[str, set[str]]:
    """Rule 2's names: ``{private name: the trainer-package modules (relative paths) whose
    classes define it}``."""
    out: dict[str, set[str]] = {}
    for path in sorted(TRAINER_PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for names in _class_privates(path).values():
            for name in names:
                out.setdefault(name, set()).add(rel)
    return out


def _own(receiver: ast.expr) -> bool:
    """``self`` / ``cls`` / ``super()``: the object's own attributes."""
    if isinstance(receiver, ast.Name):
        return receiver.id in ("self", "cls")
    return (
        isinstance(receiver, ast.Call)
        and isinstance(receiver.func, ast.Name)
        and receiver.func.id == "super"
    )


def private_accesses(
    source: str,
    rel: str,
    trainer_names: set[str],
    package_names: dict[str, set[str]],
) -> list[str]:
    """The accesses of ``source`` (the file ``rel``, relative to the repository root) that
    break a rule (module docstring), as ``rel:line: R._name (rule)``."""
    rule2 = not Path(rel).match(TRL_ADAPTER_GLOB)
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        if _own(node.value):
            continue
        where = f"{rel}:{node.lineno}: {ast.unparse(node)}"
        if node.attr in trainer_names:
            bad.append(f"{where} (HPGDTrainer's private state)")
        elif rule2 and rel not in package_names.get(node.attr, {rel}):
            owners = ", ".join(sorted(package_names[node.attr]))
            bad.append(f"{where} (private state of a class in {owners})")
    return bad


def _scanned_files() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if p != HPGD_TRAINER]


def test_no_code_reaches_into_private_trainer_state():
    trainer_names, package_names = trainer_privates(), package_privates()
    bad = []
    for path in _scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        bad += private_accesses(path.read_text(encoding="utf-8"), rel, trainer_names, package_names)
    assert not bad, "private state read from outside its object:\n" + "\n".join(bad)


def test_the_rules_know_the_private_names():
    """The names the rules look for are read from the source (so the rules are not empty)."""
    assert {"_save", "_restore", "_zo_gen"} <= trainer_privates()
    owners = package_privates()
    assert owners["_perturbed"] == {"align_cbrl/trainer/strategies.py"}
    assert "align_cbrl/trainer/callback.py" in owners["_trl_metrics"]


RULE_1, RULE_2 = "HPGDTrainer's private state", "private state of a class in"
FORBIDDEN = {  # source -> (its file, the access reported, the start of the rule's words)
    # rule 1: HPGDTrainer's private names, whatever the receiver is called
    "trainer._zo_gen.get_state()": ("align_cbrl/x.py", "trainer._zo_gen", RULE_1),
    "self.trainer._save(3)": ("bench/x.py", "self.trainer._save", RULE_1),
    "self._trainer._plan = None": ("recipes/x.py", "self._trainer._plan", RULE_1),
    "tr._restore(path)": ("align_cbrl/trainer/follower_schedule.py", "tr._restore", RULE_1),
    "del run.trainer._x0": ("align_cbrl/x.py", "run.trainer._x0", RULE_1),
    # rule 1 holds in the TRL adapter too
    "trainer._save(1)": ("align_cbrl/followers/trl_compat.py", "trainer._save", RULE_1),
    # rule 2: the trainer package's other objects, outside their own module
    "trainer.estimator._perturbed": (
        "align_cbrl/trainer/follower_schedule.py",
        "trainer.estimator._perturbed",
        f"{RULE_2} align_cbrl/trainer/strategies.py)",
    ),
    "cb._trl_metrics.clear()": ("recipes/x.py", "cb._trl_metrics", RULE_2),
    "tracking._prev_leader = {}": ("bench/x.py", "tracking._prev_leader", RULE_2),
}


@pytest.mark.parametrize("source", list(FORBIDDEN))
def test_each_rule_reports_what_it_forbids(source):
    rel, access, rule = FORBIDDEN[source]
    bad = private_accesses(source, rel, trainer_privates(), package_privates())
    assert len(bad) == 1 and bad[0].startswith(f"{rel}:1: {access} ({rule}"), bad


@pytest.mark.parametrize(
    ("source", "rel"),
    [
        ("self._zo_gen.get_state()", "align_cbrl/x.py"),  # an object's own state
        ("super()._save()", "align_cbrl/x.py"),
        ("trainer.estimator.state_dict()", "align_cbrl/x.py"),  # public seams
        ("trainer.sampler.state()", "align_cbrl/trainer/follower_schedule.py"),
        ("os._exit(1)", "align_cbrl/trainer/faults.py"),  # not a trainer-package name
        ("trainer._step = 0", "align_cbrl/followers/trl_compat.py"),  # TRL's trainer
        ("t._metrics['train']", "align_cbrl/followers/trl_compat.py"),  # TRL's, see rule 2
        ("est._perturbed", "align_cbrl/trainer/strategies.py"),  # inside the owner module
    ],
)
def test_allowed_accesses_are_not_reported(source, rel):
    assert private_accesses(source, rel, trainer_privates(), package_privates()) == []
