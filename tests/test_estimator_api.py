"""The estimator interface of the tabular harnesses (tabular_reference.common.estimator_api,
docs/validate.md): the built-in forms through it give the numbers of the code before it (bit for
bit), a user's estimator given as module:function runs and equals the built-in it re-derives,
the step gradients are the derivatives they claim to be, and bad estimators are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tabular_reference.common.estimator_api import EstimatorError, check_result, resolve
from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.algorithms import RunConfig, run
from tabular_reference.four_rooms.batch import make_batch, sample_buffers, sample_library
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.hypergradient import estimate
from tabular_reference.four_rooms.solver import FollowerSolver
from tabular_reference.tax_design import estimators as TE
from tabular_reference.tax_design.algorithms import AlgoSettings, run_batch
from tabular_reference.tax_design.batch import make_batch as tax_batch
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import flat_batch
from tabular_reference.tax_design.kernel import expected_next, kernel_parts
from tabular_reference.tax_design.rewards import consumption_utility, initial_theta, rates
from tabular_reference.tax_design.sampling import balanced_contexts, rollout
from tabular_reference.tax_design.solver import soft_policy_iteration
from tests.helpers import reference_values

# (sum of final x, sum of squares, one entry) as float.hex, computed by the code before the
# interface (commit 99142ad) for the configurations of the two tests below; stored in
# tests/data/reference_values.json.
_FOUR_ROOMS_BEFORE = reference_values("estimator_api/four_rooms")
_TAX_BEFORE = reference_values("estimator_api/tax_design")
_TAX_SETTINGS = {
    "hpgd": {},
    "exact critic": {"critic": "exact"},
    "covariance": {"form": "covariance"},
    "crossfit": {"leader_q": "crossfit"},
    "trajectory": {"leader_q": "trajectory"},
    "score": {"follower_transition": "score"},
    "naive": {},
}


def _digest(x: np.ndarray, entry: tuple[int, int]) -> list[str]:
    return [float(x.sum()).hex(), float((x * x).sum()).hex(), float(x[entry]).hex()]


@pytest.mark.parametrize("key", list(_FOUR_ROOMS_BEFORE))
def test_four_rooms_builtins_equal_the_numbers_before_the_interface(key):
    """15 outer iterations x 3 seeds of every built-in estimator, fused and library backends
    (preset paper): the final logits are bit for bit those of the code before the interface."""
    algo, backend = key.split("/")
    res = run(
        RunConfig(
            algo=algo,
            estimator_backend=backend,
            beta=0.003,
            budget_cost=1.0,
            lrs=[0.5],
            seeds=[0, 1, 2],
            iters=15,
            eval_last=5,
            steps_per_iter=2000,
            job_seed=3,
        ),
        progress=False,
    )
    assert _digest(res.final_x, (2, 7)) == _FOUR_ROOMS_BEFORE[key]


@pytest.mark.parametrize("key", list(_TAX_BEFORE))
def test_tax_builtins_equal_the_numbers_before_the_interface(key):
    """4 outer iterations x 2 runs (lambda 0.1 and 0.2) of the HPGD options and naive: the final
    parameters are bit for bit those of the code before the interface."""
    algo = "naive" if key == "naive" else "hpgd"
    settings = AlgoSettings(episodes=10, **_TAX_SETTINGS[key])
    hist = run_batch(Economy(), algo, [0.1, 0.2], [0, 1], 4, settings, progress=False)
    assert _digest(hist.theta, (1, 0)) == _TAX_BEFORE[key]


def _four_rooms_solution(R: int, steps: int):
    cfg = RunConfig(
        algo="hpgd",
        beta=0.005,
        budget_cost=1.0,
        lrs=[0.1],
        seeds=list(range(R)),
        steps_per_iter=steps,
        estimator_backend="library",
    )
    x = np.random.default_rng(2).normal(0, 0.3, (R, 105))
    return cfg, FollowerSolver(R, np.array(E.goals), cfg).solve(x, np.arange(R) % 2, False)


def test_user_estimator_as_module_function_equals_the_builtin_it_rederives():
    """Four-Rooms: a user's ``module:function`` that contracts HPGD's weights with the batch's
    step gradients itself returns the same hypergradient as the built-in ``hpgd`` on the same
    sampled batch (to 1e-12 relative); ``dense`` and ``contract`` agree."""
    cfg, sol = _four_rooms_solution(10, 2000)
    kernels.seed_rng(5)
    builtin = estimate("hpgd", sol, cfg)
    kernels.seed_rng(5)
    user = estimate("tests.estimator_examples:hpgd_dense", sol, cfg)
    assert np.linalg.norm(user - builtin) <= 1e-12 * np.linalg.norm(builtin)
    buffers = sample_buffers(10, 2000)
    sample_library(sol, cfg, buffers)
    batch = make_batch(sol, cfg, buffers, slice(0, 3), np.arange(3))
    w = np.random.default_rng(0).normal(size=(3, 2000))
    dense = batch.follower_grad.dense() + batch.leader_grad.dense()
    np.testing.assert_allclose(
        np.einsum("rt,rtp->rp", w, dense),
        batch.follower_grad.contract(w) + batch.leader_grad.contract(w),
        rtol=1e-12,
        atol=1e-14,
    )


def test_the_docs_example_estimators_run_and_equal_their_builtins():
    """docs/validate.md's example: ``direct_only`` (the hypergradient by hand) equals the built-in
    ``naive`` on the same batch (1e-12) and ``cov_crossfit`` (weights) equals the core's
    covariance form through ``builtin_for``."""
    from tabular_reference.four_rooms.estimators import builtin_for

    cfg, sol = _four_rooms_solution(6, 2000)
    for user, builtin in (("direct_only", "naive"), ("cov_crossfit", None)):
        ref = builtin_for("covariance", "crossfit") if builtin is None else builtin
        kernels.seed_rng(7)
        a = estimate(f"tests.estimator_examples:{user}", sol, cfg)
        kernels.seed_rng(7)
        b = estimate(ref, sol, cfg)
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b), user


@pytest.fixture(scope="module")
def tax_batch_data():
    econ = Economy()
    R = 3
    theta = initial_theta(R) + torch.tensor([[0.2, -0.1, 0.3, 0.1]], dtype=torch.float64)
    beta = torch.full((R,), 0.1, dtype=torch.float64)
    sol = soft_policy_iteration(econ, theta, beta, tol=1e-12)
    gen = torch.Generator().manual_seed(4)
    traj = rollout(econ, sol, rates(theta)[:, 0], balanced_contexts(econ, R, 4), 200, gen)
    return econ, theta, beta, sol, traj


@pytest.mark.parametrize("transition", ["expected", "score"])
def test_tax_user_estimator_equals_the_builtin_surrogate(tax_batch_data, transition):
    """Tax design: the user's contraction with the forward-mode step gradients equals the
    harness's autograd surrogate (the built-in path) to 1e-10 relative, both transition forms."""
    econ, theta, beta, sol, traj = tax_batch_data
    builtin = TE.builtin_hpgd("mc", "crossfit", "learned")
    kw = dict(follower_transition=transition)
    a = TE.estimate(builtin, econ, theta, beta, sol, traj, **kw)
    b = TE.estimate("tests.estimator_examples:hpgd_dense", econ, theta, beta, sol, traj, **kw)
    assert torch.linalg.vector_norm(a - b) <= 1e-12 * torch.linalg.vector_norm(a)


def test_tax_step_gradients_match_finite_differences(tax_batch_data):
    """The follower's step gradient ``d rtilde_t`` (Cobb-Douglas + gamma (K_tau V*)[s, f]) and
    the leader's ``d log P_tau`` rows equal central differences in theta (1e-6 relative)."""
    econ, theta, _, sol, traj = tax_batch_data
    b = flat_batch(econ, traj)
    batch = tax_batch(econ, theta, sol, b, "expected")
    t = np.arange(0, b["state"].shape[1], 97)
    c, s, f, a, s2 = (b[k][0, t] for k in ("context", "state", "flow", "action", "next_state"))

    def rtilde(th):
        x = rates(th)
        k = kernel_parts(econ, x[:, 0])
        cd = consumption_utility(econ, x[:, 1:])[0, c, a]
        return cd + econ.gamma * expected_next(k, sol.V)[0, c, s, f]

    def logp(th):
        k = kernel_parts(econ, rates(th)[:, 0])
        return torch.log(k.D[0, f, s2 - s - int(sol.parts.d_lo)]) - torch.log(k.Z[0, s, f])

    h = 1e-6
    for fn, grads in ((rtilde, batch.follower_grad), (logp, batch.transition_grad)):
        fd = np.stack(
            [
                ((fn(theta + h * e) - fn(theta - h * e)) / (2 * h)).numpy()
                for e in torch.eye(4, dtype=torch.float64)
            ],
            -1,
        )
        np.testing.assert_allclose(grads.dense(slice(0, 1))[0, t], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope_module_xyz:fn", "cannot import module"),
        ("tests.estimator_examples:missing", "no attribute path"),
        ("tests.estimator_examples:not_callable", "non-callable"),
        ("tests.estimator_examples:one_argument", r"must accept \(batch, model\)"),
        ("no-such-name", "unknown estimator 'no-such-name' for four-rooms"),
    ],
)
def test_bad_estimator_specs_are_one_line_errors(spec, message):
    with pytest.raises(EstimatorError, match=message) as info:
        resolve(spec, "four-rooms")
    assert "\n" not in str(info.value)


def test_bad_returns_are_one_line_errors():
    """Wrong shapes and NaN returns are refused at the first estimate, naming the estimator."""
    cfg, sol = _four_rooms_solution(2, 500)
    for spec, message in (
        ("tests.estimator_examples:wrong_shape", r"returned shape \(105,\); expected \[2, 105\]"),
        ("tests.estimator_examples:nan_estimate", "returned NaN/inf"),
    ):
        with pytest.raises(EstimatorError, match=message) as info:
            estimate(spec, sol, cfg)
        assert "\n" not in str(info.value)
    with pytest.raises(EstimatorError, match="returned list"):
        check_result([1.0], 2, 105, "x")
