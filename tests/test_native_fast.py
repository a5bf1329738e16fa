"""The thin call path of the native backend (backends/native_fast.py) against the general
one: the same compiled model computes the same loss, gradients and final states either way
(bit for bit: the same native code runs on the same values), and every call the thin path
does not take still gets the general path's checks and messages."""
import threading

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.backends import native_fast
from rnncomp.errors import CallError
from test_custom_cells import jordan_with_xent, many_functions


def _data(cell, T, B, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = {k: v.astype(dtype) for k, v in cell.init_params(seed).items()}
    x = {k: rng.normal(size=(T, B, n)).astype(dtype) for k, n in st.inputs.items()}
    y = {k: rng.normal(size=(T, B, n)).astype(dtype) for k, n in st.targets.items()}
    if cell.name == "jordan_xent":  # softmax cross-entropy: targets are distributions
        y = {k: np.abs(v) / np.abs(v).sum(-1, keepdims=True) for k, v in y.items()}
    return params, x, y


def _thin_and_general(model, call, thin, flag):
    """(thin path result, general path result) of ``call()``, and whether the thin one ran:
    ``native_fast.<thin>`` spied on, then ``model.<flag>`` off for the general path."""
    ran = []
    real = getattr(native_fast, thin)

    def spy(*a, **k):
        out = real(*a, **k)
        ran.append(out is not None)
        return out

    setattr(native_fast, thin, spy)
    try:
        fast = call()
    finally:
        setattr(native_fast, thin, real)
    setattr(model, flag, False)
    try:
        slow = call()
    finally:
        setattr(model, flag, True)
    return fast, slow, ran == [True]


def _both(model, *args, **kw):
    """A training call both ways (:func:`_thin_and_general`)."""
    return _thin_and_general(model, lambda: model.loss_and_grad(*args, **kw), "loss_and_grad", "_fast_path")


def _equal(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and a[2].keys() == b[2].keys()
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=f"gradient {k}")
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=f"final state {k}")


CELLS = [("elman", lambda: rc.cells.get("elman")(3, 5, 2)),
         ("lstm", lambda: rc.cells.get("lstm")(3, 6, 2)),  # stacked gates: a gradient group
         ("learned h0", many_functions),
         ("jordan xent", jordan_with_xent)]


@pytest.mark.parametrize("name,make", CELLS, ids=[c[0] for c in CELLS])
def test_thin_path_equals_general_path(name, make):
    cell = make()
    m = rc.compile(cell, backend="native", threads=1)
    for T, B in [(7, 3), (1, 1), (12, 2), (7, 3)]:  # a repeated shape reuses its frame
        params, x, y = _data(cell, T, B, seed=T + B)
        fast, slow, took = _both(m, params, x, y)
        assert took, f"{name}: the thin path did not take a plain call"
        _equal(fast, slow)
        h0 = {s: np.random.default_rng(1).normal(size=(B, n)) for s, n in cell.step.states.items()}
        fast, slow, took = _both(m, params, x, y, h0=h0)
        assert took
        _equal(fast, slow)


def test_results_are_fresh_arrays():
    """Each call returns new gradient and state arrays: a later call never changes them."""
    cell = rc.cells.get("gru")(3, 4, 2)
    m = rc.compile(cell, backend="native", threads=1)
    p1, x1, y1 = _data(cell, 5, 2, seed=1)
    p2, x2, y2 = _data(cell, 5, 2, seed=2)
    loss, grads, final = m.loss_and_grad(p1, x1, y1)
    kept = ({k: v.copy() for k, v in grads.items()}, {k: v.copy() for k, v in final.items()})
    m.loss_and_grad(p2, x2, y2)
    for k in grads:
        np.testing.assert_array_equal(grads[k], kept[0][k])
    for k in final:
        np.testing.assert_array_equal(final[k], kept[1][k])


def test_frames_follow_grown_buffers():
    """A longer call (or forward) grows the pooled buffers: cached frames are rebuilt, and a
    call of the first shape still gives the general path's answer."""
    cell = rc.cells.get("lstm")(3, 4, 2)
    m = rc.compile(cell, backend="native", threads=1)
    short, long_ = _data(cell, 4, 2, seed=3), _data(cell, 40, 5, seed=4)
    before = m.loss_and_grad(*short)
    m.loss_and_grad(*long_)
    m.forward(long_[0], long_[1])
    after, slow, took = _both(m, *short)
    assert took
    _equal(after, before)
    _equal(after, slow)


def test_calls_the_thin_path_leaves_to_the_general_one():
    cell = rc.cells.get("elman")(3, 5, 2)
    m = rc.compile(cell, backend="native", threads=1)
    params, x, y = _data(cell, 6, 4)
    mask = np.ones((6, 4))
    mask[3:, 1] = 0
    fast, slow, took = _both(m, params, x, y, mask=mask)
    assert took  # a mask: its step weights replace the frame's uniform ones for this call
    _equal(fast, slow)
    _equal(m.loss_and_grad(params, x, y), _both(m, params, x, y)[1])  # and back to uniform
    fast, slow, took = _both(m, params, x, y, mask=np.linspace(0, 1, 6))  # (T,) weights
    assert took
    _equal(fast, slow)
    with pytest.raises(CallError, match="mask must be finite and non-negative"):
        m.loss_and_grad(params, x, y, mask=-mask)
    strided = {"x": np.asfortranarray(x["x"])}
    fast, slow, took = _both(m, params, strided, y)
    assert not took  # copied by the general path, never read with the wrong strides
    _equal(fast, slow)
    _equal(fast, m.loss_and_grad(params, x, y))
    bad = dict(params, W=params["W"].copy())
    bad["W"][1, 2] = np.nan
    with pytest.raises(CallError, match=r"params\['W'\] contains nan at index \(1, 2\)"):
        m.loss_and_grad(bad, x, y)
    with pytest.raises(CallError, match="dtype float32"):
        m.loss_and_grad({k: v.astype(np.float32) for k, v in params.items()}, x, y)
    with pytest.raises(CallError, match="missing targets"):
        m.loss_and_grad(params, x, {})
    with pytest.raises(CallError, match=r"h0\['h'\] has shape \(3, 5\), expected \(4, 5\)"):
        m.loss_and_grad(params, x, y, h0={"h": np.zeros((3, 5))})


def test_threads_each_use_their_own_frame():
    cell = rc.cells.get("lstm")(3, 6, 2)
    m = rc.compile(cell, backend="native", threads=1)
    data = [_data(cell, 9, 2, seed=s) for s in range(4)]
    expect = [m.loss_and_grad(*d) for d in data]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                _equal(m.loss_and_grad(*data[i]), expect[i])
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("threads", [2, 3])
def test_split_batch_equals_general_path_and_reports_bad_values(threads):
    """threads=2 splits the batch: each slice runs the thin path on its own core (its buffers
    in a pool of its own, prepared by the calling thread)."""
    cell = many_functions()  # a learned initial state: its gradient sums over both slices
    m = rc.compile(cell, backend="native", threads=threads)
    params, x, y = _data(cell, 6, 8 * threads + 1, seed=5)
    assert len(m._split(8 * threads + 1)) == threads
    fast, slow, took = _both(m, params, x, y)
    assert took
    _equal(fast, slow)
    mask = (np.random.default_rng(7).random((6, 8 * threads + 1)) > 0.3).astype(float)
    fast, slow, took = _both(m, params, x, y, mask=mask)
    assert took
    _equal(fast, slow)
    x["x"][4, 8 * threads, 2] = np.inf  # in the last slice
    with pytest.raises(CallError, match=rf"inputs\['x'\] contains inf at index \(4, {8 * threads}, 2\)"):
        m.loss_and_grad(params, x, y)


def test_arrays_changed_in_place_are_read_again():
    """The thin path remembers the addresses of the last call's arrays, never their values."""
    cell = rc.cells.get("elman")(3, 5, 2)
    m = rc.compile(cell, backend="native", threads=1)
    params, x, y = _data(cell, 5, 2, seed=6)
    first = m.loss_and_grad(params, x, y)
    params["U"] *= 0.5
    x["x"] += 1.0
    second = m.loss_and_grad(params, x, y)
    m._fast_path = False
    _equal(second, m.loss_and_grad(params, x, y))
    assert second[0] != first[0]


def _both_forward(model, *args, **kw):
    """A forward both ways (:func:`_thin_and_general`)."""
    return _thin_and_general(model, lambda: model.forward(*args, **kw), "forward", "_forward_fast_path")


def _equal_forward(a, b):
    assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
    for part, what in ((0, "output"), (1, "final state")):
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=f"{what} {k}")


@pytest.mark.parametrize("name,make", CELLS, ids=[c[0] for c in CELLS])
def test_forward_thin_path_equals_general_path(name, make):
    """A forward-only call (inference, a settling network's relaxation) takes one native call
    in a kept frame, like a training call: the same outputs and final states bit for bit."""
    cell = make()
    m = rc.compile(cell, backend="native", threads=1)
    for T, B in [(7, 3), (1, 1), (12, 2), (7, 3)]:
        params, x, _ = _data(cell, T, B, seed=T + B)
        fast, slow, took = _both_forward(m, params, x)
        assert took, f"{name}: the thin path did not take a plain forward"
        _equal_forward(fast, slow)
        h0 = {s: np.random.default_rng(1).normal(size=(B, n)) for s, n in cell.step.states.items()}
        fast, slow, took = _both_forward(m, params, x, h0=h0)
        assert took
        _equal_forward(fast, slow)
        fast2 = m.forward(params, {k: v + 1 for k, v in x.items()}, h0=h0)
        _equal_forward(fast, slow)  # fresh arrays: a later call changed neither
        assert not np.array_equal(next(iter(fast2[1].values())), next(iter(fast[1].values())))
        for v in params.values():  # changed in place: read again, weights re-packed
            v *= 0.5
        fast, slow, took = _both_forward(m, params, x, h0=h0)
        assert took
        _equal_forward(fast, slow)


def test_forwards_the_thin_path_leaves_to_the_general_one(monkeypatch):
    from rnncomp.backends import native_forward
    cell = rc.cells.get("elman")(3, 5, 2)
    m = rc.compile(cell, backend="native", threads=1)
    params, x, y = _data(cell, 6, 4)
    fast, slow, took = _both_forward(m, params, {"x": np.asfortranarray(x["x"])})
    assert not took  # copied by the general path, never read with the wrong strides
    _equal_forward(fast, slow)
    _equal_forward(fast, m.forward(params, x))
    fast, slow, took = _both_forward(m, params, x, targets=y)
    assert not took  # targets: the general path checks them
    _equal_forward(fast, slow)
    bad = dict(params, W=params["W"].copy())
    bad["W"][1, 2] = np.nan
    with pytest.raises(CallError, match=r"params\['W'\] contains nan at index \(1, 2\)"):
        m.forward(bad, x)
    with pytest.raises(CallError, match=r"h0\['h'\] contains inf"):
        m.forward(params, x, h0={"h": np.full((4, 5), np.inf)})
    with pytest.raises(CallError, match="dtype float32"):
        m.forward({k: v.astype(np.float32) for k, v in params.items()}, x)
    with pytest.raises(CallError, match=r"h0\['h'\] has shape \(3, 5\), expected \(4, 5\)"):
        m.forward(params, x, h0={"h": np.zeros((3, 5))})
    with pytest.raises(CallError, match="'z'"):
        m.forward(params, {"z": x["x"]})
    monkeypatch.setattr(native_forward, "CHUNK_BYTES", 1)  # one step per chunk: not one call
    fast, slow, took = _both_forward(m, params, x)
    assert not took
    _equal_forward(fast, slow)


def test_a_forward_that_reads_targets_takes_the_general_path():
    """Teacher forcing: the forward needs targets=, and the general path says so."""
    import sympy as sp
    cell = rc.Cell("teacher")
    x, h, t = cell.input("x", 2), cell.state("h", 3), cell.target("t", 2)
    cell.update(h, sp.tanh(cell.param("W", (3, 2)) @ x + cell.param("C", (3, 2)) @ t + cell.param("U", (3, 3)) @ h))
    cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.loss(rc.vsum(h.new ** 2))
    m = rc.compile(cell, backend="native", threads=1)
    params, x_, y_ = _data(cell, 4, 2)
    with pytest.raises(CallError, match="pass targets= to forward"):
        m.forward(params, x_)
    fast, slow, took = _both_forward(m, params, x_, targets=y_)
    assert not took
    _equal_forward(fast, slow)
