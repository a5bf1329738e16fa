"""Gradients in and out: the part of the VJP call contract every backend shares.

A backend implements two hooks and inherits :class:`VjpMixin`'s public methods:

    _vjp_forward(call, w, cot)             the forward over ``call``, keeping what the backward
                                           of the cotangents ``cot`` needs → a backend state
    _vjp_backward(state, d_outputs, d_final)   that backward → (grads, δinputs, δh0)

and, to let a kept forward's buffers live outside it (a JAX layer's residuals), three more
whose defaults export nothing and so make the backward run the forward again:

    _vjp_residual_shapes(T, B, cot)        the shapes of the buffers a kept forward exports
    _vjp_export(state)                     those buffers (arrays sharing the kept memory)
    _vjp_adopt(call, w, cot, arrays)       a backend state whose backward reads ``arrays``

Everything else -- which backward program a call needs (:class:`~rnncomp.autodiff.Cotangents`),
checking the cotangents the caller passes, the weighted loss, learned initial states, the
kept object and its lifetime -- is here, once.

    >>> import numpy as np, rnncomp as rc
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> model = rc.compile(cell, backend="numpy")
    >>> x = np.ones((4, 1, 2))
    >>> fwd = model.forward(cell.init_params(seed=0), {"x": x}, keep=True)
    >>> res = fwd.backward(d_outputs={"y": np.ones_like(fwd.outputs["y"])})
    >>> res.inputs["x"].shape, res.h0["h"].shape
    ((4, 1, 2), (1, 3))
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from ..autodiff import Cotangents
from ..errors import CallError
from . import lengths as padding
from .validate import Call, _array, check_call, check_forward_call, step_weights


@dataclass
class Gradients:
    """What a backward returns: cotangents of everything that came in.

    ``params``: {name: array like the parameter}; ``inputs``: {name: (T, B, n)} for the
    inputs differentiated (``wrt``); ``h0``: {state: (B, n)}, the cotangent of each
    initial state (whether it came from ``h0``, a learned initial state or zeros);
    ``loss``: the cell's loss when targets were given, else None."""

    params: dict
    inputs: dict
    h0: dict
    loss: float | None = None


def names_of(step, kind: str, given) -> tuple:
    """``given`` (a name, or an iterable of names) as a tuple of str; anything else is a
    CallError naming ``kind``."""
    if isinstance(given, str):
        return (given,)
    try:
        names = tuple(given)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise CallError(f"cell {step.name!r}: {kind} must be a name or a list of names, got {given!r}")
    return names


def resolve_wrt(step, wrt) -> tuple:
    """The inputs to differentiate: ``None`` = every input, else names (a str or an iterable)."""
    if wrt is None:
        return tuple(step.inputs)
    names = names_of(step, "wrt", wrt)
    bad = [n for n in names if n not in step.inputs]
    if bad:
        raise CallError(f"cell {step.name!r}: wrt names {', '.join(map(repr, bad))}, which "
                        f"{'is' if len(bad) == 1 else 'are'} not an input; inputs: "
                        f"{', '.join(map(repr, step.inputs)) or 'none'}")
    return tuple(n for n in step.inputs if n in names)


def _checked_dict(step, kind, given, expected: dict, shape_of, dtype, check_finite=True):
    """``given`` as {name: contiguous array}: known names, right shapes and dtype, finite
    (unless ``check_finite`` is false); None values dropped (a zero cotangent)."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise CallError(f"cell {step.name!r}: {kind} must be a dict keyed by "
                        f"{', '.join(map(repr, expected)) or '(none declared)'}, got {type(given).__name__}")
    unknown = sorted(n for n in given if n not in expected)
    if unknown:
        what = "output" if kind == "d_outputs" else "state"
        raise CallError(f"cell {step.name!r}: {kind} names {', '.join(map(repr, unknown))}, which "
                        f"{'is' if len(unknown) == 1 else 'are'} not a{'n' if what == 'output' else ''} "
                        f"{what} of the cell; {what}s: {', '.join(map(repr, expected)) or 'none'}")
    return {n: _array(step.name, f"{kind}[{n!r}]", a, shape_of(n), dtype, check_finite)
            for n, a in given.items() if a is not None}


def check_cotangents(step, dtype, T, B, d_outputs, d_final, check_finite=True):
    """Validated external cotangents: ({output: (T, B, n)}, {state: (B, n)}).  A NaN or inf
    in one is a CallError unless ``check_finite`` is false (the forward's: a framework layer
    lets them flow through, as its own ops do, for its GradScaler or anomaly mode to see)."""
    d_out = _checked_dict(step, "d_outputs", d_outputs, step.outputs,
                          lambda n: (T, B, step.outputs[n]), dtype, check_finite)
    d_fin = _checked_dict(step, "d_final", d_final, step.states, lambda n: (B, step.states[n]), dtype,
                          check_finite)
    return d_out, d_fin


class Kept:
    """``model.forward(..., keep=True)``: outputs, final states, and what the backward needs.

    ``outputs`` {name: (T, B, n)}, ``final`` {state: (B, n)}, ``loss`` (when targets were
    given, else None).  Unpacks like ``forward``'s ``(outputs, final)``.

    :meth:`backward` may be called more than once (each call starts from the kept forward;
    nothing is recomputed unless a ``memory=`` schedule said not to keep every step), also
    from several threads (they take turns: the kept buffers are one set).
    :meth:`free` (or dropping the object) gives the kept buffers back; a backward after
    :meth:`free` is an error.  The backward checks its cotangents as the forward checked its
    arguments: finite unless the forward had ``check_finite=False``."""

    def __init__(self, model, state, outputs, final, loss, cot, T, B, check_finite=True):
        self._model, self._state, self._check_finite = model, state, check_finite
        self._lock = threading.Lock()
        self.outputs, self.final, self.loss = outputs, final, loss
        self.cot, self.T, self.B = cot, T, B

    def __iter__(self):
        return iter((self.outputs, self.final))

    def __repr__(self):
        st = self._model.step
        kept = "freed" if self._state is None else "kept"
        return (f"<rnncomp forward of cell {st.name!r} on {self._model.backend}: T={self.T}, B={self.B}, "
                f"{kept}; backward(d_outputs={{{', '.join(map(repr, self.cot.outputs))}}}, "
                f"d_final={{{', '.join(map(repr, st.states))}}})>")

    def backward(self, d_outputs=None, d_final=None) -> Gradients:
        """Cotangents of the outputs ({name: (T, B, n)}; any subset, None = 0) and of the final
        states ({state: (B, n)}) in; :class:`Gradients` out (the loss's gradient included when
        the forward was given targets)."""
        model, st = self._model, self._model.step
        if self._state is None:
            raise CallError(f"cell {st.name!r}: backward on a forward whose buffers were freed "
                            "(call forward(..., keep=True) again)")
        d_out, d_fin = check_cotangents(st, model.dtype, self.T, self.B, d_outputs, d_final, self._check_finite)
        missing = [o for o in d_out if o not in self.cot.outputs]
        if missing:
            raise CallError(f"cell {st.name!r}: d_outputs for {', '.join(map(repr, missing))}, but this "
                            f"forward was kept for cotangents of {list(self.cot.outputs) or 'no output'} only")
        with self._lock:
            if self._state is None:
                raise CallError(f"cell {st.name!r}: backward on a forward whose buffers were freed")
            grads, d_in, d_h0 = model._vjp_backward(self._state, d_out, d_fin)
        return Gradients(grads, d_in, d_h0, self.loss)

    def residuals(self) -> list:
        """The kept buffers the backward reads, as arrays sharing their memory (valid until
        :meth:`free`; shapes: ``model.residual_shapes``).  Copied anywhere and handed to
        ``model.kept_from`` unchanged, they make a kept forward whose backward recomputes
        nothing.  Empty where the backend keeps nothing it can export (the PTX and NumPy
        backends) or a ``memory=`` schedule does not keep every step."""
        with self._lock:
            if self._state is None:
                raise CallError(f"cell {self._model.step.name!r}: residuals of a forward whose buffers were freed")
            return list(self._model._vjp_export(self._state))

    def free(self) -> None:
        """Give the kept buffers back now (a later :meth:`backward` is an error)."""
        with self._lock:
            state, self._state = self._state, None
        if state is not None:
            self._model._vjp_release(state)

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to give back
            pass


def check_residual_count(where: str, residuals, shapes, T: int, B: int) -> None:
    """``kept_from``'s ``residuals``: a list or tuple of as many arrays as ``shapes`` says."""
    if not isinstance(residuals, (list, tuple)) or len(residuals) != len(shapes):
        got = len(residuals) if isinstance(residuals, (list, tuple)) else type(residuals).__name__
        raise CallError(f"{where}: kept_from needs the {len(shapes)} residuals of a (T={T}, B={B}) forward "
                        f"(model.residual_shapes), got {got}")


def own(arrays: dict | None) -> dict | None:
    """``{name: array}`` copied (None stays None): arrays the caller may reuse once a call returns."""
    return None if arrays is None else {n: np.array(a) for n, a in arrays.items()}


def owned(call: Call) -> Call:
    """``call`` with arrays of its own: a kept forward's backward may read the arguments (the
    inputs of a weight gradient, h0, the parameters) after the caller has reused their memory,
    e.g. loaded the next batch into ``x``.  Its cost, one copy of the arguments, is small next to
    what a forward keeps for every step."""
    return replace(call, params=own(call.params), inputs=own(call.inputs), targets=own(call.targets),
                   h0=own(call.h0), mask=None if call.mask is None else np.array(call.mask))


class VjpMixin:
    """``forward(..., keep=True)`` and ``vjp``, from a backend's two hooks (module docstring)."""

    def _vjp_call(self, params, inputs, h0, targets, mask, check_finite, lengths=None):
        """(the checked call, its step weights or None without targets, the checked lengths or
        None): with ``lengths`` the loss weighs only the steps before each end (lengths.py)."""
        st, dt = self.step, self.dtype
        if targets is None:
            if mask is not None:
                raise CallError(f"cell {st.name!r}: mask= weighs the cell's loss, so it needs targets= too")
            call = check_forward_call(st, dt, params, inputs, None, h0, check_finite=check_finite)
            return call, None, padding.checked(st, lengths, call.T, call.B)
        if not st.has_loss:
            raise CallError(f"cell {st.name!r}: targets given but the cell has no loss "
                            "(declare one with cell.loss, or pass targets=None)")
        call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True,
                          check_finite=check_finite)
        lengths = padding.checked(st, lengths, call.T, call.B)
        call = padding.with_mask(st, call, lengths)
        return call, np.ascontiguousarray(step_weights(call, dt)), lengths

    def _cotangents(self, loss: bool, wrt, outputs):
        """The :class:`Cotangents` a kept forward is kept for: ``outputs`` (None: all) may
        receive a cotangent, the inputs in ``wrt`` (None: all) get one."""
        st = self.step
        if outputs is None:
            outs = tuple(st.outputs)
        else:
            named = names_of(st, "outputs", outputs)
            _checked_dict(st, "d_outputs", dict.fromkeys(named), st.outputs, None, self.dtype)
            outs = tuple(o for o in st.outputs if o in named)
        return Cotangents(loss=loss, outputs=outs, inputs=resolve_wrt(st, wrt), final=True)

    def _keep(self, call, w, cot, check_finite=True):
        state, outputs, final, loss = self._vjp_forward(call, w, cot)
        return Kept(self, state, outputs, final, loss, cot, call.T, call.B, check_finite)

    def forward_keep(self, params, inputs, h0=None, *, targets=None, mask=None, wrt=None,
                     outputs=None, check_finite=True, lengths=None) -> Kept:
        """The forward that ``forward(..., keep=True)`` runs (see :class:`Kept`).

        ``wrt``: the inputs whose cotangents the backward returns (default: every input;
        ``()`` for none: their products are then never computed).  ``outputs``: the
        outputs that may receive a cotangent (default: every output).  With ``targets``
        the backward adds the gradient of the cell's loss (``mask``: its per-step weights).
        ``lengths`` (B,): a padded batch (backends/lengths.py)."""
        call, w, lengths = self._vjp_call(params, inputs, h0, targets, mask, check_finite, lengths)
        call, cot = owned(call), self._cotangents(w is not None, wrt, outputs)
        return self._padded(self._keep(call, w, cot, check_finite), call, lengths, cot, check_finite, finals=True)

    def _keep_carries(self, params, inputs, h0=None, targets=None) -> Kept:
        """A kept forward whose backward computes the initial states' cotangent alone: no
        parameter gradients (they come back zero) and no input cotangents.  For an iteration
        that needs only the carried adjoints (recurrent backprop's adjoint fixed point and
        state Jacobian, ``algorithms/settle_exec.py``): the gradient products are most of a
        backward's work."""
        call, w, _ = self._vjp_call(params, inputs, h0, targets, None, True)
        return self._keep(owned(call), w, Cotangents(loss=w is not None, final=True, params=False))

    def _padded(self, kept, call, lengths, cot, check_finite, finals):
        """``kept``, or with lengths shorter than T a :class:`~.lengths.PaddedKept` around it."""
        if not padding.padded(lengths, call.T):
            return kept
        try:
            return padding.PaddedKept(self, kept, call, lengths, cot.inputs, check_finite, finals)
        except BaseException:
            kept.free()
            raise

    def residual_shapes(self, T: int, B: int, *, targets: bool = False, wrt=None, outputs=None) -> list:
        """The shapes of what :meth:`Kept.residuals` returns for a (T, B) forward kept with
        these options (``targets``: whether it was given targets), all of the model's dtype:
        the buffers a caller holds between the forward and :meth:`kept_from`."""
        for what, n in (("T", T), ("B", B)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise CallError(f"cell {self.step.name!r}: residual_shapes: {what} must be a positive int, got {n!r}")
        return [tuple(s) for s in self._vjp_residual_shapes(T, B, self._cotangents(targets, wrt, outputs))]

    def kept_from(self, residuals, params, inputs, h0=None, *, targets=None, mask=None, wrt=None,
                  outputs=None, check_finite=True, lengths=None) -> Kept:
        """A kept forward made from the buffers of another one (:meth:`Kept.residuals`, kept
        by the caller and unchanged since) and that forward's arguments: its ``backward``
        reads them in place (no copy) and recomputes nothing.  Its ``outputs``, ``final``
        and ``loss`` are None (they were the other forward's results).  The caller keeps the
        arrays alive and unchanged until the backward has returned."""
        call, w, lengths = self._vjp_call(params, inputs, h0, targets, mask, check_finite, lengths)
        cot = self._cotangents(w is not None, wrt, outputs)
        st, shapes = self.step, self._vjp_residual_shapes(call.T, call.B, cot)
        check_residual_count(f"cell {st.name!r}", residuals, shapes, call.T, call.B)
        arrays = [_array(st.name, f"residual {i}", a, s, self.dtype, False)
                  for i, (a, s) in enumerate(zip(residuals, shapes))]
        kept = Kept(self, self._vjp_adopt(call, w, cot, arrays), None, None, None, cot, call.T, call.B,
                    check_finite)
        return self._padded(kept, owned(call) if padding.padded(lengths, call.T) else call, lengths, cot,
                            check_finite, finals=False)

    def vjp(self, params, inputs, h0=None, *, d_outputs=None, d_final=None, targets=None, mask=None,
            wrt=None, check_finite=True, lengths=None) -> Gradients:
        """Gradients in and out in one call: cotangents of the outputs (``d_outputs``
        {name: (T, B, n)}, any subset) and of the final states (``d_final`` {state: (B, n)})
        in; the gradients of the parameters, of the inputs in ``wrt`` (default: all) and of
        the initial states out (:class:`Gradients`).  With ``targets`` the gradient of the
        cell's loss (the masked mean of its per-step costs) is added, and ``.loss`` set.

        Only the outputs given a cotangent are differentiated, and only the inputs in ``wrt``.
        ``lengths`` (B,): a padded batch (backends/lengths.py)."""
        call, w, lengths = self._vjp_call(params, inputs, h0, targets, mask, check_finite, lengths)
        d_out, d_fin = check_cotangents(self.step, self.dtype, call.T, call.B, d_outputs, d_final, check_finite)
        if padding.padded(lengths, call.T):  # d_final at each sequence's end: the kept forward's pieces
            cot = self._cotangents(w is not None, wrt, tuple(d_out))
            kept = self._padded(self._keep(call, w, cot, check_finite), call, lengths, cot, check_finite,
                                finals=False)
            try:
                return kept.backward(d_out, d_fin)
            finally:
                kept.free()
        cot = Cotangents(loss=w is not None, outputs=tuple(o for o in self.step.outputs if o in d_out),
                         inputs=resolve_wrt(self.step, wrt), final=True)
        grads, d_in, d_h0, loss = self._vjp_once(call, w, cot, d_out, d_fin)
        return Gradients(grads, d_in, d_h0, loss)

    def _vjp_residual_shapes(self, T, B, cot) -> list:
        """Shapes of the buffers :meth:`_vjp_export` returns: none unless a backend says."""
        return []

    def _vjp_export(self, state) -> list:
        return []

    def _vjp_adopt(self, call, w, cot, arrays):
        """A state whose backward reads ``arrays``; with nothing exported, the forward again."""
        return self._vjp_forward(call, w, cot)[0]

    def _vjp_release(self, state) -> None:
        """A kept forward's buffers are no longer needed (a backend may reuse them)."""

    def _vjp_once(self, call, w, cot, d_out, d_fin):
        """A forward kept for one backward, then that backward (a backend may do it in one go)."""
        kept = self._keep(call, w, cot)
        try:
            grads, d_in, d_h0 = self._vjp_backward(kept._state, d_out, d_fin)
        finally:
            kept.free()
        return grads, d_in, d_h0, kept.loss

