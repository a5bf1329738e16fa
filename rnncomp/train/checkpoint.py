"""Portable checkpoints: arrays in an ``.npz``, everything else as JSON text beside them.

A checkpoint holds the parameters and the optimizer state as arrays; the cell as its
declaration (each sympy expression as ``srepr`` text, read back through a namespace of the
DSL's and sympy's own names, never a pickle); the backend, dtype, memory schedule and
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

import io
import json
import keyword
import os
import pickle
import time
import tokenize
import zipfile

import numpy as np
import sympy as sp

from .. import dsl, functions
from ..cell import Cell
from ..errors import RnncompError
from ..memory import ALL, Binomial, Budget, Every, StoreAll, schedule
from ..matrix_dsl import MATRIX_ATOMS, MatState, MatStateNew
from ..weight_dsl import WEIGHT_ATOMS
from . import lr_schedules, optim
from .trainer import TrainingError

FORMAT, VERSION = "rnncomp-checkpoint", 2
TEMP_PREFIX = ".rnncomp-ckpt-"
STALE_SECONDS = 3600  # a temporary without a live writer is removed after this long


class CheckpointError(TrainingError, ValueError):
    """A file that is not a checkpoint, or one that cannot load as it was saved."""


# ----------------------------------------------------------------------------- the cell as text
def cell_to_dict(cell: Cell) -> dict:
    """The cell's declarations and equations, each expression as sympy ``srepr`` text."""
    decls = []
    for d in cell.decls.values():
        init = d.init
        if isinstance(init, np.ndarray):  # a constant's values
            init = init.tolist()
        elif callable(init):
            init = {"callable": getattr(init, "__qualname__", repr(init))}  # its values are saved
        elif isinstance(init, tuple):
            init = list(init)
        decls.append({"kind": d.kind, "name": d.name, "shape": d.shape if isinstance(d.shape, int) else list(d.shape),
                      "init": init, "expr": None if d.expr is None else sp.srepr(d.expr)})
    return {"name": cell.name, "decls": decls,
            "updates": {k: sp.srepr(e) for k, e in cell.updates.items()},
            "loss": None if cell.loss_expr is None else sp.srepr(cell.loss_expr)}


def _namespace() -> dict:
    ns = {k: v for k, v in vars(sp).items() if not k.startswith("_")}
    ns.update({k: v for k, v in vars(functions).items() if isinstance(v, type) and issubclass(v, sp.Function)})
    ns["ExprCondPair"] = sp.functions.elementary.piecewise.ExprCondPair
    ns.update(Vec=lambda name, **assumptions: dsl.Vec(name),
              StateVec=lambda name, **assumptions: dsl.StateVec(name),
              MatVec=dsl.MatVec, Slice=dsl.Slice, Concat=dsl.Concat, RowSum=dsl.RowSum, LogSumExp=dsl.LogSumExp,
              MatState=lambda name, **assumptions: MatState(name),
              MatStateNew=lambda name, **assumptions: MatStateNew(name),
              **{c.__name__: c for c in WEIGHT_ATOMS + MATRIX_ATOMS})
    return ns


def _expr(text: str, ns: dict, where: str):
    """An expression from its ``srepr`` text; only names of the DSL and of sympy may occur."""
    try:
        names = {t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.NAME}
    except (tokenize.TokenError, SyntaxError) as exc:
        raise CheckpointError(f"{where}: unreadable expression ({exc})") from None
    unknown = sorted(n for n in names if n not in ns and not keyword.iskeyword(n)
                     and n not in ("real", "positive", "integer", "commutative", "evaluate"))
    if unknown:
        raise CheckpointError(f"{where}: the expression uses {', '.join(unknown)}, which is not a name of "
                              "rnncomp's DSL or of sympy (a damaged or foreign file?)")
    try:
        return eval(text, {"__builtins__": {}}, ns)  # noqa: S307 - names checked above
    except Exception as exc:  # noqa: BLE001 - any failure is a damaged declaration
        raise CheckpointError(f"{where}: cannot rebuild the expression: {exc}") from None


def cell_from_dict(d: dict, where: str = "checkpoint") -> Cell:
    """The cell :func:`cell_to_dict` wrote, rebuilt through the DSL (so its checks run)."""
    ns = _namespace()
    try:
        cell = Cell(d["name"])
        for decl in d["decls"]:
            kind, name, init = decl["kind"], decl["name"], decl["init"]
            shape = decl["shape"] if isinstance(decl["shape"], int) else tuple(decl["shape"])
            if isinstance(init, dict):
                init = None  # a callable initialiser: the checkpoint holds the values it made
            elif isinstance(init, list):
                init = tuple(init)
            if kind == "param" and name in cell.decls:  # a learnable initial state's h_0
                continue
            if kind in ("input", "target"):
                getattr(cell, kind)(name, shape)
            elif kind == "state":
                cell.state(name, shape, init=init)
            elif kind == "param":
                cell.param(name, shape, init=init)
            elif kind == "const":
                cell.const(name, init)
            elif kind == "weight":
                cell._restore_weight(name, _expr(decl["expr"], ns, f"{where}: weight {name!r}"))
            elif kind in ("output", "define"):
                getattr(cell, kind)(name, _expr(decl["expr"], ns, f"{where}: {kind} {name!r}"))
            else:
                raise CheckpointError(f"{where}: unknown declaration kind {kind!r}")
        for name, text in d["updates"].items():
            cell.update(name, _expr(text, ns, f"{where}: update of {name!r}"))
        if d["loss"] is not None:
            cell.loss(_expr(d["loss"], ns, f"{where}: loss"))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: the cell declaration is incomplete ({exc!r})") from None
    except CheckpointError:
        raise
    except RnncompError as exc:
        raise CheckpointError(f"{where}: the saved cell does not declare: {exc}") from None
    return cell


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


def write(path, meta: dict, arrays: dict) -> None:
    """``meta`` (JSON) and ``arrays`` into ``path``, atomically; stale temporaries are removed."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
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
    path = os.fspath(path)
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
