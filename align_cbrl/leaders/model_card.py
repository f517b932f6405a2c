"""The ``README.md`` model card of a saved leader (:mod:`align_cbrl.leaders.pretrained`): what
the leader learned per context (its incentive weights and, where the run measured them, the
incentive paid and its cost), the training summary and the reward it shapes.

The incentive of a weight leader is ``i_x(p, y) = sum_k w_{c(p), k} s_k(p, y)`` (component
scores ``s_k``, the prompt's context ``c(p)``); the leader pays ``cost_coef * |i|`` (``l1``) or
``cost_coef * i^2`` (``l2``) per completion (``docs/theory.md`` §1, §3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["model_card"]

# training-summary keys in the order the card lists them, with their labels
_TRAINING_ROWS = (
    ("estimator", "leader estimator"),
    ("iterations", "leader updates (outer iterations)"),
    ("follower_steps", "follower steps per update"),
    ("objective_estimate", "leader objective F(x), estimate (last update)"),
    ("eval_objective_estimate", "leader objective F(x), held-out estimate"),
    ("objective_exact", "leader objective F(x), exact"),
    ("exact_optimum", "best F(x*) found by exact gradient ascent"),
)


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if math.isfinite(v) else "-"


def _cost_rule(spec: Mapping[str, Any]) -> str:
    coef, kind = spec.get("cost_coef", 0.0), spec.get("cost_kind", "l1")
    if not coef:
        return "The leader pays nothing for its incentives (`cost_coef = 0`)."
    term = "|i|" if kind == "l1" else "i^2"
    return f"The leader pays `{coef:g} * {term}` per completion for an incentive `i`."


def _weights_section(leader: Any, spec: Mapping[str, Any], training: Mapping[str, Any]) -> str:
    names = list(leader.component_names)
    table = getattr(leader, "weight_table", None)
    if table is None:
        n = sum(p.numel() for p in leader.parameters())
        return f"A `{spec['type']}` incentive model with {n} parameters over {names}.\n"
    with torch.no_grad():
        w = table().detach().double()
    idx = getattr(leader, "context_index", None)
    contexts = ["(all)"] if idx is None else [str(v) for v in idx.values]
    measured = training.get("by_context") or {}
    head = ["context", *[f"w[{n}]" for n in names], "incentive paid", "its cost"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, ctx in enumerate(contexts):
        m = measured.get(ctx, {})
        cells = [f"{float(v):+.4f}" for v in w[row]]
        cells += [_num(m.get("incentive")), _num(m.get("cost"))]
        lines.append(f"| {ctx} | " + " | ".join(cells) + " |")
    column = spec.get("context_column", "category")
    where = training.get("by_context_source", "")
    note = f" (means per completion, {where})" if measured and where else ""
    return (
        f"Incentive `i(p, y) = sum_k w[{column}(p), k] * s_k(p, y)`; the learned weights per "
        f"`{column}`, with the incentive paid and its cost{note}:\n\n" + "\n".join(lines) + "\n"
    )


def _training_section(training: Mapping[str, Any]) -> str:
    if not training:
        return "No training summary was saved with this leader.\n"
    rows = [(label, training[k]) for k, label in _TRAINING_ROWS if k in training]
    if "objective_exact" not in training:
        rows.append(("leader objective F(x), exact", "not known (no enumerable task)"))
    lines = ["| | |", "|---|---|", *[f"| {label} | {_num(v)} |" for label, v in rows]]
    return "\n".join(lines) + "\n"


def _rewards_section(rewards: Mapping[str, Any] | None) -> str:
    if rewards is None:
        return (
            "No reward spec was saved: rebuild the reward with "
            "`FrozenShapedReward.from_pretrained(dir, components=..., follower_mix=..., "
            "leader_mix=...)`.\n"
        )
    lines = ["Components (the scores `s_k`):", ""]
    for c in rewards["components"]:
        params = {k: v for k, v in c.items() if k not in ("name", "type")}
        shown = f" `{json.dumps(params)}`" if params else ""
        lines.append(f"* `{c['name']}`: `{c.get('type')}`{shown}")
    lines += [
        "",
        f"Follower's base reward mix `a`: `{json.dumps(rewards.get('follower'))}`",
        "",
        f"Leader's objective mix `b`: `{json.dumps(rewards.get('leader'))}`",
        "",
        f"Context column: `{rewards.get('context_column')}`",
    ]
    return "\n".join(lines) + "\n"


_USAGE = """```python
from align_cbrl import FrozenShapedReward, load_leader

reward = FrozenShapedReward.from_pretrained("path/to/this/folder")  # base mix + frozen incentive
trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=ds, args=...)
leader = load_leader("path/to/this/folder")                          # the leader alone
```
"""


def model_card(leader: Any, doc: Mapping[str, Any]) -> str:
    """The card's Markdown for ``leader`` and its ``config.json`` document ``doc``."""
    spec, training = doc["leader"], doc.get("training") or {}
    parts = [
        "---\nlibrary_name: align_cbrl\ntags:\n- align_cbrl\n- reward-shaping\n- hpgd\n---\n",
        f"# align_cbrl leader: learned incentive (`{spec['type']}`)\n",
        "A reward shaping learned by a leader with HPGD (contextual bilevel RL): its incentive "
        "is added to a follower's base reward, `r = base mix + incentive`. Reuse it frozen as "
        "a TRL reward function (below).\n",
        "## Learned incentive per context\n",
        _weights_section(leader, spec, training),
        _cost_rule(spec) + "\n",
        "## Training summary\n",
        _training_section(training),
        "## Reward\n",
        _rewards_section(doc.get("rewards")),
        "## Use\n",
        _USAGE,
    ]
    return "\n".join(parts)
