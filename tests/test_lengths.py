"""``lengths=`` on every compiled model (rnncomp/backends/lengths.py): a plain cell and the
compositions follow the framework layers' rule (docs/layers.md): final states after each
sequence's own last step, outputs after it zeros, a cotangent given there adds nothing, the
loss over the steps before each end.

References (float64): each sequence alone, cut to its length, through the NumPy model (rtol
1e-10: the same operations in other calls); a one-layer ``rc.Stack`` of the cell; the
PyTorch layer; central differences (``gradcheck``: rtol 1e-6, atol 1e-8)."""
import numpy as np
import pytest

import rnncomp as rc

from gradcheck import check_grads

T, B = 6, 4
LENGTHS = np.array([6, 1, 4, 2])  # the full T, a 1, and two between
VALID = np.arange(T)[:, None] < LENGTHS

COMPOSITIONS = {
    "bi": lambda: rc.Bidirectional(rc.cells.gru(3, 4, 2)),
    "stack": lambda: rc.Stack([rc.cells.elman(3, 4, 3), rc.cells.gru(3, 4, 2)]),
    "stack-of-bi": lambda: rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2), merge="sum"), rc.cells.elman(2, 3, 2)]),
    "bi-of-stack": lambda: rc.Bidirectional(rc.Stack([rc.cells.elman(3, 4, 3), rc.cells.mgu(3, 4, 2)]), merge="sum"),
}


def _data(model, seed=0):
    rng = np.random.default_rng(seed)
    st = model.step
    params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in model.init_params(seed).items()}
    x = {k: rng.normal(0, 0.7, (T, B, n)) for k, n in st.inputs.items()}
    t = {k: rng.normal(0, 0.7, (T, B, n)) for k, n in st.targets.items()}
    h0 = {s: rng.normal(0, 0.5, (B, n)) for s, n in st.states.items()}
    return params, x, t, h0


def _close(a, b, rtol=1e-10, what=""):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= rtol * scale, f"{what}: {np.abs(a - b).max()} vs {scale}"


def _rows(d, b, L=None):
    return {k: (v[:L, b:b + 1] if L is not None else v[b:b + 1]) for k, v in d.items()}


# ----------------------------------------------------------------------------- compositions
@pytest.mark.parametrize("name, backend", [(n, "numpy") for n in sorted(COMPOSITIONS)]
                         + [("stack-of-bi", "native"), ("stack", "native")])
def test_padded_outputs_of_a_composition_are_zeros_as_the_layers_give(name, backend):
    """Outputs and final states of each sequence those of the sequence alone (the NumPy
    oracle), zeros past its end: in ``forward`` and in a kept forward."""
    comp = COMPOSITIONS[name]()
    model, oracle = rc.compile(comp, backend=backend), rc.compile(comp)
    params, x, _, h0 = _data(model)
    out, final = model.forward(params, x, h0, lengths=LENGTHS)
    kept = model.forward(params, x, h0, lengths=LENGTHS, keep=True)
    for b, L in enumerate(LENGTHS):
        alone, fin = oracle.forward(params, _rows(x, b, L), _rows(h0, b))
        for o in out:
            _close(out[o][:L, b], alone[o][:, 0], what=f"{o}[:{L}, {b}]")
            assert not out[o][L:, b].any(), f"{o}[{L}:, {b}] is not zero"
        for s in final:
            _close(final[s][b], fin[s][0], what=f"{s}[{b}]")
    for o in out:
        np.testing.assert_array_equal(kept.outputs[o], out[o], err_msg=o)
    kept.free()


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_vjp_of_a_loss_over_padded_outputs_against_central_differences(name):
    """``vjp(lengths=)`` of F = Σ y² + ⟨d_final, final⟩ against its central differences in x,
    h0 and every parameter; a cotangent at the padding changes nothing."""
    model = rc.compile(COMPOSITIONS[name]())
    params, x, _, h0 = _data(model, seed=1)
    rng = np.random.default_rng(4)
    df = {s: rng.normal(size=(B, n)) for s, n in model.step.states.items()}

    def F(p, xx, hh):
        out, fin = model.forward(p, xx, hh, lengths=LENGTHS)
        return sum(float((y ** 2).sum()) for y in out.values()) + sum(float((fin[s] * df[s]).sum()) for s in df)

    out, _ = model.forward(params, x, h0, lengths=LENGTHS)
    dy = {o: 2 * y for o, y in out.items()}
    res = model.vjp(params, x, h0, d_outputs=dy, d_final=df, lengths=LENGTHS)
    noise = {o: np.where(VALID[..., None], 0.0, rng.normal(size=y.shape)) for o, y in dy.items()}
    again = model.vjp(params, x, h0, d_outputs={o: dy[o] + noise[o] for o in dy}, d_final=df, lengths=LENGTHS)
    for k in res.params:
        np.testing.assert_array_equal(again.params[k], res.params[k], err_msg=k)

    def directional(perturb, d, eps=1e-6):
        return (F(*perturb(eps * d)) - F(*perturb(-eps * d))) / (2 * eps)

    v = rng.normal(size=x["x"].shape)
    fd = directional(lambda e: (params, {"x": x["x"] + e}, h0), v)
    assert abs(fd - (res.inputs["x"] * v).sum()) <= 1e-8 + 1e-6 * abs(fd), ("x", fd)
    assert not res.inputs["x"][~VALID].any()  # the padding reaches nothing
    for s, h in h0.items():
        u = rng.normal(size=h.shape)
        fd = directional(lambda e: (params, x, dict(h0, **{s: h + e})), u)
        assert abs(fd - (res.h0[s] * u).sum()) <= 1e-8 + 1e-6 * abs(fd), (s, fd)
    for k, p in params.items():
        d = rng.normal(size=p.shape)
        fd = directional(lambda e: (dict(params, **{k: p + e}), x, h0), d)
        assert abs(fd - (res.params[k] * d).sum()) <= 1e-8 + 1e-6 * abs(fd), (k, fd)


def test_a_composition_vjp_gives_the_torch_layers_gradients_with_lengths():
    """The user's move: a loss Σ y² from the PyTorch layer to ``model.vjp(lengths=)``."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from rnncomp.torch import Recurrent
    comp = COMPOSITIONS["stack-of-bi"]()
    layer = Recurrent(comp, output="y", backend="numpy", dtype=torch.float64)
    x = np.random.default_rng(3).normal(size=(T, B, 3))
    xt = torch.tensor(x, requires_grad=True)
    y, _ = layer(xt, lengths=LENGTHS.tolist())
    (y ** 2).sum().backward()
    params = {k.replace("__", "."): v.detach().numpy() for k, v in layer.named_parameters()}
    model = rc.compile(comp)
    out, _ = model.forward(params, {"x": x}, lengths=LENGTHS)
    np.testing.assert_allclose(out["y"], y.detach().numpy(), rtol=1e-12, atol=1e-14)
    res = model.vjp(params, {"x": x}, d_outputs={"y": 2 * out["y"]}, lengths=LENGTHS)
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(res.params[k.replace("__", ".")], p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=k)
    np.testing.assert_allclose(res.inputs["x"], xt.grad.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- a plain compiled cell
def _plain(backend):
    cell = rc.cells.gru(3, 5, 2)  # loss: mean squared error against "target"
    opts = {"runner": "host"} if backend == "ptx" else {}
    return cell, rc.compile(cell, backend=backend, **opts), rc.compile(rc.Stack([cell]), backend=backend, **opts)


def _in_stack(d):
    return {f"l0.{k}": v for k, v in d.items()}


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
def test_a_plain_cell_takes_lengths_as_its_one_layer_stack_does(backend):
    """forward, loss_and_grad (with and without a mask), vjp, keep/backward: the numbers of
    ``rc.compile(rc.Stack([cell]))`` with the same lengths, and the NumPy oracle's."""
    cell, plain, stack = _plain(backend)
    oracle = rc.compile(cell)
    params, x, t, h0 = _data(plain)
    sp, sh = _in_stack(params), _in_stack(h0)
    out, final = plain.forward(params, x, h0, lengths=LENGTHS)
    s_out, s_final = stack.forward(sp, x, sh, lengths=LENGTHS)
    o_out, o_final = oracle.forward(params, x, h0, lengths=LENGTHS)
    _close(out["y"], s_out["y"], what="y")
    _close(out["y"], o_out["y"], what="y vs numpy")
    assert not out["y"][~VALID].any()
    _close(final["h"], s_final["l0.h"], what="h")
    _close(final["h"], o_final["h"], what="h vs numpy")

    mask = VALID * np.random.default_rng(5).uniform(0.5, 1.0, (T, B))
    for m in (None, mask):
        loss, grads, fin = plain.loss_and_grad(params, x, t, h0, m, lengths=LENGTHS)
        s_loss, s_grads, s_fin = stack.loss_and_grad(sp, x, t, sh, m, lengths=LENGTHS)
        _close(loss, s_loss, what="loss")
        for k in grads:
            _close(grads[k], s_grads[f"l0.{k}"], what=k)
        _close(fin["h"], final["h"], what="final of loss_and_grad")
    # the loss is over the steps before each end: the lengths' mask, as Trainer.fit(lengths=) passes
    _close(plain.loss_and_grad(params, x, t, h0, lengths=LENGTHS)[0],
           plain.loss_and_grad(params, x, t, h0, VALID.astype(float))[0], what="loss = masked loss")

    rng = np.random.default_rng(6)
    dy, df = {"y": rng.normal(size=(T, B, 2))}, {"h": rng.normal(size=(B, 5))}
    g = plain.vjp(params, x, h0, d_outputs=dy, d_final=df, lengths=LENGTHS)
    sg = stack.vjp(sp, x, sh, d_outputs=dy, d_final={"l0.h": df["h"]}, lengths=LENGTHS)
    kept = plain.forward(params, x, h0, keep=True, lengths=LENGTHS)
    kg = kept.backward(dy, df)
    _close(kept.final["h"], final["h"], what="kept final")
    np.testing.assert_array_equal(kept.outputs["y"], out["y"])
    kept.free()
    for k in g.params:
        _close(g.params[k], sg.params[f"l0.{k}"], what=k)
        _close(kg.params[k], g.params[k], what=f"kept {k}")
    _close(g.inputs["x"], sg.inputs["x"], what="dx")
    _close(kg.inputs["x"], g.inputs["x"], what="kept dx")
    _close(g.h0["h"], sg.h0["l0.h"], what="dh0")


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_plain_cells_gradients_with_lengths_against_central_differences(backend):
    cell, plain, _ = _plain(backend)
    params, x, t, h0 = _data(plain, seed=2)
    check_grads(plain, params, x, t, h0=h0, lengths=LENGTHS)
    rng = np.random.default_rng(7)
    df = {"h": rng.normal(size=(B, 5))}

    def F(xx, hh):
        out, fin = plain.forward(params, xx, hh, lengths=LENGTHS)
        return float((out["y"] ** 2).sum() + (fin["h"] * df["h"]).sum())

    out, _ = plain.forward(params, x, h0, lengths=LENGTHS)
    res = plain.vjp(params, x, h0, d_outputs={"y": 2 * out["y"] + ~VALID[..., None]}, d_final=df, lengths=LENGTHS)
    v, u = rng.normal(size=x["x"].shape), rng.normal(size=(B, 5))
    fd = (F({"x": x["x"] + 1e-6 * v}, h0) - F({"x": x["x"] - 1e-6 * v}, h0)) / 2e-6
    assert abs(fd - (res.inputs["x"] * v).sum()) <= 1e-8 + 1e-6 * abs(fd)
    fd = (F(x, {"h": h0["h"] + 1e-6 * u}) - F(x, {"h": h0["h"] - 1e-6 * u})) / 2e-6
    assert abs(fd - (res.h0["h"] * u).sum()) <= 1e-8 + 1e-6 * abs(fd)


def test_a_plain_cells_kept_forward_from_residuals_with_lengths():
    cell, plain, _ = _plain("native")
    params, x, _, h0 = _data(plain, seed=3)
    rng = np.random.default_rng(8)
    dy, df = {"y": rng.normal(size=(T, B, 2))}, {"h": rng.normal(size=(B, 5))}
    kept = plain.forward(params, x, h0, keep=True, lengths=LENGTHS)
    want = kept.backward(dy, df)
    again = plain.kept_from(kept.residuals(), params, x, h0, lengths=LENGTHS).backward(dy, df)
    for k in want.params:
        np.testing.assert_array_equal(again.params[k], want.params[k], err_msg=k)
    np.testing.assert_array_equal(again.inputs["x"], want.inputs["x"])
    np.testing.assert_array_equal(again.h0["h"], want.h0["h"])


@pytest.mark.parametrize("lengths, mask, match", [
    ([6, 1, 4], None, r"cell 'gru': lengths must be 4 integers"),
    ([6, 0, 4, 2], None, r"cell 'gru': lengths must lie in 1 … 6"),
    ([6, 1, 7, 2], None, r"cell 'gru': lengths must lie in 1 … 6"),
    ([6.0, 1, 4, 2], None, r"cell 'gru': lengths must be 4 integers"),
    (LENGTHS, np.ones((T, B)), r"cell 'gru': mask= weighs step 1 of sequence 1, past its end \(lengths\[1\] = 1\)"),
])
def test_bad_lengths_on_a_plain_cell_are_named(lengths, mask, match):
    cell, plain, _ = _plain("numpy")
    params, x, t, h0 = _data(plain)
    with pytest.raises(rc.CallError, match=match):
        plain.loss_and_grad(params, x, t, h0, mask, lengths=lengths)
    if mask is None:
        with pytest.raises(rc.CallError, match=match):
            plain.forward(params, x, h0, lengths=lengths)
        with pytest.raises(rc.CallError, match=match):
            plain.vjp(params, x, h0, d_outputs={"y": np.ones((T, B, 2))}, lengths=lengths)
