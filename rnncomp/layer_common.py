"""What the framework layers (:mod:`rnncomp.torch`, :mod:`rnncomp.jax`) share: the checks
(a cell can be a layer; the names a call passes; lengths) and the two ways to run a padded
batch: chained chunks (:func:`run_padded`) and, for a model with a reversed pass inside, one
call per length (:func:`run_by_length`); :func:`padded_runner` picks; the models a
framework's ops find by key (:class:`LayerModels`).  Imports no framework."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends.validate import forward_targets
from .errors import CallError, CellError


class LayerModels:
    """The compiled models a framework's ops run, by key (an op's arguments are tensors and
    strings): ``rnncomp.torch`` owns one; each ``Recurrent`` adds its model when made (also
    when copied or unpickled) and a finaliser drops it when the layer goes."""

    def __init__(self):
        self._models: dict[str, object] = {}
        self._ids: dict[str, itertools.count] = {}

    def add(self, owner, model) -> str:
        """``"<cell name>#<fingerprint>.<n>"``: the n-th layer of this process whose model has that
        fingerprint (its cell, backend, dtype, options).  A key is what a ``torch.jit`` trace
        records, so a trace saved and loaded in another process runs the layer of that process
        with the same fingerprint, never another cell that happens to have the same name (a
        counter alone ran a relu cell's model for a saved tanh trace)."""
        fp = _fingerprint(model)
        key = f"{model.step.name}#{fp}.{next(self._ids.setdefault(fp, itertools.count()))}"
        self._models[key] = model
        weakref.finalize(owner, self._models.pop, key, None)
        return key

    def get(self, key: str):
        model = self._models.get(key)
        if model is None:  # its own layer is gone: one of the same fingerprint computes the same
            # (parameters are the op's inputs); keys differ only in the count, which depends on how
            # many such layers were made before (copies, dtype changes) in the process that traced
            same = key.rpartition(".")[0] + "."
            model = next((m for k, m in list(self._models.items()) if k.startswith(same)), None)
        if model is None:
            raise CallError(f"rnncomp layer {key!r} does not exist in this process: its Recurrent module "
                            "was garbage-collected before this call or its backward, or the call comes from "
                            "a torch.jit trace saved by another process (make the same Recurrent layer here, "
                            "same cell and options, before running it; see docs/layers.md)")
        return model


def _fingerprint(model) -> str:
    """A short digest of how ``model`` was compiled (what pickling it keeps: the cell's
    declarations, backend, dtype, options), the same in every process; a model that cannot
    say gets this process's own."""
    try:
        text = json.dumps(model.__reduce__()[1], default=_portable, sort_keys=True)
    except Exception:  # noqa: BLE001 - no portable description: a key of this process only
        text = f"{os.getpid()}:{id(model)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _portable(obj):
    """What a fingerprint reads of an object JSON does not write: a cell or composition as its
    declaration (its repr names only its sizes), a function (a custom initialiser) by its name
    (its repr holds an address); anything else by a repr that holds no address."""
    from .cell import Cell
    from .compose.layers import Composition
    from .train.checkpoint import cell_to_dict
    if isinstance(obj, (Cell, Composition)):
        return cell_to_dict(obj)
    if callable(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    if isinstance(obj, (set, frozenset)):
        return sorted(map(repr, obj))
    text = repr(obj)
    if " at 0x" in text:
        raise TypeError(f"no portable description: {text}")
    return text


def check_layer_cell(step, output, who: str) -> None:
    """``step`` (a cell's) can be a layer returning ``output`` (an output name or None)."""
    if output is not None and output not in step.outputs:
        states = f"; {output!r} is a state: declare an output that returns it" if output in step.states else ""
        raise CellError(f"cell {step.name!r}: {who}(output={output!r}) names no output of the cell "
                        f"(outputs: {', '.join(map(repr, step.outputs)) or 'none'}){states}")
    if not step.inputs:
        raise CellError(f"cell {step.name!r}: {who} needs a cell with at least one input")
    if forward_targets(step):
        raise CellError(f"cell {step.name!r}: its outputs or updates read target "
                        f"{', '.join(map(repr, forward_targets(step)))} (teacher forcing), which a "
                        "layer does not pass; make it an input of the cell")


def named(step, kind: str, value, names, arrays: str = "arrays") -> dict:
    """``value`` as {name: array}: a dict with known names, None (empty), or one array where
    the cell has one name of this kind."""
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise CallError(f"cell {step.name!r}: {kind} names {', '.join(map(repr, unknown))}; "
                            f"expected {', '.join(map(repr, names)) or 'none'}")
        return value
    if len(names) == 1:
        return {names[0]: value}
    raise CallError(f"cell {step.name!r}: {kind} must be a dict of {arrays} keyed by "
                    f"{', '.join(map(repr, names))} (the cell has {len(names)}), got {type(value).__name__}")


def missing_inputs(step, xs: dict) -> None:
    missing = [n for n in step.inputs if n not in xs]
    if missing:
        raise CallError(f"cell {step.name!r}: missing input {', '.join(map(repr, missing))}")


def check_lengths(step, lengths, T: int, B: int) -> list:
    """``lengths`` as B Python ints from 1 to T."""
    try:
        lengths = list(lengths)
    except TypeError:
        raise CallError(f"cell {step.name!r}: lengths must be {B} ints (one per sequence) from 1 to T = {T}, "
                        f"got {lengths!r}") from None
    if len(lengths) != B or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n <= T
                                    for n in lengths):
        raise CallError(f"cell {step.name!r}: lengths must be {B} ints (one per sequence) from 1 to T = {T}, "
                        f"got {lengths}")
    return [int(n) for n in lengths]


@dataclass
class Chunk:
    """One call of a padded batch: steps ``start`` to ``stop`` of the batch ``rows`` (in
    batch order); of those, the ones at positions ``done`` end at ``stop``, ``going`` go on."""

    start: int
    stop: int
    rows: list
    done: list
    going: list


def padded_plan(lengths: list) -> tuple[list, list]:
    """A padded batch as one call per distinct length (each call's final states are the next
    one's h0: chained calls, docs/vjp.md), and ``back``: for each batch row, where its final
    states are among the finals of the ended sequences, concatenated in the order they ended.

    >>> chunks, back = padded_plan([3, 1, 3])
    >>> [(c.start, c.stop, c.rows, c.done) for c in chunks], back
    ([(0, 1, [0, 1, 2], [1]), (1, 3, [0, 2], [0, 1])], [1, 0, 2])
    """
    rows, chunks, ended, start = list(range(len(lengths))), [], [], 0
    for stop in sorted(set(lengths)):
        done = [i for i, r in enumerate(rows) if lengths[r] == stop]
        going = [i for i, r in enumerate(rows) if lengths[r] != stop]
        chunks.append(Chunk(start, stop, rows, done, going))
        ended += [rows[i] for i in done]
        rows, start = [rows[i] for i in going], stop
    return chunks, sorted(range(len(lengths)), key=ended.__getitem__)


@dataclass
class ArrayOps:
    """The four array operations :func:`run_padded` needs, in one framework's terms."""

    take: Callable    # take(a, rows: list, axis) -> the rows of a along axis
    spread: Callable  # spread(o (t, r, n), rows: list, B) -> (t, B, n), o's rows at rows, zeros elsewhere
    zeros: Callable   # zeros(like, shape) -> zeros of like's dtype
    cat: Callable     # cat(list of arrays) along axis 0


def run_padded(lengths: list, T: int, inputs: list, states: list, call, ops: ArrayOps):
    """A padded batch by :func:`padded_plan`: ``call(inputs, states) -> (outputs, finals)``
    (lists, time-major) once per chunk.  Returns (outputs (T, B, n), zeros after each
    sequence's end; final states after each sequence's own last step)."""
    B = len(lengths)
    chunks, back = padded_plan(lengths)
    out_parts, final_parts = None, [[] for _ in states]
    for c in chunks:
        whole = len(c.rows) == B
        sub = [x[c.start:c.stop] if whole else ops.take(x[c.start:c.stop], c.rows, 1) for x in inputs]
        outs, states = call(sub, states)
        out_parts = out_parts or [[] for _ in outs]
        for parts, o in zip(out_parts, outs):
            parts.append(o if whole else ops.spread(o, c.rows, B))
        for parts, s in zip(final_parts, states):
            parts.append(ops.take(s, c.done, 0))
        states = [ops.take(s, c.going, 0) for s in states] if c.going else []
    if c.stop < T:
        for parts, o in zip(out_parts, outs):
            parts.append(ops.zeros(o, (T - c.stop, B, o.shape[2])))
    return [ops.cat(p) for p in out_parts], [ops.take(ops.cat(p), back, 0) for p in final_parts]


def run_by_length(lengths: list, T: int, inputs: list, states: list, call, ops: ArrayOps):
    """A padded batch as one call per distinct length L, over the sequences of length L and
    their steps 0 … L-1 only: every call sees whole sequences, so a reversed pass inside (an
    ``rc.Bidirectional``) starts at each sequence's own last step, which chained chunks
    (:func:`run_padded`) cannot give.  The same work (Σ of the lengths rows × steps); the
    results as :func:`run_padded`'s: outputs (T, B, n), zeros after each sequence's end, and
    the final states of each sequence's call."""
    B = len(lengths)
    outs_sum, final_parts, ended = None, [[] for _ in states], []
    for L in sorted(set(lengths)):
        rows = [b for b in range(B) if lengths[b] == L]
        whole = len(rows) == B
        sub = [x[:L] if whole else ops.take(x[:L], rows, 1) for x in inputs]
        outs, finals = call(sub, [s if whole else ops.take(s, rows, 0) for s in states])
        full = []
        for o in outs:  # (L, rows, n) at its rows, zeros elsewhere and after step L
            o = o if whole else ops.spread(o, rows, B)
            full.append(o if L == T else ops.cat([o, ops.zeros(o, (T - L, B, o.shape[2]))]))
        outs_sum = full if outs_sum is None else [a + o for a, o in zip(outs_sum, full)]
        for parts, f in zip(final_parts, finals):
            parts.append(f)
        ended += rows
    back = sorted(range(B), key=ended.__getitem__)
    return outs_sum, [ops.take(ops.cat(p), back, 0) for p in final_parts]


def padded_runner(step):
    """How a layer runs a padded batch of ``step``'s model: by length where lengths change its
    numbers beyond where each sequence ends (a reversed pass inside), else in chained chunks."""
    return run_by_length if getattr(step, "reads_lengths", False) else run_padded
