"""Dump the generated code of every zoo cell: a refactoring's proof of no behaviour change.

    python tools/dump_codegen.py OUT_DIR [--no-ptx-text]

For every cell of ``rnncomp.cells.ZOO`` and ``rnncomp.zoo_matrix.MATRIX_ZOO``, in float32 and
float64, under a few option sets and a VJP variant, it writes

* ``native-*.ll``: the native module's LLVM IR as generated, before optimisation (the
  ``forward``/``backward`` module, then the ``advance`` module); nothing is compiled;
* ``ptx-*.ll``: the PTX kernels' LLVM IR, and ``ptx-*.plan``: the launch lists with their
  argument keys, and every key's address in the arena at T=3, B=2;
* ``ptx-*.ptx`` (default options only): the PTX text LLVM's NVPTX back end makes of it;
* ``online-*.ll``: the native online executor's module (RTRL and dense SnAp), where it has code.

Compare two dumps with ``diff -r``: a structural change must leave them byte-identical.
"""
from __future__ import annotations

import ctypes
import pathlib
import sys

from llvmlite import ir

import rnncomp as rc
from rnncomp import cells
from rnncomp.autodiff import Cotangents
from rnncomp.backends.native import NativeModel
from rnncomp.backends.ptx.model import PtxModel
from rnncomp.backends.ptx.ptxgen import to_ptx
from rnncomp.zoo_matrix import MATRIX_ZOO

SIZES = (3, 5, 2)
NATIVE_OPTIONS = {"default": {}, "grad_after": {"grad_after": True}, "nostack": {"stack": False},
                  "nohoist": {"hoist": False, "fuse": False, "pack": False}}
PTX_OPTIONS = {"default": {}, "steps": {"persistent": False}, "nostack": {"stack": False, "tiled": False},
               "nohoist": {"hoist": False, "fuse": False}}


class _Lib:
    """Stands in for the compiled library: records the module's text, compiles nothing."""

    def __init__(self, text):
        self.ir_text = text

    def address(self, name):
        return 0


class _DumpNative(NativeModel):
    def _compile(self, key, build):
        return _Lib(str(build()))


def _vjp(step) -> Cotangents:
    return Cotangents(loss=step.has_loss, outputs=tuple(step.outputs), inputs=tuple(step.inputs), final=True)


def native_text(cell, dtype, opts, cot=None) -> str:
    m = _DumpNative(cell, dtype, cache=None, **opts, **({"_cot": cot} if cot is not None else {}))
    module = ir.Module(name=f"rnncomp_{m.step.name}_advance")
    module.triple = m.host.triple
    m._gen_advance(module)
    return m.lib.ir_text + "\n; ---- advance\n" + str(module)


def ptx_model(cell, dtype, opts, cot=None):
    import rnncomp.backends.ptx.model as pm
    real, pm.to_ptx = pm.to_ptx, lambda *a, **k: ""  # PTX text made below, only where asked
    try:
        return PtxModel(cell, dtype, runner="host", **opts, **({"_cot": cot} if cot is not None else {}))
    finally:
        pm.to_ptx = real


def plan_text(model) -> str:
    P, L = model.plan, model.plan.layout
    T, B, isz = 3, 2, model.dtype.itemsize
    offsets, size = L.offsets(T, B, isz)
    lines = [f"arena {size}"]
    for name in ("fwd_prologue", "fwd_static", "fwd_step", "bwd_prologue", "bwd_step", "bwd_after", "bwd_grads"):
        for x in getattr(P, name):
            lines.append(f"{name} {x.kernel} {x.rows} {x.args!r} {x.computes!r}")
    for loop in (P.fwd_loop, P.bwd_loop):
        if loop is not None:
            lines.append(f"loop {loop.kernel} {loop.args!r}")
    for key in sorted(L.where, key=repr):
        lines.append(f"{key!r} " + " ".join(str(_address(L, key, t, offsets, B, isz)) for t in range(T)))
    return "\n".join(lines) + "\n"


def _address(L, key, t, offsets, B, isz) -> int:
    if hasattr(L, "address"):  # before the shared layout (passes/layout.py): a method
        return L.address(key, t, 0, offsets, B, isz)
    from rnncomp.backends.ptx.layout import address
    return address(L, key, t, 0, offsets, B, isz)


def online_text(cell, dtype, algorithm) -> str | None:
    """The native online executor's module for ``algorithm`` (None: it has no code for the cell)."""
    try:  # where the online kernels call compile_keyed (native_tangent itself before the split)
        import rnncomp.backends.native_online_emit as nt
    except ImportError:
        import rnncomp.backends.native_tangent as nt
    from rnncomp.algorithms.compiled import prepare
    from rnncomp.errors import CompileError
    seen = []
    real = nt.compile_keyed
    nt.compile_keyed = lambda key, build, **kw: seen.append(str(build())) or _Lib(seen[-1])
    try:
        prepare(algorithm, cell.step, "native", dtype)
    except CompileError:
        return None
    finally:
        nt.compile_keyed = real
    return seen[0]


def main(out: str, ptx_text: bool = True) -> None:
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    zoo = dict(cells.ZOO) | dict(MATRIX_ZOO)
    for name, make in zoo.items():
        cell = make(*SIZES)
        for dtype in ("float32", "float64"):
            for opt, kw in NATIVE_OPTIONS.items():
                (out_dir / f"native-{name}-{dtype}-{opt}.ll").write_text(native_text(cell, dtype, kw))
            (out_dir / f"native-{name}-{dtype}-vjp.ll").write_text(
                native_text(cell, dtype, {}, _vjp(cell.step)))
            for opt, kw in list(PTX_OPTIONS.items()) + [("vjp", None)]:
                m = ptx_model(cell, dtype, kw or {}, None if kw is not None else _vjp(cell.step))
                (out_dir / f"ptx-{name}-{dtype}-{opt}.ll").write_text(m.ir)
                (out_dir / f"ptx-{name}-{dtype}-{opt}.plan").write_text(plan_text(m))
                if opt == "default" and ptx_text:
                    (out_dir / f"ptx-{name}-{dtype}.ptx").write_text(to_ptx(m.ir, isolate=False))
            for alg_name, alg in (("rtrl", rc.RTRL()), ("snap", rc.SnAp(1, sparse=False))):
                text = online_text(cell, dtype, alg)
                if text is not None:
                    (out_dir / f"online-{name}-{dtype}-{alg_name}.ll").write_text(text)
            print(name, dtype, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], "--no-ptx-text" not in sys.argv[2:])
