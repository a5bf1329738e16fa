"""Portable checkpoints: arrays in an ``.npz``, everything else as JSON text beside them.

A checkpoint holds the parameters and the optimizer state as arrays; the cell as its
declaration (:mod:`rnncomp.serialize`: each sympy expression as ``srepr`` text, read back
through a namespace of the DSL's and sympy's own names, never a pickle); the backend, dtype, memory schedule and
compile options; the optimizer and its learning-rate schedule by name; the step, the loss
history and a free-form ``info`` dict (the command line keeps its task there).  Loading
checks the format version, rebuilds the cell with the DSL's checks and compares it with
the saved printout, and checks every parameter's presence and shape: a checkpoint that
would load differently is refused with :class:`CheckpointError`.

Writing is atomic: a temporary file in the same folder, flushed and renamed over the
target, so a killed save keeps the last good checkpoint; temporaries that a killed process
left behind are removed by the next save in that folder.

    >>> import rnncomp as rc
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> str(cell_from_dict(cell_to_dict(cell))) == str(cell)
    True
"""
from __future__ import annotations

import json
import os
import pickle
import time
import zipfile

import numpy as np

from ..cell import Cell
from ..errors import ArgumentError, CheckpointError
from ..memory import ALL, Binomial, Budget, Every, StoreAll, schedule
from .. import serialize
from . import lr_schedules, optim

FORMAT, VERSION = "rnncomp-checkpoint", 2
TEMP_PREFIX = ".rnncomp-ckpt-"
STALE_SECONDS = 3600  # a temporary without a live writer is removed after this long


# ----------------------------------------------------------------------------- the cell as text
def cell_to_dict(cell, callables: bool = False) -> dict:
    """A cell's declaration as text (:func:`rnncomp.serialize.cell_to_dict`; ``callables``:
    custom initialisers as themselves, for pickle); a composition (``rc.Stack``,
    ``rc.Bidirectional``) as its cells, each written the same way."""
    if hasattr(cell, "layers"):
        from ..compose.serial import to_dict
        return to_dict(cell, lambda c: cell_to_dict(c, callables))
    return serialize.cell_to_dict(cell, callables)


def cell_from_dict(d: dict, where: str = "checkpoint"):
    """What :func:`cell_to_dict` wrote, rebuilt through the DSL (so its checks run)."""
    if isinstance(d, dict) and "composition" in d:
        from ..compose.serial import from_dict
        return from_dict(d, where, cell_from_dict, CheckpointError)
    return serialize.cell_from_dict(d, where)


# ----------------------------------------------------------------------------- options as text
def memory_to_dict(memory) -> dict:
    m = schedule(memory)
    if isinstance(m, StoreAll):
        return {"name": "all"}
    if isinstance(m, Every):
        return {"name": "Every", "n": m.n}
    if isinstance(m, Binomial):
        return {"name": "Binomial", "slots": m.slots}
    return {"name": "Budget", "nbytes": m.nbytes}


def memory_from_dict(d: dict):
    kinds = {"all": lambda: ALL, "Every": lambda n: Every(n), "Binomial": lambda slots: Binomial(slots),
             "Budget": lambda nbytes: Budget(nbytes)}
    d = dict(d)
    return kinds[d.pop("name")](**d)


# constructor arguments of the built-in optimizers, read back from their attributes
_OPTIMIZERS = {
    "SGD": lambda o: {"lr": o.lr, "momentum": o.momentum, "nesterov": o.nesterov, "weight_decay": o.weight_decay},
    "Adam": lambda o: {"lr": o.lr, "betas": [o.b1, o.b2], "eps": o.eps, "decoupled": o.decoupled,
                       "weight_decay": o.weight_decay},
    "AdamW": lambda o: {"lr": o.lr, "betas": [o.b1, o.b2], "eps": o.eps, "weight_decay": o.weight_decay},
    "RMSprop": lambda o: {"lr": o.lr, "alpha": o.alpha, "eps": o.eps, "weight_decay": o.weight_decay},
    "Adagrad": lambda o: {"lr": o.lr, "eps": o.eps, "weight_decay": o.weight_decay},
}


def optimizer_to_dict(opt) -> dict:
    name = type(opt).__name__
    if name not in _OPTIMIZERS or getattr(optim, name) is not type(opt):
        raise CheckpointError(f"optimizer {type(opt).__qualname__} is not one a checkpoint can name "
                              f"({', '.join(_OPTIMIZERS)})")
    s = opt.schedule
    if s is None:
        sched = None
    elif type(s) in lr_schedules.NAMED.values():
        sched = s.to_dict()
    else:  # a function: kept by its name (module:qualname) when it has one, never pickled
        qual, module = getattr(s, "__qualname__", ""), getattr(s, "__module__", None)
        named = module and qual and "<" not in qual
        sched = {"name": "callable", "repr": qual or repr(s), "ref": f"{module}:{qual}" if named else None}
    return {"name": name, "config": _OPTIMIZERS[name](opt), "schedule": sched}


def _named_function(ref):
    """The function ``module:qualname`` when its module is already imported (so that loading
    a checkpoint never imports, that is runs, code a file names); else None."""
    import sys
    if not ref:
        return None
    module, _, qual = ref.partition(":")
    obj = sys.modules.get(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj if callable(obj) else None


def optimizer_from_dict(d: dict, schedule=None, where="checkpoint"):
    sched = d.get("schedule")
    if schedule is None and sched is not None:
        if sched["name"] == "callable":
            found = _named_function(sched.get("ref"))
            if found is not None:
                return getattr(optim, d["name"])(**d["config"], schedule=found)
            raise CheckpointError(f"{where}: the optimizer's learning-rate schedule was a Python function "
                                  f"({sched['repr']}) that is not a module-level function of an imported "
                                  "module, which a checkpoint does not hold; pass it again: "
                                  "Trainer.load(path, schedule=...), or use a named one "
                                  "(rc.schedules.ExponentialDecay, Cosine, Warmup), which is saved")
        schedule = lr_schedules.from_dict(sched)
    return getattr(optim, d["name"])(**d["config"], schedule=schedule)


# ----------------------------------------------------------------------------- files
def clean_stale(directory: str) -> list:
    """Remove temporaries of saves that were killed: their writer is gone, or (no process id
    in the name, or another machine's) they are older than an hour.  Returns what went."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for n in names:
        if not n.startswith(TEMP_PREFIX):
            continue
        p = os.path.join(directory, n)
        pid = n[len(TEMP_PREFIX):].split("-")[0]
        try:
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) \
                    or time.time() - os.path.getmtime(p) > STALE_SECONDS:
                os.unlink(p)
                removed.append(p)
        except OSError:
            pass  # another process removed it first
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_path(who: str, path) -> str:
    """``path`` (a str or a pathlib.Path) as a str; anything else (None) is named, where
    ``os.fspath`` said "expected str, bytes or os.PathLike object, not NoneType"."""
    try:
        return os.fspath(path)
    except TypeError:
        raise ArgumentError(f"{who}: the path must be a file name (a str or pathlib.Path), got {path!r}") from None


def write(path, meta: dict, arrays: dict) -> None:
    """``meta`` (JSON) and ``arrays`` into ``path``, atomically; stale temporaries are removed."""
    path = file_path("save", path)
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):  # the temporary went to its parent and os.replace failed: "Is a directory"
        raise CheckpointError(f"cannot save {path}: it is a folder; give a file name (e.g. {os.path.join(path, 'model.ckpt')})")
    if not os.path.isdir(d):
        raise CheckpointError(f"cannot save {path}: folder {d} does not exist")
    clean_stale(d)
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path):
    """``(meta, arrays)`` of a version-2 checkpoint, or ``("legacy", blob)`` for a format-1
    pickle; anything else is a :class:`CheckpointError` naming the file and what is wrong."""
    path = file_path("load", path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    if head[:1] == b"\x80":  # a pickle: the format-1 checkpoints written before version 2
        return "legacy", _read_legacy(path)
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not an rnncomp checkpoint (it starts with {head!r}, not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except KeyError:
        raise CheckpointError(f"{path}: a zip archive without rnncomp's description (__meta__)") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or damaged checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnncomp checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; this rnncomp "
                              f"reads version {VERSION} (and the format-1 pickles before it)")
    return meta, arrays


def _read_legacy(path):
    try:
        with open(path, "rb") as fh:
            blob = pickle.load(fh)  # noqa: S301 - the user's own format-1 checkpoint
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
        raise CheckpointError(f"{path}: truncated or damaged format-1 checkpoint ({type(exc).__name__}: "
                              f"{exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != 1:
        raise CheckpointError(f"{path}: not an rnncomp checkpoint")
    return blob


def check_params(params: dict, cell: Cell, where: str) -> dict:
    """Every parameter of ``cell`` present with its declared shape, no other."""
    want = {n: (s if isinstance(s, tuple) else (s,)) for n, s in cell.step.params.items()}
    missing = [n for n in want if n not in params]
    extra = [n for n in params if n not in want]
    if missing or extra:
        raise CheckpointError(f"{where}: parameters of cell {cell.name!r} "
                              + (f"missing: {', '.join(missing)}" if missing else "")
                              + ("; " if missing and extra else "")
                              + (f"not in the cell: {', '.join(extra)}" if extra else ""))
    for n, shape in want.items():
        if tuple(np.shape(params[n])) != shape:
            raise CheckpointError(f"{where}: parameter {n!r} has shape {tuple(np.shape(params[n]))}, "
                                  f"cell {cell.name!r} declares {shape}")
    return params


def first_difference(saved: str, given: str) -> str:
    """The first line where two cell printouts differ, for an error message."""
    a, b = saved.splitlines(), given.splitlines()
    for x, y in zip(a, b):
        if x != y:
            return f"saved {x.strip()!r}, given {y.strip()!r}"
    return f"saved {len(a)} lines, given {len(b)}"
