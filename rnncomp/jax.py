"""rnncomp inside JAX: ``recurrent(cell)`` is a function ``f(params, x, h0) -> (outputs, final)``.

It is differentiable (``jax.custom_vjp``: the backward is the compiled model's ``vjp``,
docs/vjp.md) and runs under ``jax.jit``: the forward and the backward are host calls
(``jax.pure_callback``) into the compiled model, which reads the arrays XLA hands it in
place.  Under ``jax.vmap`` each mapped element is one call of the model, in turn
(``vmap_method="sequential"``): correct, not fast; batch along the layer's B axis instead.
See docs/layers.md.

    >>> import numpy as np, rnncomp as rc, rnncomp.jax
    >>> layer = rc.jax.recurrent(rc.cells.elman(3, 5, 2), output="y")
    >>> y, final = layer(layer.init_params(seed=0), np.ones((4, 2, 3), np.float32))
    >>> y.shape, final["h"].shape
    ((4, 2, 2), (2, 5))
"""
from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - exercised only without jax installed
    raise ImportError("rnncomp.jax needs JAX: pip install 'rnncomp[jax]'") from e

import numpy as np

from .errors import CallError
from .layer_common import ArrayOps, check_layer_cell, check_lengths, missing_inputs, named, padded_runner


class Recurrent:
    """What :func:`recurrent` returns: call it as ``f(params, x, h0=None)``."""

    def __init__(self, model, output):
        self.model, self.output = model, output
        st, dt = model.step, model.dtype
        P, X, S, O = tuple(st.params), tuple(st.inputs), tuple(st.states), tuple(st.outputs)

        # forward  (params, inputs, h0)                     -> (outputs (T, B, n), final states (B, n))
        # backward (params, inputs, h0, δoutputs, δfinal)   -> (δparams, δinputs, δh0)
        # No NaN/inf check inside: an exception in a pure_callback is undefined behaviour in
        # JAX, so a NaN goes through as it does through any JAX op.
        def host_forward(params, inputs, h0):
            outs, final = model.forward(dict(zip(P, params)), dict(zip(X, inputs)), dict(zip(S, h0)),
                                        check_finite=False)
            return tuple(outs[o] for o in O), tuple(final[s] for s in S)

        def host_vjp(params, inputs, h0, d_out, d_fin):
            res = model.vjp(dict(zip(P, params)), dict(zip(X, inputs)), dict(zip(S, h0)),
                            d_outputs=dict(zip(O, d_out)), d_final=dict(zip(S, d_fin)), check_finite=False)
            # δh0, the backward's carried cotangent, copied (B × n): no backend promises it is not a buffer it reuses
            return (tuple(res.params[p] for p in P), tuple(res.inputs[x] for x in X),
                    tuple(np.array(res.h0[s]) for s in S))

        def like(arrays):
            return tuple(jax.ShapeDtypeStruct(a.shape, dt) for a in arrays)

        @jax.custom_vjp
        def core(params, inputs, h0):
            T, B = inputs[0].shape[:2]
            shapes = (tuple(jax.ShapeDtypeStruct((T, B, n), dt) for n in st.outputs.values()),
                      tuple(jax.ShapeDtypeStruct((B, n), dt) for n in st.states.values()))
            return jax.pure_callback(host_forward, shapes, params, inputs, h0, vmap_method="sequential")

        def core_fwd(params, inputs, h0):
            return core(params, inputs, h0), (params, inputs, h0)

        def core_bwd(saved, cot):
            params, inputs, h0 = saved
            return jax.pure_callback(host_vjp, (like(params), like(inputs), like(h0)), params, inputs, h0,
                                     *cot, vmap_method="sequential")

        core.defvjp(core_fwd, core_bwd)
        self._core = core

    def __repr__(self):
        st = self.model.step
        return (f"<rnncomp.jax layer of cell {st.name!r} on {self.model.backend}, {self.model.dtype}, "
                f"output={self.output!r}>")

    def init_params(self, seed: int = 0) -> dict:
        """The cell's parameters from its initialisers, as JAX arrays of the layer's dtype."""
        return {n: jnp.asarray(a) for n, a in self.model.init_params(seed).items()}

    def _checked(self, what, a, shape):
        st, dt = self.model.step, self.model.dtype
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise CallError(f"cell {st.name!r}: {what} must be an array, got {type(a).__name__}")
        if a.dtype != dt:
            raise CallError(f"cell {st.name!r}: {what} has dtype {a.dtype}, but the layer is {dt}; "
                            f"convert it with .astype({dt.name!r})")
        if tuple(a.shape) != tuple(shape):
            raise CallError(f"cell {st.name!r}: {what} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        return a

    def __call__(self, params, x, h0=None, lengths=None):
        """``params``: {name: array} (all the cell's parameters); ``x``: (T, B, n) for a cell
        with one input, or {input: array}; ``h0``: an array (one state) or {state: (B, n)},
        any subset (the others: the learned initial state, or zeros); ``lengths``: for a
        padded batch, each sequence's length (B ints from 1 to T, static: Python ints or a
        NumPy array, not a traced value).

        Returns ``(outputs, final)``: ``outputs`` the (T, B, n) array of ``output`` (or a
        dict of every output), ``final`` {state: (B, n)}.  With ``lengths``, a sequence's
        final states are those after its last step and its outputs after it are zeros."""
        st = self.model.step
        if self.model.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise CallError(f"cell {st.name!r}: the layer is float64 but JAX runs in float32: enable "
                            "float64 with jax.config.update('jax_enable_x64', True)")
        if not isinstance(params, dict):
            raise CallError(f"cell {st.name!r}: params must be a dict of arrays keyed by the cell's "
                            f"parameters ({', '.join(map(repr, st.params))}), got {type(params).__name__}")
        missing = [p for p in st.params if p not in params]
        if missing:
            raise CallError(f"cell {st.name!r}: params lacks {', '.join(map(repr, missing))}")
        xs = named(st, "inputs", x, list(st.inputs))
        missing_inputs(st, xs)
        first = next(iter(xs.values()))
        if len(getattr(first, "shape", ())) != 3:
            raise CallError(f"cell {st.name!r}: inputs must be (T, B, n) arrays, got shape "
                            f"{getattr(first, 'shape', type(first).__name__)}")
        T, B = first.shape[:2]
        ps = tuple(self._checked(f"params[{p!r}]", params[p], s if isinstance(s, tuple) else (s,))
                   for p, s in st.params.items())
        inputs = tuple(self._checked(f"inputs[{n!r}]", xs[n], (T, B, s)) for n, s in st.inputs.items())
        given = named(st, "initial states (h0)", h0, list(st.states))
        states = []
        for s, n in st.states.items():
            if s in given:
                states.append(self._checked(f"h0[{s!r}]", given[s], (B, n)))
            elif st.state_init[s] is not None:  # learned: its gradient flows through the broadcast
                states.append(jnp.broadcast_to(params[st.state_init[s]], (B, n)))
            else:
                states.append(jnp.zeros((B, n), self.model.dtype))
        if lengths is None:
            outs, final = self._core(ps, inputs, tuple(states))
        else:
            if isinstance(lengths, jax.core.Tracer):
                raise CallError(f"cell {st.name!r}: lengths must be static (Python ints or a NumPy array), "
                                "not a traced value: pass them from outside jax.jit, or as a static argument")
            run = padded_runner(st)
            outs, final = run(check_lengths(st, np.asarray(lengths).tolist(), T, B), T, list(inputs), states,
                              lambda xs, hs: self._core(ps, tuple(xs), tuple(hs)), JAX_OPS)
        outs = dict(zip(st.outputs, outs))
        return (outs if self.output is None else outs[self.output]), dict(zip(st.states, final))


JAX_OPS = ArrayOps(
    take=lambda a, rows, axis: jnp.take(a, np.asarray(rows), axis=axis),
    spread=lambda o, rows, B: jnp.zeros((o.shape[0], B, o.shape[2]), o.dtype).at[:, np.asarray(rows)].set(o),
    zeros=lambda like, shape: jnp.zeros(shape, like.dtype),
    cat=jnp.concatenate)


def recurrent(cell, backend: str = "native", dtype: str = "float32", output: str | None = None,
              **options) -> Recurrent:
    """``cell`` compiled for ``backend`` (``"native"``, ``"numpy"`` or ``"ptx"``) and ``dtype``
    (``"float32"`` or ``"float64"``; float64 needs ``jax_enable_x64``), as a JAX function
    ``f(params, x, h0=None) -> (outputs, final)`` (see :class:`Recurrent`); ``output``: the
    output to return (None: a dict of all); ``options``: of :func:`rnncomp.compile`."""
    from .compile import compile as rc_compile

    model = rc_compile(cell, backend=backend, dtype=dtype, **options)
    check_layer_cell(model.step, output, "recurrent")
    return Recurrent(model, output)
