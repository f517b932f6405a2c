"""The exact pieces of ``bench/weight_sweep_tiny.py`` (HPGD against a weight sweep on the tiny
tasks): the per-context objective against the library's exact ``F`` and against the orchestrated
tabular follower, the best-of-subset selection against enumeration, the box ascent against a
known constrained optimum."""

from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch

from align_cbrl.reference.tiny_language import exact_objective
from tests.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def bench():
    mod = load_script(ROOT / "bench" / "weight_sweep_tiny.py")
    yield mod
    del sys.modules[mod.__name__]


def _trainer(bench, tmp_path, task="tiny_language", iterations=1, estimator="hpgd"):
    from align_cbrl.trainer import HPGDTrainer

    config = bench.make_config(task, 0, iterations, 0.2, tmp_path)
    config.leader.estimator = estimator
    return HPGDTrainer(config, overwrite=True)


def _set_weights(trainer, W):
    with torch.no_grad():
        trainer.leader.theta.copy_(trainer.leader.param.inverse(W))
    assert torch.allclose(trainer.leader.weight_table(), W, atol=1e-12)


@pytest.mark.parametrize("task", ["tiny_language", "quickstart"])
def test_per_context_objective_sums_to_the_exact_objective(bench, tmp_path, task):
    """Random tables inside the box: ``sum_c F_c(w_c)`` is the library's exact ``F(W)``, and a
    table assembled row by row from two others has ``F`` = the sum of the rows' own terms."""
    trainer = _trainer(bench, tmp_path, task)
    obj = bench.ContextObjective.from_trainer(trainer)
    b = trainer.bundles[0]
    view = trainer.task.with_log_ref(b.log_ref)
    C, K = len(obj.contexts), obj.scores.shape[-1]
    g = torch.Generator().manual_seed(3)
    A, B = (3.8 * torch.rand(2, C, K, generator=g, dtype=torch.float64) - 1.9).unbind(0)
    for W in (A, B):
        _set_weights(trainer, W)
        with torch.no_grad():
            F = float(exact_objective(view, trainer.bilevel, b.follower.beta))
        assert abs(float(obj.values(W).sum()) - F) < 1e-12
    take_a = torch.tensor([True, False, True])[:C, None]
    mixed = torch.where(take_a, A, B)
    _set_weights(trainer, mixed)
    with torch.no_grad():
        F_mixed = float(exact_objective(view, trainer.bilevel, b.follower.beta))
    per_context = torch.where(take_a[:, 0], obj.values(A), obj.values(B))
    assert abs(float(per_context.sum()) - F_mixed) < 1e-12
    assert abs(float(obj.values(torch.stack([A, B]))[1].sum()) - float(obj.values(B).sum())) < 1e-15
    trainer.close()


def test_closed_form_trained_follower_matches_the_orchestrated_tabular_run(bench, tmp_path):
    """A fixed (never updated) leader with hand-set weights, 3 iterations x 10 tabular steps: the
    follower's policy and its per-context objective are the closed form with ``lambda_30``."""
    trainer = _trainer(bench, tmp_path, iterations=3, estimator="fixed")
    obj = bench.ContextObjective.from_trainer(trainer)
    W = torch.tensor([[-1.0, 0.0, 1.0, -1.0], [0.0, -1.0, 1.0, -1.0], [1.0, 1.0, 0.0, -1.0]])
    W = W.to(torch.float64)
    _set_weights(trainer, W)
    for t in (1, 2, 3):
        trainer.step(t)
    assert torch.allclose(trainer.leader.weight_table(), W, atol=1e-12)  # never updated
    steps = 3 * trainer.config.follower_steps
    lam = bench.trained_fraction(0.2, obj.beta, steps)
    assert lam == pytest.approx(1 - (1 - 0.2 * obj.beta) ** steps, abs=1e-15)
    b = trainer.bundles[0]
    view = trainer.task.with_log_ref(b.log_ref)
    with torch.no_grad():
        r, rbar = view.rewards(trainer.bilevel)
    expected = torch.log_softmax(view.log_ref + lam * r / obj.beta, dim=-1)
    assert torch.allclose(b.follower.log_policy(), expected, atol=1e-12, rtol=0)
    pi = b.follower.log_policy().exp()
    J = float((view.prompt_probs * (pi * rbar).sum(-1)).sum())
    assert abs(float(obj.values(W, lam).sum()) - J) < 1e-12
    trainer.close()


def test_best_of_subset_matches_enumeration_with_ties(bench):
    """``select`` keeps the best criterion (ties: lower index) and ``expected_selected`` is its
    exact mean over all ``C(N, m)`` subsets, per context."""
    g = torch.Generator().manual_seed(0)
    N, C = 6, 2
    F = torch.randn(N, C, generator=g, dtype=torch.float64)
    J = torch.tensor([[1.0, 0.0], [3.0, 2.0], [3.0, 2.0], [0.5, -1.0], [2.0, 2.0], [-1.0, 5.0]])
    J = J.to(torch.float64)
    for m in range(1, N + 1):
        totals = torch.zeros(C, dtype=torch.float64)
        for c in range(C):
            for sub in itertools.combinations(range(N), m):
                best = max(sub, key=lambda i, c=c: (float(J[i, c]), -i))
                idx = torch.tensor(sub)[:, None].expand(m, C)
                F_sel, J_sel = bench.select(F, J, idx)
                assert float(F_sel[c]) == float(F[best, c]) and float(J_sel[c]) == float(J[best, c])
                totals[c] += F[best, c]
        expected = bench.expected_selected(F, J, m)
        assert torch.allclose(expected, totals / math.comb(N, m), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="1 <= m <= 6"):
        bench.expected_selected(F, J, 7)


def test_box_ascent_reaches_the_clipped_optimum_of_a_concave_quadratic(bench):
    """``f_c(w) = -sum_k d_k (w_k - t_k)^2`` over ``[-2, 2]^K`` has its maximum at ``clip(t)``."""
    target = torch.tensor([[3.0, -0.5, 1.0], [-5.0, 0.25, 2.0]], dtype=torch.float64)
    d = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)

    def f(W):
        return -(d * (W - target) ** 2).sum(-1)

    starts = torch.zeros(4, 2, 3, dtype=torch.float64)
    starts[1] = 2.0
    starts[2] = -2.0
    starts[3, :, 0] = 1.5
    W, F, pg = bench.box_ascent(f, starts, -2.0, 2.0)
    assert torch.allclose(W, target.clamp(-2, 2).expand_as(W), atol=1e-8)
    assert float(pg.max()) <= 1e-9
    assert torch.allclose(F, f(target.clamp(-2, 2)).expand_as(F), atol=1e-12)
