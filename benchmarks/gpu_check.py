"""One-shot GPU check of the PTX backend (issue #6): correctness on the zoo, then timings.

    PYTHONPATH=. python benchmarks/gpu_check.py            # on the GPU machine, < 5 minutes
    PYTHONPATH=. python benchmarks/gpu_check.py --dry      # anywhere: host runner, tiny sizes

Needs numpy, sympy, networkx, llvmlite (to compile) and cuda-python (to run); PyTorch for
the comparison columns (skipped if missing).  Nothing is installed.  Writes
``$OUT/gpu_check.json`` when ``OUT`` is set, else ``benchmarks/results/gpu_check.json``
(``--dry``: ``gpu_check_dry.json``, in the temporary directory unless ``OUT`` is set).
Every part runs in its own ``try``: a failure is printed, recorded under ``errors`` and the
run goes on.

Variants: one launch per step (``persistent=False``) with pass "stack" on ("steps") and off
("nostack"), and the default, the persistent kernel (clusters and block size chosen per call;
timing also without clusters, "nocluster", and with 256 threads a block and no clusters, "p256");
``--no-persistent`` leaves the persistent kernel out, ``--no-cluster`` its clusters.

1. correctness: every zoo cell, float32, H=32 T=12 B=5, every variant: PTX model
   vs the NumPy oracle in float64 on the same data: loss rel 1e-4, each gradient max |Δ| ≤
   1e-4 · max |g|, outputs and final states atol/rtol 1e-4 (float32 rounding over the steps);
2. strict: LSTM and GRU H=70 T=30 B=20 in float64 (several tiles, ragged edges, k-splits
   with atomics over T·B = 600 rows), every variant, CUDA graphs on: 1e-10;
3. timing: one training step (forward + BPTT, float32, median) at LSTM/GRU H=128 B=32 T=100,
   LSTM H=512 B=64 T=50, LSTM H=256 B=64 T=100, LSTM H=128 B=512 T=50, LSTM H=64 B=8 T=200
   (then GRU H=512 if time allows); input D = H/2, 4 outputs, MSE:
   rnncomp ptx, every variant (host↔device copies of params/inputs/gradients
   included: the model takes NumPy arrays; "kernels" = the two replayed CUDA graphs alone;
   "device" = the call on arrays already on the GPU, results left there, docs/gpu.md),
   PyTorch cuDNN nn.LSTM / nn.GRU, and a PyTorch custom-cell Python loop (autograd).
   ``--simple`` adds ``tiled=False, fuse=False`` (the first version's kernels).

``--dry`` runs every code path on the CPU (``runner="host"``, PyTorch on the CPU if present,
small sizes), so the one GPU run does not die on a Python error.
"""
import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

START = time.perf_counter()
BUDGET_S = 240.0  # stop starting new work after this (the whole run must stay < 5 min)

ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
ap.add_argument("--dry", action="store_true", help="host runner, tiny sizes (no GPU needed)")
ap.add_argument("--simple", action="store_true", help="also time tiled=False, fuse=False")
ap.add_argument("--no-persistent", action="store_true", help="leave out the persistent kernel (persistent=True)")
ap.add_argument("--no-cluster", action="store_true", help="the persistent kernel without thread-block clusters")
ap.add_argument("--parts", default="correctness,strict,timing",
                help="which parts to run (comma-separated: correctness, strict, timing)")
ap.add_argument("--cases", default=None,
                help="timing cases cell:H:B:T, comma-separated (default: the seven of the docstring)")
ap.add_argument("--variants", default=None, help="timed variants, comma-separated (default: all)")
ap.add_argument("--budget", type=float, default=None,
                help=f"seconds after which no new work starts (default {BUDGET_S:.0f}; --dry: none)")
ARGS = ap.parse_args()
DRY = ARGS.dry
if ARGS.budget is None:
    ARGS.budget = float("inf") if DRY else BUDGET_S
RUNNER = "host" if DRY else "cuda"


def log(msg):
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def check_imports():
    have, missing = {}, []
    for mod in ["numpy", "sympy", "networkx", "llvmlite", "cuda.bindings.driver", "cuda.cuda", "torch", "cupy"]:
        try:
            m = importlib.import_module(mod)
            have[mod] = getattr(m, "__version__", "yes")
        except Exception as exc:  # noqa: BLE001 - report anything
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    for m in missing:
        log(f"missing: {m}")
    need = ["numpy", "sympy", "networkx", "llvmlite"]
    if any(n not in have for n in need):
        log("cannot continue: rnncomp needs " + ", ".join(need))
        sys.exit(2)
    if "cuda.bindings.driver" not in have and "cuda.cuda" not in have and not DRY:
        log("cuda-python is missing: the PTX backend can compile but not run; only PTX is checked")
    log("have: " + ", ".join(f"{k} {v}" for k, v in have.items()))
    return have


HAVE = check_imports()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np  # noqa: E402

import rnncomp as rc  # noqa: E402

RESULT = {"env": HAVE, "dry": DRY, "runner": RUNNER, "correctness": [], "strict": [], "timing": [],
          "errors": []}


def over_budget():
    return time.perf_counter() - START > ARGS.budget


def fail(row, exc):
    row["error"] = f"{type(exc).__name__}: {exc}"
    RESULT["errors"].append(traceback.format_exc())
    log("ERROR " + row["error"].splitlines()[0][:200])


def data(cell, T, B, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = {k: (v + rng.normal(0, 0.1, v.shape)).astype(dtype) for k, v in cell.init_params(seed, dtype).items()}
    inputs = {n: rng.normal(0, 0.5, (T, B, s)).astype(dtype) for n, s in st.inputs.items()}
    targets = {n: rng.normal(0, 0.5, (T, B, s)).astype(dtype) for n, s in st.targets.items()}
    return params, inputs, targets


def f32(d):
    return {k: v.astype(np.float32) for k, v in d.items()}


def f64(d):
    return {k: v.astype(np.float64) for k, v in d.items()}


def ptx_model(cell, dtype="float32", **options):
    return rc.compile(cell, backend="ptx", dtype=dtype, arch=ARCH, features=FEATURES, runner=RUNNER, **options)


def errors_vs(ref, got, outs_ref, outs_got):
    l1, g1, h1 = ref
    l2, g2, h2 = got
    return {"loss_rel": abs(l2 - l1) / abs(l1),
            "grad_rel": max(float(np.abs(g2[k] - g1[k]).max() / (np.abs(g1[k]).max() + 1e-6)) for k in g1),
            "state_err": max(float(np.abs(h2[s] - h1[s]).max()) for s in h1),
            "out_err": max(float(np.abs(outs_got[o] - outs_ref[o]).max()) for o in outs_ref)}


# ----------------------------------------------------------------------------- 1. correctness
def correctness():
    tol = 1e-4
    H, T, B = (8, 4, 3) if DRY else (32, 12, 5)
    for name in sorted(rc.cells.ZOO):
        for tag, options in VARIANTS:
            row = {"cell": name, "variant": tag}
            if over_budget():
                row.update(ok=False, skipped="time budget")
                RESULT["correctness"].append(row)
                continue
            try:
                cell = rc.cells.get(name)(H // 4, H, 4)
                params, inputs, targets = (f32(d) for d in data(cell, T, B))  # the same data for both
                oracle = rc.compile(cell, backend="numpy")
                ref = oracle.loss_and_grad(f64(params), f64(inputs), f64(targets))
                o1, _ = oracle.forward(f64(params), f64(inputs))
                t0 = time.perf_counter()
                m = ptx_model(cell, **options)
                row["compile_s"] = time.perf_counter() - t0
                row["per_step"] = m.plan.per_step()
                got = m.loss_and_grad(params, inputs, targets)
                o2, _ = m.forward(params, inputs)
                row.update(errors_vs(ref, got, o1, o2))
                row["ok"] = within(row, tol)
            except Exception as exc:  # noqa: BLE001
                row["ok"] = False
                fail(row, exc)
            RESULT["correctness"].append(row)
            log(f"correctness {name} {tag}: " + ("OK" if row["ok"] else "FAIL") + "  "
                + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                            if k not in ("cell", "ok", "variant")))


def within(row, tol) -> bool:
    """Loss, gradients, final states and outputs all within ``tol`` of the oracle."""
    return all(row[k] <= tol for k in ("loss_rel", "grad_rel", "state_err", "out_err"))


# ----------------------------------------------------------------------------- 2. strict (float64)
def strict():
    tol = 1e-10
    H, T, B = (12, 6, 4) if DRY else (70, 30, 20)
    for name in ["lstm", "gru"]:
        try:
            cell = rc.cells.get(name)(37 if not DRY else 5, H, 3)
            params, inputs, targets = data(cell, T, B, seed=3)
            oracle = rc.compile(cell, backend="numpy")
            ref = oracle.loss_and_grad(params, inputs, targets)
            o1, _ = oracle.forward(params, inputs)
        except Exception as exc:  # noqa: BLE001
            fail({}, exc)
            continue
        for tag, options in VARIANTS:
            row = {"cell": name, "H": H, "T": T, "B": B, "variant": tag, "dtype": "float64"}
            if over_budget():
                row.update(ok=False, skipped="time budget")
                RESULT["strict"].append(row)
                continue
            try:
                m = ptx_model(cell, dtype="float64", **options)
                got = m.loss_and_grad(params, inputs, targets)
                o2, _ = m.forward(params, inputs)
                row.update(errors_vs(ref, got, o1, o2))
                row["ok"] = within(row, tol)
            except Exception as exc:  # noqa: BLE001
                row["ok"] = False
                fail(row, exc)
            RESULT["strict"].append(row)
            log(f"strict float64 {name} H={H} T·B={T * B} {tag}: " + ("OK" if row["ok"] else "FAIL")
                + "  " + ", ".join(f"{k}={v:.2e}" for k, v in row.items() if isinstance(v, float)))


# ----------------------------------------------------------------------------- 3. timing
def median_ms(fn, sync, repeats=10, budget=6.0):
    fn()
    sync()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return 1e3 * statistics.median(times)


def fp32_only(fn):
    """``fn`` with TF32 tensor-core math off in cuDNN and cuBLAS (PyTorch lets cuDNN use TF32,
    a 10-bit mantissa, by default): the same float32 arithmetic as rnncomp's kernels."""
    import torch

    def run():
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            fn()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    return run


def torch_steps(kind, D, H, B, T, dev):
    import torch
    x = torch.randn(T, B, D, device=dev)
    y = torch.randn(T, B, 4, device=dev)
    head = torch.nn.Linear(H, 4).to(dev)
    fused = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](D, H).to(dev)

    def cudnn():
        fused.zero_grad()
        head.zero_grad()
        out, _ = fused(x)
        loss = ((head(out) - y) ** 2).sum(-1).mean() / 2
        loss.backward()

    G = 4 if kind == "lstm" else 3
    Wx = torch.nn.Parameter(torch.randn(G * H, D, device=dev) * 0.1)
    Wh = torch.nn.Parameter(torch.randn(G * H, H, device=dev) * 0.1)
    bb = torch.nn.Parameter(torch.zeros(G * H, device=dev))

    def loop():
        for p in (Wx, Wh, bb):
            p.grad = None
        head.zero_grad()
        h = torch.zeros(B, H, device=dev)
        c = torch.zeros(B, H, device=dev)
        xs = x @ Wx.T + bb
        loss = 0
        for t in range(T):
            if kind == "lstm":
                z = xs[t] + h @ Wh.T
                i, f, g, o = z.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                zx, zh = xs[t].chunk(3, 1), (h @ Wh.T).chunk(3, 1)
                z = torch.sigmoid(zx[0] + zh[0])
                r = torch.sigmoid(zx[1] + zh[1])
                n = torch.tanh(zx[2] + r * zh[2])
                h = (1 - z) * n + z * h
            loss = loss + ((head(h) - y[t]) ** 2).sum(-1).mean() / 2
        (loss / T).backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return cudnn, loop, sync


def torch_device():
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        log(f"no PyTorch ({type(exc).__name__}: {exc}): comparison columns skipped")
        return None
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    if DRY:
        return torch.device("cpu")  # the same code paths, on the CPU
    log("PyTorch sees no CUDA device: comparison columns skipped")
    return None


def time_ptx(row, tag, cell, params, inputs, targets, **options):
    """Median ms of loss_and_grad (copies included) and of the two replayed passes alone."""
    t0 = time.perf_counter()
    m = ptx_model(cell, **options)
    row[f"compile_s_{tag}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m.loss_and_grad(params, inputs, targets)
    row[f"first_call_s_{tag}"] = time.perf_counter() - t0  # JIT of the PTX, allocation, graph capture
    row[f"launches_{tag}"] = m._arena["launches"]
    row[f"per_step_{tag}"] = m.plan.per_step()
    row[f"summary_{tag}"] = m.plan.summary()
    reps = 2 if DRY else 10
    row[f"ptx_{tag}_ms"] = median_ms(lambda: m.loss_and_grad(params, inputs, targets, check_finite=False),
                                     lambda: None, repeats=reps)
    r, a = m.runner, m._arena
    if isinstance(a["fwd"], dict):  # CUDA: the block size the persistent kernel was given
        row[f"block_{tag}"] = [(op[2], op[3]) for op in a["fwd"]["seq"]  # (grid, threads a block)
                               if isinstance(op[1], str) and op[1].endswith("_loop")]

    def passes():
        r.execute(a["fwd"])
        r.execute(a["bwd"])
    row[f"kernels_{tag}_ms"] = median_ms(passes, r.sync, repeats=reps)
    # the same call on arrays already on the device: results stay there (device.py)
    from rnncomp.backends.ptx.device import DeviceArray
    dev = [{k: DeviceArray.from_host(m, v) for k, v in d.items()} for d in (params, inputs, targets)]
    dloss = m.loss_and_grad(*dev)[0]
    row[f"device_loss_rel_{tag}"] = abs(dloss - m.loss_and_grad(params, inputs, targets)[0]) / abs(dloss)
    row[f"device_{tag}_ms"] = median_ms(lambda: m.loss_and_grad(*dev), lambda: None, repeats=reps)


def timing():
    dev = torch_device()
    cases = [("lstm", 128, 32, 100), ("gru", 128, 32, 100), ("lstm", 512, 64, 50), ("lstm", 256, 64, 100),
             ("lstm", 128, 512, 50), ("lstm", 64, 8, 200), ("gru", 512, 64, 50)]
    if DRY:
        cases = [("lstm", 16, 4, 5), ("gru", 16, 4, 5), ("lstm", 32, 4, 3), ("gru", 32, 4, 3)]
    if ARGS.cases:
        cases = [(c.split(":")[0], *map(int, c.split(":")[1:])) for c in ARGS.cases.split(",")]
    variants = TIMED
    for kind, H, B, T in cases:
        D = H // 2
        row = {"cell": kind, "H": H, "B": B, "T": T, "D": D}
        if over_budget():
            log(f"time budget reached: skipping {kind} H={H}")
            row["skipped"] = "time budget"
            RESULT["timing"].append(row)
            continue
        try:
            cell = rc.cells.get(kind)(D, H, 4)
            params, inputs, targets = (f32(d) for d in data(cell, T, B))
        except Exception as exc:  # noqa: BLE001
            fail(row, exc)
            RESULT["timing"].append(row)
            continue
        for tag, options in variants:
            try:
                time_ptx(row, tag, cell, params, inputs, targets, **options)
            except Exception as exc:  # noqa: BLE001
                fail(row, exc)
        if dev is not None:
            try:
                cudnn, loop, sync = torch_steps(kind, D, H, B, T, dev)
                row["cudnn_ms"] = median_ms(cudnn, sync, repeats=2 if DRY else 10)
                row["cudnn_fp32_ms"] = median_ms(fp32_only(cudnn), sync, repeats=2 if DRY else 10)
                row["torch_loop_ms"] = median_ms(loop, sync, repeats=2 if DRY else 5)
            except Exception as exc:  # noqa: BLE001
                fail(row, exc)
        RESULT["timing"].append(row)
        log(f"timing {kind} H={H} B={B} T={T}: " + ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            if k not in ("cell", "H", "B", "T") and not k.startswith("summary")))


# ----------------------------------------------------------------------------- report
def table():
    def num(r, k, w=10, f=".2f"):
        return f"{r[k]:>{w}{f}}" if isinstance(r.get(k), (int, float)) else f"{'n/a':>{w}}"

    print("\ncorrectness (float32 vs float64 oracle, tolerance 1e-4):")
    print(f"{'cell':<16}{'variant':>11}{'ok':>5}{'loss rel':>11}{'grad rel':>11}{'state':>11}{'outputs':>11}"
          f"{'per step':>10}")
    for r in RESULT["correctness"] + RESULT["strict"]:
        label = r["cell"] + (f" f64 H={r['H']}" if "dtype" in r else "")
        if "error" in r or "skipped" in r:
            print(f"{label:<16}{r['variant']:>11}{'FAIL':>5}  {r.get('error', r.get('skipped'))[:90]}")
            continue
        print(f"{label:<16}{r['variant']:>11}{'yes' if r['ok'] else 'NO':>5}{num(r, 'loss_rel', 11, '.1e')}"
              f"{num(r, 'grad_rel', 11, '.1e')}{num(r, 'state_err', 11, '.1e')}{num(r, 'out_err', 11, '.1e')}"
              f"{str(r.get('per_step', '')):>10}")
    print("\ntraining step, float32, median ms (ptx: host<->device copies included; kernels: the two "
          "CUDA graphs alone; dev: arrays on the device in and out):")
    tags = [t for t, _ in TIMED]
    head = "".join(f"{'ptx ' + t:>16}{'kernels':>9}{'dev':>8}" for t in tags)
    print(f"{'case':<26}{head}{'cuDNN':>9}{'fp32':>7}{'torch loop':>12}   launches/step fwd,bwd (steps | nostack); "
          "persistent block")
    for r in RESULT["timing"]:
        label = f"{r['cell']} H={r['H']} B={r['B']} T={r['T']}"
        if "skipped" in r:
            print(f"{label:<26}  {r['skipped']}")
            continue
        cols = "".join(f"{num(r, f'ptx_{t}_ms', 16)}{num(r, f'kernels_{t}_ms', 9)}{num(r, f'device_{t}_ms', 8)}"
                       for t in tags)
        steps = f"{r.get('per_step_steps')} | {r.get('per_step_nostack')}; {r.get('block_persistent', '')}"
        print(f"{label:<26}{cols}{num(r, 'cudnn_ms', 9)}{num(r, 'cudnn_fp32_ms', 7)}{num(r, 'torch_loop_ms', 12)}   {steps}"
              + (f"   error: {r['error'][:60]}" if "error" in r else ""))


def pick_features():
    """+ptx85 needs a CUDA 12.5+ driver; pick an ISA the installed driver can JIT."""
    if DRY:
        return "sm_90", "+ptx85"
    try:
        try:
            from cuda.bindings import driver
        except ImportError:
            from cuda import cuda as driver
        driver.cuInit(0)
        err, ver = driver.cuDriverGetVersion()
        RESULT["driver_version"] = int(ver)
        err, dev = driver.cuDeviceGet(0)
        cc = [driver.cuDeviceGetAttribute(getattr(driver.CUdevice_attribute, a), dev)[1] for a in
              ("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR", "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")]
        name = driver.cuDeviceGetName(128, dev)[1]
        RESULT["device"] = name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)
        arch = f"sm_{cc[0]}{cc[1]}"
        feats = "+ptx85" if ver >= 12050 else "+ptx80" if ver >= 12000 else "+ptx78"
        log(f"device {RESULT['device']} ({arch}), driver {ver}: arch={arch}, features={feats}")
        return arch, feats
    except Exception as exc:  # noqa: BLE001
        log(f"could not query the driver ({type(exc).__name__}: {exc}); using sm_90 +ptx85")
        return "sm_90", "+ptx85"


ARCH, FEATURES = pick_features()
# correctness and strict run every variant; timing also the persistent kernel with fixed block sizes
VARIANTS = [("steps", {"persistent": False}), ("nostack", {"stack": False, "persistent": False})]
if not ARGS.no_persistent:  # the default: persistent, clusters and block size chosen per call
    VARIANTS.append(("persistent", {"persistent_cluster": 1} if ARGS.no_cluster else {}))
TIMED = list(VARIANTS)
if not ARGS.no_persistent and not ARGS.no_cluster:
    TIMED += [("nocluster", {"persistent_cluster": 1}), ("p256", {"persistent_block": 256, "persistent_cluster": 1})]
if ARGS.variants:
    TIMED = [(t, o) for t, o in TIMED if t in ARGS.variants.split(",")]
if ARGS.simple:
    TIMED.append(("simple", {"stack": False, "tiled": False, "fuse": False, "persistent": False}))
RESULT["arch"], RESULT["features"] = ARCH, FEATURES

if __name__ == "__main__":
    parts = [globals()[p] for p in ARGS.parts.split(",")] + [table]
    for part in parts:
        try:
            part()
        except Exception as exc:  # noqa: BLE001 - one part failing must not cost the others
            fail({}, exc)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    out_dir = os.environ.get("OUT") or (tempfile.gettempdir() if DRY else here)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gpu_check_dry.json" if DRY else "gpu_check.json")
    RESULT["wall_s"] = time.perf_counter() - START
    with open(path, "w") as fh:
        json.dump(RESULT, fh, indent=1, default=str)
    log(f"wrote {path} ({len(RESULT['errors'])} errors)")
    ok = all(r.get("ok") for r in RESULT["correctness"] + RESULT["strict"] if "skipped" not in r)
    sys.exit(0 if ok and not RESULT["errors"] else 1)
