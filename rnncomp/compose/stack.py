"""``rc.Stack``: layers run one above the other, each reading the outputs of the one below.

The rule: every layer below the top declares exactly one output, and the layer above it
exactly one input of that size (checked here, at declaration); the bottom layer's inputs are
the stack's inputs, the top layer's outputs, targets and loss are the stack's.  A lower
layer's own targets and loss are not used.

    >>> import rnncomp as rc
    >>> model = rc.Stack([rc.cells.lstm(4, 16, 8), rc.cells.gru(8, 16, 2)])
    >>> sorted(model.step.states), list(model.step.outputs), list(model.step.targets)
    (['l0.c', 'l0.h', 'l1.h'], ['y'], ['target'])
"""
from __future__ import annotations

from ..errors import CellError
from .layers import Composition, check_layer, describe, layer_name


class Stack(Composition):
    """``rc.Stack([cell1, cell2, ...], dropout=0.0)``: layer ``k`` (named ``l<k>``: its
    parameters and states are ``l<k>.<name>``) reads layer ``k-1``'s output.

    ``dropout``: the probability of zeroing each unit of a layer's output before the layer
    above reads it (inverted dropout, scaled by 1/(1-p)); only in the training calls
    (``loss_and_grad``, ``vjp``, ``forward(keep=True)``), never in ``forward``."""

    def __init__(self, layers, dropout: float = 0.0, name: str | None = None):
        try:
            layers = list(layers)
        except TypeError:
            raise CellError(f"rc.Stack: expected a list of cells, got {type(layers).__name__}") from None
        if not layers:
            raise CellError("rc.Stack: no layers (give a list of one or more cells)")
        for i, layer in enumerate(layers):
            check_layer(layer, f"rc.Stack, layer l{i}", targets_ok=i == len(layers) - 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise CellError(f"rc.Stack: dropout must be a number in [0, 1), got {dropout!r}")
        self.layers, self.dropout = layers, float(dropout)
        self.prefixes = [f"l{i}" for i in range(len(layers))]
        self.name = layer_name(name, f"stack({', '.join(l.name for l in layers)})", "rc.Stack")
        self.feeds = [self._feed(i) for i in range(1, len(layers))]
        top = layers[-1].step
        self.step = self._step(layers[0].step.inputs, top.targets, top.outputs, top.has_loss)

    def _feed(self, i: int) -> tuple:
        """``(output of layer i-1, input of layer i)``: the one wire between them."""
        below, above = self.layers[i - 1], self.layers[i]
        outs, ins = below.step.outputs, above.step.inputs
        where = f"rc.Stack, layer l{i - 1} ({describe(below)})"
        if len(outs) != 1:
            raise CellError(f"{where} declares {len(outs)} outputs ({', '.join(map(repr, outs)) or 'none'}); "
                            f"a layer below the top feeds exactly one output to the layer above")
        if len(ins) != 1:
            raise CellError(f"rc.Stack, layer l{i} ({describe(above)}) declares {len(ins)} inputs "
                            f"({', '.join(map(repr, ins)) or 'none'}); a layer above another reads exactly "
                            "one input, the output of the layer below")
        (o, n_out), (x, n_in) = next(iter(outs.items())), next(iter(ins.items()))
        if n_out != n_in:
            raise CellError(f"rc.Stack: layer l{i} ({describe(above)}) reads input {x!r} of size {n_in}, but "
                            f"layer l{i - 1} ({describe(below)}) gives output {o!r} of size {n_out}")
        return o, x

    def _summary(self) -> str:
        wires = ", ".join(f"l{i}.{o} → l{i + 1}.{x}" for i, (o, x) in enumerate(self.feeds))
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return f"{len(self.layers)} layer(s), bottom to top{': ' + wires if wires else ''}{drop}"
