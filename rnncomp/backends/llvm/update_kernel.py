"""The optimizer-update kernel: LLVM code for the post-gradient half of a training step.

One kernel per :class:`UpdateSpec` (optimizer kind, static options, dtype): the finite
check of the gradient, clipping by value, the global norm (accumulated in float64 whatever
the dtype), clipping by norm, weight decay (L2, or decoupled for AdamW) and the
optimizer update with its state vectors.  The learning rate, the hyper-parameters and
the step's bias corrections are runtime scalars (:data:`SCALARS`), so a schedule or a new
``lr`` never recompiles.

    i64 update(i64 n, T* flat, T* grad, T* state0, T* state1, f64* scalars, f64* norm_out)
        pass 1 (reads grad):  any non-finite g?  Σ clip(g)² in float64      (vectorised)
        non-finite:           return the index of the first one; nothing written
        pass 2 (one sweep):   g = clip(g)·scale; decay; state, flat updated in place
        return -1

The rules repeat :mod:`rnncomp.train.optim`'s NumPy operations in the same order with
the same roundings (no fast-math flags); ``rnncomp/train/native_update.py`` maps an
optimizer to its spec and scalars and calls the kernel.  This module knows no optimizer
class (backends import nothing of ``train/``).

    >>> spec = UpdateSpec("adam", "float32", decay="decoupled")
    >>> module = build_module(spec, tiny_sumsq=2.0 ** -960)
    >>> spec.states, [f.name for f in module.functions if not f.is_declaration]
    (('m', 'v'), ['update'])
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .builder import I64, alloca_once, float_type, for_range, gep

F64 = ir.DoubleType()
I8 = ir.IntType(8)

# runtime scalars, in the order of the kernel's f64* argument
SCALARS = ("lr", "wd", "a", "one_minus_a", "b2", "one_minus_b2", "bc1", "bc2", "eps",
           "clip_value", "clip_norm")
SLOT = {s: i for i, s in enumerate(SCALARS)}


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


def build_module(spec: UpdateSpec, tiny_sumsq: float) -> ir.Module:
    """The kernel ``update`` of ``spec`` (see the module docstring for its signature).

    ``tiny_sumsq``: a sum of squares below it may have lost terms to underflow, and the norm
    is computed again, scaled (the threshold of the NumPy ``global_norm`` it must match)."""
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
        v = b.load(gep(b, scal, SLOT[name]), name=name)
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
    norm, pre, in_range = _scaled_norm(b, mod, n, grad, sq_acc, spec, lo, scalars, ty, tiny_sumsq)
    b.store(norm, norm_out)
    scale = None
    if spec.clip_norm:
        cn = b.load(gep(b, scal, SLOT["clip_norm"]))
        ratio = b.fdiv(cn, in_range)
        ratio = ratio if ty == F64 else b.fptrunc(ratio, ty)
        scale = b.select(b.fcmp_ordered(">", norm, cn), ratio, ir.Constant(ty, 1.0), name="scale")
        pre = pre if ty == F64 else b.fptrunc(pre, ty)

    # pass 2: clip, decay, update (the NumPy optimizer's operations in its order)
    e = _Emitter(b, ty, scalars, sqrt_t)
    state_ptrs = dict(zip(spec.states, (s0, s1)))
    with for_range(b, n, name="k") as k:
        g = b.load(gep(b, grad, k))
        if spec.clip_value:
            g = _clip(b, g, lo, scalars["clip_value"])
        if scale is not None:
            g = b.fmul(b.fmul(g, pre), scale)  # pre: 1, or exact scaling where the norm overflowed
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


def _scaled_norm(b, mod, n, grad, sq_acc, spec, lo, scalars, ty, tiny_sumsq):
    """(norm, pre, in_range): norm = sqrt(Σ g²) from pass 1's sum; where that sum overflowed
    (finite g above ~1e154) or may have lost terms to underflow (below ``tiny_sumsq``), again
    over g/p with p the power of two at the largest |g| (exact scaling): p·sqrt(Σ (g/p)²), as
    :func:`rnncomp.train.optim.global_norm`.  Where even that norm is past the float range
    (inf from finite g), clipping scales g by ``pre`` = 1/p (exact) and divides by
    ``in_range`` = sqrt(Σ (g/p)²); otherwise ``pre`` is 1 and ``in_range`` the norm."""
    sqrt_d = mod.declare_intrinsic("llvm.sqrt", [F64])
    fabs_d = mod.declare_intrinsic("llvm.fabs", [F64])
    sumsq = b.load(sq_acc)
    norm_acc, big_acc = alloca_once(b, F64, "norm"), alloca_once(b, F64, "maxabs")
    pre_acc, range_acc = alloca_once(b, F64, "pre"), alloca_once(b, F64, "in_range")
    b.store(F64(1.0), pre_acc)
    b.store(F64(0.0), range_acc)
    b.store(b.call(sqrt_d, [sumsq]), norm_acc)
    plain = b.and_(b.fcmp_ordered(">=", sumsq, F64(tiny_sumsq)), b.fcmp_ordered("<", sumsq, F64(float("inf"))))
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
        s = b.call(sqrt_d, [b.load(sq_acc)])
        b.store(b.fmul(s, p), norm_acc)
        with b.if_then(b.fcmp_ordered("==", b.load(norm_acc), F64(float("inf"))), likely=False):
            b.store(b.fdiv(F64(1.0), p), pre_acc)  # a power of two: exact
            b.store(s, range_acc)
    norm = b.load(norm_acc, name="norm")
    in_range = b.select(b.fcmp_ordered("==", b.load(pre_acc), F64(1.0)), norm, b.load(range_acc), name="in_range")
    return norm, b.load(pre_acc, name="pre"), in_range
