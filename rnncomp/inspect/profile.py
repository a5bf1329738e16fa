"""Where a native training step's time goes: ``rnncomp inspect CELL --profile``.

Owns: running a profiled native build (``rc.compile(..., profile=True)``, cycle counters per
part, ``backends/native_profile.py``) on random data, and the report: for each part its time
per training call, its share, its rate (GFLOP/s for the products, GB/s of data read and written
for the element-wise code) and that rate as a share of the machine's limit (the FMA peak of
``inspect/peak.py`` for the products; for element-wise code the bandwidth of a large NumPy copy,
a DRAM figure: values that stay in cache can beat it).

"matrix ops" (a row only for cells with matrix states) are the per-sample outer products,
matrix-vector products, broadcasts and reductions of ``backends/native_matrix.py``, in GB/s.
"other native" is the native code outside those parts (the loops, slices, copies of the
carried adjoints, packing of weights); "outside native" is the rest of the wall time: the
Python call, argument checks and ctypes. With ``threads > 1`` the parts add the time of every
thread: the report gives them in CPU time, their shares of the call's CPU time (every thread's
native time and the caller's time outside it) and their rates per thread against the limits of
one core; "outside native" is then the wall time minus the native time per thread.

    >>> import rnncomp as rc
    >>> p = profile(rc.cells.elman(4, 8, 2), T=20, B=4, repeats=2, limits=False)
    >>> sorted(r.part for r in p.rows)[:2]
    ['element-wise', 'gradient products']
    >>> abs(sum(r.seconds for r in p.rows) - p.wall) < 1e-9
    True
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..backends import native_profile as counters
from .flow import random_problem

_PARTS = [p for p in counters.PARTS if p != "native total"]
_ONLY_WHEN_USED = ("matrix ops",)  # a row only for cells with matrix states


@dataclass
class Row:
    part: str
    seconds: float           # per training call
    share: float             # of the wall time of a call
    work: float | None       # FLOPs or bytes per call (None: not counted)
    unit: str                # "flop" or "byte"
    limit: float | None      # the machine's rate for this kind of work, per second

    @property
    def rate(self) -> float | None:
        return self.work / self.seconds if self.work and self.seconds > 0 else None


@dataclass
class Profile:
    cell: str
    T: int
    B: int
    dtype: str
    threads: int
    wall: float              # seconds per training call
    rows: list
    cpu: float | None = None  # with threads > 1: the CPU seconds the rows add up to

    def __str__(self) -> str:
        out = [f"profile of one training call of {self.cell!r}: T={self.T} B={self.B} {self.dtype}, "
               f"{self.threads} thread(s), {1e3 * self.wall:.3f} ms"]
        if self.threads > 1:
            out[0] += (f" wall, {1e3 * self.cpu:.3f} ms CPU: each part adds every thread's time, "
                       "its rate is per thread, against one core's limit")
        out.append(f"  {'part':<20}{'ms':>9}{'share':>8}{'rate':>16}{'of limit':>10}")
        for r in self.rows:
            rate = r.rate
            scale, unit = (1e9, "GFLOP/s") if r.unit == "flop" else (1e9, "GB/s")
            rs = f"{rate / scale:.1f} {unit}" if rate else "-"
            lim = f"{100 * rate / r.limit:.0f}%" if rate and r.limit else "-"
            out.append(f"  {r.part:<20}{1e3 * r.seconds:>9.3f}{100 * r.share:>7.1f}%{rs:>16}{lim:>10}")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


def _copy_bandwidth() -> float:
    """Bytes per second read and written by a NumPy copy of 64 MiB (best of 3)."""
    a = np.ones(8 << 20)
    b = np.empty_like(a)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def profile(cell, *, T: int = 100, B: int = 32, dtype: str = "float32", threads: int = 1,
            repeats: int = 5, seed: int = 0, limits: bool = True) -> Profile:
    """Profile ``repeats`` training calls (``loss_and_grad``) of ``cell`` on random data."""
    from ..compile import compile as compile_

    from ..checks import one_cell
    one_cell("profile", cell)
    if T < 1 or B < 1 or repeats < 1:
        raise ValueError(f"profile: T, B and repeats must be positive, got T={T}, B={B}, repeats={repeats}")
    model = compile_(cell, backend="native", dtype=dtype, threads=threads, profile=True)
    threads = model.threads
    st = model.step
    as_dtype = lambda d: {k: np.asarray(v, dtype) for k, v in d.items()}  # noqa: E731
    params, inputs, targets = map(as_dtype, random_problem(cell, T=T, B=B, seed=seed))
    model.loss_and_grad(params, inputs, targets)          # warm: buffers, packing
    counters.clear(model.lib)
    tick0, wall0 = counters.tsc(model.lib), time.perf_counter()
    for _ in range(repeats):
        model.loss_and_grad(params, inputs, targets)
    wall = (time.perf_counter() - wall0) / repeats
    per_tick = wall * repeats / max(counters.tsc(model.lib) - tick0, 1)   # seconds per tick
    ticks = counters.counters(model.lib)
    sec = {p: ticks[p] * per_tick / repeats for p in counters.PARTS}
    work = {p: model.profile_work.get(p, 0.0) * T * B for p in _PARTS}
    flops_limit = bytes_limit = None
    if limits:
        from .peak import peak
        flops_limit = peak(1, iters=5_000_000, dtype=dtype)["gflops"] * 1e9  # the parts' rates are per thread
        bytes_limit = _copy_bandwidth()
    parts = [p for p in _PARTS if p not in _ONLY_WHEN_USED or p in model.profile_work]
    other = max(sec["native total"] - sum(sec[p] for p in parts), 0.0)
    native = sum(sec[p] for p in parts) + other            # CPU time: every thread's
    outside = max(wall - native / threads, 0.0)            # the threads run the native code side by side
    total = native + outside                               # = wall for one thread
    rows = [Row(p, sec[p], sec[p] / total, work[p] or None, counters.UNITS[p],
                flops_limit if counters.UNITS[p] == "flop" else bytes_limit) for p in parts]
    rows.append(Row("other native", other, other / total, None, "", None))
    rows.append(Row("outside native", outside, outside / total, None, "", None))
    return Profile(st.name, T, B, str(np.dtype(dtype)), threads, wall, rows, total if threads > 1 else None)
