"""One-shot GPU check of the PTX backend (issue #6): correctness on the zoo, then timings.

    PYTHONPATH=. python benchmarks/gpu_check.py            # from the repo root, < 4 minutes

Needs numpy, sympy, networkx, llvmlite (to compile) and cuda-python (to run); PyTorch for
the comparison columns (skipped if missing).  Nothing is installed.  Writes
``$OUT/gpu_check.json`` when ``OUT`` is set, else ``benchmarks/results/gpu_check.json``.

1. correctness: every zoo cell, float32, H=32 T=12 B=5: PTX model vs the NumPy oracle in
   float64 on the same data: loss rel 1e-4, each gradient max |Δ| ≤ 1e-4 · max |g|,
   outputs and final states atol/rtol 1e-4 (float32 rounding over the steps);
2. timing: one training step (forward + BPTT, float32, median) at H=128 B=32 T=100 and
   H=512 B=64 T=50 (input D = H/2, 4 outputs, MSE): rnncomp ptx (host↔device copies
   of params/inputs/gradients included: the model takes NumPy arrays; default = tiled
   products + fused element-wise runs, and ``tiled=False, fuse=False``, the first version's
   kernels, as "simple"), PyTorch cuDNN
   nn.LSTM / nn.GRU, and a PyTorch custom-cell Python loop (autograd) on the GPU.
"""
import importlib
import json
import os
import statistics
import sys
import time
import traceback

START = time.perf_counter()
BUDGET_S = 210.0  # stop starting new work after this (the whole run must stay < 4 min)


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
    if "cuda.bindings.driver" not in have and "cuda.cuda" not in have:
        log("cuda-python is missing: the PTX backend can compile but not run; only PTX is checked")
    log("have: " + ", ".join(f"{k} {v}" for k, v in have.items()))
    return have


HAVE = check_imports()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np  # noqa: E402

import rnncomp as rc  # noqa: E402

RESULT = {"env": HAVE, "correctness": [], "timing": [], "errors": []}


def data(cell, T, B, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = {k: (v + rng.normal(0, 0.1, v.shape)).astype(dtype) for k, v in cell.init_params(seed, dtype).items()}
    inputs = {n: rng.normal(0, 0.5, (T, B, s)).astype(dtype) for n, s in st.inputs.items()}
    targets = {n: rng.normal(0, 0.5, (T, B, s)).astype(dtype) for n, s in st.targets.items()}
    return params, inputs, targets


def f32(d):
    return {k: v.astype(np.float32) for k, v in d.items()}


def correctness():
    tol = 1e-4
    for name in sorted(rc.cells.ZOO):
        row = {"cell": name}
        try:
            cell = rc.cells.get(name)(8, 32, 4)
            params, inputs, targets = data(cell, 12, 5)
            l1, g1, h1 = rc.compile(cell, backend="numpy").loss_and_grad(params, inputs, targets)
            o1, _ = rc.compile(cell, backend="numpy").forward(params, inputs)
            t0 = time.perf_counter()
            m = rc.compile(cell, backend="ptx", dtype="float32", arch=ARCH, features=FEATURES)
            row["compile_s"] = time.perf_counter() - t0
            l2, g2, h2 = m.loss_and_grad(f32(params), f32(inputs), f32(targets))
            o2, _ = m.forward(f32(params), f32(inputs))
            row["loss_rel"] = abs(l2 - l1) / abs(l1)
            row["grad_rel"] = max(float(np.abs(g2[k] - g1[k]).max() / (np.abs(g1[k]).max() + 1e-6)) for k in g1)
            row["state_err"] = max(float(np.abs(h2[s] - h1[s]).max()) for s in h1)
            row["out_err"] = max(float(np.abs(o2[o] - o1[o]).max()) for o in o1)
            row["ok"] = bool(row["loss_rel"] <= tol and row["grad_rel"] <= tol and row["state_err"] <= tol
                             and row["out_err"] <= tol)
        except Exception as exc:  # noqa: BLE001
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {exc}"
            RESULT["errors"].append(traceback.format_exc())
        RESULT["correctness"].append(row)
        log(f"correctness {name}: " + ("OK" if row["ok"] else "FAIL") + "  "
            + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if k not in ("cell", "ok")))


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


def torch_steps(kind, D, H, B, T):
    import torch
    dev = torch.device("cuda")
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

    return cudnn, loop, torch.cuda.synchronize


def timing():
    try:
        import torch
        torch_ok = torch.cuda.is_available()
        if torch_ok:
            torch.backends.cudnn.benchmark = True
    except ImportError:
        torch_ok = False
    for kind in ["lstm", "gru"]:
        for H, B, T in [(128, 32, 100), (512, 64, 50)]:
            if time.perf_counter() - START > BUDGET_S:
                log(f"time budget reached: skipping {kind} H={H}")
                RESULT["timing"].append({"cell": kind, "H": H, "B": B, "T": T, "skipped": "time budget"})
                continue
            D = H // 2
            row = {"cell": kind, "H": H, "B": B, "T": T, "D": D}
            try:
                cell = rc.cells.get(kind)(D, H, 4)
                params, inputs, targets = (f32(d) for d in data(cell, T, B))
                t0 = time.perf_counter()
                m = rc.compile(cell, backend="ptx", dtype="float32", arch=ARCH, features=FEATURES)
                row["compile_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                m.loss_and_grad(params, inputs, targets)
                row["first_call_s"] = time.perf_counter() - t0  # JIT of the PTX, allocation, graph capture
                row["launches"] = m._arena["launches"]
                row["ptx_ms"] = median_ms(lambda: m.loss_and_grad(params, inputs, targets, check_finite=False),
                                          lambda: None)
                m0 = rc.compile(cell, backend="ptx", dtype="float32", arch=ARCH, features=FEATURES,
                                tiled=False, fuse=False)
                m0.loss_and_grad(params, inputs, targets)
                row["launches_simple"] = m0._arena["launches"]
                row["ptx_simple_ms"] = median_ms(
                    lambda: m0.loss_and_grad(params, inputs, targets, check_finite=False), lambda: None)
                if torch_ok:
                    cudnn, loop, sync = torch_steps(kind, D, H, B, T)
                    row["cudnn_ms"] = median_ms(cudnn, sync)
                    row["torch_loop_ms"] = median_ms(loop, sync, repeats=5)
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"
                RESULT["errors"].append(traceback.format_exc())
            RESULT["timing"].append(row)
            log(f"timing {kind} H={H} B={B} T={T}: " + ", ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("cell", "H", "B", "T")))


def table():
    print("\ncorrectness (float32 vs float64 oracle, tolerance 1e-4):")
    print(f"{'cell':<16}{'ok':>5}{'loss rel':>11}{'grad rel':>11}{'state':>11}{'outputs':>11}")
    for r in RESULT["correctness"]:
        if "error" in r:
            print(f"{r['cell']:<16}{'FAIL':>5}  {r['error'][:90]}")
            continue
        print(f"{r['cell']:<16}{'yes' if r['ok'] else 'NO':>5}{r['loss_rel']:>11.1e}{r['grad_rel']:>11.1e}"
              f"{r['state_err']:>11.1e}{r['out_err']:>11.1e}")
    print("\ntraining step, float32, median ms (ptx includes host<->device copies):")
    print(f"{'case':<28}{'ptx':>10}{'simple':>10}{'cuDNN':>10}{'torch loop':>12}{'compile s':>11}"
          f"{'launches':>16}{'simple':>16}")
    for r in RESULT["timing"]:
        label = f"{r['cell']} H={r['H']} B={r['B']} T={r['T']}"
        if "error" in r or "skipped" in r:
            print(f"{label:<28}  {r.get('error', r.get('skipped'))[:90]}")
            continue
        fmt = lambda k: f"{r[k]:>10.2f}" if k in r else f"{'n/a':>10}"  # noqa: E731
        print(f"{label:<28}{fmt('ptx_ms')}{fmt('ptx_simple_ms')}{fmt('cudnn_ms')}  {fmt('torch_loop_ms')}"
              f"{r['compile_s']:>11.2f}{str(r['launches']):>16}{str(r.get('launches_simple')):>16}")


def pick_features():
    """+ptx85 needs a CUDA 12.5+ driver; pick an ISA the installed driver can JIT."""
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
RESULT["arch"], RESULT["features"] = ARCH, FEATURES

if __name__ == "__main__":
    correctness()
    timing()
    table()
    out_dir = os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gpu_check.json")
    RESULT["wall_s"] = time.perf_counter() - START
    with open(path, "w") as fh:
        json.dump(RESULT, fh, indent=1, default=str)
    log(f"wrote {path}")
    sys.exit(0 if all(r.get("ok") for r in RESULT["correctness"]) else 1)
