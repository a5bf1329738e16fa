"""rnncomp as a layer of PyTorch and JAX models: time per training step of the character
models of examples/torch_charlm.py and examples/jax_charlm.py against their peers.

    nice -n 10 python benchmarks/bench_layers.py [--quick] [--compile step|loop|none] [--device cuda]
        # a table + benchmarks/results/layers.json

One training step: embedding → softsign peephole LSTM (the custom cell of
examples/charlm_common.py) → linear read-out, softmax cross-entropy over a window of T
characters of B streams, full BPTT, clipping to norm 1 and AdamW (torch.optim.AdamW /
optax.adamw).  Defaults: T = 100, B = 32, E = 32, H = 128, float32, all cores.  Rows, all
measured in this run, with the examples' own code (``step_times``):

- torch: rnncomp.torch.Recurrent; the same cell as a Python loop of torch ops (input
  products hoisted, gates stacked); that loop calling ``torch.compile(cell_step)`` (or, with
  ``--compile loop``, ``torch.compile`` of the whole loop, unrolled over T: minutes of
  compiling); ``nn.LSTM`` (oneDNN; sigmoid/tanh, no peepholes: a different cell, a yardstick).
- jax: rnncomp.jax.recurrent (a ``custom_vjp`` whose host calls are XLA FFI calls) with its
  default backward, which runs on the forward kept on rnncomp's side behind a handle, with
  ``backward="residuals"`` ("rnncomp residuals": the kept buffers are JAX residuals) and
  ``backward="recompute"`` ("rnncomp recompute": the forward again, ``model.vjp``), see
  docs/layers.md; and the same cell as a jitted ``jax.lax.scan``.

PyTorch and JAX each run in their own worker process (``--worker``), one after the other, so
that neither framework's thread pool runs while the other is timed.  The torch worker runs
with ``OMP_WAIT_POLICY=passive`` unless ``--omp-wait default`` (or the variable is already
set): on this shared 2-core machine torch's OpenMP threads, spinning after each parallel op,
made every torch model 2–4× slower, the rnncomp layer (whose calls come between torch ops)
included, so passive is the fairer setting for the peers too (figures: examples/README.md).
Ratios are peer time / rnncomp time on the best of the timed steps (on a shared machine the
least disturbed one); the medians are in the JSON too.  The goals are those of issue #16.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "@@layers "
GOALS = [  # (framework, peer, at least this many times faster)
    ("torch", "loop", 3.0),
    ("torch", "compiled step", 1.5),
    ("torch", "compiled loop", 1.5),
    ("jax", "lax.scan", 2.0),
]
GPU_GOALS = [("torch", "loop", 5.0),           # --device cuda: rnncomp on CUDA tensors (PTX backend)
             ("torch", "nn.LSTM", 1 / 1.2)]   # within 1.2× of cuDNN's fused LSTM
NOT_HERE = ["on a GPU: ≥ 5× the PyTorch loop and within 1.2× of nn.LSTM on cuDNN: run with --device cuda "
            "where PyTorch sees a GPU (not measured on this machine)"]


def worker(framework, a):
    """Time the framework's models; print one JSON line."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    sys.path.insert(0, ROOT)
    vocab = 74  # the shipped corpus's characters
    if framework == "torch":
        import torch
        import torch_charlm as ex

        if a.device == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: PyTorch sees no CUDA GPU on this machine")

        kinds = ["rnncomp", "loop"] + ([] if a.compile == "none" else [f"compiled {a.compile}"]) + ["nn.LSTM"]
        threads = torch.get_num_threads()
    else:
        import jax_charlm as ex

        kinds, threads = ["rnncomp", "rnncomp residuals", "rnncomp recompute", "lax.scan"], os.cpu_count()
    times = ex.step_times(kinds, vocab, a.embed, a.hidden, a.T, a.batch, steps=a.steps, warmup=a.warmup,
                          **({"device": a.device} if framework == "torch" else {}))
    print(TAG + json.dumps({"framework": framework, "threads": threads, "times": times}), flush=True)


def run_worker(framework, argv, omp_wait):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework] + argv
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    if omp_wait != "default":
        env.setdefault("OMP_WAIT_POLICY", omp_wait)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise RuntimeError(f"the {framework} worker failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", default="step", choices=["step", "loop", "none"],
                   help="torch.compile of the cell's step (default), of the whole loop, or neither")
    p.add_argument("--omp-wait", default="passive", choices=["passive", "active", "default"],
                   help="OMP_WAIT_POLICY of the workers, unless already set (default: passive; see above)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: the PyTorch models on the GPU (rnncomp's PTX backend on CUDA tensors), no JAX")
    p.add_argument("--quick", action="store_true", help="small sizes, a few steps (a smoke test)")
    p.add_argument("--out", default=None, help="default benchmarks/results/layers.json "
                   "(layers-quick.json with --quick: a smoke test never overwrites a real run)")
    p.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.hidden, a.embed, a.T, a.batch, a.steps, a.warmup = 32, 8, 20, 8, 3, 1
    a.out = a.out or os.path.join(ROOT, "benchmarks", "results", ("layers-quick" if a.quick else "layers")
                                  + ("" if a.device == "cpu" else "-cuda") + ".json")
    if a.worker:
        return worker(a.worker, a)
    sizes = ["--hidden", str(a.hidden), "--embed", str(a.embed), "--T", str(a.T), "--batch", str(a.batch),
             "--steps", str(a.steps), "--warmup", str(a.warmup), "--compile", a.compile, "--device", a.device]
    load_before, t0 = os.getloadavg(), time.perf_counter()
    results = {fw: run_worker(fw, sizes, a.omp_wait) for fw in (("torch", "jax") if a.device == "cpu" else ("torch",))}
    omp = os.environ.get("OMP_WAIT_POLICY", None if a.omp_wait == "default" else a.omp_wait)
    load_after = os.getloadavg()

    print(f"time per training step on {a.device}, T = {a.T}, B = {a.batch}, E = {a.embed}, H = {a.hidden}, float32, "
          f"best (median) of {a.steps}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"{os.cpu_count()} cores, OMP_WAIT_POLICY={omp or '(unset)'}")
    print(f"{'framework':<10}{'model':<19}{'best ms':>10}{'median ms':>11}{'first s':>9}{'peer/rnncomp':>14}")
    ratios = {}
    for fw, r in results.items():
        ours = r["times"]["rnncomp"]["best_s"]
        for kind, t in r["times"].items():
            ratio = t["best_s"] / ours
            ratios[f"{fw}/{kind}"] = ratio
            print(f"{fw:<10}{kind:<19}{1e3 * t['best_s']:10.1f}{1e3 * t['step_s']:11.1f}{t['first_step_s']:9.1f}"
                  f"{ratio:14.2f}")
    goals = []
    print("\ngoals (issue #16), on the custom cell" + (": not judged at --quick's sizes (they are set for the "
                                                         "defaults)" if a.quick else ":"))
    for fw, peer, want in [] if a.quick else GOALS if a.device == "cpu" else GPU_GOALS:
        got = ratios.get(f"{fw}/{peer}")
        if got is None:
            continue
        goals.append({"framework": fw, "peer": peer, "goal": want, "ratio": got, "met": got >= want})
        print(f"  {fw} rnncomp ≥ {want}× {peer}: {got:.2f}× — {'met' if got >= want else 'NOT met'}")
    for line in NOT_HERE if a.device == "cpu" else []:
        print(f"  {line}")
    report = {"device": a.device, "sizes": {"T": a.T, "B": a.batch, "E": a.embed, "H": a.hidden, "dtype": "float32"},
              "steps": a.steps, "load_average": {"before": load_before, "after": load_after},
              "cpu_count": os.cpu_count(), "omp_wait_policy": omp, "machine": platform.processor() or platform.machine(),
              "results": results, "ratios_best": ratios, "goals": goals,
              "not_measured": NOT_HERE if a.device == "cpu" else [],
              "seconds": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"\nwritten: {a.out}")
    return report


if __name__ == "__main__":
    main()
