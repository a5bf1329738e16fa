"""The PyTorch layer through the PTX model's device-resident entry points (rnncomp/torch_device.py).

On a CPU the PTX backend's host runner stands for the GPU: its "device" memory is this process's,
so CPU tensors take the same path CUDA tensors take on a GPU (their memory handed over through
``__cuda_array_interface__``, the results' device memory wrapped as tensors). Each test counts
the calls of that path (a spy), so a silent fallback to the host path fails it. References: the
same layer on the NumPy backend (float64, rtol 1e-10: the same sums in another order) and
``torch.autograd.gradcheck`` (central differences, float64). The CUDA tests at the end run only
where PyTorch sees a GPU (benchmarks/gpu_session.sh runs them).
"""
import types

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnncomp as rc
from rnncomp.errors import CallError
from fuzzgen import fuzz_cells
from layer_cells import two_inputs_learned_state

torch_device = pytest.importorskip("rnncomp.torch_device")
from rnncomp.torch import Recurrent, recurrent_op  # noqa: E402

F64 = torch.float64
NO_DROPOUT = torch.full((1,), -1, dtype=torch.int64)


@pytest.fixture
def spy(monkeypatch):
    """Counts the layer's device-resident forwards and backwards."""
    calls = {"forward": 0, "vjp": 0}
    for name in calls:
        real = getattr(torch_device, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(torch_device, name, counted)
    return calls


CELLS = {"elman": lambda: rc.cells.elman(3, 5, 2), "lstm": lambda: rc.cells.lstm(3, 4, 2),
         "gru": lambda: rc.cells.gru(3, 4, 2), "two": two_inputs_learned_state}


def _sequences(step, T, B, g, device="cpu"):
    return {n: torch.randn(T, B, k, dtype=F64, generator=g).to(device).requires_grad_()
            for n, k in step.inputs.items()}


def _grads(layer, x, h0, lengths=None):
    """Outputs, final states and the gradients of a loss touching every output and final state."""
    outs, final = layer(x, h0, lengths=lengths)
    outs = outs if isinstance(outs, dict) else {"y": outs}
    loss = sum((v ** 2 * (i + 1)).sum() for i, v in enumerate(outs.values()))
    loss = loss + sum((v * 0.7 * (i + 1)).sum() for i, v in enumerate(final.values()))
    leaves = [*(x.values() if isinstance(x, dict) else [x]), *h0.values(), *layer.parameters()]
    return [v.detach() for v in outs.values()], [v.detach() for v in final.values()], \
        torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", ["lstm", "two"])   # Elman and GRU: the fuzzed cells below, test_ptx_device.py
def test_the_device_path_matches_the_numpy_layer(name, spy):
    cell = CELLS[name]()
    ref = Recurrent(cell, output=None, backend="numpy", dtype=F64, seed=1)
    dev = Recurrent(cell, output=None, backend="ptx", runner="host", dtype=F64, seed=1)
    st = dev._model.step
    g = torch.Generator().manual_seed(4)
    x = _sequences(st, 6, 3, g)
    # a learned initial state starts from its parameter (expanded: a strided tensor); others are given
    h0 = {s: torch.randn(3, n, dtype=F64, generator=g, requires_grad=True)
          for s, n in st.states.items() if st.state_init[s] is None}
    want, got = _grads(ref, x, h0), _grads(dev, x, h0)
    assert spy == {"forward": 1, "vjp": 1}
    for a, b in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert len(got[2]) == len(want[2]) > 0
    for a, b in zip(want[2], got[2]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_device_path(spy):
    """Central differences (step 1e-6, float64) of outputs and final states in x, h0 and every parameter."""
    layer = Recurrent(rc.cells.gru(2, 3, 2), output="y", backend="ptx", runner="host", dtype=F64, seed=3)
    names = [n for n, _ in layer.named_parameters()]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, 2, dtype=F64, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, generator=g, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def f(x, h0, *ps):
        y, final = torch.func.functional_call(layer, dict(zip(names, ps)), (x, h0))
        return y, final["h"]

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert spy["forward"] > 0 and spy["vjp"] > 0


def test_batch_first_lengths_and_float32(spy):
    cell = rc.cells.lstm(3, 4, 2)
    lengths = [5, 2, 4]
    g = torch.Generator().manual_seed(6)
    x64 = torch.randn(3, 5, 3, dtype=F64, generator=g)
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-5)):
        ref = Recurrent(cell, output="y", backend="numpy", dtype=dtype, batch_first=True, seed=2)
        dev = Recurrent(cell, output="y", backend="ptx", runner="host", dtype=dtype, batch_first=True, seed=2)
        x = x64.to(dtype).requires_grad_()
        want, got = _grads(ref, x, {}, lengths), _grads(dev, x, {}, lengths)
        for a, b in zip(want[0] + want[1] + list(want[2]), got[0] + got[1] + list(got[2])):
            torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    assert spy["forward"] > 0 and spy["vjp"] > 0


def test_opcheck_and_torch_compile_without_a_graph_break(spy):
    layer = Recurrent(rc.cells.elman(3, 4, 2), output="y", backend="ptx", runner="host", dtype=F64, seed=1)
    st = layer._model.step
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    params = [getattr(layer, p) for p in st.params]
    torch.library.opcheck(recurrent_op, (layer._key, params, [x], [torch.zeros(2, 4, dtype=F64)], False,
                                         NO_DROPOUT))

    def loss(x):
        y, final = layer(x)
        return (y ** 2).sum() + final["h"].sum()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    want = torch.autograd.grad(loss(x), [x, *params])
    got = torch.autograd.grad(compiled(x), [x, *params])
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert spy["forward"] > 0 and spy["vjp"] > 0


def test_a_memory_schedule_keeps_its_checkpoints_on_the_device(spy):
    """A checkpointing plan (leaves of 2 steps of 8) runs on the device path too: same numbers."""
    cell = rc.cells.lstm(3, 4, 2)
    ref = Recurrent(cell, output="y", backend="numpy", dtype=F64, seed=1)
    dev = Recurrent(cell, output="y", backend="ptx", runner="host", dtype=F64, seed=1, memory=rc.Every(2))
    assert dev._model.memory_plan(8, 2).max_leaf < 8
    x = torch.randn(8, 2, 3, dtype=F64, requires_grad=True)
    h0 = {"h": torch.randn(2, 4, dtype=F64, requires_grad=True)}
    want, got = _grads(ref, x, h0), _grads(dev, x, h0)
    assert spy == {"forward": 1, "vjp": 1}
    for a, b in zip(want[0] + want[1] + list(want[2]), got[0] + got[1] + list(got[2])):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_where_a_tensor_is_is_checked_and_named():
    layer = Recurrent(rc.cells.elman(3, 4, 2), output="y", backend="ptx", runner="host", dtype=F64)
    x = torch.zeros(5, 2, 3, dtype=F64)
    with pytest.raises(CallError, match=r"h0\['h'\] is on meta, but backend 'ptx' takes CPU tensors"):
        layer(x, torch.zeros(2, 4, dtype=F64, device="meta"))
    model = layer._model
    cuda1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    with pytest.raises(CallError, match=r"input 'x' is on cuda:1, but this PTX model has runner='host'"):
        raise torch_device.where_error(model, "input 'x'", cuda1)
    with pytest.raises(CallError, match=r"inputs\['x'\] is on cuda:1, but the layer's PTX model runs on cuda:0"):
        torch_device._check_device(model, "inputs['x']", cuda1)
    derived = rc.Cell("derived"); xd = derived.input("x", 2); hd = derived.state("h", 3)
    derived.update(hd, rc.relu(sp.exp(derived.param("W", (3, 2))) @ xd + derived.param("U", (3, 3)) @ hd))
    derived.output("y", hd.new)
    on_ptx = Recurrent(derived, output="y", backend="ptx", runner="host", dtype=F64)._model
    assert not torch_device.takes(on_ptx, torch.device("cuda"))
    assert "takes host arrays only (device-resident calls serve a single compiled cell" in \
        str(torch_device.where_error(on_ptx, "x", cuda1))
    native = Recurrent(rc.cells.elman(3, 4, 2), output="y", dtype=F64)._model
    assert not torch_device.takes(native, torch.device("cuda"))
    assert "use backend='ptx' for CUDA tensors" in str(torch_device.where_error(native, "x", cuda1))
    # a PTX model for the GPU compiles without one (its runner starts on first use) and takes CUDA tensors
    on_gpu = rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", dtype="float64")
    assert torch_device.takes(on_gpu, torch.device("cuda")) and not torch_device.takes(model, torch.device("cuda"))


def test_the_results_share_the_models_memory_and_outlive_the_call():
    """The outputs are views of the runner's result memory (no copy), kept alive by the tensors."""
    layer = Recurrent(rc.cells.elman(3, 4, 2), output="y", backend="ptx", runner="host", dtype=F64, seed=1)
    ref = Recurrent(rc.cells.elman(3, 4, 2), output="y", backend="numpy", dtype=F64, seed=1)
    x = torch.randn(5, 2, 3, dtype=F64)
    y, final = layer(x)
    runner = layer._model.runner
    assert any(p <= y.data_ptr() < p + a.nbytes for p, a in runner._arrays.items())
    for _ in range(3):   # more calls: the first results' memory is not reused while they live
        layer(x * 2)
    torch.testing.assert_close(y, ref(x)[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final["h"], ref(x)[1]["h"], rtol=1e-10, atol=1e-12)


def test_the_current_stream_is_synchronised_after_the_dense_copies_are_queued(monkeypatch):
    """An expanded learned initial state and a ``sum()``'s expanded cotangent are made dense with
    ``.contiguous()``, a copy queued on PyTorch's current stream, which the model's stream does not
    wait for: the sync must come after those copies, not before (else, on a non-default stream,
    the model reads memory still being written)."""
    events = []
    for name in ("_arrays", "_before"):
        real = getattr(torch_device, name)

        def logged(*args, _real=real, _name=name):
            events.append(_name)
            return _real(*args)
        monkeypatch.setattr(torch_device, name, logged)
    layer = Recurrent(two_inputs_learned_state(), output=None, backend="ptx", runner="host", dtype=F64, seed=1)
    st = layer._model.step
    x = {n: torch.randn(5, 2, k, dtype=F64, requires_grad=True) for n, k in st.inputs.items()}
    outs, final = layer(x)
    (sum(v.sum() for v in outs.values()) + sum(v.sum() for v in final.values())).backward()
    assert events == ["_arrays"] * 3 + ["_before"] + ["_arrays"] * 5 + ["_before"]


def test_cuda_tensors_on_a_host_runner_do_not_go_to_its_entry_points():
    """The host runner reads its "device" addresses as this process's memory: a CUDA tensor's
    address there would be read as host memory, so such a call goes the host way (its error)."""
    host = Recurrent(rc.cells.elman(3, 4, 2), output="y", backend="ptx", runner="host", dtype=F64)._model
    on_gpu = rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", dtype="float64")
    cuda0 = [types.SimpleNamespace(device=torch.device("cuda", 0))]
    assert not torch_device.resident(host, cuda0)
    assert torch_device.resident(on_gpu, cuda0)


@settings(max_examples=3, deadline=None)
@given(fuzz_cells(max_states=2, max_depth=2, kinks=False), st.integers(2, 5), st.sampled_from(["all", 2]))
def test_fuzzed_cells_through_the_device_path(cell, T, every):
    """Any cell (no kinks: the two layers must take the same branch at every unit, which float
    rounding at a kink does not promise): outputs, final states and every gradient of the device
    path against the NumPy layer, h0 given for the first state only, a memory schedule drawn."""
    from rnncomp.torch import Recurrent as Layer
    memory = "all" if every == "all" else rc.Every(every)
    calls = {"forward": 0, "vjp": 0}
    real = torch_device.forward, torch_device.vjp
    ref = Layer(cell, output=None, backend="numpy", dtype=F64, seed=3)
    dev = Layer(cell, output=None, backend="ptx", runner="host", dtype=F64, seed=3, memory=memory)
    step = dev._model.step
    g = torch.Generator().manual_seed(T)
    xs = {n: torch.randn(T, 2, k, dtype=F64, generator=g, requires_grad=True) for n, k in step.inputs.items()}
    first = next(iter(step.states))
    h0 = {first: torch.randn(2, step.states[first], dtype=F64, generator=g, requires_grad=True)}
    try:
        torch_device.forward = lambda *a: calls.__setitem__("forward", calls["forward"] + 1) or real[0](*a)
        torch_device.vjp = lambda *a: calls.__setitem__("vjp", calls["vjp"] + 1) or real[1](*a)
        got = _grads(dev, xs, h0)
    finally:
        torch_device.forward, torch_device.vjp = real
    want = _grads(ref, xs, h0)
    assert calls == {"forward": 1, "vjp": 1}
    for a, b in zip(want[0] + want[1] + list(want[2]), got[0] + got[1] + list(got[2])):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- on a GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that PyTorch sees")


@cuda
@pytest.mark.parametrize("name", ["lstm", "gru", "two"])
def test_cuda_tensors_in_and_out_match_the_numpy_layer(name, spy):
    cell = CELLS[name]()
    ref = Recurrent(cell, output=None, backend="numpy", dtype=F64, seed=1)
    dev = Recurrent(cell, output=None, backend="ptx", dtype=F64, seed=1).cuda()
    g = torch.Generator().manual_seed(4)
    st = dev._model.step
    x = _sequences(st, 6, 3, g)
    h0 = {s: torch.randn(3, n, dtype=F64, generator=g) for s, n in st.states.items() if st.state_init[s] is None}
    want = _grads(ref, x, {k: v.requires_grad_() for k, v in h0.items()})
    xc = {k: v.detach().cuda().requires_grad_() for k, v in x.items()}
    got = _grads(dev, xc, {k: v.detach().cuda().requires_grad_() for k, v in h0.items()})
    assert spy == {"forward": 1, "vjp": 1}
    assert all(t.is_cuda for t in got[0] + got[1] + list(got[2]))
    for a, b in zip(want[0] + want[1] + list(want[2]), got[0] + got[1] + list(got[2])):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)


@cuda
def test_cuda_gradcheck_and_torch_compile():
    layer = Recurrent(rc.cells.gru(2, 3, 2), output="y", backend="ptx", dtype=F64, seed=3).cuda()
    x = torch.randn(4, 2, 2, dtype=F64, device="cuda", requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: layer(x, h0)[0], (x, h0), eps=1e-6, atol=1e-7, rtol=1e-6)
    compiled = torch.compile(lambda x: layer(x)[0].square().sum(), fullgraph=True, backend="aot_eager")
    np.testing.assert_allclose(compiled(x).item(), layer(x)[0].square().sum().item(), rtol=1e-12)


@cuda
def test_cuda_on_a_side_stream_the_dense_copies_are_written_before_the_model_reads_them(monkeypatch):
    """PyTorch's own streams are non-blocking: the model's stream waits only for what is synchronised.
    A GPU delay queued on the current stream right after the sync holds back whatever is queued after
    it there: the dense copy of the expanded learned initial state, had it been made after the sync."""
    real = torch_device._before

    def delayed(tensors):
        real(tensors)
        torch.cuda._sleep(100_000_000)   # tens of milliseconds of the current stream
    monkeypatch.setattr(torch_device, "_before", delayed)
    cell = two_inputs_learned_state()
    ref = Recurrent(cell, output=None, backend="numpy", dtype=F64, seed=1)
    dev = Recurrent(cell, output=None, backend="ptx", dtype=F64, seed=1).cuda()
    x = _sequences(dev._model.step, 6, 3, torch.Generator().manual_seed(5))
    want = _grads(ref, x, {})
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _grads(dev, {k: v.detach().cuda().requires_grad_() for k, v in x.items()}, {})
        got = [[t.cpu() for t in part] for part in got]
    for a, b in zip(want[0] + want[1] + list(want[2]), got[0] + got[1] + got[2]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
