"""Gradients in and out on the PTX backend: the hooks of :class:`..vjp.VjpMixin`.

As on the native backend, each :class:`~rnncomp.autodiff.Cotangents` gets a variant: the
same cell and options with that backward (``PtxModel(..., _cot=cot)``), made on first use.
A PTX model owns one device arena, reused by every call, so a forward kept for a later
backward cannot keep its activations there: ``forward(..., keep=True)`` runs the forward
(outputs, final states) and keeps the call; ``backward`` runs forward + backward as one
sequence.  ``vjp`` is one such sequence (no forward is repeated).
"""
from __future__ import annotations

import threading

import numpy as np

from ...errors import CallError
from ..vjp import Gradients, VjpMixin
from .device import any_device, device_vjp

_LOCK = threading.Lock()  # making a variant (a PTX compile) once per cotangent set


class PtxVjp(VjpMixin):
    """Mixin of ``PtxModel``: ``vjp`` and ``forward(..., keep=True)``."""

    def vjp(self, params, inputs, h0=None, *, d_outputs=None, d_final=None, targets=None, mask=None,
            wrt=None, check_finite=True, lengths=None) -> Gradients:
        if any_device(params, inputs, h0, d_outputs, d_final, targets):   # arrays on the GPU (device.py)
            if lengths is not None:
                raise CallError(f"cell {self.step.name!r}: a device-resident vjp takes no lengths=: "
                                "use host arrays for a padded batch")
            return device_vjp(self, params, inputs, h0, d_outputs, d_final, targets, mask, wrt)
        return super().vjp(params, inputs, h0, d_outputs=d_outputs, d_final=d_final, targets=targets, mask=mask,
                           wrt=wrt, check_finite=check_finite, lengths=lengths)

    def _variant(self, cot):
        with _LOCK:
            v = self._variants.get(cot)
            if v is None:
                v = self._variants[cot] = type(self)(self._cell, self.dtype, **self._options, _cot=cot)
            return v

    def _vjp_forward(self, call, w, cot):
        v = self._variant(cot)
        if w is None:
            outs, final = v._forward(call)
            loss = None
        else:  # the cost is downloaded by the training sequence only (it also brings the outputs)
            loss, final, outs = v._train_outputs(call, w)
        return (v, call, w), outs, final, loss

    def _vjp_backward(self, state, d_out, d_fin):
        v, call, w = state
        _, grads, _, d_in, d_h0 = v._train(call, w, d_out, d_fin)
        return grads, self._all_inputs(v, call, d_in), d_h0

    def _vjp_adopt(self, call, w, cot, arrays):  # nothing exported: the backward runs both anyway
        return self._variant(cot), call, w

    def _vjp_once(self, call, w, cot, d_out, d_fin):
        v = self._variant(cot)
        loss, grads, _, d_in, d_h0 = v._train(call, w, d_out, d_fin)
        return grads, self._all_inputs(v, call, d_in), d_h0, loss

    @staticmethod
    def _all_inputs(v, call, d_in):
        """δx for every input in ``wrt`` (zeros where no gradient reaches an input)."""
        return {x: d_in[x] if x in d_in else np.zeros((call.T, call.B, n), v.dtype)
                for x, n in v.step.inputs.items() if x in v.bwd.cot.inputs}
