"""Custom cells written in the DSL: every feature, each checked against finite differences."""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_loss_and_grad

from gradcheck import assert_grads_close, check_grads, numpy_model, random_data


def _finish(cell, h_new, n, n_out=2, loss=None):
    y = cell.output("y", cell.param("V", (n_out, n)) @ h_new)
    t = cell.target("t", n_out)
    cell.loss(loss(y, t) if loss else (y - t) ** 2 / 2)
    return cell


def stacked_gates():
    """One stacked matrix, gates sliced out, concatenated input: the 'fused' way of writing LSTM."""
    cell = rc.Cell("stacked")
    x, h, c = cell.input("x", 3), cell.state("h", 4), cell.state("c", 4)
    W = cell.param("W", (16, 7))
    z = cell.define("z", W @ rc.concat(x, h) + cell.param("b", 16))
    i, f, o = (rc.sigmoid(rc.vslice(z, k * 4, k * 4 + 4)) for k in range(3))
    g = sp.tanh(rc.vslice(z, 12, 16))
    cell.update(c, f * c + i * g)
    cell.update(h, o * sp.tanh(c.new))
    return _finish(cell, h.new, 4)


def piecewise_and_kinks():
    cell = rc.Cell("kinks")
    x, h = cell.input("x", 3), cell.state("h", 4)
    a = cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h
    hard = sp.Piecewise((-1, a < -1), (1, a > 1), (a, True))
    cell.update(h, rc.relu(a) * 0.5 + hard * 0.3 + rc.softsign(a) * 0.2 + sp.Abs(a) * 0.1)
    return _finish(cell, h.new, 4)


def scalars_and_vectors():
    """Scalar parameters broadcast, a vector parameter multiplied element-wise, a user Lambda."""
    cell = rc.Cell("scalars")
    x, h = cell.input("x", 3), cell.state("h", 5)
    alpha, beta = cell.param("alpha", 1, init=("constant", 0.5)), cell.param("beta", 1)
    u = cell.param("u", 5, init=("uniform", 0.5))
    z = sp.Symbol("z")
    act = sp.Lambda(z, z / (1 + z ** 2))
    cell.update(h, alpha * act(cell.param("W", (5, 3)) @ x + u * h) + beta * sp.exp(-h ** 2))
    return _finish(cell, h.new, 5)


def antisymmetric_and_transposes():
    cell = rc.Cell("transposes")
    x, h = cell.input("x", 4), cell.state("h", 4)
    W, A = cell.param("W", (4, 4)), cell.param("A", (4, 4))
    cell.update(h, sp.tanh((W - W.T) @ h + 0.5 * (A + A.T) @ x + A.T @ h))
    return _finish(cell, h.new, 4)


def many_functions():
    cell = rc.Cell("functions")
    x, h = cell.input("x", 3), cell.state("h", 3, init="learn")
    a = cell.param("W", (3, 3)) @ x + cell.param("U", (3, 3)) @ h
    e = (sp.sin(a) + sp.cos(a) / 2 + sp.atan(a) + rc.gelu(a) / 3 + rc.softplus(a) / 4 + sp.sinh(a) / 5
         + sp.cosh(a) / 7 + rc.swish(a) / 3 + sp.Max(a, -a / 2) / 5 + sp.Min(a, 1) / 3 + sp.erf(a) / 4
         + sp.sqrt(1 + a ** 2) / 5 + (1 + a ** 2) ** sp.Rational(1, 3) / 6 + sp.log(2 + sp.tanh(a)))
    cell.update(h, sp.tanh(e))
    return _finish(cell, h.new, 3)


def jordan_with_xent():
    cell = rc.Cell("jordan_xent")
    x, s = cell.input("x", 3), cell.state("s", 4)
    hid = cell.define("hid", sp.tanh(cell.param("W", (5, 3)) @ x + cell.param("U", (5, 4)) @ s))
    y = cell.output("y", cell.param("V", (4, 5)) @ hid + cell.param("c", 4))
    cell.update(s, rc.softmax(y))
    t = cell.target("t", 4)
    cell.loss(rc.softmax_xent(y, t))
    return cell


def state_reads_new_and_output():
    """h reads c.new declared *after* it; the loss reads an intermediate; two inputs."""
    cell = rc.Cell("order")
    x1, x2 = cell.input("x1", 2), cell.input("x2", 3)
    h, c = cell.state("h", 4), cell.state("c", 4)
    cell.update(h, sp.tanh(cell.param("U", (4, 4)) @ c.new + cell.param("A", (4, 2)) @ x1))
    cell.update(c, rc.sigmoid(cell.param("B", (4, 3)) @ x2) * c + h / 2)
    return _finish(cell, h.new + c.new, 4, loss=lambda y, t: sp.log(1 + (y - t) ** 2))


def copy_then_product():
    """A defined copy of a value read by a product (found in review: the PTX scheduler put the
    product before the copy's source, since the copy costs no launch and hid the dependency)."""
    cell = rc.Cell("copy_then_product")
    x, h = cell.input("x", 3), cell.state("h", 4)
    a = cell.define("a", sp.tanh(cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h))
    k = cell.define("k", a)
    cell.update(h, a)
    y = cell.output("y", cell.param("V", (2, 4)) @ k)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell


CUSTOM = [stacked_gates, piecewise_and_kinks, scalars_and_vectors, antisymmetric_and_transposes,
          many_functions, jordan_with_xent, state_reads_new_and_output, copy_then_product]


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cell_gradients(make):
    cell = make()
    params, inputs, targets = random_data(cell, T=5, B=3, seed=3)
    if make is jordan_with_xent:
        targets = {"t": np.eye(4)[np.random.default_rng(1).integers(0, 4, (5, 3))]}
    model = numpy_model(cell)
    check_grads(model, params, inputs, targets)
    l1, g1, _ = model.loss_and_grad(params, inputs, targets)
    l2, g2, _ = unrolled_loss_and_grad(cell, params, inputs, targets)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert_grads_close(g1, g2)


def test_learned_initial_state_gets_a_gradient():
    cell = many_functions()
    params, inputs, targets = random_data(cell, T=3, B=2)
    _, grads, _ = numpy_model(cell).loss_and_grad(params, inputs, targets)
    assert np.abs(grads["h_0"]).sum() > 0
    # given h0 overrides the learned one, and then h_0 gets no gradient
    _, grads2, _ = numpy_model(cell).loss_and_grad(params, inputs, targets, h0={"h": np.zeros((2, 3))})
    assert np.abs(grads2["h_0"]).sum() == 0


def test_xent_is_stable_for_huge_logits():
    cell = rc.Cell("big")
    x = cell.input("x", 3)
    h = cell.state("h", 3)
    cell.update(h, x)
    y = cell.output("y", 1e4 * cell.param("s", 1, init="ones") * h.new)
    cell.loss(rc.softmax_xent(y, cell.target("t", 3)))
    params = cell.init_params()
    x = np.array([[[1.0, -1.0, 0.5]]])
    t = np.array([[[0.0, 1.0, 0.0]]])
    loss, grads, _ = numpy_model(cell).loss_and_grad(params, x, t)
    assert loss == pytest.approx(2e4, rel=1e-12)  # logsumexp(1e4, -1e4, 5e3) - (-1e4)
    assert np.isfinite(grads["s"]).all()
    # each sample is shifted by its own largest logit: a batch with logits 1e4 apart loses no row
    x2 = np.array([[[1.0, -1.0, 0.5], [-0.1, 0.0, -0.2]]])
    t2 = np.array([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    loss2, grads2, _ = numpy_model(cell).loss_and_grad(params, x2, t2)
    # row 2: logsumexp(-1e3, 0, -2e3) - (-1e3) = 1e3 + log(1 + e^-1000 + e^-2000) = 1e3; the mean of the rows
    assert loss2 == pytest.approx((2e4 + 1e3) / 2, rel=1e-12)
    assert np.isfinite(grads2["s"]).all()
    loss3, grads3, _ = rc.compile(cell, backend="native", dtype="float64").loss_and_grad(params, x2, t2)
    assert loss3 == pytest.approx(loss2, rel=1e-12)
    np.testing.assert_allclose(grads3["s"], grads2["s"], rtol=1e-12)


def test_teacher_forcing_forward_takes_targets():
    """A state update that reads a target (teacher forcing): forward() needs targets= and says
    so when they are missing; numpy, native and the PTX kernels (host runner) agree."""
    from rnncomp.errors import CallError
    cell = rc.Cell("teacher_forced")
    x, h = cell.input("x", 3), cell.state("h", 4)
    t = cell.target("t", 2)
    cell.update(h, sp.tanh(cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h
                           + cell.param("A", (4, 2)) @ t))
    y = cell.output("y", cell.param("V", (2, 4)) @ h.new)
    cell.loss((y - t) ** 2 / 2)
    params, inputs, targets = random_data(cell, T=4, B=3, seed=2)
    models = [rc.compile(cell, backend="numpy"), rc.compile(cell, backend="native", cache=None),
              rc.compile(cell, backend="ptx", runner="host")]
    ref_out, ref_fin = models[0].forward(params, inputs, targets=targets)
    _, _, fin_train = models[0].loss_and_grad(params, inputs, targets)
    np.testing.assert_allclose(ref_fin["h"], fin_train["h"], rtol=1e-14)
    zero_t = {"t": np.zeros_like(targets["t"])}
    assert np.abs(models[0].forward(params, inputs, targets=zero_t)[0]["y"] - ref_out["y"]).max() > 1e-3
    for m in models:
        with pytest.raises(CallError, match="read target 't'.*pass targets= to forward"):
            m.forward(params, inputs)
        out, fin = m.forward(params, inputs, targets=targets)
        np.testing.assert_allclose(out["y"], ref_out["y"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(fin["h"], ref_fin["h"], rtol=1e-12, atol=1e-13)
    # a cell whose forward reads no target still runs without them
    plain = rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", runner="host")
    p2, i2, _ = random_data(rc.cells.elman(3, 4, 2), T=3, B=2)
    assert plain.forward(p2, i2)[0]["y"].shape == (3, 2, 2)


@pytest.mark.parametrize("c", [2, -3, 0.5])
def test_a_scaled_product_is_the_product_with_the_scaled_matrix(c):
    # (c·W) @ x is lowered to a product term with coefficient c: loss and gradients must be those
    # of the plain cell at W' = c·W (∂/∂W = c·∂/∂W'), an identity the code does not use
    def make(scale):
        cell = rc.Cell("scaled")
        x, h = cell.input("x", 3), cell.state("h", 4)
        cell.update(h, sp.tanh((scale * cell.param("W", (4, 3))) @ x + cell.param("U", (4, 4)) @ h))
        return _finish(cell, h.new, 4)
    scaled, plain = make(c), make(1)
    params, inputs, targets = random_data(scaled, T=4, B=2)
    l1, g1, _ = numpy_model(scaled).loss_and_grad(params, inputs, targets)
    l2, g2, _ = numpy_model(plain).loss_and_grad(dict(params, W=c * params["W"]), inputs, targets)
    assert l1 == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(g1["W"], c * g2["W"], rtol=1e-10, atol=1e-14)
    for p in ("U", "V"):
        np.testing.assert_allclose(g1[p], g2[p], rtol=1e-10, atol=1e-14)


def test_a_float32_oracle_stays_float32_through_every_function():
    # the NumPy oracle of a float32 model computes in float32 (as the native backend does):
    # erf is not a numpy ufunc (math.erf per element, then cast); a float64 value leaking out of
    # it would widen every later value, the final states and the gradients
    cell = many_functions()
    model = rc.compile(cell, backend="numpy", dtype="float32")
    params = {k: v.astype(np.float32) for k, v in cell.init_params(seed=0).items()}
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=(3, 2, 3)).astype(np.float32)}
    t = {"t": rng.normal(size=(3, 2, 2)).astype(np.float32)}
    outs, final = model.forward(params, x)
    loss, grads, _ = model.loss_and_grad(params, x, t)
    assert {a.dtype for a in [*outs.values(), *final.values(), *grads.values()]} == {np.dtype(np.float32)}
    # and the same numbers, to float32's rounding: ~6e-8 per operation, a few hundred operations
    # per value over 3 steps, so ~1e-5 relative; 1e-5 for the loss, 1e-3 (and 1e-6 of the largest
    # entry, for entries near 0) for the gradients, whose sums cancel
    ref = rc.compile(cell, backend="numpy", dtype="float64")
    loss64, grads64, _ = ref.loss_and_grad({k: v.astype(np.float64) for k, v in params.items()},
                                           {"x": x["x"].astype(np.float64)}, {"t": t["t"].astype(np.float64)})
    assert loss == pytest.approx(loss64, rel=1e-5)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads64[k], rtol=1e-3, atol=1e-6 * np.abs(grads64[k]).max())


def test_a_function_without_a_derivative_of_data_only_is_fine():
    # floor of an input, in one template with the state: no gradient flows to the input (it is
    # data, not learned), so floor needs no derivative; its partial is never formed (asking
    # for the input's cotangent names floor instead, as every gradient through it does)
    cell = rc.Cell("floor_of_data")
    x, h = cell.input("x", 3), cell.state("h", 3)
    cell.update(h, sp.tanh(cell.param("W", (3, 3)) @ x + cell.param("U", (3, 3)) @ h) * (1 + sp.floor(x) / 4))
    cell = _finish(cell, h.new, 3)
    params, inputs, targets = random_data(cell, T=5, B=3, seed=4, scale=2.0)
    model = numpy_model(cell)
    check_grads(model, params, inputs, targets)
    native = rc.compile(cell, backend="native", dtype="float64")
    l1, g1, _ = model.loss_and_grad(params, inputs, targets)
    l2, g2, _ = native.loss_and_grad(params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-12)
    assert_grads_close(g2, g1)
    with pytest.raises(rc.DifferentiationError, match=r"uses 'floor', which has no derivative"):
        model.vjp(params, inputs, d_outputs={"y": np.ones((5, 3, 2))})
