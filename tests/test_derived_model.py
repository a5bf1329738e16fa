"""A compiled cell with derived weights or constants (``backends/derived.py``) answers what the model
it wraps answers: the memory plan and its bytes (docs/memory.md), the ``memory=`` schedule, the
residuals of a kept forward (``residual_shapes`` / ``kept_from``, docs/vjp.md), and ``rnncomp inspect
--memory`` / ``--profile`` on a file declaring such a cell.  Found by an adversarial probe: each was
a raw AttributeError.  Oracles: the plain cell the wrapper compiles (the same plan, the same bytes)
and the NumPy backend (the gradients of a backward from residuals)."""
import textwrap

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.cli import main
from rnncomp.weights import DerivedWeights

from gradcheck import random_data

SOURCE = textwrap.dedent('''
    import numpy as np, sympy as sp, rnncomp as rc
    cell = rc.Cell("masked")
    x, h = cell.input("x", 3), cell.state("h", 4)
    M = cell.const("M", np.tril(np.ones((4, 4))))
    E = cell.weight("E", sp.exp(cell.param("A", (4, 4))) / 4)
    cell.update(h, sp.tanh((cell.param("W", (4, 4)) * M) @ h + E @ h + cell.param("V", (4, 3)) @ x))
    y = cell.output("y", cell.param("U", (2, 4)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2)
''')


def masked():
    ns = {}
    exec(SOURCE, ns)  # noqa: S102 - the test's own declaration, also written to a file below
    return ns["cell"]


def test_memory_plan_and_bytes_are_the_plain_cells():
    cell = masked()
    model = rc.compile(cell, backend="native", memory=rc.Budget("20KB"))
    plain = rc.compile(DerivedWeights(cell).plain, backend="native", memory=rc.Budget("20KB"))
    assert model.memory_plan(T=100, B=4).actions == plain.memory_plan(T=100, B=4).actions
    assert model.activation_bytes(100, 4) == plain.activation_bytes(100, 4) <= 20_000
    assert model.memory == plain.memory


def test_a_new_memory_schedule_reaches_the_wrapped_model():
    """``model.memory = ...`` on the wrapper changes the plan the calls run, not a copy of it."""
    cell = masked()
    model = rc.compile(cell, backend="native", dtype="float64")
    params, inputs, targets = random_data(cell, T=12, B=3)
    want = model.loss_and_grad(params, inputs, targets)
    model.memory = rc.Every(3)
    assert model.memory == rc.Every(3) and model.inner.memory == rc.Every(3)
    assert model.memory_plan(12, 3).advanced > 0
    got = model.loss_and_grad(params, inputs, targets)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for p in want[1]:
        np.testing.assert_array_equal(got[1][p], want[1][p], err_msg=p)


def test_an_inspection_the_wrapped_backend_lacks_is_a_named_error():
    model = rc.compile(masked(), backend="numpy")
    with pytest.raises(AttributeError, match="cell 'masked'.*memory_plan.*'numpy' backend"):
        model.memory_plan(10, 2)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_a_backward_from_exported_residuals_gives_the_kept_forwards_gradients(backend):
    cell = masked()
    model = rc.compile(cell, backend=backend, dtype="float64")
    params, inputs, _ = random_data(cell, T=5, B=3)
    dy = {"y": np.random.default_rng(1).normal(size=(5, 3, 2))}
    kept = model.forward(params, inputs, keep=True)
    residuals = [np.array(a) for a in kept.residuals()]
    assert [a.shape for a in residuals] == model.residual_shapes(5, 3)
    assert (len(residuals) > 0) == (backend == "native")  # the NumPy backend exports nothing
    want = kept.backward(dy)
    kept.free()
    got = model.kept_from(residuals, params, inputs).backward(dy)
    oracle = rc.compile(cell, backend="numpy", dtype="float64").vjp(params, inputs, d_outputs=dy)
    assert sorted(got.params) == sorted(params)  # the declared parameters, not the plain cell's
    for p in params:
        np.testing.assert_allclose(got.params[p], want.params[p], rtol=1e-13, atol=1e-15, err_msg=p)
        np.testing.assert_allclose(got.params[p], oracle.params[p], rtol=1e-10, atol=1e-13, err_msg=p)
    np.testing.assert_allclose(got.inputs["x"], oracle.inputs["x"], rtol=1e-10, atol=1e-13)


def test_kept_from_checks_the_declared_parameters():
    cell = masked()
    model = rc.compile(cell, backend="native", dtype="float64")
    params, inputs, _ = random_data(cell, T=5, B=3)
    residuals = model.forward(params, inputs, keep=True).residuals()
    with pytest.raises(rc.CallError, match="cell 'masked'.*params"):
        model.kept_from(residuals, {**params, "E": np.ones((4, 4))}, inputs)


def test_cli_memory_and_profile_of_a_cell_with_derived_weights(tmp_path, capsys):
    path = tmp_path / "masked.py"
    path.write_text(SOURCE)
    assert main(["inspect", str(path), "--memory", "--T", "50", "--B", "2"]) == 0
    out = capsys.readouterr().out
    assert "memory schedules of 'masked' for T=50, B=2" in out and "store all" in out
    assert main(["inspect", str(path), "--profile", "--T", "5", "--B", "2"]) == 0
    out = capsys.readouterr().out
    assert "profile of one training call of 'masked': T=5 B=2" in out and "element-wise" in out


def test_memory_report_sizes_are_the_plain_cells():
    from rnncomp.inspect.memory import memory_report
    cell = masked()
    got = memory_report(cell, T=60, B=2, budget="4KB")
    want = memory_report(DerivedWeights(cell).plain, T=60, B=2, budget="4KB")
    assert [r.memory for r in got.rows] == [r.memory for r in want.rows]


def test_the_ptx_text_and_plan_of_a_cell_with_derived_weights():
    """docs/gpu.md: ``model.ptx`` and ``model.plan`` exist after compiling; with derived weights
    they are the plain cell's (found by an adversarial probe: an AttributeError)."""
    model = rc.compile(masked(), backend="ptx", runner="host")
    assert ".entry" in model.ptx and model.plan is model.inner.plan


def test_the_text_of_the_model_counts_the_declared_parameters():
    """Found by an adversarial probe: the repr counted the wrapped model's parameters (the
    derived weights and the constants too): 143 where init_params holds 67."""
    model = rc.compile(masked(), backend="numpy")
    n = sum(a.size for a in model.init_params(0).values())
    assert f"; {n} parameters)" in repr(model) and repr(model).startswith("<derived weights (")


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_kept_forward_owns_its_declared_parameters(backend):
    """A kept forward's backward is the gradient of the forward that ran, also when the caller
    updates a declared parameter in place before the backward (found by a probe of the JAX
    layer: the wrapper's pullback through the derived weights read the caller's arrays at
    backward time, off by up to 7.4, where the plain cell's kept forward copies them)."""
    cell = masked()
    model = rc.compile(cell, backend=backend, dtype="float64")
    params, inputs, _ = random_data(cell, T=5, B=3)
    dy = {"y": np.random.default_rng(1).normal(size=(5, 3, 2))}
    want = model.vjp(params, inputs, d_outputs=dy)
    for name in ("A", "W"):
        pp = {k: v.copy() for k, v in params.items()}
        fwd = model.forward(pp, inputs, keep=True)
        pp[name][...] = 0.25
        got = fwd.backward(d_outputs=dy)
        for p in params:
            np.testing.assert_array_equal(got.params[p], want.params[p], err_msg=f"{name} overwritten: {p}")
