"""The random cells and calls of the differential fuzzer (``tests/test_fuzz.py``).

``fuzz_cells``: 1–3 states of sizes that include 1 and sizes that are not multiples of the
SIMD width (8/16), 1–2 inputs, matrix / vector / scalar parameters, transposes, ``W - W.T``
and ``(A + A.T)/2``, ``rc.vslice``/``rc.concat``/``rc.vsum``, stacked gates read through
slices, gated and leaky updates, updates in a random order where each may read the new
value of any state updated before it (and outputs computed from those), a Jordan state fed
from the output y (read as y[t-1]), learned initial states, element-wise trees over smooth
functions and the kinked Abs / Max / Min / Piecewise (each kink argument also declared as
an output, listed in ``cell._fuzz_kinks``), three losses.  Every declared name is drawn from
``NAME_POOL`` (the names the compiler's passes generate) or is a plain one; ``rename_cell``
rebuilds a cell under other names (the renaming check).  ``calls``: T, B, a seed, an optional mask, which
states get an h0, and random native options.  ``fuzz_data``: the arrays of one call.  ``array_cells`` (issue #19,
``tests/test_fuzz_arrays.py``): cells with derived weights (constant masks, exp, weight norm,
W − Wᵀ, products of parameters) and/or a matrix state (outer-product writes, the delta rule,
C @ v, Cᵀ @ u, row/column sums); ``rename_cell`` renames constants and derived weights too.
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from hypothesis import strategies as st

import rnncomp as rc
from rnncomp.dsl import Vec
from rnncomp.weight_dsl import internal_name

from gradcheck import random_data

SIZES = [1, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17]          # 1 and non-multiples of 8/16
BIG_SIZES = SIZES + [23, 31, 33, 40]

SMOOTH = {
    "tanh": sp.tanh,
    "sigmoid": rc.sigmoid,
    "softsign": rc.softsign,
    "softplus": rc.softplus,
    "gauss": lambda z: sp.exp(-z ** 2),
    "sin": sp.sin,
    "atan": sp.atan,
    "gelu": rc.gelu,
    "asinh": sp.asinh,
    "asin": lambda z: sp.asin(sp.tanh(z) * 0.9),     # evaluated as rewrites natively (EVALUATED_AS)
    "atanh": lambda z: sp.atanh(sp.tanh(z) * 0.9),
}
BOUNDED = ["tanh", "sigmoid", "softsign", "atan", "sin", "asin", "atanh"]
KINKS = {  # f(u), the kink at u = 0
    "abs": sp.Abs,
    "max": lambda u: sp.Max(u, 0),
    "min": lambda u: sp.Min(u, 0) / 2,
    "leaky": lambda u: sp.Piecewise((u, u > 0), (u / 4, True)),
}
BINARY = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b / 2,
}
LOSSES = ["mse", "xent", "cauchy"]

# Names the passes generate (temporaries of every kind: a<i>, <function><i>, cat<i>, lse<i>;
# the step weight w; words of adjoint, stack, view and scratch names) and the loop variables
# of generated code.  A user may declare any of them: it must never meet the generated value.
NAME_POOL = ["w", "t", "T", "B", "b", "x", "y", "h", "W", "M", "d", "f1", "a1", "a2", "a3",
             "a4", "a5", "a7", "tanh1", "tanh2", "tanh3", "sigmoid1", "sigmoid3", "softsign2",
             "softplus2", "exp4", "sin1", "atan2", "gelu3", "Abs1", "Max2", "Min3",
             "Piecewise2", "cat1", "cat2", "cat3", "lse1", "lse2", "rows", "part", "scratch",
             "stacked", "packed", "grad", "loss", "delta", "carry", "seed"]


def free_name(names, used, state=False):
    """The names of ``names`` a new declaration may take (a learned state's ``<name>_0`` too)."""
    return [n for n in names if n not in used and (not state or f"{n}_0" not in used)]


class _Builder:
    """Declares parameters (P1, P2, ... or a drawn name) and kink outputs on one cell."""

    def __init__(self, cell, draw):
        self.cell, self.draw, self.n_params, self.n_kinks = cell, draw, 0, 0
        self.kinks = cell._fuzz_kinks = []

    def name(self, plain, state=False):
        """``plain`` or a name from ``NAME_POOL`` not declared yet (plain first: shrinks to it)."""
        names = dict.fromkeys([plain] + NAME_POOL)  # plain "t", "y" are pool names too
        return self.draw(st.sampled_from(free_name(names, self.cell.decls, state)))

    def param(self, shape, init=None):
        self.n_params += 1
        return self.cell.param(self.name(f"P{self.n_params}"), shape, init=init)

    def kink_output(self, expr):
        self.n_kinks += 1
        out = self.cell.output(self.name(f"kink{self.n_kinks}"), expr)
        self.kinks.append(out.name)
        return out


def _size(cell, v):
    name = v.name[:-4] if v.name.endswith(".new") else v.name
    return cell.decls[name].shape


@st.composite
def projections(draw, b, sources, n):
    """A size-n vector computed from one or two source vectors by a structural op."""
    cell = b.cell
    if len(sources) > 1 and draw(st.integers(0, 4)) == 0:  # M @ concat(a, b)
        pair = draw(st.lists(st.sampled_from(sources), min_size=2, max_size=2, unique=True))
        m = sum(_size(cell, s) for s in pair)
        return b.param((n, m)) @ rc.concat(*pair)
    src = draw(st.sampled_from(sources))
    m = _size(cell, src)
    kinds = ["mat", "mat", "matT"] + (["anti", "sym", "ident"] if m == n else []) \
        + (["slice"] if m > n else []) + (["pad"] if m < n else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "mat":
        return b.param((n, m)) @ src
    if kind == "matT":
        return b.param((m, n)).T @ src
    if kind == "anti":
        W = b.param((n, n))
        return (W - W.T) @ src
    if kind == "sym":
        A = b.param((n, n))
        return (0.5 * (A + A.T)) @ src
    if kind == "ident":
        return src
    if kind == "slice":
        lo = draw(st.integers(0, m - n))
        return rc.vslice(src, lo, lo + n)
    pad = b.param(n - m, init=("normal", 0.3))
    if draw(st.booleans()):  # a raw parameter as a structural operand, or an expression of one
        pad = sp.tanh(pad)
    return rc.concat(src, pad) if draw(st.booleans()) else rc.concat(pad, src)


@st.composite
def leaves(draw, b, sources, own, n, block):
    kind = draw(st.sampled_from(["proj", "proj", "own", "bias", "scalar", "vsum"]
                                + (["gate"] * 2 if block is not None else [])))
    if kind == "proj":
        return draw(projections(b, sources, n))
    if kind == "own" and own is not None:
        return own
    if kind == "scalar":
        return b.param(1, init=("constant", draw(st.sampled_from([0.5, -0.7, 1.3]))))
    if kind == "vsum":
        src = draw(st.sampled_from(sources))
        return rc.vsum(src) / _size(b.cell, src)
    if kind == "gate":
        z, k = block
        i = draw(st.integers(0, k - 1))
        return rc.vslice(z, i * n, (i + 1) * n)
    return b.param(n, init=("normal", 0.3))


@st.composite
def trees(draw, b, leaf, depth, kinks):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(leaf)
    r = draw(st.integers(0, 5))
    if r <= 1:
        return SMOOTH[draw(st.sampled_from(sorted(SMOOTH)))](draw(trees(b, leaf, depth - 1, kinks)))
    if r == 2 and kinks:
        u = draw(trees(b, leaf, depth - 1, kinks)) - draw(st.sampled_from([0.3, -0.4, 0.55]))
        return KINKS[draw(st.sampled_from(sorted(KINKS)))](b.kink_output(u))
    return BINARY[draw(st.sampled_from(sorted(BINARY)))](draw(trees(b, leaf, depth - 1, kinks)),
                                                        draw(trees(b, leaf, depth - 1, kinks)))


@st.composite
def fuzz_cells(draw, sizes=SIZES, max_states=3, max_depth=3, kinks=True):
    cell = rc.Cell("fuzz")
    b = _Builder(cell, draw)
    xs = [cell.input(b.name(f"x{i}"), draw(st.sampled_from(sizes))) for i in range(draw(st.integers(1, 2)))]
    n_states = draw(st.integers(1, max_states))
    hs = [cell.state(b.name(f"h{i}", state=True), draw(st.sampled_from(sizes)),
                     init=draw(st.sampled_from(["zeros", "zeros", "learn"]))) for i in range(n_states)]
    ny = draw(st.integers(1, 4))
    # Jordan: a state j fed from the output y (j[t] = y[t] or tanh(y[t])), read as j[t-1] = y[t-1]
    jordan = cell.state(b.name("j", state=True), ny, init=draw(st.sampled_from(["zeros", "learn"]))) \
        if draw(st.integers(0, 2)) == 0 else None
    # the states' updates in a random order: each may read the new value of any state updated
    # before it in that order (not only of those declared before it), and outputs of those
    order = draw(st.permutations(range(n_states)))
    mids = []  # outputs computed from new values within the step, readable by later updates
    for k, i in enumerate(order):
        h = hs[i]
        n = cell.decls[h.name].shape
        sources = xs + hs + [hs[j].new for j in order[:k]] + mids + ([jordan] if jordan is not None else [])
        block = None
        if draw(st.booleans()):  # stacked gates: z = M @ concat(...), read through vslice
            k = draw(st.integers(1, 3))
            src = draw(st.lists(st.sampled_from(sources), min_size=1, max_size=3, unique=True))
            cat = rc.concat(*src) if len(src) > 1 else src[0]
            z = b.param((k * n, sum(_size(cell, s) for s in src))) @ cat + b.param(k * n, init=("normal", 0.3))
            z = cell.define(b.name(f"z{i}"), z)
            block = (z, k)
        leaf = leaves(b, sources, h, n, block)
        body = draw(projections(b, sources, n)) + draw(trees(b, leaf, draw(st.integers(0, max_depth)), kinks))
        form = draw(st.sampled_from(["tanh", "gated", "leaky"]))
        if form == "tanh":
            cell.update(h, sp.tanh(body))
        elif form == "gated":
            g = rc.sigmoid(draw(projections(b, sources, n)) + b.param(n, init=("normal", 0.3)))
            cell.update(h, g * h + (1 - g) * sp.tanh(body))
        else:
            squash = SMOOTH[draw(st.sampled_from(BOUNDED))]
            cell.update(h, h / 2 + squash(body) / 2)
        if draw(st.integers(0, 3)) == 0:  # an output of h[t], read by the updates after it
            m = draw(st.sampled_from(sizes[:8]))
            o = sp.tanh(b.param((m, n)) @ h.new + b.param(m, init=("normal", 0.3)))
            mids.append(cell.output(b.name(f"o{i}"), o))
    reads = draw(st.lists(st.sampled_from([h.new for h in hs] + xs[:1]), min_size=1, max_size=2, unique=True))
    if not any(r in [h.new for h in hs] for r in reads):
        reads = [hs[-1].new] + reads
    cat = rc.concat(*reads) if len(reads) > 1 else reads[0]
    y = b.param((ny, sum(_size(cell, r) for r in reads))) @ cat
    if draw(st.booleans()):
        y = y + b.param(ny, init=("normal", 0.3))
    y = cell.output(b.name("y"), y)
    if jordan is not None:
        cell.update(jordan, y if draw(st.booleans()) else sp.tanh(y))
    t = cell.target(b.name("t"), ny)
    loss = draw(st.sampled_from(LOSSES))
    cell.loss({"mse": (y - t) ** 2 / 2, "xent": rc.softmax_xent(y, t),
               "cauchy": sp.log(1 + (y - t) ** 2)}[loss])
    cell._fuzz_loss = loss  # how to draw targets
    return cell


@st.composite
def calls(draw, max_T=6, max_B=5):
    """(T, B, seed, mask kind, which states get an h0, native float32 options)."""
    T = draw(st.integers(1, max_T))
    B = draw(st.integers(1, max_B))
    mask = draw(st.sampled_from([None, None, "binary", "weights"]))
    h0 = draw(st.sampled_from(["none", "none", "some", "all"]))
    opts = {k: draw(st.booleans()) for k in ("hoist", "fuse", "pack", "grad_after", "stack")}
    opts["threads"] = draw(st.sampled_from([1, 2]))
    return T, B, draw(st.integers(0, 2 ** 16)), mask, h0, opts


def fuzz_data(cell, T, B, seed, mask_kind, h0_kind):
    params, inputs, targets = random_data(cell, T=T, B=B, seed=seed)
    rng = np.random.default_rng(seed + 1)
    if getattr(cell, "_fuzz_loss", None) == "xent":
        (name, n), = cell.step.targets.items()
        if rng.random() < 0.5:
            targets = {name: np.eye(n)[rng.integers(0, n, (T, B))]}
        else:
            e = np.exp(rng.normal(size=(T, B, n)))
            targets = {name: e / e.sum(-1, keepdims=True)}
    mask = None
    if mask_kind == "binary":
        mask = (rng.random((T, B)) > 0.4).astype(float)
        mask[rng.integers(0, T), rng.integers(0, B)] = 1.0
    elif mask_kind == "weights":
        mask = rng.uniform(0.1, 2.0, T)
    states = list(cell.step.states)
    chosen = {"none": [], "some": states[:1], "all": states}[h0_kind]
    h0 = {s: rng.normal(0, 0.5, (B, cell.step.states[s])) for s in chosen}
    return params, inputs, targets, mask, h0


# ----------------------------------------------------------------------------- renaming
def renaming(cell, seed):
    """A new name for every declaration of ``cell`` (a learned state's ``<name>_0`` follows its
    state): pool names and plain ``v<i>`` in a seeded random order, never a name kept."""
    rng = np.random.default_rng(seed)
    own = [d.name for d in cell.decls.values() if not _learned_init(cell, d) and not _generated(d)]
    pool = [n for n in NAME_POOL if n not in cell.decls] + [f"v{i}" for i in range(len(own))]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    new, used = {}, set()
    for name in own:
        state = cell.decls[name].kind == "state"
        new[name] = free_name(pool, used, state)[0]
        used.update([new[name]] + ([f"{new[name]}_0"] if state else []))
    for d in cell.decls.values():
        if _learned_init(cell, d):
            new[d.name] = new[d.name[:-2]] + "_0"
    return new


def _generated(d):
    """A derived weight the cell named itself (``(M*W)%``): renamed with its expression."""
    return d.kind == "weight" and not d.name.isidentifier()


def _learned_init(cell, d):
    s = cell.decls.get(d.name[:-2]) if d.kind == "param" and d.name.endswith("_0") else None
    return s is not None and s.kind == "state" and s.init == "learn"


def renamed(e, new):
    """Expression ``e`` with every declared name ``n`` in it renamed ``new[n]``."""
    repl = {}
    for s in e.free_symbols:
        base = s.name[:-4] if s.name.endswith(".new") else s.name
        tail = s.name[len(base):]
        if isinstance(s, Vec):
            repl[s] = type(s)(new[base] + tail)
        elif base in new:  # a matrix parameter's name inside a product
            repl[s] = sp.Symbol(new[base], **s.assumptions0)
    return e.xreplace(repl)


def rename_cell(cell, new):
    """The same cell with every declaration ``d`` renamed ``new[d]`` (data: ``rename_data``)."""
    def expr(e):
        return renamed(e, new)

    out = rc.Cell(cell.name)
    for d in cell.decls.values():
        if d.kind in ("input", "target"):
            getattr(out, d.kind)(new[d.name], d.shape)
        elif d.kind == "state":
            out.state(new[d.name], d.shape, init=d.init)
        elif d.kind == "param" and not _learned_init(cell, d):
            out.param(new[d.name], d.shape, init=d.init)
        elif d.kind in ("output", "define"):
            getattr(out, d.kind)(new[d.name], expr(d.expr))
        elif d.kind == "const":
            out.const(new[d.name], d.init)
        elif d.kind == "weight" and not _generated(d):
            out.weight(new[d.name], expr(d.expr))
        elif d.kind == "weight":  # the renamed cell names it after its renamed expression
            new[d.name] = internal_name(expr(d.expr), out.decls)
            out._restore_weight(new[d.name], expr(d.expr))
    for s, e in cell.updates.items():
        out.update(new[s], expr(e))
    if cell.loss_expr is not None:
        out.loss(expr(cell.loss_expr))
    for attr in ("_fuzz_loss",):
        if hasattr(cell, attr):
            setattr(out, attr, getattr(cell, attr))
    out._fuzz_kinks = [new[k] for k in getattr(cell, "_fuzz_kinks", [])]
    return out


def rename_data(new, *dicts):
    """Each dict (params, inputs, targets, h0, gradients, ...) with its keys renamed."""
    return [None if d is None else {new[k]: v for k, v in d.items()} for d in dicts]


# ----------------------------------------------------------------------------- derived weights, matrix states
# ``array_cells`` (issue #19; ``tests/test_fuzz_arrays.py``): a strategy of its own, so that
# ``fuzz_cells`` draws exactly what it drew before.  A vector state h and, drawn with some
# probability (at least one of the two), derived weights in h's update and a matrix state C.
MAT_SIZES = [1, 2, 3, 4, 5, 7]


@st.composite
def derived_weights(draw, b, m, n):
    """An (m, n) matrix computed from parameters and constants (used as ``w @ v``)."""
    cell = b.cell
    kind = draw(st.sampled_from(["mask", "learned_mask", "exp", "wnorm", "wnorm_col", "product"]
                                + (["anti", "square"] if m == n else [])))
    W = b.param((m, n))
    if kind == "mask":  # a fixed 0/1 mask, declared as a constant
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
        M = cell.const(b.name(f"K{b.n_params}"), (rng.random((m, n)) < 0.6).astype(float))
        w = W * M if draw(st.booleans()) else M * W
    elif kind == "learned_mask":
        w = W * sp.tanh(b.param((m, n), init="ones"))
    elif kind == "exp":
        w = sp.exp(W) / (2 * n)
    elif kind == "wnorm":  # weight normalisation: one gain per row
        w = b.param(m, init="ones") * W / rc.norm(W)
    elif kind == "wnorm_col":
        w = b.param(1, init="ones") * W / rc.norm(W, axis=0)
    elif kind == "product":  # a product of two parameters
        k = draw(st.sampled_from(MAT_SIZES))
        w = W @ b.param((n, k)) @ b.param((n, k)).T / k if draw(st.booleans()) else W @ (b.param((n, n)) / n)
    elif kind == "anti":
        w = W - W.T
    else:
        w = W @ W.T / n
    if draw(st.integers(0, 2)) == 0:  # a named derived weight (else the cell names it)
        w = cell.weight(b.name(f"D{b.n_params}"), w)
    return w


@st.composite
def matrix_update(draw, b, C, p, q, sources):
    """C[t] from C[t-1]: a gated outer-product write, the delta rule, or a squashed write."""
    def vec(size):
        return draw(projections(b, sources, size))

    kind = draw(st.sampled_from(["gated", "delta", "squash"]))
    u, v = sp.tanh(vec(p)), sp.tanh(vec(q))
    if kind == "gated":  # a gate per row, or one scalar gate
        g = rc.sigmoid(vec(p) if draw(st.booleans()) else b.param(1, init=("constant", 0.5)))
        return g * C + (1 - g) * rc.outer(u, v)
    if kind == "delta":  # C − β (C k − v) kᵀ, |k| ≤ 1 per entry
        beta = rc.sigmoid(b.param(1, init=("constant", -0.5)))
        return C - beta * rc.outer(C @ v / q - u, v)
    return sp.tanh(C / 2 + rc.outer(u, v))


def matrix_reads(C, p, q, sources_p, sources_q, draw):
    """A vector read from a matrix value C (old or new): C @ v, Cᵀ @ u, row or column sums."""
    kind = draw(st.sampled_from(["matvec", "matvecT", "rowsum", "colsum"]))
    if kind == "matvec":
        return C @ draw(st.sampled_from(sources_q)), p
    if kind == "matvecT":
        return C.T @ draw(st.sampled_from(sources_p)), q
    if kind == "rowsum":
        return rc.rowsum(C) / q, p
    return rc.colsum(C * C) / p, q


@st.composite
def array_cells(draw, sizes=SIZES[:9]):
    """A cell with derived weights and/or a matrix state (see above), and a vector state h."""
    cell = rc.Cell("fuzz_arrays")
    b = _Builder(cell, draw)
    xs = [cell.input(b.name(f"x{i}"), draw(st.sampled_from(sizes))) for i in range(draw(st.integers(1, 2)))]
    n = draw(st.sampled_from(sizes))
    h = cell.state(b.name("h", state=True), n, init=draw(st.sampled_from(["zeros", "zeros", "learn"])))
    derived, matrix = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    C = p = q = None
    if matrix:
        p, q = draw(st.sampled_from(MAT_SIZES)), draw(st.sampled_from(MAT_SIZES))
        C = cell.state(b.name("C", state=True), (p, q), init=draw(st.sampled_from(["zeros", "learn"])))
    c_first = matrix and draw(st.booleans())  # C updated before h (h reads C.new) or after
    if c_first:
        cell.update(C, draw(matrix_update(b, C, p, q, xs + [h])))
    sources = xs + [h]
    if matrix:  # a read of C (new when updated already), as a named vector
        read, size = matrix_reads(C.new if c_first else C, p, q, [s for s in sources if _size(cell, s) == p]
                                  or [b.param(p, init=("normal", 0.3))],
                                  [s for s in sources if _size(cell, s) == q] or [b.param(q, init=("normal", 0.3))],
                                  draw)
        sources = sources + [cell.define(b.name("r"), read)]
    body = draw(projections(b, sources, n))
    if derived:
        for _ in range(draw(st.integers(1, 2))):
            src = draw(st.sampled_from(sources))
            body = body + draw(derived_weights(b, n, _size(cell, src))) @ src
    if matrix and sources[-1] not in xs + [h]:
        body = body + draw(projections(b, [sources[-1]], n))
    if draw(st.booleans()):
        g = rc.sigmoid(draw(projections(b, sources, n)))
        cell.update(h, g * h + (1 - g) * sp.tanh(body))
    else:
        cell.update(h, sp.tanh(body))
    if matrix and not c_first:
        cell.update(C, draw(matrix_update(b, C, p, q, xs + [h, h.new])))
    reads = [h.new]
    if matrix and draw(st.booleans()):  # an output read from C[t]
        out, _ = matrix_reads(C.new, p, q, [s for s in xs + [h.new] if _size(cell, s) == p]
                              or [b.param(p, init=("normal", 0.3))],
                              [s for s in xs + [h.new] if _size(cell, s) == q] or [b.param(q, init=("normal", 0.3))],
                              draw)
        reads.append(cell.output(b.name("o"), out))
    ny = draw(st.integers(1, 3))
    cat = rc.concat(*reads) if len(reads) > 1 else reads[0]
    y = b.param((ny, sum(_size(cell, r) for r in reads))) @ cat
    y = cell.output(b.name("y"), y)
    t = cell.target(b.name("t"), ny)
    loss = draw(st.sampled_from(LOSSES))
    cell.loss({"mse": (y - t) ** 2 / 2, "xent": rc.softmax_xent(y, t),
               "cauchy": sp.log(1 + (y - t) ** 2)}[loss])
    cell._fuzz_loss = loss
    return cell
