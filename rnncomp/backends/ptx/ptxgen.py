"""LLVM IR (nvptx64) → PTX text, and ``ptxas`` helpers.

LLVM aborts the whole process on some selection failures ("Cannot select"), so by
default PTX is generated in a child Python process (``isolate=True``): an abort
there becomes a :class:`~rnncomp.errors.CompileError` with LLVM's message,
and the user's process survives.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from ...errors import CompileError
from .irgen import NVPTX_TRIPLE

DEFAULT_ARCH = "sm_90"
DEFAULT_FEATURES = "+ptx85"

_CHILD = r"""
import sys
import llvmlite.binding as llvm
llvm.initialize_all_targets()
llvm.initialize_all_asmprinters()
arch, features, opt = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = sys.stdin.read()
mod = llvm.parse_assembly(text)
mod.verify()
tm = llvm.Target.from_triple("%s").create_target_machine(cpu=arch, features=features, opt=opt)
if opt > 0:
    pto = llvm.PipelineTuningOptions(speed_level=opt)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
sys.stdout.write(tm.emit_assembly(mod))
""" % NVPTX_TRIPLE


def _in_process(ir_text, arch, features, opt):
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    tm = llvm.Target.from_triple(NVPTX_TRIPLE).create_target_machine(cpu=arch, features=features, opt=opt)
    if opt > 0:
        from ..llvm.jit import run_default_pipeline  # frees the pass manager, which llvmlite leaks

        run_default_pipeline(mod, tm, llvm.PipelineTuningOptions(speed_level=opt))
    return tm.emit_assembly(mod)


def sm_version(arch: str) -> int:
    """90 for ``"sm_90"`` (or ``"sm_90a"``); a :class:`CompileError` for anything else."""
    m = re.fullmatch(r"sm_(\d+)[af]?", arch or "")
    if not m:
        raise CompileError(f"ptx backend: arch must look like 'sm_80' or 'sm_90', got {arch!r}")
    return int(m.group(1))


def check_arch(arch: str) -> str:
    if sm_version(arch) < 75:
        raise CompileError(f"ptx backend: arch {arch} is too old (CUDA 13's ptxas needs sm_75 or newer)")
    return arch


def to_ptx(ir_text: str, arch: str = DEFAULT_ARCH, features: str = DEFAULT_FEATURES, opt: int = 3,
           isolate: bool = True, where: str = "") -> str:
    """PTX assembly for an nvptx64 LLVM module (text)."""
    check_arch(arch)
    if not isolate:
        try:
            return _in_process(ir_text, arch, features, opt)
        except RuntimeError as exc:
            raise CompileError(f"{where}LLVM could not generate PTX: {exc}") from None
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, arch, features, str(opt)], input=ir_text,
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise CompileError(f"{where}PTX code generation took more than 600 s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-12:]
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else \
            f"exited with status {proc.returncode}"
        raise CompileError(f"{where}LLVM's NVPTX code generator {how} while compiling for {arch} "
                           f"({features}):\n" + "\n".join(tail))
    return proc.stdout


def entries(ptx: str) -> list[str]:
    """Names of the ``.entry`` kernels in a PTX text."""
    return re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)", ptx)


def find_ptxas() -> str | None:
    return shutil.which("ptxas")


def ptxas(ptx: str, arch: str = DEFAULT_ARCH, verbose: bool = True) -> str:
    """Assemble with ``ptxas`` (a check: the cubin is discarded); returns its (``-v``) report."""
    exe = find_ptxas()
    if exe is None:
        raise CompileError("ptxas not found on PATH (install the CUDA toolkit to assemble PTX offline)")
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as fh:
            fh.write(ptx)
        cmd = [exe, f"--gpu-name={arch}", "-o", out, src] + (["-v"] if verbose else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise CompileError(f"ptxas --gpu-name={arch} failed:\n{proc.stderr.strip()[-4000:]}")
    return proc.stdout + proc.stderr


def spills(report: str) -> dict:
    """``{kernel: (spill store bytes, spill load bytes, stack frame bytes)}`` from a ``ptxas -v`` report."""
    out, cur = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            out[cur] = (int(m.group(2)), int(m.group(3)), int(m.group(1)))
    return out
