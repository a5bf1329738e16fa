"""Device-resident calls of the PTX backend (``rnncomp/backends/ptx/device.py``).

On this CPU the host runner's "device" is host memory, so host arrays that expose
``__cuda_array_interface__`` stand for device arrays: the code that reads their addresses,
copies them into the arena and the results out runs as it does on a GPU, and must give what
the staged host path of the same model gives -- the same kernels on the same values, so equal
bit for bit (``np.array_equal``; the loss sums the same costs with the same weights).  The
staged path itself is checked against the NumPy oracle in test_ptx.py.  The CUDA test runs
where a GPU is present (skipped here).
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.backends.ptx.device import DeviceArray, is_device

from gradcheck import random_data


class OnHost:
    """A host array exposing ``__cuda_array_interface__`` (the host runner's device memory)."""

    def __init__(self, a, strides=None, typestr=None, stream=None):
        self.a = a
        self.strides, self.typestr, self.stream = strides, typestr, stream

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.typestr or self.a.dtype.str,
                "data": (self.a.ctypes.data, False), "version": 3, "strides": self.strides, "stream": self.stream}


def on(d):
    return {k: OnHost(np.ascontiguousarray(v)) for k, v in d.items()}


def learned_h0_cell():
    cell = rc.Cell("learned_h0")
    x, h = cell.input("x", 3), cell.state("h", 4, init="learn")
    cell.update(h, sp.tanh(cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h))
    y = cell.output("y", cell.param("V", (2, 4)) @ h.new)
    cell.loss(rc.vsum((y - cell.target("t", 2)) ** 2) / 2)
    return cell


CELLS = {"elman": lambda: rc.cells.elman(3, 5, 2), "lstm": lambda: rc.cells.lstm(3, 5, 2),
         "gru": lambda: rc.cells.gru(4, 6, 3), "jordan": lambda: rc.cells.jordan(3, 4, 2),
         "learned_h0": learned_h0_cell}


def host(x):
    return {k: v.copy_to_host() for k, v in x.items()}


@pytest.mark.parametrize("persistent", [False, True], ids=["steps", "persistent"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_device_calls_equal_the_staged_host_path(name, persistent):
    cell = CELLS[name]()
    m = rc.compile(cell, backend="ptx", runner="host", persistent=persistent)
    params, inputs, targets = random_data(cell, T=6, B=3)
    # the device call first: the arena holds nothing of these arrays from a staged call
    dloss, dgrads, dfinal = m.loss_and_grad(on(params), on(inputs), on(targets))
    loss, grads, final = m.loss_and_grad(params, inputs, targets)
    assert all(isinstance(v, DeviceArray) for v in [*dgrads.values(), *dfinal.values()])
    again = m.loss_and_grad(on(params), on(inputs), on(targets))[1]   # the same arena: sums start from 0
    assert all(np.array_equal(again[k].copy_to_host(), dgrads[k].copy_to_host()) for k in dgrads)
    assert dloss == loss
    for k in grads:
        assert np.array_equal(dgrads[k].copy_to_host(), grads[k]), k
    for s in final:
        assert np.array_equal(dfinal[s].copy_to_host(), final[s]), s
    m.close()   # a fresh arena: nothing left of the calls above
    douts, dfin = m.forward(on(params), on(inputs))
    outs, fin = m.forward(params, inputs)
    for o in outs:
        assert douts[o].shape == outs[o].shape and np.array_equal(douts[o].copy_to_host(), outs[o]), o
    for s in fin:
        assert np.array_equal(dfin[s].copy_to_host(), fin[s]), s


def test_h0_mask_float32_and_a_new_shape_on_the_same_model():
    cell = rc.cells.gru(3, 5, 2)
    m = rc.compile(cell, backend="ptx", runner="host", dtype="float32")
    for T, B in ((5, 4), (3, 2)):   # a second (T, B): a new arena under store-all
        params, inputs, targets = random_data(cell, T=T, B=B, dtype="float32")
        h0 = {"h": np.random.default_rng(T).standard_normal((B, 5)).astype(np.float32)}
        mask = np.random.default_rng(B).random((T, B)) > 0.3
        mask[0, 0] = True
        m.close()   # the device call on a fresh arena, before the staged one
        dloss, dgrads, dfinal = m.loss_and_grad(on(params), on(inputs), on(targets), h0=on(h0), mask=mask)
        loss, grads, final = m.loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
        assert dloss == loss
        assert all(np.array_equal(dgrads[k].copy_to_host(), grads[k]) for k in grads)
        assert np.array_equal(dfinal["h"].copy_to_host(), final["h"])


def test_device_arrays_made_by_the_model_round_trip_and_export_the_interface():
    m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    a = np.arange(12.0).reshape(3, 4)
    d = DeviceArray.from_host(m, a)
    cai = d.__cuda_array_interface__
    assert cai["shape"] == (3, 4) and cai["typestr"] == "<f8" and cai["version"] == 3
    assert np.array_equal(d.copy_to_host(), a) and is_device(d) and not is_device(a)
    params = {k: DeviceArray.from_host(m, v) for k, v in m.init_params(seed=1).items()}
    x = DeviceArray.from_host(m, np.ones((4, 2, 2)))
    loss, grads, _ = m.loss_and_grad(params, x, DeviceArray.from_host(m, np.zeros((4, 2, 1))))
    ref, g, _ = m.loss_and_grad(m.init_params(seed=1), np.ones((4, 2, 2)), np.zeros((4, 2, 1)))
    assert loss == ref and all(np.array_equal(grads[k].copy_to_host(), g[k]) for k in g)


def test_freed_device_arrays_are_reused_up_to_the_cache_bound(monkeypatch):
    import rnncomp.backends.ptx.device as device
    m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    a = DeviceArray(m.runner, (5, 7), m.dtype)
    ptr = a.ptr
    del a
    b = DeviceArray(m.runner, (7, 5), m.dtype)   # the same size: the same memory, no new allocation
    assert b.ptr == ptr
    monkeypatch.setattr(device, "CACHE_BYTES", 0)  # past the bound: given back to the runner
    del b
    assert ptr not in m.runner._arrays
    monkeypatch.setattr(device, "CACHE_BYTES", 1 << 20)
    c = DeviceArray(m.runner, (3,), m.dtype)
    ptr = c.ptr
    del c
    assert ptr in m.runner._arrays   # kept for reuse ...
    m.close()
    assert ptr not in m.runner._arrays   # ... until the model is closed


def test_a_device_array_collected_while_its_thread_holds_the_cache_lock(monkeypatch):
    """The garbage collector may run at any allocation, one inside _alloc or _release too, and
    collect a DeviceArray in a reference cycle (a tensor over one, in a traceback's frame): its
    __del__ takes the cache lock that thread holds.  (The lock is timed here: a deadlock shows as
    the array not kept for reuse, its __del__'s error swallowed, not as a hung test.)"""
    import gc

    import rnncomp.backends.ptx.device as device
    real = device._CACHE_LOCK

    class Timed:
        def __enter__(self):
            if not real.acquire(timeout=2):
                raise RuntimeError("the cache lock deadlocked")

        def __exit__(self, *exc):
            real.release()
    monkeypatch.setattr(device, "_CACHE_LOCK", Timed())
    m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    a = DeviceArray(m.runner, (5, 7), m.dtype)
    ptr, n = a.ptr, a.nbytes
    a.cycle = a
    del a
    with device._CACHE_LOCK:   # as in _alloc's setdefault({}), where a collection may start
        gc.collect()
    assert ptr in [p for p, _ in m.runner.__dict__.get("_device_free", {}).get(n, [])]   # released, kept for reuse
    m.close()


def test_a_learned_initial_state_fills_every_row_of_odd_and_even_batches():
    cell = learned_h0_cell()
    m = rc.compile(cell, backend="ptx", runner="host")
    for B in (1, 2, 5, 8, 13):   # row 0 from the parameter, then doubling copies
        params, inputs, _ = random_data(cell, T=3, B=B)
        m.close()
        douts, dfin = m.forward(on(params), on(inputs))
        outs, fin = m.forward(params, inputs)
        assert np.array_equal(dfin["h"].copy_to_host(), fin["h"]), B
        assert np.array_equal(douts["y"].copy_to_host(), outs["y"]), B


def test_producer_streams_and_reused_memory_are_waited_for(monkeypatch):
    """CUDA array interface v3: the consumer waits for the stream the producer exports; memory
    of a dropped DeviceArray is written again only after the device is idle (cuMemFree waited)."""
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="ptx", runner="host")
    params, inputs, targets = random_data(cell, T=4, B=2)
    waits = []
    from rnncomp.backends.ptx.runtime import HostRunner   # every runner: a VJP variant has its own
    monkeypatch.setattr(HostRunner, "wait_for", lambda self, streams: waits.append(streams))
    P = on(params)
    X = {"x": OnHost(np.ascontiguousarray(inputs["x"]), stream=7)}
    Y = {"target": OnHost(np.ascontiguousarray(targets["target"]), stream=2)}
    waits.clear()
    _, grads, _ = m.loss_and_grad(P, X, Y)
    assert waits == [[2, 7]]   # before the uploads, each stream once
    del grads
    waits.clear()
    m.loss_and_grad(P, X, Y)   # its results reuse the dropped gradients' memory (several arrays)
    assert [2, 7] in waits
    assert waits.count(None) == 1   # one wait for the device covers every array freed before it
    g = m.vjp(P, X, d_outputs={"y": OnHost(np.ones((4, 2, 2)), stream=9)})
    assert any(w == [7, 9] for w in waits) and isinstance(g.params["W"], DeviceArray)


def test_bad_device_calls_are_named():
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="ptx", runner="host")
    params, inputs, targets = random_data(cell, T=4, B=2)
    P, X, Y = on(params), on(inputs), on(targets)
    with pytest.raises(rc.CallError, match=r"params\['W'\] is not a device array, but other arrays"):
        m.loss_and_grad({**P, "W": params["W"]}, X, Y)
    with pytest.raises(rc.CallError, match=r"inputs\['x'\] has shape \(4, 2, 2\), expected \(4, 2, 3\)"):
        m.loss_and_grad(P, {"x": OnHost(np.zeros((4, 2, 2)))}, Y)
    with pytest.raises(rc.CallError, match=r"params\['U'\] is float32 on the device; the model is float64"):
        m.loss_and_grad({**P, "U": OnHost(params["U"].astype(np.float32))}, X, Y)
    with pytest.raises(rc.CallError, match=r"not C-contiguous on the device"):
        m.loss_and_grad({**P, "U": OnHost(params["U"], strides=(8, 32))}, X, Y)
    with pytest.raises(rc.CallError, match=r"missing params 'b'"):
        m.loss_and_grad({k: v for k, v in P.items() if k != "b"}, X, Y)
    with pytest.raises(rc.CallError, match=r"unknown initial states \(h0\) 'c'"):
        m.loss_and_grad(P, X, Y, h0={"c": OnHost(np.zeros((2, 4)))})
    with pytest.raises(rc.CallError, match=r"missing targets 'target'"):
        m.loss_and_grad(P, X, {})
    with pytest.raises(rc.CallError, match=r"device-resident forward takes params, inputs and h0 only, not keep"):
        m.forward(P, X, keep=True)
    B = next(iter(X.values())).a.shape[1]
    for call in (lambda: m.loss_and_grad(P, X, Y, lengths=[1] * B), lambda: m.forward(P, X, lengths=[1] * B),
                 lambda: m.vjp(P, X, d_final={"h": OnHost(np.zeros((B, 4)))}, lengths=[1] * B)):
        with pytest.raises(rc.CallError, match=r"device-resident \w+ takes"):  # by name, not a shape error
            call()


@pytest.mark.skipif(not __import__("rnncomp.backends.ptx.runtime", fromlist=["x"]).cuda_available(),
                    reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("name", ["lstm", "learned_h0"])
def test_cuda_device_calls_equal_the_staged_path(name):
    cell = CELLS[name]()
    m = rc.compile(cell, backend="ptx")
    params, inputs, targets = random_data(cell, T=7, B=4)
    loss, grads, final = m.loss_and_grad(params, inputs, targets)
    dev = lambda d: {k: DeviceArray.from_host(m, v) for k, v in d.items()}  # noqa: E731
    dloss, dgrads, dfinal = m.loss_and_grad(dev(params), dev(inputs), dev(targets))
    assert dloss == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(dgrads[k].copy_to_host(), grads[k], rtol=1e-12, atol=1e-14)
    outs, _ = m.forward(params, inputs)
    douts, _ = m.forward(dev(params), dev(inputs))
    for o in outs:
        np.testing.assert_allclose(douts[o].copy_to_host(), outs[o], rtol=1e-12, atol=1e-14)
    d_out = {o: np.ones_like(v) for o, v in outs.items()}
    ref = m.vjp(params, inputs, d_outputs=d_out, targets=targets)
    g = m.vjp(dev(params), dev(inputs), d_outputs=dev(d_out), targets=dev(targets))
    assert g.loss == pytest.approx(ref.loss, rel=1e-12)
    for part in ("params", "inputs", "h0"):
        for k, v in getattr(ref, part).items():
            np.testing.assert_allclose(getattr(g, part)[k].copy_to_host(), v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["lstm", "learned_h0", "jordan"])
def test_device_vjp_equals_the_staged_vjp(name):
    cell = CELLS[name]()
    m = rc.compile(cell, backend="ptx", runner="host")
    T, B = 5, 3
    params, inputs, targets = random_data(cell, T=T, B=B)
    rng = np.random.default_rng(7)
    d_out = {o: rng.standard_normal((T, B, n)) for o, n in cell.step.outputs.items()}
    d_fin = {s: rng.standard_normal((B, n)) for s, n in cell.step.states.items()}
    for kw in ({"d_outputs": d_out, "d_final": d_fin}, {"d_outputs": d_out, "targets": targets}, {"d_final": d_fin}):
        m.close()   # the device call on fresh arenas (the model's and its variants'), before the staged one
        dev = {k: on(v) for k, v in kw.items()}
        g = m.vjp(on(params), on(inputs), **dev)
        ref = m.vjp(params, inputs, **kw)
        assert g.loss == ref.loss
        for part in ("params", "inputs", "h0"):
            mine, theirs = getattr(g, part), getattr(ref, part)
            assert set(mine) == set(theirs), part
            for k in theirs:
                assert isinstance(mine[k], DeviceArray)
                assert np.array_equal(mine[k].copy_to_host(), theirs[k]), (part, k, sorted(kw))
    g = m.vjp(on(params), on(inputs), d_outputs=on(d_out), wrt=())
    assert g.inputs == {}
    with pytest.raises(rc.CallError, match=r"d_outputs\['y'\] has shape"):
        m.vjp(on(params), on(inputs), d_outputs={"y": OnHost(np.zeros((T, B, 9)))})


class _FakeDriver:
    """Records the CudaRunner's driver calls (the names and arguments of cuda.bindings.driver)."""

    class CUresult:
        CUDA_SUCCESS = 0

    class CUmemorytype:
        CU_MEMORYTYPE_DEVICE = 2

    class CUDA_MEMCPY2D:   # cuda-python's struct: every field starts at 0
        def __init__(self):
            self.srcXInBytes = self.srcY = self.dstXInBytes = self.dstY = 0

    def __init__(self, current=0):
        self.calls, self.current = [], current   # the calling thread's current context (0: none)

    def cuCtxGetCurrent(self):
        self.calls.append(("cuCtxGetCurrent", ()))
        return 0, self.current

    def cuCtxSetCurrent(self, ctx):
        self.calls.append(("cuCtxSetCurrent", (ctx,)))
        self.current = ctx
        return (0,)

    def __getattr__(self, name):
        if not name.startswith("cu"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args)) or (0,)


def test_cuda_runner_copies_make_the_context_current_and_pick_the_driver_call():
    """CudaRunner.run_copies/execute on a recording driver: the runner's context made current
    first (a call may come from a thread that never allocated), a contiguous 'rows' copy as one
    cuMemcpyDtoDAsync of every byte, a pitched one as cuMemcpy2DAsync with pitches in bytes."""
    from rnncomp.backends.ptx.runtime import CudaRunner
    r = object.__new__(CudaRunner)
    r.drv, r.ctx, r.stream = _FakeDriver(current=3), 7, "stream"   # the thread's own context: 3
    r._host = []
    r.run_copies([("rows", 1000, 24, 2000, 24, 24, 5), ("rows", 3000, 40, 4000, 16, 16, 6)])
    names = [c[0] for c in r.drv.calls]
    assert names == ["cuCtxGetCurrent", "cuCtxSetCurrent", "cuMemcpyDtoDAsync", "cuMemcpy2DAsync",
                     "cuCtxSetCurrent"]
    assert r.drv.calls[1][1] == (7,) and r.drv.calls[-1][1] == (3,) and r.drv.current == 3   # restored
    assert r.drv.calls[2][1] == (1000, 2000, 120, "stream")
    c, stream = r.drv.calls[3][1]
    assert stream == "stream" and c.srcMemoryType == c.dstMemoryType == 2
    assert (c.dstDevice, c.dstPitch, c.srcDevice, c.srcPitch, c.WidthInBytes, c.Height) == (3000, 40, 4000, 16, 16, 6)
    assert c.srcXInBytes == c.srcY == c.dstXInBytes == c.dstY == 0
    r.drv.calls.clear()
    r.execute({"graph": (None, "exe")})
    assert [c[0] for c in r.drv.calls] == ["cuCtxGetCurrent", "cuCtxSetCurrent", "cuGraphLaunch", "cuCtxSetCurrent"]
    assert r.drv.current == 3
    r.drv.calls.clear()
    r.drv.current = 7   # already the runner's (a nested call, or the thread's own): nothing set
    r.free_host(12345)   # not one of its allocations: nothing freed
    r.run_copies([("memset", 1000, 8)])
    assert [c[0] for c in r.drv.calls] == ["cuCtxGetCurrent", "cuCtxGetCurrent", "cuMemsetD8Async"]
    r.drv.calls.clear()
    r.drv.current = 0   # a thread with no context: none again after
    r._host = [555]
    r.free_host(555)   # frees inside, syncing first: one switch around both
    assert [c[0] for c in r.drv.calls] == ["cuCtxGetCurrent", "cuCtxSetCurrent", "cuCtxGetCurrent",
                                           "cuStreamSynchronize", "cuMemFreeHost", "cuCtxSetCurrent"]
    assert r.drv.current == 0


def _pitched_copy_case(runner):
    """A 'rows' copy with different pitches (the cuMemcpy2DAsync path, which no zoo or fuzz cell
    reaches: their device-call copies are all contiguous) between two of ``runner``'s allocations."""
    src = np.arange(6 * 5, dtype=np.float64).reshape(6, 5)   # 6 rows of 5, pitch 40 bytes
    dst = np.full((6, 7), -1.0)                              # 6 rows of 7, pitch 56 bytes
    s, d = runner.alloc(src.nbytes), runner.alloc(dst.nbytes)
    runner.run_copies([("h2d", s, src.ctypes.data, src.nbytes), ("h2d", d, dst.ctypes.data, dst.nbytes),
                       ("rows", d + 2 * 8, 56, s + 1 * 8, 40, 3 * 8, 6),   # columns 1..3 into 2..4
                       ("d2h", dst.ctypes.data, d, dst.nbytes)])
    runner.sync()
    want = np.full((6, 7), -1.0)
    want[:, 2:5] = src[:, 1:4]
    return dst, want


def test_host_runner_pitched_rows_copy():
    m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    got, want = _pitched_copy_case(m.runner)
    assert np.array_equal(got, want)
    with pytest.raises(rc.CompileError, match="pitch below the row width"):
        m.runner.run_copies([("rows", 0, 8, 0, 16, 16, 2)])


@pytest.mark.skipif(not __import__("rnncomp.backends.ptx.runtime", fromlist=["x"]).cuda_available(),
                    reason="no CUDA GPU/driver or cuda-python in this process")
def test_cuda_pitched_rows_copy():
    """cuMemcpy2DAsync device to device with pitches not from cuMemAllocPitch (the driver's
    documentation says an intra-device copy 'may fail' for such pitches)."""
    m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx")
    got, want = _pitched_copy_case(m.runner)
    assert np.array_equal(got, want)


class RequiresGrad(OnHost):
    """As a PyTorch CUDA tensor with requires_grad=True: its interface raises RuntimeError
    (torch/_tensor.py, Tensor.__cuda_array_interface__)."""

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. If gradients "
                           "aren't required, use var.detach() to get Variable that doesn't require grad.")


def test_a_tensor_that_requires_grad_is_a_device_array_named_with_detach():
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="ptx", runner="host")
    params, inputs, targets = random_data(cell, T=4, B=2)
    assert is_device(RequiresGrad(params["W"]))
    for P in ({**on(params), "W": RequiresGrad(params["W"])}, {**params, "W": RequiresGrad(params["W"])}):
        with pytest.raises(rc.CallError, match=r"params\['W'\] does not export .*requires grad.*detach\(\)"):
            m.loss_and_grad(P, on(inputs), on(targets))


def test_device_arrays_where_host_arrays_are_taken_are_named():
    """The native and NumPy backends and a cell with derived weights (whose PTX model takes host
    arrays) name a device array instead of reading it as an array of objects."""
    d = rc.Cell("derived"); x = d.input("x", 2); h = d.state("h", 3)
    d.update(h, sp.tanh(sp.exp(d.param("W", (3, 2))) @ x + d.param("U", (3, 3)) @ h))
    d.loss(rc.vsum(h.new))
    host = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    for cell, backend in ((rc.cells.elman(2, 3, 1), "native"), (rc.cells.elman(2, 3, 1), "numpy"), (d, "ptx")):
        m = rc.compile(cell, backend=backend, **({"runner": "host"} if backend == "ptx" else {}))
        params = {k: DeviceArray.from_host(host, v) for k, v in m.init_params(seed=0).items()}
        with pytest.raises(rc.CallError, match=r"is a device array \(__cuda_array_interface__\), and this call "
                                              r"takes host arrays"):
            m.forward(params, np.ones((3, 2, 2)))

