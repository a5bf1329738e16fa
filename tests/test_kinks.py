"""Derivatives exactly at kinks: one convention, the same bits in every backend (issue #8).

The convention (``rnncomp/derivatives.py``, above ``partials``): at a kink the derivative is
one of the one-sided derivatives — that of one of the pieces meeting there:

=====================  ==========================================================
``Max(a, b, ...)``      the first argument attaining the max in sympy's order;
                        constants come first, so ``relu'(0) = Max(0, z)'(0) = 0``
``Min(a, b, ...)``      likewise (``Min(z, 0)'(0) = 0``)
``Abs(a)``              +1 at 0 for sympy's argument (sympy stores |x − p| as |p − x|)
``Piecewise``           the piece whose condition selects the point (``u > 0`` at 0:
                        the next piece; ``u >= 0``: this one)
``Heaviside``, ``sign`` derivative 0; value at 0: ``Heaviside(0) = 1/2`` (or its
                        second argument), ``sign(0) = 0``
``floor``, ``ceiling``  forward only; a gradient through them is a DifferentiationError
=====================  ==========================================================

The tests use dyadic data (multiples of 1/2, 1/4) and piecewise-linear cells, so every
operation is exact in float64 whatever the order of summation: kink arguments are exactly
0, and the NumPy oracle, the native backend and the PTX host runner must agree bit for
bit.  Away from kinks the usual checks (``test_fuzz.py``) apply.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import event, given, settings, strategies as st

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_loss_and_grad
from rnncomp.derivatives import partials
from rnncomp.errors import DifferentiationError
from rnncomp.ir import placeholder

N = 3                                    # units: [at the kink, above it, below it]
OFFSETS = np.array([0.0, 0.25, -0.25])   # u = x - p at the three units
OFFSETS2 = np.array([0.0, -0.25, 0.25])  # v = x2 - q: ties u == v only at unit 0
EPS = 2.0 ** -6                          # one-sided differences: exact, crosses no other kink

# name: (number of arguments, f, the derivative ∂f/∂u at unit 0 under the convention: a number,
# or the set of one-sided derivatives where the convention picks by sympy's canonical form)
KINKED = {
    "abs": (1, sp.Abs, {1, -1}),              # sympy stores |x − p| as |p − x|: +1 for p − x
    "relu": (1, rc.relu, 0),
    "max_u_0": (1, lambda u: sp.Max(u, 0), 0),
    "min_u_0": (1, lambda u: sp.Min(u, 0), 0),
    "min_0_u_half": (1, lambda u: sp.Min(0, u) / 2, 0),
    "leaky_gt": (1, lambda u: sp.Piecewise((u, u > 0), (u / 4, True)), 0.25),
    "leaky_ge": (1, lambda u: sp.Piecewise((u, u >= 0), (u / 4, True)), 1),
    "leaky_lt": (1, lambda u: sp.Piecewise((u / 4, u < 0), (u, True)), 1),
    "hard_sigmoid_top": (1, lambda u: rc.hard_sigmoid(u + 2), 0.25),    # kink at z = 2
    "hard_sigmoid_bottom": (1, lambda u: rc.hard_sigmoid(u - 2), 0.25),  # kink at z = -2
    "max_u_2u": (1, lambda u: sp.Max(u, 2 * u), {1, 2}),
    "abs_of_shift": (1, lambda u: sp.Abs(u) / 2 + u, {1.5, 0.5}),
    "max_uv": (2, sp.Max, None),             # (1, 0) or (0, 1): one piece
    "min_uv": (2, sp.Min, None),
    "max_uv0": (2, lambda u, v: sp.Max(u, v, 0), None),
}


def kink_zoo():
    """One cell holding every kinked function: h = h/2 + Σ_k f_k(x − p_k[, x2 − q_k]),
    loss Σ h, so with T = B = 1 the gradient of p_k is −∂f_k/∂u (and of q_k −∂f_k/∂v).
    Forward-only outputs evaluate floor, ceiling, Heaviside and sign at their jumps."""
    cell = rc.Cell("kinks")
    x, x2 = cell.input("x", N), cell.input("x2", N)
    h = cell.state("h", N)
    body = h / 2
    for name, (nargs, f, _) in KINKED.items():
        u = x - cell.param(f"p_{name}", N)
        args = (u,) if nargs == 1 else (u, x2 - cell.param(f"q_{name}", N))
        body = body + f(*args)
    # jumps: derivative 0 (Heaviside, sign) -- allowed where a gradient flows
    body = body + sp.Heaviside(x - cell.param("p_heaviside", N)) + sp.sign(x - cell.param("p_sign", N))
    cell.update(h, body)
    cell.output("floor", sp.floor(4 * x2) + sp.ceiling(4 * x2) / 8)   # forward only
    cell.output("steps", sp.Heaviside(x2) + sp.Heaviside(x2, 1) * 4 + sp.sign(x2) * 16)
    cell.loss(rc.vsum(h.new))
    return cell


def zoo_data():
    rng = np.random.default_rng(0)
    x = (rng.integers(-4, 5, (1, 1, N)) / 2).astype(float)
    x2 = (rng.integers(-4, 5, (1, 1, N)) / 2).astype(float)
    cell = kink_zoo()
    params = {}
    for p in cell.step.params:
        params[p] = (x2 if p.startswith("q_") else x)[0, 0] - (OFFSETS2 if p.startswith("q_") else OFFSETS)
    # forward-only outputs at their jumps: 4·x2 integral, x2 = 0 at one unit
    x2f = np.array([[[0.0, -0.5, 0.25]]])
    return cell, params, {"x": x, "x2": x2}, x2f


def results(model, params, inputs):
    loss, grads, fin = model.loss_and_grad(params, inputs)
    return loss, grads, fin


def assert_bitwise(a, b, what):
    assert a[0] == b[0], f"{what}: loss {a[0]!r} vs {b[0]!r}"
    for k in b[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=f"{what}: gradient {k}")
    for s in b[2]:
        np.testing.assert_array_equal(a[2][s], b[2][s], err_msg=f"{what}: final state {s}")


@pytest.fixture(scope="module")
def zoo():
    cell, params, inputs, x2f = zoo_data()
    oracle = rc.compile(cell, backend="numpy")
    return cell, params, inputs, x2f, oracle, oracle.loss_and_grad(params, inputs)


def test_convention_at_the_kink(zoo):
    """The table above, at unit 0 of every function; units 1 and 2 are the plain pieces."""
    cell, params, inputs, _, oracle, (loss, grads, _) = zoo
    for name, (nargs, f, expect) in KINKED.items():
        du = -grads[f"p_{name}"]
        if nargs == 2:
            dv = -grads[f"q_{name}"]
            pieces = [(1, 0), (0, 1)] + ([(0, 0)] if name == "max_uv0" else [])
            assert (du[0], dv[0]) in pieces, f"{name}: ({du[0]}, {dv[0]}) at the tie is not one piece's gradient"
        elif isinstance(expect, set):
            assert du[0] in expect, f"{name}: derivative at the kink {du[0]}, not one of {expect}"
        else:
            assert du[0] == expect, f"{name}: derivative at the kink {du[0]}, convention {expect}"
    assert np.all(grads["p_heaviside"] == 0) and np.all(grads["p_sign"] == 0)


def test_every_gradient_entry_is_a_one_sided_derivative(zoo):
    """Each gradient entry equals the right or the left difference quotient of the loss in that
    coordinate (exact: piecewise-linear loss, dyadic data and step)."""
    cell, params, inputs, _, oracle, (loss, grads, _) = zoo
    for p, value in params.items():
        for i in range(value.size):
            if p in ("p_heaviside", "p_sign") and i == 0:
                continue  # a jump, not a kink: no one-sided derivative; the convention is 0
            e = np.zeros_like(value)
            e.flat[i] = EPS
            right = (oracle.loss_and_grad(dict(params, **{p: value + e}), inputs)[0] - loss) / EPS
            left = (loss - oracle.loss_and_grad(dict(params, **{p: value - e}), inputs)[0]) / EPS
            g = grads[p].flat[i]
            assert g in (left, right), f"{p}[{i}]: gradient {g}, one-sided derivatives {left}, {right}"


@pytest.mark.parametrize("backend", ["native", "ptx"])
def test_backends_agree_bit_for_bit_at_kinks(zoo, backend):
    cell, params, inputs, x2f, oracle, ref = zoo
    model = (rc.compile(cell, backend="native", cache=None, threads=1) if backend == "native"
             else rc.compile(cell, backend="ptx", runner="host"))
    assert_bitwise(results(model, params, inputs), ref, backend)
    outs_ref, _ = oracle.forward(params, {"x": inputs["x"], "x2": x2f})
    outs, _ = model.forward(params, {"x": inputs["x"], "x2": x2f})
    for o in outs_ref:
        np.testing.assert_array_equal(outs[o], outs_ref[o], err_msg=o)
    # floor(4·x2) + ceiling(4·x2)/8 at 0, -2, 1; Heaviside(0) = 1/2, Heaviside(0, 1) = 1, sign(0) = 0
    np.testing.assert_array_equal(outs_ref["floor"][0, 0], [0.0, -2 - 2 / 8, 1 + 1 / 8])
    np.testing.assert_array_equal(outs_ref["steps"][0, 0], [0.5 + 4, 0 - 16, 1 + 4 + 16])


def test_no_gradient_through_floor_in_any_backend():
    cell = rc.Cell("floored")
    x, h = cell.input("x", 2), cell.state("h", 2)
    cell.update(h, sp.floor(cell.param("W", (2, 2)) @ x) + h / 2)
    cell.loss(rc.vsum(h.new))
    for backend, kw in [("numpy", {}), ("native", {"cache": None})]:
        with pytest.raises(DifferentiationError, match=r"cell 'floored'.*'floor'.*no derivative.*W·x"):
            rc.compile(cell, backend=backend, **kw).loss_and_grad(cell.init_params(), np.ones((1, 1, 2)))


# ----------------------------------------------------------------------------- fuzzing at kinks
def _kink(draw, u, v):
    kind = draw(st.sampled_from(["abs", "relu", "min", "leaky_gt", "leaky_ge", "hard", "max2", "min2"]))
    return {"abs": lambda: sp.Abs(u), "relu": lambda: rc.relu(u), "min": lambda: sp.Min(u, 0) / 2,
            "leaky_gt": lambda: sp.Piecewise((u, u > 0), (u / 4, True)),
            "leaky_ge": lambda: sp.Piecewise((u / 2, u >= 0), (-u, True)),
            "hard": lambda: rc.hard_sigmoid(2 * u),
            "max2": lambda: sp.Max(u, v), "min2": lambda: sp.Min(u, v)}[kind]()


@st.composite
def pl_cells(draw):
    """Random piecewise-linear cells (exact in float64 on dyadic data) whose kink arguments
    are declared as outputs ``kink<i>`` (to count exact hits)."""
    cell = rc.Cell("plfuzz")
    counter = iter(range(1000))
    pname = lambda: f"P{next(counter)}"  # noqa: E731
    xs = [cell.input(f"x{i}", draw(st.integers(1, 4))) for i in range(draw(st.integers(1, 2)))]
    hs = [cell.state(f"h{i}", draw(st.integers(1, 4)), init=draw(st.sampled_from(["zeros", "learn"])))
          for i in range(draw(st.integers(1, 2)))]
    size = lambda v: cell.decls[v.name.removesuffix(".new")].shape  # noqa: E731
    n_kinks = 0

    def proj(sources, n):
        src = draw(st.sampled_from(sources))
        return cell.param(pname(), (n, size(src))) @ src

    def tree(sources, own, n, depth):
        r = draw(st.integers(0, 4)) if depth else 0
        if r == 0:
            same = [v for v in sources if size(v) == n]
            leaf = draw(st.sampled_from(["proj", "own", "bias"] + (["ident"] if same else [])))
            if leaf == "ident":  # a source itself: kinks of inputs are hit exactly most often
                return draw(st.sampled_from(same))
            return own if leaf == "own" else proj(sources, n) if leaf == "proj" else cell.param(pname(), n)
        if r == 1:
            return tree(sources, own, n, depth - 1) - tree(sources, own, n, depth - 1) / 2
        return kink(sources, own, n, depth - 1)

    def kink(sources, own, n, depth):
        nonlocal n_kinks
        n_kinks += 1
        c = draw(st.sampled_from([0, 0.5, -0.5]))
        u = cell.output(f"kink{n_kinks}", tree(sources, own, n, depth) - c)
        return _kink(draw, u, tree(sources, own, n, depth))

    for i, h in enumerate(hs):
        n = size(h)
        sources = xs + hs + [g.new for g in hs[:i]]
        body = kink(sources, h, n, draw(st.integers(0, 2)))  # at least one kink per update
        same = [x for x in xs if size(x) == n]
        if same and draw(st.booleans()):  # floor of an input: forward only, often at a jump
            body = body + sp.floor(2 * draw(st.sampled_from(same))) / 4
        cell.update(h, h / 2 + body / 2 if draw(st.booleans()) else body)
    reads = [h.new for h in hs]
    ny = draw(st.integers(1, 3))
    y = cell.output("y", cell.param(pname(), (ny, sum(map(size, reads)))) @
                    (rc.concat(*reads) if len(reads) > 1 else reads[0]))
    t = cell.target("t", ny)
    cell.loss((y - t) ** 2 / 2 if draw(st.booleans()) else sp.Abs(y - t))
    return cell


def dyadic(rng, shape):
    """Multiples of 1/2 in [-1, 1], half of them 0 (so sums often land exactly on a kink)."""
    return rng.choice([-1.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0], size=shape)


def pl_data(cell, T, B, seed):
    rng = np.random.default_rng(seed)
    st_ = cell.step
    params = {p: dyadic(rng, s if isinstance(s, tuple) else (s,)) for p, s in st_.params.items()}
    inputs = {n: dyadic(rng, (T, B, s)) for n, s in st_.inputs.items()}
    targets = {n: dyadic(rng, (T, B, s)) for n, s in st_.targets.items()}
    return params, inputs, targets


def check_pl_cell(cell, T, B, seed, ptx=None, native=True):
    """Native (and PTX with ``runner=ptx``) == oracle == unrolled, bit for bit; returns the
    number of exact kink hits."""
    params, inputs, targets = pl_data(cell, T, B, seed)
    oracle = rc.compile(cell, backend="numpy")
    ref = oracle.loss_and_grad(params, inputs, targets)
    outs, _ = oracle.forward(params, inputs)
    hits = sum(int((v == 0).sum()) for k, v in outs.items() if k.startswith("kink"))
    assert_bitwise(unrolled_loss_and_grad(cell, params, inputs, targets), ref, "unrolled")
    models = []
    if native:
        models.append(("native", rc.compile(cell, backend="native", cache=None, threads=2)))
        models[-1][1].min_batch_per_thread = 1
    if ptx:
        models.append((f"PTX ({ptx} runner)", rc.compile(cell, backend="ptx", runner=ptx)))
    for what, model in models:
        assert_bitwise(model.loss_and_grad(params, inputs, targets), ref, what)
        mouts, _ = model.forward(params, inputs)
        for o in outs:
            np.testing.assert_array_equal(mouts[o], outs[o], err_msg=f"{what}: {o}")
    return hits


T_B = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4), (4, 2)]  # T·B a power of 2: exact weights


@settings(max_examples=4)
@given(pl_cells(), st.sampled_from(T_B), st.integers(0, 2 ** 16))
def test_fuzz_at_kinks_bit_for_bit(cell, tb, seed):
    hits = check_pl_cell(cell, *tb, seed)
    event(f"exact kink hits: {'0' if hits == 0 else '1-4' if hits < 5 else '5+'}")


@pytest.mark.fuzz
@given(pl_cells(), st.sampled_from(T_B), st.integers(0, 2 ** 16), st.booleans())
def test_fuzz_at_kinks_long(cell, tb, seed, ptx):
    hits = check_pl_cell(cell, *tb, seed, ptx="host" if ptx else None)
    event(f"exact kink hits: {'0' if hits == 0 else '1-4' if hits < 5 else '5+'}")


@pytest.mark.fuzz
@given(pl_cells(), st.sampled_from(T_B), st.integers(0, 2 ** 16))
def test_fuzz_at_kinks_cuda(cell, tb, seed):
    """On a GPU (skipped without one): exact data stays exact, so PTX == oracle bit for bit."""
    from rnncomp.backends.ptx.runtime import cuda_available
    if not cuda_available():
        pytest.skip("needs a CUDA GPU, its driver and cuda-python")
    hits = check_pl_cell(cell, *tb, seed, ptx="cuda", native=False)
    event(f"exact kink hits: {'0' if hits == 0 else '1-4' if hits < 5 else '5+'}")


@pytest.mark.parametrize("f, point", [(sp.Max, (1.0, 0.0, 1.0)), (sp.Max, (2.0, 2.0, 2.0)), (sp.Max, (0.0, 3.0, 1.0)),
                                      (sp.Min, (0.0, 1.0, 0.0)), (sp.Min, (-1.0, -1.0, -1.0))])
def test_three_way_extreme_takes_the_first_tied_argument(f, point):
    """Max/Min of three at a tie: the derivative 1 goes to the first argument (in sympy's order)
    attaining the extreme, 0 to every other (the convention; a product over all the others,
    so a rule that looked at one neighbour only would give two arguments a 1)."""
    u = [placeholder(i) for i in range(3)]
    tmpl = f(*u)
    order = [tmpl.args.index(ui) for ui in u]
    value = f(*point)
    got = [float(sp.sympify(d).subs({**dict(zip(u, point)), placeholder(3): value})) for d in partials(tmpl, 3)]
    first = min((i for i in range(3) if point[i] == value), key=order.__getitem__)
    assert got == [1.0 if i == first else 0.0 for i in range(3)], (tmpl, point, got)


@pytest.mark.parametrize("make", [lambda a, b: sp.Max(a, 0) ** 2 * b, lambda a, b: sp.Abs(a) * a + sp.Min(a, b) * b])
def test_a_derivative_that_keeps_the_kink_function(make):
    # d/da Max(a, 0)² = 2·Max(a, 0)·H(a): the kink function itself stays in the derivative and
    # must come back as sympy's Max/Abs/Min; checked against central differences off the kinks
    a, b = placeholder(0), placeholder(1)
    tmpl = make(a, b)
    ds = partials(tmpl, 2)
    f = sp.lambdify((a, b), tmpl)
    for pa, pb in [(0.7, -1.3), (-0.4, 0.9), (1.9, 2.6)]:
        for i, d in enumerate(ds):
            got = float(d.subs({a: pa, b: pb, placeholder(2): f(pa, pb)}))
            h = 1e-6
            up = f(pa + h, pb) if i == 0 else f(pa, pb + h)
            dn = f(pa - h, pb) if i == 0 else f(pa, pb - h)
            assert got == pytest.approx((up - dn) / (2 * h), rel=1e-7, abs=1e-9), (tmpl, i, pa, pb)


@pytest.mark.parametrize("make", [lambda a: sp.Abs(a) + sp.floor(a), lambda a: sp.tanh(sp.floor(a) + a),
                                  lambda a: sp.Piecewise((sp.floor(a), a > 0), (a, True)),
                                  lambda a: sp.Max(a, 0) + sp.floor(a), lambda a: sp.Heaviside(a) + sp.floor(a)])
def test_nondiff_name_judges_each_function_alone(make):
    # on a template as the walk sees it (lowering may split a cell's expression into several):
    # Abs (differentiable for real arguments), tanh around floor, a Piecewise, Max, Heaviside
    # (met first; a derivative in x, none in its constant second argument) are not named
    from rnncomp.derivatives import nondiff_name
    assert nondiff_name(make(placeholder(0))) == "floor"


def test_nondiff_name_names_heaviside_when_its_value_at_zero_varies():
    # Heaviside(x, h0) with h0 a value that a gradient may reach: no derivative in h0 (the
    # step's value at 0), so a gradient through it names Heaviside; with h0 a number it does not
    from rnncomp.derivatives import nondiff_name
    a, b = placeholder(0), placeholder(1)
    assert nondiff_name(sp.Heaviside(a, b) + a) == "Heaviside"
    assert partials(sp.Heaviside(a, b), 2)[1] is None
    assert partials(sp.Heaviside(a), 1)[0] is not None
