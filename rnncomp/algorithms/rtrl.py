"""Real-time recurrent learning (Williams & Zipser 1989): the sensitivities carried forward.

    J[t] = ∂h[t]/∂θ  =  ∂h[t]/∂h[t-1] · J[t-1] + ∂h[t]/∂θ|immediate
    ∂L/∂θ += w[t] · (∂ℓ[t]/∂h[t-1] · J[t-1] + ∂ℓ[t]/∂θ|immediate)

both read off the tangent step (:func:`rnncomp.forward_mode.tangent_step`) run over one
direction per parameter entry: ``J`` is a ``(B, P, n)`` tangent, each product ``U·∂h`` one
GEMM over B·P rows.  Exact: on a whole sequence it is the BPTT gradient, summed in another
order.  Memory B·P·n per state; :class:`SensitivityMemoryError` beyond ``max_bytes``.
"""
from __future__ import annotations

import numpy as np

from ..checks import count
from ..forward_mode import tangent_step
from .base import Algorithm, check_memory
from .tangents import Directions, run_tangents

DEFAULT_MAX_BYTES = 1 << 30


def checked_bytes(owner: str, max_bytes):
    """``max_bytes=``: a positive integer, or None (no limit)."""
    return None if max_bytes is None else count(owner, "max_bytes", max_bytes,
                                                hint="bytes the sensitivities may take; None: no limit")


class RTRL(Algorithm):
    """``rc.RTRL(max_bytes=2**30)``: exact online gradients; the sensitivities take
    B × P × (state units) values, checked against ``max_bytes`` (None: no limit)."""

    name = "RTRL"

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_BYTES):
        self.max_bytes = checked_bytes("RTRL", max_bytes)

    def __repr__(self) -> str:
        return "rc.RTRL()" if self.max_bytes == DEFAULT_MAX_BYTES else f"rc.RTRL(max_bytes={self.max_bytes})"

    def prepare(self, step):
        return _Prepared(step, self.max_bytes)


class _Prepared:
    what = "RTRL's sensitivity ∂state/∂θ"   # in the memory check's message

    def __init__(self, step, max_bytes):
        self.st, self.max_bytes = step, max_bytes
        self.ts = tangent_step(step)
        self.dirs = Directions.dense(step)

    def begin(self, params, states, learned, B, dtype):
        st, K = self.st, self.dirs.K
        check_memory(f"{self.what} (batch × parameters × state units)", st.name,
                     (B, K, sum(st.states.values())), np.dtype(dtype).itemsize, self.max_bytes)
        J = {}
        for s, n in st.states.items():
            J[s] = np.zeros((B, K, n), dtype=dtype)
            if s in learned:  # h[0] = h₀: ∂h[0]/∂h₀ = I
                J[s][:, self.dirs.column[st.state_init[s]], np.arange(n)] = 1
        return J

    def step(self, env, w, J):
        ts, B = self.ts, len(w)
        dt = J[next(iter(J))].dtype if J else np.float64
        seeds = {ts.state_seeds[s]: J[s] for s in self.st.states}
        tan = run_tangents(ts.prog, env, seeds, self.dirs, B, dt)
        g = np.zeros(self.dirs.K, dtype=dt)
        if ts.loss is not None:
            g += np.einsum("b,bk->k", w, np.broadcast_to(tan[ts.loss][..., 0], (B, self.dirs.K)))
        new = {}
        for s, n in self.st.states.items():
            k = ts.out[s]
            new[s] = np.zeros_like(J[s]) if k is None else np.ascontiguousarray(
                np.broadcast_to(tan[k], (B, self.dirs.K, n)))
        return g, new
