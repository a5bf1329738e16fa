"""Energy-based settling (``compile_fixed_point(cell, energy=E)``): the dynamics ds/dt = −∂E/∂s,
recurrent backprop through Hessian-vector products, and equilibrium propagation.

Everything is derived from two programs the compiler already knows how to make: the cell
re-declared with ``E`` as its loss (reverse mode gives ∂E/∂s and ∂E/∂θ) and with the cell's
own cost ``C`` (read at the old state: s.new → s).  The relaxation is gradient descent,
``s ← s − η (∂E/∂s + β ∂C/∂s)``, to the minimum s^β of F = E + βC.

* ``method="rbp"`` (the implicit gradient at s* = s⁰): solve H μ = ∂C/∂s by Richardson
  iteration, μ ← μ − η (H μ − ∂C/∂s), then ∂L/∂θ = ∂C/∂θ − μᵀ ∂²E/∂s∂θ.  H μ and μᵀ∂²E/∂s∂θ
  are forward mode over the reverse program (:func:`rnncomp.forward_mode.jvp` on the step
  and its backward step together): Hessian-vector products from the same two rule tables.
* ``method="eqprop"`` (Scellier & Bengio 2017): relax again with the cost nudged in, then
  ∂L/∂θ ≈ (∂F/∂θ(s^β, β) − ∂E/∂θ(s⁰))/β, error O(β); ``symmetric=True`` nudges both ways,
  (∂F/∂θ(s^β, β) − ∂F/∂θ(s^−β, −β))/(2β), error O(β²).  Only energies and the cost are read.
* ``method="bptt"``: back-propagation through the descent's iterates s[0] … s[k] (stored):
  λ[i] = λ[i+1] − η H(s[i]) λ[i+1], ∂L/∂θ −= η λ[i+1]ᵀ ∂²E/∂s∂θ(s[i]), from λ[k] = ∂C/∂s(s[k]);
  k as many as the relaxation took, or ``iterations=k`` exactly.
"""
from __future__ import annotations

import copy
import warnings
from functools import cached_property

import numpy as np
import sympy as sp

from ..backends.validate import check_call, initial_states
from ..checks import real
from ..cell import Cell
from ..dsl import StateVec, Vec
from ..errors import CallError, CompileError
from ..forward_mode import jvp, tangent_name
from ..ir import Node, Program
from .compiled import NumpyFallbackWarning
from .fixed_point import FixedPointError, _check_iterations, check_finite, expand, held, plain_of
from .settle_exec import NumpySettle, executor
from .tangents import Directions, run_tangents


def _clone(cell, loss, what):
    """``cell`` re-declared with states held (s ← s) and ``loss``, its s.new read as s."""
    old = {Vec(f"{s}.new"): StateVec(s) for s, d in cell.decls.items() if d.kind == "state"}
    c = Cell(f"{cell.name}_{what}")
    for d in cell.decls.values():
        if d.name in c.decls:
            continue
        if d.kind in ("input", "target"):
            getattr(c, d.kind)(d.name, d.shape)
        elif d.kind == "param":
            c.param(d.name, d.shape, init=d.init)
        elif d.kind == "state":
            c.state(d.name, d.shape, init=d.init or "zeros")
        else:
            getattr(c, d.kind)(d.name, d.expr.xreplace(old))
    for s, d in cell.decls.items():
        if d.kind == "state":
            c.update(StateVec(s), StateVec(s))
    c.loss(loss.xreplace(old))
    return c


class _Part:
    """One scalar field of the state (E or C): value, ∂/∂s, ∂/∂θ (the executor's), and the
    Hessian-vector products (forward mode over the step and its backward step), run by the
    NumPy printer or, next to a native executor, compiled (:mod:`rnncomp.backends.native_hvp`;
    where it has no code, ``native_error`` says why and NumPy runs them)."""

    def __init__(self, cell, dtype, ex=None):
        self.ex = ex if isinstance(ex, NumpySettle) else NumpySettle(cell, dtype)
        self.step, self.bwd = self.ex.step, self.ex.bwd
        both = Program({**self.step.prog.nodes, **self.bwd.prog.nodes}, name=f"{self.step.name} and its gradient")
        seeds = {(s, "t-1"): ((tangent_name(s), "t-1"), Node("seed", (), n)) for s, n in self.step.states.items()}
        self.hvp = jvp(both, seeds, where=f"cell {self.step.name!r}, Hessian-vector product")
        self.kernel, self.native_error = None, None
        if getattr(ex, "backend", "numpy") == "native":
            from ..backends.native_hvp import HvpKernel
            try:
                self.kernel = HvpKernel(self.step, self.bwd, self.hvp, dtype, ex.options.get("cache", "default"))
            except CompileError as exc:
                self.native_error = str(exc)

    def evaluate(self, params, states, seqs, B, dt):
        """The point the products are taken at: the NumPy env of the step and its backward, or
        the arguments the compiled kernel evaluates them at."""
        if self.kernel is not None:
            return params, states, seqs
        return self.ex.evaluate(params, states, seqs, B)

    def hessian_products(self, point, mu, B, dt):
        """(H μ per state, Σ_b μᵀ ∂²E/∂s∂θ per parameter) at ``point`` (:meth:`evaluate`'s)."""
        t = self.hvp.tangents
        if self.kernel is None:
            seeds = {t[(s, "t-1")]: mu[s][:, None, :] for s in self.step.states}
            tan = run_tangents(self.hvp.prog, point, seeds, Directions(1, {}, {}, {}), B, dt)
            val = lambda k: None if k not in t else np.broadcast_to(tan[t[k]], (B, 1, tan[t[k]].shape[-1]))[:, 0]  # noqa: E731
            return self._products(point.__getitem__, val, B, dt)
        with self.kernel.lock:  # its buffers hold the values until the sums below are made
            value = self.kernel.values(*point, mu, B)
            return self._products(value, lambda k: None if k not in t else value(t[k]), B, dt)

    def _products(self, value, val, B, dt):
        """H μ and the mixed sums from ``value(key)`` (a value at the point) and ``val(key)`` (its
        tangent along μ, None where zero)."""
        hmu = {s: np.zeros((B, n), dtype=dt) if self.bwd.carry_out[s] is None or val(self.bwd.carry_out[s]) is None
               else np.array(val(self.bwd.carry_out[s])) for s, n in self.step.states.items()}
        mixed = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in self.step.params.items()}
        for p, specs in self.bwd.grads.items():
            for spec in specs:
                if spec[0] == "batch":
                    d = val(spec[1])
                    if d is not None:
                        mixed[p] += np.broadcast_to(d, (B, d.shape[-1])).sum(axis=0)
                    continue
                _, g, v, c, tr = spec
                dg, dv = val(g), val(v)
                gv, vv = (np.broadcast_to(value(k), (B, np.shape(value(k))[-1])) for k in (g, v))
                m = (0 if dg is None else dg.T @ vv) + (0 if dv is None else gv.T @ dv)
                if not np.isscalar(m):
                    mixed[p] += (m.T if tr else m) * float(c)
        return hmu, mixed


class EnergyModel:
    """``rc.compile_fixed_point(cell, energy=E, step=η)``: see the module docstring."""

    def __init__(self, cell, energy, tol, max_iter, step, dtype, backend="numpy", options=None):
        if not step > 0:
            raise ValueError(f"compile_fixed_point(energy=...): step must be positive, got {step!r}")
        if cell.loss_expr is None:
            raise CallError(f"cell {cell.name!r} has no loss (declare one with cell.loss): it is the cost "
                            "the settled state is judged by")
        self.cell, self.tol, self.max_iter, self.eta, self.dtype = cell, float(tol), max_iter, float(step), np.dtype(dtype)
        if energy is not getattr(cell, "energy_expr", None):  # energy=: its inline weights, as cell.energy would
            cell = copy.copy(cell)                            # declare them (on a copy: the caller's cell stays)
            cell.decls, cell._lowered = dict(cell.decls), None
            energy = cell._check_expr(energy, f"cell {cell.name!r}, energy")
        self.dw, base = plain_of(cell)  # run on the plain cell of its derived weights; chained back
        if self.dw is not None:
            energy = energy.xreplace({sp.Symbol(a): sp.Symbol(b) for a, b in self.dw.rename.items()})
        self._cells = _clone(base, energy, "energy"), _clone(base, base.loss_expr, "cost")
        # value, ∂/∂s, ∂/∂θ of E and of C on the backend (.settle_exec); HVPs: _Part
        self.gE, self.gC = (executor(c, backend, self.dtype, options) for c in self._cells)
        self.step, self.backend = self._cells[0].step, backend
        self.iterations = 0

    @cached_property
    def E(self):
        return _Part(self._cells[0], self.dtype, self.gE)

    @cached_property
    def C(self):
        return _Part(self._cells[1], self.dtype, self.gC)

    def init_params(self, seed=0):
        return self.cell.init_params(seed, self.dtype.name)

    def _call(self, params, x, y, h0):
        try:
            x, batch = held(x, "inputs", self.step, self.dtype)
            return check_call(self.step, self.dtype, params, x, held(y, "targets", self.step, self.dtype, batch)[0],
                              h0, need_targets=True)
        except CallError as exc:  # named after the user's cell, not the energy's clone of it
            raise CallError(str(exc).replace(f"cell {self.step.name!r}", f"cell {self.cell.name!r}")) from None

    def _relax(self, call, beta, start=None, *, iterations=None, trail=None):
        """The minimum of E + βC by gradient descent from ``start`` (default: the initial
        states); exactly ``iterations`` steps where given; each iterate before a step appended
        to ``trail``."""
        s = dict(start) if start is not None else initial_states(self.step, call, self.dtype)
        for i in range(1, (iterations or self.max_iter) + 1):
            if trail is not None:
                trail.append(s)
            dE = self.gE.grad(call, s)[1]
            dC = self.gC.grad(call, s)[1] if beta else None
            move = {k: self.eta * (dE[k] + (beta * dC[k] if beta else 0)) for k in s}
            s = {k: s[k] - move[k] for k in s}
            check_finite(s, self.cell.name, f"gradient descent on the energy (β = {beta:g})", i,
                         f"a smaller step (step = {self.eta:g})")
            res = max(float(np.abs(m).max()) for m in move.values())
            if i == iterations or (iterations is None and res <= self.tol):
                self.iterations = i
                return s
        raise FixedPointError(f"cell {self.cell.name!r}: gradient descent on the energy (β = {beta:g}) did not "
                              f"converge: max |Δs| = {res:.3g} after max_iter = {self.max_iter} iterations "
                              f"(tol = {self.tol:g}, step = {self.eta:g}); a smaller step, or raise max_iter")

    def _expand(self, params):
        return expand(self.dw, self.cell, params, self.dtype)

    def forward(self, params, x, y, h0=None):
        """The free-phase minimum s⁰ of E."""
        return self._relax(self._call(self._expand(params), x, y, h0), 0.0)

    def loss_and_grad(self, params, x, y, h0=None, method="rbp", beta=0.01, symmetric=False, iterations=None,
                      solve="iterate"):
        """(loss at s⁰, gradient of every declared parameter, s⁰); see the module docstring.
        ``solve``: "iterate" only (H μ = ∂C/∂s is solved by iteration for an energy model)."""
        if solve != "iterate":
            raise ValueError(f"cell {self.cell.name!r}: an energy model solves H μ = ∂C/∂s by iteration only "
                             f"(solve='iterate'), got solve={solve!r}")
        if method == "eqprop":
            beta = real("eqprop", "beta", beta, above=0, hint="the nudging strength, e.g. 0.01")
        loss, grads, s0 = self._loss_and_grad(self._expand(params), x, y, h0, method, beta, symmetric, iterations)
        if self.dw is not None:  # chained back through the derived weights, at these parameters
            grads = self.dw.pullback(params, grads, self.dtype)
        return loss, grads, s0

    def _loss_and_grad(self, params, x, y, h0, method, beta, symmetric, iterations):
        if method not in ("rbp", "eqprop", "bptt"):
            raise ValueError(f"method must be 'rbp', 'eqprop' or 'bptt' for an energy model, got {method!r}")
        _check_iterations(method, iterations)
        call = self._call(params, x, y, h0)
        B = call.B
        trail = [] if method == "bptt" else None
        s0 = self._relax(call, 0.0, iterations=iterations, trail=trail)
        value, dC, gC = self.gC.grad(call, s0)
        loss = value / B
        if method != "eqprop" and self.backend != "numpy" and self.E.kernel is None:
            warnings.warn(f"compile_fixed_point(cell {self.cell.name!r}, energy, backend={self.backend!r}): "
                          f"method={method!r} needs Hessian-vector products, which run on the NumPy executor "
                          f"(the relaxation runs natively): {self.E.native_error}", NumpyFallbackWarning,
                          stacklevel=2)
        if method == "rbp":
            return loss, self._rbp(call, s0, dC, gC), s0
        if method == "bptt":
            return loss, self._bptt(call, trail, dC, gC), s0
        if not beta > 0:
            raise ValueError(f"eqprop: beta must be positive, got {beta!r}")
        dF = lambda s, b: self._dF(call, s, b)  # noqa: E731
        if symmetric:
            plus, minus = self._relax(call, beta, s0), self._relax(call, -beta, s0)
            fp, fm = dF(plus, beta), dF(minus, -beta)
            return loss, {p: (fp[p] - fm[p]) / (2 * beta * B) for p in fp}, s0
        fp, f0 = dF(self._relax(call, beta, s0), beta), dF(s0, 0.0)
        return loss, {p: (fp[p] - f0[p]) / (beta * B) for p in fp}, s0

    def _dF(self, call, s, beta):
        """Σ_b ∂(E + βC)/∂θ at the states ``s``."""
        g = self.gE.grad(call, s)[2]
        if beta:
            gc = self.gC.grad(call, s)[2]
            g = {p: g[p] + beta * gc[p] for p in g}
        return g

    def _bptt(self, call, trail, dC, gC):
        """The transpose of the descent s[i+1] = s[i] − η ∂E/∂s(s[i]) (H is symmetric)."""
        B, dt, seqs = call.B, self.dtype, {**call.inputs, **call.targets}
        lam = {k: v / B for k, v in dC.items()}
        g = {p: v / B for p, v in gC.items()}
        for s in reversed(trail):
            hlam, mixed = self.E.hessian_products(self.E.evaluate(call.params, s, seqs, B, dt), lam, B, dt)
            g = {p: g[p] - self.eta * mixed[p] for p in g}
            lam = {k: lam[k] - self.eta * hlam[k] for k in lam}
        for s, p in self.step.state_init.items():   # a learned initial state: s[0]'s adjoint
            if p is not None and s not in call.h0:
                g[p] = g[p] + lam[s].sum(axis=0).reshape(g[p].shape)
        return g

    def _rbp(self, call, s0, dC, gc):
        B, dt, seqs = call.B, self.dtype, {**call.inputs, **call.targets}
        dC = {k: v / B for k, v in dC.items()}
        e_env = self.E.evaluate(call.params, s0, seqs, B, dt)
        mu = {k: np.zeros_like(v) for k, v in dC.items()}
        for _ in range(self.max_iter):
            hmu, _ = self.E.hessian_products(e_env, mu, B, dt)
            move = {k: self.eta * (hmu[k] - dC[k]) for k in mu}
            mu = {k: mu[k] - move[k] for k in mu}
            if max(float(np.abs(m).max()) for m in move.values()) <= self.tol:
                break
        else:
            raise FixedPointError(f"cell {self.cell.name!r}: the adjoint iteration H μ = ∂C/∂s did not converge "
                                  f"after max_iter = {self.max_iter} iterations (tol = {self.tol:g})")
        _, mixed = self.E.hessian_products(e_env, mu, B, dt)
        return {p: gc[p] / B - mixed[p] for p in gc}
