"""``rc.compile``: pick a backend for a cell."""
from __future__ import annotations

BACKENDS = ("numpy", "native", "ptx")


def compile(cell, backend: str = "numpy", dtype: str = "float64", **options):
    """Compile ``cell`` for ``backend`` (``"numpy"`` reference, ``"native"`` LLVM CPU, ``"ptx"``).

    The returned model has ``forward(params, inputs, h0=None, *, targets=None)`` (targets only
    for a cell whose outputs or state updates read one: teacher forcing) and
    ``loss_and_grad(params, inputs, targets, h0=None, mask=None)``, ``init_params(seed)``
    (in its dtype); it pickles (and is compiled again where it is unpickled).
    """
    from .compose import Composition
    if isinstance(cell, Composition):  # a stack or bidirectional layer: its cells, compiled and chained
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from .compose.model import ComposedModel
        return ComposedModel(cell, backend, dtype, **options)
    from .backends.validate import float_dtype
    if float_dtype(dtype) == "float32" and hasattr(cell, "updates"):  # float64: checked as it is declared
        from .cell_check import check_constants_fit
        check_constants_fit(cell, "float32")
    if backend in BACKENDS and any(d.kind in ("const", "weight") for d in cell.decls.values()):
        from .backends.derived import DerivedModel  # computed before the loop, shared by every backend
        return DerivedModel(cell, backend, dtype, options)
    if backend == "numpy":
        if options:
            raise TypeError(f"backend 'numpy' takes no options, got {sorted(options)}")
        from .backends.numpy import NumpyModel
        model = NumpyModel(cell, dtype)
    elif backend == "native":
        from .backends.native import NativeModel
        model = NativeModel(cell, dtype, **options)
    elif backend == "ptx":
        from .backends.ptx import PtxModel
        model = PtxModel(cell, dtype, **options)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model._made_by_compile(cell, options)  # pickling compiles it again from these
    return model
