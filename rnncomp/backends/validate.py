"""What every backend's call has in common: checking the arrays passed to a compiled
model and its dtype, the step weights of the loss, the initial states and their gradient.

Every problem with a call is reported as a :class:`~rnncomp.errors.CallError` that names
the cell, the argument and the shapes, before any computation (and before any native
code) runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import FLOAT_DTYPES, float_dtype  # noqa: F401 - read from here by the backends
from ..errors import CallError
from ..ir import prune
from ..passes.prepare import keep_set


@dataclass
class Call:
    """Validated, contiguous arrays of one call."""

    T: int
    B: int
    params: dict
    inputs: dict
    targets: dict
    h0: dict
    mask: np.ndarray | None
    d_out: dict | None = None  # a VJP call: the outputs' cotangents {name: (T, B, n)} ...
    d_in: dict | None = None   # ... and the arrays its inputs' cotangents are written into

    def window(self, a: int, b: int, h0) -> "Call":
        """Steps a..b-1 of this call from the states ``h0`` (views of its inputs and targets;
        no mask: a window's step weights come with it)."""
        return Call(b - a, self.B, self.params, {k: v[a:b] for k, v in self.inputs.items()},
                    {k: v[a:b] for k, v in self.targets.items()}, h0, None)


def _as_dict(kind, value, names, cell):
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    if len(names) == 1:
        return {names[0]: value}
    raise CallError(f"cell {cell!r}: {kind} must be a dict of arrays keyed by "
                    f"{', '.join(names) or '(none declared)'}, got {type(value).__name__}")


def is_device(x) -> bool:
    """Whether ``x`` is a device array (``__cuda_array_interface__``; a NumPy array is not, nor a
    PyTorch CPU tensor, whose class has the property but raises on it; a CUDA tensor that requires
    grad raises too, and is one)."""
    if x is None or isinstance(x, (np.ndarray, int, float, list, tuple)):
        return False
    try:
        return getattr(x, "__cuda_array_interface__", None) is not None
    except RuntimeError:  # a PyTorch CUDA tensor that requires grad refuses so: on the device
        return True
    except Exception:  # noqa: BLE001 - a host tensor's property refuses (AttributeError)
        return False


def read_array(where: str, what: str, a) -> np.ndarray:
    """``a`` as an ndarray (nested lists read as one), or a CallError ``where: what ...``."""
    if is_device(a):
        raise CallError(f"{where}: {what} is a device array (__cuda_array_interface__), and this call "
                        "takes host arrays; a PTX model's loss_and_grad, forward and vjp take device arrays "
                        "(docs/gpu.md), a cell with derived weights only host ones")
    if isinstance(a, np.ma.MaskedArray):
        raise CallError(f"{where}: {what} is a masked array; pass plain arrays "
                        "(and mask= for steps to leave out of the loss)")
    if not isinstance(a, np.ndarray):
        if a is None:
            raise CallError(f"{where}: {what} is None; pass an array")
        try:
            a = np.asarray(a)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is the caller's problem
            reason = str(exc).splitlines()[0] if str(exc) else "ragged or not numbers"
            raise CallError(f"{where}: {what} ({type(a).__name__}) cannot be read as an array: "
                            f"{reason}") from None
    return a


def _array(cell, what, a, shape, dtype, check_finite):
    a = read_array(f"cell {cell!r}", what, a)
    if a.dtype != dtype:
        raise CallError(f"cell {cell!r}: {what} has dtype {a.dtype}, but the model was compiled "
                        f"for {dtype}; convert it with .astype({str(dtype)!r})")
    if a.shape != tuple(shape):
        raise CallError(f"cell {cell!r}: {what} has shape {a.shape}, expected {tuple(shape)}")
    if check_finite and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise CallError(f"cell {cell!r}: {what} contains {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return np.ascontiguousarray(a)


def _check_names(cell, kind, given, expected, allow_missing=False):
    extra = sorted(set(given) - set(expected))
    missing = [n for n in expected if n not in given]
    if extra:
        raise CallError(f"cell {cell!r}: unknown {kind} {', '.join(map(repr, extra))}; "
                        f"expected {', '.join(map(repr, expected)) or 'none'}")
    if missing and not allow_missing:
        raise CallError(f"cell {cell!r}: missing {kind} {', '.join(map(repr, missing))}")


def _check_param_names(cell: str, params, declared) -> None:
    """``params`` a dict of every ``declared`` parameter, none other."""
    if not isinstance(params, dict):
        raise CallError(f"cell {cell!r}: params must be a dict of arrays (from cell.init_params)")
    _check_names(cell, "params", params, list(declared))


def check_param_shapes(cell: str, params, declared: dict) -> None:
    """``params`` a dict of every ``declared`` parameter ({name: size or shape}), none other,
    each of its declared shape (of any dtype: a Trainer converts them)."""
    _check_param_names(cell, params, declared)
    for n, s in declared.items():
        want = s if isinstance(s, tuple) else (s,)
        if np.shape(params[n]) != want:
            raise CallError(f"cell {cell!r}: params[{n!r}] has shape {np.shape(params[n])}, expected {want}")


def check_call(step, dtype, params, inputs, targets=None, h0=None, mask=None, *,
               need_targets=False, check_finite=True) -> Call:
    cell, dtype = step.name, np.dtype(dtype)
    _check_param_names(cell, params, step.params)
    inputs = _as_dict("inputs", inputs, list(step.inputs), cell)
    targets = _as_dict("targets", targets, list(step.targets), cell)
    h0 = {n: a for n, a in _as_dict("h0", h0, list(step.states), cell).items() if a is not None}  # None: as left out
    _check_names(cell, "inputs", inputs, list(step.inputs))
    _check_names(cell, "targets", targets, list(step.targets), allow_missing=not need_targets)
    _check_names(cell, "initial states (h0)", h0, list(step.states), allow_missing=True)
    seq = list(inputs.items()) + list(targets.items())
    if not seq:
        raise CallError(f"cell {cell!r}: no inputs or targets, so the sequence length is unknown")
    first_name, first = seq[0]
    try:
        fshape = np.shape(first)
    except ValueError:  # ragged nested lists
        raise CallError(f"cell {cell!r}: inputs[{first_name!r}] is not a rectangular array") from None
    except Exception:  # noqa: BLE001 - something numpy cannot read at all: _array says why
        _array(cell, f"inputs[{first_name!r}]", first, (), dtype, False)
        raise
    if len(fshape) != 3:
        raise CallError(f"cell {cell!r}: inputs[{first_name!r}] must be time-major (T, B, n), "
                        f"got shape {fshape}")
    T, B = fshape[0], fshape[1]
    if T == 0 or B == 0:
        raise CallError(f"cell {cell!r}: empty sequence: T = {T}, B = {B} (from {first_name!r})")
    out_params = {n: _array(cell, f"params[{n!r}]", params[n],
                            s if isinstance(s, tuple) else (s,), dtype, check_finite)
                  for n, s in step.params.items()}
    out_in = {n: _array(cell, f"inputs[{n!r}]", inputs[n], (T, B, s), dtype, check_finite)
              for n, s in step.inputs.items()}
    out_tg = {n: _array(cell, f"targets[{n!r}]", targets[n], (T, B, s), dtype, check_finite)
              for n, s in step.targets.items() if n in targets}
    out_h0 = {n: _array(cell, f"h0[{n!r}]", h0[n], (B, step.states[n]), dtype, check_finite)
              for n in h0}
    m = None if mask is None else check_mask(cell, mask, T, B, dtype)
    return Call(T, B, out_params, out_in, out_tg, out_h0, m)


def forward_targets(step) -> tuple:
    """The targets that the outputs or the state updates read (teacher forcing), in order."""
    got = getattr(step, "_forward_targets", None)
    if got is None:
        nodes = prune(step.prog, keep_set(step, loss=False)).nodes
        got = tuple(n for n in step.targets if (n, "t") in nodes)
        step._forward_targets = got
    return got


def check_forward_call(step, dtype, params, inputs, targets=None, h0=None, *, check_finite=True) -> Call:
    """:func:`check_call` for ``forward``: targets are needed only by a cell whose outputs or
    state updates read them, and then must be given."""
    call = check_call(step, dtype, params, inputs, targets, h0, check_finite=check_finite)
    missing = [n for n in forward_targets(step) if n not in call.targets]
    if missing:
        raise CallError(f"cell {step.name!r}: its outputs or state updates read target "
                        f"{', '.join(map(repr, missing))} (teacher forcing): pass targets= to forward()")
    return call


def check_mask(cell: str, mask, T: int, B: int, dtype) -> np.ndarray:
    """A (T, B) contiguous array of ``dtype`` from a (T, B) or (T,) mask of real numbers or
    booleans, finite, non-negative and not all zero, scaled to a largest weight of 1: the loss is
    a masked mean, so the scale is the caller's to choose, and in float32 a mask of 3e38s summed
    to inf (every step weight 0: a loss of 0, silently) and one of 1e-46s rounded to 0."""
    if isinstance(mask, np.ma.MaskedArray) or np.asarray(mask).dtype.kind not in "biuf":
        raise CallError(f"cell {cell!r}: mask must be a plain array of real numbers or booleans, "
                        f"got {type(mask).__name__} of {np.asarray(mask).dtype}")
    m = np.asarray(mask, dtype=np.float64)  # the caller's values, checked before rounding to dtype
    if m.shape == (T,):
        m = np.repeat(m[:, None], B, axis=1)
    if m.shape != (T, B):
        raise CallError(f"cell {cell!r}: mask has shape {np.shape(mask)}, expected ({T}, {B}) or ({T},)")
    bad = ~np.isfinite(m) | (m < 0)
    if bad.any():
        t, b = (int(i) for i in np.argwhere(bad)[0])
        raise CallError(f"cell {cell!r}: mask must be finite and non-negative; mask[{t}, {b}] = {m[t, b]}")
    top = m.max()
    if top <= 0:
        raise CallError(f"cell {cell!r}: mask selects no step (its sum is 0)")
    return np.ascontiguousarray(m / top if top != 1 else m, dtype=dtype)


def step_weights(call: Call, dtype) -> np.ndarray:
    """w[t, b]: the weight of step t's cost of sample b in the total loss (a masked mean)."""
    if call.mask is None:
        return np.full((call.T, call.B), 1.0 / (call.T * call.B), dtype=dtype)
    return (call.mask / call.mask.sum()).astype(dtype)


def weighted_loss(w: np.ndarray, cost: np.ndarray) -> float:
    """The loss Σ_{t,b} w[t, b]·ℓ[t, b] of the per-step costs ``cost`` (T, B), summed in
    float64 whatever the model's dtype (the NumPy oracle sums step by step, its own way)."""
    return float((w * cost).sum(dtype=np.float64))


def initial_states(step, call: Call, dtype) -> dict:
    out = {}
    for s, n in step.states.items():
        if s in call.h0:
            out[s] = call.h0[s]
        elif step.state_init[s] is not None:
            out[s] = np.ascontiguousarray(np.broadcast_to(call.params[step.state_init[s]], (call.B, n)))
        else:
            out[s] = np.zeros((call.B, n), dtype=dtype)
    return out


def add_initial_state_grads(step, grads: dict, d_h0: dict, h0: dict) -> None:
    """A learned initial state's gradient (``cell.state(..., init="learn")``): the adjoint
    ``d_h0[s]`` carried out of the first step, summed over the batch -- except where the
    caller gave that state in ``h0`` (then the parameter was not read).  ``d_h0[s]`` None:
    no gradient reaches the initial state."""
    for s, p in step.state_init.items():
        if p is not None and s not in h0 and d_h0[s] is not None:
            grads[p] += d_h0[s].sum(axis=0)
