"""The NumPy reference executor: the oracle every other backend is tested against.

It prints each element-wise template with sympy's NumPy printer (stable
``sigmoid``/``softplus``/``logsumexp``) and runs the rolled forward and
backward loops over time, vectorised over the batch.  Simple on purpose.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ..autodiff import LOSS_ONLY, WEIGHT, Cotangents, backward_step
from ..functions import SEQUENTIAL_DIVISIONS as SEQUENTIAL
from ..gradspec import Batch
from ..ir import LEAF_OPS, placeholder, prune
from .validate import (add_initial_state_grads, check_call, check_forward_call, float_dtype, initial_states,
                       step_weights)
from ..passes.prepare import keep_set
from .base import BackendModel
from .vjp import check_cotangents, resolve_wrt
from ..initializers import specs as init_specs


# ----------------------------------------------------------------------------- element-wise printer
class _Printer(NumPyPrinter):
    """sympy's NumPy printer with broadcasting Max/Min and the stable activations."""

    def _print_Mul(self, e):
        """The numerator divided by each factor of the denominator one after another, as the
        LLVM printer does (:meth:`.llvm.exprgen.LLVMPrinter._print_Mul`): x/y/z/z, not
        x/(y*z**2), whose product overflows or underflows where the quotient does not."""
        den = [a for a in e.args if a.is_Pow and a.exp.is_Number and a.exp < 0]
        seq = [a for a in den if a.exp.is_Integer and -SEQUENTIAL <= a.exp < -1]
        if not seq and len(den) < 2:
            return super()._print_Mul(e)
        rest = [a for a in e.args if not any(a is d for d in den)]
        out = f"({self._print(sp.Mul(*rest))})" if rest else "1.0"
        for a in den:
            if a.exp.is_Integer and a.exp >= -SEQUENTIAL:
                out += f"/({self._print(a.base)})" * int(-a.exp)
            else:
                out += f"/({self._print(a.base ** (-a.exp))})"
        return out

    def _print_Pow(self, e, rational=False):
        if e.exp.is_Integer and -SEQUENTIAL <= e.exp < -1:
            return self._print_Mul(sp.Mul(sp.Integer(1), e, evaluate=False))
        return super()._print_Pow(e, rational=rational)

    def _print_Max(self, e):
        out = self._print(e.args[0])
        for a in e.args[1:]:
            out = f"numpy.maximum({out}, {self._print(a)})"
        return out

    def _print_Min(self, e):
        out = self._print(e.args[0])
        for a in e.args[1:]:
            out = f"numpy.minimum({out}, {self._print(a)})"
        return out

    def _print_sigmoid(self, e):
        return f"numpy.exp(-numpy.logaddexp(0, -({self._print(e.args[0])})))"

    def _print_softplus(self, e):
        return f"numpy.logaddexp(0, {self._print(e.args[0])})"

    def _print_Heaviside(self, e):
        h0 = e.args[1]  # the value at 0: sympy (>= 1.9) gives every Heaviside one, 1/2 by default
        return f"numpy.heaviside({self._print(e.args[0])}, {self._print(h0)})"

    def _print_erf(self, e):
        return f"_rc_erf({self._print(e.args[0])})"

    def _print_sign(self, e):
        return f"numpy.sign({self._print(e.args[0])})"


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    """erf element-wise (numpy has none; the oracle favours obviously right over fast)."""
    x = np.asarray(x)
    return _erf_scalar(x).astype(x.dtype if x.dtype.kind == "f" else np.float64)


@lru_cache(maxsize=None)
def ew_function(template: sp.Expr, nargs: int):
    """A NumPy function of ``nargs`` arrays computing ``template`` (cached per template)."""
    args = [placeholder(i) for i in range(nargs)]
    return sp.lambdify(args, template, modules=[{"_rc_erf": _erf}, "numpy"], printer=_Printer(
        {"fully_qualified_modules": True, "inline": True, "allow_unknown_functions": False}), cse=_cse)


def _cse(expr):
    """sympy's common sub-expressions, less a power z**-k (k = 2 … SEQUENTIAL) made one of its
    own: put back where it is used, it is printed divided one time after another there
    (:meth:`_Printer._print_Mul`), where ``x1 = 1/z/z`` alone underflows in float32 and the
    product that reads it is 0·inf or a lost term (e/(1+e)'s derivative at e = exp(60))."""
    reps, out = sp.cse(expr, list=False)
    kept, back = [], {}
    for s, e in reps:
        e = e.xreplace(back)
        if e.is_Pow and e.exp.is_Integer and -SEQUENTIAL <= e.exp < -1:
            back[s] = e
        else:
            kept.append((s, e))
    return kept, out.xreplace(back)


# ----------------------------------------------------------------------------- forward rules
def _ew(node, vals, B, dtype):
    out = np.asarray(ew_function(node.attrs["expr"], len(vals))(*vals), dtype=dtype)
    return out if out.shape == (B, node.size) else np.broadcast_to(out, (B, node.size))


def _matvec(node, vals, B, dtype):
    (v,), P = vals[:1], vals[1:]
    out = None
    for (_, tr, c), m in zip(node.attrs["terms"], P):
        y = v @ (m if tr else m.T)
        y = y if c == 1 else y * dtype.type(float(c))
        out = y if out is None else out + y
    return out


def _pad(node, vals, B, dtype):
    out = np.zeros((B, node.size), dtype=dtype)
    v = vals[0]
    out[:, node.attrs["lo"]:node.attrs["lo"] + v.shape[1]] = v
    return out


def _lse(node, vals, B, dtype):
    v = vals[0]
    m = v.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return m + np.log(np.exp(v - m).sum(axis=1, keepdims=True))


def _smatvec(node, vals, B, dtype):
    X, v = vals
    X = X.reshape(-1, *node.attrs["shape"])
    return np.einsum("bij,bi->bj" if node.attrs["transposed"] else "bij,bj->bi", X, v)


def _mbcast(node, vals, B, dtype):
    m, n = node.attrs["shape"]
    v = np.broadcast_to(vals[0], (B, vals[0].shape[-1]))
    return np.repeat(v, n, axis=1) if node.attrs["axis"] == 1 else np.tile(v, (1, m))


FORWARD = {
    "outer": lambda node, vals, B, dtype: np.einsum("bi,bj->bij", *vals).reshape(B, node.size),
    "smatvec": _smatvec,
    "mbcast": _mbcast,
    "mreduce": lambda node, vals, B, dtype: vals[0].reshape(-1, *node.attrs["shape"]).sum(
        axis=2 if node.attrs["axis"] == 1 else 1),
    "ew": _ew,
    "matvec": _matvec,
    "slice": lambda node, vals, B, dtype: vals[0][:, node.attrs["lo"]:node.attrs["lo"] + node.size],
    "pad": _pad,
    "concat": lambda node, vals, B, dtype: np.concatenate(
        [np.broadcast_to(v, (B, v.shape[-1])) for v in vals], axis=1),
    "sum": lambda node, vals, B, dtype: vals[0].sum(axis=1, keepdims=True),
    "lse": _lse,
}


def run_program(prog, env: dict, B: int, dtype) -> dict:
    """Evaluate every non-leaf node of ``prog`` in order, reading and writing ``env``."""
    for key, node in prog.nodes.items():
        if node.op in LEAF_OPS:
            continue
        vals = [env[a] for a in node.args]
        if node.op == "matvec":
            vals += [env[(p, None)] for p, _, _ in node.attrs["terms"]]
        env[key] = FORWARD[node.op](node, vals, B, dtype)
    return env


def accumulate_grads(grads: dict, specs: dict, env: dict) -> None:
    """Add one step's parameter-gradient contributions (the ``grads`` specs) into ``grads``."""
    for p, items in specs.items():
        for spec in items:
            if isinstance(spec, Batch):
                grads[p] += env[spec.g].sum(axis=0)
            else:
                m = env[spec.g].T @ env[spec.v]
                grads[p] += (m.T if spec.tr else m) * float(spec.c)


# ----------------------------------------------------------------------------- the model
class NumpyModel(BackendModel):
    """``rc.compile(cell, backend="numpy")``: forward and BPTT in plain NumPy."""

    backend = "numpy"

    def __init__(self, cell, dtype="float64"):
        self.cell_name = cell.name
        self.dtype = float_dtype(dtype)
        self.step = cell.step
        self._bwds: dict = {}
        self._param_specs_init = init_specs(cell)
        self._fwd_only = prune(self.step.prog, keep_set(self.step, loss=False))

    @property
    def backward(self):
        return self.backward_for(LOSS_ONLY)

    def backward_for(self, cot: Cotangents):
        """The backward step seeded as ``cot`` says (derived once per model)."""
        bwd = self._bwds.get(cot)
        if bwd is None:
            bwd = self._bwds[cot] = backward_step(self.step, cot)
        return bwd

    def _forward_envs(self, call, keep: bool, prog=None):
        st, dt = self.step, self.dtype
        prog = prog or (st.prog if keep else self._fwd_only)
        states = initial_states(st, call, dt)
        shared = {(p, None): v for p, v in call.params.items()}
        envs = []
        for t in range(call.T):
            env = dict(shared)
            for s in st.states:
                env[(s, "t-1")] = states[s]
            for n, a in call.inputs.items():
                env[(n, "t")] = a[t]
            for n, a in call.targets.items():
                env[(n, "t")] = a[t]
            run_program(prog, env, call.B, dt)
            states = {s: env[(s, "t")] for s in st.states}
            envs.append(env if keep else {(o, "t"): env[(o, "t")] for o in st.outputs})
        return envs, states

    def _forward_call(self, call):
        envs, final = self._forward_envs(call, keep=False)
        return self._outputs(envs, call.B), {s: np.array(v) for s, v in final.items()}

    def _outputs(self, envs, B):
        return {o: np.stack([np.broadcast_to(e[(o, "t")], (B, n)) for e in envs])
                for o, n in self.step.outputs.items()}

    def _loss_and_grad_call(self, call, w):
        envs, final = self._forward_envs(call, keep=True)
        loss = self._loss(envs, w)
        grads, carry, _ = self._run_backward(self.backward, envs, call, w, {}, {})
        add_initial_state_grads(self.step, grads, carry, call.h0)
        return loss, grads, {s: np.array(v) for s, v in final.items()}

    def _loss(self, envs, w):
        return sum(float((w[t] * envs[t][self.step.loss_key][:, 0]).sum()) for t in range(len(envs)))

    def _run_backward(self, bwd, envs, call, w, d_out, d_fin, free=True):
        """t = T … 1 from the carried cotangents ``d_fin``: (param grads, δh[0], {input: δx})."""
        st, dt = self.step, self.dtype
        grads = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in st.params.items()}
        carry = {s: d_fin.get(s, np.zeros((call.B, n), dtype=dt)) for s, n in st.states.items()}
        d_in = {x: np.zeros((call.T, call.B, st.inputs[x]), dtype=dt) for x in bwd.cot.inputs}
        for t in reversed(range(call.T)):
            env = envs[t] if free else dict(envs[t])
            for s in st.states:
                env[bwd.carry_in[s]] = carry[s]
            if w is not None:
                env[bwd.weight] = w[t][:, None]
            for o, k in bwd.out_seeds.items():
                env[k] = d_out[o][t] if o in d_out else np.zeros((call.B, st.outputs[o]), dtype=dt)
            run_program(bwd.prog, env, call.B, dt)
            accumulate_grads(grads, bwd.grads, env)
            for x, k in bwd.input_adjoints.items():
                if k is not None:
                    d_in[x][t] = env[k]
            carry = {s: (env[k] if k is not None else np.zeros_like(carry[s]))
                     for s, k in bwd.carry_out.items()}
            if free:
                envs[t] = None  # free as we go
        return grads, carry, d_in

    # ------------------------------------------------------------------ VJP hooks (backends/vjp.py)
    def _vjp_forward(self, call, w, cot):
        envs, final = self._forward_envs(call, keep=True, prog=None if w is not None else self._fwd_only)
        loss = None if w is None else self._loss(envs, w)
        state = (self.backward_for(cot), envs, call, w)
        return state, self._outputs(envs, call.B), {s: np.array(v) for s, v in final.items()}, loss

    def _vjp_backward(self, state, d_out, d_fin):
        bwd, envs, call, w = state
        grads, carry, d_in = self._run_backward(bwd, envs, call, w, d_out, d_fin, free=False)
        add_initial_state_grads(self.step, grads, carry, call.h0)
        return grads, d_in, {s: np.array(v) for s, v in carry.items()}


def _unrolled_env(st, call, dt) -> dict:
    """The leaves of an unfolded program: parameters, h[0], inputs and targets at steps 1..T."""
    env = {(p, None): v for p, v in call.params.items()}
    for s, v in initial_states(st, call, dt).items():
        env[(s, 0)] = v
    for n, a in list(call.inputs.items()) + list(call.targets.items()):
        for t in range(call.T):
            env[(n, t + 1)] = a[t]
    return env


def _derived_weights(cell):
    """The cell's derived weights and constants (:mod:`rnncomp.weights`), or None: the unrolled
    references run the plain cell, as ``rc.compile`` does (``backends/derived.py``)."""
    if not any(d.kind in ("const", "weight") for d in cell.decls.values()):
        return None
    from ..weights import DerivedWeights
    return DerivedWeights(cell)


def unrolled_loss_and_grad(cell, params, inputs, targets=None, h0=None, mask=None, dtype="float64"):
    """Loss and gradients from the *unfolded* graph and one reverse walk over it.

    An independent path to the same numbers as :meth:`NumpyModel.loss_and_grad`
    (no loop, no carried adjoints): the rolled-vs-unrolled oracle.
    """
    from ..autodiff import unrolled

    derived = _derived_weights(cell)
    if derived is not None:  # the plain cell over the expanded parameters, then the chain back
        dt = np.dtype(dtype)
        loss, grads, final = unrolled_loss_and_grad(derived.plain, derived.expand(params, dt), inputs,
                                                    targets, h0, mask, dtype)
        return loss, derived.pullback(params, grads, dt), final
    st, dt = cell.step, np.dtype(dtype)
    call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True)
    u = unrolled(st, call.T)
    env = _unrolled_env(st, call, dt)
    w = step_weights(call, dt)
    for t in range(call.T):
        env[(WEIGHT, t + 1)] = w[t][:, None]
    run_program(u.fwd, env, call.B, dt)
    loss = sum(float((w[t] * env[(st.loss_key[0], t + 1)][:, 0]).sum()) for t in range(call.T))
    run_program(u.rev.prog, env, call.B, dt)
    grads = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in st.params.items()}
    accumulate_grads(grads, u.rev.grads, env)
    add_initial_state_grads(st, grads, {s: env[u.rev.adjoints[(s, 0)]] if (s, 0) in u.rev.adjoints else None
                                        for s in st.states}, call.h0)
    return loss, grads, {s: np.array(env[(s, call.T)]) for s in st.states}


def unrolled_vjp(cell, params, inputs, h0=None, d_outputs=None, d_final=None, targets=None, mask=None,
                 wrt=None, dtype="float64", check_finite=True):
    """:meth:`NumpyModel.vjp` from the *unfolded* graph and one reverse walk over it (no loop,
    no carried adjoints): the independent reference for the rolled VJP step.

    Returns ``(loss or None, param grads, {input: δx (T, B, n)}, {state: δh[0]})``."""
    from ..autodiff import carry_key, cotangent_key, unrolled

    derived = _derived_weights(cell)
    if derived is not None:  # as unrolled_loss_and_grad
        dt = np.dtype(dtype)
        loss, grads, d_in, d_h0 = unrolled_vjp(derived.plain, derived.expand(params, dt, check_finite), inputs, h0,
                                               d_outputs, d_final, targets, mask, wrt, dtype, check_finite)
        return loss, derived.pullback(params, grads, dt), d_in, d_h0
    st, dt = cell.step, np.dtype(dtype)
    if targets is None:
        call, w = check_forward_call(st, dt, params, inputs, None, h0, check_finite=check_finite), None
    else:
        call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True, check_finite=check_finite)
        w = step_weights(call, dt)
    d_out, d_fin = check_cotangents(st, dt, call.T, call.B, d_outputs, d_final, check_finite)
    cot = Cotangents(loss=w is not None, outputs=tuple(d_out), inputs=resolve_wrt(st, wrt), final=True)
    u = unrolled(st, call.T, cot)
    env = _unrolled_env(st, call, dt)
    for t in range(call.T):
        if w is not None:
            env[(WEIGHT, t + 1)] = w[t][:, None]
        for o, a in d_out.items():
            env[cotangent_key(o, t + 1)] = a[t]
    for s, n in st.states.items():
        env[carry_key(s, call.T)] = d_fin.get(s, np.zeros((call.B, n), dtype=dt))
    prog = u.fwd if w is not None else prune(u.fwd, [(n, t) for n in list(st.states) + list(st.outputs)
                                                     for t in range(1, call.T + 1)])
    run_program(prog, env, call.B, dt)
    loss = None if w is None else sum(float((w[t] * env[(st.loss_key[0], t + 1)][:, 0]).sum())
                                      for t in range(call.T))
    run_program(u.rev.prog, env, call.B, dt)
    grads = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in st.params.items()}
    accumulate_grads(grads, u.rev.grads, env)
    zeros = lambda n: np.zeros((call.B, n), dtype=dt)  # noqa: E731
    d_h0 = {s: env[u.rev.adjoints[(s, 0)]] if (s, 0) in u.rev.adjoints else zeros(n)
            for s, n in st.states.items()}
    add_initial_state_grads(st, grads, d_h0, call.h0)
    d_in = {x: np.stack([env[u.rev.adjoints[(x, t + 1)]] if (x, t + 1) in u.rev.adjoints
                         else zeros(st.inputs[x]) for t in range(call.T)]) for x in cot.inputs}
    return loss, grads, d_in, d_h0
