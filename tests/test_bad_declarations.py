"""Bad arguments to a cell's declarations and its ``init_params`` (found by a probe of bad
input, each a silent wrong value or a traceback from NumPy before): a clear error naming the
cell, the parameter and the value."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import ArgumentError


@pytest.mark.parametrize("dtype", ["int32", np.int64, "float16", "complex64", "bool"])
def test_init_params_refuses_a_dtype_no_model_computes_in(dtype):
    # int32 rounded every weight to 0 or ±1, silently
    with pytest.raises(ArgumentError, match=r"cell 'elman': init_params: dtype must be float32 or float64"):
        rc.cells.elman(2, 3, 1).init_params(0, dtype)


@pytest.mark.parametrize("init, what", [(("normal", -1.0), r"scale must be a finite number >= 0, got -1.0"),
                                        (("uniform", float("inf")), r"scale must be a finite number >= 0, got inf"),
                                        (("normal", float("nan")), r"scale must be a finite number >= 0, got nan"),
                                        (("constant", float("nan")), r"value must be a finite number, got nan"),
                                        (("constant", -float("inf")), r"value must be a finite number, got -inf")])
def test_an_initialiser_of_a_non_finite_or_negative_scale_is_refused_where_declared(init, what):
    # NaN and inf filled the parameter silently; a negative std was NumPy's "scale < 0"
    with pytest.raises(rc.CellError, match=rf"cell 'c', param 'W': initialiser .*: its {what}"):
        rc.Cell("c").param("W", (3, 2), init=init)


def test_a_zero_scale_and_a_negative_constant_are_initialisers():
    cell = rc.Cell("c")
    cell.param("A", 2, init=("normal", 0.0))
    cell.param("B", 2, init=("constant", -0.5))
    assert cell.init_params(0)["B"].tolist() == [-0.5, -0.5]


@pytest.mark.parametrize("call, owner", [
    (lambda s: rc.cells.elman(2, 3, 1).init_params(s), "init_params"),
    (lambda s: rc.compile(rc.cells.elman(2, 3, 1)).init_params(s), "init_params"),
    (lambda s: rc.Trainer(rc.cells.elman(2, 3, 1), backend="numpy", seed=s), "Trainer"),
    (lambda s: rc.Trainer(rc.cells.elman(2, 3, 1), backend="numpy").fit(np.ones((3, 2, 2)), np.ones((3, 2, 1)),
                                                                          seed=s, verbose=0), "fit"),
    (lambda s: rc.compile(rc.Stack([rc.cells.elman(2, 3, 1)]), seed=s), r"stack\(elman\)")])
@pytest.mark.parametrize("seed", ["a", 1.5, -1])
def test_a_seed_numpy_cannot_take_is_refused_naming_the_call(call, owner, seed):
    # NumPy's "SeedSequence expects int or sequence of ints" / "expected non-negative integer" before
    with pytest.raises(rc.RnncompError, match=rf"{owner}: seed must be (a non-negative integer|an int).* got {seed!r}"):
        call(seed)


@pytest.mark.parametrize("call, message", [
    (lambda: rc.compile(rc.Cell), r"rc\.compile: the cell must be .* got the class Cell itself"),
    (lambda: rc.explain(rc.Cell), r"rc\.explain: the cell must be .* got the class Cell itself"),
    (lambda: rc.unfold(None, 3), r"rc\.unfold: the cell must be .* got NoneType"),
    (lambda: rc.unfold(rc.Stack([rc.cells.elman(2, 3, 2)] * 2), 3), r"rc\.unfold looks at one cell"),
    (lambda: rc.inspect.to_dot(None), r"to_dot: the cell must be .* got NoneType"),
    (lambda: rc.backward_step(None), r"rc\.backward_step takes one cell's lowered step \(cell\.step\), got NoneType"),
    (lambda: rc.backward_step(rc.cells.elman(2, 3, 1)), r"got Cell; rc\.explain\(cell\) prints it"),
])
def test_an_entry_point_given_something_other_than_a_cell_says_so(call, message):
    # each was an AttributeError from inside: "'property' object has no attribute 'inputs'",
    # "'NoneType' object has no attribute 'step'", "'ComposedStep' object has no attribute 'prog'"
    with pytest.raises(rc.RnncompError, match=message):
        call()


def test_a_ragged_constant_is_refused_naming_it():
    # NumPy's "setting an array element with a sequence ... inhomogeneous shape" before
    with pytest.raises(rc.CellError, match=r"cell 'c', constant 'M': expected an array of numbers, got list"):
        rc.Cell("c").const("M", [[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("kw", [{"wrt": 3}, {"d_outputs": 2.5}, {"wrt": False}])
def test_explain_names_a_wrt_or_d_outputs_that_is_not_names(kw):
    # tuple(3) raised "'int' object is not iterable" inside rc.explain
    (key, value), = kw.items()
    with pytest.raises(rc.CellError, match=rf"cell 'elman': explain: {key} must be a name, a list of names, "
                                           rf"True or None, got {value!r}"):
        rc.explain(rc.cells.elman(2, 3, 1), **kw)
    assert "x" in str(rc.explain(rc.cells.elman(2, 3, 1), wrt="x"))


def test_unfolding_a_billion_steps_is_refused_before_it_allocates():
    # it ran until the kernel killed the process for memory
    with pytest.raises(ArgumentError, match=r"^unfold: 1,000,000,000 steps of cell 'elman' would be [\d,]+ nodes, "
                                            r"over 2,000,000"):
        rc.unfold(rc.cells.elman(2, 3, 1), 10**9)
    assert rc.unfold(rc.cells.elman(2, 3, 1), 1000).number_of_nodes() > 1000


def test_a_parameter_too_large_to_allocate_is_named():
    cell = rc.Cell("big")
    cell.param("W", (10**9, 10**9))  # 8 EB: NumPy refuses at once, naming no parameter
    with pytest.raises(MemoryError, match=r"^parameter 'W' of shape \(1000000000, 1000000000\): Unable to allocate"):
        cell.init_params(0)


@pytest.mark.parametrize("call, message", [
    (lambda: rc.cells.elman(2, 3, 1, activation="tanh"), r"^rc\.cells\.elman: activation must be a function of a sympy"),
    (lambda: rc.cells.lstm(2, 3, 1, gate=None), r"^rc\.cells\.lstm: gate must be a function of a sympy"),
    (lambda: rc.cells.lstm(2, 3, 1, squash="tanh"), r"^rc\.cells\.lstm: squash must be a function of a sympy"),
])
def test_a_zoo_activation_that_is_not_a_function_is_named(call, message):
    # "'str' object is not callable" / "'NoneType' object is not callable" from inside rc.cells
    with pytest.raises(ArgumentError, match=message):
        call()
