"""A cell's kept forward over a padded batch (``lengths=`` shorter than T): final states after
each sequence's own last step, and their cotangents put there.

``forward(lengths=...)`` returns, for every sequence, the states after its own last step
(:meth:`.run.CellRun.forward` runs the cell up to each distinct length in turn).  A kept
forward keeps the same promise: it runs over all T steps (the outputs and the loss, what the
layer above reads, are one call's), and its final states come from the cell run again up to
each distinct length.  Its backward is the kept forward's backward of the outputs' cotangents
and the loss, plus the backward of ``d_final`` through those pieces, chained (a piece's δh0 is
the previous piece's ``d_final``, docs/vjp.md "chained chunks"): the VJP is linear in its
cotangents, so the two add up to the gradient of ⟨d_outputs, y⟩ + loss + ⟨d_final, h[len]⟩.

Cost: one more forward over max(lengths) steps when the kept forward is made, and a forward
and backward over them when a backward is given a ``d_final``.
"""
from __future__ import annotations

import numpy as np

from ..backends.validate import forward_targets
from ..backends.vjp import own
from ..errors import CallError


def cut(d, lo, hi):
    return None if d is None else {k: v[lo:hi] for k, v in d.items()}


def by_length(run, inputs, h0, targets, lengths):
    """``run(inputs, h0, targets) -> (outputs, states)`` up to each distinct length in turn,
    each piece from the states the one before ended with: (the pieces' outputs, the states
    after each sequence's own last step, the states after the longest, its length)."""
    outs, final, state, lo = [], None, h0, 0
    for end in (int(e) for e in np.unique(lengths)):
        out, state = run(cut(inputs, lo, end), state, cut(targets, lo, end))
        outs.append(out)
        final = final or {k: np.zeros_like(v) for k, v in state.items()}
        for k, v in state.items():
            final[k][lengths == end] = v[lengths == end]
        lo = end
    return outs, final, state, lo


class ByLengthKept:
    """A kept forward (``kept``, over all T) whose final states and their cotangents are at
    each sequence's own last step (module docstring)."""

    def __init__(self, model, kept, params, inputs, h0, targets, lengths, wrt, check_finite, finals=True):
        self.kept, self.outputs, self.loss = kept, kept.outputs, kept.loss
        self._model, self._lengths, self._wrt, self._check = model, lengths, wrt, check_finite
        self._params, self._inputs, self._h0 = own(params), own(inputs), own(h0)
        reads = forward_targets(model.step)  # a teacher-forced cell's forward reads targets
        self._targets = own({k: targets[k] for k in reads}) if reads and targets else None
        self._ends = [int(e) for e in np.unique(lengths)]
        self.final = None if not finals else by_length(  # (a kept_from returns no final states)
            lambda x, h, t: model.forward(self._params, x, h, targets=t, check_finite=check_finite),
            self._inputs, self._h0, self._targets, lengths)[1]

    def backward(self, d_outputs=None, d_final=None):
        g = self.kept.backward(d_outputs=d_outputs, d_final=None)
        d_final = {k: v for k, v in (d_final or {}).items() if v is not None}
        if not d_final:
            return g
        m, st = self._model, self._model.step
        if self._targets is not None:
            raise CallError(f"cell {st.name!r}: d_final with lengths= on a cell whose forward reads targets "
                            "(teacher forcing) is not supported: its pieces cannot be kept without the loss")
        pieces, state, lo = [], self._h0, 0
        try:
            for end in self._ends:
                k = m.forward(self._params, cut(self._inputs, lo, end), state, keep=True, wrt=self._wrt,
                              outputs=(), check_finite=self._check)
                pieces.append((lo, end, k))
                state, lo = k.final, end
            carried = None
            for lo, end, k in reversed(pieces):
                ends_here = (self._lengths == end)[:, None]
                df = {s: np.where(ends_here, d_final[s], 0.0).astype(m.dtype) if s in d_final
                      else np.zeros((len(self._lengths), n), m.dtype) for s, n in st.states.items()}
                if carried is not None:
                    df = {s: df[s] + carried[s] for s in df}
                r = k.backward(d_final=df)
                for p, v in r.params.items():
                    g.params[p] = g.params[p] + v
                for x, v in r.inputs.items():
                    g.inputs[x] = np.array(g.inputs[x])
                    g.inputs[x][lo:end] += v
                carried = r.h0
        finally:
            for _, _, k in pieces:
                k.free()
        for s, v in carried.items():  # the first piece's: the cotangent of the initial states
            g.h0[s] = g.h0[s] + v
        return g

    def residuals(self) -> list:
        return self.kept.residuals()

    def free(self) -> None:
        self.kept.free()
