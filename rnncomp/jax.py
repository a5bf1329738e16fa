"""rnncomp inside JAX: ``recurrent(cell)`` is a function ``f(params, x, h0) -> (outputs, final)``.

It is differentiable (``jax.custom_vjp``: the backward is the compiled model's, docs/vjp.md)
and runs under ``jax.jit``: the forward and the backward are host calls into the compiled
model -- XLA FFI calls on JAX's CPU backend (:mod:`rnncomp.jax_ffi`: the model reads and
writes XLA's buffers in place), ``jax.pure_callback`` elsewhere.  Three strategies for the
backward (``recurrent(..., backward=)``): by default (``"kept"``) the forward of a
differentiated call is ``model.forward(..., keep=True)``, kept on rnncomp's side
(:mod:`rnncomp.jax_kept`) with JAX holding only an integer handle, and the backward runs on
it and recomputes nothing; ``"residuals"`` returns the kept buffers to JAX as the
custom_vjp's residuals (XLA's fresh memory for them every step); ``"recompute"`` runs
``model.vjp``, the forward again then its backward (docs/layers.md says what each costs).
Under ``jax.vmap`` each mapped element is one call of the model, in turn
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

from collections.abc import Mapping

import numpy as np

from .errors import CallError
from .jax_kept import KeptForwards, checked_bound
from .layer_common import ArrayOps, check_layer_cell, check_lengths, missing_inputs, named, padded_runner

#: How the backward gets the forward's values (see :func:`recurrent`).
BACKWARDS = ("kept", "residuals", "recompute")
#: Kept forwards a layer holds for backwards still to come (``backward="kept"``); beyond, the
#: least recently kept is freed and its backward runs the forward again.
MAX_KEPT = 16


class Recurrent:
    """What :func:`recurrent` returns: call it as ``f(params, x, h0=None)``."""

    def __init__(self, model, output, backward: str = "kept", max_kept: int = MAX_KEPT,
                 _ffi: bool | None = None):
        """``backward``, ``max_kept``: see :func:`recurrent`; ``_ffi``: host calls through the
        XLA FFI (default: on JAX's CPU backend) or not."""
        if backward not in BACKWARDS:
            raise CallError(f"recurrent: backward must be one of {', '.join(map(repr, BACKWARDS))}, "
                            f"got {backward!r}")
        self.model, self.output, self.backward = model, output, backward
        self.kept = KeptForwards(max_kept)
        st, dt, kept = model.step, model.dtype, self.kept
        P, X, S, O = tuple(st.params), tuple(st.inputs), tuple(st.states), tuple(st.outputs)

        # forward  (params, inputs, h0)                          -> (outputs (T, B, n), final states (B, n))
        # A differentiated call runs, by ``backward``:
        # fwd      (params, inputs, h0)                          -> (outputs, final states, saved)
        # bwd      (params, inputs, h0, saved, δoutputs, δfinal) -> (δparams, δinputs, δh0)
        #   "kept":      saved = a handle (int32 scalar) of the kept forward in ``self.kept``;
        #                bwd takes it back and runs its backward (model.vjp if it is gone)
        #   "residuals": saved = the kept forward's buffers (``Kept.residuals``, shapes from
        #                ``model.residual_shapes(T, B)``) as JAX arrays; bwd reads them in
        #                place (``model.kept_from``)
        #   "recompute": fwd = forward, saved = (); bwd = model.vjp, the forward again
        # Each host function gets XLA's flat argument and result buffers (``jax_ffi``) and
        # writes the results.  No NaN/inf check inside: a NaN goes through as through any JAX op.
        nP, nX, nS, nO = len(P), len(X), len(S), len(O)
        at = nP + nX + nS  # where ``saved`` starts in a bwd's flat arguments

        def args(flat):
            return (dict(zip(P, flat[:nP])), dict(zip(X, flat[nP:nP + nX])), dict(zip(S, flat[nP + nX:at])))

        def put(rets, arrays):
            for r, a in zip(rets, arrays):
                np.copyto(r, a)

        def put_results(rets, outs, final):
            put(rets, [outs[o] for o in O] + [final[s] for s in S])

        def put_grads(rets, res):
            put(rets, [res.params[p] for p in P] + [res.inputs[x] for x in X] + [res.h0[s] for s in S])

        def cotangents(flat):  # the trailing δoutputs, δfinal
            return dict(d_outputs=dict(zip(O, flat[len(flat) - nO - nS:len(flat) - nS])),
                        d_final=dict(zip(S, flat[len(flat) - nS:])))

        def host_forward(flat, rets):
            put_results(rets, *model.forward(*args(flat), check_finite=False))

        def host_vjp(flat, rets):
            put_grads(rets, model.vjp(*args(flat), **cotangents(flat), check_finite=False))

        def backward_of(k, flat, rets):  # a kept forward's backward, then its buffers go back
            try:
                put_grads(rets, k.backward(**cotangents(flat)))
            finally:
                k.free()

        # An FFI call's arrays are views of XLA's buffers, valid during the call only; a kept
        # forward owns copies of its arguments (``vjp.owned``), so its backward may run wherever
        # XLA put the backward's own arguments (inside lax.scan or vmap they are always elsewhere)
        def host_keep(flat, rets):
            k = model.forward(*args(flat), keep=True, check_finite=False)
            try:
                put_results(rets, k.outputs, k.final)
            except BaseException:
                k.free()
                raise
            rets[-1][...] = kept.put(k)

        def host_taken_vjp(flat, rets):
            k = kept.take(int(flat[at]))
            if k is None:  # evicted, or taken by an earlier backward of the same residual
                host_vjp(flat, rets)
            else:
                backward_of(k, flat, rets)

        def host_export(flat, rets):
            k = model.forward(*args(flat), keep=True, check_finite=False)
            try:
                put(rets, [k.outputs[o] for o in O] + [k.final[s] for s in S] + k.residuals())
            finally:
                k.free()

        def host_adopt_vjp(flat, rets):
            backward_of(model.kept_from(flat[at:len(flat) - nO - nS], *args(flat), check_finite=False),
                        flat, rets)

        handle = jax.ShapeDtypeStruct((), jnp.int32)
        saved_like = {  # the results a fwd adds to the forward's, for inputs (T, B, n)
            "kept": lambda T, B: handle,
            "residuals": lambda T, B: tuple(jax.ShapeDtypeStruct(s, dt) for s in model.residual_shapes(T, B)),
            "recompute": lambda T, B: (),
        }[backward]
        fwd_fn, bwd_fn = {"kept": (host_keep, host_taken_vjp), "residuals": (host_export, host_adopt_vjp),
                          "recompute": (host_forward, host_vjp)}[backward]
        ffi = jax.default_backend() == "cpu" if _ffi is None else _ffi
        call = _host_caller(self, ffi)
        forward, fwd, bwd = (_first_order_only(call(f), st.name) for f in (host_forward, fwd_fn, bwd_fn))

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
            outs, final, saved = fwd((*results(inputs), saved_like(*inputs[0].shape[:2])), params, inputs, h0)
            return (outs, final), (params, inputs, h0, saved)

        def core_bwd(saved, cot):
            params, inputs, h0, extra = saved
            return bwd((like(params), like(inputs), like(h0)), params, inputs, h0, extra, *cot)

        core.defvjp(core_fwd, core_bwd)
        self._core = core

    def __repr__(self):
        st = self.model.step
        return (f"<rnncomp.jax layer of cell {st.name!r} on {self.model.backend}, {self.model.dtype}, "
                f"output={self.output!r}, backward={self.backward!r}>")

    def init_params(self, seed=0) -> dict:
        """The cell's parameters from its initialisers, as JAX arrays of the layer's dtype;
        ``seed``: an int, or a JAX PRNG key (``jax.random.key(0)``, ``jax.random.PRNGKey(0)``),
        from whose bits an int seed is drawn (deterministic in the key)."""
        return {n: jnp.asarray(a) for n, a in self.model.init_params(_seed(seed, self.model.step.name)).items()}

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
        if not isinstance(params, Mapping):   # a dict, or a mapping (flax's FrozenDict)
            raise CallError(f"cell {st.name!r}: params must be a dict of arrays keyed by the cell's "
                            f"parameters ({', '.join(map(repr, st.params))}), got {type(params).__name__}")
        missing, unknown = [p for p in st.params if p not in params], sorted(set(params) - set(st.params), key=str)
        if missing:
            inner = [k for k in unknown if isinstance(params[k], Mapping) and set(st.params) <= set(params[k])]
            has = f"; it has {', '.join(map(repr, unknown))} instead" if unknown else ""
            raise CallError(f"cell {st.name!r}: params lacks {', '.join(map(repr, missing))}{has}"
                            + (f" (the cell's parameters are in params[{inner[0]!r}]: pass that)" if inner else ""))
        if unknown:  # otherwise ignored: jax.grad would give it a zero gradient without a word
            raise CallError(f"cell {st.name!r}: unknown params {', '.join(map(repr, unknown))}; "
                            f"expected {', '.join(map(repr, st.params))}")
        xs = named(st, "inputs", x, list(st.inputs))
        missing_inputs(st, xs)
        first = next(iter(xs.values()))
        if len(getattr(first, "shape", ())) != 3:
            raise CallError(f"cell {st.name!r}: inputs must be (T, B, n) arrays, got shape "
                            f"{getattr(first, 'shape', type(first).__name__)}")
        T, B = first.shape[:2]
        if T == 0 or B == 0:   # checked here: inside the host call it would surface as XLA's internal error
            raise CallError(f"cell {st.name!r}: inputs have T = {T}, B = {B}: an empty sequence or batch has "
                            "nothing to run")
        # as JAX arrays: a NumPy array would be copied to XLA at each host call
        ps = tuple(jnp.asarray(self._checked(f"params[{p!r}]", params[p], s if isinstance(s, tuple) else (s,)))
                   for p, s in st.params.items())
        inputs = tuple(jnp.asarray(self._checked(f"inputs[{n!r}]", xs[n], (T, B, s))) for n, s in st.inputs.items())
        given = named(st, "initial states (h0)", h0, list(st.states))
        states = []
        for s, n in st.states.items():
            if s in given:
                states.append(jnp.asarray(self._checked(f"h0[{s!r}]", given[s], (B, n))))
            elif st.state_init[s] is not None:  # learned: its gradient flows through the broadcast
                states.append(jnp.broadcast_to(params[st.state_init[s]], (B, n)))
            else:
                states.append(jnp.zeros((B, n), self.model.dtype))
        if lengths is None:
            outs, final = self._core(ps, inputs, tuple(states))
        else:
            # a list or tuple passed through jax.jit arrives as a list of tracers
            if any(isinstance(n, jax.core.Tracer) for n in jax.tree_util.tree_leaves(lengths)):
                raise CallError(f"cell {st.name!r}: lengths must be static (Python ints or a NumPy array), "
                                "not a traced value: pass them from outside jax.jit, or as a static argument")
            run = padded_runner(st)
            outs, final = run(check_lengths(st, np.asarray(lengths).tolist(), T, B), T, list(inputs), states,
                              lambda xs, hs: self._core(ps, tuple(xs), tuple(hs)), JAX_OPS)
        outs = dict(zip(st.outputs, outs))
        return (outs if self.output is None else outs[self.output]), dict(zip(st.states, final))


def _seed(seed, name: str):
    """``init_params``'s seed as what the initialisers take (an int, or None: fresh entropy):
    a JAX PRNG key, typed or raw (uint32), becomes an int drawn from its bits; NumPy's own
    error for a key ("SeedSequence expects int ...") did not say what to pass."""
    if isinstance(seed, jax.core.Tracer):
        raise CallError(f"cell {name!r}: init_params runs on the host (NumPy initialisers): call it outside "
                        "jax.jit and other transformations")
    if isinstance(seed, jax.Array) and (jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) or seed.dtype == jnp.uint32):
        bits = jax.random.key_data(seed) if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) else seed
        return int(np.random.SeedSequence(np.asarray(bits).ravel().tolist()).generate_state(1)[0])
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        return seed
    raise CallError(f"cell {name!r}: init_params takes a seed (an int >= 0) or a JAX PRNG key "
                    f"(jax.random.key(0)), got {seed!r}")


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


def _first_order_only(run, name: str):
    """``run`` (a host call) made differentiable by nobody with a named error: a jvp of a host
    call (``jax.grad`` of a ``jax.grad``, ``jax.hessian``, a jvp of a gradient all differentiate
    the custom_vjp's fwd and bwd) would be JAX's "The FFI call to `rnncomp_host_call` cannot be
    differentiated ... use jax.custom_jvp" (found by a probe).  Made once per layer: the shapes
    of the results (the first argument) are static, not differentiated."""
    host = jax.custom_jvp(run, nondiff_argnums=(0,))

    @host.defjvp
    def _(results, primals, tangents):
        raise CallError(f"cell {name!r}: the gradient of its gradient (jax.grad of a jax.grad, jax.hessian, "
                        "a jvp of a gradient) is not derived: rnncomp layers give first-order gradients "
                        "only (docs/layers.md)")
    return host


JAX_OPS = ArrayOps(
    take=lambda a, rows, axis: jnp.take(a, np.asarray(rows), axis=axis),
    spread=lambda o, rows, B: jnp.zeros((o.shape[0], B, o.shape[2]), o.dtype).at[:, np.asarray(rows)].set(o),
    zeros=lambda like, shape: jnp.zeros(shape, like.dtype),
    cat=jnp.concatenate)


def recurrent(cell, backend: str = "native", dtype: str = "float32", output: str | None = None,
              backward: str = "kept", max_kept: int = MAX_KEPT, **options) -> Recurrent:
    """``cell`` compiled for ``backend`` (``"native"``, ``"numpy"`` or ``"ptx"``) and ``dtype``
    (``"float32"`` or ``"float64"``; float64 needs ``jax_enable_x64``), as a JAX function
    ``f(params, x, h0=None) -> (outputs, final)`` (see :class:`Recurrent`); ``output``: the
    output to return (None: a dict of all); ``options``: of :func:`rnncomp.compile`.

    ``backward``: how the backward gets the forward's values; the same gradients each way.

    - ``"kept"`` (default): the forward keeps its buffers on rnncomp's side and gives JAX an
      int32 handle as the custom_vjp's residual; the backward takes the kept forward back by
      it, runs its backward on those (warm) buffers and gives them back for the next
      forward.  At most ``max_kept`` kept forwards wait for their backward (one whose
      backward never comes, as after a ``jax.vjp`` whose vjp function is dropped, stays
      until ``max_kept`` newer ones push it out); a backward whose kept forward is gone
      (pushed out, or taken by an earlier backward of the same residual, as ``jax.jacrev``'s
      rows do) runs ``model.vjp``, the forward again.
    - ``"residuals"``: the kept buffers are copied out to JAX as the custom_vjp's residuals
      and the backward reads them (``model.kept_from``): no forward again, but XLA hands
      out fresh memory for them every step (31 MB for the charlm LSTM, T = 100, B = 32,
      H = 128), which on a CPU costs about what the forward it saves does.
    - ``"recompute"``: the backward runs ``model.vjp``, the forward again then its
      backward; nothing is held between the two calls.

    docs/layers.md, "What it costs", has the measurements."""
    from .compile import compile as rc_compile

    if "residuals" in options:  # the option before backward= (docs/layers.md)
        raise CallError(f"recurrent: residuals= is now backward=: residuals=True is backward='residuals', "
                        f"residuals=False backward='recompute' (the default now: backward='kept'); got "
                        f"residuals={options['residuals']!r}")
    if backward not in BACKWARDS:  # before compiling
        raise CallError(f"recurrent: backward must be one of {', '.join(map(repr, BACKWARDS))}, got {backward!r}")
    checked_bound(max_kept)
    model = rc_compile(cell, backend=backend, dtype=dtype, **options)
    check_layer_cell(model.step, output, "recurrent")
    if getattr(model, "has_dropout", False):
        raise CallError(f"recurrent: {model.step.name!r} has dropout (rc.Stack(..., dropout=p)), and this layer "
                        "takes no random key: its masks would come from rnncomp's own generator, not JAX's "
                        "functional randomness, and a forward made again for the backward would draw others. "
                        "Build the stack without dropout and apply it in JAX between layers (docs/layers.md)")
    return Recurrent(model, output, backward, max_kept)
