"""Which executor runs an online algorithm's steps: the NumPy one (the reference) or native code.

    prepare(algorithm, step, backend, dtype) → an object with ``begin``, ``step`` and ``window``

``backend="native"`` compiles the forward step and the sensitivity recursion into one loop:
RTRL and dense SnAp (``rc.SnAp(n, sparse=False)``, RTRL's recursion with the pattern applied)
in :mod:`rnncomp.backends.native_tangent`, sparse SnAp (only the kept entries) in
:mod:`rnncomp.backends.native_snap`, UORO (the same random draws as the NumPy executor) in
:mod:`rnncomp.backends.native_uoro`; cells with matrix states included (sparse SnAp has no
plan for them: ``sparse="auto"`` runs the dense executor).  Where a native executor has no
code for an algorithm or a cell, :func:`prepare` raises :class:`CompileError` naming it, and a
Trainer with ``backend="native"`` runs the NumPy executor after a warning
(:class:`NumpyFallbackWarning`).

    >>> import numpy as np, rnncomp as rc
    >>> from rnncomp.algorithms.base import sequence_grad
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> params = cell.init_params(seed=0, dtype="float64")
    >>> x, y = np.ones((4, 2, 2)), np.zeros((4, 2, 1))
    >>> l1, g1, _ = sequence_grad(rc.RTRL(), cell, params, x, y, backend="native")
    >>> l2, g2, _ = sequence_grad(rc.RTRL(), cell, params, x, y)
    >>> bool(abs(l1 - l2) < 1e-12 and all(np.allclose(g1[p], g2[p], rtol=0, atol=1e-12) for p in g1))
    True
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import CompileError


class NumpyFallbackWarning(UserWarning):
    """A Trainer asked for the native backend runs its online algorithm on the NumPy executor."""


def prepare(algorithm, step, backend: str = "numpy", dtype="float64", *, fallback: bool = False):
    """``algorithm`` prepared for ``step`` on ``backend`` ("numpy" or "native").

    ``fallback``: where the native executor has no code for this algorithm or cell, warn
    (:class:`NumpyFallbackWarning`) and return the NumPy executor instead of raising."""
    prep = algorithm.prepare(step)
    if backend == "numpy":
        return prep
    try:
        if backend != "native":
            raise CompileError(f"{algorithm!r} has no executor for backend {backend!r} (native or numpy)")
        return Native(algorithm, prep, dtype)
    except CompileError as exc:
        if not fallback:
            raise
        warnings.warn(f"{exc}; running {algorithm!r} on the NumPy executor", NumpyFallbackWarning, stacklevel=3)
        return prep


class Native:
    """A prepared RTRL, SnAp or UORO whose windows run natively (``begin`` and ``step`` are the
    NumPy executor's: the carry is the same ``{state: (B, K, n)}`` sensitivity, sparse SnAp's
    ``(B, stored entries)``, or UORO's ``(generator, s̃, θ̃)``)."""

    def __init__(self, algorithm, prep, dtype):
        from .rtrl import _Prepared as RtrlPrepared
        from .snap import _Sparse
        from .uoro import _Prepared as UoroPrepared

        self.prep, self.st = prep, prep.st
        if isinstance(prep, UoroPrepared):
            from ..backends.native_uoro import UoroKernel
            self.kernel = UoroKernel(prep.st, dtype)
            return
        if isinstance(prep, _Sparse):
            from ..backends.native_snap import SparseKernel
            from .pattern import pattern
            from .sparse_plan import SparsePlan

            self.kernel = SparseKernel(prep.st, SparsePlan(prep.st, pattern(prep.st, prep.n), by_state=True), dtype)
            return
        if not isinstance(prep, RtrlPrepared):
            raise CompileError(f"cell {prep.st.name!r}: the native online executor has no code for {algorithm!r} yet")
        from ..backends.native_tangent import OnlineKernel
        self.kernel = OnlineKernel(prep.st, prep.ts, prep.dirs, dtype, getattr(prep, "mask", None))

    def begin(self, params, states, learned, B, dtype):
        J = self.prep.begin(params, states, learned, B, dtype)
        if isinstance(J, tuple):  # UORO: (generator, s̃, θ̃)
            rng, s, theta = J
            return rng, {k: np.ascontiguousarray(v, dtype=dtype) for k, v in s.items()}, np.ascontiguousarray(theta, dtype=dtype)
        if isinstance(J, np.ndarray):
            return np.ascontiguousarray(J, dtype=dtype)
        return {s: np.ascontiguousarray(v, dtype=dtype) for s, v in J.items()}

    def step(self, env, w, carry):
        return self.prep.step(env, w, carry)

    def window(self, params, states, seqs, lo, hi, w, carry):
        """Steps lo … hi-1 (``w``: their weights, (hi-lo, B)): (loss, flat ∂L/∂θ, states, carry)."""
        seqs = {k: v[lo:hi] for k, v in seqs.items()}
        if isinstance(carry, tuple):  # UORO: the signs drawn here, in the NumPy executor's order
            rng, s, theta = carry
            B, dt = w.shape[1], w.dtype
            draws = [{k: rng.choice([-1.0, 1.0], size=(B, n)).astype(dt) for k, n in self.st.states.items()}
                     for _ in range(hi - lo)]
            nu = {k: np.stack([d[k] for d in draws]) for k in self.st.states}
            loss, g, final = self.kernel.run(params, states, seqs, w, s, theta, nu)
            return loss, g, final, carry
        loss, g, final = self.kernel.run(params, states, seqs, w, carry)
        return loss, g, final, carry
