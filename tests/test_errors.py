"""Bad input: each case a clear error naming the cell, the equation or argument, and the shapes."""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.errors import CallError, CellError, DifferentiationError, ShapeError

from gradcheck import numpy_model, random_data


def base(H=4, D=3):
    cell = rc.Cell("bad")
    return cell, cell.input("x", D), cell.state("h", H)


def test_shape_mismatch_in_matvec():
    cell, x, h = base()
    W = cell.param("W", (4, 4))
    with pytest.raises(ShapeError, match=r"cell 'bad'.*W @ \(x\).*4×4.*size 3"):
        W @ x


def test_shape_mismatch_elementwise_names_equation_and_sizes():
    cell, x, h = base()
    with pytest.raises(ShapeError, match=r"cell 'bad', update of state 'h'.*sizes.*x: 3"):
        cell.update(h, sp.tanh(h + x))


def test_state_without_update():
    cell, x, h = base()
    cell.loss(h ** 2)
    with pytest.raises(CellError, match=r"state 'h' has no update"):
        cell.step


def test_update_of_non_state():
    cell, x, h = base()
    with pytest.raises(CellError, match=r"update of 'x', which is a input"):
        cell.update(x, x)


def test_state_updated_twice():
    cell, x, h = base()
    cell.update(h, h)
    with pytest.raises(CellError, match="updated twice"):
        cell.update(h, 2 * h)


def test_unknown_symbol():
    cell, x, h = base()
    z = sp.Symbol("z")
    with pytest.raises(CellError, match=r"update of state 'h': unknown symbol 'z'"):
        cell.update(h, sp.tanh(h + z))


def test_symbol_of_another_cell():
    cell, x, h = base()
    other = rc.Cell("other")
    q = other.input("q", 4)
    with pytest.raises(CellError, match=r"unknown symbol 'q'"):
        cell.update(h, h + q)


def test_loss_that_is_not_a_scalar_expression():
    cell, x, h = base()
    W = cell.param("W", (4, 4))
    with pytest.raises(ShapeError, match=r"loss: W is a 4×4 matrix"):
        cell.loss(W)
    with pytest.raises(CellError, match="loss: expected a sympy expression"):
        cell.loss([h, h])
    with pytest.raises(CellError, match="condition"):
        cell.loss(h > 0)


def test_unsupported_function_is_named_with_the_list():
    cell, x, h = base()
    g = sp.Function("g")
    with pytest.raises(CellError, match=r"function 'g' is not supported.*supported: Abs"):
        cell.update(h, g(h))


def test_non_differentiable_function_where_gradient_is_required():
    cell, x, h = base()
    cell.update(h, sp.floor(cell.param("W", (4, 3)) @ x) + h / 2)
    cell.loss(h.new ** 2)
    with pytest.raises(DifferentiationError, match=r"cell 'bad'.*floor.*no derivative"):
        rc.backward_step(cell.step)
    # the forward pass itself is fine
    params = cell.init_params()
    outs, final = numpy_model(cell).forward(params, np.ones((2, 1, 3)))
    assert final["h"].shape == (1, 4)


def test_algebraic_loop():
    cell, x, h = base()
    a = cell.state("a", 4)
    cell.update(h, a.new + x[0] if False else a.new)
    cell.update(a, sp.tanh(h.new))
    with pytest.raises(CellError, match=r"algebraic loop.*h → a → h"):
        cell.step


def test_name_collisions_and_bad_names():
    cell, x, h = base()
    with pytest.raises(CellError, match="already declared as input"):
        cell.param("x", 3)
    with pytest.raises(CellError, match="must be a letter"):
        cell.input("_x", 3)
    with pytest.raises(CellError, match="positive integer"):
        cell.input("y", 0)
    with pytest.raises(CellError, match="positive integer"):
        cell.param("P", (3, 2.5))
    with pytest.raises(CellError, match="unknown initialiser"):
        cell.param("Q", 3, init="gaussian")


def test_slice_out_of_range():
    cell, x, h = base()
    with pytest.raises(ShapeError, match=r"slice \[2:9\].*size 4"):
        cell.update(h, rc.vslice(h, 2, 9))


@pytest.fixture
def elman():
    cell = rc.cells.elman(3, 4, 2)
    return cell, numpy_model(cell), *random_data(cell, T=3, B=2)


def test_call_wrong_shape(elman):
    cell, model, params, inputs, targets = elman
    with pytest.raises(CallError, match=r"cell 'elman': inputs\['x'\] has shape \(3, 2, 5\), expected \(3, 2, 3\)"):
        model.loss_and_grad(params, np.zeros((3, 2, 5)), targets)
    bad = dict(params, U=np.zeros((4, 5)))
    with pytest.raises(CallError, match=r"params\['U'\] has shape \(4, 5\), expected \(4, 4\)"):
        model.loss_and_grad(bad, inputs, targets)


def test_call_wrong_dtype_and_names(elman):
    cell, model, params, inputs, targets = elman
    with pytest.raises(CallError, match=r"dtype float32.*compiled for float64"):
        model.loss_and_grad(dict(params, W=params["W"].astype(np.float32)), inputs, targets)
    with pytest.raises(CallError, match=r"missing params 'W'"):
        model.loss_and_grad({k: v for k, v in params.items() if k != "W"}, inputs, targets)
    with pytest.raises(CallError, match=r"unknown params 'Z'"):
        model.loss_and_grad(dict(params, Z=np.zeros(1)), inputs, targets)
    with pytest.raises(CallError, match=r"missing targets 'target'"):
        model.loss_and_grad(params, inputs, {})
    with pytest.raises(CallError, match=r"time-major \(T, B, n\)"):
        model.loss_and_grad(params, np.zeros((3, 3)), targets)
    with pytest.raises(CallError, match=r"empty sequence: T = 0"):
        model.loss_and_grad(params, np.zeros((0, 2, 3)), {"target": np.zeros((0, 2, 2))})


def test_call_nan_is_reported_with_index(elman):
    cell, model, params, inputs, targets = elman
    x = inputs["x"].copy()
    x[1, 0, 2] = np.nan
    with pytest.raises(CallError, match=r"inputs\['x'\] contains nan at index \(1, 0, 2\)"):
        model.loss_and_grad(params, x, targets)


def test_call_bad_mask_and_h0(elman):
    cell, model, params, inputs, targets = elman
    with pytest.raises(CallError, match=r"mask has shape \(2,\)"):
        model.loss_and_grad(params, inputs, targets, mask=np.ones(2))
    with pytest.raises(CallError, match="selects no step"):
        model.loss_and_grad(params, inputs, targets, mask=np.zeros(3))
    with pytest.raises(CallError, match=r"h0\['h'\] has shape \(4,\), expected \(2, 4\)"):
        model.loss_and_grad(params, inputs, targets, h0={"h": np.zeros(4)})


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        rc.compile(rc.cells.elman(2, 2, 2), backend="tpu")
