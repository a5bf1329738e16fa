"""Independent references for compositions (tests/test_compose*.py).

``flatten(stack)``: a stack of cells written as ONE cell (layer k's names prefixed ``l<k>_``,
layer k's input replaced by layer k-1's output, only the top layer's loss): the compiler
differentiates it step by step across the layers, with no VJP chaining, so it is an oracle
for the layer-by-layer composition.  ``bidirectional_outputs``: a plain loop over the
sequences, each reversed by hand within its own length.  ``stackable``: a random cell rebuilt
with one input (its old inputs become projections of it) and one output (the others become
definitions), so random cells of any sizes stack.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

import rnncomp as rc

from fuzzgen import _generated, _learned_init, renamed
from rnncomp.weight_dsl import internal_name


def flatten(stack) -> rc.Cell:
    out = rc.Cell("flat")
    feed = None
    for i, layer in enumerate(stack.layers):
        top = i == len(stack.layers) - 1
        new = {n: f"l{i}_{n}" for n in layer.decls}
        if i:
            new[next(iter(layer.step.inputs))] = feed
        expr = lambda e, new=new: renamed(e, new)  # noqa: E731
        for d in layer.decls.values():
            if d.kind == "input":
                if i == 0:
                    out.input(new[d.name], d.shape)
            elif d.kind == "target":
                if top:
                    out.target(new[d.name], d.shape)
            elif d.kind == "state":
                out.state(new[d.name], d.shape, init=d.init)
            elif d.kind == "param" and not _learned_init(layer, d):
                out.param(new[d.name], d.shape, init=d.init)
            elif d.kind in ("output", "define"):
                getattr(out, "output" if (d.kind == "output" and top) else "define")(new[d.name], expr(d.expr))
            else:
                _array_decl(out, d, new, expr)
        for s, e in layer.updates.items():
            out.update(new[s], expr(e))
        if top and layer.loss_expr is not None:
            out.loss(expr(layer.loss_expr))
        if not top:
            feed = new[next(iter(layer.step.outputs))]
    return out


def flat_names(stack) -> dict:
    """Stack names (``l1.Wz``) → flattened cell names (``l1_Wz``), for params and states;
    inputs/targets/outputs keep the layer's own name, prefixed in the flat cell."""
    m = {}
    for i, layer in enumerate(stack.layers):
        st = layer.step
        for n in list(st.params) + list(st.states):
            m[f"l{i}.{n}"] = f"l{i}_{n}"
    return m


def to_flat(stack, params=None, inputs=None, targets=None, h0=None):
    """The stack's call data as the flattened cell's."""
    m = flat_names(stack)
    L = len(stack.layers)
    ren = lambda d: None if d is None else {m[k]: v for k, v in d.items()}  # noqa: E731
    return (ren(params), None if inputs is None else {f"l0_{k}": v for k, v in inputs.items()},
            None if targets is None else {f"l{L - 1}_{k}": v for k, v in targets.items()}, ren(h0))


def bidirectional_outputs(cell, merge, params, x, lengths, h0=None):
    """Outputs and final states (after each sequence's own last step) of Bidirectional(cell)
    from a plain loop: each sequence b run forward and, reversed by hand within its length,
    backward."""
    model = rc.compile(cell, backend="numpy", dtype=x.dtype.name)
    pf = {k[4:]: v for k, v in params.items() if k.startswith("fwd.")}
    pb = {k[4:]: v for k, v in params.items() if k.startswith("bwd.")}
    hf = {k[4:]: v for k, v in (h0 or {}).items() if k.startswith("fwd.")}
    hb = {k[4:]: v for k, v in (h0 or {}).items() if k.startswith("bwd.")}
    name = next(iter(cell.step.inputs))
    T, B = x.shape[:2]
    yf, _ = model.forward(pf, {name: x}, hf)
    outs, final = {}, {f"{d}.{s}": np.zeros((B, n)) for d in ("fwd", "bwd") for s, n in cell.step.states.items()}
    for o, n in cell.step.outputs.items():
        outs[o] = np.zeros((T, B, 2 * n if merge == "concat" else n))
    for b in range(B):
        L = int(lengths[b])
        seq = np.concatenate([x[:L, b:b + 1][::-1], x[L:, b:b + 1]])
        yb, _ = model.forward(pb, {name: seq}, {k: v[b:b + 1] for k, v in hb.items()})
        _, fb = model.forward(pb, {name: seq[:L]}, {k: v[b:b + 1] for k, v in hb.items()})
        _, ff = model.forward(pf, {name: x[:L, b:b + 1]}, {k: v[b:b + 1] for k, v in hf.items()})
        for s in cell.step.states:
            final[f"fwd.{s}"][b], final[f"bwd.{s}"][b] = ff[s][0], fb[s][0]
        for o, n in cell.step.outputs.items():
            back = np.concatenate([yb[o][:L][::-1], yb[o][L:]])[:, 0]
            outs[o][:, b] = (np.concatenate([yf[o][:, b], back], -1) if merge == "concat" else yf[o][:, b] + back)
    return outs, final


def stackable(cell, n_in: int) -> rc.Cell:
    """``cell`` with one input of ``n_in`` units (each old input x_i becomes the definition
    x_i = tanh(P_i·in + c_i)) and one output, its last (the others become definitions)."""
    out = rc.Cell(cell.name)
    used = set(cell.decls)
    fresh = lambda stem: next(f"{stem}{k}" for k in range(100) if f"{stem}{k}" not in used)  # noqa: E731
    name = fresh("sin")
    used.add(name)
    xin = out.input(name, n_in)
    last = [d.name for d in cell.decls.values() if d.kind == "output"][-1]
    for d in cell.decls.values():
        if d.kind == "input":
            P, c = fresh("P"), fresh("c")
            used.update([P, c])
            out.define(d.name, sp.tanh(out.param(P, (d.shape, n_in)) @ xin + out.param(c, d.shape, init=("normal", 0.3))))
        elif d.kind == "target":
            out.target(d.name, d.shape)
        elif d.kind == "state":
            out.state(d.name, d.shape, init=d.init)
        elif d.kind == "param" and not _learned_init(cell, d):
            out.param(d.name, d.shape, init=d.init)
        elif d.kind in ("output", "define"):
            getattr(out, "output" if d.name == last else "define")(d.name, d.expr)
        else:
            _array_decl(out, d, {n: n for n in cell.decls}, lambda e: e)
    for s, e in cell.updates.items():
        out.update(s, e)
    if cell.loss_expr is not None:
        out.loss(cell.loss_expr)
    out._fuzz_loss = getattr(cell, "_fuzz_loss", None)
    return out


def _array_decl(out, d, new, expr) -> None:
    """A constant or a derived weight of a layer, declared in ``out`` under ``new`` names (a
    weight the cell named itself is named after its renamed expression, as ``rename_cell`` does)."""
    if d.kind == "const":
        out.const(new[d.name], d.init)
    elif d.kind == "weight" and not _generated(d):
        out.weight(new[d.name], expr(d.expr))
    elif d.kind == "weight":
        new[d.name] = internal_name(expr(d.expr), out.decls)
        out._restore_weight(new[d.name], expr(d.expr))
