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
    with pytest.raises(CellError, match=r"update of 'x', which is an input"):
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
    with pytest.raises(CellError, match="must be a letter"):  # the audit of #22: "$" let a final newline in
        cell.input("x2\n", 3)
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


# ----------------------------------------------------------------------------- more declaration mistakes
def test_complex_and_non_finite_constants_are_refused():
    cell, x, h = base()
    with pytest.raises(CellError, match=r"cell 'bad', update of state 'h': complex constant I in I\*h"):
        cell.update(h, h * sp.I)
    with pytest.raises(CellError, match=r"update of state 'h': non-finite constant zoo in zoo\*h .*division by zero"):
        cell.update(h, h / 0)
    with pytest.raises(CellError, match=r"cell 'bad', loss: non-finite constant oo"):
        cell.loss(h + sp.oo)
    with pytest.raises(CellError, match=r"update of state 'h': non-finite constant nan"):
        cell.update(h, h * sp.nan)


def test_integer_and_boolean_misuse():
    cell, x, h = base()
    with pytest.raises(CellError, match=r"cell 'bad', input 'y': size must be a positive integer, got True"):
        cell.input("y", True)
    with pytest.raises(CellError, match=r"param 'W': size must be a positive integer, got 2.5"):
        cell.param("W", (4, 2.5))
    with pytest.raises(CellError, match=r"update of state 'h': True is a condition, not a number"):
        cell.update(h, True)
    with pytest.raises(CellError, match=r"update of state 'h': \(h > 0\) & \(h < 1\) is a condition"):
        cell.update(h, sp.And(h > 0, h < 1))
    with pytest.raises(CellError, match=r"update of state 'h': Piecewise condition h is not a comparison"):
        cell.update(h, sp.Piecewise((h, h), (0, True)))
    with pytest.raises(CellError, match=r"rc.vslice\(h, 0.5, 2\): the bounds must be integers, got float 0.5"):
        rc.vslice(h, 0.5, 2)
    with pytest.raises(CellError, match=r"rc.vslice\(h, False, 2\): the bounds must be integers, got bool"):
        rc.vslice(h, False, 2)
    with pytest.raises(CellError, match=r"the bounds must be integers, got Symbol k"):
        rc.vslice(h, sp.Symbol("k"), 2)
    cell.update(h, rc.vslice(rc.concat(h, x), np.int64(1), np.int64(5)))  # numpy integers are fine
    assert cell.size_of(rc.vslice(h, np.int64(1), 3), "here") == 2


def test_piecewise_conditions_are_size_checked_at_declaration():
    cell, x, h = base()
    with pytest.raises(ShapeError, match=r"cell 'bad', update of state 'h': element-wise operands of "
                                         r"different sizes \(.*x: 3.*\) in Piecewise"):
        cell.update(h, sp.Piecewise((h, x > 0), (h / 2, True)))


def test_matrix_and_vector_operator_misuse():
    cell, x, h = base()
    W = cell.param("W", (4, 4))
    with pytest.raises(ShapeError, match=r"cell 'bad': cannot combine the 4×4 matrix W with h"):
        W + h
    with pytest.raises(ShapeError, match=r"cell 'bad': cannot combine the 4×4 matrix W with h"):
        h - W
    with pytest.raises(ShapeError, match=r"cell 'bad'.*matrix product of a 4×4 \(W\) and a 3×3 \(A\) matrix"):
        W @ cell.param("A", (3, 3))  # W @ W is a derived weight (#19); sizes must still fit
    with pytest.raises(CellError, match=r"cell 'bad'.*h is a state; a derived weight reads only parameters"):
        h * W
    with pytest.raises(CellError, match=r"h @ x: @ needs a matrix parameter on the left.*rc.vsum\(a \* b\)"):
        h @ x
    with pytest.raises(CellError, match=r"rc.concat: expected a vector expression, got a list.*rc.concat\(\*vectors\)"):
        rc.concat([h, x])
    with pytest.raises(ShapeError, match=r"rc.vsum: W is a 4×4 matrix, not a vector"):
        rc.vsum(W)


def test_empty_batch_is_reported_for_every_backend():
    cell = rc.cells.elman(3, 4, 2)
    params = cell.init_params()
    for model in (numpy_model(cell), rc.compile(cell, backend="native", cache=None)):
        with pytest.raises(CallError, match=r"cell 'elman': empty sequence: T = 3, B = 0 \(from 'x'\)"):
            model.loss_and_grad(params, np.zeros((3, 0, 3)), np.zeros((3, 0, 2)))
        with pytest.raises(CallError, match=r"cell 'elman': empty sequence: T = 0, B = 2"):
            model.forward(params, np.zeros((0, 2, 3)))


@pytest.mark.parametrize("threads", ["two", 0, -1, 1.5, True])
def test_bad_thread_count_is_a_clear_error(threads):
    with pytest.raises(ValueError, match=r"cell 'elman': threads must be a positive integer"):
        rc.compile(rc.cells.elman(2, 3, 1), backend="native", cache=None, threads=threads)


# ----------------------------------------------------------------------------- issue #22: raw errors at declaration
def test_a_matrix_whose_terms_cancel_is_named():
    cell, x, h = base()
    W = cell.param("W", (4, 4))
    for expr in ((W - W) @ h, (W + W.T - W - W.T) @ h):
        with pytest.raises(CellError, match=r"cell 'bad', update of state 'h': the matrix of a product .* is zero "
                                            r"\(its terms cancel"):
            cell.update(h, sp.tanh(expr))
    with pytest.raises(CellError, match=r"cell 'bad', output 'y': the matrix of a product"):
        cell.output("y", (2 * W - W - W) @ h)


def test_a_plain_symbol_named_like_a_declaration_is_named():
    cell, x, h = base()
    W = cell.param("W", (4, 3))
    with pytest.raises(CellError, match=r"update of state 'h': unknown symbol 'W' .*named like param 'W'"):
        cell.update(h, sp.tanh(sp.Symbol("W") * h + W @ x))  # next to W @ x: was a TypeError
    with pytest.raises(CellError, match=r"definition of 'd': unknown symbol 'x' .*named like input 'x'"):
        cell.define("d", sp.Symbol("x") + h)
    for dummy in (sp.Dummy("_0"), sp.Dummy(), sp.Dummy("q")):  # "_0" was an AssertionError in ir.verify
        with pytest.raises(CellError, match=rf"cell 'bad', loss: unknown symbol {dummy.name!r}"):
            cell.loss(dummy * h)


@pytest.mark.parametrize("const, what", [(sp.Integer(10) ** 400, "overflows to inf"),
                                         (sp.Float("1e400"), "overflows to inf"),
                                         (sp.exp(1000), "overflows to inf"),
                                         (-sp.Integer(10) ** 309, "overflows to inf"),
                                         (sp.Rational(1, 10 ** 400), "underflows to 0"),
                                         (sp.exp(-1000), "underflows to 0")])
def test_a_constant_out_of_float64_range_is_named(const, what):
    cell, x, h = base()
    W = cell.param("W", (4, 4))
    with pytest.raises(CellError, match=rf"cell 'bad', update of state 'h': the constant .* {what} in float64"):
        cell.update(h, sp.tanh(const * h))  # 10**400 was an OverflowError from the generated NumPy code
    with pytest.raises(CellError, match=rf"cell 'bad', output 'y': the constant .* {what}"):
        cell.output("y", (const * W) @ h)
    cell.update(h, sp.tanh(sp.Float("1e300") * h + sp.Float("1e-300") * (W @ h)))  # in range: accepted
    assert np.isfinite(numpy_model(cell).forward(cell.init_params(), {"x": np.ones((2, 1, 3))})[1]["h"]).all()


@pytest.mark.parametrize("make, name", [
    (lambda a: sp.floor(a) + a, "floor"),           # not the tanh around it, whose derivative holds floor's
    (lambda a: sp.Abs(a) + sp.floor(a), "floor"),   # Abs comes first and has a derivative (real arguments)
    (lambda a: sp.Piecewise((sp.floor(a), a > 0), (a, True)), "floor"),  # inside a Piecewise
    (lambda a: sp.Max(a, 0) + sp.ceiling(a), "ceiling"),
    (lambda a: sp.Heaviside(a) + sp.floor(a), "floor"),  # Heaviside's constant second argument is no variable
])
def test_the_error_names_the_function_without_a_derivative_not_the_one_around_it(make, name):
    cell, x, h = base()
    W = cell.param("W", (4, 3))
    cell.update(h, sp.tanh(make(W @ x)) + h / 2)
    cell.loss(h.new ** 2)
    with pytest.raises(DifferentiationError, match=rf"uses '{name}', which has no derivative"):
        rc.backward_step(cell.step)


def test_a_gradient_through_floor_is_named_in_the_users_terms():
    """The message wrote compiler temporaries ("floor2[t] = floor(_0) ... (to a1[t])", found by
    a probe); it now writes the value as the cell declares it."""
    cell, x, h = base(H=3)
    b = cell.param("b", 3)
    cell.update(h, sp.floor(x + b) * sp.tanh(x) + h / 2)
    cell.loss(h.new ** 2)
    with pytest.raises(DifferentiationError, match=r"cell 'bad': floor\(b \+ x\[t\]\) uses 'floor', which has no "
                                                   r"derivative there, but a gradient flows through it \(to b \+ x\[t\]\)"):
        rc.backward_step(cell.step)


def test_the_unrolled_reference_names_the_cell_in_its_errors():
    from rnncomp.autodiff import unrolled
    cell, x, h = base()
    cell.update(h, sp.floor(cell.param("W", (4, 3)) @ x) + h / 2)
    cell.loss(h.new ** 2)
    with pytest.raises(DifferentiationError, match=r"cell 'bad' unfolded: .* uses 'floor'"):
        unrolled(cell.step, 2)


@pytest.mark.parametrize("matrix", [lambda: sp.MatrixSymbol("Q", 4, 4), lambda: sp.Identity(4)])
def test_a_sympy_matrix_that_is_not_a_parameter_is_named(matrix):
    """Found by an adversarial probe: ``sp.MatrixSymbol("Q", 4, 4) @ h`` was accepted, then the
    NumPy backend failed at call time (NameError inside lambdify) and native with "cannot lower
    MatMul (_0*Q)", naming no cell or equation."""
    c = rc.Cell("e")
    h = c.state("h", 4)
    with pytest.raises(CellError, match=r"cell 'e', update of state 'h': .* is a sympy matrix \(MatMul\), "
                                        r"not a parameter of the cell: declare matrices with cell.param"):
        c.update(h, sp.tanh(matrix() @ h))


def test_a_piecewise_that_may_select_nothing_is_named():
    """Found by an adversarial probe: a Piecewise without an otherwise branch compiled and gave
    loss NaN on every backend.  Conditions sympy shows to cover everything are accepted."""
    c = rc.Cell("pw")
    x, h = c.input("x", 3), c.state("h", 3)
    for pieces in (((sp.tanh(x + h), x > 0),), ((x, x + h > 0), (h, x + h < 0))):
        with pytest.raises(CellError, match=r"cell 'pw', update of state 'h': Piecewise\(.*\) has no otherwise "
                                            r"branch, so its value is undefined \(NaN\) .* end it with \(value, True\)"):
            c.update(h, sp.Piecewise(*pieces))
    c.update(h, sp.Piecewise((x, x + h > 0), (h, x + h <= 0)))  # the complement: sympy makes it True
    c.loss(rc.vsum(h.new ** 2))
    assert np.isfinite(rc.compile(c, backend="numpy").loss_and_grad(
        c.init_params(seed=0), np.ones((2, 1, 3)), {})[0])


def test_probe_of_element_wise_functions_named_errors():
    """Found by a probe of sympy functions in cells (2026-12-07), each a named CellError now:
    a negative constant base to a variable power (its derivative is complex: the oracle dropped
    the imaginary part, the native printer failed on `I`), `%`/divmod on a vector (sympy's Mod
    asked its gcd to iterate the vector: a TypeError from sympy.polys), `%` on a matrix, and a
    constant a float32 model cannot hold (1e-46 was 0, 1e39 inf, on every backend alike)."""
    cell, x, h = base(H=3)
    c = cell.param("c", 3)
    with pytest.raises(CellError, match=r"\(-2\)\*\*\(c \+ x\): a negative base to a variable power is complex"):
        cell.update(h, (-2) ** (x + c) + 0 * h)
    for op in (lambda: x % 2, lambda: 2 % x, lambda: divmod(x, 2)):
        with pytest.raises(CellError, match="function 'Mod' is not supported element-wise"):
            op()
    A = cell.param("A", (3, 3))
    with pytest.raises(CellError, match=r"A % 2: function 'Mod' is not supported"):
        A % 2
    cell.update(h, sp.tanh(x * 1e-46) + h)
    rc.compile(cell, backend="numpy")  # float64: 1e-46 is a float64
    for dtype in ("float32", np.float32):
        with pytest.raises(CellError, match=r"cell 'bad', update of state 'h': the constant 1\.00000E-46 underflows "
                                            r"to 0 in float32"):
            rc.compile(cell, backend="numpy", dtype=dtype)
    cell, x, h = base(H=3)  # a constant expression too (the review of session 16)
    cell.update(h, sp.tanh(x * sp.exp(200)) + h)
    with pytest.raises(CellError, match=r"the constant 7\.22597E\+86 overflows to inf in float32"):
        rc.compile(cell, backend="numpy", dtype="float32")


def test_python_operators_on_a_matrix_are_its_sympy_functions():
    """`2 ** A`, `abs(A)`, `A // 2` on a matrix parameter were Python TypeErrors while
    sp.Pow(2, A), sp.Abs(A) and x // 2 on a vector worked (the probe above): they are those."""
    cell, x, h = base(H=3)
    A = cell.param("A", (3, 3))
    assert (2 ** A) == sp.Pow(2, A) and abs(A) == sp.Abs(A) and (A // 2) == sp.floor(A / 2)
    cell.update(h, sp.tanh(rc.weight(2 ** A + abs(A)) @ h + x))
    cell.loss(h.new ** 2)
    params = cell.init_params(seed=0)
    xs = np.random.default_rng(0).normal(size=(4, 2, 3))
    native = rc.compile(cell, backend="native").loss_and_grad(params, {"x": xs}, {})
    oracle = rc.compile(cell, backend="numpy").loss_and_grad(params, {"x": xs}, {})
    assert native[0] == pytest.approx(oracle[0], rel=1e-12)
    np.testing.assert_allclose(native[1]["A"], oracle[1]["A"], rtol=1e-10)


@pytest.mark.parametrize("backend", ["native", "ptx"])
def test_an_unknown_compile_option_is_named_with_the_backends_options(backend):
    """It was the constructor's "NativeModel.__init__() got an unexpected keyword argument
    'foo'" (found by a probe), through rc.compile, Trainer and the layers alike."""
    with pytest.raises(TypeError, match=rf"rc.compile\(backend='{backend}'\): unknown option 'foo'; its options: .*memory"):
        rc.compile(rc.cells.elman(2, 3, 1), backend=backend, foo=1)
    with pytest.raises(TypeError, match=r"unknown options 'bar', 'foo'"):
        rc.compile(rc.Stack([rc.cells.elman(2, 3, 1)]), backend=backend, foo=1, bar=2)


def test_argument_errors_are_catchable_by_their_exported_class():
    """rc.ArgumentError is what a bad option raises (memory="sqrt", a budget below the minimum)."""
    import rnncomp.errors
    assert rc.ArgumentError is rnncomp.errors.ArgumentError
    with pytest.raises(rc.ArgumentError, match="memory"):
        rc.compile(rc.cells.elman(2, 3, 1), backend="native", memory="sqrt")
