"""The compiled post-gradient step (rnncomp/train/native_update.py) against the NumPy path.

Reference: the Trainer's NumPy path written out (finite check, np.clip, the global norm in
float64, scaling) followed by the NumPy optimizer's ``step``.  The kernel repeats the NumPy
operations in the same order with the same roundings and no fast-math flags, so without
clipping by norm it must equal the reference bit for bit, in float32 as in float64.  With
clipping by norm the norm is a sum in another order (vector lanes vs BLAS), ~1e-16
relative apart:
- float64: rtol 1e-12 / atol 1e-15.  The scale differs in its last bits; measured: at most
  9e-16 absolute after 25 steps, 4e-12 relative only where ``p - lr*g`` cancels to ~1e-4.
- float32: rtol 2e-6 / atol 1e-7.  ``clip_norm / norm`` rounded to float32 is almost always
  the same float (measured: bit-identical in every case here); when the two norms straddle
  a rounding boundary the scale is 1 ulp (6e-8) apart, which moves each step by 6e-8
  relative, i.e. < 1e-8 absolute per step at these learning rates.
"""
import copy
import re

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.train.native_update import NativeUpdate, UpdateSpec

from gradcheck import random_data

N = 1037  # not a multiple of any vector width: the loops' remainders run too
STEPS = 25


def halving(step):
    return 0.5 ** (step // 10)


OPTS = {
    "sgd": lambda: rc.SGD(0.1),
    "sgd-momentum": lambda: rc.SGD(0.1, momentum=0.9),
    "sgd-nesterov": lambda: rc.SGD(0.1, momentum=0.9, nesterov=True),
    "sgd-wd-schedule": lambda: rc.SGD(0.1, momentum=0.5, weight_decay=0.01, schedule=halving),
    "adam": lambda: rc.Adam(0.01),
    "adam-l2": lambda: rc.Adam(0.01, weight_decay=0.1),
    "adamw-schedule": lambda: rc.AdamW(0.01, weight_decay=0.1, betas=(0.8, 0.99), schedule=halving),
    "rmsprop": lambda: rc.RMSprop(0.01),
    "rmsprop-wd": lambda: rc.RMSprop(0.01, alpha=0.9, weight_decay=0.05),
    "adagrad": lambda: rc.Adagrad(0.1),
    "adagrad-wd-schedule": lambda: rc.Adagrad(0.1, weight_decay=0.01, eps=1e-6, schedule=halving),
}
CLIPS = {"none": (None, None), "value": (0.05, None), "norm": (None, 1.0), "both": (0.05, 1.0)}


@pytest.fixture(scope="module")
def kernels():
    """One NativeUpdate per dtype for the whole module: each specialisation compiles once."""
    return {dt: NativeUpdate(dt, cache=None) for dt in ("float32", "float64")}


def numpy_update(opt, flat, grad, step, clip_value, clip_norm):
    """The Trainer's NumPy path after the finite check."""
    g = grad.copy()
    if clip_value is not None:
        np.clip(g, -clip_value, clip_value, out=g)
    if clip_norm is not None:
        g64 = g.astype(np.float64)
        norm = float(np.sqrt(np.dot(g64, g64)))
        if norm > clip_norm:
            g *= clip_norm / norm
    opt.step(flat, g, step)


def gradients(dtype, seed=0):
    """STEPS gradients of varied scale: some below the norm bound, most above it."""
    rng = np.random.default_rng(seed)
    for step in range(1, STEPS + 1):
        scale = [0.001, 0.02, 0.3, 3.0][step % 4]
        yield step, (rng.normal(0, scale, N) * rng.uniform(0, 2, N)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("opt", list(OPTS))
def test_kernel_matches_numpy_optimizer(kernels, opt, clip, dtype):
    clip_value, clip_norm = CLIPS[clip]
    flat = np.random.default_rng(1).normal(0, 1, N).astype(dtype)
    ref_flat, ref_opt = flat.copy(), OPTS[opt]()
    nat_opt = copy.deepcopy(ref_opt)
    ref_opt.init(ref_flat)
    nat_opt.init(flat)
    up = kernels[dtype]
    clipped = 0
    for step, g in gradients(dtype):
        numpy_update(ref_opt, ref_flat, g, step, clip_value, clip_norm)
        g_before = g.copy()
        assert up(nat_opt, flat, g, step, clip_value, clip_norm) == -1
        np.testing.assert_array_equal(g, g_before)  # the gradient is only read
        if clip_norm is not None:
            clipped += up.norm > clip_norm
        pairs = [(flat, ref_flat, "flat")] + [(nat_opt.state[k], ref_opt.state[k], k) for k in ref_opt.state]
        for got, want, what in pairs:
            msg = f"{what} at step {step}"
            if clip_norm is None:
                np.testing.assert_array_equal(got, want, err_msg=msg)
            elif dtype == "float64":
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=msg)
            else:
                np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=msg)
    assert clip_norm is None or 0 < clipped < STEPS  # both sides of the bound were exercised


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("where", [0, 5, 700, N - 1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_reports_first_index_and_writes_nothing(kernels, dtype, where, bad):
    opt, flat = rc.Adam(0.01), np.linspace(-1, 1, N).astype(dtype)
    opt.init(flat)
    up = kernels[dtype]
    g = np.full(N, 0.5, dtype=dtype)
    assert up(opt, flat, g, 1, 0.1, 1.0) == -1  # some non-zero state first
    before = [flat.copy(), opt.state["m"].copy(), opt.state["v"].copy()]
    g[where] = bad
    g[min(where + 3, N - 1)] = np.nan  # a later one too: the first is reported
    assert up(opt, flat, g, 2, 0.1, 1.0) == where
    for got, want in zip([flat, opt.state["m"], opt.state["v"]], before):
        np.testing.assert_array_equal(got, want)


def test_huge_finite_gradient_is_not_reported():
    # 1e200² overflows a plain float64 sum of squares; the elements are finite, so the step is
    # taken, clipped by the norm computed scaled (issue #22: it was inf, and the step a no-op)
    opt, flat = rc.SGD(1.0), np.zeros(10)
    opt.init(flat)
    up = NativeUpdate("float64", cache=None)
    g = np.full(10, 1e200)
    assert up(opt, flat, g, 1, None, 1.0) == -1
    assert up.norm == pytest.approx(1e200 * np.sqrt(10), rel=1e-15)
    np.testing.assert_allclose(flat, -np.full(10, 1 / np.sqrt(10)), rtol=1e-15)


def test_float32_norm_accumulates_in_float64():
    g = np.full(1 << 22, 0.1, dtype=np.float32)  # a float32 running sum drifts by ~1e-3 here
    opt, flat = rc.SGD(1e-9), np.zeros_like(g)
    opt.init(flat)
    up = NativeUpdate("float32", cache=None)
    assert up(opt, flat, g, 1) == -1
    exact = float(np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64))))
    assert up.norm == pytest.approx(exact, rel=1e-9)  # float32 eps is 6e-8


def test_schedule_and_hyper_parameters_are_runtime_scalars():
    up = NativeUpdate("float64", cache=None)
    opt, flat = rc.Adam(0.1, schedule=lambda s: 1.0 / s), np.ones(50)
    ref_opt, ref_flat = copy.deepcopy(opt), flat.copy()
    opt.init(flat)
    ref_opt.init(ref_flat)
    g = np.linspace(-1, 1, 50)
    for step in range(1, 6):
        opt.lr = ref_opt.lr = 0.1 * step  # a new lr every step: no recompilation
        up(opt, flat, g, step)
        numpy_update(ref_opt, ref_flat, g, step, None, None)
    np.testing.assert_array_equal(flat, ref_flat)
    assert len(up._kernels) == 1


@pytest.mark.parametrize("dtype, lanes", [("float32", "float"), ("float64", "double")])
def test_kernel_loops_are_vectorised(kernels, dtype, lanes):
    lib, _ = kernels[dtype].kernel(UpdateSpec("adam", dtype, "decoupled", clip_value=True, clip_norm=True))
    ir_text = lib.optimized_ir()
    widths = {int(w) for w in re.findall(rf"fdiv <(\d+) x {lanes}>", ir_text)}
    assert widths and min(widths) >= 2, "the update loop was not vectorised"
    assert re.search(r"fadd reassoc contract <\d+ x double>", ir_text), "the norm was not vectorised"
    assert "fast" not in re.findall(r"f(?:add|sub|mul|div) ([a-z ]*)<", ir_text)


def test_unsupported_optimizer():
    class Halved(rc.SGD):
        def step(self, flat, grad, step):
            super().step(flat, grad / 2, step)

    up = NativeUpdate("float64", cache=None)
    assert not up.supports(Halved()) and up.supports(rc.AdamW())
    with pytest.raises(TypeError, match="no compiled rule for Halved"):
        up(Halved(), np.zeros(3), np.zeros(3), 1)


# ---------------------------------------------------------------------------- in the Trainer
def test_trainer_defaults_and_fallback():
    cell = rc.cells.elman(2, 3, 1)
    assert rc.Trainer(cell, backend="numpy", dtype="float64").update == "numpy"
    assert rc.Trainer(cell, backend="numpy", dtype="float64", update="native").update == "native"

    class Halved(rc.SGD):
        def step(self, flat, grad, step):
            super().step(flat, grad / 2, step)

    assert rc.Trainer(cell, Halved(), backend="numpy", dtype="float64").update == "numpy"
    with pytest.raises(ValueError, match="no compiled rule for Halved"):
        rc.Trainer(cell, Halved(), backend="numpy", dtype="float64", update="native")
    with pytest.raises(ValueError, match="update must be"):
        rc.Trainer(cell, backend="numpy", update="fast")


@pytest.mark.parametrize("loop", ["train_step", "fit_online"])
def test_an_optimizer_assigned_later_without_a_compiled_rule_runs_with_numpy(loop):
    """trainer.optimizer = a subclass overriding step, after the trainer chose its compiled
    update: it stopped train_step (and, once fit_online used the compiled update too,
    fit_online) on "native update: no compiled rule".  It runs with NumPy, as it would have
    at construction: the same parameters as a trainer with update="numpy"."""
    class Halved(rc.SGD):
        def step(self, flat, grad, step):
            super().step(flat, grad / 2, step)

    cell = rc.cells.elman(2, 3, 1)
    rng = np.random.default_rng(0)
    x, y = {"x": rng.normal(size=(4, 2, 2))}, {"target": rng.normal(size=(4, 2, 1))}
    out = []
    for update in ("native", "numpy"):
        tr = rc.Trainer(cell, rc.Adam(1e-2), gradient=rc.RTRL(), backend="numpy", dtype="float64", update=update)
        tr.optimizer = Halved(0.1)
        tr.optimizer.init(tr.flat)
        tr.train_step(x, y) if loop == "train_step" else tr.fit_online(x, y)
        out.append(tr.flat.copy())
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [lambda: rc.Adam(0.01), lambda: rc.SGD(0.1, momentum=0.9, nesterov=True),
                                  lambda: rc.AdamW(0.01, schedule=halving)], ids=["adam", "nesterov", "adamw"])
def test_trainer_native_update_matches_numpy_update(make, dtype):
    cell = rc.cells.gru(2, 5, 1)
    params, inputs, targets = random_data(cell, T=6, B=4, dtype=dtype)
    targets = {"target": targets["target"] * 10}  # big enough for the norm bound to bite
    kw = dict(backend="numpy", dtype=dtype, params=params, clip_norm=0.5, clip_value=2.0)
    a = rc.Trainer(cell, make(), update="native", **kw)
    b = rc.Trainer(cell, make(), update="numpy", **kw)
    for _ in range(12):
        la, _ = a.train_step(inputs, targets)
        lb, _ = b.train_step(inputs, targets)
        assert la == pytest.approx(lb, rel=1e-10 if dtype == "float64" else 1e-4)
    rtol, atol = (1e-12, 1e-15) if dtype == "float64" else (1e-5, 1e-6)  # float32: ulps compound
    np.testing.assert_allclose(a.flat, b.flat, rtol=rtol, atol=atol)
    assert a.step_count == b.step_count == 12


def _inf_cell():
    """Finite loss, infinite gradients of W and b: d sqrt(u)/du at u = 0 (W = 0, b = -1)."""
    cell = rc.Cell("infgrad")
    x, h = cell.input("x", 2), cell.state("h", 2)
    A, W, b = cell.param("A", (2, 2)), cell.param("W", (2, 2)), cell.param("b", 2)
    cell.update(h, W @ x + b)
    y = cell.output("y", A @ x)
    cell.loss((y - cell.target("t", 2)) ** 2 + sp.sqrt(h.new + 1))
    return cell, {"A": np.ones((2, 2)), "W": np.zeros((2, 2)), "b": np.array([0.0, -1.0])}


@pytest.mark.parametrize("update", ["native", "numpy"])
def test_trainer_non_finite_gradient_names_the_parameter(update):
    cell, params = _inf_cell()
    tr = rc.Trainer(cell, rc.Adam(0.1), backend="numpy", dtype="float64", params=params,
                    update=update, clip_norm=1.0)
    before, state = tr.flat.copy(), {k: v.copy() for k, v in tr.optimizer.state.items()}
    with np.errstate(all="ignore"), pytest.raises(
            rc.TrainingError, match=r"^step 1: non-finite gradient of 'W' \(loss 3.0\); parameters left unchanged$"):
        tr.train_step(np.ones((3, 1, 2)), np.ones((3, 1, 2)))
    np.testing.assert_array_equal(tr.flat, before)
    for k, v in state.items():
        np.testing.assert_array_equal(tr.optimizer.state[k], v)
    assert tr.step_count == 0


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numpy", "float32"), ("native", "float32")])
def test_checkpoint_resume_with_native_update_is_bit_exact(tmp_path, backend, dtype):
    cell = rc.cells.lstm(2, 4, 1)
    params, inputs, targets = random_data(cell, T=5, B=4, dtype=dtype)
    kw = dict(backend=backend, dtype=dtype, update="native", **({"cache": None} if backend == "native" else {}))

    def steps(tr, n):
        for i in range(n):
            half = slice(2 * (i % 2), 2 * (i % 2) + 2)
            tr.train_step({"x": inputs["x"][:, half]}, {"target": targets["target"][:, half]})

    a = rc.Trainer(cell, rc.AdamW(0.01, schedule=halving), params=params, clip_norm=0.1, **kw)
    steps(a, 2)
    a.save(tmp_path / "ckpt.pkl")
    steps(a, 4)
    b = rc.Trainer.load(tmp_path / "ckpt.pkl", cell=rc.cells.lstm(2, 4, 1), **kw)
    assert b.update == "native" and b.optimizer.state["m"] is not a.optimizer.state["m"]
    steps(b, 4)
    np.testing.assert_array_equal(a.flat, b.flat)
    for k in a.optimizer.state:
        np.testing.assert_array_equal(a.optimizer.state[k], b.optimizer.state[k])
    assert a.step_count == b.step_count == 6


def test_module_doctest():
    import doctest

    from rnncomp.train import native_update
    result = doctest.testmod(native_update)
    assert result.failed == 0 and result.attempted > 0


def test_float64_checkpoint_resumes_in_float32(tmp_path):
    cell = rc.cells.elman(2, 3, 1)
    params, inputs, targets = random_data(cell, T=4, B=2)
    a = rc.Trainer(cell, rc.Adam(0.01), backend="numpy", dtype="float64", params=params)
    a.train_step(inputs, targets)
    a.save(tmp_path / "ckpt.pkl")
    b = rc.Trainer.load(tmp_path / "ckpt.pkl", backend="numpy", dtype="float32", update="native")
    x32 = {k: v.astype(np.float32) for k, v in inputs.items()}
    y32 = {k: v.astype(np.float32) for k, v in targets.items()}
    b.train_step(x32, y32)
    assert all(v.dtype == np.float32 for v in b.optimizer.state.values()) and b.step_count == 2


def test_replaced_state_arrays_are_used_and_overlaps_refused():
    up = NativeUpdate("float64", cache=None)
    opt, flat = rc.Adam(0.1), np.linspace(-1, 1, 40)
    ref_opt, ref_flat = copy.deepcopy(opt), flat.copy()
    opt.init(flat)
    ref_opt.init(ref_flat)
    g = np.cos(np.arange(40.0))

    def both(step):
        up(opt, flat, g, step)
        numpy_update(ref_opt, ref_flat, g, step, None, None)

    both(1)
    saved, ref_saved = opt.state_dict(), ref_opt.state_dict()
    both(2)
    opt.load_state_dict(saved)  # new state arrays: step 2 again from the saved state
    ref_opt.load_state_dict(ref_saved)
    both(2)
    np.testing.assert_array_equal(flat, ref_flat)
    np.testing.assert_array_equal(opt.state["m"], ref_opt.state["m"])
    with pytest.raises(ValueError, match="must not overlap"):
        up(opt, flat, flat, 3)
    with pytest.raises(ValueError, match="'grad' must be a contiguous float64 vector of 40"):
        up(opt, flat, g[:20], 3)


# ----------------------------------------------------------------------------- norms out of range
# Issue #22: finite float64 gradients above ~1e154 made Σ g² overflow, the scale clip/norm 0,
# and the step a silent no-op.  Expected norms here are c·‖v‖ for a moderate v.
SCALES = [1e200, 1e300, 3e-170, 1e-300, 1.0]


@pytest.mark.parametrize("c", SCALES)
def test_global_norm_neither_overflows_nor_underflows(c):
    from rnncomp.train.optim import global_norm
    v = np.random.default_rng(3).normal(size=257)
    assert global_norm(c * v) == pytest.approx(c * float(np.sqrt(np.dot(v, v))), rel=1e-14)


@pytest.mark.parametrize("c", SCALES)
@pytest.mark.parametrize("clip_value", [None, 1e305])
def test_native_clip_norm_of_huge_and_tiny_gradients_takes_the_step(kernels, c, clip_value):
    v = np.random.default_rng(4).normal(size=N)
    g = c * v
    clip = 1e-3 * c  # below the norm: the clipped step is lr·clip·v/‖v‖ whatever the scale
    flat = np.zeros(N)
    opt = rc.SGD(0.5)
    opt.init(flat)
    up = kernels["float64"]
    assert up(opt, flat, g, 1, clip_value, clip) == -1
    norm_v = float(np.sqrt(np.dot(v, v)))
    assert up.norm == pytest.approx(c * norm_v, rel=1e-13)
    np.testing.assert_allclose(flat, -0.5 * clip * v / norm_v, rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", [1e200, 1e308])
def test_trainer_clip_norm_of_a_huge_gradient_takes_the_step(c):
    """The Trainer, NumPy update and native update, with a finite gradient of ~1e200, and one
    whose norm (2.3e308) is past the float range though every element is finite (found by an
    audit of #22: the scale clip/inf was 0, the step a silent no-op)."""
    cell = rc.Cell("linear")
    x, h = cell.input("x", 3), cell.state("h", 3)
    cell.update(h, cell.param("b", 3) * x)
    cell.loss(cell.param("a", 3) * x + 0 * h.new)  # ∂L/∂a = the mean of x over steps
    d = np.array([1.0, -1.5, 1.25])
    X = np.ones((2, 1, 3)) * d * c
    for update in ("numpy", "native"):
        tr = rc.Trainer(cell, rc.SGD(0.1), clip_norm=1.0, backend="numpy", dtype="float64",
                        update=update)
        tr.params["a"][...], tr.params["b"][...] = 0.25, 0.5  # a·x, b·x finite at 1e308
        a0 = tr.params["a"].copy()
        loss, _ = tr.train_step({"x": X}, {})
        assert np.isfinite(loss)
        np.testing.assert_allclose(tr.params["a"] - a0, -0.1 * d / np.sqrt(d @ d), rtol=1e-12, err_msg=update)
