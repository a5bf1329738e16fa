"""Equations of a cell and of its derived backward step, as text and LaTeX (a program's nodes
as expressions are :mod:`rnncomp.equations`).

    >>> import rnncomp as rc
    >>> print(rc.explain(rc.cells.elman(2, 3, 1)).backward_text())  # doctest: +ELLIPSIS
    backward step of 'elman' (t = T … 1; δ⁺h[T] = 0)
    ...
      δpre(h)[t] = δh[t]*(1 - h[t]**2)
      δh[t-1] = Uᵀ·δpre(h)[t]   (carried: δ⁺h[t-1])
    ...
"""
from __future__ import annotations

import sympy as sp

from .autodiff import LOSS_ONLY, Cotangents, backward_step
from .dsl import RowSum, Vec
from .equations import Outer, node_expr, program_equations, stored_values
from .errors import CellError
from .gradspec import Batch
from .ir import NodeSym, display, internal, key_str
from .aliases import backward_aliases, forward_aliases, plain_aliases
from .latex import ident_latex, name_latex
from .lower import LOSS
from .show import TextShown


# ----------------------------------------------------------------------------- the cell
def _user_symbols(cell, expr):
    repl = {}
    for s in expr.free_symbols:
        if not isinstance(s, Vec):
            continue
        base = s.name[:-4] if s.name.endswith(".new") else s.name
        d = cell.decls[base]
        if s.name.endswith(".new") or d.kind in ("input", "target", "output", "define"):
            repl[s] = NodeSym((base, "t"))
        elif d.kind == "state":
            repl[s] = NodeSym((base, "t-1"))
    return expr.xreplace(repl)


def _shape(s):
    return "×".join(map(str, s)) if isinstance(s, tuple) else str(s)


def cell_equations(cell):
    """[(lhs, rhs)] of the cell in declaration order (sympy objects)."""
    eqs = []
    for d in cell.decls.values():
        if d.kind in ("define", "output"):
            eqs.append((NodeSym((d.name, "t")), _user_symbols(cell, d.expr)))
    for s, e in cell.updates.items():
        eqs.append((NodeSym((s, "t")), _user_symbols(cell, e)))
    if cell.loss_expr is not None:
        loss = _user_symbols(cell, cell.loss_expr)
        prog = cell.step.prog   # ℓ is Σ over the loss's units; one unit (rc.vsum(h)) is ℓ itself
        one = prog.node(prog.node((LOSS, "t")).args[0]).size == 1
        eqs.append((NodeSym((LOSS, "t")), loss if one else RowSum(loss)))
    return eqs


def cell_text(cell) -> str:
    def group(kind, fmt):
        items = [fmt(d) for d in cell.decls.values() if d.kind == kind]
        return ", ".join(items)

    lines = [f"cell {cell.name!r}"]
    for label, kind, fmt in [
        ("inputs", "input", lambda d: f"{d.name}[t] ∈ R^{d.shape}"),
        ("states", "state", lambda d: f"{d.name} ∈ R^{_shape(d.shape)} ({d.name}[0] = "
                                      f"{'0' if d.init == 'zeros' else d.name + '_0, learned'})"),
        ("params", "param", lambda d: f"{d.name} ∈ R^{_shape(d.shape)}"),
        ("targets", "target", lambda d: f"{d.name}[t] ∈ R^{d.shape}"),
    ]:
        g = group(kind, fmt)
        if g:
            lines.append(f"  {label + ':':<9}{g}")
    consts = group("const", lambda d: f"{d.name} ∈ R^{_shape(d.shape)} (fixed)")
    if consts:
        lines.append(f"  {'consts:':<9}{consts}")
    weights = [d for d in cell.decls.values() if d.kind == "weight"]
    if weights:
        lines.append("  derived weights (computed once per call, before the loop):")
        lines += [f"    {display(d.name)} = {sp.sstr(d.expr)}" for d in weights]
    ordered = _ordered(cell)
    for lhs, rhs in ordered:
        lines.append(f"  {lhs} = {sp.sstr(rhs)}")
    return "\n".join(lines)


def derived_gradient_lines(cell) -> list:
    """The chain from the derived weights' gradients to the parameters' (once per call)."""
    from .weights import DerivedWeights
    D = DerivedWeights(cell)
    keep = [k for specs in D.rev.grads.values() for _, k in specs]
    eqs, _ = program_equations(D.rev.prog, keep, set(cell.decls))
    read = [a for n in D.rev.prog.nodes.values() for a in n.args if a in D.prog.nodes]
    fwd, _ = program_equations(D.prog, list(D.outs.values()) + read, set(cell.decls))
    alias = plain_aliases([D.prog, D.rev.prog], set(cell.decls))   # w1 → w₁, δV~2 → δV′
    r = lambda e: e.xreplace({s: NodeSym((internal(alias[s.key]), s.key[1]))  # noqa: E731
                              for s in e.free_symbols if isinstance(s, NodeSym) and s.key in alias})
    lines = ["derived weights, computed once per call before the loop"]
    lines += [f"  {r(lhs)} = {sp.sstr(r(rhs))}" for lhs, rhs in fwd if str(lhs) != sp.sstr(rhs)]
    lines += ["their gradients, chained back once per call after it (δD = ∂L/∂D from above)"]
    lines += [f"  {r(lhs)} = {sp.sstr(r(rhs))}" for lhs, rhs in eqs]
    lines += [f"  ∂L/∂{p} += {' + '.join(str(r(NodeSym(k))) for _, k in specs)}"
              for p, specs in D.rev.grads.items() if p in D.params]
    return lines


def _ordered(cell):
    eqs = cell_equations(cell)
    order = {k: i for i, k in enumerate(cell.step.prog.nodes)}
    return sorted(eqs, key=lambda e: order.get(e[0].key, len(order)))


def cell_latex(cell) -> str:
    rows = [f"{sp.latex(lhs)} &= {sp.latex(rhs)}" for lhs, rhs in _ordered(cell)]
    return "$$\\begin{aligned}" + " \\\\ ".join(rows) + "\\end{aligned}$$"


class Explanation(TextShown):
    """The forward and the derived backward step of a cell, printable several ways.

    Generated values print under readable aliases (:mod:`rnncomp.aliases`): ``pre(o)``,
    ``o``, ``tanh(c)``, ``δpre(o)``; every name the backward listing reads is defined in the
    forward listing, in the backward listing or in its ``where`` block."""

    def __init__(self, cell, cot: Cotangents = LOSS_ONLY):
        self.cell = cell
        self.bwd = backward_step(cell.step, cot)
        fwd = forward_aliases(cell)
        self._alias = {**fwd, **backward_aliases(self.bwd, fwd, set(cell.decls) | set(fwd.values()))}

    def _renamed(self, e):
        """``e`` with every aliased node under its alias (printing only: a key never changes)."""
        return e.xreplace({s: NodeSym((internal(self._alias[s.key]), s.key[1]))
                           for s in e.free_symbols if isinstance(s, NodeSym) and s.key in self._alias})

    def _grad_lines(self):
        out = []
        for p, specs in self.bwd.grads.items():
            terms = []
            for spec in specs:
                if isinstance(spec, Batch):
                    terms.append(NodeSym(spec.g))
                else:
                    g, v = NodeSym(spec.g), NodeSym(spec.v)
                    terms.append(spec.c * (Outer(v, g) if spec.tr else Outer(g, v)))
            out.append((p, sp.Add(*terms)))
        return out

    def _backward_eqs(self):
        keep = [k for specs in self.bwd.grads.values() for s in specs for k in s.reads]
        eqs, exprs = program_equations(self.bwd.prog, keep, set(self.cell.decls))
        stored = stored_values(self.cell.step.prog)
        return ([(lhs, rhs.xreplace(stored)) for lhs, rhs in eqs],
                {k: e.xreplace(stored) for k, e in exprs.items()})

    def _forward_values(self, exprs) -> list:
        """[(lhs, rhs)] of the forward temporaries the backward step reads (pre(o)[t],
        tanh(c)[t]...) that the cell's equations do not name, each defined in terms the
        reader has: every name a listing uses is defined somewhere in it."""
        prog = self.cell.step.prog
        named = {(n, "t") for n, d in self.cell.decls.items() if d.kind in ("output", "define", "state")}
        named |= {(LOSS, "t")}
        stored = stored_values(prog)
        todo = [s for e in exprs for s in e.free_symbols if isinstance(s, NodeSym)]
        need = set()
        while todo:
            k = todo.pop().key
            if k in need or k in named or k not in prog.nodes or prog.node(k).is_leaf:
                continue
            need.add(k)
            todo += [s for s in node_expr(prog, k).xreplace(stored).free_symbols if isinstance(s, NodeSym)]
        return [(NodeSym(k), node_expr(prog, k).xreplace(stored)) for k in prog.nodes if k in need]

    def _listing(self):
        """The backward step's pieces, renamed: (equations, carried, gradients, where)."""
        eqs, exprs = self._backward_eqs()
        carried = []
        for s, k in self.bwd.carry_out.items():
            if k is None:
                carried.append((s, None, sp.S.Zero))
            else:
                carried.append((s, k, exprs.get(k, NodeSym(k))))
        grads = self._grad_lines()
        used = self._forward_values([r for _, r in eqs] + [e for _, _, e in carried] + [e for _, e in grads])
        r = self._renamed
        return ([(r(lhs), r(rhs)) for lhs, rhs in eqs], [(s, k, r(e)) for s, k, e in carried],
                [(p, r(e)) for p, e in grads], [(r(lhs), r(rhs)) for lhs, rhs in used])

    def forward_text(self) -> str:
        return str(self.cell)

    def backward_text(self) -> str:
        st = self.bwd.step
        cot = self.bwd.cot
        if cot == LOSS_ONLY:
            zero = ", ".join(f"δ⁺{s}[T] = 0" for s in st.states)
        else:  # a VJP: the final states' cotangents come from the caller
            zero = ", ".join(f"δ⁺{s}[T] = d_final[{s!r}]" for s in st.states)
        lines = [f"backward step of {st.name!r} (t = T … 1; {zero})"]
        for o, k in self.bwd.out_seeds.items():
            lines.append(f"  {key_str(k)}: the cotangent of output {o}[t] from the caller (d_outputs[{o!r}])")
        eqs, carried, grads, used = self._listing()
        lines += [f"  {lhs} = {sp.sstr(rhs)}" for lhs, rhs in eqs]
        defined = {lhs.key for lhs, _ in eqs}
        for s, k, rhs in carried:
            if isinstance(rhs, NodeSym) and rhs.key in defined:
                lines.append(f"  (carried: δ⁺{s}[t-1] = {sp.sstr(rhs)})")
            else:
                lines.append(f"  δ{s}[t-1] = {sp.sstr(rhs)}   (carried: δ⁺{s}[t-1])")
        if cot != LOSS_ONLY:
            lines.append("initial-state cotangents: " + ", ".join(f"δ{s}[0] = δ{s}[t-1] at t = 1" for s in st.states))
        w = self._alias.get(self.bwd.weight, "w")
        lines.append(f"parameter gradients ({w}[t]: the weight of step t in the loss)")
        lines += [f"  ∂L/∂{display(p)} = Σ_t Σ_batch {sp.sstr(e)}" for p, e in grads]
        lines += [f"  ∂L/∂{display(p)} = " + (f"Σ_batch δ⁺{s_}[0]" if carried else "0")
                  for p, s_, carried in self._learned_initial_states()]
        if used:
            lines.append("where (forward values of step t, kept by the forward pass)")
            lines += [f"  {lhs} = {sp.sstr(rhs)}" for lhs, rhs in used]
        if st.derived:
            lines += derived_gradient_lines(self.cell)
        return "\n".join(lines)

    def _learned_initial_states(self) -> list:
        """(parameter, state, whether a cotangent is carried) of each learned initial state: its
        gradient is the cotangent the backward carries out of step 1, summed over the batch
        (0 where the step reads no previous value of the state)."""
        return [(p, s, self.bwd.carry_out.get(s) is not None)
                for s, p in self.bwd.step.state_init.items() if p is not None]

    def latex(self) -> str:
        rows = [f"{sp.latex(l)} &= {sp.latex(r)}" for l, r in _ordered(self.cell)]
        eqs, carried, grads, used = self._listing()
        rows += [f"{sp.latex(l)} &= {sp.latex(r)}" for l, r in eqs]
        for s, k, rhs in carried:
            if k is None:
                continue
            carried_sym = sp.latex(NodeSym((f"δ⁺{s}", "t-1")))
            rows.append(f"{carried_sym} &= {sp.latex(rhs)}")
        rows += [f"\\frac{{\\partial L}}{{\\partial {(name_latex if '%' in p else ident_latex)(p)}}} &= \\sum_t {sp.latex(e)}"
                 for p, e in grads]
        rows += [f"\\frac{{\\partial L}}{{\\partial {ident_latex(p)}}} &= "
                 + (sp.latex(NodeSym((f"δ⁺{s_}", 0))) if carried else "0")
                 for p, s_, carried in self._learned_initial_states()]
        if used:
            rows.append("&\\text{where}")
            rows += [f"{sp.latex(lhs)} &= {sp.latex(rhs)}" for lhs, rhs in used]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def picture(self, kind: str = "gradient", detail: str = "compact"):
        """The graph of these equations for a notebook (SVG): see :func:`rnncomp.inspect.picture`."""
        from .inspect.draw import picture
        return picture(self.cell, kind, detail=detail)

    def markdown(self) -> str:
        return f"$$\n{self.latex()}\n$$\n"

    def __str__(self) -> str:
        return self.forward_text() + "\n" + self.backward_text()

    def _text(self) -> str:  # at a prompt, rc.explain(cell) shows the equations
        return str(self)

    def _repr_latex_(self) -> str:
        return f"$${self.latex()}$$"


def explain(cell, wrt=None, d_outputs=None, algorithm=None) -> Explanation:
    """The cell's equations and its derived BPTT step: ``print(rc.explain(cell))``.

    ``algorithm="rtrl"`` (or "snap", "snap2", "uoro", "rbp"): the recursion that gradient
    algorithm derives instead (:mod:`rnncomp.algorithms.explain`).

    ``wrt="inputs"`` (or input names) adds the inputs' cotangents ``δx[t]`` (what
    ``model.vjp`` returns); ``d_outputs=True`` (or output names) seeds the step with the
    outputs' external cotangents ``δyᵉˣᵗ[t]`` and the final states' (``d_final``), as a
    layer inside a larger model is differentiated (the default for a cell that declares no
    loss: without them its backward step would be all zeros).  A composition (``rc.Stack``,
    ``rc.Bidirectional``): each cell in it, with the backward step it runs there."""
    from .checks import a_cell
    a_cell("rc.explain", cell)
    if algorithm is not None and (wrt is not None or d_outputs is not None):
        from .errors import ArgumentError
        raise ArgumentError(f"rc.explain: wrt= and d_outputs= shape the BPTT listing; algorithm={algorithm!r} "
                            "prints that algorithm's recursion, which takes neither")
    if algorithm is not None:
        from .algorithms.explain import explain_algorithm
        return explain_algorithm(cell, algorithm)
    if hasattr(cell, "layers"):
        from .compose.explain import ComposedExplanation
        return ComposedExplanation(cell, wrt, d_outputs)
    if wrt is None and d_outputs is None:
        if cell.step.has_loss or not cell.step.outputs:
            return Explanation(cell)
        d_outputs = True  # no loss: its gradient comes from its outputs' cotangents, as in a layer
    st = cell.step
    pick = lambda v, every: tuple(every) if v is True or v == "inputs" else (  # noqa: E731
        () if v is None else tuple(n for n in every if n in ((v,) if isinstance(v, str) else v)))
    for v, every, kind in ((wrt, st.inputs, "input"), (d_outputs, st.outputs, "output")):
        if not (v is None or v is True or isinstance(v, str) or hasattr(v, "__iter__")):  # tuple(3): "not iterable"
            raise CellError(f"cell {st.name!r}: explain: {'wrt' if kind == 'input' else 'd_outputs'} must be "
                            f"a name, a list of names, True or None, got {v!r}")
        names = () if v in (None, True, "inputs") else ((v,) if isinstance(v, str) else tuple(v))
        bad = [n for n in names if n not in every]
        if bad:
            raise CellError(f"cell {st.name!r}: explain: {', '.join(map(repr, bad))} is not an {kind}; "
                            f"{kind}s: {', '.join(map(repr, every)) or 'none'}")
    return Explanation(cell, Cotangents(loss=True, outputs=pick(d_outputs, st.outputs),
                                        inputs=pick(wrt, st.inputs), final=True))
