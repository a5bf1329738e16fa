"""Executors of a settling network's primitives, one class per backend: what
:mod:`.fixed_point` and :mod:`.energy` iterate, so that both run on NumPy or natively.

    update(call, s, m=1)     m applications of the cell's update, s ← f(s, x; θ)
    point(call, s*)          the step kept at s* for its backward (a :class:`NumpyPoint` or
                             :class:`NativePoint`): ``loss`` (the mean of ℓ over the batch),
                             ``vjp(λ)`` → ((∂f/∂s)ᵀλ + ∂ℓ/∂s, ∂ℓ/∂θ + λᵀ∂f/∂θ),
                             ``iterate(λ, m)`` → m such adjoint iterations (λ only), and
                             ``jacobian()`` → ∂f/∂s per sample (B, N, N)
    grad(call, s)            for a scalar field of the state (an energy E or a cost C, a cell
                             whose loss it is): (Σ_b value, Σ_b-free ∂/∂s, Σ_b ∂/∂θ)
    model                    the compiled cell, for BPTT through unrolled iterations

The native executors call the compiled model's entry points only: ``forward`` over m steps
(T = m, the input held: m updates in one call), and ``forward(keep=True)`` +
``backward(d_final=λ)`` for the VJP, whose loss weight is 1/B (the mean over the batch): the sums
are that times B.  m adjoint iterations are one backward over a kept forward of m steps from s*
(each step's loss seeds its ∂ℓ/∂s; its weight is 1/(m·B), so λ goes in divided by m and the
result comes out times m); the steps after the first are at f(s*), f(f(s*)), …, which differ from
s* by about the relaxation's tolerance.  The Jacobian is one backward over a batch of N copies
of the B samples, copy i seeded with the unit vector e_i.

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

    def update(self, call, states, m=1):
        for _ in range(m):
            env = step_env(self.step, call.params, states, {**call.inputs, **call.targets}, 0)
            run_program(self._settle, env, call.B, self.dtype)
            states = {s: env[(s, "t")] for s in self.step.states}
        return states

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

    def iterate(self, lam, m):
        for _ in range(m):
            lam = self.vjp(lam, grads=False)[0]
        return lam

    def jacobian(self):
        from .restricted import RestrictedJacobian
        N = sum(self.ex.step.states.values())
        rows, cols = np.divmod(np.arange(N * N), N)
        return RestrictedJacobian(self.ex.step, rows, cols).evaluate(self.fixed, self.B, self.ex.dtype).reshape(self.B, N, N)


class NativeSettle:
    """The native executor: the cell compiled by the native backend, called on m steps at a time."""

    backend = "native"

    def __init__(self, cell, dtype, options=None):
        from ..compile import compile as rc_compile
        self.step, self.dtype, self.options = cell.step, np.dtype(dtype), dict(options or {})
        self.model = rc_compile(cell, backend="native", dtype=self.dtype.name, **self.options)
        self._teacher = bool(forward_targets(self.step))

    def update(self, call, states, m=1):
        targets = repeated(call.targets, m) if self._teacher else None
        return _copy(self.model.forward(call.params, repeated(call.inputs, m), h0=states, targets=targets)[1])

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
        self._runs = {}  # m -> the forward of m steps from s*, kept for carried adjoints only

    def vjp(self, lam, grads=True):
        if not grads:  # the adjoint iteration: no parameter gradient products
            return self.iterate(lam, 1), None
        res = self.kept.backward(d_final=lam)
        return _copy(res.h0), {p: np.array(v) for p, v in res.params.items()}

    def iterate(self, lam, m):
        """m adjoint iterations: the backward of m steps from s* (without the parameters'
        gradient products), whose loss is a mean over the m steps (each step's weight
        1/(m·B)), seeded with λ/m and scaled back by m (exact: the blocks are powers of two)."""
        if m not in self._runs:
            call = self.call
            self._runs[m] = self.ex.model._keep_carries(call.params, repeated(call.inputs, m), self.star,
                                                        repeated(call.targets, m))
        res = self._runs[m].backward(d_final={s: v / m for s, v in lam.items()})
        return {s: v * m for s, v in res.h0.items()}

    def jacobian(self, chunk=4096):
        """Row i of ∂f/∂s per sample is the backward of the update alone seeded with e_i: one
        backward over copies i = 0 … N-1 of the batch (at most ``chunk`` rows per call)."""
        ex, call, names = self.ex, self.call, list(self.ex.step.states)
        offs = np.cumsum([0] + [ex.step.states[s] for s in names])
        N, B = int(offs[-1]), call.B
        D = np.empty((B, N, N), dtype=ex.dtype)
        per = max(1, chunk // B)  # rows i per call
        for lo in range(0, N, per):
            rows = np.arange(lo, min(N, lo + per))
            copy = lambda d: {k: np.tile(v, (1, len(rows), 1)) for k, v in d.items()}  # noqa: E731
            star = {s: np.tile(v, (len(rows), 1)) for s, v in self.star.items()}
            # (its forward needs the targets if the update reads one, and then keeps the loss: ∂ℓ/∂s subtracted)
            targets = copy(call.targets) if ex._teacher else None
            kept = ex.model._keep_carries(call.params, copy(call.inputs), star, targets)
            e = np.zeros((len(rows), B, N), dtype=ex.dtype)
            e[np.arange(len(rows)), :, rows] = 1
            e = e.reshape(len(rows) * B, N)
            h0 = kept.backward(d_final={s: np.ascontiguousarray(e[:, offs[j]:offs[j + 1]]) for j, s in enumerate(names)}).h0
            if ex._teacher:
                base = kept.backward().h0
                h0 = {s: h0[s] - base[s] for s in names}
            got = np.concatenate([h0[s] for s in names], axis=1).reshape(len(rows), B, N)
            D[:, rows] = got.transpose(1, 0, 2)
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


def repeated(seqs, m):
    """Sequences of one step (1, B, n) as m steps of the same input: (m, B, n)."""
    return seqs if m == 1 else {k: np.repeat(v, m, axis=0) for k, v in seqs.items()}


def _copy(states):
    return {s: np.array(v) for s, v in states.items()}
