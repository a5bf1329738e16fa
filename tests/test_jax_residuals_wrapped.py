"""``backward="residuals"`` of ``rc.jax.recurrent`` for the models that wrap others: a compiled
``rc.Stack`` / ``rc.Bidirectional`` (``compose/model.py``) and a cell with derived weights or
constants (``backends/derived.py``).  Found by an adversarial probe: both were a raw
AttributeError (``residual_shapes``), where docs/layers.md promises every ``backward=``.

A composition exports its cells' residuals, bottom layer first (a bidirectional layer's forward
direction, then its backward one), each wire between two layers (the input of the layer above)
and its dropout mask; ``kept_from`` rebuilds the chain from them without running a forward.
Oracles: ``backward="kept"`` of the same layer and the NumPy backend's ``vjp`` (float64, rtol
1e-10), under ``jax.jit``."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")

import jax.numpy as jnp  # noqa: E402

import rnncomp as rc  # noqa: E402
import rnncomp.jax  # noqa: E402,F401
from rnncomp.errors import CallError  # noqa: E402

T, B = 5, 3


pytestmark = pytest.mark.usefixtures("jax_x64")


def masked(n_in=3, n=4, n_out=2):
    cell = rc.Cell("masked")
    x, h = cell.input("x", n_in), cell.state("h", n)
    M = cell.const("M", np.tril(np.ones((n, n))))
    E = cell.weight("E", sp.exp(cell.param("A", (n, n))) / 4)
    cell.update(h, sp.tanh((cell.param("W", (n, n)) * M) @ h + E @ h + cell.param("V", (n, n_in)) @ x))
    cell.output("y", cell.param("U", (n_out, n)) @ h.new)
    return cell


MODELS = {
    "stack": lambda: rc.Stack([rc.cells.lstm(3, 4, 5), rc.cells.gru(5, 4, 2)]),
    "bidirectional": lambda: rc.Bidirectional(rc.cells.elman(3, 4, 2)),
    "stack of a bidirectional": lambda: rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 3)),
                                                  rc.cells.elman(6, 4, 2)]),
    "bidirectional stack": lambda: rc.Bidirectional(rc.Stack([rc.cells.elman(3, 4, 3), rc.cells.gru(3, 4, 2)])),
    "derived weights": masked,
    "stack with derived weights": lambda: rc.Stack([masked(3, 4, 5), rc.cells.elman(5, 4, 2)]),
}


def _grads(layer, params, x, dy):
    f = jax.jit(jax.grad(lambda p, xx: jnp.sum(layer(p, xx)[0] * dy), argnums=(0, 1)))
    return f(params, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_residuals_gradients_are_the_kept_layers_and_the_oracles(name):
    model = MODELS[name]()
    layer = rc.jax.recurrent(model, output="y", dtype="float64", backward="residuals")
    assert len(layer.model.residual_shapes(T, B)) > 0  # exported, not the forward again
    kept = rc.jax.recurrent(model, output="y", dtype="float64", backward="kept")
    rng = np.random.default_rng(0)
    params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in layer.init_params(seed=0).items()}
    x = rng.normal(size=(T, B, 3))
    dy = rng.normal(size=(T, B, model.step.outputs["y"]))
    got, want = _grads(layer, params, x, dy), _grads(kept, params, x, dy)
    oracle = rc.compile(model, backend="numpy", dtype="float64").vjp(
        {k: np.asarray(v) for k, v in params.items()}, {"x": x}, d_outputs={"y": dy})
    for k in params:
        np.testing.assert_allclose(got[0][k], want[0][k], rtol=1e-13, atol=1e-15, err_msg=k)
        np.testing.assert_allclose(got[0][k], oracle.params[k], rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(got[1], oracle.inputs["x"], rtol=1e-10, atol=1e-13)


def _stack_problem(dropout):
    stack = rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 3)), rc.cells.elman(6, 4, 2)], dropout=dropout)
    model = rc.compile(stack, backend="native", dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    params = model.init_params(seed=0)
    x, t = {"x": rng.normal(size=(T, B, 3))}, {"target": rng.normal(size=(T, B, 2))}
    return model, params, x, t, {"y": rng.normal(size=(T, B, 2))}


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_composed_kept_from_gives_its_kept_forwards_gradients(dropout):
    """With dropout the masks the forward drew travel with the residuals: the backward from them
    is that forward's, not one under new masks."""
    model, params, x, _, dy = _stack_problem(dropout)
    kept = model.forward(params, x, keep=True)
    saved = [np.array(a) for a in kept.residuals()]
    assert [a.shape for a in saved] == model.residual_shapes(T, B)
    want = kept.backward(dy)
    kept.free()
    later = model.kept_from(saved, params, x)
    assert later.outputs is None and later.final is None
    got = later.backward(dy)
    for k in params:
        np.testing.assert_allclose(got.params[k], want.params[k], rtol=1e-13, atol=1e-15, err_msg=k)
    np.testing.assert_allclose(got.inputs["x"], want.inputs["x"], rtol=1e-13, atol=1e-15)


def test_a_composed_kept_from_with_targets_and_wrt():
    model, params, x, t, _ = _stack_problem(0.0)
    kept = model.forward(params, x, keep=True, targets=t, wrt=())
    saved = [np.array(a) for a in kept.residuals()]
    assert [a.shape for a in saved] == model.residual_shapes(T, B, targets=True, wrt=())
    want = kept.backward()
    got = model.kept_from(saved, params, x, targets=t, wrt=()).backward()
    assert got.inputs == {} and got.loss is None and want.loss is not None
    for k in params:
        np.testing.assert_allclose(got.params[k], want.params[k], rtol=1e-13, atol=1e-15, err_msg=k)


def test_composed_kept_from_names_wrong_residuals():
    model, params, x, _, _ = _stack_problem(0.0)
    shapes = model.residual_shapes(T, B)
    saved = [np.zeros(s) for s in shapes]
    with pytest.raises(CallError, match=rf"stack\(bidirectional\(gru\), elman\): kept_from needs the {len(shapes)} "
                                        rf"residuals of a \(T={T}, B={B}\) forward \(model.residual_shapes\), got 2"):
        model.kept_from(saved[:2], params, x)
    saved[-1] = np.zeros((shapes[-1][0] + 6,) + shapes[-1][1:])
    with pytest.raises(CallError, match=rf"stack\(bidirectional\(gru\), elman\): residual {len(shapes) - 1} has "
                                        rf"shape \({shapes[-1][0] + 6}, 3, 4\) and dtype float64, expected "
                                        rf"\({shapes[-1][0]}, 3, 4\) of float64"):
        model.kept_from(saved, params, x)


def test_a_numpy_composition_exports_its_wires_and_runs_its_cells_again():
    """The NumPy backend's cells export nothing (docs/vjp.md): a stack's residuals are its wires
    only, and kept_from's backward runs each cell's forward again, with the same gradients."""
    stack = rc.Stack([rc.cells.lstm(3, 4, 5), rc.cells.gru(5, 4, 2)])
    model = rc.compile(stack, backend="numpy", dtype="float64")
    assert model.residual_shapes(T, B) == [(T, B, 5)]
    params, x = model.init_params(seed=0), {"x": np.random.default_rng(0).normal(size=(T, B, 3))}
    dy = {"y": np.ones((T, B, 2))}
    kept = model.forward(params, x, keep=True)
    got = model.kept_from(kept.residuals(), params, x).backward(dy)
    want = kept.backward(dy)
    for k in params:
        np.testing.assert_allclose(got.params[k], want.params[k], rtol=1e-13, atol=1e-15, err_msg=k)
