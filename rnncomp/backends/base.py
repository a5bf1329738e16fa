"""The backend contract: what every model ``rc.compile`` returns answers, and the part of a
call every backend shares.

A backend's model subclasses :class:`BackendModel` and implements four hooks on calls that
are already checked (:class:`~.validate.Call`: arrays of the model's dtype and the right
shapes, finite unless ``check_finite=False``):

    _forward_call(call)                  → (outputs {name: (T, B, n)}, final states {name: (B, n)})
    _loss_and_grad_call(call, w)         → (loss, grads {param: array}, final states)
    _vjp_forward(call, w, cot)           → (state, outputs, final states, loss or None)
    _vjp_backward(state, d_out, d_final) → (grads, {input: δx}, {state: δh0})

(``w``: the step weights (T, B) of the loss, :func:`~.validate.step_weights`; ``cot``: the
:class:`~rnncomp.autodiff.Cotangents` a kept forward is for.)  The public methods --
``forward``, ``forward_keep``, ``loss_and_grad``, ``vjp``, ``init_params`` -- are written
once, here and in :class:`~.vjp.VjpMixin`: the checks of the arguments, the named errors,
the step weights of a mask, ``keep=True``.  A backend may take a training call before the
checks with :meth:`BackendModel._loss_and_grad_fast` (the native backend's thin path), as
long as it answers None whenever a check could fail.

Models that wrap another model (derived weights, ``backends/derived.py``; stacks and
bidirectional layers, ``compose/model.py``) do not subclass this class, but their public
methods accept every argument of :data:`CONTRACT` (tests/test_backend_contract.py).

    >>> import numpy as np, rnncomp as rc
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> model = rc.compile(cell, backend="numpy")
    >>> isinstance(model, BackendModel)
    True
    >>> p, x, y = model.init_params(seed=0), {"x": np.ones((4, 1, 2))}, {"target": np.zeros((4, 1, 1))}
    >>> loss, grads, final = model.loss_and_grad(p, x, y)
    >>> sorted(grads) == sorted(cell.step.params), final["h"].shape
    (True, (1, 3))
"""
from __future__ import annotations

import abc

import numpy as np

from ..errors import CallError
from . import lengths as padding
from .common import CompiledModel
from .validate import check_call, check_forward_call, step_weights
from .vjp import VjpMixin

#: The public methods of every compiled model; the signatures are :class:`BackendModel`'s.
CONTRACT = ("forward", "forward_keep", "loss_and_grad", "vjp", "init_params")


class BackendModel(VjpMixin, CompiledModel, abc.ABC):
    """A cell compiled for one backend (module docstring).  Subclasses set ``backend``
    (its name in ``rc.compile``), ``dtype`` (a NumPy float dtype) and ``step`` (the
    cell's lowered step, :mod:`rnncomp.lower`)."""

    backend: str

    def forward(self, params, inputs, h0=None, *, targets=None, keep=False, mask=None, wrt=None,
                outputs=None, check_finite=True, lengths=None):
        """Run the cell over the sequence: ``(outputs {name: (T, B, n)}, final states {name: (B, n)})``.

        ``targets``: only for a cell whose outputs or state updates read a target (teacher
        forcing).  ``keep=True``: also keep what a backward needs and return a
        :class:`~.vjp.Kept` (``.outputs``, ``.final``, ``.backward(...)``; ``mask``, ``wrt``
        and ``outputs`` as in :meth:`forward_keep`).  ``lengths`` (B,): a padded batch, each
        sequence's final states after its own last step, its outputs after it zeros
        (:mod:`.lengths`)."""
        if keep:
            return self.forward_keep(params, inputs, h0, targets=targets, mask=mask, wrt=wrt,
                                     outputs=outputs, check_finite=check_finite, lengths=lengths)
        if targets is None and lengths is None:
            out = self._forward_fast(params, inputs, h0, check_finite)
            if out is not None:
                return out
        call = check_forward_call(self.step, self.dtype, params, inputs, targets, h0, check_finite=check_finite)
        lengths = padding.checked(self.step, lengths, call.T, call.B)
        if padding.padded(lengths, call.T):
            return padding.forward(self, call, lengths, check_finite)
        return self._forward_call(call)

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, *, check_finite=True,
                      lengths=None):
        """Loss (masked mean of the per-step costs), gradients of every parameter, final states.
        ``lengths`` (B,): a padded batch, the loss over the steps before each sequence's end,
        the final states after it (:mod:`.lengths`)."""
        st, dt = self.step, self.dtype
        if not st.has_loss:
            raise CallError(f"cell {st.name!r} has no loss (declare one with cell.loss)")
        out = None if lengths is not None else self._loss_and_grad_fast(params, inputs, targets, h0, mask,
                                                                         check_finite)
        if out is not None:
            return out
        call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True,
                          check_finite=check_finite)
        lengths = padding.checked(st, lengths, call.T, call.B)
        call = padding.with_mask(st, call, lengths)
        loss, grads, final = self._loss_and_grad_call(call, np.ascontiguousarray(step_weights(call, dt)))
        if padding.padded(lengths, call.T):  # the loss never reads the padding: only the final states change
            final = padding.forward(self, call, lengths, check_finite)[1]
        return loss, grads, final

    # ------------------------------------------------------------------ the hooks
    def _forward_fast(self, params, inputs, h0, check_finite):
        """A forward call without targets taken before the checks, or None (the checked path)."""
        return None

    def _loss_and_grad_fast(self, params, inputs, targets, h0, mask, check_finite):
        """A training call taken before the checks, or None (the checked path takes it)."""
        return None

    @abc.abstractmethod
    def _forward_call(self, call):
        """(outputs, final states) of a checked call."""

    @abc.abstractmethod
    def _loss_and_grad_call(self, call, w):
        """(loss, grads, final states) of a checked call with targets and step weights ``w``."""

    @abc.abstractmethod
    def _vjp_forward(self, call, w, cot):
        """The forward of a checked call kept for the backward of ``cot``: (state, outputs,
        final states, loss or None)."""

    @abc.abstractmethod
    def _vjp_backward(self, state, d_out, d_fin):
        """The backward of a kept forward: (grads, {input: δx}, {state: δh0})."""
