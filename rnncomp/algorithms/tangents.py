"""The NumPy executor of tangent programs (:mod:`rnncomp.forward_mode`) over a batch of directions.

A tangent value is a ``(B, K, n)`` array: sample b, direction k, unit n (a shared parameter
tangent ``(1, K, n)``).  A forward value the tangent program reads is the ``(B, n)`` array
the step computed, seen as ``(B, 1, n)`` so element-wise templates broadcast over directions.
Products ``P·∂v`` are one GEMM over all B·K rows; ``∂P·v`` writes ``v`` into the directions
of P's entries (:class:`Directions`), a scatter rather than a product with a one-hot.

    >>> import numpy as np, rnncomp as rc
    >>> from rnncomp.forward_mode import tangent_step
    >>> d = Directions.dense(rc.cells.elman(1, 2, 1).step)
    >>> d.K, d.offsets["U"]   # 2 + 4 + 2 + 2 + 1 directions: one per parameter entry
    (11, 2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.numpy import ew_function
from ..forward_mode import is_tangent_param, tangent_of


@dataclass
class Directions:
    """Which column of a tangent each parameter entry drives: ``column[p]`` has p's shape,
    entries < 0 are not differentiated.  Dense (RTRL): every entry its own column, in the
    order of the flat parameter vector; compressed (SnAp): entries that never meet share one."""

    K: int
    column: dict          # parameter -> int array of its shape
    offsets: dict         # parameter -> first flat index (the flat parameter vector's layout)
    sizes: dict           # parameter -> number of entries

    @classmethod
    def dense(cls, step, params=None):
        column, offsets, sizes, off = {}, {}, {}, 0
        for p, shape in step.params.items():
            size = int(np.prod(shape))
            offsets[p], sizes[p] = off, size
            if params is None or p in params:
                column[p] = np.arange(off, off + size).reshape(shape)
            off += size
        return cls(off, column, offsets, sizes)

    @property
    def P(self) -> int:
        return sum(self.sizes.values())


def _inject(node, v, term, directions, B, dtype):
    """``c·∂P·v`` for all directions: column[i, j] of unit i gets c·v[:, j] (transposed: unit j, v[:, i])."""
    name, tr, c = term
    p = tangent_of(name)
    col = directions.column.get(p)
    out = np.zeros((B, directions.K, node.size), dtype=dtype)
    if col is None:
        return out
    rows, cols = np.nonzero(col >= 0)
    unit, src = (cols, rows) if tr else (rows, cols)
    np.add.at(out, (slice(None), col[rows, cols], unit), float(c) * v[:, src])
    return out


def run_tangents(tprog, env: dict, seeds: dict, directions: Directions, B: int, dtype) -> dict:
    """Evaluate ``tprog`` from the forward values ``env`` and seed tangents ``seeds``
    ``{key: (B, K, n)}`` (a parameter-vector seed absent from ``seeds`` is built from
    ``directions``).  Returns the tangent values by key."""
    K = directions.K
    tan = dict(seeds)

    def val(k):
        t = tan.get(k)
        if t is not None:
            return t
        if k in tprog.nodes:  # a parameter-vector seed: its directions
            return _param_seed(k, tprog.nodes[k], directions, dtype)
        v = np.asarray(env[k])
        return v[None, None, :] if v.ndim == 1 else v[:, None, :]

    for key, node in tprog.nodes.items():
        if node.op == "seed":
            if key not in tan:
                tan[key] = _param_seed(key, node, directions, dtype)
            continue
        if node.op == "matvec":
            out = None
            for term in node.attrs["terms"]:
                if is_tangent_param(term[0]):
                    y = _inject(node, np.asarray(env[node.args[0]]), term, directions, B, dtype)
                else:
                    v = val(node.args[0])
                    m = env[(term[0], None)]
                    y = (v.reshape(-1, v.shape[-1]) @ (m if term[1] else m.T)).reshape(v.shape[:-1] + (node.size,))
                    y = y if term[2] == 1 else y * float(term[2])
                out = y if out is None else out + y
        else:
            out = TANGENT_FORWARD[node.op](node, [val(a) for a in node.args], B, K, dtype)
        tan[key] = out
    return tan


def _param_seed(key, node, directions, dtype):
    p = tangent_of(key[0])
    out = np.zeros((1, directions.K, node.size), dtype=dtype)
    col = directions.column.get(p)
    if col is not None:
        (units,) = np.nonzero(col >= 0)
        out[0, col[units], units] = 1
    return out


def _ew(node, vals, B, K, dtype):
    out = np.asarray(ew_function(node.attrs["expr"], len(vals))(*vals), dtype=dtype)
    if out.ndim < 3 or out.shape[-1] != node.size:
        out = np.broadcast_to(out, out.shape[:-1] + (node.size,) if out.ndim == 3 else (1, 1, node.size))
    return out


def _pad(node, vals, B, K, dtype):
    v = vals[0]
    out = np.zeros(v.shape[:-1] + (node.size,), dtype=dtype)
    out[..., node.attrs["lo"]:node.attrs["lo"] + v.shape[-1]] = v
    return out


def _concat(node, vals, B, K, dtype):
    lead = np.broadcast_shapes(*[v.shape[:-1] for v in vals])
    return np.concatenate([np.broadcast_to(v, lead + (v.shape[-1],)) for v in vals], axis=-1)


def _outer(node, vals, B, K, dtype):
    a, b = vals
    out = np.einsum("...i,...j->...ij", a, b)
    return out.reshape(out.shape[:-2] + (node.size,))


def _smatvec(node, vals, B, K, dtype):
    X, v = vals
    X = X.reshape(X.shape[:-1] + tuple(node.attrs["shape"]))
    return np.einsum("...ij,...i->...j" if node.attrs["transposed"] else "...ij,...j->...i", X, v)


def _mbcast(node, vals, B, K, dtype):
    m, n = node.attrs["shape"]
    v = vals[0]
    return np.repeat(v, n, axis=-1) if node.attrs["axis"] == 1 else np.tile(v, (1,) * (v.ndim - 1) + (m,))


def _mreduce(node, vals, B, K, dtype):
    X = vals[0]
    return X.reshape(X.shape[:-1] + tuple(node.attrs["shape"])).sum(axis=-1 if node.attrs["axis"] == 1 else -2)


TANGENT_FORWARD = {
    # matrix states (per-sample m·n units, row-major): the forward rules of backends/numpy.py
    # over the extra leading axis of the K tangent directions
    "outer": _outer,
    "smatvec": _smatvec,
    "mbcast": _mbcast,
    "mreduce": _mreduce,
    "ew": _ew,
    "slice": lambda node, vals, B, K, dtype: vals[0][..., node.attrs["lo"]:node.attrs["lo"] + node.size],
    "pad": _pad,
    "concat": _concat,
    "sum": lambda node, vals, B, K, dtype: vals[0].sum(axis=-1, keepdims=True),
}
