"""Settling networks: a cell iterated to a fixed point, and recurrent backprop (Almeida 1987,
Pineda 1987) for its gradient.

With the input held, the forward relaxes ``s ← f(s, x; θ)`` to ``s* = f(s*, x; θ)`` and the
loss is the cell's ℓ read there.  Differentiating ``s* = f(s*)``:

    ds*/dθ = (I − ∂f/∂s)⁻¹ ∂f/∂θ,    so    ∂L/∂θ = ∂ℓ/∂θ + λᵀ ∂f/∂θ,    λ = (∂f/∂s)ᵀ λ + ∂ℓ/∂s

at s*.  The adjoint fixed point is iterated with the cell's own backward step: seeded with
δ⁺s = λ and the loss weight, its carried adjoint δs[t-1] *is* (∂f/∂s)ᵀλ + ∂ℓ/∂s, and its
parameter contributions are the gradient once λ has converged.  Nothing is stored but s*.
``solve="direct"`` instead forms ∂f/∂s at s* (forward mode, :mod:`.restricted`) and solves
for λ: for small states, and where the adjoint iteration would not contract.
``method="bptt"`` back-propagates through the forward iterations instead (the reference:
it approaches the RBP gradient as their number grows); ``iterations=k`` unrolls exactly k
updates from the initial state, converged or not, and differentiates the loss read there.

    >>> import numpy as np, rnncomp as rc
    >>> model = rc.compile_fixed_point(rc.cells.elman(2, 3, 1), tol=1e-10)
    >>> params = {k: 0.3 * v for k, v in model.init_params(0).items()}
    >>> x, y = np.ones((4, 2)), np.zeros((4, 1))
    >>> loss, grads, s = model.loss_and_grad(params, x, y)
    >>> sorted(grads) == sorted(params), s["h"].shape
    (True, (4, 3))
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from ..backends.validate import check_call, forward_targets, initial_states
from ..errors import CallError, RnncompError
from .base import has_derived_weights
from .settle_exec import executor

METHODS = ("rbp", "bptt")


class FixedPointError(RnncompError, ArithmeticError):
    """A forward relaxation or an adjoint iteration did not converge (names the cell, the
    residual, the tolerance and the iteration budget)."""


def compile_fixed_point(cell, tol: float = 1e-8, max_iter: int = 500, dtype: str = "float64", *,
                        energy=None, step: float = 0.5, backend: str = "numpy", **options):
    """A model that relaxes ``cell`` to a fixed point of its state update and differentiates
    the loss there: ``forward(params, x, h0=None)``, ``loss_and_grad(params, x, y, method="rbp")``.

    ``energy=E`` (a DSL expression of the states, inputs and parameters, summed over its
    units), or E declared with ``cell.energy(E)``: the dynamics are ds/dt = −∂E/∂s instead
    (gradient descent with ``step``; the cell's updates are not used), and ``method="eqprop"``
    is available too (:mod:`rnncomp.algorithms.energy`).

    ``backend="native"``: the relaxation, the adjoint iteration and the Jacobian of
    ``solve="direct"`` call the natively compiled cell (``options``: ``rc.compile``'s, e.g.
    ``cache=None``): up to 32 iterations in one call, the Jacobian in one (:mod:`.settle_exec`);
    an energy model's Hessian-vector products (its "rbp" and "bptt") are compiled too
    (:mod:`rnncomp.backends.native_hvp`).  Convergence is tested once per block of iterations
    (1, 2, 3, 5, 9, 17, 33, 33, …: :func:`blocks`), on the block's last two iterates."""
    from .online import check_single_cell
    check_single_cell(cell, "compile_fixed_point", way_out="settle one cell (its state is what relaxes "
                      "to a fixed point), or train the composition with rc.Trainer")  # no step of its own
    if not (isinstance(tol, numbers.Real) and not isinstance(tol, bool) and tol > 0
            and isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 1):
        raise ValueError(f"compile_fixed_point: need tol > 0 and an integer max_iter >= 1, "
                         f"got tol={tol!r}, max_iter={max_iter!r}")
    declared = getattr(cell, "energy_expr", None)
    if energy is not None and declared is not None:
        raise CallError(f"compile_fixed_point: cell {cell.name!r} declares its energy (cell.energy); "
                        "energy= would be a second one")
    energy = declared if energy is None else energy
    if energy is not None:
        from .energy import EnergyModel
        return EnergyModel(cell, energy, tol, max_iter, step, dtype, backend, options)
    if step != 0.5:  # the default: only an energy's descent takes a step
        raise ValueError(f"compile_fixed_point: step={step!r} is the step of the descent on an energy, and cell "
                         f"{cell.name!r} declares none (cell.energy(E) or energy=E): its updates are iterated as "
                         "they are")
    return FixedPointModel(cell, tol, max_iter, dtype, backend, options)


def plain_of(cell):
    """(``weights.DerivedWeights`` of ``cell``, the plain cell whose parameters its derived
    weights and constants are), or (None, ``cell``) when it has none: a settling model runs the
    plain cell and chains each gradient back to the declared parameters."""
    if not has_derived_weights(cell):
        return None, cell
    from ..weights import DerivedWeights
    dw = DerivedWeights(cell)
    return dw, dw.plain


def expand(dw, cell, params, dtype):
    """The plain cell's parameters from the declared ones (``dw`` None: ``params`` as given)."""
    if dw is None:
        return params
    if not isinstance(params, dict) or sorted(params) != sorted(dw.params):
        raise CallError(f"cell {cell.name!r}: params must be a dict of its parameters {sorted(dw.params)}, "
                        f"got {sorted(params) if isinstance(params, dict) else type(params).__name__}")
    for p, shape in dw.params.items():
        want = shape if isinstance(shape, tuple) else (shape,)
        if np.shape(params[p]) != want:
            raise CallError(f"cell {cell.name!r}: params[{p!r}] has shape {np.shape(params[p])}, expected {want}")
    return dw.expand(params, dtype)


class FixedPointModel:
    block = 64  # the most iterations between two convergence tests (:func:`blocks`); 1: after each

    def __init__(self, cell, tol, max_iter, dtype, backend="numpy", options=None):
        self.dw, plain = plain_of(cell)
        self.cell, self.step = cell, plain.step
        if not self.step.states:
            raise CallError(f"cell {cell.name!r} has no state to settle")
        self.tol, self.max_iter, self.dtype = float(tol), max_iter, np.dtype(dtype)
        self.ex = executor(plain, backend, self.dtype, options)  # one update; its VJP at a point
        self.backend = backend
        self.iterations = 0  # forward iterations of the last call

    def init_params(self, seed=0):
        return self.cell.init_params(seed, self.dtype.name)

    def _call(self, params, x, y=None, h0=None):
        x, batch = held(x, "inputs", self.step, self.dtype)
        y = None if y is None else held(y, "targets", self.step, self.dtype, batch)[0]
        call = check_call(self.step, self.dtype, params, x, y, h0, need_targets=y is not None)
        missing = [n for n in forward_targets(self.step) if n not in call.targets]
        if missing:
            raise CallError(f"cell {self.step.name!r}: its update reads target {missing[0]!r}: pass targets=")
        return call

    def _relax(self, call, what="forward"):
        states, self.iterations = self._converge(
            initial_states(self.step, call, self.dtype), lambda s, m: self.ex.update(call, s, m),
            f"the {what} relaxation", "|s[k] − s[k-1]|",
            "the update may not be a contraction (smaller weights, a damped update s ← (s + f(s))/2)", ", or raise max_iter")
        return states

    def _converge(self, x, apply, what, residual, hint, more=""):
        """``x`` iterated by ``apply(x, m)`` (m iterations) in :func:`blocks` until its last two
        iterates are within tol: (the iterate, the iterations it took); a FixedPointError where
        one is not finite or after max_iter."""
        st = self.step
        for i, m in blocks(self.max_iter, self.block):  # m iterations in one call, the next in another
            if m:
                x = apply(x, m)
                check_finite(x, st.name, what, i + m, hint)
            new = apply(x, 1)
            check_finite(new, st.name, what, i + m + 1, hint)
            res = max(float(np.abs(new[s] - x[s]).max()) for s in st.states)
            x = new
            if res <= self.tol:
                return x, i + m + 1
        raise FixedPointError(f"cell {st.name!r}: {what} did not converge: max {residual} = {res:.3g} after "
                              f"max_iter = {self.max_iter} iterations (tol = {self.tol:g}); {hint}{more}")

    def forward(self, params, x, h0=None, *, targets=None):
        """The fixed point ``{state: (B, n)}`` for inputs ``x`` ((B, n) or a dict); ``targets``
        only for a cell whose update reads one."""
        return self._relax(self._call(expand(self.dw, self.cell, params, self.dtype), x, targets, h0=h0))

    def loss_and_grad(self, params, x, y, h0=None, method="rbp", solve="iterate", iterations=None):
        """The loss at the fixed point (the mean of ℓ over the batch), its gradient, s*.

        ``method="bptt"``: back-propagation through the relaxation's iterations (as many as it
        took, or exactly ``iterations`` = k: then the loss is ℓ of the k-th update, with
        s.new = s[k], and the states returned are s[k]).
        ``solve`` (RBP): "iterate" the adjoint fixed point, or "direct": the state Jacobian
        D = ∂f/∂s at s* per sample and one linear solve (I − Dᵀ) λ = ∂ℓ/∂s (small states;
        it needs no contraction of the adjoint iteration)."""
        loss, grads, states = self._loss_and_grad(expand(self.dw, self.cell, params, self.dtype), x, y, h0, method,
                                                  solve, iterations)
        if self.dw is not None:  # chained back through the derived weights, at these parameters
            grads = self.dw.pullback(params, grads, self.dtype)
        return loss, grads, states

    def _loss_and_grad(self, params, x, y, h0, method, solve, iterations):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if solve not in ("iterate", "direct"):
            raise ValueError(f"solve must be 'iterate' or 'direct', got {solve!r}")
        if not self.step.has_loss:
            raise CallError(f"cell {self.step.name!r} has no loss (declare one with cell.loss)")
        _check_iterations(method, iterations)
        call = self._call(params, x, y, h0)
        if iterations is not None:
            return self._bptt(call, iterations)
        star = self._relax(call)
        if method == "bptt":
            return self._bptt(call, self.iterations + 1, star)
        point = self.ex.point(call, star)  # the step kept at s*: its loss and its VJP
        lam = self._solve(point, call.B) if solve == "direct" else self._iterate(point, call.B)
        return point.loss, point.vjp(lam)[1], star

    def _iterate(self, point, B):
        lam = {s: np.zeros((B, n), dtype=self.dtype) for s, n in self.step.states.items()}
        return self._converge(lam, point.iterate, "the adjoint iteration λ = (∂f/∂s)ᵀλ + ∂ℓ/∂s", "|Δλ|",
                              "solve='direct' solves it instead")[0]

    def _solve(self, point, B):
        st, names = self.step, list(self.step.states)
        offs = np.cumsum([0] + [st.states[s] for s in names])
        N = int(offs[-1])
        D = point.jacobian()  # D[b, i, j] = ∂f_i/∂s_j at s*
        rho = spectral_radius_if_not_below_one(D)
        if (rho >= 1).any():  # the implicit gradient still holds, but not for a state one settles to
            b = int(np.argmax(rho))
            warnings.warn(f"cell {st.name!r}: the fixed point is not attracting (spectral radius of ∂f/∂s "
                          f"{rho[b]:.4g} ≥ 1 for sample {b}): iterating the update would leave it, and "
                          "solve='iterate' would diverge; the gradient given is that of an unstable "
                          "equilibrium", RuntimeWarning, stacklevel=3)
        zero = {s: np.zeros((B, n), dtype=self.dtype) for s, n in st.states.items()}
        g = point.vjp(zero, grads=False)[0]  # ∂ℓ/∂s at s* (λ = 0)
        rhs = np.concatenate([g[s] for s in names], axis=1)
        A = np.eye(N) - D.transpose(0, 2, 1)
        try:
            lam = np.linalg.solve(A, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            raise FixedPointError(f"cell {st.name!r}: I − (∂f/∂s)ᵀ is singular at the fixed point (an eigenvalue "
                                  "1 of the state Jacobian): the gradient is not defined there") from None
        return {s: np.ascontiguousarray(lam[:, offs[i]:offs[i + 1]]) for i, s in enumerate(names)}

    def _bptt(self, call, T, star=None):
        """BPTT through T unrolled steps, the loss read at the last (its s.new = s[T]).  After
        a relaxation of k iterations T = k + 1, so the loss step sees s* as the rbp loss
        does, and s* is returned; else the states after the T updates."""
        rep = lambda d: {n: np.repeat(v, T, axis=0) for n, v in d.items()}  # noqa: E731
        mask = np.zeros((T, call.B), dtype=self.dtype)
        mask[-1] = 1
        loss, grads, final = self.ex.model.loss_and_grad(
            call.params, rep(call.inputs), rep(call.targets), h0=call.h0 or None, mask=mask)
        return loss, grads, final if star is None else star


def blocks(max_iter: int, block: int = 64):
    """(iterations done, m) per block of m + 1 ≤ ``block`` iterations, m = 0, 1, 2, 4, … (powers
    of two), ``max_iter`` in all.

    A relaxation tests convergence once per block, on its last two iterates, so that the
    native executor runs the block's first m iterations in one call (a sequence of m steps
    with the input held) instead of one call each: about 2 log₂(n) + n / 16 calls for n
    iterations (``block`` = 64).  It may run up to twice the iterations (at most ``block``
    more) that a test after every iteration would: its iterate is then closer to the fixed
    point.  ``block=1`` tests after every iteration.  Powers of two, so that the native
    adjoint's rescaling by m (its loss is a mean over the m steps) is exact."""
    done, size = 0, 0
    while done < max_iter:
        m = min(size, max_iter - done - 1, block - 1)
        m = 1 << (m.bit_length() - 1) if m > 0 else 0  # the largest power of two ≤ m
        yield done, m
        done, size = done + m + 1, max(2 * size, 1)


def spectral_radius_if_not_below_one(D: np.ndarray) -> np.ndarray:
    """Per sample of ``D`` (B, N, N): its spectral radius, or 0 where a norm already bounds it
    below 1 (ρ ≤ min(‖D‖₁, ‖D‖∞, ‖D‖_F): O(N²)).  Eigenvalues only for the other samples: an
    eigendecomposition per sample took 50× the solve it guards (H = 512, B = 32: 6.0 s of 7 s;
    H = 1024, B = 256: 200 s)."""
    bound = np.zeros(len(D))
    for b, m in enumerate(D):   # a sample at a time: |D| of the whole batch was B·N² more
        a = np.abs(m)
        bound[b] = min(a.sum(axis=0).max(initial=0), a.sum(axis=1).max(initial=0), np.sqrt((a * a).sum()))
    rho = np.zeros(len(D))
    open_ = np.nonzero(bound >= 1)[0]
    if len(open_):
        rho[open_] = np.abs(np.linalg.eigvals(D[open_])).max(axis=1)
    return rho


def check_finite(states: dict, cell: str, what: str, i: int, hint: str) -> None:
    """A FixedPointError as soon as iterate ``i`` of ``what`` is no longer finite: it diverged
    (rather than running on NaN to max_iter, or the native step refusing it as its input)."""
    bad = next((s for s, v in states.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise FixedPointError(f"cell {cell!r}: {what} diverged: state {bad!r} is not finite after {i} "
                              f"iterations; {hint}")


def _check_iterations(method, iterations):
    if iterations is None:
        return
    if method != "bptt":
        raise ValueError(f"iterations= is for method='bptt' (a fixed number of unrolled updates), not {method!r}")
    if not (isinstance(iterations, (int, np.integer)) and iterations >= 1):
        raise ValueError(f"method='bptt': iterations must be an integer >= 1, got {iterations!r}")


def _named(d, what, step):
    names = list(step.inputs if what == "inputs" else step.targets)
    if isinstance(d, dict):
        return d
    if len(names) != 1:
        raise CallError(f"cell {step.name!r}: {what} must be a dict keyed by {', '.join(names)}")
    return {names[0]: d}


def held(d, what, step, dtype, batch=None):
    """``({name: (1, B, n)}, B)``: the held ``(B, n)`` arrays of ``d`` (a dict, or one array) as
    a sequence of one step for :func:`check_call`, and their B (``batch``: the B another argument
    set, or None).  Their shapes are checked here, as given: the step axis added for the executor
    is not the caller's (a message naming a (1, B, n) shape for a (B, n) argument, or "time-major"
    for a settling network, would misdirect)."""
    sizes = step.inputs if what == "inputs" else step.targets
    out = {}
    for k, v in _named(d, what, step).items():
        try:
            a = np.asarray(v, dtype)
        except (TypeError, ValueError):
            raise CallError(f"cell {step.name!r}: {what}[{k!r}] cannot be read as {dtype} numbers "
                            f"(got {type(v).__name__})") from None
        rows = a.shape[0] if a.ndim == 2 and a.shape[0] else "B"
        want = (batch or rows, sizes.get(k, a.shape[-1] if a.ndim == 2 else "n"))  # an unknown name: check_call's
        if a.shape != want:
            raise CallError(f"cell {step.name!r}: {what}[{k!r}] has shape {a.shape}, expected ({want[0]}, "
                            f"{want[1]}): a settling network holds one row per sample, with no time axis")
        batch = a.shape[0]
        out[k] = a[None]
    return out, batch
