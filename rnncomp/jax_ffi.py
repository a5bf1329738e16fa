"""Host calls from XLA on the CPU through the XLA FFI, with no compiler at install time.

``host_call(key, fn, results, *args)`` is what ``jax.pure_callback`` does, minus its copies:
XLA calls one FFI handler (``jax.ffi.ffi_call``), written here with ctypes against the C ABI
of ``xla/ffi/api/c_api.h`` (its call frame is plain C structs), and the handler calls
``fn(args, rets)`` with NumPy views of XLA's own buffers: the arguments (to read) and the
results (to write).  The handler is one C function pointer (a ``ctypes.CFUNCTYPE``) wrapped
in a PyCapsule and registered once as the target ``rnncomp_host_call``; the Python function a
call runs is found by an int64 attribute, the key of a :class:`HostFunctions` entry.

The handler answers XLA's metadata query (the API version it was written for) and turns an
exception of ``fn`` into an XLA FFI error, which JAX raises where the result is read.
"""
from __future__ import annotations

import ctypes as c
import itertools
import math
import threading
import traceback

import jax
import numpy as np

from .errors import CallError

TARGET = "rnncomp_host_call"
_API_MAJOR, _API_MINOR = 0, 1           # of the c_api.h these structs follow
_METADATA, _EXECUTE = 1, 3              # XLA_FFI_Extension_Metadata, XLA_FFI_ExecutionStage_EXECUTE
_INTERNAL_ERROR = 13                    # XLA_FFI_Error_Code_INTERNAL
# XLA_FFI_DataType -> NumPy: S32, S64, F32, F64
_DTYPES = {4: np.dtype(np.int32), 5: np.dtype(np.int64), 11: np.dtype(np.float32), 12: np.dtype(np.float64)}


class _ExtBase(c.Structure):
    pass


_ExtBase._fields_ = [("struct_size", c.c_size_t), ("type", c.c_int), ("next", c.POINTER(_ExtBase))]


class _ApiVersion(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.c_void_p),
                ("major", c.c_int), ("minor", c.c_int)]


class _Metadata(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("api_version", _ApiVersion), ("traits", c.c_uint32)]


class _MetadataExt(c.Structure):
    _fields_ = [("base", _ExtBase), ("metadata", c.POINTER(_Metadata))]


class _Buffer(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.c_void_p), ("dtype", c.c_int),
                ("data", c.c_void_p), ("rank", c.c_int64), ("dims", c.POINTER(c.c_int64))]


class _Scalar(c.Structure):  # XLA_FFI_Scalar: an attribute's dtype and value
    _fields_ = [("dtype", c.c_int), ("value", c.POINTER(c.c_int64))]


class _List(c.Structure):  # XLA_FFI_Args / XLA_FFI_Rets / XLA_FFI_Attrs (the last with names)
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.c_void_p), ("size", c.c_int64),
                ("types", c.c_void_p), ("items", c.POINTER(c.c_void_p))]


class _Attrs(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.c_void_p), ("size", c.c_int64),
                ("types", c.c_void_p), ("names", c.c_void_p), ("items", c.POINTER(c.c_void_p))]


class _CallFrame(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.POINTER(_ExtBase)), ("api", c.c_void_p),
                ("ctx", c.c_void_p), ("stage", c.c_int), ("args", _List), ("rets", _List), ("attrs", _Attrs),
                ("future", c.c_void_p)]


class _ErrorCreateArgs(c.Structure):
    _fields_ = [("struct_size", c.c_size_t), ("extension_start", c.c_void_p), ("message", c.c_char_p),
                ("errc", c.c_int)]


_ERROR_CREATE = c.CFUNCTYPE(c.c_void_p, c.POINTER(_ErrorCreateArgs))
# XLA_FFI_Api: struct_size, extension_start, api_version (24 bytes), internal_api, then
# XLA_FFI_Error_Create first among the functions
_ERROR_CREATE_OFFSET = 8 + 8 + c.sizeof(_ApiVersion) + 8


def _view(address: int) -> np.ndarray:
    """A NumPy array over the memory of the XLA_FFI_Buffer at ``address`` (no copy).  Each
    host call makes one per argument and result (tens of them a step): ``from_address``
    and one slice of ``dims``, no ``ctypes.cast`` (several times slower, measured)."""
    b = _Buffer.from_address(address)
    shape = tuple(b.dims[:b.rank])
    dtype = _DTYPES[b.dtype]
    n = math.prod(shape) * dtype.itemsize
    if n == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((c.c_char * n).from_address(b.data), dtype).reshape(shape)


class HostFunctions:
    """The Python functions the handler runs, by key; each owner's go when the owner goes,
    unless a call of theirs was traced (:meth:`pin`): a compiled function holds only the key,
    and jax.jit may run it again after the owner is gone (a layer made inside the function it
    is jitted with dies once traced)."""

    def __init__(self):
        self._fns: dict[int, object] = {}
        self._owner: dict[int, int] = {}      # key -> id of its owner's group
        self._groups: dict[int, set] = {}     # group -> its keys
        self._pinned: set[int] = set()        # groups kept for the process
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, owner, fn) -> int:
        import weakref

        with self._lock:
            key = next(self._ids)
            self._fns[key] = fn
            group = getattr(owner, "_rnncomp_host_group", None)
            if group is None:
                group = owner._rnncomp_host_group = next(self._ids)
                self._groups[group] = set()
                weakref.finalize(owner, self._drop, group)
            self._owner[key] = group
            self._groups[group].add(key)
        return key

    def pin(self, key: int):
        """Keep the functions of ``key``'s owner for the life of the process: a call of one was
        traced (all of them: JAX may trace the backward after the owner is gone)."""
        with self._lock:
            self._pinned.add(self._owner.get(key))

    def _drop(self, group: int):
        with self._lock:
            if group not in self._pinned:
                for key in self._groups.pop(group, ()):
                    self._fns.pop(key, None)
                    self._owner.pop(key, None)

    def get(self, key: int):
        fn = self._fns.get(key)
        if fn is None:
            raise CallError(f"rnncomp host function {key} no longer exists: the layer that made it was "
                            "garbage-collected before this call, which was never traced (a traced call keeps "
                            "its layer's functions): keep the layer alive while the backwards of its calls may run")
        return fn


FUNCTIONS = HostFunctions()


def _error(frame, message: str):
    """An XLA_FFI_Error made by XLA's own API (XLA destroys it)."""
    create = _ERROR_CREATE(c.cast(frame.api + _ERROR_CREATE_OFFSET, c.POINTER(c.c_void_p)).contents.value)
    args = _ErrorCreateArgs(c.sizeof(_ErrorCreateArgs), None, message.encode("utf-8", "replace"), _INTERNAL_ERROR)
    return create(c.byref(args))


def _handler(frame_ptr):
    frame = frame_ptr.contents
    ext = frame.extension_start
    if ext and ext.contents.type == _METADATA:  # XLA asks which API version this handler speaks
        md = c.cast(ext, c.POINTER(_MetadataExt)).contents.metadata.contents
        md.api_version.major, md.api_version.minor, md.traits = _API_MAJOR, _API_MINOR, 0
        return None
    if frame.stage != _EXECUTE:
        return None
    try:
        key = _Scalar.from_address(frame.attrs.items[0]).value.contents.value
        args = [_view(a) for a in frame.args.items[:frame.args.size]]
        rets = [_view(r) for r in frame.rets.items[:frame.rets.size]]
        FUNCTIONS.get(key)(args, rets)
        return None
    except BaseException:  # noqa: BLE001 - XLA gets the error; nothing may unwind through C
        return _error(frame, "rnncomp host call failed:\n" + traceback.format_exc())


_HANDLER = c.CFUNCTYPE(c.c_void_p, c.POINTER(_CallFrame))(_handler)  # alive as long as the module
jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_HANDLER), platform="cpu")


def host_call(key: int, results, *args, vmap_method: str = "sequential"):
    """Run ``FUNCTIONS.get(key)(flat args, flat results)`` from XLA; ``results``: a pytree of
    ``jax.ShapeDtypeStruct``; returns the same pytree of arrays."""
    flat_args = jax.tree_util.tree_leaves(args)
    if any(isinstance(a, jax.core.Tracer) for a in flat_args):   # staged: the compiled function keeps the key
        FUNCTIONS.pin(key)
    flat_res, tree = jax.tree_util.tree_flatten(results)
    out = jax.ffi.ffi_call(TARGET, flat_res, vmap_method=vmap_method)(*flat_args, key=np.int64(key))
    return jax.tree_util.tree_unflatten(tree, out)
