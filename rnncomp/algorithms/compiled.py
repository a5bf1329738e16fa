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

import os
import threading
import warnings

import numpy as np

from ..checks import count
from ..errors import CompileError


class NumpyFallbackWarning(UserWarning):
    """A Trainer asked for the native backend runs its online algorithm on the NumPy executor."""


def prepare(algorithm, step, backend: str = "numpy", dtype="float64", *, fallback: bool = False, threads=None,
            cache="default"):
    """``algorithm`` prepared for ``step`` on ``backend`` ("numpy" or "native").

    ``fallback``: where the native executor has no code for this algorithm or cell, warn
    (:class:`NumpyFallbackWarning`) and return the NumPy executor instead of raising.
    ``threads``: the native executor's (None: every core; see :class:`Native`); ``cache``: where its
    kernel's object code is cached, as ``rc.compile``'s (None: nowhere)."""
    prep = algorithm.prepare(step)
    if backend == "numpy":
        return prep
    try:
        if backend != "native":
            raise CompileError(f"{algorithm!r} has no executor for backend {backend!r} (native or numpy)")
        derived = sorted({k[0] for k, n in step.prog.nodes.items() if n.op == "param" and k[0] not in step.params})
        if derived:   # sequence_grad and fit_online run the plain cell and chain the gradient back
            raise CompileError(f"cell {step.name!r}: the native online executors run a plain cell's step; "
                               f"{', '.join(derived)} {'is a derived weight or constant' if len(derived) == 1 else 'are derived weights or constants'} "
                               "(cell.weight, cell.const): sequence_grad and Trainer.fit_online run the plain "
                               "cell (rnncomp.weights.DerivedWeights) and chain the gradient back")
        return Native(algorithm, prep, dtype, threads, cache)
    except CompileError as exc:
        if not fallback:
            raise
        warnings.warn(f"{exc}; running {algorithm!r} on the NumPy executor", NumpyFallbackWarning, stacklevel=3)
        return prep


class Native:
    """A prepared RTRL, SnAp or UORO whose windows run natively (``begin`` and ``step`` are the
    NumPy executor's: the carry is the same ``{state: (B, K, n)}`` sensitivity, sparse SnAp's
    ``(B, stored entries)``, or UORO's ``(generator, s̃, θ̃)``).

    Threads: a window whose batch is big enough is cut into slices of samples, one per thread,
    each run by a fork of the kernel (the same code, buffers of its own) on its rows of the
    carry, in place; the losses and gradients are summed over the slices (the same terms, summed
    in another order: equal to rounding).  A slice must hold at least :data:`MIN_WORK`
    element-wise updates of the carry (samples × its entries per sample × steps): the hand-off
    to a thread costs tens of µs.  Measured on two cores (Zen 3, float64, T = 20): RTRL 1.8–1.9×
    (LSTM 8→32, B = 16), dense SnAp-1 1.7× (GRU), UORO 1.4–1.6×.  A sparse SnAp call costs about
    as much again whatever its batch (Elman 8→32, T = 20: 0.23 ms at B = 4, 0.82 ms at B = 32),
    which every slice pays, so it is cut only into slices of ≥ :data:`SPARSE_ROWS` samples:
    two threads against one, B = 32: 0.78–0.90×, 64: 0.96–1.08×, 128: 1.22–1.47×, 256: 1.32×."""

    #: the least carry updates (samples × entries per sample × steps) a thread's slice must hold
    MIN_WORK = 400_000
    #: the least samples a slice of sparse SnAp holds
    SPARSE_ROWS = 64

    def __init__(self, algorithm, prep, dtype, threads=None, cache="default"):
        from .rtrl import _Prepared as RtrlPrepared
        from .snap import _Sparse
        from .uoro import _Prepared as UoroPrepared

        self.prep, self.st = prep, prep.st
        # None: every core, as the native model's threads=
        self.threads = (os.cpu_count() or 1) if threads is None else \
            count("native online executor", "threads", threads, hint="or None: every core")
        self._forks, self._pool, self._pool_size = [], None, 0
        self._lock = threading.Lock()  # the kernels' buffers serve one window at a time
        self._fits = set()  # (B, slice sizes) whose buffers max_bytes allows
        self.min_rows = 1  # samples a slice holds at least
        n_s = sum(prep.st.states.values())
        if isinstance(prep, UoroPrepared):
            from ..backends.native_uoro import UoroKernel
            self.kernel = UoroKernel(prep.st, dtype, cache)
            self.entries = self.kernel.plan.P + n_s
            return
        if isinstance(prep, _Sparse):
            from ..backends.native_snap import SparseKernel
            from .sparse_plan import SparsePlan

            plan = SparsePlan(prep.st, prep.pattern, ts=prep.ts, by_state=True)
            self.kernel = SparseKernel(prep.st, plan, dtype, cache)
            self.entries, self.min_rows = self.kernel.nnz, self.SPARSE_ROWS
            return
        if not isinstance(prep, RtrlPrepared):
            raise CompileError(f"cell {prep.st.name!r}: the native online executor has no code for {algorithm!r} yet")
        from ..backends.native_tangent import OnlineKernel
        from .base import check_memory   # one sample over the limit: say so before the kernel's tables
        check_memory(f"{prep.what} (batch × parameters × state units)", prep.st.name, (1, prep.dirs.K, n_s),
                     np.dtype(dtype).itemsize, prep.max_bytes)   # (dense SnAp's mask: as big as J)
        self.kernel = OnlineKernel(prep.st, prep.ts, prep.dirs, dtype, getattr(prep, "mask", None), cache)
        self.entries = self.kernel.K * n_s

    def _check_buffers(self, B, slices, dtype):
        """RTRL's and dense SnAp's ``max_bytes`` counts the sensitivity J and the kernels' working
        buffers for this batch (one set per slice): the buffers alone are several times J (an
        LSTM with 200 units peaked at 2.9 GB for a 558 MB J), so a limit on J let a run be killed."""
        limit, sizes = getattr(self.prep, "max_bytes", None), (B, tuple(sl.stop - sl.start for sl in slices or ()))
        if limit is None or not hasattr(self.kernel, "buffer_bytes") or sizes in self._fits:
            return
        J = B * self.kernel.K * sum(self.st.states.values()) * np.dtype(dtype).itemsize
        bufs = sum(self.kernel.buffer_bytes(sl.stop - sl.start) for sl in (slices or [slice(0, B)]))
        if J + bufs > limit:
            from .base import over_limit
            over_limit(self.st.name, f"{self.prep.what} ({J / 2**20:.1f} MiB at B = {B}) and the native executor's "
                       f"working buffers ({bufs / 2**20:.1f} MiB) need {(J + bufs) / 2**20:.1f} MiB", limit)
        self._fits.add(sizes)

    def _slices(self, T, B):
        """The batch rows of each thread's share of a window of T steps."""
        n = min(self.threads, B // self.min_rows, max(1, T * B * self.entries // self.MIN_WORK))
        if n <= 1:
            return None
        edges = np.linspace(0, B, n + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _run(self, slices, part):
        """``part(kernel, rows)`` for every slice, the first in this thread: their results."""
        from concurrent.futures import ThreadPoolExecutor
        while len(self._forks) < len(slices) - 1:
            self._forks.append(self.kernel.fork())
        if self._pool_size < len(slices) - 1:
            self._pool_size = len(slices) - 1
            self._pool = ThreadPoolExecutor(self._pool_size, thread_name_prefix="rnncomp-online")
        futures = [self._pool.submit(part, k, sl) for k, sl in zip(self._forks, slices[1:])]
        first = part(self.kernel, slices[0])
        return [first] + [f.result() for f in futures]

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
        T, B = w.shape
        if isinstance(carry, tuple):  # UORO: the signs drawn here, in the NumPy executor's order
            rng, s, theta = carry
            dt = w.dtype
            draws = [{k: rng.choice([-1.0, 1.0], size=(B, n)).astype(dt) for k, n in self.st.states.items()}
                     for _ in range(hi - lo)]
            nu = {k: np.stack([d[k] for d in draws]) for k in self.st.states}
            run = lambda k, r: k.run(params, rows(states, r), rows(seqs, r, 1), w[:, r], rows(s, r),  # noqa: E731
                                     theta[r], rows(nu, r, 1))
        else:
            run = lambda k, r: k.run(params, rows(states, r), rows(seqs, r, 1), w[:, r], rows(carry, r))  # noqa: E731
        slices = self._slices(T, B)
        self._check_buffers(B, slices, w.dtype)
        with self._lock:  # a second caller's window waits (the buffers are the kernels' own)
            if slices is None:
                loss, g, final = run(self.kernel, slice(0, B))
                return loss, g, final, carry
            parts = self._run(slices, run)
        final = {k: np.concatenate([p[2][k] for p in parts]) for k in self.st.states}
        return sum(p[0] for p in parts), sum(p[1] for p in parts), final, carry


def rows(d, r, axis=0):
    """Rows ``r`` (a slice) of the batch of an array, or of each array of a dict: a view (the
    kernels update a carry's rows in place; a leading batch axis keeps them contiguous)."""
    if not isinstance(d, dict):
        return d[r] if axis == 0 else d[:, r]
    return {k: v[r] if axis == 0 else v[:, r] for k, v in d.items()}
