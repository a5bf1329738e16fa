"""Differential fuzzing of compositions: stacks of 1–3 random cells, some wrapped in
rc.Bidirectional, against independent references and central differences (float64).

Each layer is a random cell of ``fuzzgen.fuzz_cells`` (no kinks: a finite difference must not
cross one) or, one in three, of ``fuzzgen.array_cells`` (derived weights and/or a matrix state), rebuilt by ``compose_ref.stackable`` with one input of the size the layer below
gives and one output; the top layer is a plain cell (it has the loss).  Each example:

1. forward outputs of the composed NumPy model == a reference chain that runs each layer by
   itself (a plain cell's NumPy model over the whole sequence; a bidirectional layer by the
   per-sequence loop of ``compose_ref.bidirectional_outputs``), 1e-10 relative at the
   steps inside each sequence's length;
2. with no bidirectional layer: loss and gradients == the stack flattened into ONE cell
   (no VJP chaining), 1e-10 relative (the same operations, summed in another order);
3. gradients == central differences in a random direction (``gradcheck.check_grads``:
   rtol 1e-6, atol 1e-8; its docstring says why), with random lengths and a random h0;
4. a bare bidirectional layer of a random cell (it has no loss): ``vjp`` (parameters, inputs
   and initial states at once) against a central difference of ⟨outputs, dy⟩ + ⟨final, df⟩;
5. (one example in five, each compiles 1–4 cells; every example of the long run) the
   native backend == NumPy, 1e-10.

Checks 2 and 5 allow each gradient also 1e-13 of the largest gradient entry (or of the loss),
as ``test_fuzz`` does: a derived weight such as W·t/‖t‖ᶜ of a 1×n t is W·sign(t), whose
gradient to t is exactly 0 in one order of sums and rounding (~1e-18) in another.

``pytest -m fuzz tests/test_compose_fuzz.py`` (with ``HYPOTHESIS_PROFILE=long``) runs the long
variant: T up to 12, B up to 6, every example also on the native backend.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings, strategies as st

import rnncomp as rc
from rnncomp.compose import Bidirectional, Stack

from compose_ref import bidirectional_outputs, flat_names, flatten, stackable, to_flat
from fuzzgen import SIZES, array_cells, fuzz_cells
from gradcheck import check_grads

RTOL = 1e-10
FLOOR = 1e-13  # e.g. W·t/‖t‖ᶜ of a 1×n t is W·sign(t): δt is 0 in one order of sums, ~1e-18 in another


def layer_cells(sizes=SIZES):
    """A random cell of vectors, or (one in three) one with derived weights and/or a matrix state."""
    return st.one_of(fuzz_cells(sizes=sizes, max_states=2, max_depth=2, kinks=False),
                     fuzz_cells(sizes=sizes, max_states=2, max_depth=2, kinks=False), array_cells())


@st.composite
def stacks(draw, max_layers=3, sizes=SIZES):
    n_in = first = draw(st.sampled_from(sizes[:9]))
    layers = []
    n = draw(st.integers(1, max_layers))
    for i in range(n):
        cell = stackable(draw(layer_cells(sizes)), n_in)
        if i < n - 1 and draw(st.booleans()):
            layers.append(Bidirectional(cell, merge=draw(st.sampled_from(["concat", "sum"]))))
        else:
            layers.append(cell)
        n_in = next(iter(layers[-1].step.outputs.values()))
    return Stack(layers), first


def _data(model, top, T, B, seed):
    rng = np.random.default_rng(seed)
    st_ = model.step
    params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in model.init_params(seed).items()}
    x = {k: rng.normal(0, 0.5, (T, B, n)) for k, n in st_.inputs.items()}
    t = {}
    for k, n in st_.targets.items():
        if top._fuzz_loss == "xent":
            e = np.exp(rng.normal(size=(T, B, n)))
            t[k] = e / e.sum(-1, keepdims=True)
        else:
            t[k] = rng.normal(0, 0.5, (T, B, n))
    h0 = {s: rng.normal(0, 0.5, (B, n)) for s, n in st_.states.items() if rng.random() < 0.5}
    lengths = rng.integers(1, T + 1, size=B)
    return params, x, t, h0, lengths


def _reference_outputs(stack, params, x, h0, lengths):
    """The top layer's outputs, each layer run by itself (module docstring, check 1)."""
    inp = x
    for i, layer in enumerate(stack.layers):
        p = {k[len(f"l{i}."):]: v for k, v in params.items() if k.startswith(f"l{i}.")}
        h = {k[len(f"l{i}."):]: v for k, v in h0.items() if k.startswith(f"l{i}.")}
        (name,) = layer.step.inputs
        arr = next(iter(inp.values()))
        if isinstance(layer, Bidirectional):
            out, _ = bidirectional_outputs(layer.cell, layer.merge, p, arr, lengths, h)
        else:
            out, _ = rc.compile(layer).forward(p, {name: arr}, h)
        if i < len(stack.layers) - 1:
            inp = {"in": out[stack.feeds[i][0]]}
    return out


def _close(a, b, what, floor=0.0):
    scale = max(np.abs(b).max(), 1e-300)
    err = np.abs(a - b).max()
    assert err <= RTOL * scale + floor + 1e-300, f"{what}: {err:.3g} vs scale {scale:.3g}"


def _floor(loss, grads):
    """FLOOR of the largest gradient entry (or of the loss): what a gradient that cancels
    exactly in one order of sums keeps as rounding in another (``test_fuzz._assert_close``)."""
    return FLOOR * max([abs(float(loss))] + [np.abs(g).max() for g in grads.values()])


def check_stack(stack, T, B, seed, native):
    model = rc.compile(stack)
    top = stack.layers[-1]
    params, x, t, h0, lengths = _data(model, top, T, B, seed)
    valid = np.arange(T)[:, None] < lengths
    out, _ = model.forward(params, x, h0, lengths=lengths)
    ref = _reference_outputs(stack, params, x, h0, lengths)
    for o in out:
        _close(out[o][valid], ref[o][valid], f"output {o}")
    if not any(isinstance(l, Bidirectional) for l in stack.layers):
        flat = rc.compile(flatten(stack))
        fp, fx, ft, fh = to_flat(stack, params, x, t, h0)
        loss, grads, _ = model.loss_and_grad(params, x, t, h0)
        loss0, grads0, _ = flat.loss_and_grad(fp, fx, ft, fh)
        _close(np.array(loss), np.array(loss0), "loss")
        names, floor = flat_names(stack), _floor(loss0, grads0)
        for k, g in grads.items():
            _close(g, grads0[names[k]], k, floor)
    check_grads(model, params, x, t, h0=h0, lengths=lengths)
    if native:
        nat = rc.compile(stack, backend="native")
        loss, grads, final = model.loss_and_grad(params, x, t, h0, lengths=lengths)
        nl, ng, nf = nat.loss_and_grad(params, x, t, h0, lengths=lengths)
        _close(np.array(nl), np.array(loss), "native loss")
        floor = _floor(loss, grads)
        for k in grads:
            _close(ng[k], grads[k], f"native {k}", floor)
        for k in final:
            _close(nf[k], final[k], f"native final {k}")


@settings(max_examples=10, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(stacks(), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2 ** 16), st.integers(0, 4))
def test_fuzz_compositions(comp, T, B, seed, which):
    stack, _ = comp
    check_stack(stack, T, B, seed, native=which == 0)


def check_bidirectional_vjp(cell, merge, T, B, seed):
    """A bare bidirectional layer (no loss): ``vjp`` against the central difference of
    ⟨outputs, dy⟩ + ⟨final states, df⟩ in one random direction of parameters, inputs and
    initial states together (rtol 1e-6, atol 1e-8, as ``gradcheck``)."""
    model = rc.compile(Bidirectional(cell, merge=merge))
    params, x, _, h0, lengths = _data(model, cell, T, B, seed)
    rng = np.random.default_rng(seed + 7)
    st_ = model.step
    dy = {o: rng.normal(size=(T, B, n)) for o, n in st_.outputs.items()}
    df = {s: rng.normal(size=(B, n)) for s, n in st_.states.items()}
    h0 = {s: h0.get(s, np.zeros((B, n))) for s, n in st_.states.items()}
    res = model.vjp(params, x, h0, d_outputs=dy, d_final=df, lengths=lengths)
    dirs = [{k: rng.normal(size=v.shape) for k, v in d.items()} for d in (params, x, h0)]

    def f(eps):
        p, xx, hh = ({k: v + eps * d[k] for k, v in a.items()} for a, d in zip((params, x, h0), dirs))
        kept = model.forward(p, xx, hh, keep=True, lengths=lengths)
        return sum(float((kept.outputs[o] * dy[o]).sum()) for o in dy) + sum(float((kept.final[s] * df[s]).sum())
                                                                             for s in df)

    an = sum(float((g[k] * d[k]).sum()) for g, d in zip((res.params, res.inputs, res.h0), dirs) for k in d)
    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    if abs(fd - an) > 1e-8 + 1e-6 * abs(fd):  # truncation? Richardson, as gradcheck does
        fd = (4 * (f(5e-7) - f(-5e-7)) / 1e-6 - fd) / 3
    assert abs(fd - an) <= 1e-8 + 1e-6 * abs(fd), f"directional derivative {fd} vs vjp {an}"


@settings(max_examples=6, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(layer_cells(), st.sampled_from(SIZES[:9]),
       st.sampled_from(["concat", "sum"]), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2 ** 16))
def test_fuzz_bidirectional_vjp(cell, n_in, merge, T, B, seed):
    check_bidirectional_vjp(stackable(cell, n_in), merge, T, B, seed)


@pytest.mark.fuzz
@given(stacks(), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2 ** 16))
def test_fuzz_compositions_long(comp, T, B, seed):
    stack, _ = comp
    check_stack(stack, T, B, seed, native=True)
