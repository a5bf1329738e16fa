"""jax.grad of jax.grad (and jax.hessian) through rnncomp.jax.recurrent.

Before: JAX's ValueError "The FFI call to `rnncomp_host_call` cannot be differentiated. You can
use `jax.custom_jvp` or `jax.custom_jvp` to add support." -- raised from inside jax/_src/ffi.py,
naming neither the layer nor the limit (and suggesting a fix the user cannot apply).
Expected: an rc.CallError naming the cell and saying the layers are first-order only."""
import numpy as np, jax
import jax.numpy as jnp
import rnncomp as rc, rnncomp.jax

layer = rc.jax.recurrent(rc.cells.elman(3, 4, 2), output="y")
p = layer.init_params(0)
x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
loss = lambda p: jnp.sum(layer(p, x)[0] ** 2)
for name, f in [("grad of grad", lambda: jax.grad(lambda p: jnp.sum(jax.grad(loss)(p)["W"] ** 2))(p)),
                ("hessian", lambda: jax.hessian(loss)(p))]:
    try:
        f()
        print(name, "ran")
    except Exception as e:
        print(name, "->", type(e).__module__ + "." + type(e).__name__ + ":", str(e).splitlines()[0])
