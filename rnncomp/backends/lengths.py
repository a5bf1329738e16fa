"""A padded batch on one compiled cell: the ``lengths=`` of every compiled model's calls.

Sequence b is its first ``lengths[b]`` steps; the steps after are padding.  The rule is the
framework layers' (docs/layers.md) and ``rc.Trainer``'s, for every call of a compiled cell
(``forward``, a kept forward and its ``backward``, ``loss_and_grad``, ``vjp``, ``kept_from``)
and so for the compositions, whose cells are called with the same lengths:

- the final states are those after each sequence's own last step, and ``d_final`` is their
  cotangent;
- the outputs after a sequence's end are zeros, and a cotangent given for them adds nothing;
- the loss is the masked mean over the steps before each end: ``lengths`` alone weigh those
  steps 1; with a ``mask=`` the mask weighs them, and a mask that weighs a step past a
  sequence's end is refused (it would be a loss over padding).

How: a forward runs the cell up to each distinct length in turn, each piece from the states
the one before ended with, keeping each sequence's states where it ends (:func:`by_length`).
A kept forward runs over all T (:class:`PaddedKept`) and its final states come from the cell
run again up to each distinct length.  Its backward is the kept forward's backward of the
outputs' cotangents (zero past each end) and the loss, plus the backward of ``d_final``
through those pieces, chained (a piece's δh0 is the previous piece's ``d_final``, docs/vjp.md
"chained chunks"): the VJP is linear in its cotangents, so the two add up to the gradient of
⟨d_outputs, y⟩ + loss + ⟨d_final, h[len]⟩.  The padded steps then reach nothing: their
inputs get a zero gradient.

Cost: one more forward over max(lengths) steps when the kept forward is made, and a forward
and backward over them when a backward is given a ``d_final``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import CallError
from .validate import forward_targets


def check_lengths(lengths, T: int, N: int) -> np.ndarray:
    """``lengths`` as an int array of shape (N,) with 1 <= lengths <= T, or a clear error."""
    lengths = np.asarray(lengths)
    if lengths.shape != (N,) or lengths.dtype.kind not in "iu":
        raise CallError(f"lengths must be {N} integers (one per sequence), got shape {lengths.shape} "
                        f"of {lengths.dtype}")
    if (lengths < 1).any() or (lengths > T).any():
        raise CallError(f"lengths must lie in 1 … {T} (the padded length), got {lengths.min()} … {lengths.max()}")
    return lengths.astype(np.int64)


def lengths_mask(lengths, T: int, dtype="float32") -> np.ndarray:
    """(T, N) mask: 1 for the steps t < lengths[n], 0 for the padding."""
    lengths = np.asarray(lengths)
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)


def checked(step, lengths, T: int, B: int) -> np.ndarray | None:
    """A call's ``lengths`` (None stays None), its error naming the cell."""
    if lengths is None:
        return None
    try:
        return check_lengths(lengths, T, B)
    except CallError as exc:
        raise CallError(f"cell {step.name!r}: {exc}") from None


def padded(lengths, T: int) -> bool:
    """Whether some sequence is shorter than T (else the call is a plain one)."""
    return lengths is not None and int(lengths.min()) < T


def with_mask(step, call, lengths):
    """``call`` whose mask weighs the steps before each sequence's end: the lengths' mask, or
    the call's own, refused where it weighs a step past a sequence's end."""
    if lengths is None:
        return call
    keep = lengths_mask(lengths, call.T, call.mask.dtype if call.mask is not None else np.float64)
    if call.mask is None:
        return replace(call, mask=np.ascontiguousarray(keep))
    past = (call.mask != 0) & (keep == 0)
    if past.any():
        t, b = (int(i) for i in np.argwhere(past)[0])
        raise CallError(f"cell {step.name!r}: mask= weighs step {t} of sequence {b}, past its end "
                        f"(lengths[{b}] = {lengths[b]}): with lengths= the mask must be 0 on the padding")
    return call


def zeroed(arrays: dict, lengths) -> dict:
    """{name: (T, B, n)} with the steps past each sequence's end set to 0 (copies)."""
    if not arrays:
        return arrays
    T = next(iter(arrays.values())).shape[0]
    pad = (np.arange(T)[:, None] >= lengths[None, :])[..., None]
    return {k: np.where(pad, np.zeros((), v.dtype), v) for k, v in arrays.items()}


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


def forward(model, call, lengths, check_finite: bool):
    """``model.forward`` of a checked ``call`` with ``lengths`` shorter than T: the outputs of
    each sequence's own steps, zeros after them (the steps after the longest never run)."""
    reads = forward_targets(model.step)
    targets = {k: call.targets[k] for k in reads} or None
    pieces, final, _, lo = by_length(
        lambda x, h, t: model.forward(call.params, x, h, targets=t, check_finite=check_finite),
        call.inputs, call.h0 or None, targets, lengths)
    out = {}
    for k in pieces[0]:
        o = np.concatenate([p[k] for p in pieces])
        out[k] = np.concatenate([o, np.zeros((call.T - lo,) + o.shape[1:], o.dtype)])
    return zeroed(out, lengths), final


class PaddedKept:
    """A kept forward (``kept``, over all T) of a padded batch: outputs zero past each end,
    final states and their cotangents at each sequence's own end (module docstring).
    ``call``: the forward's checked call (its arrays owned: vjp.owned); ``finals``: compute the
    final states, which a ``kept_from`` does not return."""

    def __init__(self, model, kept, call, lengths, wrt, check_finite, finals=True):
        self.kept, self.loss, self.cot = kept, kept.loss, kept.cot
        self.outputs = None if kept.outputs is None else zeroed(kept.outputs, lengths)
        self.T, self.B = call.T, call.B
        self._model, self._lengths, self._wrt, self._check = model, lengths, wrt, check_finite
        self._params, self._inputs, self._h0 = call.params, call.inputs, call.h0 or None
        reads = forward_targets(model.step)  # a teacher-forced cell's forward reads targets
        self._targets = {k: call.targets[k] for k in reads} if reads and call.targets else None
        self._ends = [int(e) for e in np.unique(lengths)]
        self.final = None if not finals else by_length(
            lambda x, h, t: model.forward(self._params, x, h, targets=t, check_finite=check_finite),
            self._inputs, self._h0, self._targets, lengths)[1]

    def __iter__(self):
        return iter((self.outputs, self.final))

    def backward(self, d_outputs=None, d_final=None):
        from .vjp import check_cotangents  # vjp.py makes these objects
        m, st = self._model, self._model.step
        d_out, d_final = check_cotangents(st, m.dtype, self.T, self.B, d_outputs, d_final, self._check)
        g = self.kept.backward(d_outputs=zeroed(d_out, self._lengths) or None, d_final=None)
        if not d_final:
            return g
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
