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
    from .checks import a_cell
    from .compose import Composition
    a_cell("rc.compile", cell)
    if isinstance(cell, Composition):  # a stack or bidirectional layer: its cells, compiled and chained
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from .compose.model import ComposedModel
        return ComposedModel(cell, backend, dtype, **options)
    if not cell.step.inputs and not cell.step.targets:  # every call reads T from its sequences
        from .errors import CellError
        raise CellError(f"cell {cell.name!r} reads no input and no target, so a call could not say how many "
                        "steps to run: declare an input (a size-1 input of zeros drives an autonomous "
                        "recurrence) or a target")
    from .backends.validate import float_dtype
    if float_dtype(dtype) == "float32" and hasattr(cell, "updates"):  # float64: checked as it is declared
        from .cell_check import check_constants_fit
        check_constants_fit(cell, "float32")
    if backend in BACKENDS:
        _check_options(backend, options)
    if backend in BACKENDS and any(d.kind in ("const", "weight") for d in cell.decls.values()):
        from .backends.derived import DerivedModel  # computed before the loop, shared by every backend
        return DerivedModel(cell, backend, dtype, options)
    if backend == "numpy":
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


def _check_options(backend: str, options: dict) -> None:
    """An option ``backend`` does not take is named with the ones it does (it was the
    constructor's "NativeModel.__init__() got an unexpected keyword argument")."""
    if backend == "numpy":
        if options:
            raise TypeError(f"backend 'numpy' takes no options, got {sorted(options)}")
        return
    import inspect
    if backend == "native":
        from .backends.native import NativeModel as model
    else:
        from .backends.ptx import PtxModel as model
    params = inspect.signature(model.__init__).parameters
    known = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and not n.startswith("_")]
    bad = sorted(o for o in options if o not in known)
    if bad:
        raise TypeError(f"rc.compile(backend={backend!r}): unknown option{'s' if len(bad) > 1 else ''} "
                        f"{', '.join(map(repr, bad))}; its options: {', '.join(known)}")
    _check_values(backend, options, {o: params[o].default for o in options})


def _check_values(backend: str, options: dict, defaults: dict) -> None:
    """A switch is True or False (``hoist="no"`` switched the pass on); the PTX launch numbers
    are what a launch takes (``block=0`` divided by zero at the first call on a GPU, ``features=3``
    failed inside subprocess)."""
    import numpy as np

    from .errors import ArgumentError
    where = f"rc.compile(backend={backend!r})"
    for o, v in options.items():
        tri = o in ("grad_after", "persistent")  # None: chosen by the backend
        if (isinstance(defaults[o], bool) or tri) and not (isinstance(v, (bool, np.bool_)) or (tri and v is None)):
            raise ArgumentError(f"{where}: {o} must be True or False{' or None (chosen for you)' if tri else ''}, "
                                f"got {v!r}")
    whole = lambda v, lo, hi: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi  # noqa: E731
    if backend == "ptx" and not whole(options.get("block", 256), 1, 1024):
        raise ArgumentError(f"{where}: block (threads per block) must be an integer from 1 to 1024, "
                            f"got {options['block']!r}")
    if backend == "ptx" and not whole(options.get("device", 0), 0, 2**31 - 1):
        raise ArgumentError(f"{where}: device (a CUDA ordinal) must be an integer >= 0, got {options['device']!r}")
    if backend == "ptx" and not isinstance(options.get("features", ""), str):
        raise ArgumentError(f"{where}: features must be a string of LLVM target features like '+ptx85', "
                            f"got {options['features']!r}")
