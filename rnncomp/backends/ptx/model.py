"""``rc.compile(cell, backend="ptx", arch="sm_90")``: the PTX model.

``model.ptx`` (the PTX text) is produced at construction and needs no GPU.
Running needs cuda-python and a CUDA GPU (``runner="cuda"``, the default); with
``runner="host"`` the same kernels, compiled for this CPU, run instead (the host
semantics check: slow, for tests).
"""
from __future__ import annotations

import numpy as np

from ...autodiff import backward_step
from ...errors import CallError
from ..validate import check_call, initial_states, step_weights
from .codegen import emit_module
from .persistent import T_KEY
from .plan import build_plan
from .ptxgen import DEFAULT_ARCH, DEFAULT_FEATURES, check_arch, entries, to_ptx
from .runtime import CudaRunner, HostRunner


class PtxModel:
    """Same interface as :class:`~rnncomp.backends.numpy.NumpyModel`.

    Options: ``arch`` (``"sm_90"``), ``features`` (PTX ISA, ``"+ptx85"``), ``runner``
    (``"cuda"`` or ``"host"``), ``device`` (CUDA ordinal), ``block`` (threads per block),
    ``graphs`` (replay launches as a CUDA graph), ``hoist`` (state-free products over T·B
    rows before the loop), ``isolate`` (generate PTX in a child process, so an LLVM abort
    cannot kill this one), ``opt`` (LLVM optimisation level), ``tiled`` (shared-memory tiled
    products; False: one thread per output element), ``fuse`` (one kernel per run of
    element-wise nodes of one size; False: one kernel per node), ``stack`` (pass "stack":
    products sharing an operand, and sums of products, as one product with a stacked weight;
    the gradients of such a group as one product; False: one product per term),
    ``persistent`` (one launch per pass runs every step, a block per sample: no launch per
    step; see :mod:`.persistent`; ``block`` threads per block).
    """

    backend = "ptx"

    def __init__(self, cell, dtype="float64", *, arch=DEFAULT_ARCH, features=DEFAULT_FEATURES,
                 runner="cuda", device=0, block=256, graphs=True, hoist=True, isolate=True, opt=3,
                 tiled=True, fuse=True, stack=True, persistent=False):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if runner not in ("cuda", "host"):
            raise ValueError(f"runner must be 'cuda' or 'host', got {runner!r}")
        self.arch, self.features = check_arch(arch), features
        self.runner_kind, self.device, self.block, self.graphs = runner, device, block, graphs
        self.step = st = cell.step
        self.cell_name = st.name
        self.bwd = backward_step(st) if st.has_loss else None
        self.stack = bool(stack)
        self.persistent = bool(persistent)
        self.plan = build_plan(st, self.bwd, self.dtype, hoist=hoist, fuse=fuse, tiled=tiled, stack=self.stack,
                               persistent=self.persistent, threads=block)
        self.module = emit_module(self.plan.kernels, "nvptx", name=f"rnncomp_{st.name}")
        self.ir = str(self.module)
        self.ptx = to_ptx(self.ir, arch, features, opt=opt, isolate=isolate, where=f"cell {st.name!r}: ")
        self.kernel_names = entries(self.ptx)
        self._runner = None
        self._arena = None

    def __repr__(self):
        return f"PtxModel({self.cell_name!r}, {self.dtype}, arch={self.arch!r}; {self.plan.summary()})"

    # ------------------------------------------------------------------ runner and memory
    @property
    def runner(self):
        if self._runner is None:
            if self.runner_kind == "host":
                self._runner = HostRunner(self.plan.kernels)
            else:
                ks = self.plan.kernels.kernels
                self._runner = CudaRunner(self.ptx, [k for k, v in ks.items() if v.entry], self.device,
                                          self.block, self.graphs,
                                          blocks={k: v.block for k, v in ks.items() if v.block})
        return self._runner

    def _get_arena(self, T, B):
        a = self._arena
        if a is not None and a["TB"] == (T, B):
            return a
        r, L, P = self.runner, self.plan.layout, self.plan
        if a is not None:
            r.release(a["fwd"])
            r.release(a["bwd"])
            r.free(a["base"])
            self._arena = None
        isz = self.dtype.itemsize
        offsets, size = L.offsets(T, B, isz)
        base = r.alloc(size)
        r.zero(base, size)  # rows T of the carried adjoints stay zero for good
        ks = P.kernels.kernels

        def resolve(launch, t, rows):
            R = rows * B if launch.rows == "TB" else B
            ptrs = [T if k == T_KEY else L.address(k, t, base, offsets, B, isz) for k in launch.args]
            return (launch.kernel, ks[launch.kernel].threads(R), R, ptrs)

        fwd = [resolve(x, 0, 1) for x in P.fwd_prologue]  # stacked weights, once per call
        fwd += [resolve(x, 0, T) for x in P.fwd_static]
        if P.fwd_loop is not None:
            fwd.append(resolve(P.fwd_loop, 0, 1))
        else:
            fwd += [resolve(x, t, 1) for t in range(T) for x in P.fwd_step]
        bwd = [resolve(x, 0, 1) for x in P.bwd_prologue]
        if P.bwd_loop is not None:
            bwd.append(resolve(P.bwd_loop, 0, 1))
        else:
            bwd += [resolve(x, t, 1) for t in reversed(range(T)) for x in P.bwd_step]
        bwd += [resolve(x, 0, T) for x in P.bwd_grads]
        self._arena = a = {"TB": (T, B), "base": base, "offsets": offsets, "size": size,
                           "fwd": r.prepare(fwd), "bwd": r.prepare(bwd) if self.bwd else None,
                           "launches": (len(fwd), len(bwd))}
        return a

    def _slot_ptr(self, a, slot):
        return a["base"] + a["offsets"][slot]

    def _key_ptr(self, a, key, t=0):
        B = a["TB"][1]
        return self.plan.layout.address(key, t, a["base"], a["offsets"], B, self.dtype.itemsize)

    def _read(self, a, key, t, rows, n):
        """``(rows, B, n)`` values of ``key`` from step ``t`` on (a column range of wider rows
        when the value is a member of a stacked slot)."""
        L, B = self.plan.layout, a["TB"][1]
        ld, col = L.ld(key), L.where[key][2]
        if ld == n:
            return self.runner.download(self._key_ptr(a, key, t), (rows, B, n), self.dtype)
        ptr = self._key_ptr(a, key, t) - col * self.dtype.itemsize
        return self.runner.download(ptr, (rows, B, ld), self.dtype)[:, :, col:col + n].copy()

    def _load_inputs(self, a, call):
        r, st, P, dt = self.runner, self.step, self.plan, self.dtype
        for p, k in P.param_slot.items():
            r.upload(self._slot_ptr(a, k), call.params[p])
        init = initial_states(st, call, dt)
        for s, k in P.state_slot.items():
            r.upload(self._slot_ptr(a, k), init[s])
        for name, k in P.io_slot.items():
            arr = call.inputs.get(name, call.targets.get(name))
            if arr is None:  # forward without targets: the loss nodes read zeros
                arr = np.zeros((call.T, call.B, (st.inputs | st.targets)[name]), dtype=dt)
            r.upload(self._slot_ptr(a, k), arr)

    def _final_states(self, a, call):
        out = {}
        for s, k in self.plan.state_slot.items():
            n = self.step.states[s]
            ptr = self._slot_ptr(a, k) + call.T * call.B * n * self.dtype.itemsize
            out[s] = self.runner.download(ptr, (call.B, n), self.dtype)
        return out

    # ------------------------------------------------------------------ the interface
    def forward(self, params, inputs, h0=None, *, check_finite=True):
        """``(outputs {name: (T, B, n)}, final states {name: (B, n)})``."""
        st = self.step
        call = check_call(st, self.dtype, params, inputs, None, h0, check_finite=check_finite)
        a = self._get_arena(call.T, call.B)
        self._load_inputs(a, call)
        self.runner.execute(a["fwd"])
        outs = {}
        for o, n in st.outputs.items():
            outs[o] = self._read(a, (o, "t"), 0, call.T, n)
        return outs, self._final_states(a, call)

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, *, check_finite=True):
        """Loss (masked mean of the per-step costs), gradients of every parameter, final states."""
        st, dt, P = self.step, self.dtype, self.plan
        if self.bwd is None:
            raise CallError(f"cell {st.name!r} has no loss (declare one with cell.loss)")
        call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True,
                          check_finite=check_finite)
        T, B = call.T, call.B
        a = self._get_arena(T, B)
        r = self.runner
        self._load_inputs(a, call)
        w = np.ascontiguousarray(step_weights(call, dt))
        r.upload(self._slot_ptr(a, P.weight_slot), w)
        for k in sorted(set(P.grad_slot.values())):  # a gradient group shares one slot
            r.zero(self._slot_ptr(a, k), P.layout.slots[k].units * dt.itemsize)
        r.execute(a["fwd"])
        r.execute(a["bwd"])
        cost = self._read(a, st.loss_key, 0, T, 1)[:, :, 0]
        loss = float((w * cost).sum(dtype=np.float64))
        grads = {}
        for p in P.grad_slot:
            shape = st.params[p]
            grads[p] = r.download(self._key_ptr(a, ("__grad", p)), shape if isinstance(shape, tuple) else (shape,),
                                  dt)
        for s, p in st.state_init.items():
            if p is not None and s not in call.h0:
                d = self._read(a, self.bwd.carry_in[s], -1, 1, st.states[s])[0]  # δh[-1]: row 0
                grads[p] += d.sum(axis=0)
        return loss, grads, self._final_states(a, call)
