"""Leader / incentive models and the upper objective (``docs/theory.md`` §1-§3)."""

from __future__ import annotations

import json

import pytest
import torch

from align_cbrl.leaders import (
    NeuralShapingLeader,
    WeightLeader,
    build_leader,
    known_leaders,
    load_leader,
)
from align_cbrl.objective import BilevelRewards

NAMES = ["len", "kw", "fmt"]
S = torch.tensor(
    [[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.5, -1.0, 1.0], [2.0, 1.0, 0.0]], dtype=torch.float64
)
CTX = ["x", "y", "x", "z"]


def test_free_weights_per_context_table() -> None:
    lead = WeightLeader(NAMES, contexts=["x", "y", "z"])
    with torch.no_grad():
        lead.theta.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.0, 0.0, 4.0]]))
    inc = lead(S, CTX)
    expected = torch.tensor([1 + 4 + 0, -3 + 0 + 0, 0.5 - 2 + 3, 0 + 0 + 0], dtype=torch.float64)
    assert torch.allclose(inc, expected)
    # LongTensor rows give the same answer
    assert torch.allclose(lead(S, torch.tensor([0, 1, 0, 2])), expected)
    # shared weights ignore contexts
    shared = WeightLeader(NAMES, init_weights={"kw": 2.0})
    assert torch.allclose(shared(S), 2 * S[:, 1])


def test_unknown_context_error_and_declared_default() -> None:
    lead = WeightLeader(NAMES, contexts=["x", "y"], init_std=0.1)
    with pytest.raises(
        KeyError, match=r"unknown 'category' value 'z' at batch index 3.*known values: \['x', 'y'\]"
    ):
        lead(S, CTX)
    with pytest.raises(IndexError, match="out of range"):
        lead(S, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="pass the batch's context values"):
        lead(S, None)
    with pytest.raises(ValueError, match=r"got 4 'category' contexts for a batch of 3"):
        lead(S[:3], ["x", "y", "x", "y"])
    dflt = WeightLeader(NAMES, contexts=["x", "y"], default_context="y", init_std=0.1)
    with torch.no_grad():
        dflt.theta.copy_(lead.theta)
    out = dflt(S, CTX)
    assert torch.allclose(out[3], lead(S[3:], ["y"])[0])
    with pytest.raises(ValueError, match="default 'q' is not one of"):
        WeightLeader(NAMES, contexts=["x"], default_context="q")


def test_sigmoid_range_and_softmax_budget() -> None:
    sig = WeightLeader(
        NAMES, parametrization="sigmoid", lo=-1.0, hi=2.0, init_weights={"len": 1.5}, init_std=3.0
    )
    w = sig.weight_table()
    assert bool(((w > -1) & (w < 2)).all())
    exact = WeightLeader(
        NAMES, parametrization="sigmoid", lo=-1.0, hi=2.0, init_weights={"len": 1.5}
    )
    assert torch.allclose(
        exact.weight_table()[0], torch.tensor([1.5, 0.5, 0.5], dtype=torch.float64)
    )
    bud = WeightLeader(NAMES, parametrization="softmax_budget", budget=-0.2, init_std=0.5, seed=3)
    th = bud.theta.detach()[0]
    assert bud.theta.shape == (1, 4)  # K + 1 "unused" slot
    assert torch.allclose(bud.weight_table()[0], -0.2 * torch.softmax(th, 0)[:3])
    assert float(bud.weight_table().detach().abs().sum()) < 0.2
    full = WeightLeader(
        NAMES, parametrization="softmax_budget", budget=1.0, unused_slot=False, init_std=0.5
    )
    assert float(full.weight_table().detach().sum()) == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(ValueError, match="hi > lo"):
        WeightLeader(NAMES, parametrization="sigmoid", lo=1.0, hi=1.0)
    with pytest.raises(ValueError, match="parametrization must be one of"):
        WeightLeader(NAMES, parametrization="tanh")


@pytest.mark.parametrize(
    "kw",
    [
        {"parametrization": "sigmoid", "lo": -1.0, "hi": 2.0},
        {"parametrization": "softmax_budget", "budget": -0.2},
        {"parametrization": "free", "cost_coef": 0.3, "cost_kind": "l2"},
    ],
)
def test_incentive_gradients_match_finite_differences(kw) -> None:
    lead = WeightLeader(NAMES, contexts=["x", "y", "z"], init_std=0.7, seed=1, **kw)
    assert torch.autograd.gradcheck(
        lambda th: torch.func.functional_call(lead, {"theta": th}, (S, CTX)),
        (lead.theta.detach().clone().requires_grad_(),),
    )


def test_neural_shaping_head() -> None:
    feats = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lead = NeuralShapingLeader(
        NAMES, feature_dim=5, hidden=[8, 8], contexts=["x", "y", "z"], bound=0.5, seed=2
    )
    out = lead(S, CTX, feats)
    assert out.shape == (4,) and bool((out.abs() < 0.5).all())
    # same as a manual forward through the layers
    inp = torch.cat(
        [feats, S, torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 2]), 3).double()], -1
    )
    h = torch.tanh(lead.mlp[0](inp))
    h = torch.tanh(lead.mlp[2](h))
    assert torch.allclose(out, 0.5 * torch.tanh(lead.mlp[4](h)[:, 0]))
    params = tuple(p.detach().clone().requires_grad_() for p in lead.parameters())
    names = [n for n, _ in lead.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(lead, dict(zip(names, ps)), (S, CTX, feats)), params
    )
    with pytest.raises(ValueError, match=r"features of shape \[4, 5\]"):
        lead(S, CTX, None)
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        lead(S[:, :2], CTX, feats)


def test_cost_and_bilevel_rewards() -> None:
    lead = WeightLeader(NAMES, contexts=["x", "y", "z"], init_std=1.0, seed=5, cost_coef=0.4)
    bl = BilevelRewards(
        lead,
        follower={"weights": {"len": 1.0}},
        upper={"weights": {"kw": 1.0}, "by_context": {"y": {"kw": 0.0, "fmt": 2.0}}},
    )
    out = bl(S, CTX)
    inc = lead(S, CTX)
    assert torch.allclose(out.incentive, inc)
    assert torch.allclose(out.r, S[:, 0] + inc)
    upper = torch.tensor([S[0, 1], 2 * S[1, 2], S[2, 1], S[3, 1]], dtype=torch.float64)
    assert torch.allclose(out.rbar, upper - 0.4 * inc.abs())
    l2 = WeightLeader(NAMES, init_std=1.0, cost_coef=0.4, cost_kind="l2")
    assert torch.allclose(l2.cost(l2(S)), 0.4 * l2(S) ** 2)
    with pytest.raises(ValueError, match="cost_coef must be >= 0"):
        WeightLeader(NAMES, cost_coef=-1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: WeightLeader(
            NAMES,
            contexts=["x", "y", "z"],
            default_context="x",
            parametrization="sigmoid",
            lo=-2.0,
            hi=2.0,
            init_std=0.5,
            cost_coef=0.1,
            init_weights={"kw": 1.0},
        ),
        lambda: NeuralShapingLeader(
            NAMES, feature_dim=2, hidden=[4], contexts=["x", "y", "z"], bound=1.0, seed=3
        ),
    ],
)
def test_save_load_roundtrip_and_corruption(tmp_path, make) -> None:
    lead = make()
    with torch.no_grad():
        for p in lead.parameters():
            p.add_(0.25)  # trained state differs from the initial one
    feats = torch.ones(4, 2, dtype=torch.float64)
    lead.save_pretrained(tmp_path / "ckpt")
    back = load_leader(tmp_path / "ckpt")
    assert type(back) is type(lead) and back.config() == lead.config()
    f = feats if isinstance(lead, NeuralShapingLeader) else None
    assert torch.equal(back(S, CTX, f), lead(S, CTX, f))
    doc = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    doc["leader"]["cost_coef"] = 9.0
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="describe different leaders"):
        load_leader(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors is missing"):
        load_leader(tmp_path / "ckpt")
    doc["format"] = "transformers"  # a language model's config.json is not a leader
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="is not a saved align_cbrl leader"):
        load_leader(tmp_path / "ckpt")


def test_build_leader_from_spec_and_flat_parameters() -> None:
    assert {"weights", "neural"} <= set(known_leaders())
    lead = build_leader(
        {"type": "weights", "component_names": NAMES, "contexts": ["x", "y"], "init_std": 0.3}
    )
    x = lead.flat_parameters()
    assert x.shape == (6,)
    assert torch.equal(lead.unflatten(x)["theta"], lead.theta.detach())
    with pytest.raises(ValueError, match="unknown leader type 'mlp'; known types"):
        build_leader({"type": "mlp"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lr'\]"):
        build_leader({"type": "weights", "component_names": NAMES, "lr": 0.1})
    with pytest.raises(ValueError, match="has 5 entries"):
        lead.unflatten(torch.zeros(5))
