"""The native backend's declaration cache: a warm compile without the symbolic work.

Owns: the key of a native compile by what the caller declared (:func:`declaration_key`:
the cell's declaration as :mod:`rnncomp.serialize` writes it, the dtype, the options that
shape the code, every rnncomp source file and the host), and the *plan* stored under it
(:func:`load`, :func:`store`): everything ``NativeModel`` derives before it generates code
-- the backward step, the transformed programs, the layout, the gradient plan, and the key
of the object code.  A hit restores the plan and loads the object: no differentiation, no
passes, no layout and no printing of the programs to key the object.

Why: a warm compile (the cell already in the disk cache) spent ~2/3 of its own time there,
sympy's differentiation first (docs/architecture.md, "Compile time").

The declaration says everything a plan is derived from: the DSL admits only its closed
set of functions (``functions.SUPPORTED_FUNCTIONS``), whose derivatives are rnncomp's and
sympy's, so the key holds :func:`package_fingerprint` (any edit of any rnncomp source
changes it: a plan never outlives the code that made it) and sympy's version.  A
declaration that does not serialize gets no key (the plan is derived as on a cold compile).

The plan is pickled: it is read from the same cache directory as the machine code this
process loads and runs, so it is trusted no more and no less than that code.  The cell's
``step`` is not stored but referred to (a persistent id), so the restored plan shares it.

    >>> import rnncomp as rc
    >>> from rnncomp.backends.llvm.jit import HostTarget
    >>> k1 = declaration_key(rc.cells.elman(2, 3, 1), "float32", (True,), HostTarget.detect())
    >>> k2 = declaration_key(rc.cells.elman(2, 4, 1), "float32", (True,), HostTarget.detect())
    >>> len(k1), k1 != k2
    (64, True)
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import pickle

import sympy as sp

from .llvm.jit import _cache_dir, _read_cache, _write_cache

#: bump when the layout of a stored plan changes in a way the sources would not show
FORMAT = "rnncomp native plan 1"
_STEP = "cell step"  # the persistent id of the cell's step inside a stored plan


@functools.lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """A SHA-256 of every rnncomp source file (path and text): keys made with it never
    outlive a change to the code that derives or generates anything."""
    root = pathlib.Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def declaration_key(cell, dtype, options: tuple, host) -> str | None:
    """The key of a plan: a hex SHA-256 of everything a plan is derived from, or None when
    the declaration does not serialize."""
    from ..exprwalk import digest
    from ..serialize import cell_to_dict

    try:  # each expression by its structure's digest: srepr's text grows with the tree, not the graph
        decl = json.dumps(cell_to_dict(cell, text=digest), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    h = hashlib.sha256()
    for part in (FORMAT, package_fingerprint(), sp.__version__, host.triple, host.cpu, host.features,
                 str(dtype), repr(options), decl):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(cache, key: str) -> str:
    return os.path.join(_cache_dir(cache), "plan", key + ".pkl")


class _Pickler(pickle.Pickler):
    def __init__(self, fh, step):
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self._step = step

    def persistent_id(self, obj):
        return _STEP if obj is self._step else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, step):
        super().__init__(fh)
        self._step = step

    def persistent_load(self, pid):
        if pid != _STEP:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._step


def load(cache, key: str, step) -> dict | None:
    """The plan stored under ``key`` (attribute name -> value), or None (none stored, or
    unreadable: the caller derives it again)."""
    data = _read_cache(_path(cache, key))
    if data is None:
        return None
    try:
        plan = _Unpickler(io.BytesIO(data), step).load()
    except Exception:  # noqa: BLE001 - a plan that does not load is derived again
        return None
    return plan if isinstance(plan, dict) else None


def store(cache, key: str, plan: dict, step) -> None:
    """Store ``plan`` under ``key`` (atomically; silently not where the cache cannot be
    written: the object code's write warns about that directory)."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, step).dump(plan)
    except (pickle.PicklingError, TypeError, AttributeError):
        return  # something in this plan does not pickle: this cell stays uncached at this level
    _write_cache(_path(cache, key), buf.getvalue(), warn=False)
