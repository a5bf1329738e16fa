"""What every online gradient algorithm shares: the interface, the step-by-step runner, the
per-sample parameter gradients of a backward step, and the sensitivity memory limit.

An algorithm (:class:`Algorithm`) derives its programs once per cell (``prepare``); the
prepared object carries its state forward in time:

    begin : (params, initial states, which states start from a learned h₀) → carry
    step  : (forward values at t, w[t]; carry) → (∂L/∂θ contribution at t, flat; carry)

so the gradient of a whole sequence is the sum of the contributions, and training online
applies them as they come (:func:`rnncomp.algorithms.online.fit_online`).
"""
from __future__ import annotations

import math

import numpy as np

from ..backends.numpy import run_program
from ..backends.validate import check_call, float_dtype, initial_states, step_weights
from ..errors import ArgumentError, CallError, RnncompError


class SensitivityMemoryError(RnncompError, MemoryError):
    """A carried sensitivity would exceed the algorithm's memory limit (names the sizes)."""


class Algorithm:
    """Base of RTRL, SnAp, UORO: ``prepare(step)`` returns an object with ``begin`` and ``step``."""

    name = "algorithm"

    def prepare(self, step):
        raise TypeError(f"{type(self).__name__} is not an online gradient algorithm")

    def __repr__(self) -> str:
        return f"rc.{self.name}()"


def flat_layout(step) -> dict:
    """``{param: (offset, size, shape)}`` of the flat parameter vector (declaration order)."""
    out, off = {}, 0
    for p, shape in step.params.items():
        size = math.prod(shape) if isinstance(shape, tuple) else int(shape)
        out[p] = (off, size, shape)
        off += size
    return out


def unflatten(step, g) -> dict:
    return {p: np.array(g[o:o + n].reshape(shape)) for p, (o, n, shape) in flat_layout(step).items()}


def per_sample_grads(bwd, env, B, layout, dtype) -> np.ndarray:
    """The backward step's parameter contributions per sample, ``(B, P)`` (the executor of
    :mod:`rnncomp.backends.numpy` sums them over the batch; UORO and SnAp need each sample's)."""
    P = sum(n for _, n, _ in layout.values())
    out = np.zeros((B, P), dtype=dtype)
    for p, specs in bwd.grads.items():
        o, n, shape = layout[p]
        view = out[:, o:o + n].reshape((B,) + (shape if isinstance(shape, tuple) else (shape,)))
        for spec in specs:
            if spec[0] == "batch":
                view += np.broadcast_to(env[spec[1]], view.shape)
            else:
                _, g, v, c, tr = spec
                m = np.einsum("bi,bj->bij", np.broadcast_to(env[g], (B, env[g].shape[-1])),
                              np.broadcast_to(env[v], (B, env[v].shape[-1])))
                view += (m.transpose(0, 2, 1) if tr else m) * float(c)
    return out


def check_memory(what: str, cell: str, shape: tuple, itemsize: int, limit: int | None) -> None:
    """Raise :class:`SensitivityMemoryError` when an array of ``shape`` is over ``limit`` bytes."""
    need = int(np.prod(shape)) * itemsize
    if limit is not None and need > limit:
        over_limit(cell, f"{what} needs {' × '.join(str(d) for d in shape)} values = {need / 2**20:.1f} MiB", limit)


def over_limit(cell: str, needs: str, limit: int):
    """The :class:`SensitivityMemoryError` of ``needs`` (what needs how much) over ``limit`` bytes."""
    raise SensitivityMemoryError(f"cell {cell!r}: {needs}, over the limit of {limit / 2**20:.1f} MiB (max_bytes); "
                                 "use rc.SnAp(1) or rc.UORO(), a smaller batch, or raise max_bytes")


def initial_learned(step, h0) -> set:
    """States that start from their learned initial value (h₀ a parameter, not given)."""
    return {s for s, p in step.state_init.items() if p is not None and s not in h0}


def sequence_grad(algorithm: Algorithm, cell, params, inputs, targets, h0=None, mask=None, dtype="float64",
                  prepared=None, backend="numpy"):
    """The loss and gradient of a whole sequence, accumulated forward in time by ``algorithm``
    (the loss is the masked mean of the per-step costs, as ``model.loss_and_grad``), on the
    NumPy executor or, ``backend="native"``, compiled (:mod:`.compiled`; RTRL and dense SnAp).

    Returns ``(loss, {param: gradient}, final states)``.  A cell with derived weights or
    constants (``cell.weight``, ``cell.const``): the algorithm runs on the plain cell whose
    parameters they are, and their gradients are chained back to the declared parameters."""
    if not isinstance(algorithm, Algorithm):
        raise ArgumentError(f"sequence_grad: algorithm must be rc.RTRL(), rc.SnAp(n) or rc.UORO(), got {algorithm!r}")
    float_dtype(dtype, "sequence_grad: dtype")
    if not hasattr(getattr(cell, "step", None), "prog"):
        raise CallError(f"{algorithm!r} derives its recursion from one cell's step; {getattr(cell, 'name', cell)!r} "
                        f"is a composition ({type(cell).__name__})")
    if has_derived_weights(cell):
        from ..backends.validate import _array, _check_names
        from ..weights import DerivedWeights
        dw, dt = DerivedWeights(cell), np.dtype(dtype)
        if not isinstance(params, dict):
            raise CallError(f"cell {cell.name!r}: params must be a dict of arrays (from cell.init_params)")
        _check_names(cell.name, "params", params, list(dw.params))
        checked = {n: _array(cell.name, f"param {n!r}", params[n], s if isinstance(s, tuple) else (s,), dt, True)
                   for n, s in dw.params.items()}
        loss, g, final = sequence_grad(algorithm, dw.plain, dw.expand(checked, dt), inputs, targets, h0, mask,
                                       dtype, prepared, backend)
        return loss, dw.pullback(checked, g, dt), final
    st, dt = cell.step, np.dtype(dtype)
    if not st.has_loss:
        raise CallError(f"cell {st.name!r} has no loss (declare one with cell.loss)")
    call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True)
    w = step_weights(call, dt)
    if prepared is None:
        from .compiled import prepare
        prepared = prepare(algorithm, st, backend, dt)
    states = initial_states(st, call, dt)
    carry = prepared.begin(call.params, states, initial_learned(st, call.h0), call.B, dt)
    loss, g, states, _ = run_window(prepared, st, call.params, states, {**call.inputs, **call.targets},
                                    0, call.T, w, carry)
    return loss, unflatten(st, g), {s: np.array(v) for s, v in states.items()}


def run_window(prep, step, params, states, seqs, lo, hi, w, carry):
    """Steps lo … hi-1 of the sequences ``seqs`` (weights ``w``, (hi-lo, B)) from ``states``:
    ``(loss, flat ∂L/∂θ of these steps, states after, carry)``; natively where ``prep`` has
    a ``window`` (:mod:`.compiled`), else one NumPy step at a time."""
    if hasattr(prep, "window"):
        return prep.window(params, states, seqs, lo, hi, w, carry)
    B, dt = w.shape[1], w.dtype
    g = np.zeros(sum(n for _, n, _ in flat_layout(step).values()), dtype=dt)
    loss = 0.0
    for t in range(lo, hi):
        env = step_env(step, params, states, seqs, t)
        run_program(step.prog, env, B, dt)
        loss += float((w[t - lo] * env[step.loss_key][:, 0]).sum())
        gt, carry = prep.step(env, w[t - lo], carry)
        g += gt
        states = {s: env[(s, "t")] for s in step.states}
    return loss, g, states, carry


def has_derived_weights(cell) -> bool:
    """Whether ``cell`` declares derived weights or constants (``rnncomp.weights``)."""
    return any(d.kind in ("const", "weight") for d in getattr(cell, "decls", {}).values())


def step_env(step, params, states, seqs, t) -> dict:
    """The leaves of step t: parameters, h[t-1], inputs and targets at t."""
    env = {(p, None): v for p, v in params.items()}
    for s in step.states:
        env[(s, "t-1")] = states[s]
    for n, a in seqs.items():
        env[(n, "t")] = a[t]
    return env
