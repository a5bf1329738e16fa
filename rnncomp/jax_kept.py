"""Kept forwards of a JAX layer, held on rnncomp's side behind small integer handles.

``rnncomp.jax.recurrent(..., backward="kept")`` runs the forward of a differentiated call as
``model.forward(..., keep=True)`` and gives JAX only a handle (an int32 scalar, the
``custom_vjp``'s residual); the backward takes the kept forward back by its handle and runs
``Kept.backward`` on rnncomp's own, warm buffers.  JAX cannot say when it drops a residual
(under ``jax.jit`` the handle is an XLA buffer, never a Python object), so a forward whose
backward never comes (``jax.vjp`` whose vjp function is dropped) would stay kept for ever:
:class:`KeptForwards` holds at most ``bound`` of them and frees the least recently kept
beyond that.  A backward whose handle finds nothing (evicted, or taken by an earlier
backward of the same residual) gets None and runs the forward again (``model.vjp``): the
same numbers, one forward more.

    >>> reg = KeptForwards(bound=2)
    >>> class Fake:
    ...     def free(self): print("freed")
    >>> a, b = reg.put(Fake()), reg.put(Fake())
    >>> c = reg.put(Fake())                        # over the bound: the oldest goes
    freed
    >>> reg.take(a), reg.take(b) is not None, reg.take(b), len(reg)
    (None, True, None, 1)
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from .errors import CallError

#: Handles are int32 (JAX's default integer without ``jax_enable_x64``): keys count up from 1
#: and wrap at 2**31 - 1, never 0 (a handle of 0 finds nothing).
_KEY_LIMIT = 2 ** 31 - 1


def checked_bound(bound) -> int:
    """``bound`` if it is a positive int, else a :class:`CallError` naming it (``max_kept``)."""
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise CallError(f"max_kept must be a positive int (kept forwards waiting for their backward), got {bound!r}")
    return bound


class KeptForwards:
    """At most ``bound`` kept forwards (objects with ``free()``) by integer key; thread-safe.

    :meth:`put` keeps one and returns its key, freeing the least recently kept beyond the
    bound; :meth:`take` removes and returns the kept forward of a key (None when it is not
    there: evicted, taken before, or never kept).  An object is freed
    (``free()``) when evicted, or by whoever took it."""

    def __init__(self, bound: int):
        self.bound = checked_bound(bound)
        self._kept: OrderedDict[int, object] = OrderedDict()
        self._last = 0
        self._lock = threading.Lock()

    def put(self, kept) -> int:
        with self._lock:
            self._last = self._last % _KEY_LIMIT + 1
            key = self._last
            self._kept[key] = kept
            evicted = [self._kept.popitem(last=False)[1] for _ in range(len(self._kept) - self.bound)]
        for old in evicted:  # outside the lock: freeing gives buffers back to the model
            old.free()
        return key

    def take(self, key: int):
        with self._lock:
            return self._kept.pop(key, None)

    def clear(self) -> None:
        """Free every kept forward now."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), OrderedDict()
        for k in kept:
            k.free()

    def __len__(self) -> int:
        return len(self._kept)
