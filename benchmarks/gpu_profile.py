"""One training step per case, for a profiler (issue #6): ``ncu`` reads the persistent kernels.

    ncu --kernel-name regex:_loop --launch-count 4 --section SpeedOfLight ... \\
        python3 benchmarks/gpu_profile.py lstm:128:32:100 lstm:512:64:50

Each case compiles the cell (float32, defaults: the persistent kernel), then runs one
``loss_and_grad`` with CUDA graphs off, so that every kernel is its own launch; it prints
each launch's grid and block.  ``--runner host`` runs the same code path on the CPU.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rnncomp as rc  # noqa: E402

ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
ap.add_argument("cases", nargs="+", help="cell:H:B:T")
ap.add_argument("--runner", default="cuda")
args = ap.parse_args()
for case in args.cases:
    kind, H, B, T = case.split(":")
    H, B, T = int(H), int(B), int(T)
    cell = rc.cells.get(kind)(H // 2, H, 4)
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in cell.init_params(0, "float32").items()}
    inputs = {n: rng.normal(0, 0.5, (T, B, s)).astype(np.float32) for n, s in cell.step.inputs.items()}
    targets = {n: rng.normal(0, 0.5, (T, B, s)).astype(np.float32) for n, s in cell.step.targets.items()}
    m = rc.compile(cell, backend="ptx", dtype="float32", runner=args.runner, graphs=False)
    loss = m.loss_and_grad(params, inputs, targets)[0]
    seq = m._arena["train"]
    shapes = [(op[1], op[2], op[3]) for op in (seq["seq"] if isinstance(seq, dict) else [])
              if isinstance(op[1], str) and op[1].endswith("_loop")]
    print(f"{case}: loss {loss:.6f}; {m.plan.summary()}; persistent launches (name, grid, block): {shapes}",
          flush=True)
