"""A composition as the plain data of a checkpoint, and back (``rc.Trainer.save`` / ``load``).

A stack is ``{"composition": "stack", "name", "dropout", "layers": [...]}``, a bidirectional
layer ``{"composition": "bidirectional", "name", "merge", "cell": ...}``; each cell inside is
what :func:`rnncomp.train.checkpoint.cell_to_dict` writes for a cell (passed in as
``cell_to_dict`` / ``cell_from_dict``, so this module needs nothing of train/).  Rebuilding
goes through ``rc.Stack`` / ``rc.Bidirectional``, so their declaration checks run again.
"""
from __future__ import annotations

from ..errors import CellError
from .bidirectional import Bidirectional
from .layers import Composition
from .stack import Stack


def to_dict(layer, cell_to_dict) -> dict:
    if not isinstance(layer, Composition):
        return cell_to_dict(layer)
    if isinstance(layer, Stack):
        return {"composition": "stack", "name": layer.name, "dropout": layer.dropout,
                "layers": [to_dict(l, cell_to_dict) for l in layer.layers]}
    return {"composition": "bidirectional", "name": layer.name, "merge": layer.merge,
            "cell": to_dict(layer.cell, cell_to_dict)}


def from_dict(d: dict, where: str, cell_from_dict, error):
    """The composition :func:`to_dict` wrote; a declaration that does not hold is ``error``."""
    if "composition" not in d:
        return cell_from_dict(d, where)
    try:
        kind = d["composition"]
        if kind == "stack":
            layers = [from_dict(l, f"{where}: layer l{i}", cell_from_dict, error) for i, l in enumerate(d["layers"])]
            return Stack(layers, dropout=d["dropout"], name=d["name"])
        if kind == "bidirectional":
            return Bidirectional(from_dict(d["cell"], where, cell_from_dict, error), merge=d["merge"], name=d["name"])
    except (KeyError, TypeError) as exc:
        raise error(f"{where}: the composition's declaration is incomplete ({exc!r})") from None
    except CellError as exc:
        raise error(f"{where}: {exc}") from None
    raise error(f"{where}: unknown composition {kind!r} (expected 'stack' or 'bidirectional')")
