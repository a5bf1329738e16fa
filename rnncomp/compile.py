"""``rc.compile``: pick a backend for a cell."""
from __future__ import annotations

BACKENDS = ("numpy", "native", "ptx")


def compile(cell, backend: str = "numpy", dtype: str = "float64", **options):
    """Compile ``cell`` for ``backend`` (``"numpy"`` reference, ``"native"`` LLVM CPU, ``"ptx"``).

    The returned model has ``forward(params, inputs, h0=None, *, targets=None)`` (targets only
    for a cell whose outputs or state updates read one: teacher forcing) and
    ``loss_and_grad(params, inputs, targets, h0=None, mask=None)``.
    """
    if backend == "numpy":
        if options:
            raise TypeError(f"backend 'numpy' takes no options, got {sorted(options)}")
        from .backends.numpy import NumpyModel
        return NumpyModel(cell, dtype)
    if backend == "native":
        from .backends.native import NativeModel
        return NativeModel(cell, dtype, **options)
    if backend == "ptx":
        from .backends.ptx import PtxModel
        return PtxModel(cell, dtype, **options)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
