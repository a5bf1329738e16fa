"""A composition inside the framework layers (rnncomp.jax, rnncomp.torch): the same numbers as the composed
model's vjp; lengths, which the layers run in chunks, refused for a bidirectional layer
rather than reversed piecewise."""
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
    with pytest.raises(rc.CallError, match="lengths= with a bidirectional layer inside is not supported"):
        layer(params, x, lengths=[4, 2])


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
    with pytest.raises(rc.CallError, match="lengths= with a bidirectional layer inside is not supported"):
        layer(x, lengths=[4, 2])
