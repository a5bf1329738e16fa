"""Saving a :class:`~.trainer.Trainer` to a portable checkpoint and resuming one from it:
what of a trainer goes into the file (:mod:`.checkpoint` owns the file format itself) and how
a trainer is rebuilt from it, with every check that it would train on as it was saved.

    >>> import numpy as np, rnncomp as rc, tempfile, os
    >>> tr = rc.Trainer(rc.cells.elman(1, 4, 1), backend="numpy", dtype="float64")
    >>> path = os.path.join(tempfile.mkdtemp(), "t.ckpt")
    >>> save(tr, path); again = load(rc.Trainer, path)
    >>> bool(np.array_equal(again.flat, tr.flat)), again.step_count
    (True, 0)
"""
from __future__ import annotations

import json
import re

import numpy as np
import sympy as sp

from . import checkpoint as ck
from .. import serialize
from ..algorithms import saving as algorithms
from .truncated import Truncated


def save(tr, path) -> None:
    """Write ``tr`` to ``path``: parameters and optimizer state as arrays, the cell as its
    declaration, backend, dtype, memory schedule and options (:meth:`Trainer.save`): every
    option of the constructor but ``seed`` (the parameters it drew are saved) and
    ``distributed`` / ``comm`` (the processes of one run: given again to load)."""
    opts = {k: v for k, v in tr.compile_options.items() if k != "cache"}  # the cache is this machine's
    if "memory" in opts:
        opts["memory"] = ck.memory_to_dict(opts["memory"])
    bad = [k for k, v in opts.items() if not isinstance(v, (bool, int, float, str, dict, type(None)))]
    if bad:
        raise ck.CheckpointError(f"cannot save {path}: compile option(s) {', '.join(bad)} are not "
                                 "numbers or text")
    state = tr.optimizer.state_dict()
    gradient, learned = algorithms.to_dict(tr.gradient)
    arrays = {f"param/{n}": tr.params[n] for n in tr.names}
    arrays.update({f"opt/{k}": v for k, v in state.items()})
    arrays.update({f"gradient/{k}": v for k, v in learned.items()})
    meta = {"format": ck.FORMAT, "version": ck.VERSION, "cell": ck.cell_to_dict(tr.cell),
            "fingerprint": str(tr.cell), "backend": tr.backend, "dtype": tr.dtype.name,
            "compile_options": opts, "update": tr.update, "params": tr.names,
            "optimizer": ck.optimizer_to_dict(tr.optimizer), "optimizer_state": sorted(state),
            "step": tr.step_count, "history": list(tr.history),
            "batch_history": [list(p) for p in tr.batch_history], "info": tr.info,
            "val_history": list(tr.val_history), "gradient": gradient,
            "options": {"clip_norm": tr.clip_norm, "clip_value": tr.clip_value,
                        "batch_first": tr.batch_first, "accumulate": tr.accumulate,
                        "bptt": None if tr.bptt is None else [tr.bptt.k1, tr.bptt.k2]}}
    if getattr(tr.model, "has_dropout", False):  # a resumed run draws the masks the saved one would have
        meta["dropout_rng"] = tr.model.rng.bit_generator.state
    meta["online"] = _online(tr, arrays)
    ck.write(path, meta, arrays)


def _online(tr, arrays: dict) -> dict | None:
    """Where fit_online's stream stands (its final states, the algorithm's carry) into
    ``arrays``; its record for the checkpoint's meta, None when no stream was run."""
    from ..algorithms.carry import kept
    states = getattr(tr, "online_state", None)
    if states is None:
        return None
    arrays.update({f"online/state/{s}": v for s, v in states.items()})
    record = {"states": list(states), "carry": None, "streams": tr.__dict__.get("_online_streams", 0)}
    saved = kept(tr)
    if saved is not None:  # (batch, arrays, generator state)
        arrays.update({f"online/carry/{k}": v for k, v in saved[1].items()})
        record["carry"] = {"B": saved[0], "names": sorted(saved[1]), "rng": saved[2]}
    return record


def _restore_online(tr, record, arrays, where) -> None:
    try:
        tr.online_state = {s: arrays[f"online/state/{s}"] for s in record["states"]}
        tr._online_streams = int(record.get("streams", 0))
        carry = record["carry"]
        if carry is not None:
            tr._online_saved = (int(carry["B"]), {k: arrays[f"online/carry/{k}"] for k in carry["names"]}, carry["rng"])
    except (KeyError, TypeError) as exc:
        raise ck.CheckpointError(f"{where}: its online stream's record is damaged ({exc!r} missing)") from None

def load(cls, path, cell=None, backend=None, dtype=None, *, schedule=None, **compile_options):
    """A trainer of class ``cls`` resumed from :func:`save`'s file (:meth:`Trainer.load`)."""
    meta, arrays = ck.read(path)
    if meta == "legacy":
        return _load_legacy(cls, path, arrays, cell, backend or "native", dtype or "float32", compile_options)
    where = str(path)
    saved = ck.cell_from_dict(meta["cell"], where) if cell is None else cell
    if str(saved) != meta["fingerprint"] and not _same_declaration(saved, meta, given=cell is not None):
        raise ck.CheckpointError(
            f"{where}: the checkpoint is of cell {meta['cell']['name']!r} with other equations or sizes "
            f"than {'cell ' + repr(cell.name) if cell is not None else 'the cell rebuilt from it'} "
            f"({ck.first_difference(meta['fingerprint'], str(saved))})")
    unlisted = [k[len("param/"):] for k in arrays if k.startswith("param/") and k[len("param/"):] not in meta["params"]]
    if unlisted:
        raise ck.CheckpointError(f"{where}: the file holds parameters its record does not list: "
                                 f"{', '.join(unlisted)} (damaged?)")
    params = ck.check_params({n: arrays[f"param/{n}"] for n in meta["params"] if f"param/{n}" in arrays},
                             saved, where)
    if any(v.dtype != np.dtype(meta["dtype"]) for v in params.values()):
        raise ck.CheckpointError(f"{where}: parameters are not all {meta['dtype']}, the dtype it records")
    state = {}
    for k in meta["optimizer_state"]:
        if f"opt/{k}" not in arrays:
            raise ck.CheckpointError(f"{where}: the optimizer state {k!r} is missing")
        state[k] = arrays[f"opt/{k}"]
    opts = dict(meta["compile_options"])
    if "memory" in opts:
        opts["memory"] = ck.memory_from_dict(opts["memory"])
    opts.update(compile_options)
    opts.setdefault("update", meta["update"])
    o = meta["options"]
    learned = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("gradient/")}
    saved_options = {"gradient": algorithms.from_dict(meta.get("gradient"), learned, where),
                     "clip_norm": o["clip_norm"], "clip_value": o["clip_value"],
                     "batch_first": o.get("batch_first", False), "accumulate": o.get("accumulate", 1),
                     "bptt": None if o["bptt"] is None else Truncated(*o["bptt"])}
    opts = {**saved_options, **opts}  # as saved unless given here
    tr = cls(saved, ck.optimizer_from_dict(meta["optimizer"], schedule, where),
             backend=backend or meta["backend"], dtype=dtype or meta["dtype"], params=params, **opts)
    size = tr.flat.size
    bad = [k for k, v in state.items() if v.shape != (size,)]
    if bad:
        raise ck.CheckpointError(f"{where}: optimizer state {bad[0]!r} has shape {state[bad[0]].shape}, "
                                 f"the parameters have {size} elements")
    # in the trainer's dtype (loaded at another dtype, the NumPy updates kept the saved one's)
    tr.optimizer.load_state_dict({k: np.asarray(v, dtype=tr.dtype) for k, v in state.items()})
    if meta.get("dropout_rng") is not None and getattr(tr.model, "has_dropout", False):
        try:
            tr.model.rng.bit_generator.state = meta["dropout_rng"]
        except (TypeError, ValueError, KeyError) as exc:
            raise ck.CheckpointError(f"{where}: its dropout generator's state cannot be restored ({exc})") from None
    if meta.get("online") is not None:  # a stream fit_online can continue (continue_stream=True)
        _restore_online(tr, meta["online"], arrays, where)
    tr.step_count, tr.history = int(meta["step"]), [float(v) for v in meta["history"]]
    tr.batch_history = [tuple(p) for p in meta["batch_history"]]
    tr.val_history = [float(v) for v in meta.get("val_history", [])]
    tr.info = dict(meta.get("info") or {})
    return tr

def _same_declaration(cell, meta: dict, given: bool) -> bool:
    """Whether a cell whose printed text differs from the checkpoint's fingerprint still is its
    cell.  The text changes when the printer does (``Σ`` grouped since session 20, products
    since session 21), so a checkpoint written before such a change is compared otherwise: a
    ``cell`` given to ``load`` by its declaration (the record's, the names a printer gives
    derived weights aside: :func:`_unnamed`); the cell rebuilt from the record by
    :func:`_printed_alike`, so that a record damaged elsewhere (``tanh`` for ``sin``) is still
    refused."""
    if not given:
        return _printed_alike(str(cell), meta["fingerprint"])
    try:
        return (json.loads(json.dumps(ck.cell_to_dict(cell))) == meta["cell"]
                or _unnamed(cell) == _unnamed(ck.cell_from_dict(meta["cell"])))
    except Exception:  # noqa: BLE001 - a cell that cannot be written as a record declares something else
        return False


def _unnamed(cell) -> dict:
    """A cell's record (a composition's: its cells'), each generated name of a derived weight
    (its expression as printed, ``(M*(W·A))%``, once ``(M*W·A)%``) written as its place among
    them, so that two records of one declaration printed by different printers compare equal."""
    if hasattr(cell, "layers"):
        from ..compose.serial import to_dict
        return to_dict(cell, _unnamed)
    names = [n for n, d in cell.decls.items() if d.kind == "weight" and n.endswith("%")]
    place = {sp.Symbol(n): sp.Symbol(f"#{i}%") for i, n in enumerate(names)}
    record = serialize.cell_to_dict(cell, text=lambda e: sp.srepr(e.xreplace(place)))
    for d in record["decls"]:
        d["name"] = str(place.get(sp.Symbol(d["name"]), d["name"]))
    return json.loads(json.dumps(record))


def _printed_alike(text: str, fingerprint: str) -> bool:
    """Whether two texts of a cell differ at most as printers of different versions write
    them: in parentheses (``(U·x)**2`` for ``U·x**2``), in the order of a line's terms (it
    follows the generated name of a derived weight, its printed expression: ``(M*(W·A))`` for
    ``(M*W·A)``) and in the Σ of the loss line (``ℓ[t] = Σ h`` for ``Σ Σ h``: a Σ over one unit
    is no longer printed).  Each line is compared as the multiset of its names, numbers and
    operators."""
    def tokens(line):
        found = _TOKEN.findall(line)
        return sorted(t for t in found if t != "Σ") if line.lstrip().startswith("ℓ[t] =") else sorted(found)
    return [tokens(x) for x in text.splitlines()] == [tokens(x) for x in fingerprint.splitlines()]


_TOKEN = re.compile(r"[^\s()+\-*/·,=]+|[+\-*/·,=]")  # a name, number or function, or an operator


def _load_legacy(cls, path, blob, cell, backend, dtype, compile_options):
    """A format-1 checkpoint (a pickle, before version 2): it recorded neither backend nor
    dtype, so they are the given ones (defaults: native, float32), as they always were.  A given
    cell is compared with the text the file recorded and, printed by today's printer, with the
    cell the file holds."""
    if cell is not None and str(cell) not in (blob["fingerprint"], str(blob["cell"])):
        raise ck.CheckpointError(f"{path}: the checkpoint is of cell {blob['cell'].name!r} with other "
                                 f"equations or sizes than cell {cell.name!r}")
    ck.check_params(blob["params"], blob["cell"], str(path))
    opt_state = blob["optimizer"].state_dict()  # before __init__ re-initialises the optimizer
    compile_options.setdefault("update", blob.get("update"))
    tr = cls(blob["cell"], blob["optimizer"], backend=backend, dtype=dtype,
             params=blob["params"], **blob["options"], **compile_options)
    tr.optimizer.load_state_dict(opt_state)
    tr.step_count, tr.history = blob["step"], list(blob["history"])
    tr.batch_history = list(blob.get("batch_history", []))
    return tr
