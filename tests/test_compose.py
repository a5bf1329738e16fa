"""rc.Stack and rc.Bidirectional: numbers against independent references, gradients against
central differences, the lengths rule, dropout, and the declaration and call errors.

References: a stack is also written as ONE flattened cell (``compose_ref.flatten``), which
the compiler differentiates step by step across the layers without any VJP chaining; a
bidirectional layer's outputs come from a plain loop over the sequences, each reversed by
hand within its length.  Tolerances (float64): the flattened cell runs the same operations in
another order, so 1e-10 relative; central differences: ``gradcheck`` (rtol 1e-6, atol 1e-8,
its docstring says why).
"""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.compose.bidirectional import reverse
from rnncomp.compose.model import lengths_from_mask
from rnncomp.train.data import lengths_mask

from compose_ref import bidirectional_outputs, flat_names, flatten, to_flat
from gradcheck import check_grads

T, B = 7, 4
LENGTHS = np.array([7, 3, 1, 5])


def _data(model, seed=0, n_in=None, n_out=None):
    rng = np.random.default_rng(seed)
    st = model.step
    params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in model.init_params(seed).items()}
    x = {k: rng.normal(0, 0.7, (T, B, n)) for k, n in st.inputs.items()}
    t = {k: rng.normal(0, 0.7, (T, B, n)) for k, n in st.targets.items()}
    h0 = {s: rng.normal(0, 0.5, (B, n)) for s, n in list(st.states.items())[::2]}
    return params, x, t, h0


def _close(a, b, rtol=1e-10, what=""):
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(np.asarray(a) - b).max() <= rtol * scale, f"{what}: {np.abs(np.asarray(a) - b).max()} vs {scale}"


def _same_training_numbers(model, ref):
    """Loss, gradients and final states of ``model`` == those of ``ref`` (1e-10), with lengths."""
    params, x, t, h0 = _data(ref)
    l0, g0, f0 = ref.loss_and_grad(params, x, t, h0, lengths=LENGTHS)
    l1, g1, f1 = model.loss_and_grad(params, x, t, h0, lengths=LENGTHS)
    _close(l1, l0)
    for k in g0:
        _close(g1[k], g0[k], what=k)
    for k in f0:
        _close(f1[k], f0[k], what=k)


# ----------------------------------------------------------------------------- one cell
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_stack_of_one_cell_gives_exactly_the_cells_numbers(backend):
    cell = rc.cells.lstm(3, 5, 4)  # the cells of the native tests are the same few: compiled once (disk cache)
    stack, plain = rc.compile(rc.Stack([cell]), backend=backend), rc.compile(cell, backend=backend)
    params = cell.init_params(seed=4)
    assert all(np.array_equal(v, params[k[3:]]) for k, v in stack.init_params(4).items())
    _, x, t, _ = _data(plain)
    mask, h0 = (np.arange(T)[:, None] < LENGTHS).astype(float), {"h": np.full((B, 5), 0.3)}
    sp = {f"l0.{k}": v for k, v in params.items()}
    loss, grads, final = stack.loss_and_grad(sp, x, t, {"l0.h": h0["h"]}, mask)
    loss0, grads0, final0 = plain.loss_and_grad(params, x, t, h0, mask)
    assert loss == loss0
    assert all(np.array_equal(grads[f"l0.{k}"], g) for k, g in grads0.items())
    assert all(np.array_equal(final[f"l0.{k}"], v) for k, v in final0.items())
    out, _ = stack.forward(sp, x)
    assert np.array_equal(out["y"], plain.forward(params, x)[0]["y"])
    dy = np.ones((T, B, 4))
    g, g0 = stack.vjp(sp, x, d_outputs={"y": dy}), plain.vjp(params, x, d_outputs={"y": dy})
    assert np.array_equal(g.inputs["x"], g0.inputs["x"]) and np.array_equal(g.params["l0.Wi"], g0.params["Wi"])


# ----------------------------------------------------------------------------- stacks
STACKS = {
    "lstm-gru": lambda: rc.Stack([rc.cells.lstm(3, 5, 4), rc.cells.gru(4, 6, 2)]),
    "elman-jordan-mgu": lambda: rc.Stack([rc.cells.elman(3, 4, 5), rc.cells.jordan(5, 4, 3), rc.cells.mgu(3, 5, 2)]),
    "learned-h0": lambda: rc.Stack([_learned(3, 4), rc.cells.indrnn(4, 5, 2, loss="xent")]),
}


def _learned(n_in, n_out):
    cell = rc.Cell("learned")
    x, h = cell.input("x", n_in), cell.state("h", 5, init="learn")
    cell.update(h, rc.sigmoid(cell.param("W", (5, n_in)) @ x + cell.param("U", (5, 5)) @ h))
    cell.output("y", cell.param("V", (n_out, 5)) @ h.new)
    return cell


@pytest.mark.parametrize("name, backend", [(n, "numpy") for n in sorted(STACKS)] + [("lstm-gru", "native")]
                         + [pytest.param(n, "native", marks=pytest.mark.slow) for n in sorted(STACKS) if n != "lstm-gru"])
def test_stack_matches_the_flattened_cell(name, backend):
    stack = STACKS[name]()
    model, flat = rc.compile(stack, backend=backend), rc.compile(flatten(stack), backend="numpy")
    params, x, t, h0 = _data(model)
    mask = lengths_mask(LENGTHS, T, "float64")
    loss, grads, final = model.loss_and_grad(params, x, t, h0, mask)
    fp, fx, ft, fh = to_flat(stack, params, x, t, h0)
    loss0, grads0, final0 = flat.loss_and_grad(fp, fx, ft, fh, mask)
    names = flat_names(stack)
    _close(loss, loss0, what="loss")
    assert sorted(grads) == sorted(stack.step.params)
    for k, g in grads.items():
        _close(g, grads0[names[k]], what=k)
    for k, v in final.items():
        _close(v, final0[names[k]], what=k)
    out, _ = model.forward(params, x, h0)
    _close(out["y"], flat.forward(fp, fx, fh)[0][f"l{len(stack.layers) - 1}_y"], what="y")


@pytest.mark.parametrize("lengths", [LENGTHS, np.maximum(LENGTHS - 1, 1)], ids=["longest-T", "all-shorter"])
def test_forward_with_lengths_gives_each_sequences_own_final_states(lengths):
    stack = STACKS["lstm-gru"]()
    model, flat = rc.compile(stack, backend="native"), rc.compile(flatten(stack))
    params, x, _, h0 = _data(model)
    out, final = model.forward(params, x, h0, lengths=lengths)
    fp, fx, _, fh = to_flat(stack, params, x, None, h0)
    valid = np.arange(T)[:, None] < lengths
    _close(out["y"][valid], flat.forward(fp, fx, fh)[0]["l1_y"][valid], what="y")
    assert not out["y"][~valid].any()  # zeros past each sequence's end, as the layers give
    names = flat_names(stack)
    for b, n in enumerate(lengths):
        _, ref = flat.forward(fp, {k: v[:n, b:b + 1] for k, v in fx.items()}, {k: v[b:b + 1] for k, v in fh.items()})
        for k, v in final.items():
            _close(v[b], ref[names[k]][0], what=f"{k}[{b}]")


NESTED = {
    "bi-then-lstm": lambda: rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.lstm(4, 4, 2)]),
    "bi-of-a-stack": lambda: rc.Stack([rc.Bidirectional(rc.Stack([rc.cells.elman(3, 4, 3), rc.cells.mgu(3, 4, 2)]),
                                                         merge="sum"), rc.cells.gru(2, 3, 2)], dropout=0.0),
}


@pytest.mark.parametrize("name", sorted(NESTED))
def test_stack_gradients_against_central_differences(name):
    stack = NESTED[name]()
    model = rc.compile(stack)
    params, x, t, h0 = _data(model, seed=1)
    check_grads(model, params, x, t, h0=h0, lengths=LENGTHS)


def test_vjp_input_and_initial_state_cotangents_against_central_differences():
    """⟨δx, v⟩ and ⟨δh0, u⟩ against the directional derivative of ⟨y, dy⟩ + ⟨final, df⟩."""
    stack = rc.Stack([rc.cells.lstm(3, 5, 4), rc.Bidirectional(rc.cells.gru(4, 6, 2), merge="sum")])
    model = rc.compile(stack, backend="native")
    params, x, _, h0 = _data(model, seed=2)
    rng = np.random.default_rng(5)
    dy = rng.normal(size=(T, B, 2))
    df = {s: rng.normal(size=(B, n)) for s, n in model.step.states.items()}
    res = model.vjp(params, x, h0, d_outputs={"y": dy}, d_final=df, lengths=LENGTHS)

    def f(xx, hh):  # the final states (d_final's) are those after each sequence's own last step
        out, fin = model.forward(params, {"x": xx}, hh, lengths=LENGTHS)
        return float((out["y"] * dy).sum() + sum((fin[s] * df[s]).sum() for s in df))

    kept = model.forward(params, x, h0, lengths=LENGTHS, keep=True)
    for s, v in model.forward(params, x, h0, lengths=LENGTHS)[1].items():
        np.testing.assert_array_equal(kept.final[s], v, err_msg=s)

    v = rng.normal(size=x["x"].shape)
    fd = (f(x["x"] + 1e-6 * v, h0) - f(x["x"] - 1e-6 * v, h0)) / 2e-6
    assert abs(fd - (res.inputs["x"] * v).sum()) <= 1e-8 + 1e-6 * abs(fd)
    for s in model.step.states:
        u = rng.normal(size=(B, model.step.states[s]))
        hp = dict(h0, **{s: h0.get(s, 0) + 1e-6 * u})
        hm = dict(h0, **{s: h0.get(s, 0) - 1e-6 * u})
        fd = (f(x["x"], hp) - f(x["x"], hm)) / 2e-6
        assert abs(fd - (res.h0[s] * u).sum()) <= 1e-8 + 1e-6 * abs(fd), s


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_kept_forward_from_residuals_puts_d_final_at_each_sequences_end(backend):
    """``kept_from`` (what rc.jax's backward="residuals" runs) with lengths: the same gradients
    as the kept forward whose residuals it reads, d_final at each sequence's own last step
    (exact: the same arithmetic)."""
    model = rc.compile(rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 5, 2)]), backend=backend)
    params, x, _, h0 = _data(model, seed=3)
    rng = np.random.default_rng(8)
    dy = {"y": rng.normal(size=(T, B, 2))}
    df = {s: rng.normal(size=(B, n)) for s, n in model.step.states.items()}
    kept = model.forward(params, x, h0, lengths=LENGTHS, keep=True)
    want = kept.backward(dy, df)
    again = model.kept_from(kept.residuals(), params, x, h0, lengths=LENGTHS).backward(dy, df)
    for k in want.params:
        np.testing.assert_array_equal(again.params[k], want.params[k], err_msg=k)
    for k in want.h0:
        np.testing.assert_array_equal(again.h0[k], want.h0[k], err_msg=k)
    np.testing.assert_array_equal(again.inputs["x"], want.inputs["x"])


def test_kept_forward_backward_twice_and_free():
    model = rc.compile(STACKS["lstm-gru"](), backend="native")
    params, x, _, _ = _data(model)
    dy = np.ones((T, B, 2))
    fwd = model.forward(params, x, keep=True)
    a, b = fwd.backward(d_outputs={"y": dy}), fwd.backward(d_outputs={"y": 2 * dy})
    np.testing.assert_allclose(2 * a.params["l0.Wi"], b.params["l0.Wi"], rtol=1e-12)
    ref = model.vjp(params, x, d_outputs={"y": dy})
    assert np.array_equal(a.inputs["x"], ref.inputs["x"])
    fwd.free()
    with pytest.raises(rc.CallError, match="freed"):
        fwd.backward(d_outputs={"y": dy})


# ----------------------------------------------------------------------------- bidirectional
@pytest.mark.parametrize("merge", ["concat", "sum"])
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_bidirectional_reverses_each_sequence_within_its_length(merge, backend):
    cell = rc.cells.gru(3, 5, 2)
    model = rc.compile(rc.Bidirectional(cell, merge=merge), backend=backend)
    params, x, _, h0 = _data(model)
    out, final = model.forward(params, x, h0, lengths=LENGTHS)
    ref, ref_final = bidirectional_outputs(cell, merge, params, x["x"], LENGTHS, h0)
    valid = np.arange(T)[:, None] < LENGTHS
    _close(out["y"][valid], ref["y"][valid], what="y")
    for s in final:
        _close(final[s], ref_final[s], what=s)
    assert out["y"].shape == (T, B, 4 if merge == "concat" else 2) and sorted(final) == ["bwd.h", "fwd.h"]
    full, _ = model.forward(params, x, h0)  # no lengths: every sequence is T long
    _close(full["y"], bidirectional_outputs(cell, merge, params, x["x"], np.full(B, T), h0)[0]["y"], what="y")


def test_a_mask_gives_the_lengths():
    model = rc.compile(rc.Stack([rc.Bidirectional(rc.cells.elman(3, 4, 2)), rc.cells.gru(4, 4, 2)]))
    params, x, t, _ = _data(model)
    mask = lengths_mask(LENGTHS, T, "float64")
    assert np.array_equal(lengths_from_mask(mask, T, B), LENGTHS)
    a = model.loss_and_grad(params, x, t, mask=mask)
    b = model.loss_and_grad(params, x, t, mask=mask, lengths=LENGTHS)
    c = model.loss_and_grad(params, x, t, mask=mask, lengths=np.full(B, T))
    assert a[0] == b[0] and a[0] != c[0]


def test_reverse_is_its_own_inverse():
    a = np.random.default_rng(0).normal(size=(T, B, 3))
    assert np.array_equal(reverse(reverse(a, LENGTHS), LENGTHS), a)
    assert np.array_equal(reverse(a)[0], a[-1])


def test_native_matches_numpy_and_runs_both_directions_at_once():
    stack = rc.Stack([rc.Bidirectional(rc.cells.lstm(3, 5, 4), merge="sum"), rc.cells.gru(4, 6, 2)])
    ref, nat = rc.compile(stack), rc.compile(stack, backend="native", parallel=True)
    assert nat.parallel and not ref.parallel
    _same_training_numbers(nat, ref)


def test_deeply_nested_bidirectional_layers_in_two_threads_give_the_serial_numbers():
    """Three levels of bidirectional layers on a pool of two threads: no deadlock (a nested
    layer inside a pool thread runs its directions one after the other), the same numbers."""
    inner = rc.Bidirectional(rc.Stack([rc.Bidirectional(rc.cells.elman(2, 3, 2), merge="sum"),
                                       rc.cells.elman(2, 3, 2)]), merge="sum")
    stack = rc.Stack([rc.Bidirectional(rc.Stack([inner, rc.cells.elman(2, 3, 2)]), merge="sum"),
                      rc.cells.elman(2, 3, 1)])
    ref = rc.compile(stack)
    params = ref.init_params(0)
    x = np.random.default_rng(0).normal(size=(5, 3, 2))
    a = ref.loss_and_grad(params, x, x[..., :1], lengths=np.array([5, 2, 3]))
    b = rc.compile(stack, parallel=True).loss_and_grad(params, x, x[..., :1], lengths=np.array([5, 2, 3]))
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


# ----------------------------------------------------------------------------- dropout
def test_dropout_only_in_training_calls_and_its_gradient():
    stack = rc.Stack([rc.cells.elman(3, 4, 5), rc.cells.gru(5, 4, 2)], dropout=0.5)
    model, plain = rc.compile(stack), rc.compile(rc.Stack(stack.layers))
    params, x, t, _ = _data(model)
    assert np.array_equal(model.forward(params, x)[0]["y"], plain.forward(params, x)[0]["y"])
    assert model.loss_and_grad(params, x, t)[0] != plain.loss_and_grad(params, x, t)[0]

    class FixedMasks:  # the same dropout masks in every call: a differentiable function
        def loss_and_grad(self, p, xx, tt):
            model.rng = np.random.default_rng(7)
            return model.loss_and_grad(p, xx, tt)

    check_grads(FixedMasks(), params, x, t)
    assert model.loss_and_grad(params, x, t, training=False)[0] == plain.loss_and_grad(params, x, t)[0]
    tr = rc.Trainer(stack, backend="numpy", dtype="float64", params=params)
    assert tr.evaluate(x, t) == rc.Trainer(rc.Stack(stack.layers), backend="numpy", dtype="float64",
                                           params=params).evaluate(x, t)  # evaluating drops nothing


# ----------------------------------------------------------------------------- training
def test_trainer_fits_a_stack_with_lengths_and_predicts():
    stack = rc.Stack([rc.Bidirectional(rc.cells.gru(1, 8, 4)), rc.cells.elman(8, 8, 1)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 32, 1))
    y = np.cumsum(x, axis=0)[::-1].copy() * 0.3  # needs the future: a reversed running sum
    lengths = rng.integers(4, 13, size=32)
    tr = rc.Trainer(stack, rc.Adam(2e-2), backend="native", dtype="float64")
    hist = tr.fit(x, y, epochs=6, batch_size=8, lengths=lengths, verbose=0)
    assert hist[-1] < 0.7 * hist[0]
    pred, final = tr.predict(x, lengths=lengths)
    pred = pred["y"]
    assert pred.shape == (12, 32, 1) and (pred[np.arange(12)[:, None] >= lengths] == 0).all()


def test_trainer_checkpoint_of_a_composition_round_trips(tmp_path):
    from rnncomp.train import checkpoint as ck
    stack = rc.Stack([rc.Bidirectional(rc.cells.gru(1, 6, 3), merge="sum"), rc.cells.elman(3, 5, 1)], dropout=0.25)
    tr = rc.Trainer(stack, rc.Adam(1e-2), backend="numpy", dtype="float64")
    x = np.random.default_rng(0).normal(size=(6, 8, 1))
    tr.fit(x, x, epochs=1, batch_size=4, verbose=0)
    tr.save(tmp_path / "s.ckpt")
    back = rc.Trainer.load(tmp_path / "s.ckpt")
    assert str(back.cell) == str(stack) and back.cell.dropout == 0.25 and back.cell.layers[0].merge == "sum"
    assert back.step_count == tr.step_count and all(np.array_equal(back.params[k], v) for k, v in tr.params.items())
    d = ck.cell_to_dict(stack)
    d["layers"][1]["decls"][0]["shape"] = 7  # elman's input no longer fits the layer below
    with pytest.raises(ck.CheckpointError, match="here: rc.Stack: layer l1 .* reads input 'x' of size 7"):
        ck.cell_from_dict(d, "here")


def test_a_compiled_composition_pickles_and_is_compiled_again():
    import pickle
    stack = rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 4, 2)], dropout=0.5)
    model = rc.compile(stack, seed=3)
    back = pickle.loads(pickle.dumps(model))
    assert str(back.comp) == str(stack) and back.backend == "numpy"
    params, x, t, _ = _data(model)
    assert np.array_equal(back.forward(params, x)[0]["y"], model.forward(params, x)[0]["y"])
    assert back.loss_and_grad(params, x, t)[0] == rc.compile(stack, seed=3).loss_and_grad(params, x, t)[0]


def test_memory_schedules_apply_to_each_cell():
    stack = rc.Stack([rc.cells.lstm(3, 6, 4), rc.cells.gru(4, 5, 2)])
    _same_training_numbers(rc.compile(stack, backend="native", memory=rc.Every(3)), rc.compile(stack))


# ----------------------------------------------------------------------------- errors
def test_declaration_errors_name_the_layers_and_sizes():
    with pytest.raises(rc.CellError, match=r"layer l1 \(cell 'gru'\) reads input 'x' of size 7, but layer l0 "
                                           r"\(cell 'lstm'\) gives output 'y' of size 4"):
        rc.Stack([rc.cells.lstm(3, 5, 4), rc.cells.gru(7, 6, 2)])
    two = rc.Cell("two")
    x, h = two.input("x", 2), two.state("h", 3)
    two.update(h, rc.sigmoid(two.param("W", (3, 2)) @ x))
    two.output("a", h.new)
    two.output("b", h.new * 2)
    with pytest.raises(rc.CellError, match=r"layer l0 \(cell 'two'\) declares 2 outputs \('a', 'b'\)"):
        rc.Stack([two, rc.cells.gru(3, 2, 1)])
    with pytest.raises(rc.CellError, match="no layers"):
        rc.Stack([])
    with pytest.raises(rc.CellError, match="layer l1: expected a cell"):
        rc.Stack([rc.cells.gru(3, 2, 1), "gru"])
    with pytest.raises(rc.CellError, match="dropout must be"):
        rc.Stack([rc.cells.gru(3, 2, 1)], dropout=1.0)
    with pytest.raises(rc.CellError, match="merge must be one of 'concat', 'sum', got 'mean'"):
        rc.Bidirectional(rc.cells.gru(3, 2, 1), merge="mean")
    forced = rc.Cell("forced")
    x, t, h = forced.input("x", 2), forced.target("t", 2), forced.state("h", 2)
    forced.update(h, rc.sigmoid(x + t + h))
    forced.output("y", h.new)
    with pytest.raises(rc.CellError, match=r"rc.Bidirectional \(cell 'forced'\): its outputs or state updates "
                                           r"read target 't'"):
        rc.Bidirectional(forced)
    with pytest.raises(rc.CellError, match=r"rc.Stack: name must be a non-empty string, got 3"):
        rc.Stack([rc.cells.gru(3, 2, 1)], name=3)
    with pytest.raises(rc.CellError, match=r"rc.Bidirectional: name must be a non-empty string, got ''"):
        rc.Bidirectional(rc.cells.gru(3, 2, 1), name="")


def test_call_errors_name_the_composition_and_the_layer():
    model = rc.compile(rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 4, 2)]))
    params, x, t, _ = _data(model)
    with pytest.raises(rc.CallError, match=r"missing params 'l1.V'"):
        model.loss_and_grad({k: v for k, v in params.items() if k != "l1.V"}, x, t)
    misspelt = {("l1.Vx" if k == "l1.V" else k): v for k, v in params.items()}
    with pytest.raises(rc.CallError, match=r"missing params 'l1.V'; unknown params 'l1.Vx'; its parameters"):
        model.loss_and_grad(misspelt, x, t)   # both named: the misspelling shows beside the name it missed
    with pytest.raises(rc.CallError, match=r"unknown initial states \(h0\) 'l1.c'"):
        model.forward(params, x, {"l1.c": np.zeros((B, 4))})
    bad = dict(params, **{"l1.V": np.zeros((3, 3))})
    with pytest.raises(rc.CallError, match=r"layer l1: cell 'elman': params\['V'\] has shape \(3, 3\)"):
        model.loss_and_grad(bad, x, t)
    with pytest.raises(rc.CallError, match="lengths must lie in 1"):
        model.forward(params, x, lengths=np.full(B, T + 1))
    bi = rc.compile(rc.Bidirectional(rc.cells.gru(3, 4, 2)))
    with pytest.raises(rc.CallError, match="has no loss"):
        bi.loss_and_grad(bi.init_params(0), x, t)
    with pytest.raises(rc.CallError, match=r"d_outputs\['y'\] has shape"):
        bi.vjp(bi.init_params(0), x, d_outputs={"y": np.zeros((T, B, 2))})
    with pytest.raises(rc.TrainingError, match=r"'bidirectional\(gru\)' declares no loss.*put a cell with a loss "
                                               r"on top of it"):
        rc.Trainer(rc.Bidirectional(rc.cells.gru(3, 4, 2)), backend="numpy").fit(x, np.zeros((T, B, 4)), verbose=0)


# ----------------------------------------------------------------------------- PTX
def test_ptx_stack_assembles_and_matches_numpy_on_the_host_runner():
    """Each cell of the composition is one PTX model: ptxas accepts each (when on PATH), and
    the host runner (the same kernels and launch plan on this CPU) gives the oracle's numbers."""
    from rnncomp.backends.ptx.ptxgen import entries, find_ptxas, ptxas
    stack = rc.Stack([rc.Bidirectional(rc.cells.gru(3, 8, 4)), rc.cells.elman(8, 8, 2)])
    model = rc.compile(stack, backend="ptx", runner="host", persistent=False, arch="sm_80")
    assert len(model.models) == 2 and not model.parallel
    if find_ptxas() is not None:
        for m in model.models:
            assert entries(m.ptx)
            ptxas(m.ptx, "sm_80")  # raises CompileError with ptxas's message when it refuses
    _same_training_numbers(model, rc.compile(stack))
