"""Each VJP rule of ``rnncomp.autodiff.RULES`` alone, against central differences.

A one-op program ``y = op(x, ...)`` is differentiated by :func:`rnncomp.autodiff.reverse`
with a random cotangent ḡ of y; the adjoint of every operand must be the gradient of
⟨ḡ, y⟩, computed here by central differences element by element (float64, step 1e-6:
truncation error ≈ 1e-12, so rtol 1e-7 / atol 1e-9 is generous and still far tighter than
any wrong rule).  Both executions run the NumPy oracle's per-op code (``run_program``),
so a rule is checked on its own, not through a cell that happens to use it.

``pad`` has a rule no cell reaches today (only the adjoint of ``slice`` makes a pad node, and
a backward program is never differentiated again), so without this file a broken pad rule
would go unnoticed until the day a second derivative is taken.
"""
import numpy as np
import pytest
import sympy as sp

from rnncomp.autodiff import Contribution, reverse
from rnncomp.backends.numpy import accumulate_grads, run_program
from rnncomp.ir import Node, Program, internal, placeholder

B = 2
EPS = 1e-6
G = (internal("ḡ"), "t")  # the seed: the cotangent of the program's result


def _inputs(sizes):
    return {(f"x{i}", "t"): n for i, n in enumerate(sizes)}


def _check(xs: dict, node: Node, params=None, seed=0):
    """``xs``: input key -> size; ``node``: the op over them; ``params``: name -> matrix."""
    rng = np.random.default_rng(seed)
    params = params or {}
    fwd = Program(name="one op")
    for k, n in xs.items():
        fwd.add(k, Node("input", (), n))
    for p, m in params.items():
        fwd.add((p, None), Node("param", (), m.shape))
    y = fwd.add(("y", "t"), node)
    rev = reverse(fwd, {y: [Contribution(placeholder(0), (G,), node.size)]},
                  {G: Node("seed", (), node.size)}, "one op", leaves=list(xs))
    vals = {k: rng.normal(size=(B, n)) for k, n in xs.items()}
    vals.update({(p, None): m for p, m in params.items()})
    gbar = rng.normal(size=(B, node.size))

    def objective(v):
        env = run_program(fwd, dict(v), B, np.dtype("float64"))
        return float((env[y] * gbar).sum())

    env = run_program(fwd, dict(vals), B, np.dtype("float64"))
    env[G] = gbar
    run_program(rev.prog, env, B, np.dtype("float64"))
    wanted = list(xs) + [(p, None) for p in params]
    for k in wanted:
        fd = np.zeros_like(vals[k])
        for idx in np.ndindex(*vals[k].shape):
            up, dn = dict(vals), dict(vals)
            up[k], dn[k] = vals[k].copy(), vals[k].copy()
            up[k][idx] += EPS
            dn[k][idx] -= EPS
            fd[idx] = (objective(up) - objective(dn)) / (2 * EPS)
        if k[1] is None:
            got = {k[0]: np.zeros_like(vals[k])}
            accumulate_grads(got, {k[0]: rev.grads[k[0]]}, env)
            got = got[k[0]]
        else:
            got = np.broadcast_to(env[rev.adjoints[k]], fd.shape)
        np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-9, err_msg=f"adjoint of {k} through {node.op}")


def test_pad():
    xs = _inputs([3])
    _check(xs, Node("pad", ((("x0", "t")),), 7, {"lo": 2}))


@pytest.mark.parametrize("lo", [0, 1, 3])
def test_slice(lo):
    xs = _inputs([5])
    _check(xs, Node("slice", (("x0", "t"),), 2, {"lo": lo}))


def test_concat():
    xs = _inputs([2, 3, 1])
    _check(xs, Node("concat", tuple(xs), 6))


def test_sum_and_lse():
    xs = _inputs([4])
    _check(xs, Node("sum", (("x0", "t"),), 1))
    _check(xs, Node("lse", (("x0", "t"),), 1), seed=1)


def test_ew_with_a_broadcast_operand():
    # x1 has one unit, read against four: its adjoint is summed over the units
    xs = _inputs([4, 1])
    a, b = placeholder(0), placeholder(1)
    _check(xs, Node("ew", tuple(xs), 4, {"expr": sp.tanh(a * b) + a ** 2 / (1 + b ** 2)}))


@pytest.mark.parametrize("tr", [False, True])
def test_matvec_with_two_terms(tr):
    xs = _inputs([3])
    rng = np.random.default_rng(5)
    W = rng.normal(size=(3, 4) if tr else (4, 3))
    U = rng.normal(size=(4, 3))
    terms = (("W", tr, 1), ("U", False, 1))
    _check(xs, Node("matvec", (("x0", "t"),), 4, {"terms": terms}), params={"W": W, "U": U})


def test_a_seed_for_a_value_the_program_lacks_is_refused():
    # a seed the walk never meets would silently contribute nothing (a seed at step 0 or k + 1 of
    # an unfolded program, a misspelt key): the walk refuses it and names it
    fwd = Program(name="one op")
    fwd.add(("x0", "t"), Node("input", (), 2))
    fwd.add(("y", "t"), Node("ew", (("x0", "t"),), 2, {"expr": sp.tanh(placeholder(0))}))
    with pytest.raises(AssertionError, match=r"one op: seeds or leaves for values it does not compute: y\[t-1\]"):
        reverse(fwd, {("y", "t-1"): [Contribution(placeholder(0), (G,), 2)]}, {G: Node("seed", (), 2)}, "one op")
    with pytest.raises(AssertionError, match=r"values it does not compute: x0\[t-1\]$"):
        reverse(fwd, {}, {}, "one op", leaves=[("x0", "t-1")])
    with pytest.raises(AssertionError, match=r"values it does not compute: y\[t-1\], x0\[t-1\]$"):  # all of them
        reverse(fwd, {("y", "t-1"): [Contribution(placeholder(0), (G,), 2)]}, {G: Node("seed", (), 2)}, "one op",
                leaves=[("x0", "t-1")])
