"""What every composition of cells shares: its layers, their prefixed names, its interface.

A composition (:class:`~.stack.Stack`, :class:`~.bidirectional.Bidirectional`) looks like a
cell to ``rc.compile``, ``rc.Trainer`` and ``rc.explain``: a ``step`` that lists its inputs,
targets, outputs, states and parameters (:class:`ComposedStep`), ``init_params``, a name
and a text form.  The parameters and states of layer ``k`` are named ``<prefix>.<name>``
(``l0.Wz``, ``fwd.h``, ``l1.bwd.c``: one namespace per layer, so two GRUs never share a
name); inputs, targets and outputs keep the names of the layer they belong to.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from ..cell import Cell
from ..errors import CellError


@dataclass
class ComposedStep:
    """A composition's interface, like a lowered cell's (:class:`rnncomp.lower.Step`)."""

    name: str
    inputs: dict = field(default_factory=dict)    # name -> size (the bottom layer's)
    targets: dict = field(default_factory=dict)   # name -> size (the top layer's)
    states: dict = field(default_factory=dict)    # prefixed name -> size
    state_init: dict = field(default_factory=dict)  # prefixed state -> prefixed param or None
    params: dict = field(default_factory=dict)    # prefixed name -> shape
    outputs: dict = field(default_factory=dict)   # name -> size
    has_loss: bool = False
    _forward_targets: tuple = ()  # validate.forward_targets: a composition's forward reads no target
    reads_lengths: bool = False   # whether sequence lengths change its numbers (a reversed pass inside)


def is_layer(obj) -> bool:
    return isinstance(obj, (Cell, Composition))


def reads_targets(layer) -> tuple:
    """The targets a layer's outputs or state updates read (teacher forcing)."""
    if isinstance(layer, Composition):
        return layer.forward_targets
    from ..backends.validate import forward_targets  # noqa: PLC0415 - the lowering's own rule
    return forward_targets(layer.step)


def describe(layer) -> str:
    """``cell 'gru'`` or ``stack(lstm, gru)``: how messages name a layer."""
    return f"cell {layer.name!r}" if isinstance(layer, Cell) else layer.name


def _prefixed(d: dict, prefix: str) -> dict:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def split(given: dict | None, prefixes) -> list[dict]:
    """``{"l0.h": a, "l1.c": b}`` → ``[{"h": a}, {"c": b}]`` (one dict per prefix)."""
    given = given or {}
    out = [{} for _ in prefixes]
    for k, v in given.items():
        head, _, rest = k.partition(".")
        out[prefixes.index(head)][rest] = v
    return out


class Composition:
    """Base of :class:`~.stack.Stack` and :class:`~.bidirectional.Bidirectional`.

    A subclass sets ``name``, ``layers`` (cells or compositions), ``prefixes`` (one per
    layer) and builds ``step`` with :meth:`_step`."""

    name: str
    layers: list
    prefixes: list
    step: ComposedStep

    def _step(self, inputs, targets, outputs, has_loss) -> ComposedStep:
        st = ComposedStep(self.name, dict(inputs), dict(targets), outputs=dict(outputs), has_loss=has_loss,
                          reads_lengths=self.reads_lengths)
        for prefix, layer in zip(self.prefixes, self.layers):
            ls = layer.step
            st.states.update(_prefixed(ls.states, prefix))
            st.params.update(_prefixed(ls.params, prefix))
            st.state_init.update({f"{prefix}.{s}": None if p is None else f"{prefix}.{p}"
                                  for s, p in ls.state_init.items()})
        return st

    @property
    def forward_targets(self) -> tuple:
        """The targets this composition's forward reads (none: checked at declaration)."""
        return ()

    @property
    def reads_lengths(self) -> bool:
        """Whether a call's sequence lengths change its numbers (a reversed pass inside)."""
        return any(isinstance(l, Composition) and l.reads_lengths for l in self.layers)

    def leaves(self, prefix: str = "") -> list:
        """``[(path, cell)]``: every cell inside, bottom to top (``("l1.fwd", gru)``)."""
        out = []
        for p, layer in zip(self.prefixes, self.layers):
            path = f"{prefix}{p}"
            out += layer.leaves(path + ".") if isinstance(layer, Composition) else [(path, layer)]
        return out

    def init_params(self, seed: int = 0, dtype="float64") -> dict:
        """Fresh parameters of every layer, named ``<layer>.<param>``; deterministic in
        ``seed``.  The first cell gets ``seed`` itself (a stack of one cell starts where the
        cell does), every other one a seed drawn from ``seed`` and its path."""
        out = {}
        for i, (path, cell) in enumerate(self.leaves()):
            s = seed if i == 0 else int(np.random.SeedSequence([seed, zlib.crc32(path.encode())]).generate_state(1)[0])
            out.update(_prefixed(cell.init_params(s, dtype), path))
        return out

    def __str__(self) -> str:
        lines = [f"{self.name}: {self._summary()}"]
        for prefix, layer in zip(self.prefixes, self.layers):
            body = str(layer).splitlines()
            lines.append(f"  layer {prefix}: " + body[0])
            lines += ["    " + line for line in body[1:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        st = self.step
        return (f"<{type(self).__name__} {self.name!r}: {len(self.layers)} layer(s), "
                f"{len(st.states)} state(s), {len(st.params)} parameter(s), "
                f"{'a loss' if st.has_loss else 'no loss'}; print() it for its layers>")

    def _text(self) -> str:
        return str(self)

    def _summary(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define _summary()")


def check_layer(obj, where: str, targets_ok: bool = False) -> None:
    """A cell or a composition, whose forward reads no target unless ``targets_ok`` (the
    top layer of a stack, which is given the targets)."""
    if not is_layer(obj):
        raise CellError(f"{where}: expected a cell (rc.Cell) or a composition (rc.Stack, rc.Bidirectional), "
                        f"got {type(obj).__name__}")
    bad = () if targets_ok else reads_targets(obj)
    if bad:
        raise CellError(f"{where} ({describe(obj)}): its outputs or state updates read target "
                        f"{', '.join(map(repr, bad))} (teacher forcing); inside a composition only the top "
                        "layer of a stack is given targets, and only for its loss")


def layer_name(name, default: str, where: str) -> str:
    """The composition's name: ``name`` (a non-empty string) or ``default``."""
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise CellError(f"{where}: name must be a non-empty string, got {name!r}")
    return name
