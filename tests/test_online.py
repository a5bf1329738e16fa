"""Forward mode and the online gradient algorithms (issue #20): RTRL, SnAp, UORO, fit_online.

Oracles: the rolled BPTT of the NumPy reference (``rc.compile(cell, backend="numpy")``), a
central finite difference of one step (for the tangent step), and for UORO the RTRL gradient.
Tolerances (float64): RTRL and BPTT compute the same sum in another order, so 1e-10 relative
to each gradient's largest entry (observed ~1e-15 on the zoo, ~1e-13 on fuzzed cells);
the one-step finite difference at eps 1e-6 has error ~1e-10, checked at 1e-7.
"""
import sys

import numpy as np
import pytest
from hypothesis import given, settings

import rnncomp as rc
from rnncomp.autodiff import RULES
from rnncomp.errors import DifferentiationError
from rnncomp.forward_mode import JVP_RULES, check_rule_coverage, jvp, missing_jvp_rules, tangent_step
from rnncomp.ir import Node, Program

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fuzzgen import calls, fuzz_cells, fuzz_data  # noqa: E402
from gradcheck import random_data  # noqa: E402

from rnncomp.algorithms import RTRL, SensitivityMemoryError, sequence_grad  # noqa: E402
from rnncomp.algorithms.tangents import Directions, run_tangents  # noqa: E402
from rnncomp.backends.numpy import run_program  # noqa: E402


def rel_err(g1, g2):
    return max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)


def oracle(cell, *args, **kw):
    return rc.compile(cell, backend="numpy").loss_and_grad(*args, **kw)


# ----------------------------------------------------------------------------- forward mode
def test_jvp_and_vjp_tables_cover_the_same_ops():
    missing = missing_jvp_rules()
    assert not missing, (f"op(s) {missing} have a VJP rule in rnncomp.autodiff.RULES but no JVP rule: "
                         "add one to rnncomp.forward_mode.JVP_RULES")
    assert set(JVP_RULES) == set(RULES)
    check_rule_coverage()


def test_a_missing_jvp_rule_is_named():
    with pytest.raises(DifferentiationError, match=r"'weight_mul'.*VJP rule.*no JVP rule"):
        check_rule_coverage(dict(RULES, weight_mul=None), JVP_RULES)
    prog = Program(name="toy")
    prog.add(("h", "t-1"), Node("state", (), 2))
    prog.add(("y", "t"), Node("frobnicate", (("h", "t-1"),), 2))
    with pytest.raises(DifferentiationError, match=r"toy: y\[t\] is a 'frobnicate' node.*no JVP rule"):
        jvp(prog, {("h", "t-1"): (("dh%", "t-1"), Node("seed", (), 2))})


def _one_step(cell, params, h, x, y):
    st = cell.step
    env = {(p, None): v for p, v in params.items()}
    env.update({(s, "t-1"): h[s] for s in st.states})
    env.update({(n, "t"): a for n, a in {**x, **y}.items()})
    run_program(st.prog, env, next(iter(h.values())).shape[0], np.dtype(np.float64))
    return env


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_tangent_step_is_the_derivative_of_one_step(name):
    """∂h[t] and ∂ℓ[t] along a random direction (θ and h[t-1] both moved) == central difference."""
    cell = rc.cells.ZOO[name](2, 3, 2)
    st, B = cell.step, 2
    rng = np.random.default_rng(4)
    params, x, y = random_data(cell, T=1, B=B, seed=4)
    x, y = {k: v[0] for k, v in x.items()}, {k: v[0] for k, v in y.items()}
    h = {s: rng.normal(0, 0.5, (B, n)) for s, n in st.states.items()}
    dp = {p: rng.normal(size=np.shape(v)) for p, v in params.items()}
    dh = {s: rng.normal(size=(B, n)) for s, n in st.states.items()}
    ts, dirs = tangent_step(st), Directions.dense(st)
    env = _one_step(cell, params, h, x, y)
    # one direction: the dense tangent contracted with dθ, plus the state direction
    d = np.concatenate([dp[p].ravel() for p in st.params])
    seeds = {ts.state_seeds[s]: np.zeros((B, dirs.K, n)) for s, n in st.states.items()}
    tan = run_tangents(ts.prog, env, seeds, dirs, B, np.float64)
    ts1 = tangent_step(st, params=())
    tan1 = run_tangents(ts1.prog, env, {ts1.state_seeds[s]: dh[s][:, None, :] for s in st.states},
                        Directions(1, {}, {}, {}), B, np.float64)
    eps = 1e-6
    plus = _one_step(cell, {p: v + eps * dp[p] for p, v in params.items()}, {s: h[s] + eps * dh[s] for s in h}, x, y)
    minus = _one_step(cell, {p: v - eps * dp[p] for p, v in params.items()}, {s: h[s] - eps * dh[s] for s in h}, x, y)
    for s in st.states:
        an = np.einsum("bkn,k->bn", np.broadcast_to(tan[ts.out[s]], (B, dirs.K, st.states[s])), d) + tan1[ts1.out[s]][:, 0]
        fd = (plus[(s, "t")] - minus[(s, "t")]) / (2 * eps)
        np.testing.assert_allclose(an, fd, rtol=1e-7, atol=1e-9, err_msg=s)
    an = np.einsum("bk,k->b", np.broadcast_to(tan[ts.loss][..., 0], (B, dirs.K)), d) + tan1[ts1.loss][:, 0, 0]
    fd = (plus[st.loss_key] - minus[st.loss_key])[:, 0] / (2 * eps)
    np.testing.assert_allclose(an, fd, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- RTRL
@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_rtrl_equals_bptt_on_the_zoo(name, loss):
    cell = rc.cells.ZOO[name](2, 3, 2, loss=loss)
    params, x, y = random_data(cell, T=6, B=3, seed=2)
    l1, g1, f1 = oracle(cell, params, x, y)
    l2, g2, f2 = sequence_grad(RTRL(), cell, params, x, y)
    assert abs(l1 - l2) <= 1e-12 * abs(l1)
    assert rel_err(g1, g2) < 1e-10
    for s in f1:
        np.testing.assert_allclose(f2[s], f1[s], rtol=1e-13)


@settings(max_examples=12)
@given(fuzz_cells(max_depth=2), calls(max_T=5, max_B=3))
def test_rtrl_equals_bptt_on_fuzzed_cells(cell, call):
    """Masks, given and learned initial states, kinks, slices, Jordan states: all from fuzzgen."""
    T, B, seed, mask_kind, h0_kind, _ = call
    params, x, y, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    l1, g1, _ = oracle(cell, params, x, y, h0=h0, mask=mask)
    l2, g2, _ = sequence_grad(RTRL(), cell, params, x, y, h0=h0, mask=mask)
    assert abs(l1 - l2) <= 1e-11 * max(abs(l1), 1e-300)
    assert rel_err(g1, g2) < 1e-10


def test_rtrl_learned_initial_state():
    cell = rc.Cell("learned")
    x, h = cell.input("x", 2), cell.state("h", 3, init="learn")
    W, U = cell.param("W", (3, 2)), cell.param("U", (3, 3))
    cell.update(h, rc.sigmoid(W @ x + U @ h))
    t = cell.target("t", 3)
    cell.loss((h.new - t) ** 2)
    params, x, y = random_data(cell, T=4, B=2, seed=7)
    _, g1, _ = oracle(cell, params, x, y)
    _, g2, _ = sequence_grad(RTRL(), cell, params, x, y)
    assert np.abs(g1["h_0"]).max() > 1e-3  # the initial state's gradient is there to check
    assert rel_err(g1, g2) < 1e-10


def test_rtrl_memory_limit_names_the_sizes():
    cell = rc.cells.elman(2, 8, 1)
    params, x, y = random_data(cell, T=2, B=4, seed=0)
    P = sum(v.size for v in params.values())
    with pytest.raises(SensitivityMemoryError, match=rf"cell 'elman'.*4 × {P} × 8 values") as e:
        sequence_grad(RTRL(max_bytes=1000), cell, params, x, y)
    assert "rc.SnAp(1) or rc.UORO()" in str(e.value) and "max_bytes" in str(e.value)
