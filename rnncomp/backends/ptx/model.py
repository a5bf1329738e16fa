"""``rc.compile(cell, backend="ptx", arch="sm_90")``: the PTX model.

``model.ptx`` (the PTX text) is produced at construction and needs no GPU.
Running needs cuda-python and a CUDA GPU (``runner="cuda"``, the default); with
``runner="host"`` the same kernels, compiled for this CPU, run instead (the host
semantics check: slow, for tests).
"""
from __future__ import annotations

import threading

import numpy as np

from ...autodiff import LOSS_ONLY, backward_step
from ...errors import CallError
from ..checkpoint import planned
from ..validate import add_initial_state_grads, float_dtype, forward_targets, initial_states, weighted_loss
from ...memory import StoreAll, schedule
from . import checkpoint
from .checkpoint import footprint
from .device import any_device, device_forward, device_loss_and_grad, drop_cache
from .emit import emit_module
from .layout import address
from .persistent import T_KEY, Persistent
from .plan import build_plan, grad_key
from .ptxgen import DEFAULT_ARCH, DEFAULT_FEATURES, check_arch, entries, sm_version, to_ptx
from .runtime import CudaRunner, HostRunner
from .staging import staging
from ...initializers import specs as init_specs
from ..base import BackendModel
from .vjp import PtxVjp


class PtxModel(PtxVjp, BackendModel):
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
    step, see :mod:`.persistent`; None, the default: on unless the cell is too wide for one
    kernel's parameters; False: one launch per step), ``persistent_block`` (threads per block
    of the persistent kernel; None: chosen per call from the batch size and the occupancy),
    ``persistent_cluster`` (sm_90+: blocks per sample, a thread-block cluster; None: chosen per
    call, :func:`.persistent.pick_cluster`; 1: none), ``memory`` (``"all"``, ``rc.Every``,
    ``rc.Binomial``, ``rc.Budget``: the device arena holds one leaf of the plan, see
    :mod:`.checkpoint`).

    A call is one replay: the caller's arrays are copied into a pinned staging buffer
    (:mod:`.staging`), then uploads, kernels and downloads run as one sequence (one CUDA
    graph), then the results are copied out of the staging buffer.  Arrays that live on the
    GPU (``__cuda_array_interface__``) are copied device to device instead, and the results
    come back on the device (:mod:`.device`).
    """

    backend = "ptx"

    def __init__(self, cell, dtype="float64", *, arch=DEFAULT_ARCH, features=DEFAULT_FEATURES,
                 runner="cuda", device=0, block=256, graphs=True, hoist=True, isolate=True, opt=3,
                 tiled=True, fuse=True, stack=True, persistent=None, persistent_block=None,
                 persistent_cluster=None, memory="all", _cot=LOSS_ONLY):
        # what a VJP variant (the same cell, other cotangents: ptx/vjp.py) is compiled with
        self._cell, self._cot, self._variants = cell, _cot, {}
        self._options = dict(arch=arch, features=features, runner=runner, device=device, block=block,
                             graphs=graphs, hoist=hoist, isolate=isolate, opt=opt, tiled=tiled, fuse=fuse,
                             stack=stack, persistent=persistent, persistent_block=persistent_block,
                             persistent_cluster=persistent_cluster)
        self.memory = memory
        self.dtype = float_dtype(dtype)
        if runner not in ("cuda", "host"):
            raise ValueError(f"runner must be 'cuda' or 'host', got {runner!r}")
        self.arch, self.features = check_arch(arch), features
        self.runner_kind, self.device, self.block, self.graphs = runner, device, block, graphs
        self.step = st = cell.step
        self._param_specs_init = init_specs(cell)
        self.cell_name = st.name
        variant = _cot != LOSS_ONLY  # a VJP variant always has a backward (δh[0], ∂θ)
        self.bwd = backward_step(st, _cot) if st.has_loss or variant else None
        self.stack = bool(stack)
        if persistent_block is not None and (not isinstance(persistent_block, int) or persistent_block % 32
                                             or not 32 <= persistent_block <= 1024):
            raise ValueError(f"persistent_block must be a multiple of 32 from 32 to 1024, got {persistent_block!r}")
        sm = sm_version(self.arch)
        if persistent_cluster is not None and (persistent_cluster not in range(1, 9) or
                                               (persistent_cluster > 1 and sm < 90)):
            raise ValueError(f"persistent_cluster must be 1 to 8 (above 1: sm_90 or newer; arch is "
                             f"{self.arch}), got {persistent_cluster!r}")
        self.persistent_block, self.persistent_cluster = persistent_block, persistent_cluster
        clusters = sm >= 90 and persistent_cluster != 1
        self.plan = build_plan(st, self.bwd, self.dtype, hoist=hoist, fuse=fuse, tiled=tiled, stack=self.stack,
                               persistent=persistent, clusters=clusters)
        self.persistent = self.plan.fwd_loop is not None
        self.module = emit_module(self.plan.kernels, "nvptx", name=f"rnncomp_{st.name}")
        self.ir = str(self.module)
        self.ptx = to_ptx(self.ir, arch, features, opt=opt, isolate=isolate, where=f"cell {st.name!r}: ")
        self.kernel_names = entries(self.ptx)
        self._runner = None
        self._arena = self._spare = None
        # one arena and staging buffer per model: a call holds them from upload to results
        self._lock = threading.RLock()

    def __repr__(self):
        return f"PtxModel({self.cell_name!r}, {self.dtype}, arch={self.arch!r}; {self.plan.summary()})"

    # ------------------------------------------------------------------ memory schedules
    @property
    def memory(self):
        """The activation-memory schedule (``memory=``); assigning one takes effect at the
        next call, with no recompile (also in the VJP variants made so far)."""
        return self._memory

    @memory.setter
    def memory(self, value):
        self._memory, self._plans = schedule(value), {}
        self._options["memory"] = self._memory
        for v in self._variants.values():
            v.memory = self._memory
        if getattr(self, "_runner", None) is not None:  # arenas sized for the old plan: made again
            with self._lock:
                self._free_arena()

    def memory_plan(self, T: int, B: int):
        """The checkpointing plan (``rnncomp.schedules.Plan``) of ``memory=`` for a call of (T, B)."""
        plan = self._plans.get((T, B))
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[(T, B)] = planned(self.step, self._memory, T, footprint(self, B))
        return plan

    def activation_bytes(self, T: int, B: int) -> int:
        """Bytes of the arena's per-step buffers a training call of (T, B) holds under ``memory=``
        (the longest leaf's steps and the checkpoints held at once, :func:`.checkpoint.footprint`)."""
        return self.memory_plan(T, B).memory(footprint(self, B))

    def _one_leaf(self, T: int, B: int) -> bool:
        return self.memory_plan(T, B).max_leaf >= T

    # ------------------------------------------------------------------ runner and memory
    @property
    def runner(self):
        if self._runner is None:
            ks = self.plan.kernels.kernels
            if self.runner_kind == "host":
                self._runner = HostRunner(self.plan.kernels)
            else:
                loops = {k: (v.body.width, v.body.clusters) for k, v in ks.items()
                         if isinstance(v.body, Persistent)}
                self._runner = CudaRunner(self.ptx, [k for k, v in ks.items() if v.entry], self.device,
                                          self.block, self.graphs,
                                          blocks={k: v.block for k, v in ks.items() if v.block},
                                          loops=loops, loop_block=self.persistent_block,
                                          loop_cluster=self.persistent_cluster)
        return self._runner

    def _get_arena(self, T, B):
        """The arena of a (T, B) call.  Under a checkpointing plan the model keeps a second one,
        of the last other length (a plan's leaves and advances have at most two: the longest
        leaf and what is left), so that its calls do not make a new arena and graph each time
        the length changes; under store-all a new length frees the old arena."""
        a, spare = self._arena, self._spare
        if a is not None and a["TB"] == (T, B):
            return a
        if spare is not None and spare["TB"] == (T, B):
            self._arena, self._spare = spare, a
            return spare
        self._free_arena(self._spare_kept())
        r, isz = self.runner, self.dtype.itemsize
        offsets, size = self.plan.layout.offsets(T, B, isz)
        a = {"TB": (T, B), "base": r.alloc(size), "offsets": offsets, "size": size}
        try:
            self._arena = self._fill_arena(a, T, B)
        except BaseException:
            self._arena = a
            self._free_arena()
            raise
        return self._arena

    def _spare_kept(self) -> bool:
        return not isinstance(self._memory, StoreAll)

    def _free_arena(self, keep_spare=False):
        """Give back the arena's device memory, pinned staging buffer and CUDA graphs, and the
        spare arena's; ``keep_spare``: the current arena becomes the spare instead."""
        a, old_spare = self._arena, self._spare
        self._arena = self._spare = None
        if keep_spare:
            self._spare, a = a, None
        for x in (a, old_spare):
            if x is not None:
                self._release(x)

    def _release(self, a):
        r = self.runner
        for k in ("fwd", "bwd", "train", "run"):
            if a.get(k) is not None:
                r.release(a[k])
        if a.get("stage_ptr") is not None:
            r.free_host(a["stage_ptr"])
        r.free(a["base"])

    def close(self):
        """Free the device and pinned host memory this model holds (a later call allocates
        again).  Also on ``with`` exit and when the model is garbage-collected."""
        for v in getattr(self, "_variants", {}).values():  # VJP variants (ptx/vjp.py)
            v.close()
        if self._runner is not None:
            with self._lock:
                self._free_arena()
            drop_cache(self._runner)   # freed DeviceArrays kept for reuse (device.py)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver may be gone
            pass

    def _fill_arena(self, a, T, B):
        r, L, P = self.runner, self.plan.layout, self.plan
        isz, base, offsets = self.dtype.itemsize, a["base"], a["offsets"]
        r.zero(base, a["size"])  # rows T of the carried adjoints stay zero for good
        ks = P.kernels.kernels

        def resolve(launch, t, rows):
            R = rows * B if launch.rows == "TB" else B
            ptrs = [T if k == T_KEY else address(L, k, t, base, offsets, B, isz) for k in launch.args]
            return (launch.kernel, ks[launch.kernel].threads(R), R, ptrs)

        fwd = [resolve(x, 0, 1) for x in P.fwd_prologue]  # stacked weights, once per call
        fwd += [resolve(x, 0, T) for x in P.fwd_static]
        if P.fwd_loop is not None:
            fwd.append(resolve(P.fwd_loop, 0, 1))
        else:
            fwd += [resolve(x, t, 1) for t in range(T) for x in P.fwd_step]
        bwd = []
        if self.bwd is not None:
            bwd = [resolve(x, 0, 1) for x in P.bwd_prologue]
            if P.bwd_loop is not None:
                bwd.append(resolve(P.bwd_loop, 0, 1))
            else:
                bwd += [resolve(x, t, 1) for t in reversed(range(T)) for x in P.bwd_step]
            bwd += [resolve(x, 0, T) for x in P.bwd_after + P.bwd_grads]
        a["launches"] = (len(fwd), len(bwd))
        addr = lambda key, t=0: address(L, key, t, base, offsets, B, isz)  # noqa: E731
        stage, run_ops, train_ops = staging(self, a, addr, T, B)
        a["stage_ptr"], a["stage"] = stage
        a["fwd"] = r.prepare(fwd)  # the kernels alone (benchmarks/gpu_check.py times them)
        a["bwd"] = r.prepare(bwd) if self.bwd else None
        a["run"] = r.prepare(run_ops[0] + fwd + run_ops[1])
        a["train"] = r.prepare(train_ops[0] + fwd + bwd + train_ops[1]) if self.bwd else None
        return a

    def _upload_args(self, a, call, with_targets):
        S, st = a["stage"], self.step
        for p in self.plan.param_slot:
            S[("param", p)].reshape(-1)[...] = np.asarray(call.params[p]).reshape(-1)
        for s, v in initial_states(st, call, self.dtype).items():
            S[("state", s)][...] = v
        for name in self.plan.io_slot:
            if name in st.inputs:
                S[("io", name)][...] = call.inputs[name]
            elif with_targets or name in forward_targets(st):
                S[("io", name)][...] = call.targets[name]

    def _finals(self, a):
        return {s: a["stage"][("final", s)].copy() for s in self.plan.state_slot}

    # ------------------------------------------------------------------ the interface
    def forward(self, params, inputs, h0=None, *, targets=None, keep=False, mask=None, wrt=None,
                outputs=None, check_finite=True, lengths=None):
        if any_device(params, inputs, h0, targets):   # arrays on the GPU in and out (device.py)
            extra = [k for k, v in (("targets", targets), ("keep", keep), ("mask", mask), ("wrt", wrt),
                                    ("outputs", outputs), ("lengths", lengths)) if v is not None and v is not False]
            if extra:
                raise CallError(f"cell {self.step.name!r}: a device-resident forward takes params, inputs and "
                                f"h0 only, not {', '.join(extra)}: use host arrays for those")
            return device_forward(self, params, inputs, h0)
        return super().forward(params, inputs, h0, targets=targets, keep=keep, mask=mask, wrt=wrt,
                               outputs=outputs, check_finite=check_finite, lengths=lengths)

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, *, check_finite=True,
                      lengths=None):
        if lengths is not None and any_device(params, inputs, targets, h0):  # as forward's and vjp's
            raise CallError(f"cell {self.step.name!r}: a device-resident loss_and_grad takes no lengths=: "
                            "use host arrays for a padded batch, or mask= (its loss over the real steps)")
        return super().loss_and_grad(params, inputs, targets, h0, mask, check_finite=check_finite, lengths=lengths)

    def _loss_and_grad_fast(self, params, inputs, targets, h0, mask, check_finite):
        if any_device(params, inputs, targets, h0):   # device.py; a host mask is taken
            return device_loss_and_grad(self, params, inputs, targets, h0, mask)
        return None

    def _forward_call(self, call):
        return self._forward(call)

    def _forward(self, call):
        if not self._one_leaf(call.T, call.B):  # a forward under a schedule: a leaf's steps a call
            return checkpoint.forward(self, call, self.memory_plan(call.T, call.B).max_leaf)
        with self._lock:  # one arena per model: a call owns it from upload to copied results
            return self._forward_locked(call)

    def _forward_locked(self, call):
        st = self.step
        a = self._get_arena(call.T, call.B)
        self._upload_args(a, call, with_targets=False)
        self.runner.execute(a["run"])
        self.runner.sync()
        outs = {}
        for o, n in st.outputs.items():
            col = self.plan.layout.where[(o, "t")].col
            outs[o] = a["stage"][("out", o)][:, :, col:col + n].copy()
        return outs, self._finals(a)

    def _loss_and_grad_call(self, call, w):
        loss, grads, final, _, _ = self._train(call, w)
        return loss, grads, final

    def _train_outputs(self, call, w):
        """(loss, final states, outputs) of a training sequence (a VJP variant's: it downloads
        its outputs), the outputs of every step also under a schedule (leaf by leaf)."""
        if not self._one_leaf(call.T, call.B):
            outs = {}
            loss, _, final, _, _ = checkpoint.train(self, call, w, None, None, self.memory_plan(call.T, call.B),
                                                    outputs=outs)
            return loss, final, outs
        with self._lock:  # the outputs are read from the arena's staging buffer
            loss, _, final, _, _ = self._train_locked(call, w, None, None)
            return loss, final, self._downloaded_outputs()

    def _train(self, call, w, d_out=None, d_fin=None):
        """One forward + backward: (loss or None, grads, final states, {input: δx}, {state: δh[0]})."""
        if not self._one_leaf(call.T, call.B):
            return checkpoint.train(self, call, w, d_out, d_fin, self.memory_plan(call.T, call.B))
        with self._lock:
            return self._train_locked(call, w, d_out, d_fin)

    def _train_locked(self, call, w, d_out, d_fin):
        st, P = self.step, self.plan
        a = self._get_arena(call.T, call.B)
        S, L = a["stage"], P.layout
        self._upload_args(a, call, with_targets=w is not None)
        S[("w",)][...] = 0 if w is None else w
        for o in self.bwd.out_seeds:
            S[("cot", o)][...] = (d_out or {}).get(o, 0)
        cols = lambda key, n: slice(L.where[key].col, L.where[key].col + n)  # noqa: E731
        for s, n in st.states.items():
            if ("dfinal", s) in S:  # a VJP variant: δ⁺h[T], the final state's cotangent
                S[("dfinal", s)][...] = 0
                S[("dfinal", s)][0, :, cols(self.bwd.carry_in[s], n)] = (d_fin or {}).get(s, 0)
        self.runner.execute(a["train"])
        self.runner.sync()
        loss = None
        if ("cost",) in S:
            cost = S[("cost",)][:, :, L.where[st.loss_key].col]
            loss = weighted_loss(w, cost)
        grads = {}
        for p, k in P.grad_slot.items():
            shape = st.params[p]
            shape = shape if isinstance(shape, tuple) else (shape,)
            at = L.where[grad_key(p)].col
            grads[p] = S[("grad", k)][at:at + int(np.prod(shape))].reshape(shape).copy()
        d_h0 = {s: S[("dinit", s)][0, :, cols(self.bwd.carry_in[s], n)].copy()  # δh[-1]: row 0
                for s, n in st.states.items() if ("dinit", s) in S}
        add_initial_state_grads(st, grads, d_h0, call.h0)
        d_in = {x: S[("dx", x)][:, :, cols(k, st.inputs[x])].copy()
                for x, k in self.bwd.input_adjoints.items() if k is not None}
        return loss, grads, self._finals(a), d_in, d_h0

    def _downloaded_outputs(self):
        S, L = self._arena["stage"], self.plan.layout
        return {o: S[("out", o)][:, :, L.where[(o, "t")].col:L.where[(o, "t")].col + n].copy()
                for o, n in self.step.outputs.items()}
