"""``rc.explain(composition)``: each cell's equations and the backward step it runs inside.

A cell inside a composition is differentiated as a layer: the top layer of a stack seeds its
backward with its loss, every layer below with the cotangent of the output it feeds upward
(``δyᵉˣᵗ[t]``, which is the cotangent ``δx[t]`` of the input above), and every layer above
the bottom returns its input's cotangent.  Both directions of a bidirectional layer run the
same step (the reversed one on each sequence reversed within its length), so it is shown once.

    >>> import rnncomp as rc
    >>> e = rc.explain(rc.Stack([rc.cells.elman(2, 4, 3), rc.cells.gru(3, 4, 1)]))
    >>> [title.split(":")[0] for title, _ in e.parts]
    ['layer l0', 'layer l1']
"""
from __future__ import annotations

from ..autodiff import Cotangents
from ..cell import Cell
from ..printing import Explanation
from ..show import TextShown
from .stack import Stack


def _parts(layer, path, loss, d_out, wrt, role):
    """[(title, Explanation)] of ``layer`` and the cells inside it, bottom to top."""
    if isinstance(layer, Cell):
        st = layer.step
        cot = Cotangents(loss=loss and st.has_loss, outputs=tuple(o for o in st.outputs if o in d_out),
                         inputs=tuple(st.inputs) if wrt else (), final=True)
        return [(f"layer {path}: cell {layer.name!r}{role}", Explanation(layer, cot))]
    if isinstance(layer, Stack):
        out, top, lp = [], len(layer.layers) - 1, f"{path}." if path else ""
        for i, (p, sub) in enumerate(zip(layer.prefixes, layer.layers)):
            feed = layer.feeds[i] if i < top else None
            if feed:
                desc = f" (feeds layer {lp}l{i + 1}: its δ{feed[0]}ᵉˣᵗ[t] is δ{feed[1]}[t] there)"
            else:
                desc = role or " (the top: its outputs and loss are the model's)"
            out += _parts(sub, lp + p, loss and i == top, d_out if i == top else (feed[0],), wrt or i > 0, desc)
        return out
    name = f"{path + '.' if path else ''}fwd, bwd"  # a bidirectional layer: one cell, two directions
    got = "the second half of the merged outputs' cotangents" if layer.merge == "concat" else \
        "the merged outputs' cotangents"
    role = (f" (fwd and bwd, each with its own parameters; bwd runs on each sequence reversed within its "
            f"length and gets {got}, reversed){role}")
    return _parts(layer.cell, name, False, d_out, wrt, role)


class ComposedExplanation(TextShown):
    """What :func:`rnncomp.explain` returns for a composition: ``parts`` [(title, Explanation)]."""

    def __init__(self, comp, wrt=None, d_outputs=None):
        self.comp = comp
        outs = tuple(comp.step.outputs) if (d_outputs is True or (d_outputs is None and not comp.step.has_loss)) \
            else (() if d_outputs is None else ((d_outputs,) if isinstance(d_outputs, str) else tuple(d_outputs)))
        self.parts = _parts(comp, "", True, outs, wrt is not None, "")

    def forward_text(self) -> str:
        return str(self.comp)

    def backward_text(self) -> str:
        return "\n\n".join(f"{title}\n{e.backward_text()}" for title, e in self.parts)

    def latex(self) -> str:
        return "\n".join(f"% {title}\n{e.latex()}" for title, e in self.parts)

    def markdown(self) -> str:
        return "\n".join(f"**{title}**\n\n{e.markdown()}" for title, e in self.parts)

    def __str__(self) -> str:
        return self.forward_text() + "\n\n" + self.backward_text()

    def _text(self) -> str:
        return str(self)
