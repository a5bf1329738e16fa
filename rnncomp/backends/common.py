"""What every compiled model shares: parameters in its dtype, how it shows itself, pickling.

A model made by :func:`rnncomp.compile` pickles as its cell's portable declaration (the
text of its equations, :mod:`rnncomp.serialize`), backend, dtype and options, and
is compiled again where it is unpickled (the native backend reloads the object code from
its cache), so it can go to worker processes.
"""
from __future__ import annotations

import numpy as np

from ..initializers import InitParams
from ..memory import StoreAll
from ..serialize import cell_from_dict, cell_to_dict
from ..show import TextShown


class CompiledModel(InitParams, TextShown):
    _source = None  # (cell, options) when made by rc.compile

    def _made_by_compile(self, cell, options: dict) -> None:
        """Called by :func:`rnncomp.compile`: what pickling needs to compile it again."""
        self._source = (cell, dict(options))

    def _text(self) -> str:
        st = self.step
        opts = "" if self._source is None else "".join(f", {k}={v!r}" for k, v in self._source[1].items())
        sizes = ", ".join(f"{n}[{s}]" for n, s in list(st.inputs.items()) + list(st.states.items()))
        n_params = sum(int(np.prod(s)) for s in st.params.values())
        return (f"<{type(self).__name__} of cell {st.name!r} ({sizes}; {n_params} parameters): "
                f"backend={self.backend!r}, dtype={self.dtype.name!r}{opts}>")

    def __reduce__(self):
        if self._source is None:
            raise TypeError(f"{type(self).__name__}: only a model made by rc.compile can be pickled "
                            "(it is compiled again from its cell where it is unpickled)")
        cell, options = self._source
        memory = getattr(self, "memory", None)  # a schedule assigned after compile travels too
        if memory is not None and ("memory" in options or not isinstance(memory, StoreAll)):
            options = dict(options, memory=memory)
        return (recompile, (cell_to_dict(cell, callables=True), self.backend, self.dtype.name, options))


def recompile(declaration: dict, backend: str, dtype: str, options: dict):
    """Unpickling: the cell rebuilt from its declaration, compiled again."""
    from ..compile import compile as rc_compile
    return rc_compile(cell_from_dict(declaration, "pickled model"), backend=backend, dtype=dtype, **options)
