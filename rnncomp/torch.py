"""rnncomp inside PyTorch: a compiled cell as an ``nn.Module`` (:class:`Recurrent`).

The layer's parameters are the cell's, as ``nn.Parameter`` s of the same names; its call
is one PyTorch op, ``rnncomp::recurrent`` (``torch.library.custom_op``, with a fake
implementation and an autograd formula), so ``torch.compile(fullgraph=True)`` traces
through it without a graph break.  Its backward is a second op, ``rnncomp::recurrent_vjp``.
When a backward will follow, the forward keeps what it needs (``model.forward(...,
keep=True)``, docs/vjp.md) and returns a *handle*, a small tensor whose memory holds the
kept forward alive: autograd saves it like any tensor, the backward finds the kept forward
through it and recomputes nothing, and the kept buffers go when autograd drops it.  A
handle that finds nothing (a copy) makes the backward run ``model.vjp`` (the forward again,
then its backward): the same numbers.

CPU tensors go to the model as NumPy views (``Tensor.numpy()``, no copy when contiguous)
and its results come back as tensors over the model's fresh arrays (``torch.from_numpy``).
CUDA tensors with ``backend="ptx"`` go to the model's device-resident entry points and come
back as CUDA tensors over its results' device memory (:mod:`rnncomp.torch_device`); a tensor
on a device the backend does not run on is a :class:`~rnncomp.errors.CallError` naming the
tensor and its device.  Under ``torch.func``
transforms (grad, vjp, jacrev, vmap) the call goes through :mod:`rnncomp.torch_func`, which
also owns the ops' vmap rules.  See docs/layers.md.

    >>> import torch, rnncomp as rc
    >>> from rnncomp.torch import Recurrent
    >>> layer = Recurrent(rc.cells.elman(3, 5, 2), output="y")          # float32
    >>> y, final = layer(torch.ones(4, 2, 3))
    >>> tuple(y.shape), tuple(final["h"].shape)
    ((4, 2, 2), (2, 5))
"""
from __future__ import annotations

import weakref

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch installed
    raise ImportError("rnncomp.torch needs PyTorch: pip install 'rnncomp[torch]'") from e

import numpy as np

from .errors import CallError, CellError
from .layer_common import ArrayOps, LayerModels, check_layer_cell, check_lengths, missing_inputs, named, padded_runner

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _attr(name: str) -> str:
    """A parameter's name as a module attribute: a composition's ``l0.Wz`` is ``l0__Wz``
    (PyTorch reserves '.' for submodules)."""
    return name.replace(".", "__")


MODELS = LayerModels()  # the compiled models of this process's layers, by the key their ops take


def _host(model, what: str, t):
    """``t`` as a NumPy array sharing its memory (a copy only where it is not contiguous)."""
    if t.device.type != "cpu":
        raise torch_device.where_error(model, what, t)
    return t.detach().numpy()


def _tensor(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------- kept forwards
class _Handle(bytearray):
    """The memory of a forward's handle tensor, holding the kept forward (``Kept``) alive
    exactly as long as that tensor's storage: what autograd saves for the backward."""


class _KeptForwards:
    """Kept forwards by the address of their handle's memory.  A handle found here whose
    holder is alive is that holder's memory (a live holder's memory is not reused), so a copy
    of a handle, or one whose forward is gone, finds nothing, and the backward runs ``vjp``."""

    def __init__(self):
        self._by_address: dict[int, weakref.ref] = {}

    def handle(self, kept, model):
        holder = _Handle(8)
        holder.kept, holder.model = kept, model  # the model: its backward needs no live layer
        t = torch.from_numpy(np.frombuffer(holder, dtype=np.int64))  # its storage keeps holder
        address = t.data_ptr()
        self._by_address[address] = weakref.ref(holder, lambda ref: self._forget(address, ref))
        return t

    def _forget(self, address, ref):
        if self._by_address.get(address) is ref:
            del self._by_address[address]

    def find(self, handle):
        """(kept forward, its model), or (None, None)."""
        ref = self._by_address.get(handle.data_ptr()) if handle.numel() == 1 else None
        holder = ref() if ref is not None else None
        return (None, None) if holder is None else (holder.kept, holder.model)


KEPT = _KeptForwards()


# ----------------------------------------------------------------------------- the ops
# recurrent(key, params, inputs, h0, keep, dropout_seed) -> outputs (T, B, n) in the cell's order,
#     final states, a handle (int64 (1,): a kept forward where keep, else nothing to find)
# recurrent_vjp(key, handle, params, inputs, h0, d_outputs, d_final, dropout_seed) -> δparams, δinputs, δh0
#     (from the kept forward the handle finds, else one vjp: the forward again, then its backward)
def _call_args(model, params, inputs, h0):
    st = model.step
    return ({n: _host(model, f"parameter {n!r}", t) for n, t in zip(st.params, params)},
            {n: _host(model, f"input {n!r}", t) for n, t in zip(st.inputs, inputs)},
            {n: _host(model, f"h0[{n!r}]", t) for n, t in zip(st.states, h0)})


def _options(model, seed: torch.Tensor) -> dict:
    """A call's keyword arguments.  ``check_finite=False``: a NaN or inf (an argument's, a
    cotangent's) flows through as through any torch op, for PyTorch's tools to see (GradScaler
    skips the step).  Dropout (``rc.Stack(..., dropout=p)``): ``seed`` (an int64 tensor (1,), not
    an int: torch.compile would specialise on each value) ≥ 0, this call's masks (the same seed
    draws the same masks, so a forward made again -- the backward's ``vjp``,
    ``torch.utils.checkpoint`` -- drops the same units); -1, none (evaluation)."""
    s = int(seed[0]) if getattr(model, "has_dropout", False) else None
    drop = {} if s is None else {"training": True, "dropout_seed": s} if s >= 0 else {"training": False}
    return {"check_finite": False, **drop}


@torch.library.custom_op("rnncomp::recurrent", mutates_args=())
def recurrent_op(key: str, params: list[torch.Tensor], inputs: list[torch.Tensor],
                 h0: list[torch.Tensor], keep: bool, dropout_seed: torch.Tensor) -> list[torch.Tensor]:
    model = MODELS.get(key)
    if torch_device.resident(model, inputs):
        outs, final = torch_device.forward(model, params, inputs, h0)   # keeps nothing: the backward runs vjp
        return outs + final + [torch.zeros(1, dtype=torch.int64, device=inputs[0].device)]
    opts = _options(model, dropout_seed)
    if keep:
        kept = model.forward(*_call_args(model, params, inputs, h0), keep=True, **opts)
        outs, final, handle = kept.outputs, kept.final, KEPT.handle(kept, model)
    else:
        (outs, final), handle = model.forward(*_call_args(model, params, inputs, h0), **opts), \
            torch.zeros(1, dtype=torch.int64)
    return ([_tensor(outs[o]) for o in model.step.outputs] + [_tensor(final[s]) for s in model.step.states]
            + [handle])


@recurrent_op.register_fake
def _(key, params, inputs, h0, keep, dropout_seed):
    st = MODELS.get(key).step
    T, B = inputs[0].shape[0], inputs[0].shape[1]
    like = inputs[0]
    return ([like.new_empty((T, B, n)) for n in st.outputs.values()]
            + [like.new_empty((B, n)) for n in st.states.values()] + [like.new_empty(1, dtype=torch.int64)])


@torch.library.custom_op("rnncomp::recurrent_vjp", mutates_args=())
def recurrent_vjp_op(key: str, handle: torch.Tensor, params: list[torch.Tensor], inputs: list[torch.Tensor],
                     h0: list[torch.Tensor], d_outputs: list[torch.Tensor],
                     d_final: list[torch.Tensor], dropout_seed: torch.Tensor) -> list[torch.Tensor]:
    kept, model = KEPT.find(handle)  # a kept forward holds its model: the layer may be gone
    model = model or MODELS.get(key)
    st = model.step
    if kept is None and torch_device.resident(model, inputs):
        d_p, d_x, d_h = torch_device.vjp(model, params, inputs, h0, d_outputs, d_final)
        return d_p + d_x + d_h
    d_out = {o: _host(model, f"the cotangent of output {o!r}", g) for o, g in zip(st.outputs, d_outputs)}
    d_fin = {s: _host(model, f"the cotangent of state {s!r}", g) for s, g in zip(st.states, d_final)}
    if kept is not None:
        res = kept.backward(d_outputs=d_out, d_final=d_fin)
    else:
        res = model.vjp(*_call_args(model, params, inputs, h0), d_outputs=d_out, d_final=d_fin,
                        **_options(model, dropout_seed))   # the forward's masks again
    # δh0, the backward's carried cotangent, copied (B × n): no backend promises it is not a buffer it reuses
    return ([_tensor(res.params[n]) for n in st.params] + [_tensor(res.inputs[n]) for n in st.inputs]
            + [torch.from_numpy(np.array(res.h0[s])) for s in st.states])


@recurrent_vjp_op.register_fake
def _(key, handle, params, inputs, h0, d_outputs, d_final, dropout_seed):
    return [t.new_empty(t.shape) for t in list(params) + list(inputs) + list(h0)]


def _setup_context(ctx, inputs, output):
    key, params, xs, h0, _, seed = inputs
    ctx.key, ctx.sizes = key, (len(params), len(xs))
    ctx.save_for_backward(output[-1], seed, *params, *xs, *h0)


def _backward(ctx, grads):
    n_p, n_x = ctx.sizes
    handle, seed, *saved = ctx.saved_tensors
    params, xs, h0 = saved[:n_p], saved[n_p:n_p + n_x], saved[n_p + n_x:]
    n_out = len(grads) - 1 - len(h0)
    got = recurrent_vjp_op(ctx.key, handle, params, xs, h0, list(grads[:n_out]), list(grads[n_out:-1]), seed)
    return None, got[:n_p], got[n_p:n_p + n_x], got[n_p + n_x:], None, None


recurrent_op.register_autograd(_backward, setup_context=_setup_context)


def _no_second_order(ctx, inputs, output):
    ctx.key = inputs[0]


def _second_order(ctx, grads):
    raise torch_func.second_order_error(ctx.key)


recurrent_vjp_op.register_autograd(_second_order, setup_context=_no_second_order)


# ----------------------------------------------------------------------------- the layer
class Recurrent(nn.Module):
    """A compiled rnncomp cell as a PyTorch layer.

    ``cell``: any :class:`rnncomp.Cell`; ``output``: the name of the output to return per
    step (None: a dict of every output); ``backend``: ``"native"`` (default), ``"numpy"``
    or ``"ptx"``; ``dtype``: ``torch.float32`` (default) or ``torch.float64`` (``.double()``
    and ``.float()`` convert the layer, compiling the cell for the new dtype);
    ``batch_first``: inputs and outputs are (B, T, n) instead of (T, B, n);
    ``return_final``: with False, ``forward`` returns only the outputs (for
    ``nn.Sequential``); ``seed``: of the cell's initialisers; ``options``: of
    :func:`rnncomp.compile` for the backend.

    The cell's parameters are this module's parameters, of the same names (a composition's
    ``l0.Wz``, ``rc.Stack``/``rc.Bidirectional``, is ``l0__Wz``)."""

    def __init__(self, cell, output: str | None = None, backend: str = "native", dtype=torch.float32,
                 batch_first: bool = False, return_final: bool = True, seed: int = 0, **options):
        super().__init__()
        from .compile import compile as rc_compile

        if dtype not in _DTYPES:
            raise ValueError(f"Recurrent: dtype must be torch.float32 or torch.float64, got {dtype!r}"
                             + (f" (a string: pass torch.{dtype})" if isinstance(dtype, str) else ""))
        model = rc_compile(cell, backend=backend, dtype=_DTYPES[dtype], **options)
        st = model.step
        check_layer_cell(st, output, "Recurrent")
        self._model, self._dtype = model, dtype
        self.output, self.batch_first, self.return_final = output, batch_first, return_final
        for name, a in model.init_params(seed).items():
            if hasattr(self, _attr(name)):
                raise CellError(f"cell {st.name!r}: parameter {name!r} has the name of an attribute of "
                                "nn.Module; rename it in the cell to use it as a PyTorch layer")
            self.register_parameter(_attr(name), nn.Parameter(torch.from_numpy(a)))
        self._register()

    def _register(self):
        self._key = MODELS.add(self, self._model)
        self._by_dtype = {self._dtype: (self._model, self._key)}  # the models of the dtypes it had

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_by_dtype", None)  # a copy compiles only the model of its own dtype
        return state

    def __setstate__(self, state):  # a copy or an unpickled layer: its own key
        super().__setstate__(state)
        self._register()

    def _apply(self, fn, *args, **kwargs):  # .double(), .float(), .to(dtype), ...: eagerly, not in a traced call
        module = super()._apply(fn, *args, **kwargs)
        try:  # what fn makes of a tensor of the layer's dtype (a layer may have no parameters)
            dtype = fn(torch.empty(0, dtype=self._dtype)).dtype
        except Exception:  # noqa: BLE001 - not a conversion a CPU tensor takes (.cuda() without CUDA)
            dtype = None
        self._follow_dtype(dtype)
        return module

    def _follow_dtype(self, dtype=None):
        """A layer converted with ``.double()``, ``.float()`` or ``.to(dtype)`` runs a model of
        its parameters' dtype (``dtype``: of a conversion, for a layer with no parameters):
        compiled again from the same cell and options on first use (from the compile cache
        after that), kept for the next conversion back."""
        dtypes = {getattr(self, _attr(p)).dtype for p in self._model.step.params} or {dtype}
        if len(dtypes) != 1 or (dtype := dtypes.pop()) == self._dtype or dtype not in _DTYPES:
            return
        if dtype not in self._by_dtype:
            again, (cell, backend, _, options) = self._model.__reduce__()  # how pickling compiles it again
            model = again(cell, backend, _DTYPES[dtype], options)
            self._by_dtype[dtype] = (model, MODELS.add(self, model))
        self._dtype = dtype
        self._model, self._key = self._by_dtype[dtype]

    def __prepare_scriptable__(self):  # torch.jit.script calls it on every submodule before compiling
        raise CallError(f"cell {self._model.step.name!r}: torch.jit.script cannot compile an rnncomp layer (its "
                        "forward is Python calling a compiled model); use torch.compile, or torch.jit.trace")

    def extra_repr(self) -> str:
        st = self._model.step
        sizes = ", ".join(f"{n}[{s}]" for n, s in list(st.inputs.items()) + list(st.states.items()))
        return (f"cell={st.name!r} ({sizes}), output={self.output!r}, backend={self._model.backend!r}, "
                f"dtype={self._dtype}, batch_first={self.batch_first}")

    def _checked(self, what, t, shape, device):  # t, under autocast cast up to the layer's dtype
        name = self._model.step.name
        if not isinstance(t, torch.Tensor):
            raise CallError(f"cell {name!r}: {what} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(t.device.type):
            t = t.to(self._dtype)  # autocast's lower precision (a Linear's before it): up, as its float32 ops do
        if t.dtype != self._dtype:
            only = "" if t.dtype in _DTYPES else " (rnncomp compiles float32 and float64 code only)"
            raise CallError(f"cell {name!r}: {what} has dtype {t.dtype}, but the layer is {self._dtype}{only}; "
                            f"convert it with .to({self._dtype})")
        if tuple(t.shape) != shape:
            raise CallError(f"cell {name!r}: {what} has shape {tuple(t.shape)}, expected {shape}")
        return torch_device.placed(self._model, what, t, device)

    def forward(self, x, h0=None, lengths=None):
        """``x``: a tensor (T, B, n) (``batch_first``: (B, T, n)) for a cell with one input, or
        a dict {input: tensor}; ``h0``: a tensor (one state) or a dict {state: (B, n)}, any
        subset (the others start from the learned initial state or zeros); ``lengths``: for a
        padded batch, each sequence's length (B ints from 1 to T; a list or a CPU tensor).

        Returns ``(outputs, final)``: ``outputs`` the tensor of ``output`` (or a dict of every
        output) per step, ``final`` {state: (B, n)}; only ``outputs`` with ``return_final=False``.
        With ``lengths``, a sequence's final states are those after its last step and its
        outputs after it are zeros."""
        self._follow_dtype()
        st = self._model.step
        params = [getattr(self, _attr(p)) for p in st.params]
        for p, t in zip(st.params, params):
            if t.dtype not in _DTYPES:  # .half(), .bfloat16(): named before the inputs (of the same dtype then)
                back = ".float()" if self._dtype == torch.float32 else ".double()"
                raise CallError(f"cell {st.name!r}: parameter {p!r} is {t.dtype}, and rnncomp compiles cells for "
                                f"torch.float32 and torch.float64 only: convert the layer back with {back} "
                                f"(the rest of the model may stay {t.dtype}; give the layer {self._dtype} inputs)")
            if t.dtype != self._dtype:
                raise CallError(f"cell {st.name!r}: parameter {p!r} is {t.dtype} but the layer runs in "
                                f"{self._dtype} (its parameters must all be torch.float32 or all torch.float64)")
        xs = named(st, "inputs", x, list(st.inputs), "tensors")
        missing_inputs(st, xs)
        first = next(iter(xs.values()))
        if not isinstance(first, torch.Tensor) or first.dim() != 3:
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            how = "; pass the padded tensor and lengths= (pad_packed_sequence)" if shape == "PackedSequence" else ""
            raise CallError(f"cell {st.name!r}: inputs must be 3-d tensors "
                            f"{'(B, T, n)' if self.batch_first else '(T, B, n)'}, got {shape}{how}")
        T, B = (first.shape[1], first.shape[0]) if self.batch_first else (first.shape[0], first.shape[1])
        inputs = []
        for n, size in st.inputs.items():
            t = self._checked(f"input {n!r}", xs[n], (B, T, size) if self.batch_first else (T, B, size),
                              first.device)
            inputs.append(t.transpose(0, 1).contiguous() if self.batch_first else t)
        for p, t in zip(st.params, params):   # on the inputs' device (checked first: named by the input)
            torch_device.placed(self._model, f"parameter {p!r}", t, first.device)
        given = named(st, "initial states (h0)", h0, list(st.states), "tensors")
        states = []
        for s, size in st.states.items():
            if s in given:
                states.append(self._checked(f"h0[{s!r}]", given[s], (B, size), first.device))
            elif st.state_init[s] is not None:  # learned: its gradient flows through expand
                states.append(getattr(self, _attr(st.state_init[s])).expand(B, size))
            else:
                states.append(inputs[0].new_zeros((B, size)))
        outs, final = (self._run(params, inputs, states) if lengths is None
                       else self._packed(params, inputs, states, self._lengths(lengths, T, B)))
        outs = dict(zip(st.outputs, outs))
        if self.batch_first:
            outs = {o: v.transpose(0, 1) for o, v in outs.items()}
        outs = outs if self.output is None else outs[self.output]
        return (outs, dict(zip(st.states, final))) if self.return_final else outs

    def _run(self, params, inputs, states):
        """One call of the op: (outputs, final states), lists in the cell's order."""
        # a forward that a backward will follow keeps what the backward needs (docs/layers.md)
        # (not in a torch.jit.trace: the trace would fix keep as a constant, and its check, run
        # under no_grad, failed with "Graphs differed across invocations"; a traced backward runs vjp)
        keep = (torch.is_grad_enabled() and any(t.requires_grad for t in params + inputs + states)
                and not torch.jit.is_tracing())
        # dropout follows the module's mode, as nn.Dropout does; its seed comes from torch's
        # generator (torch.manual_seed sets it; torch.utils.checkpoint restores it to recompute)
        drops = getattr(self._model, "has_dropout", False) and self.training
        seed = torch.randint(0, 2 ** 62, (1,)) if drops else torch.full((1,), -1, dtype=torch.int64)
        if torch_func.active():  # torch.func.grad, vmap, ...: through an autograd.Function they accept
            return torch_func.call(self._key, params, inputs, states, keep, seed)
        got = recurrent_op(self._key, params, inputs, states, keep, seed)
        n_out = len(self._model.step.outputs)
        return got[:n_out], got[n_out:-1]

    def _lengths(self, lengths, T, B) -> list:
        if isinstance(lengths, torch.Tensor):
            if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.device.type != "cpu":
                raise CallError(f"cell {self._model.step.name!r}: lengths must be a 1-d integer CPU tensor or a "
                                f"list of ints, got a {lengths.dim()}-d {lengths.dtype} tensor on {lengths.device}")
            lengths = lengths.tolist()
        return check_lengths(self._model.step, lengths, T, B)

    def _packed(self, params, inputs, states, lengths):
        """A padded batch (``layer_common.padded_runner``: chained chunks, or one call per length
        where a reversed pass is inside); the rows come from Python ints, so
        ``torch.compile`` sees constant indices."""
        run, T = padded_runner(self._model.step), inputs[0].shape[0]
        return run(lengths, T, inputs, states, lambda xs, hs: self._run(params, xs, hs), TORCH_OPS)


TORCH_OPS = ArrayOps(
    take=lambda a, rows, axis: a.index_select(axis, torch.tensor(rows, device=a.device)),
    spread=lambda o, rows, B: o.new_zeros((o.shape[0], B, o.shape[2])).index_copy(
        1, torch.tensor(rows, device=o.device), o),
    zeros=lambda like, shape: like.new_zeros(shape),
    cat=torch.cat)


from . import torch_device, torch_func  # noqa: E402 - torch_func registers the ops' vmap rules (it reads the ops above)
