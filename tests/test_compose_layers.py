"""A composition inside the framework layers (rnncomp.jax): the same numbers as the composed
model's vjp; lengths, which the layers run in chunks, refused for a bidirectional layer
rather than reversed piecewise."""
import numpy as np
import pytest

import rnncomp as rc

jax = pytest.importorskip("jax", reason="JAX is not installed")


def test_jax_layer_of_a_stack_gives_the_composed_models_gradients():
    import rnncomp.jax  # noqa: F401
    jax.config.update("jax_enable_x64", True)
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
