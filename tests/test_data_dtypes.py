"""NumPy's default float64 data trains a float32 model: the Trainer converts once; the
compiled model says which dtype it takes and makes matching parameters (issue #18)."""
import numpy as np
import pytest

import rnncomp as rc


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_model_init_params_match_the_model_dtype(backend):
    cell = rc.cells.gru(2, 3, 1)
    model = rc.compile(cell, backend=backend, dtype="float32")
    params = model.init_params(seed=0)
    assert {v.dtype for v in params.values()} == {np.dtype("float32")}
    x, y = np.zeros((4, 2, 2), np.float32), np.zeros((4, 2, 1), np.float32)
    model.loss_and_grad(params, x, y)                         # accepted as it comes
    with pytest.raises(rc.CallError, match="params\\['Wz'\\] has dtype float64"):
        model.loss_and_grad(cell.init_params(seed=0), x, y)   # the low-level call stays strict
    same = cell.init_params(seed=0, dtype="float32")
    assert all(np.array_equal(same[k], params[k]) for k in params)


def test_trainer_takes_float64_data_for_a_float32_model():
    cell = rc.cells.elman(1, 6, 1)
    s = np.sin(np.linspace(0, 6, 41))[:, None, None].repeat(4, 1)       # float64, as NumPy makes it
    a = rc.Trainer(cell, rc.Adam(1e-2), backend="native", dtype="float32", cache=None)
    b = rc.Trainer(cell, rc.Adam(1e-2), backend="native", dtype="float32", cache=None)
    ha = a.fit(s[:-1], s[1:], epochs=2, batch_size=2, verbose=0, shuffle=False)
    hb = b.fit(s[:-1].astype(np.float32), s[1:].astype(np.float32), epochs=2, batch_size=2, verbose=0,
               shuffle=False)
    assert ha == hb
    assert a.evaluate(s[:-1], s[1:], mask=np.ones(40)) == b.evaluate(s[:-1].astype(np.float32), s[1:].astype(np.float32))
    out, final = a.predict(s[:-1], h0={"h": np.zeros((4, 6))})
    assert out["y"].dtype == np.float32 and final["h"].dtype == np.float32
    out_l, _ = a.predict(s[:-1], lengths=[40, 30, 20, 10])
    assert out_l["y"].dtype == np.float32
    seq, _ = a.generate(s[:3], 2, lambda y, rng: y)                    # float32 outputs fed back
    assert seq.shape == (2, 4, 1)


def test_stream_batches_of_a_float64_stream_train_statefully():
    cell = rc.cells.elman(1, 4, 1)
    stream = np.sin(np.arange(401) * 0.3)                               # float64
    xs, ys = (rc.stream_batches(s, T=10, batch_size=4) for s in (stream[:-1], stream[1:]))
    tr = rc.Trainer(cell, rc.Adam(1e-2), backend="native", dtype="float32", cache=None)
    hist = tr.fit(xs, ys, epochs=3, batch_size=4, stateful=True, shuffle=False, verbose=0)
    assert hist[-1] < hist[0]


def test_data_that_is_not_numbers_is_named():
    tr = rc.Trainer(rc.cells.elman(1, 4, 1), backend="numpy", dtype="float64")
    with pytest.raises(rc.CallError, match=r"inputs\['x'\] cannot be read as float64"):
        tr.fit([["a"]], np.zeros((1, 1, 1)), verbose=0)


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
@pytest.mark.parametrize("dtype", ["int32", "float16", "banana"])
def test_every_backend_refuses_a_dtype_it_does_not_compute_in(backend, dtype):
    """One check for all backends (backends/validate.float_dtype): a name NumPy does not know
    is the same message as a dtype no backend computes in, not NumPy's TypeError."""
    with pytest.raises(ValueError, match=f"^dtype must be float32 or float64, got {dtype}$"):
        rc.compile(rc.cells.elman(1, 2, 1), backend=backend, dtype=dtype)


def test_llvm_float_types_follow_the_dtype():
    from llvmlite import ir

    from rnncomp.backends.llvm.builder import float_type
    assert float_type("float32") == ir.FloatType() and float_type(np.dtype("float64")) == ir.DoubleType()
    with pytest.raises(ValueError, match="gemm: dtype must be float32 or float64, got int8"):
        float_type("int8", "gemm: dtype")


@pytest.mark.parametrize("args, message", [
    ((np.arange(100.0), 0, 4), r"stream_batches: T must be a positive integer, got 0"),
    ((np.arange(100.0), 5, 0), r"stream_batches: batch_size must be a positive integer, got 0"),
    ((np.arange(100.0), 2.5, 4), r"stream_batches: T must be a positive integer, got 2.5"),
    (("abc", 1, 1), r"stream_batches: the stream must be an \(L, n\) or \(L,\) array of numbers, got shape \(\) of <U3"),
    ((np.zeros((4, 5, 6)), 1, 1), r"the stream must be an \(L, n\) or \(L,\) array of numbers, got shape \(4, 5, 6\)"),
])
def test_stream_batches_names_a_bad_argument(args, message):
    """Were ZeroDivisionError, "tuple index out of range" and "slice indices must be integers"."""
    with pytest.raises(rc.RnncompError, match=message):
        rc.stream_batches(*args)


@pytest.mark.parametrize("sequences, message", [
    (None, r"^pad_sequences: expected a list of arrays, got NoneType$"),
    ([[1.0, 2.0], "ab"], r"^pad_sequences: sequence 1 cannot be read as float32 numbers: could not convert"),
])
def test_pad_sequences_names_what_it_cannot_read(sequences, message):
    """Were "'NoneType' object is not iterable" and NumPy's message naming no sequence."""
    with pytest.raises(ValueError, match=message):
        rc.pad_sequences(sequences)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("scale", [3e38, 1e-44, 1e300, 1e-320])
def test_a_mask_of_any_finite_scale_weighs_the_steps_as_a_mask_of_ones(backend, scale):
    """The loss is a masked mean: a float32 mask of 3e38s summed to inf and made every step
    weight 0 (a loss of 0.0 and zero gradients, silently); a float64 mask of 1e300s was refused
    as 'inf' by a float32 model, one of 1e-320s as selecting no step."""
    model = rc.compile(rc.cells.elman(2, 3, 2), backend=backend, dtype="float32")
    p = model.init_params(0)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(4, 3, 2)).astype(np.float32), rng.normal(size=(4, 3, 2)).astype(np.float32)
    pattern = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]])
    ones = model.loss_and_grad(p, x, t, mask=pattern.astype(np.float32))
    mask = (pattern * scale).astype(np.float32 if scale in (3e38, 1e-44) else np.float64)
    scaled = model.loss_and_grad(p, x, t, mask=mask)
    assert scaled[0] == pytest.approx(ones[0], rel=1e-6) and ones[0] > 0
    for k in ones[1]:
        np.testing.assert_allclose(scaled[1][k], ones[1][k], rtol=1e-5, atol=1e-7)


def test_a_trainer_weighs_a_mask_of_any_finite_scale_as_its_pattern():
    """evaluate with a float32 mask of 3e38s summed its weights to inf and returned NaN; a
    float64 mask of 1e300s, made float32 first, was refused as holding 'inf'."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4, 2)), rng.normal(size=(6, 4, 2))
    pattern = (rng.random((6, 4)) > 0.3).astype(np.float32)
    tr = rc.Trainer(rc.cells.elman(2, 3, 2), rc.SGD(0.01), backend="numpy")
    want = tr.evaluate(x, y, mask=pattern)
    for mask in (pattern * np.float32(3e38), pattern.astype(np.float64) * 1e300):
        assert tr.evaluate(x, y, mask=mask) == pytest.approx(want, rel=1e-6)
    tr.fit(x, y, mask=pattern.astype(np.float64) * 1e300, verbose=0, batch_size=2)
    assert np.isfinite(tr.history).all()
