"""The post-gradient half of a training step as one native call over the flat vectors.

Owns the generated update kernels: finite check of the gradient, clipping by value,
the global norm (accumulated in float64 whatever the dtype), clipping by norm, weight
decay (L2, or decoupled for AdamW) and the optimizer update with its state vectors.
One kernel per (optimizer kind, static options, dtype); the learning rate, the
hyper-parameters and the step's bias corrections are runtime scalars, so a schedule
or a new ``lr`` never recompiles.

    i64 update(i64 n, T* flat, T* grad, T* state0, T* state1, f64* scalars, f64* norm_out)
        pass 1 (reads grad):  any non-finite g?  Σ clip(g)² in float64      (vectorised)
        non-finite:           return the index of the first one; nothing written
        pass 2 (one sweep):   g = clip(g)·scale; decay; state, flat updated in place
        return -1

Pass 2 repeats :mod:`.optim`'s NumPy operations in the same order with the same
roundings (scalars rounded to T as NumPy rounds a Python float against a T array, no
fast-math flags), so without clipping by norm the result equals the NumPy update bit
for bit; the norm is a reduction in another order (``reassoc`` on its sum only), so
with clipping by norm the two agree to rounding.

    >>> import numpy as np
    >>> from rnncomp.train.optim import SGD
    >>> w = np.array([1.0, -2.0]); opt = SGD(lr=0.5); opt.init(w)
    >>> up = NativeUpdate("float64", cache=None)
    >>> up(opt, w, np.array([1.0, 1.0]), step=1), w
    (-1, array([ 0.5, -2.5]))
    >>> up(opt, w, np.array([1.0, np.inf]), step=2), w     # index of the bad element; w untouched
    (1, array([ 0.5, -2.5]))
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ..backends.llvm.builder import I64, alloca_once, float_type, for_range, gep
from ..backends.llvm.jit import HostTarget, compile_module
from ..backends.validate import float_dtype
from .optim import TINY_SUMSQ, SGD, Adagrad, Adam, Optimizer, RMSprop

F64 = ir.DoubleType()
I8 = ir.IntType(8)

# runtime scalars, in the order of the kernel's f64* argument
SCALARS = ("lr", "wd", "a", "one_minus_a", "b2", "one_minus_b2", "bc1", "bc2", "eps",
           "clip_value", "clip_norm")
_SLOT = {s: i for i, s in enumerate(SCALARS)}


@dataclass(frozen=True)
class UpdateSpec:
    """What a kernel is specialised on; everything else is a runtime scalar."""

    kind: str             # "sgd" | "adam" | "rmsprop" | "adagrad"
    dtype: str            # "float32" | "float64"
    decay: str = "none"   # "none" | "l2" (added to the gradient) | "decoupled" (AdamW)
    momentum: bool = False
    nesterov: bool = False
    clip_value: bool = False
    clip_norm: bool = False

    @property
    def states(self) -> tuple:
        """Names of the optimizer's state vectors, in the kernel's argument order."""
        return {"sgd": ("v",) if self.momentum else (), "adam": ("m", "v"),
                "rmsprop": ("s",), "adagrad": ("s",)}[self.kind]


# ---------------------------------------------------------------------------- the optimizers
# Each rule: (emitter, state) -> (new flat value, new state values), element by element.
# They mirror rnncomp.train.optim operation by operation (same order, same roundings).

def _sgd(e, p, g, st, spec):
    if not spec.momentum:
        return e.sub(p, e.mul(e.s("lr"), g)), {}
    v = e.add(e.mul(st["v"], e.s("a")), g)                  # v *= mu; v += g
    g = e.add(g, e.mul(e.s("a"), v)) if spec.nesterov else v
    return e.sub(p, e.mul(e.s("lr"), g)), {"v": v}


def _adam(e, p, g, st, spec):
    m = e.add(e.mul(st["m"], e.s("a")), e.mul(e.s("one_minus_a"), g))                 # m = b1 m + (1-b1) g
    v = e.add(e.mul(st["v"], e.s("b2")), e.mul(e.mul(e.s("one_minus_b2"), g), g))     # v = b2 v + (1-b2) g g
    mhat, vhat = e.div(m, e.s("bc1")), e.div(v, e.s("bc2"))
    if spec.decay == "decoupled":
        p = e.sub(p, e.mul(e.s("wd"), p))                   # the "wd" slot holds lr * wd here
    return e.sub(p, e.div(e.mul(e.s("lr"), mhat), e.add(e.sqrt(vhat), e.s("eps")))), {"m": m, "v": v}


def _rmsprop(e, p, g, st, spec):
    s = e.add(e.mul(st["s"], e.s("a")), e.mul(e.mul(e.s("one_minus_a"), g), g))
    return e.sub(p, e.div(e.mul(e.s("lr"), g), e.add(e.sqrt(s), e.s("eps")))), {"s": s}


def _adagrad(e, p, g, st, spec):
    s = e.add(st["s"], e.mul(g, g))
    return e.sub(p, e.div(e.mul(e.s("lr"), g), e.add(e.sqrt(s), e.s("eps")))), {"s": s}


RULES = {"sgd": _sgd, "adam": _adam, "rmsprop": _rmsprop, "adagrad": _adagrad}


def spec_for(optimizer: Optimizer, dtype, clip_value=None, clip_norm=None) -> UpdateSpec | None:
    """The kernel specialisation for ``optimizer``, or None if it is not one of the built-in
    update rules (a user subclass overriding ``step`` or ``_decayed``)."""
    for base, kind in ((SGD, "sgd"), (Adam, "adam"), (RMSprop, "rmsprop"), (Adagrad, "adagrad")):
        if isinstance(optimizer, base):
            break
    else:
        return None
    cls = type(optimizer)
    if cls.step is not base.step or cls._decayed is not Optimizer._decayed:
        return None
    decoupled = kind == "adam" and optimizer.decoupled
    decay = ("decoupled" if decoupled else "l2") if optimizer.weight_decay else "none"
    momentum = kind == "sgd" and bool(optimizer.momentum)
    return UpdateSpec(kind, np.dtype(dtype).name, decay, momentum,
                      momentum and optimizer.nesterov, clip_value is not None, clip_norm is not None)


def runtime_scalars(optimizer, spec: UpdateSpec, step: int, clip_value, clip_norm, out=None):
    """The f64 scalars of one call, computed with the same Python-float expressions as
    :mod:`.optim` (so they round to T the same way)."""
    o = optimizer
    sc = np.zeros(len(SCALARS)) if out is None else out
    lr = o.rate(step)
    sc[_SLOT["lr"]] = lr
    sc[_SLOT["wd"]] = lr * o.weight_decay if spec.decay == "decoupled" else o.weight_decay
    if spec.kind == "sgd":
        sc[_SLOT["a"]] = o.momentum
    elif spec.kind == "adam":
        sc[_SLOT["a"]], sc[_SLOT["one_minus_a"]] = o.b1, 1 - o.b1
        sc[_SLOT["b2"]], sc[_SLOT["one_minus_b2"]] = o.b2, 1 - o.b2
        sc[_SLOT["bc1"]], sc[_SLOT["bc2"]] = 1 - o.b1 ** step, 1 - o.b2 ** step
    elif spec.kind == "rmsprop":
        sc[_SLOT["a"]], sc[_SLOT["one_minus_a"]] = o.alpha, 1 - o.alpha
    if spec.kind != "sgd":
        sc[_SLOT["eps"]] = o.eps
    sc[_SLOT["clip_value"]] = clip_value if clip_value is not None else 0.0
    sc[_SLOT["clip_norm"]] = clip_norm if clip_norm is not None else 0.0
    return sc


# ---------------------------------------------------------------------------- code generation
class _Emitter:
    """Plain IEEE arithmetic (no fast-math flags) on T values; scalars loaded before the loops."""

    def __init__(self, b, ty, scalars, sqrt):
        self.b, self.ty, self.scalars, self._sqrt = b, ty, scalars, sqrt

    def s(self, name):
        return self.scalars[name]

    def add(self, x, y):
        return self.b.fadd(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y)

    def div(self, x, y):
        return self.b.fdiv(x, y)

    def sqrt(self, x):
        return self.b.call(self._sqrt, [x])


def _clip(b, g, lo, hi):
    """np.clip(g, lo, hi) for finite g: min(max(g, lo), hi)."""
    g = b.select(b.fcmp_ordered("<", g, lo), lo, g)
    return b.select(b.fcmp_ordered(">", g, hi), hi, g)


def build_module(spec: UpdateSpec) -> ir.Module:
    """The kernel ``update`` of ``spec`` (see the module docstring for its signature)."""
    ty = float_type(spec.dtype)
    ptr = ty.as_pointer()
    mod = ir.Module(name=f"update_{spec.kind}_{spec.dtype}")
    fn = ir.Function(mod, ir.FunctionType(I64, [I64, ptr, ptr, ptr, ptr, F64.as_pointer(), F64.as_pointer()]),
                     "update")
    n, flat, grad, s0, s1, scal, norm_out = fn.args
    for a in fn.args[1:]:
        a.add_attribute("noalias")
    fabs = mod.declare_intrinsic("llvm.fabs", [ty])
    sqrt_t = mod.declare_intrinsic("llvm.sqrt", [ty])
    sqrt_d = mod.declare_intrinsic("llvm.sqrt", [F64])
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def load_scalar(name):
        v = b.load(gep(b, scal, _SLOT[name]), name=name)
        return v if ty == F64 else b.fptrunc(v, ty, name=f"{name}.t")  # rounds like NumPy's cast

    scalars = {name: load_scalar(name) for name in SCALARS}
    lo = b.fneg(scalars["clip_value"]) if spec.clip_value else None
    inf = ir.Constant(ty, float("inf"))

    # pass 1: non-finite flag (an or-reduction) and Σ clip(g)² in float64
    bad_acc, sq_acc = alloca_once(b, I8, "bad"), alloca_once(b, F64, "sumsq")
    b.store(I8(0), bad_acc)
    b.store(F64(0.0), sq_acc)
    with for_range(b, n, name="i") as i:
        g = b.load(gep(b, grad, i))
        nonfinite = b.fcmp_unordered("==", b.call(fabs, [g]), inf)  # |g| == inf or NaN
        b.store(b.or_(b.load(bad_acc), b.zext(nonfinite, I8)), bad_acc)
        if spec.clip_value:
            g = _clip(b, g, lo, scalars["clip_value"])
        d = g if ty == F64 else b.fpext(g, F64)
        # reassoc: the vectoriser may sum in any order (the only result changed beyond
        # exact arithmetic is this sum's rounding)
        b.store(b.fadd(b.load(sq_acc), b.fmul(d, d), flags=("reassoc", "contract")), sq_acc)
    with b.if_then(b.icmp_unsigned("!=", b.load(bad_acc), I8(0)), likely=False):
        with for_range(b, n, name="j") as j:  # cold: find the first non-finite element
            g = b.load(gep(b, grad, j))
            with b.if_then(b.fcmp_unordered("==", b.call(fabs, [g]), inf)):
                b.ret(j)
        b.ret(n)  # unreachable: the flag says there is one
    norm = _scaled_norm(b, mod, n, grad, sq_acc, spec, lo, scalars, ty)
    b.store(norm, norm_out)
    scale = None
    if spec.clip_norm:
        cn = b.load(gep(b, scal, _SLOT["clip_norm"]))
        ratio = b.fdiv(cn, norm)
        ratio = ratio if ty == F64 else b.fptrunc(ratio, ty)
        scale = b.select(b.fcmp_ordered(">", norm, cn), ratio, ir.Constant(ty, 1.0), name="scale")

    # pass 2: clip, decay, update (the NumPy optimizer's operations in its order)
    e = _Emitter(b, ty, scalars, sqrt_t)
    state_ptrs = dict(zip(spec.states, (s0, s1)))
    with for_range(b, n, name="k") as k:
        g = b.load(gep(b, grad, k))
        if spec.clip_value:
            g = _clip(b, g, lo, scalars["clip_value"])
        if scale is not None:
            g = b.fmul(g, scale)
        p = b.load(gep(b, flat, k))
        st = {name: b.load(gep(b, q, k)) for name, q in state_ptrs.items()}
        if spec.decay == "l2":
            g = e.add(g, e.mul(scalars["wd"], p))
        p, st = RULES[spec.kind](e, p, g, st, spec)
        b.store(p, gep(b, flat, k))
        for name, v in st.items():
            b.store(v, gep(b, state_ptrs[name], k))
    b.ret(I64(-1))
    return mod


def _scaled_norm(b, mod, n, grad, sq_acc, spec, lo, scalars, ty):
    """sqrt(Σ g²) from pass 1's sum; where that sum overflowed (finite g above ~1e154) or may
    have lost terms to underflow (below TINY_SUMSQ), again over g/p with p the power of two
    at the largest |g| (exact scaling): p·sqrt(Σ (g/p)²), as :func:`.optim.global_norm`."""
    sqrt_d = mod.declare_intrinsic("llvm.sqrt", [F64])
    fabs_d = mod.declare_intrinsic("llvm.fabs", [F64])
    sumsq = b.load(sq_acc)
    norm_acc, big_acc = alloca_once(b, F64, "norm"), alloca_once(b, F64, "maxabs")
    b.store(b.call(sqrt_d, [sumsq]), norm_acc)
    plain = b.and_(b.fcmp_ordered(">=", sumsq, F64(TINY_SUMSQ)), b.fcmp_ordered("<", sumsq, F64(float("inf"))))
    with b.if_then(b.not_(plain), likely=False):
        def clipped(i):
            g = b.load(gep(b, grad, i))
            g = _clip(b, g, lo, scalars["clip_value"]) if spec.clip_value else g
            return g if ty == F64 else b.fpext(g, F64)
        b.store(F64(0.0), big_acc)
        with for_range(b, n, name="m") as i:
            a, big = b.call(fabs_d, [clipped(i)]), b.load(big_acc)
            b.store(b.select(b.fcmp_ordered(">", a, big), a, big), big_acc)
        bits = b.and_(b.bitcast(b.load(big_acc), I64), I64(0x7FF0000000000000))  # 2^exponent
        p = b.bitcast(bits, F64)
        p = b.select(b.fcmp_ordered("==", p, F64(0.0)), F64(2.0 ** -1022), p)  # subnormal max
        b.store(F64(0.0), sq_acc)
        with for_range(b, n, name="s") as i:
            q = b.fdiv(clipped(i), p)
            b.store(b.fadd(b.load(sq_acc), b.fmul(q, q), flags=("reassoc", "contract")), sq_acc)
        b.store(b.fmul(b.call(sqrt_d, [b.load(sq_acc)]), p), norm_acc)
    return b.load(norm_acc, name="norm")


# ---------------------------------------------------------------------------- calling it
_PROTO = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class NativeUpdate:
    """``up(optimizer, flat, grad, step, clip_value=None, clip_norm=None)`` updates ``flat``
    and ``optimizer.state`` in place and returns -1, or returns the index of the first
    non-finite element of ``grad`` and writes nothing.  ``up.norm`` is the global norm of
    the (value-clipped) gradient of the last successful call.  State vectors of another
    dtype (a checkpoint saved in float64, resumed in float32) are converted once.  Kernels
    are compiled on first use per specialisation and kept by this object (and in the
    on-disk cache).  A call costs a few microseconds of Python: the kernel found from the
    optimizer's flags, and ``flat`` and the state vectors checked once while they stay
    the same arrays (the gradient is checked every call)."""

    def __init__(self, dtype, cache="default", host: HostTarget | None = None):
        self.dtype = float_dtype(dtype, "native update: dtype")
        self.cache, self.host = cache, host or HostTarget.detect()
        self._kernels: dict = {}   # UpdateSpec -> (library, callable)
        self._by_flags: dict = {}  # _flags(...) -> (UpdateSpec, callable)
        self._bound = ((), ())     # (flat and state arrays, their addresses) of the last call
        self._scalars, self._norm = np.zeros(len(SCALARS)), np.zeros(1)
        self._scalars_at, self._norm_at = self._scalars.ctypes.data, self._norm.ctypes.data
        self.norm = float("nan")

    def supports(self, optimizer) -> bool:
        return spec_for(optimizer, self.dtype) is not None

    def kernel(self, spec: UpdateSpec):
        """(library, callable) of ``spec``, compiled on first use."""
        if spec not in self._kernels:
            lib = compile_module(build_module(spec), cache=self.cache, host=self.host)
            self._kernels[spec] = (lib, _PROTO(lib.address("update")))
        return self._kernels[spec]

    def _lookup(self, optimizer, clip_value, clip_norm):
        o = optimizer
        flags = (type(o), bool(o.weight_decay), bool(getattr(o, "momentum", 0)), bool(getattr(o, "nesterov", 0)),
                 bool(getattr(o, "decoupled", 0)), clip_value is not None, clip_norm is not None)
        found = self._by_flags.get(flags)
        if found is None:
            spec = spec_for(o, self.dtype, clip_value, clip_norm)
            if spec is None:
                raise TypeError(f"native update: no compiled rule for {type(o).__name__} (use update='numpy')")
            found = self._by_flags[flags] = (spec, self.kernel(spec)[1])
        return found

    def _bind(self, spec, optimizer, flat):
        """Check ``flat`` and the state vectors (converting state of another dtype); their addresses."""
        for s in spec.states:
            a = optimizer.state.get(s)
            if isinstance(a, np.ndarray) and a.size == flat.size \
                    and (a.dtype != self.dtype or not a.flags.c_contiguous):
                optimizer.state[s] = np.ascontiguousarray(a.ravel(), dtype=self.dtype)
        arrays = (flat,) + tuple(optimizer.state.get(s) for s in spec.states)
        for name, a in zip(("flat",) + spec.states, arrays):
            if not (isinstance(a, np.ndarray) and a.dtype == self.dtype and a.flags.c_contiguous
                    and a.flags.writeable and a.size == flat.size):
                raise ValueError(f"native update: {name!r} must be a writable contiguous {self.dtype} "
                                 f"vector of {flat.size} elements")
        for i, a in enumerate(arrays):
            if any(np.may_share_memory(a, c) for c in arrays[i + 1:]):
                raise ValueError("native update: flat and the optimizer state must not overlap")
        return arrays, tuple(a.ctypes.data for a in arrays)

    def __call__(self, optimizer, flat, grad, step, clip_value=None, clip_norm=None) -> int:
        spec, fn = self._lookup(optimizer, clip_value, clip_norm)
        arrays, ptrs = self._bound
        st = optimizer.state
        if len(arrays) != 1 + len(spec.states) or arrays[0] is not flat or \
                any(a is not st.get(s) for a, s in zip(arrays[1:], spec.states)):
            self._bound = arrays, ptrs = self._bind(spec, optimizer, flat)
        if not (isinstance(grad, np.ndarray) and grad.dtype == self.dtype and grad.flags.c_contiguous
                and grad.size == flat.size):
            raise ValueError(f"native update: 'grad' must be a contiguous {self.dtype} vector of "
                             f"{flat.size} elements")
        if any(np.may_share_memory(grad, a) for a in arrays):
            raise ValueError("native update: grad must not overlap flat or the optimizer state")
        runtime_scalars(optimizer, spec, step, clip_value, clip_norm, out=self._scalars)
        bad = fn(flat.size, ptrs[0], grad.ctypes.data, *ptrs[1:], *(None,) * (3 - len(ptrs)),
                 self._scalars_at, self._norm_at)
        if bad < 0:
            self.norm = float(self._norm[0])
        return int(bad)
