"""Parameter initialisers: zeros, ones, normal, uniform, Glorot, orthogonal, constant.

"""
from __future__ import annotations

import numpy as np

from .checks import generator
from .errors import CellError

NAMES = ("zeros", "ones", "normal", "uniform", "glorot", "orthogonal")


def check(spec, where: str) -> None:
    if spec is None or callable(spec) or spec in NAMES:
        return
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] in ("normal", "uniform", "constant") \
            and isinstance(spec[1], (int, float)):
        kind, a = spec  # a NaN or inf would fill the parameter with it; a negative std was NumPy's "scale < 0"
        if not np.isfinite(a) or (kind != "constant" and a < 0):
            need = "a finite number" if kind == "constant" else "a finite number >= 0"
            raise CellError(f"{where}: initialiser {spec!r}: its {'value' if kind == 'constant' else 'scale'} "
                            f"must be {need}, got {a}")
        return
    raise CellError(f"{where}: unknown initialiser {spec!r}; use one of {', '.join(NAMES)}, "
                    "('normal', std), ('uniform', a), ('constant', c) or a callable f(rng, shape)")


def make(spec, rng: np.random.Generator, shape, dtype) -> np.ndarray:
    shape = shape if isinstance(shape, tuple) else (shape,)
    if spec is None:
        spec = "glorot" if len(shape) == 2 else "zeros"
    if callable(spec):
        out = np.asarray(spec(rng, shape))
        if out.shape != shape:
            raise CellError(f"initialiser {spec!r} returned shape {out.shape}, expected {shape}")
    elif isinstance(spec, tuple):
        kind, a = spec
        if kind == "normal":
            out = rng.normal(0.0, a, shape)
        elif kind == "uniform":
            out = rng.uniform(-a, a, shape)
        else:
            out = np.full(shape, float(a))
    elif spec == "zeros":
        out = np.zeros(shape)
    elif spec == "ones":
        out = np.ones(shape)
    elif spec == "normal":
        out = rng.normal(0.0, 0.1, shape)
    elif spec == "uniform":
        out = rng.uniform(-0.1, 0.1, shape)
    elif spec == "glorot":
        fan = sum(shape) if len(shape) == 2 else 2 * shape[0]
        a = np.sqrt(6.0 / fan)
        out = rng.uniform(-a, a, shape)
    else:  # orthogonal
        m, n = shape if len(shape) == 2 else (shape[0], 1)
        q, r = np.linalg.qr(rng.normal(size=(max(m, n), min(m, n))))
        q = q * np.sign(np.diag(r))
        out = (q if m >= n else q.T).reshape(shape)
    return np.ascontiguousarray(out, dtype=dtype)


def specs(cell) -> dict:
    """``{name: (shape, init)}`` of a cell's parameters, in declaration order."""
    return {d.name: (d.shape, d.init) for d in cell.decls.values() if d.kind == "param"}


def init_all(param_specs: dict, seed: int, dtype) -> dict:
    """Fresh parameter arrays of ``dtype`` from :func:`specs` (deterministic in ``seed``)."""
    rng = generator("init_params", seed)
    out = {}
    for name, (shape, init) in param_specs.items():
        try:
            out[name] = make(init, rng, shape, dtype)
        except CellError as exc:  # which parameter's initialiser
            raise CellError(f"parameter {name!r}: {exc}") from None
        except MemoryError as exc:  # NumPy's "Unable to allocate 6.94 EiB for an array with shape ..." named none
            raise MemoryError(f"parameter {name!r} of shape {shape}: {exc}") from None
    return out


class InitParams:
    """Mixin of the compiled models: ``model.init_params(seed)`` gives parameters in the
    model's own dtype (what its calls accept), so the easy path is the matching one."""

    def init_params(self, seed: int = 0) -> dict:
        return init_all(self._param_specs_init, seed, self.dtype)
