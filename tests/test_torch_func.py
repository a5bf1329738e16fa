"""rnncomp.torch under torch.func (grad, grad_and_value, vjp, jacrev, vmap) and batched backwards.

Oracles, each independent of the transform's path through the layer:
- a plain PyTorch loop of the same cell (``REFS``), same parameters, under the same transform;
- central finite differences in float64 (``jacrev``);
- the layer's ordinary ``loss.backward()``, eager, one call per sample (compositions, padded
  batches, dropout), itself checked against loops and finite differences in test_torch*.py.

Tolerances: float64, ``RTOL[float64]`` = 1e-10 relative to the largest value (the layer and
the loop sum the same terms in other orders: rounding ~1e-16 a term over a T = 5 recurrence
leaves 10⁵ ulps of room).  float32 (~6e-8 an operation), 1e-4: the same sums in float32, with
room for the recurrence to amplify rounding.  Against the layer's own eager backward the
numbers are the same computation with the same kept or recomputed forward: rtol 1e-12.
"""
from __future__ import annotations

import gc
from unittest import mock

import pytest

torch = pytest.importorskip("torch", reason="rnncomp.torch needs PyTorch (pip install 'rnncomp[torch]')")

import rnncomp as rc  # noqa: E402
from rnncomp.errors import CallError  # noqa: E402
from rnncomp.torch import KEPT, MODELS, Recurrent, recurrent_op, recurrent_vjp_op  # noqa: E402

from torch.func import functional_call, grad, grad_and_value, jacrev, vjp, vmap  # noqa: E402

F32, F64 = torch.float32, torch.float64
RTOL = {F32: 1e-4, F64: 1e-10}
SAME = 1e-12  # against the layer's own eager backward: the same computation
T, B, D, H, O = 5, 2, 3, 4, 2


# ----------------------------------------------------------------------------- plain PyTorch loops
def _aff(p, g, x, h):
    return x @ p[f"W{g}"].T + h @ p[f"U{g}"].T + p[f"b{g}"]


def elman_step(p, x, s):
    return {"h": torch.tanh(_aff(p, "", x, s["h"]))}


def lstm_step(p, x, s):
    i, f = torch.sigmoid(_aff(p, "i", x, s["h"])), torch.sigmoid(_aff(p, "f", x, s["h"]))
    g, o = torch.tanh(_aff(p, "g", x, s["h"])), torch.sigmoid(_aff(p, "o", x, s["h"]))
    c = f * s["c"] + i * g
    return {"h": o * torch.tanh(c), "c": c}


REFS = {"elman": (rc.cells.elman, elman_step), "lstm": (rc.cells.lstm, lstm_step)}


def reference(step, p, x, h0):
    """(y (T, B, O), final states) of a zoo cell with the output head y = V h + by."""
    s, ys = dict(h0), []
    for t in range(x.shape[0]):
        s = step(p, x[t], s)
        ys.append(s["h"] @ p["V"].T + p["by"])
    return torch.stack(ys), s


def _close(a, b, what, rtol):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * (1 + float(b.abs().max()))), \
        f"{what}: max diff {float((a - b).abs().max()):.3g}"


def _close_tree(a, b, what, rtol):
    if isinstance(b, dict):
        assert set(a) == set(b), what
        for k in b:
            _close_tree(a[k], b[k], f"{what}[{k!r}]", rtol)
    elif isinstance(b, (tuple, list)):
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close_tree(u, v, f"{what}[{i}]", rtol)
    else:
        _close(a, b, what, rtol)


def _setup(name, dtype, seed=0):
    make, step = REFS[name]
    layer = Recurrent(make(D, H, O), output="y", dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed)
    params = {n: v.detach().clone() for n, v in layer.named_parameters()}
    x = torch.randn(T, B, D, dtype=dtype, generator=g)
    h0 = {s: torch.randn(B, n, dtype=dtype, generator=g) for s, n in layer._model.step.states.items()}
    dy, dh = torch.randn(T, B, O, dtype=dtype, generator=g), torch.randn(B, H, dtype=dtype, generator=g)
    return layer, step, params, x, h0, dy, dh


def _losses(layer, step, dy, dh):
    """The same loss of (params, x, h0) through the layer and through the loop."""
    def of(run):
        def loss(p, x, h0):
            y, final = run(p, x, h0)
            return (y * dy).sum() + (final["h"] * dh).sum() + final["h"].square().sum()
        return loss
    return of(lambda p, x, h0: functional_call(layer, p, (x, h0))), of(lambda p, x, h0: reference(step, p, x, h0))


# ----------------------------------------------------------------------------- grad, grad_and_value, vjp
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_grad_and_grad_and_value_over_parameters_inputs_and_h0_match_a_pytorch_loop(name, dtype):
    layer, step, p, x, h0, dy, dh = _setup(name, dtype)
    loss, ref = _losses(layer, step, dy, dh)
    got = grad(loss, argnums=(0, 1, 2))(p, x, h0)
    _close_tree(got, grad(ref, argnums=(0, 1, 2))(p, x, h0), "grad", RTOL[dtype])
    g, value = grad_and_value(loss, argnums=(0, 1))(p, x, h0)
    _close(value, ref(p, x, h0), "value", RTOL[dtype])
    _close_tree(g, got[:2], "grad_and_value's grad", SAME)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_vjp_over_parameters_and_inputs_matches_a_pytorch_loop(dtype):
    layer, step, p, x, h0, dy, dh = _setup("lstm", dtype, seed=1)
    (y, final), f = vjp(lambda p, x: functional_call(layer, p, (x, h0)), p, x)
    (y_ref, final_ref), f_ref = vjp(lambda p, x: reference(step, p, x, h0), p, x)
    _close(y, y_ref, "y", RTOL[dtype])
    _close_tree(final, final_ref, "final", RTOL[dtype])
    cot = (dy, {"h": dh, "c": torch.ones_like(dh)})
    _close_tree(f(cot), f_ref(cot), "vjp", RTOL[dtype])


def test_jacrev_matches_central_differences():
    layer = Recurrent(rc.cells.elman(2, 3, 2), output="y", dtype=F64, seed=2)
    x = torch.randn(3, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    p = {n: v.detach() for n, v in layer.named_parameters()}
    f = lambda p, x: functional_call(layer, p, (x,))[0]  # noqa: E731
    Jp, Jx = jacrev(f, argnums=(0, 1))(p, x)

    def fd(of, at):  # central differences, one column per entry of `at`
        cols, eps = [], 1e-6
        for i in range(at.numel()):
            e = torch.zeros(at.numel(), dtype=F64)
            e[i] = eps
            cols.append((of(at + e.view_as(at)) - of(at - e.view_as(at))) / (2 * eps))
        return torch.stack(cols, dim=-1).reshape(*cols[0].shape, *at.shape)
    # float64 central differences of step 1e-6: truncation ~1e-12, rounding ~1e-10
    tol = dict(rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(Jx, fd(lambda x: f(p, x), x), **tol)
    for n in ("W", "U", "V"):
        torch.testing.assert_close(Jp[n], fd(lambda v: f({**p, n: v}, x), p[n]), **tol)


def test_grad_and_jacrev_read_the_kept_forward_and_vmap_folds_into_one_call():
    """What each transform costs (docs/layers.md): grad and jacrev's backwards read the
    forward's kept buffers (model.vjp, the forward again, never runs) and nothing stays kept;
    vmap over the inputs is one forward over V·B rows; per-sample grads one vjp per sample."""
    layer, _, p, x, _, _, _ = _setup("elman", F64, seed=14)
    model = MODELS.get(layer._key)
    f = lambda p, x: functional_call(layer, p, (x,))[0]  # noqa: E731
    with mock.patch.object(model, "vjp", wraps=model.vjp) as vjp_calls, \
            mock.patch.object(model, "forward", wraps=model.forward) as forward_calls:
        grad(lambda p, x: f(p, x).sum(), argnums=(0, 1))(p, x)
        jacrev(f, argnums=(0, 1))(p, x)
        assert vjp_calls.call_count == 0 and forward_calls.call_count == 2
        vmap(f, in_dims=(None, 0))(p, torch.stack([x, x, x]))
        assert forward_calls.call_count == 3
        vmap(grad(lambda p, x: f(p, x).sum()), in_dims=(None, 0))(p, torch.stack([x, x, x]))
        assert vjp_calls.call_count == 3
    gc.collect()
    assert not KEPT._by_address


# ----------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("dtype", [F32, F64])
def test_vmap_of_the_forward_over_inputs_h0_and_parameters(dtype):
    layer, step, p, x, h0, _, _ = _setup("lstm", dtype, seed=3)
    g = torch.Generator().manual_seed(3)
    V = 3
    f = lambda p, x, h0: functional_call(layer, p, (x, h0))  # noqa: E731
    ref = lambda p, x, h0: reference(step, p, x, h0)  # noqa: E731
    xs = torch.randn(T, V, B, D, dtype=dtype, generator=g)  # the vmapped axis inside: in_dims=1
    _close_tree(vmap(f, in_dims=(None, 1, None))(p, xs, h0), vmap(ref, in_dims=(None, 1, None))(p, xs, h0),
                "vmap over inputs", RTOL[dtype])
    h0s = {s: torch.randn(V, B, H, dtype=dtype, generator=g) for s in h0}
    _close_tree(vmap(f, in_dims=(None, None, 0))(p, x, h0s), vmap(ref, in_dims=(None, None, 0))(p, x, h0s),
                "vmap over h0", RTOL[dtype])
    ensemble = {n: torch.stack([v * (1 + 0.3 * k) for k in range(V)]) for n, v in p.items()}
    _close_tree(vmap(f, in_dims=(0, None, None))(ensemble, x, h0), vmap(ref, in_dims=(0, None, None))(ensemble, x, h0),
                "vmap over parameters (ensemble)", RTOL[dtype])
    both = vmap(f, in_dims=(0, 1, 0))(ensemble, xs, h0s)
    _close_tree(both, vmap(ref, in_dims=(0, 1, 0))(ensemble, xs, h0s), "vmap over all", RTOL[dtype])


def test_vmap_over_the_last_axis_of_inputs_and_h0():
    """in_dims=-1 (an input (T, B, D, V), h0 (B, H, V)): the units' axis is not the last one
    of the tensor the rule receives (before: a reshape to (T, V·B, V) failed)."""
    layer, step, p, x, h0, _, _ = _setup("lstm", F64, seed=6)
    g = torch.Generator().manual_seed(6)
    V = 3
    xs = torch.randn(T, B, D, V, dtype=F64, generator=g)
    h0s = {s: torch.randn(B, H, V, dtype=F64, generator=g) for s in h0}
    f = lambda x, h0: functional_call(layer, p, (x, h0))  # noqa: E731
    ref = lambda x, h0: reference(step, p, x, h0)  # noqa: E731
    for dims in ((-1, None), (None, -1), (-1, -1)):
        args = (xs if dims[0] else x, h0s if dims[1] else h0)
        _close_tree(vmap(f, in_dims=dims)(*args), vmap(ref, in_dims=dims)(*args), f"in_dims={dims}", RTOL[F64])


@pytest.mark.parametrize("dtype", [F32, F64])
def test_per_sample_gradients_vmap_of_grad(dtype):
    """The torch.func recipe: one gradient per sample, each a batch of one, against the loop
    under the same transforms and the layer's own backward() sample by sample."""
    layer, step, p, _, _, _, _ = _setup("elman", dtype, seed=4)
    g = torch.Generator().manual_seed(4)
    N = 4
    xs, targets = torch.randn(N, T, 1, D, dtype=dtype, generator=g), torch.randn(N, T, 1, O, dtype=dtype, generator=g)

    def loss(p, x, target):
        return (functional_call(layer, p, (x,))[0] - target).square().mean()

    def ref(p, x, target):
        return (reference(step, p, x, {"h": x.new_zeros(1, H)})[0] - target).square().mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(p, xs, targets)
    _close_tree(per_sample, vmap(grad(ref), in_dims=(None, 0, 0))(p, xs, targets), "per-sample grads", RTOL[dtype])
    for i in range(N):
        layer.zero_grad()
        (layer(xs[i])[0] - targets[i]).square().mean().backward()
        for n, v in layer.named_parameters():
            _close(per_sample[n][i], v.grad, f"sample {i}, {n}", SAME if dtype == F64 else RTOL[dtype])


def test_ensemble_per_sample_gradients_and_nested_vmap():
    layer, step, p, _, _, dy, _ = _setup("elman", F64, seed=5)
    g = torch.Generator().manual_seed(5)
    ensemble = {n: torch.stack([v, -0.5 * v]) for n, v in p.items()}
    xs = torch.randn(3, T, B, D, dtype=F64, generator=g)
    f = lambda p, x: (functional_call(layer, p, (x,))[0] * dy).sum()  # noqa: E731
    ref = lambda p, x: (reference(step, p, x, {"h": x.new_zeros(B, H)})[0] * dy).sum()  # noqa: E731
    per = lambda f: vmap(vmap(grad(f), in_dims=(None, 0)), in_dims=(0, None))  # noqa: E731
    _close_tree(per(f)(ensemble, xs), per(ref)(ensemble, xs), "grads of an ensemble, per sample", RTOL[F64])
    # an ensemble trained with backward(): vmap's forward, autograd's backward through it
    stacked = {n: v.clone().requires_grad_() for n, v in ensemble.items()}
    vmap(lambda p: functional_call(layer, p, (xs[0],))[0])(stacked).square().sum().backward()
    for k in range(2):
        member = {n: v[k].clone().requires_grad_() for n, v in ensemble.items()}
        reference(step, member, xs[0], {"h": xs.new_zeros(B, H)})[0].square().sum().backward()
        _close_tree({n: v.grad[k] for n, v in stacked.items()}, {n: v.grad for n, v in member.items()},
                    f"member {k}", RTOL[F64])


@pytest.mark.parametrize("dtype", [F32, F64])
def test_is_grads_batched_matches_one_backward_per_cotangent(dtype):
    """PyTorch's older vmap over the backward: before, "Batching rule not implemented for
    rnncomp::recurrent_vjp"."""
    layer, step, p, x, _, _, _ = _setup("lstm", dtype, seed=6)
    x = x.requires_grad_()
    y, final = layer(x)
    cots = torch.randn(3, *y.shape, dtype=dtype, generator=torch.Generator().manual_seed(6))
    wrt = (x, layer.Wi, layer.by)
    model = MODELS.get(layer._key)
    with mock.patch.object(model, "vjp", wraps=model.vjp) as vjp_calls:
        got = torch.autograd.grad(y, wrt, cots, is_grads_batched=True, retain_graph=True)
    assert vjp_calls.call_count == 0  # each cotangent's backward read the one kept forward
    p_ref = {n: v.clone().requires_grad_() for n, v in p.items()}
    x_ref = x.detach().clone().requires_grad_()
    y_ref, _ = reference(step, p_ref, x_ref, {"h": x.new_zeros(B, H), "c": x.new_zeros(B, H)})
    for i, cot in enumerate(cots):
        want = torch.autograd.grad(y_ref, (x_ref, p_ref["Wi"], p_ref["by"]), cot, retain_graph=True)
        _close_tree([g[i] for g in got], want, f"cotangent {i}", RTOL[dtype])


def test_a_vmapped_backward_never_uses_another_elements_kept_forward():
    """A kept forward's handle is one forward: where the primals are vmapped, no element's
    backward may read it (it would get the gradient at the kept element's point)."""
    layer, step, p, x, _, dy, _ = _setup("elman", F64, seed=7)
    key, params = layer._key, list(p.values())
    none, h0 = torch.full((1,), -1, dtype=torch.int64), [torch.zeros(B, H, dtype=F64)]
    handle = recurrent_op(key, params, [x], h0, True, none)[-1]   # keeps the forward at x
    xs = torch.stack([x, 2 * x])
    got = vmap(lambda x: recurrent_vjp_op(key, handle, params, [x], h0, [dy], [torch.zeros(B, H, dtype=F64)],
                                          none), in_dims=0)(xs)
    for i in range(2):
        want_p, want_x = vjp(lambda p, x: reference(step, p, x, {"h": h0[0]})[0], p, xs[i])[1](dy)
        _close_tree(dict(zip(p, (g[i] for g in got[:len(p)]))), want_p, f"element {i}: δparams", RTOL[F64])
        _close(got[len(p)][i], want_x, f"element {i}: δx", RTOL[F64])


# ----------------------------------------------------------------------------- compositions, lengths, dropout
def _stack(dropout=0.0):
    return Recurrent(rc.Stack([rc.cells.lstm(D, H), rc.cells.elman(H, H, O)], dropout=dropout), output="y",
                     dtype=F64, seed=8)


def _eager_grads(layer, loss_of, *args):
    """The layer's ordinary backward: {parameter: gradient}."""
    layer.zero_grad()
    loss_of(layer(*args)).backward()
    return {n: v.grad.clone() for n, v in layer.named_parameters()}


def test_a_stack_under_grad_and_per_sample_grads_matches_its_backward():
    layer = _stack()
    p = {n: v.detach() for n, v in layer.named_parameters()}
    g = torch.Generator().manual_seed(8)
    xs = torch.randn(3, T, B, D, dtype=F64, generator=g)
    loss_of = lambda out: out[0].square().sum() + out[1]["l0.c"].sum()  # noqa: E731
    f = lambda p, x: loss_of(functional_call(layer, p, (x,)))  # noqa: E731
    per_sample = vmap(grad(f), in_dims=(None, 0))(p, xs)
    for i in range(len(xs)):
        _close_tree({n: v[i] for n, v in per_sample.items()}, _eager_grads(layer, loss_of, xs[i]),
                    f"sample {i}", SAME)
    ys, finals = vmap(layer)(xs)
    for i, x in enumerate(xs):
        _close_tree((ys[i], {s: v[i] for s, v in finals.items()}), layer(x), f"vmap, element {i}", SAME)


def test_a_padded_batch_under_grad_matches_its_backward():
    layer = _stack()
    p = {n: v.detach() for n, v in layer.named_parameters()}
    x = torch.randn(T, 3, D, dtype=F64, generator=torch.Generator().manual_seed(9))
    lengths = [5, 2, 4]
    loss_of = lambda out: out[0].square().sum() + out[1]["l1.h"].sum() + out[1]["l0.c"].square().sum()  # noqa: E731
    got = grad(lambda p, x: loss_of(functional_call(layer, p, (x,), {"lengths": lengths})), argnums=(0, 1))(p, x)
    x_ref = x.clone().requires_grad_()
    want = _eager_grads(layer, loss_of, x_ref, None, lengths)
    _close_tree(got, (want, x_ref.grad), "grad with lengths", SAME)


def test_dropout_under_grad_draws_the_masks_backward_draws():
    """A training Stack with dropout: the seed comes from torch's generator, so torch.func.grad
    after torch.manual_seed(s) gives backward()'s gradient after the same seed."""
    layer, plain = _stack(dropout=0.5).train(), _stack()
    p = {n: v.detach() for n, v in layer.named_parameters()}
    x = torch.randn(T, B, D, dtype=F64, generator=torch.Generator().manual_seed(10))
    loss_of = lambda out: out[0].square().sum()  # noqa: E731
    f = grad(lambda p: loss_of(functional_call(layer, p, (x,))))
    torch.manual_seed(11)
    got = f(p)
    torch.manual_seed(11)
    _close_tree(got, _eager_grads(layer, loss_of, x), "grad with dropout", SAME)
    no_dropout = _eager_grads(plain, loss_of, x)
    assert not torch.allclose(got["l1__W"], no_dropout["l1__W"]), "no unit was dropped"
    # under vmap, dropout follows vmap's randomness: "same", each element the masks of one call
    torch.manual_seed(12)
    ys = vmap(lambda x: layer(x)[0], randomness="same")(torch.stack([x, x]))
    torch.manual_seed(12)
    one = layer(x)[0]
    _close_tree([ys[0], ys[1]], [one, one], "randomness='same'", SAME)
    ys = vmap(lambda x: layer(x)[0], randomness="different")(torch.stack([x, x]))
    assert not torch.equal(ys[0], ys[1])


# ----------------------------------------------------------------------------- what is not derived
def test_grad_of_grad_and_forward_mode_are_named_errors():
    layer, _, p, x, _, _, _ = _setup("elman", F64, seed=13)
    f = lambda x: functional_call(layer, p, (x,))[0].square().sum()  # noqa: E731
    with pytest.raises(CallError, match=r"cell 'elman': the gradient of its gradient .* first-order gradients only"):
        grad(lambda x: grad(f)(x).sum())(x)
    with pytest.raises(CallError, match=r"cell 'elman': the gradient of its gradient"):
        jacrev(jacrev(f))(x)
    forward_mode = r"cell 'elman': forward-mode differentiation \(torch.func.jvp, jacfwd, hessian\) .* not derived"
    with pytest.raises(CallError, match=forward_mode):
        torch.func.jvp(f, (x,), (torch.ones_like(x),))
    with pytest.raises(CallError, match=forward_mode):
        torch.func.jacfwd(f)(x)
    with pytest.raises(CallError, match=forward_mode):
        torch.func.hessian(f)(x)
    assert torch.isfinite(f(x))  # and the layer runs after them
