"""rnncomp inside JAX: ``recurrent(cell)`` is a function ``f(params, x, h0) -> (outputs, final)``.

It is differentiable (``jax.custom_vjp``: the backward is the compiled model's, docs/vjp.md)
and runs under ``jax.jit``: the forward and the backward are host calls into the compiled
model -- XLA FFI calls on JAX's CPU backend (:mod:`rnncomp.jax_ffi`: the model reads and
writes XLA's buffers in place), ``jax.pure_callback`` elsewhere.  Two strategies for the
backward (``recurrent(..., residuals=)``): by default it runs ``model.vjp``, the forward
again and then its backward; with ``residuals=True`` the forward of a differentiated call
is ``model.forward(..., keep=True)``, its kept buffers (``Kept.residuals``) come back as
JAX arrays, the custom_vjp's residuals, and the backward runs on them (``model.kept_from``)
without running the forward again -- at the price of XLA's fresh memory for them each step
(docs/layers.md says when each pays).  Under ``jax.vmap`` each mapped element is one call
of the model, in turn (``vmap_method="sequential"``): correct, not fast; batch along the
layer's B axis instead.
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

    def __init__(self, model, output, residuals: bool = False, _ffi: bool | None = None):
        """``residuals``: see :func:`recurrent`; ``_ffi``: host calls through the XLA FFI
        (default: on JAX's CPU backend) or not."""
        self.model, self.output, self.residuals = model, output, bool(residuals)
        st, dt = model.step, model.dtype
        P, X, S, O = tuple(st.params), tuple(st.inputs), tuple(st.states), tuple(st.outputs)

        # forward  (params, inputs, h0)                      -> (outputs (T, B, n), final states (B, n))
        # backward (params, inputs, h0, δoutputs, δfinal)    -> (δparams, δinputs, δh0): model.vjp,
        #          the forward again, then its backward (the default)
        # With residuals=True:
        # kept     (params, inputs, h0)                      -> (outputs, final states, residuals)
        # backward (params, inputs, h0, residuals, δoutputs, δfinal) -> (δparams, δinputs, δh0)
        # The residuals are the kept forward's buffers (``Kept.residuals``, shapes from
        # ``model.residual_shapes(T, B)``), JAX arrays between the two calls: the backward
        # reads them in place (``model.kept_from``) and recomputes nothing.  Each host function
        # gets XLA's flat argument and result buffers (``jax_ffi``) and writes the results.
        # No NaN/inf check inside: a NaN goes through as it does through any JAX op.
        nP, nX, nS, nO = len(P), len(X), len(S), len(O)

        def args(flat):
            return (dict(zip(P, flat[:nP])), dict(zip(X, flat[nP:nP + nX])),
                    dict(zip(S, flat[nP + nX:nP + nX + nS])))

        def put(rets, arrays):
            for r, a in zip(rets, arrays):
                np.copyto(r, a)

        def put_grads(rets, res):
            put(rets, [res.params[p] for p in P] + [res.inputs[x] for x in X] + [res.h0[s] for s in S])

        def cotangents(flat):  # the trailing δoutputs, δfinal
            return dict(d_outputs=dict(zip(O, flat[len(flat) - nO - nS:len(flat) - nS])),
                        d_final=dict(zip(S, flat[len(flat) - nS:])))

        def host_forward(flat, rets):
            outs, final = model.forward(*args(flat), check_finite=False)
            put(rets, [outs[o] for o in O] + [final[s] for s in S])

        def host_vjp(flat, rets):
            put_grads(rets, model.vjp(*args(flat), **cotangents(flat), check_finite=False))

        def host_kept(flat, rets):
            kept = model.forward(*args(flat), keep=True, check_finite=False)
            try:
                put(rets, [kept.outputs[o] for o in O] + [kept.final[s] for s in S] + kept.residuals())
            finally:
                kept.free()

        def host_kept_vjp(flat, rets):
            at = nP + nX + nS
            kept = model.kept_from(flat[at:len(flat) - nO - nS], *args(flat), check_finite=False)
            try:
                put_grads(rets, kept.backward(**cotangents(flat)))
            finally:
                kept.free()

        call = _host_caller(self, jax.default_backend() == "cpu" if _ffi is None else _ffi)
        forward = call(host_forward)
        kept_forward, backward = (call(host_kept), call(host_kept_vjp)) if self.residuals else (None, call(host_vjp))

        def like(arrays):
            return tuple(jax.ShapeDtypeStruct(a.shape, dt) for a in arrays)

        def results(inputs):
            T, B = inputs[0].shape[:2]
            return (tuple(jax.ShapeDtypeStruct((T, B, n), dt) for n in st.outputs.values()),
                    tuple(jax.ShapeDtypeStruct((B, n), dt) for n in st.states.values()))

        @jax.custom_vjp
        def core(params, inputs, h0):
            return forward(results(inputs), params, inputs, h0)

        def core_fwd(params, inputs, h0):
            if not self.residuals:
                return forward(results(inputs), params, inputs, h0), (params, inputs, h0, ())
            T, B = inputs[0].shape[:2]
            kept = tuple(jax.ShapeDtypeStruct(s, dt) for s in model.residual_shapes(T, B))
            outs, final, residuals = kept_forward((*results(inputs), kept), params, inputs, h0)
            return (outs, final), (params, inputs, h0, residuals)

        def core_bwd(saved, cot):
            params, inputs, h0, residuals = saved
            return backward((like(params), like(inputs), like(h0)), params, inputs, h0, residuals, *cot)

        core.defvjp(core_fwd, core_bwd)
        self._core = core

    def __repr__(self):
        st = self.model.step
        return (f"<rnncomp.jax layer of cell {st.name!r} on {self.model.backend}, {self.model.dtype}, "
                f"output={self.output!r}, residuals={self.residuals}>")

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


def _host_caller(owner, ffi: bool):
    """``call(fn)``: a function ``(results, *args) -> results`` that runs ``fn(flat args,
    flat results)`` on the host: through the XLA FFI (``jax_ffi``: the arrays are XLA's
    buffers; JAX's CPU backend only), or through ``jax.pure_callback`` (copies to the host
    and back)."""
    if ffi:
        from . import jax_ffi

        def call(fn):
            key = jax_ffi.FUNCTIONS.add(owner, fn)
            return lambda results, *args: jax_ffi.host_call(key, results, *args)
        return call

    def call(fn):
        def run(results, *args):
            def host(*a):
                rets = [np.empty(r.shape, r.dtype) for r in jax.tree_util.tree_leaves(results)]
                fn(jax.tree_util.tree_leaves(a), rets)
                return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(results), rets)
            return jax.pure_callback(host, results, *args, vmap_method="sequential")
        return run
    return call


JAX_OPS = ArrayOps(
    take=lambda a, rows, axis: jnp.take(a, np.asarray(rows), axis=axis),
    spread=lambda o, rows, B: jnp.zeros((o.shape[0], B, o.shape[2]), o.dtype).at[:, np.asarray(rows)].set(o),
    zeros=lambda like, shape: jnp.zeros(shape, like.dtype),
    cat=jnp.concatenate)


def recurrent(cell, backend: str = "native", dtype: str = "float32", output: str | None = None,
              residuals: bool = False, **options) -> Recurrent:
    """``cell`` compiled for ``backend`` (``"native"``, ``"numpy"`` or ``"ptx"``) and ``dtype``
    (``"float32"`` or ``"float64"``; float64 needs ``jax_enable_x64``), as a JAX function
    ``f(params, x, h0=None) -> (outputs, final)`` (see :class:`Recurrent`); ``output``: the
    output to return (None: a dict of all); ``options``: of :func:`rnncomp.compile`.

    ``residuals``: how the backward gets the forward's values.  False (default): it runs
    ``model.vjp``, the forward again then its backward; nothing is kept between the two
    calls.  True: the forward keeps its buffers and returns them to JAX as the custom_vjp's
    residuals, and the backward reads them (``model.kept_from``): no forward again, but XLA
    hands out fresh memory for them every step (31 MB for the charlm LSTM, T = 100, B = 32,
    H = 128), which on a CPU costs about what the forward it saves does (docs/layers.md).
    Same gradients either way."""
    from .compile import compile as rc_compile

    if not isinstance(residuals, bool):
        raise CallError(f"recurrent: residuals must be True or False, got {residuals!r}")
    model = rc_compile(cell, backend=backend, dtype=dtype, **options)
    check_layer_cell(model.step, output, "recurrent")
    return Recurrent(model, output, residuals)
