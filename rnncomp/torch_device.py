"""The PyTorch layer on tensors that live where a PTX model's kernels run: no trip through host memory.

:class:`rnncomp.torch.Recurrent` with ``backend="ptx"`` hands CUDA tensors to the model's
device-resident entry points (:mod:`rnncomp.backends.ptx.device`): each tensor's device memory
goes in through ``__cuda_array_interface__`` (copied device to device into the model's arena),
and the results' device memory comes back as CUDA tensors without a copy (``torch.as_tensor``
over a :class:`~rnncomp.backends.ptx.device.DeviceArray`, which the tensor keeps alive).

Order with PyTorch's work: before a call, PyTorch's current stream on the tensors' device is
synchronised (the kernels that wrote the inputs are done, and the dense copies made here of
strided ones; PyTorch's interface exports no stream to wait for), and a call returns when its
results are written, so what PyTorch queues after it reads finished memory.  The model runs on
its own stream, not on PyTorch's.

A layer's forward on the device keeps nothing for the backward: the backward runs the model's
device ``vjp`` (the forward again, then its backward; the PTX backend's kept forward runs the
forward again too); under a ``memory=`` schedule the checkpoints stay on the device too.  The
device entry points serve a single compiled cell (not a composition, not derived weights): the
others take CPU tensors only, named by :func:`where_error`.

With ``runner="host"`` the PTX model's "device" is this process's memory: CPU tensors take this
same path, which is how ``tests/test_torch_device.py`` checks it without a GPU.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import CallError


def _ptx(model) -> bool:
    return getattr(model, "runner_kind", None) in ("cuda", "host") and hasattr(model, "device")


def takes(model, device: torch.device) -> bool:
    """Whether ``model`` runs tensors on ``device`` itself (the layer's check of where a tensor is)."""
    if device.type == "cpu":
        return True   # every backend reads CPU tensors (the PTX backend's CUDA runner uploads them)
    return device.type == "cuda" and _ptx(model) and model.runner_kind == "cuda"


def where_error(model, what: str, t: torch.Tensor) -> CallError:
    """The error for a tensor on a device ``model`` does not run on."""
    name = model.step.name
    if t.device.type == "cuda" and _ptx(model) and model.runner_kind == "host":
        return CallError(f"cell {name!r}: {what} is on {t.device}, but this PTX model has runner='host' "
                         "(its kernels run on the CPU): make the layer with runner='cuda' (the default), "
                         "or move the tensor with .cpu()")
    if t.device.type == "cuda" and model.backend == "ptx":
        return CallError(f"cell {name!r}: {what} is on {t.device}; this PTX model "
                         f"({type(model).__name__}) takes host arrays only (device-resident calls serve a "
                         "single compiled cell: not a composition, not derived weights): move it with "
                         ".cpu(), see docs/layers.md")
    return CallError(f"cell {name!r}: {what} is on {t.device}, but backend {model.backend!r} takes CPU "
                     "tensors (the backends read host arrays; use backend='ptx' for CUDA tensors, or move "
                     "it with .cpu(), see docs/layers.md)")


def placed(model, what: str, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, checked to be on ``device`` (the call's first input's), a device ``model`` runs tensors on."""
    if not takes(model, t.device):
        raise where_error(model, what, t)
    if t.device != device:
        raise CallError(f"cell {model.step.name!r}: {what} is on {t.device}, but the inputs are on {device}: "
                        "every tensor of a call on one device")
    return t


def resident(model, tensors) -> bool:
    """Whether a call on ``tensors`` (the op's, all on one device) goes through the device entry
    points: CUDA tensors on a PTX model, or CPU tensors on a PTX model whose runner is the host's."""
    if not _ptx(model):
        return False
    if any(t.device.type == "cuda" for t in tensors):   # a host runner's "device" is this process's memory:
        return model.runner_kind == "cuda"              # CUDA tensors there go the host way, named by _host
    return model.runner_kind == "host"


class _HostMemory:
    """A CPU tensor's memory exported as a device array of the host runner (whose device memory
    is this process's): what a CUDA tensor's ``__cuda_array_interface__`` is on a GPU."""

    def __init__(self, t: torch.Tensor):
        self._t = t
        self.__cuda_array_interface__ = {
            "shape": tuple(t.shape), "typestr": np.dtype(str(t.dtype).removeprefix("torch.")).str,
            "data": (t.data_ptr(), False), "strides": None, "version": 3, "stream": None}


class _Exported:
    """A host runner's DeviceArray as a NumPy array (``np.asarray`` keeps this object, and so the
    DeviceArray and its memory, alive as the array's base)."""

    def __init__(self, a):
        self._a = a
        self.__array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ptr, False),
                                    "version": 3}


def _check_device(model, what: str, t: torch.Tensor) -> None:
    if t.device.type == "cuda" and (t.device.index or 0) != model.device:
        raise CallError(f"cell {model.step.name!r}: {what} is on {t.device}, but the layer's PTX model runs "
                        f"on cuda:{model.device} (compile it with device={t.device.index or 0}, or move the "
                        "tensor)")


def _arrays(model, what: str, names, tensors) -> dict:
    """{name: device array} of tensors: dense (a strided tensor, an expanded learned initial state,
    is copied on its device), detached (the interface refuses a tensor that requires grad)."""
    out = {}
    for n, t in zip(names, tensors):
        _check_device(model, f"{what}[{n!r}]", t)
        t = t.detach().contiguous()
        out[n] = t if t.device.type == "cuda" else _HostMemory(t)
    return out


def _tensor(a, like: torch.Tensor) -> torch.Tensor:
    if like.device.type == "cuda":
        return torch.as_tensor(a, device=like.device)   # shares the DeviceArray's memory, keeps it alive
    return torch.from_numpy(np.asarray(_Exported(a)))


def _before(tensors) -> None:
    """PyTorch's current stream has written the inputs (its interface exports no stream).  Called
    after :func:`_arrays`: the dense copies it makes (``.contiguous()`` of an expanded learned
    initial state, of a cotangent ``sum()`` expanded) are queued on that stream too, and the
    model's own stream does not wait for it (PyTorch's streams other than the legacy default one
    are non-blocking)."""
    for dev in {t.device for t in tensors if t.device.type == "cuda"}:
        torch.cuda.current_stream(dev).synchronize()


def forward(model, params, inputs, h0):
    """The op's forward on the device: (outputs in the cell's order, final states in its order)."""
    st, like = model.step, inputs[0]
    args = (_arrays(model, "params", st.params, params), _arrays(model, "inputs", st.inputs, inputs),
            _arrays(model, "h0", st.states, h0))
    _before(list(params) + list(inputs) + list(h0))   # after the dense copies are queued
    outs, final = model.forward(*args)
    return [_tensor(outs[o], like) for o in st.outputs], [_tensor(final[s], like) for s in st.states]


def vjp(model, params, inputs, h0, d_outputs, d_final):
    """The op's backward on the device: δparams, δinputs, δh0, each a list in the cell's order."""
    st, like = model.step, inputs[0]
    args = (_arrays(model, "params", st.params, params), _arrays(model, "inputs", st.inputs, inputs),
            _arrays(model, "h0", st.states, h0))
    d_out, d_fin = _arrays(model, "d_outputs", st.outputs, d_outputs), _arrays(model, "d_final", st.states, d_final)
    _before(list(params) + list(inputs) + list(h0) + list(d_outputs) + list(d_final))   # after the dense copies
    g = model.vjp(*args, d_outputs=d_out, d_final=d_fin, wrt=tuple(st.inputs))
    return ([_tensor(g.params[p], like) for p in st.params], [_tensor(g.inputs[x], like) for x in st.inputs],
            [_tensor(g.h0[s], like) for s in st.states])
