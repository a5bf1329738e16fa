"""Where a cold native compile spends its time, phase by phase (a child of bench_compile.py).

    python benchmarks/compile_phases.py ROOT CELL H      # prints one JSON object

Imports rnncomp from checkout ROOT (so that bench_compile.py ``--baseline`` can time another
checkout in the same run), compiles zoo cell CELL (float32, D = H/2, n_out = 8) into the
cache ``$RNNCOMP_CACHE_DIR`` (whose product kernels should already be built: the phases of
a "cold" compile) and times each phase in wall and CPU seconds (this process's CPU time:
on a loaded machine it moves far less than the wall time):

- import: ``import rnncomp.backends.native`` (what ``rc.compile`` imports on first use);
- derive: the model up to code generation (differentiate, transform, layout, cache key);
- irgen: ``build()``, the llvmlite ``ir.Module``;
- parse: printing it and LLVM parsing and verifying it;
- optimize, codegen: LLVM's optimisation pipeline and object emission, as the backend runs
  them (the pipeline options are read from the checkout's ``NativeModel._compile``);
- load: linking the kernels and loading the object into an engine, and the entry points.

The phases after ``derive`` repeat by hand what ``jit.compile_module`` does, so that each can
be timed; ``total`` is a plain ``rc.compile`` of a cell of size H + 1 in the same process
(kernels and imports warm), for comparison with the sum.
"""
import inspect
import json
import sys
import time


class Clock:
    def __init__(self):
        self.out = {}

    def __call__(self, name):
        clock = self

        class _Span:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                w, c = clock.out.get(name, (0.0, 0.0))
                clock.out[name] = (w + time.perf_counter() - self.w, c + time.process_time() - self.c)
        return _Span()


def main(root, name, H):
    sys.path.insert(0, root)
    clock = Clock()
    import rnncomp as rc
    cell = rc.cells.get(name)(max(H // 2, 1), H, 8)
    with clock("import"):
        import rnncomp.backends.native as nat
        from rnncomp.backends.llvm import jit, kernel_library
    captured = {}
    compile_src = inspect.getsource(nat.NativeModel._compile)
    unroll = "unroll=False" not in compile_src   # the checkout's pipeline for cells
    opt_args = {} if unroll else {"unroll": False}

    def capture(self, key, build):
        captured["build"] = build
        raise _Stop
    orig = nat.NativeModel._compile
    nat.NativeModel._compile = capture
    with clock("derive"):
        try:
            rc.compile(cell, backend="native", dtype="float32")
        except _Stop:
            pass
    nat.NativeModel._compile = orig
    host = jit.HostTarget.detect()
    with clock("irgen"):
        module = captured["build"]()
    with clock("parse"):
        mod = jit.parse_and_verify(module)
    tm = host.machine()
    with clock("optimize"):
        jit.optimize(mod, tm, 3, **opt_args)
    with clock("codegen"):
        obj = tm.emit_object(mod)
    with clock("load"):
        kernel_library.link(obj, host, "default")
        lib = jit.NativeLibrary(obj, None, host, None)
        lib.address("forward"), lib.address("backward")
    t0, c0 = time.perf_counter(), time.process_time()
    rc.compile(rc.cells.get(name)(max((H + 1) // 2, 1), H + 1, 8), backend="native", dtype="float32")
    clock.out["total (next cell)"] = (time.perf_counter() - t0, time.process_time() - c0)
    return {"phases": clock.out, "unroll": unroll, "object_bytes": len(obj)}


class _Stop(Exception):
    pass


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
