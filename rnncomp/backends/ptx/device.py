"""Device-resident calls of the PTX backend: arrays that live on the GPU in and out, no host copies.

    loss, grads, final = model.loss_and_grad(params, inputs, targets)   # every array on the device
    outputs, final = model.forward(params, inputs)
    g = model.vjp(params, inputs, d_outputs=..., d_final=...)          # g.params, g.inputs, g.h0 on the device

A device array is any object with ``__cuda_array_interface__`` (a PyTorch CUDA tensor, a CuPy or
Numba array, a :class:`DeviceArray`) on the model's device: C-contiguous, of the model's dtype and
of the shape a host call takes.  The call copies each into the model's arena (device to device,
one 2-D copy, on the stream the kernels run on), runs the forward and backward kernels as a host
call does (the same prepared sequences), and copies the results into new :class:`DeviceArray`\\ s,
which those libraries take without a copy (``torch.as_tensor(a, device="cuda")``,
``cupy.asarray(a)``).  What crosses to the host: the step weights (T, B), the per-step costs
(T, B) the loss is summed from, and a learned initial state's gradient (one row).

Under a ``memory=`` schedule that keeps fewer steps than the call has, the plan runs on the device
(:mod:`.device_plan`: checkpoints and carried adjoints stay there).  Limits: device arrays are not scanned for NaN or infinity (a NaN shows in the loss); every array
of a call on the device, or none; ``forward`` without ``keep``/``wrt``/``targets`` (``vjp`` is the
device-resident backward: the PTX backend's kept forward runs the forward again anyway).  A stream an
input's producer exports (``__cuda_array_interface__`` version 3: CuPy, Numba) is waited for before
the uploads; PyTorch exports none, so its current stream must have finished writing the inputs
(``torch.cuda.current_stream().synchronize()``).  A call returns when its results are written.

With ``runner="host"`` the "device" is this process's memory: the same code runs on host arrays
that expose ``__cuda_array_interface__`` (how ``tests/test_ptx_device.py`` checks it on a CPU).

    >>> import numpy as np, rnncomp as rc
    >>> m = rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host")
    >>> x = DeviceArray.from_host(m, np.ones((4, 2, 2)))
    >>> params = {k: DeviceArray.from_host(m, v) for k, v in m.init_params(seed=0).items()}
    >>> outputs, final = m.forward(params, {"x": x})
    >>> outputs["y"].shape, type(final["h"]).__name__, final["h"].copy_to_host().shape
    ((4, 2, 1), 'DeviceArray', (2, 3))
"""
from __future__ import annotations

import math
import threading

import numpy as np

from ...autodiff import LOSS_ONLY, Cotangents
from ...errors import CallError
from ..validate import (Call, _as_dict, _check_names, _check_param_names, check_mask, forward_targets, is_device,
                        step_weights, weighted_loss)
from ..vjp import Gradients, resolve_wrt
from .layout import address
from .plan import grad_key


def any_device(*values) -> bool:
    return any(is_device(v) for x in values for v in (x.values() if isinstance(x, dict) else [x]))


#: Bytes of freed DeviceArrays a runner keeps for the next ones of the same size (as PyTorch's
#: caching allocator does: a training loop's results come and go every call, and cuMemFree
#: waits for the device)
CACHE_BYTES = 256 << 20


# a DeviceArray may be collected on any thread, and by the garbage collector at any allocation,
# one inside _alloc or _release too, whose thread holds the lock then: reentrant
_CACHE_LOCK = threading.RLock()


def _alloc(runner, nbytes: int) -> int:
    with _CACHE_LOCK:
        free = runner.__dict__.setdefault("_device_free", {})
        ptr = None
        if free.get(nbytes):
            runner._device_cached -= nbytes
            ptr, freed = free[nbytes].pop()
            mark = runner.__dict__.get("_device_released", 0)
    if ptr is None:
        return runner.alloc(nbytes)
    # the array that held it was dropped, but work its consumer queued on another stream may still
    # read it (cuMemFree would have waited): wait for the device before it is written again, once
    # for every array freed before the wait began (a call's results reuse many: one wait, not one each)
    if freed > runner.__dict__.get("_device_synced", 0):
        runner.wait_for(None)
        with _CACHE_LOCK:
            runner._device_synced = max(runner.__dict__.get("_device_synced", 0), mark)
    return ptr


def _release(runner, ptr: int, nbytes: int) -> None:
    with _CACHE_LOCK:
        cached = runner.__dict__.get("_device_cached", 0)
        if cached + nbytes <= CACHE_BYTES:
            runner._device_cached = cached + nbytes
            runner._device_released = stamp = runner.__dict__.get("_device_released", 0) + 1
            runner.__dict__.setdefault("_device_free", {}).setdefault(nbytes, []).append((ptr, stamp))
            return
    runner.free(ptr)


def drop_cache(runner) -> None:
    """Give the runner back the memory of freed DeviceArrays kept for reuse (``PtxModel.close``)."""
    with _CACHE_LOCK:
        free = runner.__dict__.pop("_device_free", {})
        runner._device_cached = 0
    for ptrs in free.values():
        for ptr, _ in ptrs:
            runner.free(ptr)


class DeviceArray:
    """Memory on a PTX model's device (its runner's allocation, given back with this object:
    kept for the next array of its size up to :data:`CACHE_BYTES` per runner), shaped and typed,
    exported through ``__cuda_array_interface__`` (version 3)."""

    def __init__(self, runner, shape, dtype):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self._runner = runner
        self.ptr = _alloc(runner, max(self.nbytes, 1))

    @classmethod
    def from_host(cls, model, array) -> "DeviceArray":
        """A copy of the host ``array`` on ``model``'s device, in the model's dtype."""
        a = np.ascontiguousarray(array, dtype=model.dtype)
        out = cls(model.runner, a.shape, a.dtype)
        model.runner.run_copies([("h2d", out.ptr, a.ctypes.data, a.nbytes)])
        model.runner.sync()
        return out

    def copy_to_host(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self._runner.run_copies([("d2h", out.ctypes.data, self.ptr, self.nbytes)])
        self._runner.sync()
        return out

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": None}  # the call that wrote it has finished

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name})"

    def __del__(self):
        try:
            _release(self._runner, self.ptr, max(self.nbytes, 1))
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver may be gone
            pass


def _view(model, x, what, shape, streams):
    """The device address of ``x``, checked against the shape and dtype a host call takes; the
    stream its producer exports (CUDA array interface v3: the consumer waits for it) into ``streams``."""
    where = f"cell {model.step.name!r}: {what}"
    try:
        cai = getattr(x, "__cuda_array_interface__", None) if is_device(x) else None
    except RuntimeError as exc:   # PyTorch: "Can't get __cuda_array_interface__ on Variable that requires grad"
        raise CallError(f"{where} does not export its device memory ({exc}): pass tensor.detach()") from None
    if cai is None:
        raise CallError(f"{where} is not a device array, but other arrays of the call are: pass every "
                        "array on the device (__cuda_array_interface__) or every one on the host")
    got, dt = tuple(int(n) for n in cai["shape"]), np.dtype(cai["typestr"])
    if got != tuple(shape):
        raise CallError(f"{where} has shape {got}, expected {tuple(shape)}")
    if dt != model.dtype:
        raise CallError(f"{where} is {dt.name} on the device; the model is {model.dtype.name}: convert it "
                        "on the device first")
    strides = cai.get("strides")
    dense = tuple(int(math.prod(got[i + 1:])) * dt.itemsize for i in range(len(got)))
    if strides is not None and tuple(strides) != dense and math.prod(got) > 1:
        raise CallError(f"{where} is not C-contiguous on the device (strides {tuple(strides)}): make a "
                        "contiguous copy (.contiguous() in PyTorch)")
    if cai.get("mask") is not None:
        raise CallError(f"{where} is a masked device array: pass the mask as mask=")
    if cai.get("stream"):
        streams.add(int(cai["stream"]))
    return int(cai["data"][0])


def _arguments(model, params, inputs, targets, h0, with_targets):
    """(T, B, {region: device address}, {producer streams}): the call's arrays, checked."""
    st = model.step
    _check_param_names(st.name, params, st.params)   # the host call's checks of names
    inputs = _as_dict("inputs", inputs, list(st.inputs), st.name)
    _check_names(st.name, "inputs", inputs, list(st.inputs))
    targets = _as_dict("targets", targets, list(st.targets), st.name) if with_targets else {}
    if with_targets:
        _check_names(st.name, "targets", targets, list(st.targets))
    h0 = _as_dict("h0", h0, list(st.states), st.name)
    _check_names(st.name, "initial states (h0)", h0, list(st.states), allow_missing=True)
    seq = {**inputs, **targets}
    if not seq:
        raise CallError(f"cell {st.name!r}: a device call needs an input or target to tell T and B")
    shape = tuple(getattr(next(iter(seq.values())), "__cuda_array_interface__", {}).get("shape", ()))
    if len(shape) != 3 or not shape[0] or not shape[1]:
        raise CallError(f"cell {st.name!r}: {next(iter(seq))!r} must be a (T, B, n) device array with T, B ≥ 1")
    T, B, streams = int(shape[0]), int(shape[1]), set()
    ptr = {("param", p): _view(model, params[p], f"params[{p!r}]", s if isinstance(s, tuple) else (s,), streams)
           for p, s in st.params.items()}
    sizes = st.inputs | st.targets
    ptr.update({("io", k): _view(model, v, f"{'inputs' if k in st.inputs else 'targets'}[{k!r}]", (T, B, sizes[k]),
                                 streams) for k, v in seq.items()})
    ptr.update({("state", s): _view(model, v, f"h0[{s!r}]", (B, st.states[s]), streams) for s, v in h0.items()})
    return T, B, ptr, streams


class _Arena:
    """Addresses and copies of one call in the arena ``a`` of (T, B)."""

    def __init__(self, model, a, T, B):
        self.m, self.a, self.T, self.B = model, a, T, B
        self.L, self.isz = model.plan.layout, model.dtype.itemsize

    def addr(self, key, t=0):
        return address(self.L, key, t, self.a["base"], self.a["offsets"], self.B, self.isz)

    def rows(self, dst, dpitch, src, spitch, n, rows):
        """("rows", ...): ``rows`` rows of ``n`` elements."""
        i = self.isz
        return ("rows", dst, dpitch * i, src, spitch * i, n * i, rows)

    def new(self, shape):
        return DeviceArray(self.m.runner, shape, self.m.dtype)

    def uploads(self, ptr, reads_targets):
        """The copies that fill the arena from the caller's device arrays (and memsets)."""
        m, st, P, T, B = self.m, self.m.step, self.m.plan, self.T, self.B
        ops = []
        for p, s in st.params.items():
            n = math.prod(s) if isinstance(s, tuple) else s
            ops.append(self.rows(self.addr((p, None)), n, ptr[("param", p)], n, n, 1))
        for s in P.state_slot:
            n, dst = st.states[s], self.addr((s, "t-1"), 0)
            ld = self.L.ld((s, "t-1"))
            if ("state", s) in ptr:
                ops.append(self.rows(dst, ld, ptr[("state", s)], n, n, B))
            elif st.state_init[s] is not None:  # a learned initial state: its parameter in every row,
                # row 0 from the parameter, then the rows made so far doubled: log2(B) + 1 copies
                ops.append(self.rows(dst, ld, ptr[("param", st.state_init[s])], n, n, 1))
                done = 1
                while done < B:
                    k = min(done, B - done)
                    ops.append(self.rows(dst + done * ld * self.isz, ld, dst, ld, ld, k))
                    done += k
            else:
                ops.append(("memset", dst, B * ld * self.isz))
        for k in P.io_slot:
            n, dst = (st.inputs | st.targets)[k], self.addr((k, "t"))
            if ("io", k) in ptr:
                ops.append(self.rows(dst, self.L.ld((k, "t")), ptr[("io", k)], n, n, T * B))
            elif k in st.targets and not reads_targets:   # a target a forward does not read: zeros
                ops.append(("memset", dst, T * B * self.L.ld((k, "t")) * self.isz))
        return ops

    def finals(self):
        st, out, ops = self.m.step, {}, []
        for s in self.m.plan.state_slot:
            n = st.states[s]
            out[s] = self.new((self.B, n))
            ops.append(self.rows(out[s].ptr, n, self.addr((s, "t-1"), self.T), self.L.ld((s, "t-1")), n, self.B))
        return out, ops

    def staged(self, name, kind):
        """A copy between the staging region ``name`` and the arena (small arrays only)."""
        dev, host = self.a["stage_at"][name]
        n = self.a["stage"][name].nbytes
        return ("h2d", dev, host, n) if kind == "h2d" else ("d2h", host, dev, n)


def device_forward(model, params, inputs, h0=None):
    """``model.forward`` on device arrays: ({output: DeviceArray (T, B, n)}, {state: DeviceArray (B, n)})."""
    st = model.step
    T, B, ptr, streams = _arguments(model, params, inputs, None, h0, with_targets=False)
    reads = set(forward_targets(st))
    if reads:
        raise CallError(f"cell {st.name!r}: its forward reads targets ({', '.join(sorted(reads))}); a "
                        "device-resident forward takes inputs only: call loss_and_grad, or use host arrays")
    if not model._one_leaf(T, B):   # a memory schedule: chunks of its longest leaf (device_plan.py)
        from .device_plan import forward
        return forward(model, T, B, ptr, streams)
    outs = {o: DeviceArray(model.runner, (T, B, n), model.dtype) for o, n in st.outputs.items()}
    return outs, run_forward(model, T, B, ptr, streams, {o: a.ptr for o, a in outs.items()})


def run_forward(model, T, B, ptr, streams, outs_at=None):
    """One forward of ``model`` over T steps from the arrays at ``ptr``: the final states (new
    DeviceArrays); each output's T×B rows written at ``outs_at[o]`` (None: not read out)."""
    st = model.step
    with model._lock:
        a = model._get_arena(T, B)
        ar = _Arena(model, a, T, B)
        finals, ops = ar.finals()
        for o, n in st.outputs.items() if outs_at is not None else ():
            ops.append(ar.rows(outs_at[o], n, ar.addr((o, "t")), ar.L.ld((o, "t")), n, T * B))
        model.runner.wait_for(sorted(streams))   # the producers' streams have written the inputs
        model.runner.run_copies(ar.uploads(ptr, reads_targets=False))
        model.runner.execute(a["fwd"])
        model.runner.run_copies(ops)
        model.runner.sync()
    return finals


def _weights(model, T, B, mask):
    dt = model.dtype
    return step_weights(Call(T, B, {}, {}, {}, {}, None if mask is None else check_mask(model.step.name, mask, T, B, dt)),
                        dt)


def _train(m, T, B, ptr, streams, w, wrt=(), grads_in=None, d_in_at=None, want_final=False):
    """One forward + backward of ``m`` (the model, or a VJP variant: its outputs' and final states'
    cotangents come in ``ptr``) on device arrays: (loss or None, {param: DeviceArray}, {state:
    DeviceArray} final states of the model ({} for a variant unless ``want_final``), {input in wrt:
    δx}, {state: δh0} of a variant, else {}).  A checkpointing plan's leaf (``device_plan.py``):
    ``grads_in`` {param: DeviceArray} the gradients so far, which this call's add to (its kernels
    sum into the gradient slots); ``d_in_at`` {input: address} where δx's rows go (none returned)."""
    st, P, L, bwd = m.step, m.plan, m.plan.layout, m.bwd
    variant = m._cot != LOSS_ONLY
    with m._lock:
        a = m._get_arena(T, B)
        ar, S = _Arena(m, a, T, B), a["stage"]
        S[("w",)][...] = 0 if w is None else w
        ups = ar.uploads(ptr, reads_targets=w is not None) + [ar.staged(("w",), "h2d")]
        ups += [("memset", a["base"] + a["offsets"][k], L.slots[k].units * ar.isz)
                for k in sorted(set(P.grad_slot.values()))]
        for p, g in (grads_in or {}).items():   # the sum so far: this call's kernels add to it
            n = g.nbytes // ar.isz
            ups.append(ar.rows(a["base"] + a["offsets"][P.grad_slot[p]] + L.where[grad_key(p)].col * ar.isz,
                               n, g.ptr, n, n, 1))
        for o, k in bwd.out_seeds.items():
            n = st.outputs[o]
            ups.append(ar.rows(ar.addr(k), L.ld(k), ptr[("cot", o)], n, n, T * B))
        for s, n in st.states.items() if variant else ():   # δ⁺h[T]: row T-1 of the carry (0: no cotangent)
            k = bwd.carry_in[s]
            ups.append(("memset", ar.addr(k, T - 1) - L.where[k].col * ar.isz, B * L.ld(k) * ar.isz))
            if ("dfinal", s) in ptr:
                ups.append(ar.rows(ar.addr(k, T - 1), L.ld(k), ptr[("dfinal", s)], n, n, B))
        finals, downs = ar.finals() if not variant or want_final else ({}, [])   # a vjp returns none
        grads, d_in, d_h0 = {}, {}, {}
        for p, k in P.grad_slot.items():
            shape = st.params[p] if isinstance(st.params[p], tuple) else (st.params[p],)
            n = math.prod(shape)
            grads[p] = ar.new(shape)
            src = a["base"] + a["offsets"][k] + L.where[grad_key(p)].col * ar.isz
            downs.append(ar.rows(grads[p].ptr, n, src, n, n, 1))
        for x in wrt:
            k, n = bwd.input_adjoints.get(x), st.inputs[x]
            if d_in_at is None:
                d_in[x] = ar.new((T, B, n))
            dst = d_in[x].ptr if d_in_at is None else d_in_at[x]
            downs.append(ar.rows(dst, n, ar.addr(k), L.ld(k), n, T * B) if k is not None
                         else ("memset", dst, T * B * n * ar.isz))
        learned = {s: p for s, p in st.state_init.items() if p is not None and ("state", s) not in ptr}
        for s, n in st.states.items() if variant else ():   # δh[-1]: row 0 of the carry
            k = bwd.carry_in[s]
            d_h0[s] = ar.new((B, n))
            downs.append(ar.rows(d_h0[s].ptr, n, ar.addr(k, -1), L.ld(k), n, B))
        downs += [] if variant else [ar.staged(("dinit", s), "d2h") for s in learned]
        downs += [ar.staged(("cost",), "d2h")] if w is not None else []
        m.runner.wait_for(sorted(streams))   # the producers' streams have written the inputs
        m.runner.run_copies(ups)
        m.runner.execute(a["fwd"])
        m.runner.execute(a["bwd"])
        m.runner.run_copies(downs)
        m.runner.sync()
        loss = None if w is None else weighted_loss(w, S[("cost",)][:, :, L.where[st.loss_key].col])
        for s, p in learned.items():   # a learned initial state: ∂ℓ/∂h0 summed over the batch (one row)
            col = L.where[bwd.carry_in[s]].col
            rows = d_h0[s].copy_to_host() if variant else S[("dinit", s)][0, :, col:col + st.states[s]]
            g = grads[p].copy_to_host() + rows.sum(axis=0)
            m.runner.run_copies([("h2d", grads[p].ptr, g.ctypes.data, g.nbytes)])
            m.runner.sync()
    return loss, grads, finals, d_in, d_h0


def device_loss_and_grad(model, params, inputs, targets, h0=None, mask=None):
    """``model.loss_and_grad`` on device arrays: (loss, {param: DeviceArray}, {state: DeviceArray})."""
    st = model.step
    if model.bwd is None or not st.has_loss:
        raise CallError(f"cell {st.name!r} has no loss: there is no gradient to compute")
    T, B, ptr, streams = _arguments(model, params, inputs, targets, h0, with_targets=True)
    w = _weights(model, T, B, mask)
    if not model._one_leaf(T, B):   # a memory schedule: its leaves right to left (device_plan.py)
        from .device_plan import train
        loss, grads, finals, _, _ = train(model, T, B, ptr, streams, w)
    else:
        loss, grads, finals, _, _ = _train(model, T, B, ptr, streams, w)
    return loss, grads, finals


def device_vjp(model, params, inputs, h0=None, d_outputs=None, d_final=None, targets=None, mask=None, wrt=None):
    """``model.vjp`` on device arrays: a :class:`~..vjp.Gradients` whose arrays are DeviceArrays."""
    st = model.step
    with_targets = targets is not None
    T, B, ptr, streams = _arguments(model, params, inputs, targets, h0, with_targets=with_targets)
    if not with_targets and forward_targets(st):
        raise CallError(f"cell {st.name!r}: its forward reads targets ({', '.join(forward_targets(st))}): pass targets")
    d_out = _as_dict("d_outputs", d_outputs, list(st.outputs), st.name)
    _check_names(st.name, "d_outputs", d_out, list(st.outputs), allow_missing=True)
    d_fin = _as_dict("d_final", d_final, list(st.states), st.name)
    _check_names(st.name, "d_final", d_fin, list(st.states), allow_missing=True)
    cot = Cotangents(loss=with_targets, outputs=tuple(o for o in st.outputs if o in d_out),
                     inputs=resolve_wrt(st, wrt), final=True)
    v = model._variant(cot)
    ptr.update({("cot", o): _view(v, d_out[o], f"d_outputs[{o!r}]", (T, B, st.outputs[o]), streams)
                for o in cot.outputs})
    ptr.update({("dfinal", s): _view(v, x, f"d_final[{s!r}]", (B, st.states[s]), streams)
                for s, x in d_fin.items()})
    w = _weights(v, T, B, mask) if with_targets else None
    if not v._one_leaf(T, B):   # a memory schedule: its leaves right to left (device_plan.py)
        from .device_plan import train
        loss, grads, _, d_in, d_h0 = train(v, T, B, ptr, streams, w, cot.inputs)
    else:
        loss, grads, _, d_in, d_h0 = _train(v, T, B, ptr, streams, w, cot.inputs)
    return Gradients(grads, d_in, d_h0, loss)
