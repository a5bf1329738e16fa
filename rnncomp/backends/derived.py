"""A compiled model of a cell with derived weights or constants, for every backend.

The backend compiles the plain cell (:class:`rnncomp.weights.DerivedWeights`: derived
weights and constants are ordinary parameters there); this model computes them before each
call and chains their gradients back after it, so it takes and returns the parameters the
user declared.  Everything else (validation, the time loop, memory schedules) is the inner
model's, and so is what the model says about itself (:data:`INSPECTION`, ``memory``): the
derived weights are computed once per call, outside the per-step buffers, so the plan, its
bytes and the code are the plain cell's.
"""
from __future__ import annotations

import re

import numpy as np

from ..initializers import init_all, specs as init_specs
from ..show import TextShown
from .validate import _array, _check_names
from .vjp import Gradients, own

#: What a compiled model says about itself, read through to the wrapped one (docs/memory.md,
#: docs/inspect.md); a name its backend does not offer is an AttributeError naming the backend.
INSPECTION = ("memory", "memory_plan", "activation_bytes", "ir", "asm", "lib", "threads", "profile_work",
              "ptx", "plan")


class DerivedModel(TextShown):
    """``rc.compile`` of a cell with derived weights: same calls as the backend's model."""

    def __init__(self, cell, backend: str, dtype, options: dict):
        from ..compile import compile as rc_compile
        from ..weights import DerivedWeights
        self.weights = DerivedWeights(cell)
        self.inner = rc_compile(self.weights.plain, backend=backend, dtype=dtype, **options)
        self.backend, self.dtype, self.step = backend, self.inner.dtype, cell.step
        self.cell, self._options = cell, dict(options)
        self._param_specs_init = {n: s for n, s in init_specs(cell).items()}

    def init_params(self, seed: int = 0) -> dict:
        return init_all(self._param_specs_init, seed, self.dtype)

    def _full(self, params, kw):
        """The inner model's parameters, after the declared ones are checked here (their names
        are the user's, not the plain cell's; finite unless the call's ``check_finite`` is false)."""
        name = self.cell.name
        if not isinstance(params, dict):
            from ..errors import CallError
            raise CallError(f"cell {name!r}: params must be a dict of arrays (from model.init_params)")
        _check_names(name, "params", params, list(self.weights.params))
        check = kw.get("check_finite", True)
        checked = {n: _array(name, f"param {n!r}", params[n], s if isinstance(s, tuple) else (s,), self.dtype, check)
                   for n, s in self.weights.params.items()}
        return checked, self.weights.expand(checked, self.dtype, check)

    def _grads(self, checked, grads):
        return self.weights.pullback(checked, grads, self.dtype)

    # ------------------------------------------------------------------ the wrapped model's own answers
    def __getattr__(self, name):  # only for names not found on the wrapper itself
        inner = self.__dict__.get("inner")
        if name not in INSPECTION or inner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self._inner_attr(name)

    def _inner_attr(self, name):
        try:
            return getattr(self.inner, name)
        except AttributeError:
            raise AttributeError(f"cell {self.cell.name!r}: {name} is not offered by the {self.backend!r} "
                                 f"backend's model (the native backend's is)") from None

    @property
    def memory(self):
        """The wrapped model's ``memory=`` schedule; assigning one changes the plan its calls run."""
        return self._inner_attr("memory")

    @memory.setter
    def memory(self, value):
        self._inner_attr("memory")
        self.inner.memory = value

    # ------------------------------------------------------------------ the calls
    def forward(self, params, inputs, h0=None, *, keep=False, **kw):
        checked, full = self._full(params, kw)
        out = self.inner.forward(full, inputs, h0, keep=keep, **kw)
        # a kept forward's backward pulls the gradients back through the declared parameters:
        # it owns copies of them, as the inner kept forward owns its arguments (vjp.owned)
        return _Kept(self, own(checked), out) if keep else out

    def forward_keep(self, params, inputs, h0=None, **kw):
        return self.forward(params, inputs, h0, keep=True, **kw)

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, **kw):
        checked, full = self._full(params, kw)
        loss, grads, final = self.inner.loss_and_grad(full, inputs, targets, h0, mask, **kw)
        return loss, self._grads(checked, grads), final

    def residual_shapes(self, T: int, B: int, **kw) -> list:
        """The wrapped model's: the derived weights are inputs of the backward, not residuals."""
        return self.inner.residual_shapes(T, B, **kw)

    def kept_from(self, residuals, params, inputs, h0=None, **kw):
        """The wrapped model's ``kept_from``, called with the weights derived from ``params``."""
        checked, full = self._full(params, kw)
        return _Kept(self, checked, self.inner.kept_from(residuals, full, inputs, h0, **kw))

    def vjp(self, params, inputs, h0=None, **kw) -> Gradients:
        checked, full = self._full(params, kw)
        g = self.inner.vjp(full, inputs, h0, **kw)
        return Gradients(self._grads(checked, g.params), g.inputs, g.h0, g.loss)

    def _text(self) -> str:
        """The inner model's, with the parameters counted as declared (the inner model's count
        includes the derived weights and the constants, which are not trained)."""
        extra = ", ".join(n.replace("%", "") for n in self.weights.outs)
        declared = sum(int(np.prod(s)) for s in self.weights.params.values())
        text = re.sub(r"; \d+ parameters\)", f"; {declared} parameters)", self.inner._text(), count=1)
        return text.replace("<", "<derived weights (" + extra + ") over ", 1)

    def __reduce__(self):
        return (_recompile, (self.cell, self.backend, self.dtype.name, self._options))


def _recompile(cell, backend, dtype, options):
    return DerivedModel(cell, backend, np.dtype(dtype), options)


class _Kept:
    """A kept forward of the inner model whose backward returns the declared parameters' gradients."""

    def __init__(self, model, checked, kept):
        self._model, self._checked, self._kept = model, checked, kept
        self.outputs, self.final, self.loss = kept.outputs, kept.final, kept.loss

    def __iter__(self):
        return iter((self.outputs, self.final))

    def backward(self, d_outputs=None, d_final=None) -> Gradients:
        g = self._kept.backward(d_outputs, d_final)
        return Gradients(self._model._grads(self._checked, g.params), g.inputs, g.h0, g.loss)

    def residuals(self) -> list:
        return self._kept.residuals()

    def free(self) -> None:
        self._kept.free()
