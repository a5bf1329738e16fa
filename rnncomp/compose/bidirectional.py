"""``rc.Bidirectional``: a layer run forward in time and, with its own parameters, backward.

The reversed pass reads each sequence reversed *within its own length* (the padding stays
after the sequence, where it touches none of its outputs), and its outputs are put back in
time order before they are merged with the forward pass's: ``"concat"`` (``[y_fwd, y_bwd]``
per step, twice the size) or ``"sum"``.  The wrapped cell's targets and loss are not used
(put a layer with a loss on top with :class:`~.stack.Stack`).

    >>> import numpy as np
    >>> a = np.arange(4.0)[:, None, None] * np.ones((4, 2, 1))   # (T, B, n), T = 4
    >>> reverse(a, np.array([4, 2]))[:, :, 0].T.tolist()          # the 2nd sequence has 2 steps
    [[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 2.0, 3.0]]
"""
from __future__ import annotations

import numpy as np

from ..errors import CellError
from .layers import Composition, check_layer, describe, layer_name

MERGES = ("concat", "sum")


def reverse(a: np.ndarray, lengths=None) -> np.ndarray:
    """``a`` (T, B, ...) with each sequence b's first ``lengths[b]`` steps reversed, the rest
    (padding) left in place; all T steps when ``lengths`` is None.  Its own inverse."""
    if lengths is None:
        return np.ascontiguousarray(a[::-1])
    t = np.arange(a.shape[0])[:, None]
    src = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return np.ascontiguousarray(a[src, np.arange(a.shape[1])[None, :]])


class Bidirectional(Composition):
    """``rc.Bidirectional(cell, merge="concat")``: ``fwd.<name>`` and ``bwd.<name>``, two
    copies of the cell's parameters and states, the second run over reversed time.  Each
    output of the cell is an output of the same name, merged (``"concat"``: 2n units,
    ``"sum"``: n).  The final states of ``bwd`` are those after its last step, the first
    step of the sequence."""

    reads_lengths = True

    def __init__(self, cell, merge: str = "concat", name: str | None = None):
        check_layer(cell, "rc.Bidirectional")
        if merge not in MERGES:
            raise CellError(f"rc.Bidirectional({describe(cell)}): merge must be one of "
                            f"{', '.join(map(repr, MERGES))}, got {merge!r}")
        outs = cell.step.outputs
        if not outs:
            raise CellError(f"rc.Bidirectional({describe(cell)}): the cell declares no output to merge")
        self.cell, self.merge = cell, merge
        self.layers, self.prefixes = [cell, cell], ["fwd", "bwd"]
        self.name = layer_name(name, f"bidirectional({cell.name})", "rc.Bidirectional")
        sizes = {o: 2 * n if merge == "concat" else n for o, n in outs.items()}
        self.step = self._step(cell.step.inputs, {}, sizes, False)

    def __str__(self) -> str:  # the two directions are one cell: print it once
        body = str(self.cell).splitlines()
        return "\n".join([f"{self.name}: {self._summary()}", "  layers fwd, bwd: " + body[0]]
                         + ["    " + line for line in body[1:]])

    def _summary(self) -> str:
        return (f"forward (fwd) and reversed-time (bwd) passes of {describe(self.cell)}, outputs "
                f"merged by {self.merge}")
