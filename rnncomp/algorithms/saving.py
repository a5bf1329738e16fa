"""The gradient algorithms (``Trainer(gradient=...)``) as checkpoint entries: each named by its
class, its options as numbers or text, its learned state (DNI's synthetic-gradient module) as
arrays; :mod:`rnncomp.train.resume` puts them in the portable file.  No pickles.

    >>> d, arrays = to_dict(SnAp(2, sparse=False))
    >>> d, arrays
    ({'name': 'SnAp', 'config': {'n': 2, 'sparse': False, 'max_bytes': 1073741824}}, {})
    >>> from_dict(d, arrays, "t.ckpt")
    rc.SnAp(2, sparse=False)
"""
from __future__ import annotations

import numpy as np

from ..errors import CheckpointError
from .dni import DNI
from .online import BPTT
from .rtrl import RTRL
from .snap import SnAp
from .uoro import UORO

# class -> its constructor's options, read back from the instance
CONFIG = {
    RTRL: lambda a: {"max_bytes": a.max_bytes},
    SnAp: lambda a: {"n": a.n, "sparse": a.sparse, "max_bytes": a.max_bytes},
    UORO: lambda a: {"seed": a.seed},
    DNI: lambda a: {"lr": a.lr, "gamma": a.gamma},
    BPTT: lambda a: {},
}
BY_NAME = {cls.__name__: cls for cls in CONFIG}


def to_dict(algo) -> tuple[dict | None, dict]:
    """(``{"name", "config"}``, arrays of its learned state) for ``algo`` (None: (None, {}))."""
    if algo is None:
        return None, {}
    if type(algo) not in CONFIG:
        raise CheckpointError(f"gradient={algo!r}: {type(algo).__qualname__} is not an algorithm a checkpoint "
                              f"can name ({', '.join(BY_NAME)})")
    d, arrays = {"name": type(algo).__name__, "config": CONFIG[type(algo)](algo)}, {}
    if isinstance(algo, DNI) and algo.module is not None:  # the module and its Adam go on training
        arrays = {"A": algo.module[0], "c": algo.module[1], **{f"opt/{k}": v for k, v in algo.opt.state_dict().items()}}
        d["updates"] = algo.updates
    return d, arrays


def from_dict(d, arrays, where):
    """The algorithm :func:`to_dict` wrote (``arrays``: its learned state, by name)."""
    if d is None:
        return None
    cls = BY_NAME.get(d.get("name"))
    if cls is None:
        raise CheckpointError(f"{where}: the gradient algorithm {d.get('name')!r} is not one this version knows "
                              f"({', '.join(BY_NAME)})")
    try:
        algo = cls(**d.get("config", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the options of gradient algorithm {d['name']}: {e}") from None
    if isinstance(algo, DNI) and arrays:
        if not {"A", "c"} <= set(arrays):
            raise CheckpointError(f"{where}: DNI's synthetic-gradient module needs arrays A and c, "
                                  f"got {', '.join(sorted(arrays))}")
        A, c = np.array(arrays["A"]), np.array(arrays["c"])
        opt = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
        N = c.shape[0] if c.ndim == 1 else -1
        if A.shape != (N, N) or any(v.shape != (N * N + N,) for v in opt.values()):
            raise CheckpointError(f"{where}: DNI's module has A {A.shape}, c {c.shape} and optimizer state "
                                  f"{sorted((k, v.shape) for k, v in opt.items())}: need (N, N), (N,), (N² + N,)")
        algo.restore(A, c, opt, d.get("updates", 0))
    return algo
