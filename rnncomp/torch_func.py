"""rnncomp's PyTorch layer under ``torch.func`` and vmap: the rules its two ops need there.

``rnncomp.torch`` owns the ops (``rnncomp::recurrent``, ``rnncomp::recurrent_vjp``) and the
eager and ``torch.compile`` path, which this module leaves as it is.  This module owns:

- the vmap rules of both ops (``torch.library.register_vmap``).  The forward folds a vmapped
  axis of the inputs and ``h0`` into the layer's batch axis B (a recurrent layer's rows are
  independent: one native call over V·B rows); where the parameters or a dropout seed are
  vmapped (an ensemble, per-element dropout masks) it calls the op once per element and
  stacks.  The backward always calls once per element: the parameters' gradient is a sum over
  the rows, so V cotangents folded into B would give the sum of the V gradients, not each.
- the same rule for PyTorch's older vmap (``torch.autograd.grad(..., is_grads_batched=True)``,
  ``torch.autograd.functional.jacobian(..., vectorize=True)``), registered at its ``Batched``
  key: there only the backward runs vmapped.
- :func:`call`, the layer's call while a ``torch.func`` transform is active: an
  ``autograd.Function`` with ``setup_context`` (the autograd that ``register_autograd``
  generates has none, and ``torch.func.grad`` refuses such a function) whose forward and
  backward are the two ops.  Under ``grad``, ``vjp`` and ``jacrev`` its forward keeps what the
  backward needs, as the eager call does; a forward under vmap keeps nothing (a kept forward
  of V·B rows is no element's), so each element's backward runs ``model.vjp``, the forward
  again then its backward.  Forward-mode (``jvp``, ``jacfwd``) and
  the gradient of a gradient are not derived: each is an :class:`~rnncomp.errors.CallError`
  naming the cell.

A kept forward's handle finds its forward by the address of its memory: the rules here pass
it on only where every element's primal is the one that forward ran (only cotangents are
vmapped); otherwise each element's backward gets a fresh handle, which finds nothing.
"""
from __future__ import annotations

import torch

from . import torch as layer
from .errors import CallError


def active() -> bool:
    """A ``torch.func`` transform (grad, vjp, vmap, jacrev, ...) is running, outside a
    ``torch.compile`` trace (which runs the op itself)."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def _cell(key: str) -> str:
    return key.partition("#")[0]  # a key is "<cell name>#<fingerprint>.<n>" (layer_common.LayerModels)


def _no_forward_mode(key: str) -> CallError:
    return CallError(f"cell {_cell(key)!r}: forward-mode differentiation (torch.func.jvp, jacfwd, hessian) of an "
                     "rnncomp layer is not derived: rnncomp gives first-order reverse-mode gradients only; use "
                     "torch.func.grad, vjp or jacrev (docs/layers.md)")


def second_order_error(key: str) -> CallError:
    """The gradient of a gradient, in eager autograd (``create_graph=True``) or ``torch.func``."""
    return CallError(f"cell {_cell(key)!r}: the gradient of its gradient (create_graph=True, e.g. a gradient "
                     "penalty, or torch.func.grad of a grad) is not derived: rnncomp layers give first-order "
                     "gradients only")


def no_handle() -> torch.Tensor:
    """A handle that finds no kept forward (a fresh allocation is no live holder's memory)."""
    return torch.zeros(1, dtype=torch.int64)


# ----------------------------------------------------------------------------- the layer's call
def call(key, params, inputs, states, keep, seed):
    """The layer's op under ``torch.func``: (outputs, final states), lists in the cell's order.
    ``keep``: a backward will follow (the vmap rule keeps nothing, whatever it says)."""
    sizes = (len(params), len(inputs), len(states))
    got = _Recurrent.apply(key, sizes, keep, seed, *params, *inputs, *states)
    n_out = len(got) - 1 - len(states)
    return list(got[:n_out]), list(got[n_out:-1])


def _split(tensors, sizes):
    n_p, n_x, n_h = sizes
    return list(tensors[:n_p]), list(tensors[n_p:n_p + n_x]), list(tensors[n_p + n_x:n_p + n_x + n_h])


class _Recurrent(torch.autograd.Function):
    """forward(key, sizes, keep, seed, *params, *inputs, *h0) -> (*outputs, *final states, handle)
    backward(*their cotangents) -> (δparams..., δinputs..., δh0...), through :class:`_Vjp`, from
    the kept forward the handle finds (under ``torch.func.grad``, vjp, jacrev), else ``vjp``."""

    generate_vmap_rule = True  # vmaps forward and backward, reaching the ops' own vmap rules

    @staticmethod
    def forward(key, sizes, keep, seed, *tensors):
        params, xs, h0 = _split(tensors, sizes)
        return tuple(layer.recurrent_op(key, params, xs, h0, keep, seed))

    @staticmethod
    def setup_context(ctx, inputs, output):
        key, sizes, _, seed, *tensors = inputs
        ctx.key, ctx.sizes = key, sizes
        ctx.mark_non_differentiable(output[-1])
        ctx.save_for_backward(output[-1], seed, *tensors)

    @staticmethod
    def backward(ctx, *grads):
        handle, seed, *tensors = ctx.saved_tensors
        return (None, None, None, None, *_Vjp.apply(ctx.key, ctx.sizes, handle, seed, *tensors, *grads[:-1]))

    @staticmethod
    def jvp(ctx, *tangents):
        raise _no_forward_mode(ctx.key)


class _Vjp(torch.autograd.Function):
    """forward(key, sizes, handle, seed, *params, *inputs, *h0, *d_outputs, *d_final) -> (δparams..., δinputs..., δh0...);
    its own backward (a gradient of a gradient) is refused by name."""

    generate_vmap_rule = True

    @staticmethod
    def forward(key, sizes, handle, seed, *tensors):
        params, xs, h0 = _split(tensors, sizes)
        cot = tensors[sum(sizes):]
        n_out = len(cot) - sizes[2]
        got = layer.recurrent_vjp_op(key, handle, params, xs, h0, list(cot[:n_out]), list(cot[n_out:]), seed)
        return tuple(got)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.key = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise second_order_error(ctx.key)

    @staticmethod
    def jvp(ctx, *tangents):
        raise _no_forward_mode(ctx.key)


# ----------------------------------------------------------------------------- vmap rules
def _take(t, dim, i):
    return t if dim is None else t.select(dim, i)


def _logical(t, dim):
    """The shape of an element of ``t``, vmapped along ``dim`` (negative: from the end)."""
    return t.shape if dim is None else t.shape[:dim % t.dim()] + t.shape[dim % t.dim() + 1:]


def _leading(t, dim, at, shape):
    """``t`` with its vmapped axis ``dim`` moved to ``at`` (a shared ``t``: expanded to ``shape``)."""
    return t.movedim(dim, at) if dim is not None else t.unsqueeze(at).expand(shape)


def _stacked(calls):
    """One list of results per element -> each result stacked along a new axis 0."""
    return [torch.stack(col) for col in zip(*calls)]


def _recurrent_vmap(info, in_dims, key, params, inputs, h0, keep, dropout_seed):
    """The forward over V elements: keeps nothing (a kept forward of V·B rows would not be the
    one a vmapped backward's element runs), so its handle finds nothing."""
    _, p_dims, x_dims, h_dims, _, s_dim = in_dims
    V = info.batch_size
    drops = getattr(layer.MODELS.get(key), "has_dropout", False) and (s_dim is not None or int(dropout_seed[0]) >= 0)
    if any(d is not None for d in p_dims) or drops:  # an ensemble, or masks per element: V calls
        calls = [layer.recurrent_op(key, [_take(p, d, i) for p, d in zip(params, p_dims)],
                                    [_take(x, d, i) for x, d in zip(inputs, x_dims)],
                                    [_take(h, d, i) for h, d in zip(h0, h_dims)], False,
                                    _take(dropout_seed, s_dim, i))[:-1] for i in range(V)]
        got = _stacked(calls)
        return got + [no_handle()], [0] * len(got) + [None]
    T, B = _logical(inputs[0], x_dims[0])[:2]
    # the sizes after the move: an axis vmapped last (in_dims=-1) is not the units' axis
    folded_x = [x.reshape(T, V * B, x.shape[-1]) for x in
                (_leading(x, d, 1, (T, V, B, x.shape[-1])) for x, d in zip(inputs, x_dims))]
    folded_h = [h.reshape(V * B, h.shape[-1]) for h in
                (_leading(h, d, 0, (V, B, h.shape[-1])) for h, d in zip(h0, h_dims))]
    got = layer.recurrent_op(key, params, folded_x, folded_h, False, dropout_seed)
    n_out = len(got) - 1 - len(h0)
    outs = [o.reshape(T, V, B, o.shape[-1]) for o in got[:n_out]]
    finals = [s.reshape(V, B, s.shape[-1]) for s in got[n_out:-1]]
    return outs + finals + [no_handle()], [1] * n_out + [0] * len(finals) + [None]


def _vjp_per_element(V, in_dims, key, handle, params, inputs, h0, d_outputs, d_final, dropout_seed):
    """The backward of V elements, one call each, stacked along axis 0.  The handle goes on only
    where no primal and not the handle itself is vmapped: then every element's forward is the
    one it kept (``Kept.backward`` may run any number of times)."""
    _, h_dim, p_dims, x_dims, h0_dims, do_dims, df_dims, s_dim = in_dims
    primal = list(p_dims) + list(x_dims) + list(h0_dims) + [h_dim, s_dim]
    same = all(d is None for d in primal)
    calls = [layer.recurrent_vjp_op(key, handle if same else no_handle(),
                                    [_take(p, d, i) for p, d in zip(params, p_dims)],
                                    [_take(x, d, i) for x, d in zip(inputs, x_dims)],
                                    [_take(h, d, i) for h, d in zip(h0, h0_dims)],
                                    [_take(g, d, i) for g, d in zip(d_outputs, do_dims)],
                                    [_take(g, d, i) for g, d in zip(d_final, df_dims)],
                                    _take(dropout_seed, s_dim, i)) for i in range(V)]
    return _stacked(calls)


def _recurrent_vjp_vmap(info, in_dims, key, handle, params, inputs, h0, d_outputs, d_final, dropout_seed):
    got = _vjp_per_element(info.batch_size, in_dims, key, handle, params, inputs, h0, d_outputs, d_final,
                           dropout_seed)
    return got, [0] * len(got)


if hasattr(layer.recurrent_op, "register_vmap"):  # torch >= 2.5 (the extra allows 2.4: vmap is PyTorch's error there)
    layer.recurrent_op.register_vmap(_recurrent_vmap)
    layer.recurrent_vjp_op.register_vmap(_recurrent_vjp_vmap)


# ----------------------------------------------------------------------------- PyTorch's older vmap
def _legacy_level() -> int:
    """The level of the innermost running legacy vmap (``torch._vmap_internals``, levels from 1):
    the next one it would open, less one."""
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return level - 1


def _legacy_vjp(key, handle, params, inputs, h0, d_outputs, d_final, dropout_seed):
    """``rnncomp::recurrent_vjp`` with legacy batched tensors (``is_grads_batched=True``): the
    batched ones unwrapped at this level (axis 0), one call per element, the results wrapped."""
    level = _legacy_level()
    V = None

    def unwrap(t):
        nonlocal V
        if not torch._C._functorch.is_legacy_batchedtensor(t):
            return t, None
        t = torch._remove_batch_dim(t, level, 0, 0)  # the size (0) is read only for an unbatched tensor
        V = t.shape[0]
        return t, 0

    args = [unwrap(handle), *[[unwrap(t) for t in ts] for ts in (params, inputs, h0, d_outputs, d_final)],
            unwrap(dropout_seed)]
    values = [[a for a, _ in arg] if isinstance(arg, list) else arg[0] for arg in args]
    dims = [[d for _, d in arg] if isinstance(arg, list) else arg[1] for arg in args]
    if V is None:  # nothing batched at this level
        return layer.recurrent_vjp_op(key, *values)
    got = _vjp_per_element(V, [None, *dims], key, *values)
    return [torch._add_batch_dim(g, 0, level) for g in got]


_LEGACY = torch.library.Library("rnncomp", "FRAGMENT")  # owns the registration below as long as this module
_LEGACY.impl("recurrent_vjp", _legacy_vjp, "Batched")
