"""A composition inside the framework layers (rnncomp.jax, rnncomp.torch): the same numbers as the composed
model's vjp; with lengths and a bidirectional layer inside (run one call per length, so the
reversed pass starts at each sequence's own last step), outputs, final states and gradients
against a per-sequence reference: each sequence alone, cut to its length, through the
composed model's forward and vjp (float64; rtol 1e-12: the same arithmetic in other calls)."""
import numpy as np
import pytest

import rnncomp as rc


def test_jax_layer_of_a_stack_gives_the_composed_models_gradients():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import rnncomp.jax  # noqa: F401
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float64 for this test only
    try:
        _check_jax(jax)
    finally:
        jax.config.update("jax_enable_x64", before)


def _check_jax(jax):
    stack = rc.Stack([rc.Bidirectional(rc.cells.elman(3, 5, 4)), rc.cells.gru(8, 5, 2)])
    layer = rc.jax.recurrent(stack, output="y", backend="numpy", dtype="float64")
    params = layer.init_params(seed=0)
    x = np.random.default_rng(0).normal(size=(4, 2, 3))
    y, final = layer(params, x)
    assert y.shape == (4, 2, 2) and sorted(final) == ["l0.bwd.h", "l0.fwd.h", "l1.h"]
    g = jax.grad(lambda p, xx: layer(p, xx)[0].sum(), argnums=(0, 1))(params, x)
    ref = rc.compile(stack).vjp(params, {"x": x}, d_outputs={"y": np.ones((4, 2, 2))})
    for k in params:
        np.testing.assert_allclose(np.asarray(g[0][k]), ref.params[k], rtol=1e-12, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(np.asarray(g[1]), ref.inputs["x"], rtol=1e-12, atol=1e-14)


def test_torch_layer_of_a_stack_gives_the_composed_models_gradients():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from rnncomp.torch import Recurrent
    stack = rc.Stack([rc.Bidirectional(rc.cells.elman(3, 5, 4)), rc.cells.gru(8, 5, 2)])
    layer = Recurrent(stack, output="y", backend="numpy", dtype=torch.float64)
    names = dict(layer.named_parameters())
    assert "l0__fwd__W" in names and "l1__Wz" in names  # PyTorch reserves '.' for submodules
    x = torch.tensor(np.random.default_rng(0).normal(size=(4, 2, 3)), requires_grad=True)
    y, final = layer(x)
    y.sum().backward()
    params = {k: v.detach().numpy() for k, v in layer.named_parameters()}
    ref = rc.compile(stack).vjp({k.replace("__", "."): v for k, v in params.items()}, {"x": x.detach().numpy()},
                                d_outputs={"y": np.ones((4, 2, 2))})
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), ref.params[k.replace("__", ".")], rtol=1e-12, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(x.grad.numpy(), ref.inputs["x"], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- lengths, bidirectional inside
LENGTHS = [5, 2, 5, 3]   # two sequences of the full T = 5, a 2 and a 3 (one call per length)


def _bi_stack():
    return rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 3)), rc.cells.elman(6, 4, 2)])


def _data():
    rng = np.random.default_rng(1)
    T, B = max(LENGTHS), len(LENGTHS)
    x = rng.normal(size=(T, B, 3))
    dy = rng.normal(size=(T, B, 2))              # the cotangent of y (read only up to each length)
    return x, dy


def per_sequence(stack, params, x, dy, d_final):
    """Each sequence alone, cut to its length: outputs (zeros after it), finals, and the
    gradients of Σ y·dy + Σ final·d_final summed over the sequences."""
    model = rc.compile(stack)
    T, B = x.shape[:2]
    y, finals = np.zeros_like(dy), {}
    grads, dx = {k: 0.0 for k in params}, np.zeros_like(x)
    for b, L in enumerate(LENGTHS):
        xb = {"x": x[:L, b:b + 1]}
        out, fin = model.forward(params, xb)
        y[:L, b] = out["y"][:, 0]
        for s, v in fin.items():
            finals.setdefault(s, np.zeros((B, v.shape[1])))[b] = v[0]
        g = model.vjp(params, xb, d_outputs={"y": dy[:L, b:b + 1]},
                      d_final={s: d[b:b + 1] for s, d in d_final.items()})
        for k in params:
            grads[k] = grads[k] + g.params[k]
        dx[:L, b] = g.inputs["x"][:, 0]
    return y, finals, grads, dx


def test_torch_layer_with_lengths_and_a_bidirectional_layer_inside():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from rnncomp.torch import Recurrent
    stack = _bi_stack()
    layer = Recurrent(stack, output="y", backend="native", dtype=torch.float64)
    x, dy = _data()
    xt = torch.tensor(x, requires_grad=True)
    y, final = layer(xt, lengths=LENGTHS)
    d_final = {s: np.random.default_rng(2).normal(size=tuple(v.shape)) for s, v in final.items()}
    ((y * torch.tensor(dy)).sum() + sum((v * torch.tensor(d_final[s])).sum() for s, v in final.items())).backward()
    params = {k.replace("__", "."): v.detach().numpy() for k, v in layer.named_parameters()}
    ry, rfinal, rgrads, rdx = per_sequence(stack, params, x, dy, d_final)
    np.testing.assert_allclose(y.detach().numpy(), ry, rtol=1e-12, atol=1e-14)
    assert sorted(final) == sorted(rfinal)
    for s in final:
        np.testing.assert_allclose(final[s].detach().numpy(), rfinal[s], rtol=1e-12, atol=1e-14, err_msg=s)
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), rgrads[k.replace("__", ".")], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(xt.grad.numpy(), rdx, rtol=1e-10, atol=1e-12)


def test_jax_layer_with_lengths_and_a_bidirectional_layer_inside():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import rnncomp.jax  # noqa: F401
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float64 for this test only
    try:
        stack = _bi_stack()
        layer = rc.jax.recurrent(stack, output="y", backend="native", dtype="float64")
        params = layer.init_params(seed=0)
        x, dy = _data()
        y, final = layer(params, x, lengths=LENGTHS)
        d_final = {s: np.random.default_rng(2).normal(size=v.shape) for s, v in final.items()}

        def f(p, xx):
            y, fin = layer(p, xx, lengths=LENGTHS)
            return (y * dy).sum() + sum((v * d_final[s]).sum() for s, v in fin.items())
        g, gx = jax.grad(f, argnums=(0, 1))(params, x)
    finally:
        jax.config.update("jax_enable_x64", before)
    ry, rfinal, rgrads, rdx = per_sequence(stack, params, x, dy, d_final)
    np.testing.assert_allclose(np.asarray(y), ry, rtol=1e-12, atol=1e-14)
    for s in rfinal:
        np.testing.assert_allclose(np.asarray(final[s]), rfinal[s], rtol=1e-12, atol=1e-14, err_msg=s)
    for k in params:
        np.testing.assert_allclose(np.asarray(g[k]), rgrads[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(np.asarray(gx), rdx, rtol=1e-10, atol=1e-12)


def _dropout_stacks(torch, Recurrent):
    cells = lambda: [rc.cells.gru(3, 8), rc.cells.gru(8, 8, 2)]  # noqa: E731
    layer = Recurrent(rc.Stack(cells(), dropout=0.5), output="y", dtype=torch.float64)
    plain = Recurrent(rc.Stack(cells()), output="y", dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    return layer, plain


def test_torch_layer_dropout_follows_the_module_mode_and_its_seed():
    """rc.Stack(..., dropout=p) in rnncomp.torch.Recurrent (found by a probe): dropout followed
    grad mode, not .train()/.eval(), and a forward made again (torch.utils.checkpoint, the op's
    vjp fallback) drew other masks than the one its loss came from.  Now, as nn.Dropout: eval
    drops nothing, with or without grad (the same numbers as the stack without dropout); train
    drops, under no_grad too; the masks come from torch's generator (torch.manual_seed), so a
    recomputed forward drops the same units: checkpoint gives the plain call's loss and
    gradients, the recomputing vjp the kept one's (rtol 1e-12: the same arithmetic), and with
    the seed fixed the gradient passes gradcheck (float64, central differences)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from torch.utils.checkpoint import checkpoint
    from rnncomp.torch import Recurrent, recurrent_op, recurrent_vjp_op
    layer, plain = _dropout_stacks(torch, Recurrent)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        ref = plain(x)[0]
        assert torch.equal(layer(x)[0], ref)
    assert torch.equal(layer(x)[0].detach(), ref)                 # grad enabled: still no dropout
    layer.train()
    with torch.no_grad():
        a, b = layer(x)[0], layer(x)[0]
    assert not torch.equal(a, b) and not torch.equal(a, ref)      # dropout, without grad too
    torch.manual_seed(3)
    c = layer(x)[0].detach()
    torch.manual_seed(3)
    assert torch.equal(layer(x)[0].detach(), c)                   # the masks follow torch's seed
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(7)
    la = layer(xa)[0].pow(3).sum()
    la.backward()
    ga = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    torch.manual_seed(7)
    lb = checkpoint(lambda z: layer(z)[0].pow(3).sum(), xb, use_reentrant=False)
    lb.backward()
    assert torch.allclose(la, lb, rtol=1e-12, atol=0)
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-12, atol=1e-15)
    for g, p in zip(ga, layer.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-12, atol=1e-15)
    # the op's backward without its kept forward runs the forward again, with the same masks
    st = layer._model.step
    params = [getattr(layer, n.replace(".", "__")) for n in st.params]
    h0 = [torch.zeros(4, n, dtype=torch.float64) for n in st.states.values()]
    seed = torch.tensor([11])
    kept = recurrent_op(layer._key, params, [x], h0, True, seed)
    d_out = [torch.ones_like(kept[0])]
    d_fin = [torch.zeros(4, n, dtype=torch.float64) for n in st.states.values()]
    from_kept = recurrent_vjp_op(layer._key, kept[-1], params, [x], h0, d_out, d_fin, seed)
    again = recurrent_vjp_op(layer._key, kept[-1].clone(), params, [x], h0, d_out, d_fin, seed)
    for u, v in zip(from_kept, again):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-15)
    fixed = lambda z: (torch.manual_seed(5), layer(z)[0])[1]  # noqa: E731
    assert torch.autograd.gradcheck(fixed, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def test_jax_layer_refuses_dropout_and_empty_calls():
    """rnncomp.jax takes no random key, so a stack with dropout would draw its masks from
    rnncomp's generator and another for a recomputed forward (wrong gradients, found by a
    probe): refused, named.  An empty sequence or batch ended in XLA's internal error from the
    host call (B = 0 only in the backward): named before the call."""
    pytest.importorskip("jax", reason="JAX is not installed")
    import rnncomp.jax  # noqa: F401
    with pytest.raises(rc.CallError, match=r"has dropout .*takes no random key"):
        rc.jax.recurrent(rc.Stack([rc.cells.gru(3, 8), rc.cells.gru(8, 8, 2)], dropout=0.5), output="y")
    layer = rc.jax.recurrent(rc.cells.lstm(3, 4, 2), output="y")
    params = layer.init_params(seed=0)
    for T, B in ((0, 2), (5, 0)):
        with pytest.raises(rc.CallError, match=rf"inputs have T = {T}, B = {B}: an empty sequence or batch"):
            layer(params, np.zeros((T, B, 3), np.float32))
