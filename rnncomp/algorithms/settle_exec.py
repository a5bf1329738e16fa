"""Executors of a settling network's primitives, one class per backend: what
:mod:`.fixed_point` and :mod:`.energy` iterate, so that both run on NumPy or natively.

    update(call, s)          one application of the cell's update, s ← f(s, x; θ)
    point(call, s*)          the step kept at s* for its backward (a :class:`NumpyPoint` or
                             :class:`NativePoint`): ``loss`` (the mean of ℓ over the batch),
                             ``vjp(λ)`` → ((∂f/∂s)ᵀλ + ∂ℓ/∂s, ∂ℓ/∂θ + λᵀ∂f/∂θ), and
                             ``jacobian()`` → ∂f/∂s per sample (B, N, N)
    grad(call, s)            for a scalar field of the state (an energy E or a cost C, a cell
                             whose loss it is): (Σ_b value, Σ_b-free ∂/∂s, Σ_b ∂/∂θ)
    model                    the compiled cell, for BPTT through unrolled iterations

The native executors call the compiled model's entry points only: ``forward`` over one step
(T = 1, the input held), and ``forward(keep=True)`` + ``backward(d_final=λ)`` for the VJP, whose
loss weight is 1/B (the mean over the batch): the sums are that times B.

    >>> import numpy as np, rnncomp as rc
    >>> from rnncomp.backends.validate import check_call
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> p = {k: 0.3 * v for k, v in cell.init_params(0, "float64").items()}
    >>> call = check_call(cell.step, np.dtype("float64"), p, {"x": np.ones((1, 4, 2))}, {"target": np.zeros((1, 4, 1))}, None)
    >>> s = {"h": np.zeros((4, 3))}
    >>> a, b = NumpySettle(cell, "float64"), NativeSettle(cell, "float64", {"cache": None})
    >>> bool(np.allclose(a.update(call, s)["h"], b.update(call, s)["h"], rtol=0, atol=1e-14))
    True
"""
from __future__ import annotations

import numpy as np

from ..autodiff import backward_step
from ..backends.numpy import NumpyModel, accumulate_grads, run_program
from ..backends.validate import forward_targets
from ..ir import prune
from .base import step_env


class NumpySettle:
    """The NumPy executor: the step program and its backward step, run by the NumPy printer."""

    backend = "numpy"

    def __init__(self, cell, dtype, options=None):
        self.step, self.dtype = cell.step, np.dtype(dtype)
        self.bwd = backward_step(self.step)
        self._settle = prune(self.step.prog, [(s, "t") for s in self.step.states])  # the update only
        self.model = NumpyModel(cell, self.dtype.name)

    def update(self, call, states):
        env = step_env(self.step, call.params, states, {**call.inputs, **call.targets}, 0)
        run_program(self._settle, env, call.B, self.dtype)
        return {s: env[(s, "t")] for s in self.step.states}

    def point(self, call, star):
        return NumpyPoint(self, call, star)

    def evaluate(self, params, states, seqs, B):
        """The step and its backward at ``states``, the loss weighted 1 per sample: the env."""
        st, bwd, dt = self.step, self.bwd, self.dtype
        env = step_env(st, params, states, seqs, 0)
        run_program(st.prog, env, B, dt)
        for s, n in st.states.items():
            env[bwd.carry_in[s]] = np.zeros((B, n), dtype=dt)
        env[bwd.weight] = np.ones((B, 1), dtype=dt)
        run_program(bwd.prog, env, B, dt)
        return env

    def d_state(self, env, B):
        return {s: np.zeros((B, n), dtype=self.dtype) if self.bwd.carry_out[s] is None
                else np.broadcast_to(env[self.bwd.carry_out[s]], (B, n)) for s, n in self.step.states.items()}

    def grad(self, call, states):
        env = self.evaluate(call.params, states, {**call.inputs, **call.targets}, call.B)
        return float(np.sum(env[self.step.loss_key])), self.d_state(env, call.B), _param_grads(self.step, self.bwd, env, self.dtype)


class NumpyPoint:
    def __init__(self, ex, call, star):
        self.ex, self.B = ex, call.B
        self.fixed = step_env(ex.step, call.params, star, {**call.inputs, **call.targets}, 0)
        run_program(ex.step.prog, self.fixed, call.B, ex.dtype)
        self.loss = float(self.fixed[ex.step.loss_key].sum()) / call.B

    def vjp(self, lam, grads=True):
        ex, B = self.ex, self.B
        env = dict(self.fixed)
        for s in ex.step.states:
            env[ex.bwd.carry_in[s]] = lam[s]
        env[ex.bwd.weight] = np.full((B, 1), 1.0 / B, dtype=ex.dtype)
        run_program(ex.bwd.prog, env, B, ex.dtype)
        carried = {s: np.zeros_like(lam[s]) if k is None else np.array(env[k]) for s, k in ex.bwd.carry_out.items()}
        return carried, (_param_grads(ex.step, ex.bwd, env, ex.dtype) if grads else None)

    def jacobian(self):
        from .restricted import RestrictedJacobian
        N = sum(self.ex.step.states.values())
        rows, cols = np.divmod(np.arange(N * N), N)
        return RestrictedJacobian(self.ex.step, rows, cols).evaluate(self.fixed, self.B, self.ex.dtype).reshape(self.B, N, N)


class NativeSettle:
    """The native executor: the cell compiled by the native backend, called one step at a time."""

    backend = "native"

    def __init__(self, cell, dtype, options=None):
        from ..compile import compile as rc_compile
        self.step, self.dtype, self.options = cell.step, np.dtype(dtype), dict(options or {})
        self.model = rc_compile(cell, backend="native", dtype=self.dtype.name, **self.options)
        self._teacher = bool(forward_targets(self.step))

    def update(self, call, states):
        targets = call.targets if self._teacher else None
        return _copy(self.model.forward(call.params, call.inputs, h0=states, targets=targets)[1])

    def point(self, call, star):
        return NativePoint(self, call, star)

    def grad(self, call, states):
        kept = self.model.forward(call.params, call.inputs, h0=states, targets=call.targets, keep=True, wrt=())
        res = kept.backward()
        B = call.B
        return kept.loss * B, {s: v * B for s, v in res.h0.items()}, {p: v * B for p, v in res.params.items()}


class NativePoint:
    def __init__(self, ex, call, star):
        self.ex, self.call, self.star = ex, call, star
        self.kept = ex.model.forward(call.params, call.inputs, h0=star, targets=call.targets, keep=True, wrt=())
        self.loss = float(self.kept.loss)

    def vjp(self, lam, grads=True):
        res = self.kept.backward(d_final=lam)
        return _copy(res.h0), ({p: np.array(v) for p, v in res.params.items()} if grads else None)

    def jacobian(self):
        """Row i of ∂f/∂s per sample is the backward of the update alone seeded with e_i."""
        ex, call, names = self.ex, self.call, list(self.ex.step.states)
        if ex._teacher:  # its forward needs the targets, and so keeps the loss: subtract ∂ℓ/∂s
            kept, base = self.kept, self.kept.backward().h0
        else:
            kept, base = ex.model.forward(call.params, call.inputs, h0=self.star, keep=True, wrt=()), None
        offs = np.cumsum([0] + [ex.step.states[s] for s in names])
        N, B = int(offs[-1]), call.B
        D = np.empty((B, N, N), dtype=ex.dtype)
        for i in range(N):
            e = np.zeros((B, N), dtype=ex.dtype)
            e[:, i] = 1
            h0 = kept.backward(d_final={s: np.ascontiguousarray(e[:, offs[j]:offs[j + 1]]) for j, s in enumerate(names)}).h0
            D[:, i] = np.concatenate([h0[s] - (0 if base is None else base[s]) for s in names], axis=1)
        return D


EXECUTORS = {"numpy": NumpySettle, "native": NativeSettle}


def executor(cell, backend, dtype, options):
    """The executor of ``backend`` for ``cell`` (a ValueError names the backends there are)."""
    if backend not in EXECUTORS:
        raise ValueError(f"compile_fixed_point(backend={backend!r}): the settling executors are "
                         f"{', '.join(map(repr, EXECUTORS))}")
    if options and backend == "numpy":
        raise ValueError(f"compile_fixed_point: compile options {sorted(options)} are for backend='native'")
    return EXECUTORS[backend](cell, dtype, options)


def _param_grads(step, bwd, env, dt):
    g = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in step.params.items()}
    accumulate_grads(g, bwd.grads, env)
    return g


def _copy(states):
    return {s: np.array(v) for s, v in states.items()}
