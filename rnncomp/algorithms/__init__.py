"""Gradient algorithms beyond BPTT, derived from the same declaration (issue #20).

* :class:`RTRL` — exact sensitivities carried forward (:mod:`.rtrl`);
* :class:`SnAp` — the sensitivities n steps of the cell's structure reach (:mod:`.snap`);
* :class:`UORO` — an unbiased rank-one estimate (:mod:`.uoro`);
* :class:`DNI` — truncated BPTT with a synthetic gradient at each window's end (:mod:`.dni`);
* :class:`BPTT` — back-propagation over each window of ``fit_online`` (:mod:`.online`);
* :func:`compile_fixed_point` — settle to a fixed point, recurrent backprop (:mod:`.fixed_point`);
* :func:`sequence_grad` — a whole sequence's gradient accumulated forward by any of them;
* :mod:`.compiled` — which executor runs RTRL / SnAp: NumPy, or native (``backend="native"``).
"""
from .base import Algorithm, SensitivityMemoryError, sequence_grad
from .dni import DNI
from .fixed_point import FixedPointError, compile_fixed_point
from .online import BPTT
from .rtrl import RTRL
from .snap import SnAp
from .uoro import UORO

__all__ = ["Algorithm", "DNI", "compile_fixed_point", "FixedPointError", "BPTT", "RTRL", "SnAp", "UORO", "SensitivityMemoryError", "sequence_grad"]
