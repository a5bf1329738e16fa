"""Resources a long-running process must get back: native memory of each compile, models and
layers that are dropped, caches that must stay bounded.  Checked by what holds the memory
(a C object freed, a weak reference cleared, a cache's size), never by the process's RSS.
"""
from __future__ import annotations

import pytest
from test_cache import _twice_module

from rnncomp.backends.llvm import jit


@pytest.mark.parametrize("unroll", [True, False])
def test_the_optimisation_pipeline_frees_its_pass_manager(monkeypatch, unroll):
    """llvmlite's ModulePassManager never deletes itself (its empty ObjectRef._dispose comes
    first in its bases): each compile leaked the whole O3 pipeline with the maps its passes grew,
    ~150-290 kB of native memory per cell.  jit.optimize deletes it: one call of llvmlite's
    delete per pipeline run."""
    from llvmlite.binding import ffi

    name = "LLVMPY_DisposeNewModulePassManger"
    real = getattr(ffi.lib, name)  # also puts it in the wrapper's table
    freed = []

    def counting(pm):
        freed.append(pm)
        return real(pm)

    monkeypatch.setitem(ffi.lib._fntab, name, counting)
    host = jit.HostTarget.detect()
    for _ in range(3):
        mod = jit.parse_and_verify(_twice_module())
        jit.optimize(mod, host.machine(), 3, unroll)
    assert len(freed) == 3
