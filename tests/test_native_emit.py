"""The native emitter's primitives (``rnncomp.backends.native_emit.Gen``) one at a time, against NumPy.

Each test builds one entry point ``f(T, B, bufs, work)`` whose body is a single ``Gen`` call
(addressing, an element-wise run, a product, slices/pads/concat parts, copies, reductions,
stacked and summed weights), compiles it for the host and compares what it wrote with the same
operation in NumPy.  The cell-level tests (test_native.py against the NumPy oracle) reach these
through whole cells; here every branch is reached on purpose: strides wider than the rows,
offsets, accumulation, scaling, transposes, packed weights.

Tolerances: copies, slices, pads and nostore are exact (assert_array_equal); a scaled copy at
1e-12 (float64) / 1e-5 (float32) relative (one rounding, maybe fused); element-wise runs,
matrix ops and summed weights at 1e-13 to 1e-14 (a few roundings of vecmath's ≤ 2.5 ulp);
products and row sums at 1e-11 / 1e-4 (another summation order and blocking than NumPy's).
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
import sympy as sp
from llvmlite import ir

from rnncomp.backends.llvm import gemm, kernel_library
from rnncomp.backends.llvm.builder import I64, for_range
from rnncomp.backends.llvm.jit import HostTarget, compile_module
from rnncomp.backends.native_emit import Gen, units_of
from rnncomp.errors import CompileError
from rnncomp.ir import Node, placeholder
from rnncomp.passes.layout import PER_SAMPLE, Layout
from rnncomp.passes.stacking import Stacked

HOST = HostTarget.detect()
RNG = np.random.default_rng(7)
_0, _1, _2 = placeholder(0), placeholder(1), placeholder(2)
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def build(emit, layout=None, dtype=np.float64):
    """The compiled library of ``f(T, B, bufs, work)`` whose body ``emit(g, slot)`` writes
    (``slot(i)``: the pointer held in ``bufs[i]``)."""
    m = ir.Module(name="emit_test")
    m.triple = HOST.triple
    g = Gen(m, np.dtype(dtype), layout or Layout(), HOST, "f")
    slot = lambda i: g.b.load(g.b.gep(g.bufs, [I64(i)]))  # noqa: E731
    emit(g, slot)
    g.b.ret_void()
    return compile_module(m, cache=None, link=kernel_library.link, host=HOST)


def run(arrays, emit, layout=None, T=1, B=1, dtype=np.float64, work=0):
    """Build ``f`` with ``emit(g, slot)`` (``slot(i)``: the pointer held in ``bufs[i]``), run it
    on ``arrays`` (one per slot, written in place) and return them."""
    lib = build(emit, layout, dtype)
    arrays = [np.array(a, dtype=dtype, order="C") for a in arrays]  # copies: the inputs stay as given
    ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    scratch = np.zeros(max(work, 1), dtype=dtype)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(lib.address("f"))
    fn(T, B, ctypes.cast(ptrs, ctypes.c_void_p), scratch.ctypes.data)
    return arrays


def rand(*shape):
    return RNG.normal(size=shape)


# ---------------------------------------------------------------------------- copies
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale, accumulate", [(None, False), (-2.5, False), (None, True), (0.5, True)])
def test_copy_loop(dtype, scale, accumulate):
    src, dst = rand(13), rand(13)
    _, out = run([src, dst], lambda g, s: g.copy_loop(s(1), s(0), I64(11), scale=scale, accumulate=accumulate),
                 dtype=dtype)
    src, dst = src.astype(dtype), dst.astype(dtype)
    want = dst.copy()
    want[:11] = (dst[:11] if accumulate else 0) + (src[:11] * (1 if scale is None else dtype(scale)))
    np.testing.assert_allclose(out, want, rtol=TOL[dtype], atol=0)
    assert out[11:].tolist() == dst[11:].tolist()  # nothing past count


@pytest.mark.parametrize("scale, accumulate", [(None, False), (3.0, True)])
def test_scaled_rows_into_a_wider_output(scale, accumulate):
    B, n, ld = 3, 4, 7
    tmp, out = rand(B, n), rand(B, ld)
    _, got = run([tmp, out], lambda g, s: g.scaled_rows(s(1), s(0), n, ld, scale, accumulate), B=B)
    want = out.copy()
    want[:, :n] = (out[:, :n] if accumulate else 0) + tmp * (1 if scale is None else scale)
    np.testing.assert_allclose(got, want, rtol=1e-14)


# ---------------------------------------------------------------------------- slices, pads, parts
@pytest.mark.parametrize("ld_out, ld_in", [(None, None), (9, 11)])
def test_rows_slice(ld_out, ld_in):
    B, n_in, n_out, lo = 3, 8, 5, 2
    v, out = rand(B, ld_in or n_in), rand(B, ld_out or n_out)
    _, got = run([v, out], lambda g, s: g.rows(s(1), n_out, s(0), n_in, lo, "slice", ld_out, ld_in), B=B)
    want = out.copy()
    want[:, :n_out] = v[:, lo:lo + n_out]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["pad", "part"])
@pytest.mark.parametrize("ld_out, ld_in", [(None, None), (10, 6)])
def test_rows_pad_and_concat_part(mode, ld_out, ld_in):
    B, n_in, n_out, lo = 3, 4, 8, 3
    v, out = rand(B, ld_in or n_in), rand(B, ld_out or n_out)
    _, got = run([v, out], lambda g, s: g.rows(s(1), n_out, s(0), n_in, lo, mode, ld_out, ld_in), B=B)
    want = out.copy()
    if mode == "pad":  # the whole row zeroed first
        want[:, :n_out] = 0
    want[:, lo:lo + n_in] = v[:, :n_in]
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ld_out, ld_in", [(1, None), (3, 9)])
def test_reduce_sum(dtype, ld_out, ld_in):
    B, n = 4, 7
    v, out = rand(B, ld_in or n), rand(B, ld_out)
    _, got = run([v, out], lambda g, s: g.reduce(s(1), s(0), n, False, ld_out, ld_in), B=B, dtype=dtype)
    want = out.astype(dtype).copy()
    want[:, 0] = v.astype(dtype)[:, :n].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype] * 10)


def test_reduce_logsumexp_is_stable_and_takes_strides():
    B, n, ld = 4, 5, 8
    v = rand(B, ld)
    v[1, :n] += 800.0          # exp would overflow without the shift
    v[2, :n] = -np.inf         # a row of -inf: -inf, not NaN
    v[3, :n] = [-1e4, 0.0, -np.inf, 2.0, -3.0]
    out = rand(B, 2)
    _, got = run([v, out], lambda g, s: g.reduce(s(1), s(0), n, True, 2, ld), B=B)
    row = v[:, :n]
    mx = row.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        want = np.where(np.isinf(mx[:, 0]), mx[:, 0], mx[:, 0] + np.log(np.exp(row - mx).sum(axis=1)))
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-14)
    np.testing.assert_array_equal(got[:, 1], out[:, 1])  # the row stride: column 1 untouched


# ---------------------------------------------------------------------------- addressing
def test_ptr_steps_offsets_and_columns():
    """A timed slot (T + 1 row blocks: h[t-1] at off 0, h[t] at off 1), a column inside a wider
    slot, and a shared slot: ``ptr(key, t)`` copies row block t of each to an output slot."""
    T, B, units = 3, 2, 5
    L = Layout()
    L.place(("h", "t"), L.slot("h", units, rows=1), off=1)
    L.place(("m", "t"), L.slot("whole", units, rows=0), col=2)
    L.place(("W", None), L.slot("W", 6))
    out_slot = L.slot("out", 3 * units * B, rows=PER_SAMPLE)
    h, whole, W = rand(T + 1, B, units), rand(T, B, units), rand(6)
    out = np.zeros((T, 3, B * units))

    def emit(g, s):
        with for_range(g.b, g.T, name="t") as t:
            dst = g.b.gep(s(out_slot), [g.b.mul(t, I64(3 * B * units))])
            g.copy_loop(dst, g.ptr(("h", "t"), t), I64(B * units))
            g.copy_loop(g.b.gep(dst, [I64(B * units)]), g.ptr(("m", "t"), t), I64(B * units - 2))
            g.copy_loop(g.b.gep(dst, [I64(2 * B * units)]), g.ptr(("W", None), t), I64(6))

    got = run([h, whole, W, out], emit, layout=L, T=T, B=B)[3]
    for t in range(T):
        np.testing.assert_array_equal(got[t, 0], h[t + 1].ravel())
        np.testing.assert_array_equal(got[t, 1, :B * units - 2], whole[t].ravel()[2:])
        np.testing.assert_array_equal(got[t, 2, :6], W)


def test_units_of():
    assert units_of(Node("ew", (), 5)) == 5
    assert units_of(Node("param", (), (3, 4))) == 0


# ---------------------------------------------------------------------------- element-wise runs
def test_ew_run_reads_registers_shared_vectors_scalars_and_strides():
    """Three nodes of one size in one loop: ``a = tanh(x) + bias`` (x per-sample with a wide
    row stride, bias a shared vector; ``a`` is not stored: ``nostore``), ``b = a·s + c`` (a
    from its register, since memory holds a stale value; s a per-sample scalar with a stride,
    c a shared scalar) and ``d = Max(a, b)`` into a slot with a wide row stride."""
    B, n = 3, 6
    L = Layout()
    L.place(("a", "t"), L.slot("a", n, rows=PER_SAMPLE))
    L.place(("b", "t"), L.slot("b", n, rows=PER_SAMPLE))
    L.place(("d", "t"), L.slot("d", 9, rows=PER_SAMPLE))
    x, bias, s_, c, a, b_, d = rand(B, 8), rand(n), rand(B, 2), rand(1), rand(B, n), rand(B, n), rand(B, 9)
    nodes = {"a": Node("ew", (), n, {"expr": sp.tanh(_0) + _1}),
             "b": Node("ew", (), n, {"expr": _0 * _1 + _2}),
             "d": Node("ew", (), n, {"expr": sp.Max(_0, _1)})}

    def emit(g, s):
        items = [(("a", "t"), nodes["a"], s(4), [s(0), s(1)], [(n, False, 8), (n, True, 0)], ["x", "bias"]),
                 (("b", "t"), nodes["b"], s(5), [s(4), s(2), s(3)], [(n, False, n), (1, False, 2), (1, True, 0)],
                  [("a", "t"), "s", "c"]),
                 (("d", "t"), nodes["d"], s(6), [s(4), s(5)], [(n, False, n), (n, False, n)],
                  [("a", "t"), ("b", "t")])]
        g.ew(items, nostore={("a", "t")})

    got = run([x, bias, s_, c, a, b_, d], emit, layout=L, B=B)
    wa = np.tanh(x[:, :n]) + bias
    wb = wa * s_[:, :1] + c[0]
    np.testing.assert_array_equal(got[4], a)  # nostore: not written
    np.testing.assert_allclose(got[5], wb, rtol=1e-14)
    np.testing.assert_allclose(got[6][:, :n], np.maximum(wa, wb), rtol=1e-14)
    np.testing.assert_array_equal(got[6][:, n:], d[:, n:])  # the wide row's tail untouched


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ew_run_over_many_buffers_is_vectorised(dtype):
    """A fused run reads and writes many buffers.  Without a promise that they do not overlap,
    LLVM still vectorises the loop but guards it, on every row, with runtime overlap checks (the
    buffers' addresses compared as integers: ``ptrtoint``).  The run's loop carries
    ``llvm.loop.parallel_accesses`` over its loads and stores (builder's ``parallel_loop_md``),
    so the optimised body works on vectors with no such check.  Values are checked too."""
    B, n, k = 3, 37, 12  # 37: a vector body and a scalar tail
    L = Layout()
    L.place(("y", "t"), L.slot("y", n, rows=PER_SAMPLE))
    ins = [rand(B, n) for _ in range(k)]
    node = Node("ew", (), n, {"expr": sum(placeholder(i) * (i + 1) for i in range(k))})

    def emit(g, s):
        g.ew([(("y", "t"), node, s(k), [s(i) for i in range(k)], [(n, False, n)] * k, [f"x{i}" for i in range(k)])])

    got = run(ins + [rand(B, n)], emit, layout=L, B=B, dtype=dtype)
    want = sum(x.astype(dtype) * (i + 1) for i, x in enumerate(ins))
    np.testing.assert_allclose(got[k], want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
    body = build(emit, L, dtype).optimized_ir()
    scalar = "double" if dtype == np.float64 else "float"
    assert re.search(rf"fmul [a-z ]*<\d+ x {scalar}>", body), "the run's loop was not vectorised"
    assert "ptrtoint" not in body, "the vector loop is guarded by runtime overlap checks"


# ---------------------------------------------------------------------------- products
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("packed", [False, True])
def test_matvec_sums_terms_with_transposes_and_strides(dtype, packed):
    """out[:, :R] = v₂·P₂ + v₁·P₁ᵀ (the first term transposed, the second accumulated onto it);
    v with a row stride wider than its columns, out too; P₁ packed before the call or not."""
    B, n_in, R, lda, ldc = 5, 7, 6, 9, 8
    P1, P2 = rand(R, n_in), rand(n_in, R)
    v, out = rand(B, lda), rand(B, ldc)
    node = Node("matvec", (), R, {"terms": (("P2", True, 1), ("P1", False, 1))})
    pk = gemm.packed_b_elems(n_in, R, np.dtype(dtype).name, HOST)
    work = gemm.workspace_elems(B, R, n_in, np.dtype(dtype).name, HOST)

    def emit(g, s):
        if packed:
            g.packed_pointers({("P1", False)}, {("P1", False): 4})
            g.pack_weights({("P1", False)}, {("P1", False): 4}, {"P1": (R, n_in)})
        g.matvec(node, s(3), s(2), n_in, [s(1), s(0)], [(n_in, R), (R, n_in)], lda=lda, ldc=ldc)

    L = Layout()
    L.place(("P1", None), L.slot("P1", R * n_in))  # pack_weights reads P1 through the layout
    got = run([P1, P2, v, out, np.zeros(pk)], emit, layout=L, B=B, dtype=dtype, work=work)
    P1, P2, v, out = (a.astype(dtype) for a in (P1, P2, v, out))
    want = out.copy()
    want[:, :R] = v[:, :n_in] @ P1.T + v[:, :n_in] @ P2
    np.testing.assert_allclose(got[3], want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_matvec_refuses_a_scaled_term():
    node = Node("matvec", (), 2, {"terms": (("P", False, 2),)})
    with pytest.raises(CompileError, match=r"^internal: scaled terms are lowered before code generation$"):
        run([rand(2, 2), rand(1, 2), rand(1, 2)], lambda g, s: g.matvec(node, s(2), s(1), 2, [s(0)], [(2, 2)]))


# ---------------------------------------------------------------------------- stacked and summed weights
def _stacks_layout(names_shapes, stk):
    L = Layout()
    for name, shape in names_shapes:
        L.place((name, None), L.slot(name, int(np.prod(shape))))
    L.place((stk.name, None), L.slot(stk.name, int(np.prod(stk.shape))))
    return L


@pytest.mark.parametrize("axis", [0, 1])
def test_build_stacks_rows_and_columns(axis):
    """Three parts (the third's offset is the sum of two widths) of different sizes."""
    sizes = (2, 4, 1)
    parts = [rand(k, 3) if axis == 0 else rand(3, k) for k in sizes]
    names = ("A", "B", "C")
    stk = Stacked("S%", names, axis, (sum(sizes), 3) if axis == 0 else (3, sum(sizes)))
    L = _stacks_layout([(n, a.shape) for n, a in zip(names, parts)], stk)
    got = run([*parts, rand(*stk.shape)], lambda g, s: g.build_stacks({"S%": stk}, {n: a.shape for n, a in
                                                                                   zip(names, parts)}), layout=L)[3]
    np.testing.assert_array_equal(got, np.concatenate(parts, axis=axis))


def test_build_stacks_sum_of_scaled_and_transposed_terms():
    """Σ c·op(P): W − Wᵀ + 2U − 0.5 Vᵀ (the first term is written, the others added)."""
    W, U, V = rand(4, 4), rand(4, 4), rand(4, 4)
    stk = Stacked("S%", ("W", "U", "V"), "sum", (4, 4),
                  terms=(("W", False, 1), ("W", True, -1), ("U", False, 2), ("V", True, -0.5)))
    L = _stacks_layout([("W", (4, 4)), ("U", (4, 4)), ("V", (4, 4))], stk)
    got = run([W, U, V, rand(4, 4)], lambda g, s: g.build_stacks({"S%": stk}, {}), layout=L)[3]
    np.testing.assert_allclose(got, W - W.T + 2 * U - 0.5 * V.T, rtol=1e-14, atol=1e-15)


def test_build_stacks_sum_whose_first_term_is_transposed():
    W, U = rand(3, 5), rand(5, 3)
    stk = Stacked("S%", ("W", "U"), "sum", (5, 3), terms=(("W", True, 2), ("U", False, 1)))
    L = _stacks_layout([("W", (3, 5)), ("U", (5, 3))], stk)
    got = run([W, U, rand(5, 3)], lambda g, s: g.build_stacks({"S%": stk}, {}), layout=L)[2]
    np.testing.assert_allclose(got, 2 * W.T + U, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------- matrix-state ops
MATRIX_OPS = {  # kind: (op, attrs, operand shapes, output size, NumPy for one sample), for (m, n)
    "outer": ("outer", {}, lambda m, n: [(m,), (n,)], lambda m, n: m * n, lambda m, n, a, b: np.outer(a, b)),
    "bcast_rows": ("mbcast", {"axis": 1}, lambda m, n: [(m,)], lambda m, n: m * n,
                   lambda m, n, a: np.repeat(a[:, None], n, axis=1)),
    "bcast_columns": ("mbcast", {"axis": 0}, lambda m, n: [(n,)], lambda m, n: m * n,
                      lambda m, n, b: np.repeat(b[None, :], m, axis=0)),
    "matvec": ("smatvec", {}, lambda m, n: [(m, n), (n,)], lambda m, n: m, lambda m, n, M, v: M @ v),
    "matvec_t": ("smatvec", {"transposed": True}, lambda m, n: [(m, n), (m,)], lambda m, n: n,
                 lambda m, n, M, v: M.T @ v),
    "row_sums": ("mreduce", {"axis": 1}, lambda m, n: [(m, n)], lambda m, n: m, lambda m, n, M: M.sum(axis=1)),
    "column_sums": ("mreduce", {"axis": 0}, lambda m, n: [(m, n)], lambda m, n: n, lambda m, n, M: M.sum(axis=0)),
}


@pytest.mark.parametrize("shape", [(3, 5), (2, 19)])
@pytest.mark.parametrize("kind", sorted(MATRIX_OPS))
def test_matrix_ops_per_sample_with_row_strides(kind, shape):
    """``Gen.matrix``: one matrix-state op for every sample, operands and output at row strides
    wider than a sample's values (the stride is what moves from one sample to the next)."""
    (m, n), B = shape, 3
    op, attrs, operand_shapes, out_size, reference = MATRIX_OPS[kind]
    shapes, size = operand_shapes(m, n), out_size(m, n)
    sizes = [int(np.prod(sh)) for sh in shapes]
    ld_args = [k + 3 for k in sizes]
    operands, out = [rand(B, ld) for ld in ld_args], rand(B, size + 2)
    node = Node(op, (), size, {"shape": shape, **attrs})
    k = len(operands)
    got = run([*operands, out], lambda g, s: g.matrix(node, s(k), [s(i) for i in range(k)], size + 2, ld_args),
              B=B)[-1]
    for r in range(B):
        want = reference(m, n, *[a[r, :z].reshape(sh) for a, z, sh in zip(operands, sizes, shapes)])
        np.testing.assert_allclose(got[r, :size], want.ravel(), rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(got[r, size:], out[r, size:])  # past the sample's values
