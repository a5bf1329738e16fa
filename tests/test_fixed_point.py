"""Settling networks (issue #20): ``rc.compile_fixed_point`` and recurrent backprop.

Oracles: central finite differences of the loss at the fixed point (relaxed to 1e-13, so the
difference quotient is accurate to ~1e-7 relative at eps 1e-6: checked at 1e-6), and BPTT
through the forward iterations (the NumPy reference over k repeated steps), whose gradient
approaches RBP's geometrically in k for a contraction.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc


def _scaled(model, seed=0, scale=0.3):
    """Parameters small enough for the update to be a contraction."""
    rng = np.random.default_rng(seed)
    return {k: scale * (v + rng.normal(0, 0.3, v.shape)) for k, v in model.init_params(seed).items()}


def _data(cell, B=3, seed=1):
    rng = np.random.default_rng(seed)
    st = cell.step
    x = {n: rng.normal(size=(B, s)) for n, s in st.inputs.items()}
    y = {n: rng.normal(size=(B, s)) for n, s in st.targets.items()}
    return x, y


def hopfield_like(n=5):
    """A continuous Hopfield-style settling net: s = tanh(W_sym s + U x + b), read out."""
    cell = rc.Cell("settle")
    x, s = cell.input("x", 3), cell.state("s", n)
    W, U, b = cell.param("W", (n, n)), cell.param("U", (n, 3)), cell.param("b", n)
    cell.update(s, sp.tanh((W + W.T) @ s / 2 + U @ x + b))
    y = cell.output("y", cell.param("V", (2, n)) @ s.new)
    cell.loss(rc.softmax_xent(y, cell.target("t", 2)))
    return cell


CELLS = {"settle": hopfield_like, "elman": lambda: rc.cells.elman(3, 4, 2),
         "gru": lambda: rc.cells.gru(3, 4, 2), "lstm": lambda: rc.cells.lstm(3, 4, 2)}


def _problem(name):
    cell = CELLS[name]()
    model = rc.compile_fixed_point(cell, tol=1e-13, max_iter=2000)
    return (cell, model, _scaled(model)) + _data(cell)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_rbp_gradient_matches_finite_differences(name):
    cell, model, params, x, y = _problem(name)
    loss, grads, star = model.loss_and_grad(params, x, y)
    # s* is a fixed point
    again = model.forward(params, x, h0=star)
    for s in star:
        np.testing.assert_allclose(again[s], star[s], atol=1e-12)
    rng = np.random.default_rng(2)
    eps = 1e-6
    for p, v in params.items():
        d = rng.normal(size=v.shape)
        lp = model.loss_and_grad(dict(params, **{p: v + eps * d}), x, y)[0]
        lm = model.loss_and_grad(dict(params, **{p: v - eps * d}), x, y)[0]
        fd, an = (lp - lm) / (2 * eps), float((grads[p] * d).sum())
        assert abs(fd - an) <= 1e-8 + 1e-6 * abs(fd), (p, fd, an)


@pytest.mark.parametrize("name", ["settle", "gru"])
def test_bptt_through_the_iterations_approaches_rbp(name):
    cell, model, params, x, y = _problem(name)
    _, g_rbp, _ = model.loss_and_grad(params, x, y)
    numpy = rc.compile(cell, backend="numpy")
    errs = []
    for k in (3, 6, 12, 24, 48):
        mask = np.zeros((k, 3))
        mask[-1] = 1
        rep = lambda d: {n: np.repeat(v[None], k, axis=0) for n, v in d.items()}  # noqa: E731
        _, g, _ = numpy.loss_and_grad(params, rep(x), rep(y), mask=mask)
        errs.append(max(float(np.abs(g[p] - g_rbp[p]).max()) for p in g))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6 * max(float(np.abs(g).max()) for g in g_rbp.values()), errs
    _, g_b, _ = model.loss_and_grad(params, x, y, method="bptt")  # through all of its iterations
    for p in g_b:
        np.testing.assert_allclose(g_b[p], g_rbp[p], rtol=1e-8, atol=1e-10, err_msg=p)


def _fd_check(f, grads, params, seed, eps=1e-6, rtol=1e-6):
    """Central differences of the scalar ``f(params)`` in a random direction per parameter."""
    rng = np.random.default_rng(seed)
    for p, v in params.items():
        d = rng.normal(size=v.shape)
        fd = (f(dict(params, **{p: v + eps * d})) - f(dict(params, **{p: v - eps * d}))) / (2 * eps)
        an = float((grads[p] * d).sum())
        assert abs(fd - an) <= 1e-8 + rtol * abs(fd), (p, fd, an)


@pytest.mark.parametrize("name", ["settle", "lstm"])
def test_bptt_method_unrolled_k_iterations(name):
    """``method="bptt", iterations=k``: the gradient of the loss after exactly k updates
    (a smooth function of θ: central differences agree to 1e-6 relative, the O(eps²)
    truncation at eps 1e-6), whose distance to RBP's falls geometrically in k (a contraction),
    and an independent reference: the NumPy model over k repeated steps."""
    cell, model, params, x, y = _problem(name)
    _, g_rbp, _ = model.loss_and_grad(params, x, y)
    errs = []
    for k in (2, 4, 8, 16, 32):
        loss, g, s_k = model.loss_and_grad(params, x, y, method="bptt", iterations=k)
        errs.append(max(float(np.abs(g[p] - g_rbp[p]).max()) for p in g))
        if k == 4:
            _fd_check(lambda q: model.loss_and_grad(q, x, y, method="bptt", iterations=4)[0], g, params, seed=5)
            rep = lambda d: {n: np.repeat(v[None], k, axis=0) for n, v in d.items()}  # noqa: E731
            mask = np.zeros((k, 3))
            mask[-1] = 1
            ref_loss, ref, ref_s = rc.compile(cell, backend="numpy").loss_and_grad(params, rep(x), rep(y), mask=mask)
            assert abs(loss - ref_loss) <= 1e-14 * abs(ref_loss)
            for p in g:
                np.testing.assert_allclose(g[p], ref[p], rtol=1e-12, atol=1e-14, err_msg=p)
            for s in s_k:
                np.testing.assert_allclose(s_k[s], ref_s[s], rtol=1e-14, atol=0)
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-4 * errs[0], errs


@pytest.mark.parametrize("name", sorted(CELLS))
def test_rbp_direct_solve_equals_the_iteration(name):
    """Both solve (I − Dᵀ) λ = ∂ℓ/∂s; the iteration to tol 1e-13 (1e-10 relative)."""
    cell, model, params, x, y = _problem(name)
    _, g_it, _ = model.loss_and_grad(params, x, y)
    _, g_dir, _ = model.loss_and_grad(params, x, y, solve="direct")
    for p in g_it:
        np.testing.assert_allclose(g_dir[p], g_it[p], rtol=1e-10, atol=1e-12, err_msg=p)


def _oscillator():
    cell = rc.Cell("flipflop")
    x, s = cell.input("x", 1), cell.state("s", 2)
    cell.update(s, sp.tanh(-3 * s + cell.param("U", (2, 1)) @ x))
    cell.loss(rc.vsum((s.new - cell.target("t", 2)) ** 2))
    return cell


def test_non_convergence_is_a_fixed_point_error():
    cell = _oscillator()
    model = rc.compile_fixed_point(cell, tol=1e-10, max_iter=50)
    params = {"U": np.full((2, 1), 0.1)}
    with pytest.raises(rc.FixedPointError, match=r"cell 'flipflop'.*did not converge.*max_iter = 50.*tol = 1e-10"):
        model.forward(params, np.ones((2, 1)))
    with pytest.raises(rc.FixedPointError, match="contraction"):
        model.loss_and_grad(params, np.ones((2, 1)), np.zeros((2, 2)))


def test_bad_arguments():
    cell = CELLS["settle"]()
    with pytest.raises(ValueError, match="max_iter"):
        rc.compile_fixed_point(cell, max_iter=0)
    model = rc.compile_fixed_point(cell)
    params = _scaled(model)
    x, y = _data(cell)
    with pytest.raises(ValueError, match="method must be one of rbp, bptt, got 'eqprop'"):
        model.loss_and_grad(params, x, y, method="eqprop")
    with pytest.raises(ValueError, match="solve must be 'iterate' or 'direct', got 'lu'"):
        model.loss_and_grad(params, x, y, solve="lu")
    with pytest.raises(ValueError, match="iterations must be an integer >= 1, got 0"):
        model.loss_and_grad(params, x, y, method="bptt", iterations=0)
    with pytest.raises(ValueError, match="iterations= is for method='bptt'.*'rbp'"):
        model.loss_and_grad(params, x, y, iterations=3)
    with pytest.raises(rc.CallError, match="settle"):
        model.forward(params, {"x": np.ones((3, 4))})


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x[None], y), r"inputs\['x'\] has shape \(1, 4, 3\), expected \(B, 3\).*no time axis"),
    (lambda x, y: (x[:, :2], y), r"inputs\['x'\] has shape \(4, 2\), expected \(4, 3\)"),
    (lambda x, y: (x, y[:2]), r"targets\['t'\] has shape \(2, 2\), expected \(4, 2\)"),
    (lambda x, y: ("abc", y), r"inputs\['x'\] cannot be read as float64 numbers \(got str\)"),
])
def test_held_arguments_are_named_in_the_shapes_given(bad, message):
    """A settling network's arguments are (B, n): a mistake is reported in the shape the caller
    passed (a (1, 4, 3) input was "must be time-major (T, B, n), got shape (1, 1, 4, 3)", a (4, 2)
    one "(1, 4, 2), expected (1, 4, 3)": the executor's step axis), by relaxation and by energy."""
    settle = rc.compile_fixed_point(hopfield_like())
    x, y = _data(settle.cell, B=4)
    energy, e_params, ex, ey = _energy_problem()
    for model, params, xs, ys in ((settle, _scaled(settle), x["x"], y["t"]), (energy, e_params, ex, ey)):
        with pytest.raises(rc.CallError, match=f"cell '{model.cell.name}': " + message):
            model.loss_and_grad(params, *bad(xs, ys))


# ----------------------------------------------------------------------------- energy-based
def energy_cell(n=5):
    """A continuous Hopfield net: E = ½|s|² − ½ρ(s)ᵀ W_sym ρ(s) − ρ(s)ᵀ(U x + b), ρ = tanh,
    judged by a softmax read-out of the settled state."""
    cell = rc.Cell("hopfield")
    x, s = cell.input("x", 3), cell.state("s", n)
    W, U, b = cell.param("W", (n, n)), cell.param("U", (n, 3)), cell.param("b", n)
    cell.update(s, s)  # not used: the dynamics come from the energy
    r = sp.tanh(s)
    energy = s ** 2 / 2 - r * ((W + W.T) @ r) / 4 - r * (U @ x + b)
    y = cell.output("y", cell.param("V", (2, n)) @ s.new + cell.param("c", 2))
    cell.loss(rc.softmax_xent(y, cell.target("t", 2)))
    return cell, energy


def _energy_problem():
    cell, energy = energy_cell()
    model = rc.compile_fixed_point(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in model.init_params(0).items()}
    return model, params, rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]


def test_energy_rbp_gradient_matches_finite_differences():
    """RBP here runs on Hessian-vector products (forward mode over the reverse program):
    the implicit gradient at the minimum of E, checked against central differences of the
    loss at the re-relaxed minimum (tol 1e-13): 1e-6 relative."""
    model, params, x, t = _energy_problem()
    loss, grads, s0 = model.loss_and_grad(params, x, t)
    rng = np.random.default_rng(3)
    for p, v in params.items():
        d = rng.normal(size=v.shape)
        lp = model.loss_and_grad(dict(params, **{p: v + 1e-6 * d}), x, t)[0]
        lm = model.loss_and_grad(dict(params, **{p: v - 1e-6 * d}), x, t)[0]
        fd, an = (lp - lm) / 2e-6, float((grads[p] * d).sum())
        assert abs(fd - an) <= 1e-8 + 1e-6 * abs(fd), (p, fd, an)


def test_eqprop_approaches_rbp_first_order_one_sided_second_order_symmetric():
    """Measured over β = 0.1, 0.01, 0.001: the one-sided estimate's error falls 10× per
    decade (O(β)), the symmetric one's 100× (O(β²)); asserted as log-log slopes within 0.15
    of 1 and 2 (measured 0.99 and 2.00)."""
    model, params, x, t = _energy_problem()
    flat = lambda g: np.concatenate([g[k].ravel() for k in sorted(g)])  # noqa: E731
    ref = flat(model.loss_and_grad(params, x, t)[1])
    betas = np.array([1e-1, 1e-2, 1e-3])
    one, sym = [], []
    for beta in betas:
        one.append(np.linalg.norm(flat(model.loss_and_grad(params, x, t, method="eqprop", beta=beta)[1]) - ref))
        sym.append(np.linalg.norm(flat(model.loss_and_grad(params, x, t, method="eqprop", beta=beta,
                                                           symmetric=True)[1]) - ref))
    slope = lambda e: np.polyfit(np.log10(betas), np.log10(e), 1)[0]  # noqa: E731
    assert abs(slope(one) - 1) < 0.15, one
    assert abs(slope(sym) - 2) < 0.15, sym
    assert sym[-1] < 1e-5 * np.linalg.norm(ref)


def test_energy_bptt_through_the_descent():
    """BPTT through k gradient-descent steps on E (the transpose uses Hessian-vector
    products): equal to central differences of the loss after exactly k steps (1e-6
    relative), approaching RBP geometrically in k, and through all of the relaxation's
    steps equal to RBP to ~1e-8 (the descent converged to tol 1e-13)."""
    model, params, x, t = _energy_problem()
    _, g_rbp, s0 = model.loss_and_grad(params, x, t)
    flat = lambda g: np.concatenate([g[k].ravel() for k in sorted(g)])  # noqa: E731
    ref = flat(g_rbp)
    _, g5, _ = model.loss_and_grad(params, x, t, method="bptt", iterations=5)
    _fd_check(lambda q: model.loss_and_grad(q, x, t, method="bptt", iterations=5)[0], g5, params, seed=6)
    errs = [np.linalg.norm(flat(model.loss_and_grad(params, x, t, method="bptt", iterations=k)[1]) - ref)
            for k in (5, 10, 20, 40, 80)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6 * errs[0], errs   # measured: 0.13 → 1.2e-11 relative
    _, g_all, s_all = model.loss_and_grad(params, x, t, method="bptt")
    np.testing.assert_allclose(flat(g_all), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    np.testing.assert_array_equal(s_all["s"], s0["s"])


def test_energy_declared_on_the_cell():
    """``cell.energy(E)`` stores E only: compile_fixed_point(cell) reads it and gives what
    energy=E gives (the same programs: equal to the last bit), the BPTT step ignores it."""
    cell, energy = energy_cell()
    plain = rc.compile(cell, backend="numpy", dtype="float64")
    before = str(cell)
    cell.energy(energy)
    assert cell.energy_expr == energy and str(cell) == before
    model, params, x, t = _energy_problem()
    declared = rc.compile_fixed_point(cell, tol=1e-13, max_iter=5000, step=0.5)
    for method in ("rbp", "eqprop", "bptt"):
        l1, g1, s1 = model.loss_and_grad(params, x, t, method=method)
        l2, g2, s2 = declared.loss_and_grad(params, x, t, method=method)
        assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1), method
    seq = {"x": np.ones((2, 1, 3))}, {"t": np.ones((2, 1, 2))}
    after = rc.compile(cell, backend="numpy", dtype="float64")
    assert after.loss_and_grad(params, *seq)[0] == plain.loss_and_grad(params, *seq)[0]
    from rnncomp.serialize import cell_from_dict, cell_to_dict
    again = cell_from_dict(cell_to_dict(cell))   # the portable checkpoint's form keeps it
    assert again.energy_expr == energy and cell_from_dict(cell_to_dict(energy_cell()[0])).energy_expr is None
    with pytest.raises(rc.CallError, match=r"cell 'hopfield' declares its energy.*energy= would be a second"):
        rc.compile_fixed_point(cell, energy=energy)
    with pytest.raises(rc.CellError, match=r"cell 'hopfield', energy: the energy is declared twice"):
        cell.energy(energy)
    other = rc.Cell("other")
    s = other.state("s", 2)
    with pytest.raises(rc.CellError, match=r"cell 'other', energy: unknown symbol 'zz'"):
        other.energy(sp.Symbol("zz") * s)
    with pytest.raises(rc.ShapeError, match=r"cell 'other', energy: W is a 2×2 matrix"):
        other.energy(other.param("W", (2, 2)))


def test_energy_model_errors():
    cell, energy = energy_cell()
    model = rc.compile_fixed_point(cell, energy=energy, tol=1e-10, max_iter=20, step=0.5)
    params = model.init_params(0)
    x, t = np.ones((2, 3)), np.eye(2)
    with pytest.raises(rc.FixedPointError, match=r"cell 'hopfield': gradient descent on the energy.*max_iter = 20"):
        model.forward(params, x, t)
    model = rc.compile_fixed_point(cell, energy=energy)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        model.loss_and_grad(params, x, t, method="eqprop", beta=0)
    with pytest.raises(ValueError, match="'rbp', 'eqprop' or 'bptt'"):
        model.loss_and_grad(params, x, t, method="bp")
    with pytest.raises(ValueError, match="iterations= is for method='bptt'"):
        model.loss_and_grad(params, x, t, method="eqprop", iterations=5)
    with pytest.raises(ValueError, match="step must be positive"):
        rc.compile_fixed_point(cell, energy=energy, step=0)
    # checked as cell.energy would check it: the message names the user's cell (no longer the
    # internal copy 'hopfield_energy') and the energy
    with pytest.raises(rc.CellError, match=r"cell 'hopfield', energy: unknown symbol 'zz'"):
        rc.compile_fixed_point(cell, energy=sp.Symbol("zz") * energy)
