"""Costs of a cell, read off its programs: FLOPs, stored activations, memory, parameters.

Counting rules (per sample, per step):

* ``matvec``: 2·m·n per term (an m×n matrix), plus the additions combining several terms;
* element-wise ``ew``: ``sympy.count_ops`` of the template × the node size (one op per
  function application, add, multiply, power ...; a copy ``_0`` is free);
* ``sum``: n;  ``lse``: 4n (max, subtract, exp, add);  ``slice``/``pad``/``concat``: 0;
* parameter gradients: an ``outer`` term ``Σ_b a bᵀ`` is 2·m·n per sample, a ``batch`` term n.

Stored activations are the forward values the backward program reads (a lower bound
on what an executor must keep for BPTT; the NumPy reference keeps every value).
A state is stored once per step (``h[t-1]`` of step t is ``h[t]`` of step t-1), and
inputs and targets are the caller's arrays, listed but not counted as activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp

from ..aliases import forward_aliases
from ..autodiff import backward_step
from ..gradspec import Batch
from ..ir import key_str, time_label
from ..show import TextShown


@lru_cache(maxsize=4096)
def template_ops(template: sp.Expr) -> int:
    """Operations in an element-wise template (``sympy.count_ops``)."""
    return int(sp.count_ops(template))


def _matvec(prog, node):
    m, n = node.size, prog.node(node.args[0]).size
    terms = node.attrs["terms"]
    return "matvec", 2 * m * n * len(terms) + m * (len(terms) - 1)


def _arg_units(factor):
    """A reduction of ``factor`` operations per unit of its argument."""
    return lambda prog, node: ("reduction", factor * prog.node(node.args[0]).size)


def _per_sample_matrix(flops_per_entry):
    """A matrix-state product over the (m, n) matrix of each sample (attrs shape)."""
    def cost(prog, node):
        m, n = node.attrs["shape"]
        return "matvec", flops_per_entry * m * n
    return cost


def _free(prog, node):
    return "move", 0


FLOPS = {  # op -> (prog, node) -> (category, flops per sample); the counting rules above
    "matvec": _matvec,
    "ew": lambda prog, node: ("elementwise", template_ops(node.attrs["expr"]) * node.size),
    "sum": _arg_units(1),
    "lse": _arg_units(4),
    "outer": _per_sample_matrix(1),   # matrix states: a bᵀ
    "smatvec": _per_sample_matrix(2),  # X v
    "mreduce": _arg_units(1),
    # moves (slice, pad, concat, a broadcast, pass "stack"'s names of memory), leaves, and the
    # derived weights' ops (their program runs once per call, outside the step: not counted)
    **{op: _free for op in ("slice", "pad", "concat", "mbcast", "view", "stackv",
                            "wew", "transpose", "matmul", "sumto",
                            "input", "target", "param", "state", "seed")},
}


def node_flops(prog, key) -> tuple:
    """``(category, flops per sample)`` of one node: matvec, elementwise, reduction or move."""
    node = prog.node(key)
    return FLOPS[node.op](prog, node)


def _zero():
    return {"matvec": 0, "elementwise": 0, "reduction": 0, "move": 0}


def program_flops(prog) -> dict:
    out = _zero()
    for key, node in prog.nodes.items():
        if not node.is_leaf:
            cat, f = node_flops(prog, key)
            out[cat] += f
    return out


def _size(shape) -> int:
    return int(np.prod(shape)) if isinstance(shape, tuple) else int(shape)


@dataclass(repr=False)
class Cost(TextShown):
    """The costs of one cell at sequence length ``T``, batch ``B`` and ``dtype``."""

    cell: str
    T: int
    B: int
    dtype: str
    itemsize: int
    forward: dict = field(default_factory=dict)    # category -> FLOPs per sample per step
    backward: dict = field(default_factory=dict)   # category -> FLOPs per sample per step (adjoints)
    param_grads: int = 0                           # FLOPs per sample per step (∂θ terms)
    stored: dict = field(default_factory=dict)     # key string -> units stored per sample per step
    inputs_read: dict = field(default_factory=dict)  # inputs/targets the backward step reads
    all_values: int = 0                            # units of every forward value per sample per step
    state_units: int = 0
    params: dict = field(default_factory=dict)     # name -> number of scalars

    # per step, per sample
    @property
    def forward_flops(self) -> int:
        return sum(self.forward.values())

    @property
    def backward_flops(self) -> int:
        return sum(self.backward.values()) + self.param_grads

    @property
    def stored_units(self) -> int:
        return sum(self.stored.values())

    @property
    def stored_bytes(self) -> int:
        """Activation bytes stored for BPTT per sample per step."""
        return self.stored_units * self.itemsize

    # whole sequence
    @property
    def n_params(self) -> int:
        return sum(self.params.values())

    @property
    def param_bytes(self) -> int:
        return self.n_params * self.itemsize

    @property
    def sequence_flops(self) -> dict:
        tb = self.T * self.B
        return {"forward": tb * self.forward_flops, "backward": tb * self.backward_flops,
                "total": tb * (self.forward_flops + self.backward_flops)}

    @property
    def activation_bytes(self) -> int:
        """Stored activations over the sequence: T·B·(per step) + the initial states."""
        return (self.T * self.stored_units + self.state_units) * self.B * self.itemsize

    @property
    def memory(self) -> dict:
        """Bytes for one training step over (T, B): activations, parameters, their gradients."""
        a, p = self.activation_bytes, self.param_bytes
        keep_all = (self.T * self.all_values + self.state_units) * self.B * self.itemsize
        return {"activations": a, "params": p, "grads": p, "total": a + 2 * p,
                "activations (every forward value)": keep_all}

    def as_dict(self) -> dict:
        return {"cell": self.cell, "T": self.T, "B": self.B, "dtype": self.dtype,
                "forward": dict(self.forward), "backward": dict(self.backward),
                "param_grads": self.param_grads, "forward_flops": self.forward_flops,
                "backward_flops": self.backward_flops, "stored": dict(self.stored),
                "stored_bytes": self.stored_bytes, "params": dict(self.params),
                "n_params": self.n_params, "param_bytes": self.param_bytes,
                "sequence_flops": self.sequence_flops, "memory": self.memory}

    def _text(self) -> str:
        return self.table()

    def table(self) -> str:
        return cost_table(self)

    def __str__(self) -> str:
        return cost_table(self)


def cost(cell, T: int = 1000, B: int = 32, dtype="float32") -> Cost:
    """FLOPs, stored activations and memory of ``cell`` (see the module docstring)."""
    from ..backends.validate import float_dtype
    from ..checks import count, one_cell
    one_cell("cost", cell)
    T, B = count("cost", "T", T), count("cost", "B", B)
    dt = float_dtype(dtype, "cost: dtype")
    step = cell.step
    bwd = backward_step(step)
    fwd = step.prog
    c = Cost(step.name, int(T), int(B), dt.name, dt.itemsize)
    c.forward = program_flops(fwd)
    c.backward = program_flops(bwd.prog)
    for specs in bwd.grads.values():
        for spec in specs:
            if isinstance(spec, Batch):
                c.param_grads += bwd.prog.node(spec.g).size
            else:
                a, v = bwd.prog.node(spec.g).size, bwd.prog.node(spec.v).size
                c.param_grads += 2 * a * v
    read = []
    for node in bwd.prog.nodes.values():
        read += node.args
    for specs in bwd.grads.values():
        for spec in specs:
            read += spec.reads
    stored = {}
    for key in dict.fromkeys(read):
        node = fwd.nodes.get(key)
        if node is None or node.op == "param":
            continue
        if node.op in ("input", "target"):
            c.inputs_read[key_str(key)] = node.size
        elif node.op == "state" or (key[0] in step.states and key[1] == "t"):
            stored.setdefault((key[0], "t"), node.size)  # h[t-1] and h[t]: one array per step
        else:
            stored[key] = node.size
    alias = forward_aliases(cell)  # a generated value under the name the listings give it (a₁, pre(o))
    for key, n in stored.items():  # a generated name printed like a user's: both counted
        label = f"{alias[key]}{time_label(key[1])}" if key in alias else key_str(key)
        c.stored[label if label not in c.stored else f"{key[0]}{time_label(key[1])}"] = n
    c.all_values = sum(n.size for n in fwd.nodes.values() if not n.is_leaf)
    c.state_units = sum(step.states.values())
    c.params = {p: _size(s) for p, s in step.params.items()}
    return c


# ----------------------------------------------------------------------------- printing
def _si(x: float, unit: str = "") -> str:
    for div, pre in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {pre}{unit}"
    return f"{x:.4g} {unit}".rstrip()


def _bytes(n: int) -> str:
    for div, pre in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {pre}"
    return f"{n} B"


def cost_table(c: Cost) -> str:
    """A plain-text table of a :class:`Cost`."""
    rows = [f"costs of {c.cell!r}: T = {c.T}, B = {c.B}, {c.dtype}"]
    rows.append(f"  {'FLOPs per sample per step':<34}{'forward':>14}{'backward':>14}")
    for cat in ("matvec", "elementwise", "reduction"):
        rows.append(f"  {cat:<34}{c.forward[cat]:>14,}{c.backward[cat]:>14,}")
    rows.append(f"  {'parameter gradients':<34}{'':>14}{c.param_grads:>14,}")
    rows.append(f"  {'total':<34}{c.forward_flops:>14,}{c.backward_flops:>14,}")
    sf = c.sequence_flops
    rows.append(f"  sequence (T·B): forward {_si(sf['forward'], 'FLOP')}, backward "
                f"{_si(sf['backward'], 'FLOP')}, total {_si(sf['total'], 'FLOP')}")
    stored = ", ".join(f"{k} ({v})" for k, v in c.stored.items()) or "none"
    rows.append(f"  stored for BPTT per sample per step: {c.stored_units} values = "
                f"{_bytes(c.stored_bytes)}: {stored}")
    if c.inputs_read:
        rows.append("  also read by the backward step (the caller's arrays): "
                    + ", ".join(f"{k} ({v})" for k, v in c.inputs_read.items()))
    m = c.memory
    rows.append(f"  memory: activations {_bytes(m['activations'])} (keeping every forward value: "
                f"{_bytes(m['activations (every forward value)'])}), parameters {_bytes(m['params'])}, "
                f"gradients {_bytes(m['grads'])}; total {_bytes(m['total'])}")
    rows.append(f"  parameters: {c.n_params:,} ("
                + ", ".join(f"{p} {n:,}" for p, n in c.params.items()) + ")")
    return "\n".join(rows)
