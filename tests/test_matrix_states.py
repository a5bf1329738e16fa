"""Matrix-valued states (#19): C = cell.state("C", (m, n)), rc.outer, C @ v, row gates, row sums.

The zoo's mLSTM, fast-weights, delta-rule and diagonal linear recurrence cells (and a cell
that uses every matrix op) are checked three ways: gradients against central finite
differences in float64 (tests/gradcheck.py: rtol 1e-6 / atol 1e-8, its docstring says why);
loss, final states and gradients against a PyTorch float64 loop with autograd, written here
from the papers' equations (rtol 1e-10: the same float64 arithmetic summed in another order);
and bad declarations as named ShapeErrors.  The native backend against the oracle (vector code
for the matrix ops: row lengths that take its vector chunks, scalar tails and chunk loops, in
float64 and float32); the PTX backend's kernels on its host runner against the oracle, and
their PTX through ptxas.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.errors import CellError, ShapeError
from rnncomp.zoo_matrix import MATRIX_ZOO
from gradcheck import assert_matches_oracle, check_grads, random_data
from matrix_torch_refs import TORCH

T, B, N_IN, N_H, N_OUT = 5, 3, 3, 4, 2


def every_op(n_in=N_IN, n_h=N_H, n_out=N_OUT):
    """Per-row gates, outer products, C @ v, Cᵀ @ u, row and column sums, a matrix loss term."""
    cell = rc.Cell("every_op")
    x = cell.input("x", n_in)
    C = cell.state("C", (n_h, n_in))
    g = rc.sigmoid(cell.param("Wg", (n_h, n_in)) @ x)              # one gate per row
    cell.update(C, g * C + rc.outer(sp.tanh(cell.param("Wv", (n_h, n_in)) @ x), x) / 2)
    u = cell.param("u", n_h, init="ones")
    y = cell.output("y", cell.param("V", (n_out, n_h)) @ (C.new @ x + rc.rowsum(C.new))
                    + cell.param("Vc", (n_out, n_in)) @ (C.new.T @ u + rc.colsum(C.new * C.new)))
    t = cell.target("target", n_out)
    cell.loss((y - t) ** 2 / 2)
    return cell


CELLS = dict(MATRIX_ZOO, every_op=lambda *a: every_op())


@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradients_against_finite_differences(name):
    cell = CELLS[name](N_IN, N_H, N_OUT)
    params, x, t = random_data(cell, T, B)
    check_grads(rc.compile(cell), params, x, t)


def _against_pytorch(cell, name, seed):
    """Loss, final states and gradients of ``cell`` against ``TORCH[name]``'s float64 loop."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the reference loop needs it)")
    params, x, t = random_data(cell, T, B, seed=seed)
    loss, grads, final = rc.compile(cell).loss_and_grad(params, x, t)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ref, ref_final = TORCH[name](P, torch.tensor(x["x"]), torch.tensor(t["target"]), torch)
    ref = ref / (T * B)  # the oracle's loss: the mean of the per-step costs
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-10)
    for k, v in ref_final.items():  # a matrix state comes back flattened row-major: (B, m·n)
        np.testing.assert_allclose(final[k], v.detach().numpy().reshape(B, -1), rtol=1e-10, atol=1e-13)
    for k in params:
        np.testing.assert_allclose(grads[k], P[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", sorted(TORCH))
def test_against_a_pytorch_float64_loop(name):
    _against_pytorch(CELLS[name](N_IN, N_H, N_OUT), name, seed=4)


@pytest.mark.parametrize("n_in", [1, 2])
def test_row_gates_on_one_and_two_columns_against_pytorch(n_in):
    """``every_op`` with a state of one or two columns: a per-row gate on a one-column matrix is
    the vector itself (no broadcast node), on two columns it must be broadcast along the rows
    (mutation round four, ``lower`` ``rows`` #19: every other test's matrix had 3+ columns)."""
    _against_pytorch(every_op(n_in=n_in), "every_op", seed=5)


def random_matrix_cell(seed):
    """A random cell of the matrix forms: 2-3 update terms, a vector state beside the matrix one
    (read through a masked derived weight), and a random read-out."""
    rng = np.random.default_rng(seed)
    cell = rc.Cell(f"random_matrix{seed}")
    x, h = cell.input("x", N_IN), cell.state("h", N_H)
    C = cell.state("C", (N_H, N_IN))
    lin = lambda name, rows: cell.param(name, (rows, N_IN)) @ x  # noqa: E731
    k, v = sp.tanh(lin("Wk", N_IN)), lin("Wv", N_H)
    terms = [lambda: rc.sigmoid(lin("Wf", 1)) * C, lambda: rc.sigmoid(lin("Wg", N_H)) * C,
             lambda: rc.outer(v, k), lambda: rc.outer(h, x) / 2, lambda: -rc.sigmoid(lin("Wb", 1)) * rc.outer(C @ k - v, k),
             lambda: sp.tanh(C) / 2, lambda: rc.outer(h, C.T @ h) / 4]
    picks = rng.choice(len(terms), size=rng.integers(2, 4), replace=False)
    cell.update(C, sum(terms[i]() for i in sorted(picks)))
    M = cell.const("M", rng.integers(0, 2, (N_H, N_H)))
    cell.update(h, sp.tanh((cell.param("W", (N_H, N_H)) * M) @ h + C.new @ k))
    reads = [lambda: C.new @ x, lambda: rc.rowsum(C.new * C.new), lambda: rc.vslice(C.new.T @ h, 0, N_H - 1)]
    r = reads[rng.integers(3)]()
    y = cell.output("y", cell.param("V", (N_OUT, cell.size_of(r, "read-out"))) @ r + cell.param("U", (N_OUT, N_H)) @ h.new)
    cell.loss((y - cell.target("target", N_OUT)) ** 2 / 2)
    return cell


@pytest.mark.parametrize("seed", range(4))
def test_random_matrix_cells(seed):
    cell = random_matrix_cell(seed)
    params, x, t = random_data(cell, T, B, seed=seed)
    check_grads(rc.compile(cell), params, x, t)
    assert_matches_oracle(cell, "native", T, B)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_rtrl_equals_bptt(name):
    """Forward mode (the JVP rules of outer, smatvec, mbcast, mreduce) against the reverse walk."""
    from rnncomp.algorithms import RTRL, sequence_grad
    cell = CELLS[name](N_IN, N_H, N_OUT)
    params, x, t = random_data(cell, T, B, seed=2)
    l1, g1, _ = rc.compile(cell).loss_and_grad(params, x, t)
    l2, g2, _ = sequence_grad(RTRL(), cell, params, x, t)
    assert l2 == pytest.approx(l1, rel=1e-12)
    for k in params:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_initial_matrix_state_given_and_learned():
    cell = every_op()
    params, x, t = random_data(cell, T, B)
    C0 = np.random.default_rng(5).normal(size=(B, N_H * N_IN))
    model = rc.compile(cell)
    check_grads(model, params, x, t, h0={"C": C0})
    d = model.vjp(params, x, targets=t, h0={"C": C0})
    eps, dC = 1e-6, np.random.default_rng(6).normal(size=C0.shape)
    fd = (model.loss_and_grad(params, x, t, h0={"C": C0 + eps * dC})[0]
          - model.loss_and_grad(params, x, t, h0={"C": C0 - eps * dC})[0]) / (2 * eps)
    assert float((d.h0["C"] * dC).sum()) == pytest.approx(fd, rel=1e-6)

    learned = rc.Cell("learned")
    x_ = learned.input("x", 2)
    C = learned.state("C", (2, 2), init="learn")
    learned.update(C, C / 2 + rc.outer(x_, x_))
    learned.loss(rc.vsum(learned.output("y", C.new @ x_) ** 2))
    p, xs, ts = random_data(learned, T, B)
    assert p["C_0"].shape == (4,)
    check_grads(rc.compile(learned), p, xs, ts)


def test_checkpoint_round_trip(tmp_path):
    cell = MATRIX_ZOO["mlstm"](N_IN, N_H, N_OUT)
    params, x, t = random_data(cell, T, B)
    tr = rc.Trainer(cell, backend="numpy", optimizer=rc.SGD(lr=0.05), params=params)
    tr.fit(x, t, epochs=1, verbose=0)
    tr.save(tmp_path / "ck.npz")
    back = rc.Trainer.load(tmp_path / "ck.npz")
    assert str(back.cell) == str(cell) and back.evaluate(x, t) == tr.evaluate(x, t)


def test_printing_and_explain():
    cell = MATRIX_ZOO["delta_rule"](N_IN, N_H, N_OUT)
    text = str(rc.explain(cell))
    assert "states:  C ∈ R^4×4 (C[0] = 0)" in text
    assert "C[t] = C[t-1] - ((-(Wv·x[t]) + C[t-1]·k[t])·k[t]ᵀ)*sigmoid(bb + Wb·x[t])" in text
    assert "δC[t-1] =" in text


def test_inspect_draws_a_matrix_state_as_one_node_and_measures_its_flow():
    from rnncomp import inspect as ri
    cell = MATRIX_ZOO["delta_rule"](N_IN, N_H, N_OUT)
    dot = ri.to_dot(cell, "step")
    assert dot.count('label="C[t-1]') == 1 and dot.count('label="C[t]') == 1
    params, x, t = random_data(cell, T, B)
    flow = ri.gradient_flow(cell, params, x, t)
    assert np.isfinite(flow.loss) and flow.loss == pytest.approx(rc.compile(cell).loss_and_grad(params, x, t)[0])


@pytest.mark.parametrize("name", sorted(CELLS))
def test_ptx_host_runner_matches_the_oracle(name):
    """The PTX kernels (one thread per output element) run on the host runner, stepwise and
    as the persistent kernel, in float64 against the oracle (sums in the same order)."""
    pytest.importorskip("llvmlite")
    for options in (dict(persistent=False), dict()):
        assert_matches_oracle(CELLS[name](N_IN, N_H, N_OUT), "ptx", T, B, runner="host", **options)


def test_ptx_host_runner_with_a_given_initial_matrix_state_and_in_float32():
    pytest.importorskip("llvmlite")
    cell = every_op()
    params, x, t = random_data(cell, T, B)
    C0 = np.random.default_rng(1).normal(size=(B, N_H * N_IN))
    dy = {"y": np.random.default_rng(2).normal(size=(T, B, N_OUT))}
    ref = rc.compile(cell).vjp(params, x, h0={"C": C0}, d_outputs=dy)
    got = rc.compile(cell, backend="ptx", runner="host").vjp(params, x, h0={"C": C0}, d_outputs=dy)
    for k in params:
        np.testing.assert_allclose(got.params[k], ref.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(got.h0["C"], ref.h0["C"], rtol=1e-9, atol=1e-12)
    # float32 against the float64 oracle on float32-representable data: rounding only (2⁻²⁴
    # per operation over sums of at most 4 terms and 5 steps), far inside 1e-5
    as32 = [{k: np.asarray(v, np.float32) for k, v in d.items()} for d in (params, x, t)]
    l32 = rc.compile(cell, backend="ptx", dtype="float32", runner="host").loss_and_grad(*as32)[0]
    l64 = rc.compile(cell).loss_and_grad(*[{k: v.astype(np.float64) for k, v in d.items()} for d in as32])[0]
    assert abs(l32 - l64) <= 1e-5 * abs(l64)


@pytest.mark.parametrize("arch,dtype", [("sm_80", "float64"), ("sm_90", "float32")])
def test_ptx_matrix_kernels_assemble_without_spills(arch, dtype):
    from rnncomp.backends.ptx.ptxgen import find_ptxas, ptxas, spills
    if find_ptxas() is None:
        pytest.skip("ptxas (CUDA toolkit) not on PATH")
    for name in sorted(CELLS):
        for persistent in (False, True):
            m = rc.compile(CELLS[name](16, 32, 8), backend="ptx", dtype=dtype, arch=arch, persistent=persistent)
            kinds = {k: v.kind for k, v in m.plan.kernels.kernels.items()}
            assert name == "diag_linear" or {"outer", "smatvec"} & set(kinds.values()), name
            report = spills(ptxas(m.ptx, arch))
            # the products (kind matvec: stacked input products of up to 6 terms) may spill
            # in float64; every other entry, the matrix kernels and persistent loops included, not
            assert not {k: v for k, v in report.items() if any(v) and kinds.get(k) != "matvec"}, (name, report)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_native_matches_the_oracle(name):
    pytest.importorskip("llvmlite")
    assert_matches_oracle(CELLS[name](N_IN, N_H, N_OUT), "native", T, B)


# the native matrix ops walk rows in vectors of 64 bytes (16 float32 / 8 float64 lanes), a loop
# over chunks beyond 16 of them, a scalar tail: rows of 35 have chunks and a tail in both dtypes;
# rows of 300 take the loop (18 float32 / 37 float64 chunks) and several column groups
@pytest.mark.parametrize("m,n", [(3, 35), (2, 300), (17, 16)])
def test_native_vector_paths_match_the_oracle(m, n):
    pytest.importorskip("llvmlite")
    assert_matches_oracle(every_op(n, m, 2), "native", 3, 2)


@pytest.mark.parametrize("m,n", [(3, 35), (2, 300)])
@pytest.mark.parametrize("name", ["every_op", "mlstm", "delta_rule"])
def test_native_float32_matches_the_float64_oracle(name, m, n):
    """Native float32 against the float64 oracle on the same (float32-representable) data.
    Tolerance: float32 rounding (2⁻²⁴ ≈ 6e-8) grows with sums of up to n terms per step over
    T steps and through the backward pass; 1e-4 of the largest gradient entry (and 1e-5 of the
    loss) leaves two orders of magnitude over what this sees, and a wrong index or a lost
    tail chunk gives errors of order 1."""
    pytest.importorskip("llvmlite")
    cell = every_op(n, m, 2) if name == "every_op" else MATRIX_ZOO[name](3, m, 2, dk=n)  # C: (m, n)
    params, x, t = random_data(cell, 3, 2)
    f32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
    params, x, t = f32(params), f32(x), f32(t)
    f64 = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    ref = rc.compile(cell).loss_and_grad(f64(params), f64(x), f64(t))
    got = rc.compile(cell, backend="native", dtype="float32").loss_and_grad(params, x, t)
    assert abs(got[0] - ref[0]) <= 1e-5 * abs(ref[0]), (got[0], ref[0])
    big = max(np.abs(g).max() for g in ref[1].values())
    for k in params:
        assert got[1][k].dtype == np.float32
        assert np.abs(got[1][k] - ref[1][k]).max() <= 1e-4 * big, k


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_diag_linear_float32_where_the_decay_rounds_to_one(backend):
    """a = exp(−exp(ν)) rounds to 1 in float32 once exp(ν) < 6e-8: sqrt(1 − a²) was 0 there and
    its ν gradient inf.  With ν from −30 to −12 the float32 loss, final state and every
    gradient entry stay within 1e-3 (relative, per entry, where float32 rounding through
    T steps gives ~1e-6) of the float64 oracle on the same data."""
    if backend == "native":
        pytest.importorskip("llvmlite")
    cell = MATRIX_ZOO["diag_linear"](3, 6, 2)
    params, x, t = random_data(cell, 6, 3, seed=3)
    params["nu"] = np.linspace(-30.0, -12.0, 6)
    f32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
    params, x, t = f32(params), f32(x), f32(t)
    f64 = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    ref = rc.compile(cell).loss_and_grad(f64(params), f64(x), f64(t))
    got = rc.compile(cell, backend=backend, dtype="float32").loss_and_grad(params, x, t)
    assert abs(got[0] - ref[0]) <= 1e-5 * abs(ref[0]), (got[0], ref[0])
    np.testing.assert_allclose(got[2]["h"], ref[2]["h"], rtol=1e-3, atol=1e-30)
    for k in params:
        assert np.all(np.isfinite(got[1][k])), k
        np.testing.assert_allclose(got[1][k], ref[1][k], rtol=1e-3, atol=1e-30, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(hoist=False), dict(fuse=False, stack=False, pack=False), dict(threads=2),
                                     dict(grad_after=True), dict(memory=rc.Every(2))], ids=str)
def test_native_options_match_the_oracle(options):
    for name in ("mlstm", "every_op"):
        assert_matches_oracle(CELLS[name](N_IN, N_H, N_OUT), "native", 7, 5, **options)


def test_native_vjp_with_a_given_initial_matrix_state():
    cell = every_op()
    params, x, _ = random_data(cell, T, B)
    C0 = np.random.default_rng(1).normal(size=(B, N_H * N_IN))
    dy = {"y": np.random.default_rng(2).normal(size=(T, B, N_OUT))}
    ref = rc.compile(cell).vjp(params, x, h0={"C": C0}, d_outputs=dy)
    got = rc.compile(cell, backend="native").vjp(params, x, h0={"C": C0}, d_outputs=dy)
    for k in params:
        np.testing.assert_allclose(got.params[k], ref.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(got.h0["C"], ref.h0["C"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.inputs["x"], ref.inputs["x"], rtol=1e-9, atol=1e-12)


def test_bad_declarations_are_named_shape_errors():
    cell = rc.Cell("bad")
    k, v, h = cell.input("k", 3), cell.input("v", 2), cell.state("h", 3)
    C = cell.state("C", (2, 3))
    with pytest.raises(ShapeError, match=r"update of state 'C': state has size \(2, 3\) but the expression "
                                         r"k·vᵀ has size \(3, 2\)"):
        cell.update(C, rc.outer(k, v))
    with pytest.raises(ShapeError, match=r"update of state 'C': state has size \(2, 3\) but the expression "
                                         r"tanh\(k\) has size 3"):
        cell.update(C, sp.tanh(k))  # a vector where the matrix state is expected
    with pytest.raises(ShapeError, match=r"update of state 'h': state has size 3 but the expression C has size \(2, 3\)"):
        cell.update(h, C)
    with pytest.raises(ShapeError, match=r"output 'y': C @ \(v\): the matrix is 2×3 but the vector has size 2"):
        cell.output("y", C @ v)
    with pytest.raises(ShapeError, match=r"output 'y': rc.rowsum: h is a vector of size 3, not a matrix"):
        cell.output("y", rc.rowsum(h))
    with pytest.raises(ShapeError, match=r"output 'y': rc.outer: C is a 2×3 matrix, not a vector"):
        cell.output("y", rc.outer(C, k))
    with pytest.raises(ShapeError, match=r"output 'y': k \(size 3\) against a 2×3 matrix in C\*k: a vector "
                                         r"scales the rows, so it must have size 2"):
        cell.output("y", rc.rowsum(k * C))
    with pytest.raises(ShapeError, match=r"output 'y': C is a 2×3 matrix; outputs and definitions are vectors"):
        cell.output("y", C)
    with pytest.raises(ShapeError, match=r"slices and concatenations are of vectors, not matrices"):
        cell.output("y", rc.vslice(C, 0, 2))
    with pytest.raises(ShapeError, match=r"matrices of different shapes \(C: 2×3, v·vᵀ: 2×2\)"):
        cell.update(C, C + rc.outer(v, v))
    with pytest.raises(ShapeError, match=r"W @ \(C\): the right operand is a 2×3 matrix"):
        cell.param("W", (2, 2)) @ C
    with pytest.raises(CellError, match=r"state 'D': a matrix state's shape must be \(m, n\) of positive integers"):
        cell.state("D", (2, 0))
    # C.T is read only as C.T @ u: any other use of it names the state (not a TypeError of Python's)
    for use in (lambda: C.T * 2, lambda: C + C.T, lambda: sp.tanh(C.T), lambda: rc.rowsum(C.T),
                lambda: cell.update(C, C.T)):
        with pytest.raises(ShapeError, match=r"C.T: the transpose of the matrix state C is read only as a product "
                                             r"with a vector, C.T @ u"):
            use()
    with pytest.raises(ShapeError, match=r"C.new.T: the transpose of the matrix state C.new"):
        -C.new.T
    with pytest.raises(ShapeError, match=r"rc.norm\(C\): C is a matrix state; rc.norm takes a matrix of parameters"):
        rc.norm(C)


def test_the_transpose_of_a_transpose_is_the_matrix_state():
    """C.T.T @ v was an AttributeError of Python's ('_Transposed' object has no attribute 'T')."""
    cell = rc.Cell("tt")
    x, C = cell.input("x", 3), cell.state("C", (2, 3))
    cell.update(C, C / 2 + rc.outer(cell.param("W", (2, 3)) @ x, x))
    assert C.T.T is C and str(C.new.T.T @ x) == str(C.new @ x)


def test_in_a_stack_gradients_against_finite_differences():
    """A layer with a matrix state under rc.Stack: the composition's gradient through its VJP."""
    model = rc.compile(rc.Stack([MATRIX_ZOO["mlstm"](3, 4, 2), rc.cells.elman(2, 3, 2)]))
    rng = np.random.default_rng(0)
    params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in model.init_params(0).items()}
    check_grads(model, params, rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 2)))


@pytest.mark.parametrize("write", ["S * L", "L * S", "S / L", "S + L", "L - S", "sp.exp(L) * S", "rc.sigmoid(L) * S"])
def test_a_matrix_of_parameters_read_with_a_matrix_state_is_refused_by_its_equation(write):
    """S ⊙ L (a learned element-wise decay) was refused by the operator, naming no equation: now by
    the equation that reads it, with the cell, the state, the matrix and what is supported instead."""
    cell = rc.Cell("decay")
    x, S, L = cell.input("x", 3), cell.state("S", (2, 3)), cell.param("L", (2, 3))
    write_v = rc.outer(cell.param("Wv", (2, 3)) @ x, x)
    expr = eval(write, {"S": S, "L": L, "sp": sp, "rc": rc})
    with pytest.raises(CellError, match=r"cell 'decay', update of state 'S': .* reads the matrix state S element-wise "
                                        r"with the matrix parameter L \(2×3\): not supported .* a vector of size 2 scaling "
                                        r"the rows of S .* L = cell.state\('L', \(2, 3\), init='learn'\), "
                                        r"cell.update\(L, L\), then L \* S"):
        cell.update(S, expr + write_v)
    cell.update(S, S / 2 + write_v)
    with pytest.raises(CellError, match=r"cell 'decay', output 'y': .* the matrix state S\[t\] element-wise with the "
                                        r"matrix parameter L"):
        cell.output("y", rc.rowsum(S.new * L))


def learned_decay(n_in=N_IN, m=N_H):
    """The form the refusal above suggests: a learned m×n decay as a matrix state carried unchanged."""
    cell = rc.Cell("learned_decay")
    x = cell.input("x", n_in)
    S, L = cell.state("S", (m, n_in)), cell.state("L", (m, n_in), init="learn")
    cell.update(L, L)
    cell.update(S, rc.sigmoid(L) * S + rc.outer(sp.tanh(cell.param("Wv", (m, n_in)) @ x), x))
    y = cell.output("y", cell.param("V", (2, m)) @ (S.new @ x))
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell


def test_a_learned_decay_carried_as_a_matrix_state_is_trained_as_its_initial_value():
    cell = learned_decay()
    params, x, t = random_data(cell, T, B)
    params["L_0"] = np.random.default_rng(1).normal(size=N_H * N_IN)
    check_grads(rc.compile(cell), params, x, t)
    assert_matches_oracle(cell, "native", T, B)
