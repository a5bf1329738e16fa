"""Settling networks on the native backend (issue #20: "Native and NumPy backends for all").

``compile_fixed_point(cell, backend="native")`` relaxes with the natively compiled step and
takes the adjoint fixed point from its VJP entry points; the NumPy executor (the reference,
itself checked against finite differences and BPTT in tests/test_fixed_point.py) must agree
within 1e-10 relative in float64.  Relaxed to 1e-13, both executors stop at the same
iteration (asserted), and their states differ by rounding only (~1e-16 per step, damped by
the contraction); the adjoint solves to 1e-13 likewise.
"""
import re
import warnings

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.algorithms.compiled import NumpyFallbackWarning
from test_fixed_point import CELLS, _data, _scaled, energy_cell


def _close(a, b, what, rtol=1e-10):
    """Relative to the largest entry of all of ``a``: a gradient that vanishes at the fixed
    point (the GRU's update gate: h̃ = h there) is compared at the scale of the others."""
    scale = max(float(np.abs(v).max()) for v in a.values())
    for k in a:
        assert np.abs(np.asarray(a[k]) - np.asarray(b[k])).max() <= rtol * scale, (what, k)


def _models(cell, **kw):
    return [rc.compile_fixed_point(cell, backend=b, **kw, **({"cache": None} if b == "native" else {}))
            for b in ("numpy", "native")]


@pytest.mark.parametrize("name", sorted(CELLS))
def test_native_settling_equals_numpy(name):
    cell = CELLS[name]()
    ref, nat = _models(cell, tol=1e-13, max_iter=2000)
    params = _scaled(ref)
    x, y = _data(cell)
    _close(ref.forward(params, x), nat.forward(params, x), "s*")
    assert ref.iterations == nat.iterations
    for kw in ({}, {"solve": "direct"}, {"method": "bptt"}, {"method": "bptt", "iterations": 5}):
        (la, ga, sa), (lb, gb, sb) = ref.loss_and_grad(params, x, y, **kw), nat.loss_and_grad(params, x, y, **kw)
        assert abs(la - lb) <= 1e-10 * abs(la), kw
        _close(ga, gb, kw)
        _close(sa, sb, kw)


def test_native_energy_model_equals_numpy():
    """Free and nudged relaxations and EqProp run natively, and RBP and BPTT through the
    descent too: their Hessian-vector products are compiled (backends/native_hvp.py), no
    NumpyFallbackWarning."""
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    _close(ref.forward(params, x, y), nat.forward(params, x, y), "s0")
    assert ref.iterations == nat.iterations
    for kw in ({"method": "eqprop", "beta": 0.05}, {"method": "eqprop", "beta": 0.05, "symmetric": True}):
        (la, ga, _), (lb, gb, _) = ref.loss_and_grad(params, x, y, **kw), nat.loss_and_grad(params, x, y, **kw)
        assert abs(la - lb) <= 1e-10 * abs(la)
        _close(ga, gb, kw, rtol=1e-8)  # (∂F(s^β) − ∂F(s⁰))/β: rounding divided by β = 0.05
    assert nat.E.kernel is not None
    for kw in ({"method": "rbp"}, {"method": "bptt", "iterations": 30}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)
            _, gb, _ = nat.loss_and_grad(params, x, y, **kw)
        _close(ref.loss_and_grad(params, x, y, **kw)[1], gb, kw)


def test_native_hessian_vector_products_equal_numpys():
    """The compiled H μ and μᵀ ∂²E/∂s∂θ at a few points and directions against the NumPy
    executor's (the same programs; 1e-12 relative to each result's largest entry), and H μ
    against central differences of ∂E/∂s (float64, step 1e-6: O(h²) ≈ 1e-12 truncation,
    ~1e-10 rounding of the gradient difference, so 1e-6 relative)."""
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(1)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    call = nat._call(params, x, y, None)
    seqs, B, dt = {**call.inputs, **call.targets}, call.B, np.dtype("float64")
    for _ in range(3):
        s = {k: rng.normal(size=(B, n)) for k, n in nat.step.states.items()}
        mu = {k: rng.normal(size=(B, n)) for k, n in nat.step.states.items()}
        h_ref, m_ref = ref.E.hessian_products(ref.E.evaluate(params, s, seqs, B, dt), mu, B, dt)
        h_nat, m_nat = nat.E.hessian_products(nat.E.evaluate(params, s, seqs, B, dt), mu, B, dt)
        _close(h_ref, h_nat, "H μ", rtol=1e-12)
        _close(m_ref, m_nat, "μᵀ ∂²E/∂s∂θ", rtol=1e-12)
        eps = 1e-6
        up = nat.gE.grad(call, {k: s[k] + eps * mu[k] for k in s})[1]
        down = nat.gE.grad(call, {k: s[k] - eps * mu[k] for k in s})[1]
        _close(h_nat, {k: (up[k] - down[k]) / (2 * eps) for k in s}, "H μ vs central differences", rtol=1e-6)


def test_without_native_hessian_code_the_products_run_on_numpy(monkeypatch):
    """Where the compiled products have no code (simulated: the kernel refuses), the NumPy
    executor runs them after a warning that says why, with the NumPy numbers."""
    from rnncomp.backends import native_hvp
    from rnncomp.errors import CompileError

    def refuse(self, *a, **k):
        raise CompileError("cell 'x': the native Hessian-vector product has no code for op 'new'")

    monkeypatch.setattr(native_hvp.HvpKernel, "__init__", refuse)
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    with pytest.warns(NumpyFallbackWarning, match="Hessian-vector products.*no code for op 'new'"):
        _, gb, _ = nat.loss_and_grad(params, x, y, method="rbp")
    _close(ref.loss_and_grad(params, x, y, method="rbp")[1], gb, "rbp on NumPy")


def test_backend_errors():
    cell = CELLS["elman"]()
    with pytest.raises(ValueError, match="backend='ptx'.*'numpy', 'native'"):
        rc.compile_fixed_point(cell, backend="ptx")
    with pytest.raises(ValueError, match=r"\['threads'\] are for backend='native'"):
        rc.compile_fixed_point(cell, threads=1)


def _diverging():
    """s ← 2s + b: no fixed point to reach, |s| doubles each iteration."""
    cell = rc.Cell("blow")
    cell.input("x", 1)
    h = cell.state("h", 2)
    cell.update(h, 2.0 * h + cell.param("b", 2))
    cell.loss(rc.vsum(h.new ** 2))
    return cell


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_diverging_relaxation_is_the_same_fixed_point_error_on_both_backends(backend):
    """Found by an adversarial probe: native said "CallError: h0['h'] contains inf" (its own
    iterate re-checked as if the caller had passed it), NumPy ran all max_iter iterations on
    NaN before "did not converge: ... = nan"."""
    model = rc.compile_fixed_point(_diverging(), tol=1e-10, max_iter=5000, backend=backend,
                                   **({"cache": None} if backend == "native" else {}))
    params, x = {"b": np.array([1.0, 2.0])}, np.ones((2, 1))
    message = (r"^cell 'blow': the forward relaxation diverged: state 'h' is not finite after (\d+) iterations; "
               r"the update may not be a contraction")
    for call in (lambda: model.forward(params, x), lambda: model.loss_and_grad(params, x, {})):
        with np.errstate(all="ignore"), pytest.raises(rc.FixedPointError, match=message) as err:
            call()
        assert int(re.match(message, str(err.value)).group(1)) < 1100   # stopped where it diverged


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_diverging_energy_descent_is_a_fixed_point_error(backend):
    cell = rc.Cell("hill")
    x, s = cell.input("x", 1), cell.state("s", 2)
    cell.update(s, s)
    cell.loss(rc.vsum(s.new ** 2))
    model = rc.compile_fixed_point(cell, energy=-s ** 2 - cell.param("b", 2) * s, max_iter=5000, step=0.5,
                                   backend=backend, **({"cache": None} if backend == "native" else {}))
    with np.errstate(all="ignore"), pytest.raises(
            rc.FixedPointError, match=r"^cell 'hill': gradient descent on the energy \(β = 0\) diverged: state 's' "
                                      r"is not finite after \d+ iterations"):
        model.forward({"b": np.array([1.0, 2.0])}, np.ones((2, 1)), {})


def _central_W(loss_of, params, eps=1e-5):
    """Central differences of ``loss_of(params)`` over the entries of params["W"]."""
    fd = np.zeros_like(params["W"])
    for i in np.ndindex(fd.shape):
        loss = []
        for sign in (1, -1):
            p = {k: v.copy() for k, v in params.items()}
            p["W"][i] += sign * eps
            loss.append(loss_of(p))
        fd[i] = (loss[0] - loss[1]) / (2 * eps)
    return fd


def _derived_energy_cell():
    """The probe's case: an energy reading a derived weight Wd = W Wᵀ/3 (``cell.weight``)."""
    cell = rc.Cell("derived_energy")
    x, s = cell.input("x", 2), cell.state("s", 3)
    W = cell.param("W", (3, 3))
    Wd = cell.weight("Wd", W @ W.T / 3)
    cell.update(s, s)
    r = sp.tanh(s)
    energy = s ** 2 / 2 - r * (Wd @ r) / 2 - r * (cell.param("U", (3, 2)) @ x)
    y = cell.output("y", cell.param("V", (2, 3)) @ s.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell, energy


def test_an_energy_with_derived_weights_has_the_gradient_of_its_declared_parameters():
    """Found by a probe: a derived weight in the energy was a bare KeyError on NumPy (every
    method) and for RBP / BPTT natively.  Both backends now run the plain cell and chain the
    gradient back to W; checked against central differences of the loss at the re-relaxed
    minimum (tol 1e-13, step 1e-5: 1e-6 relative) and against each other (1e-10)."""
    cell, energy = _derived_energy_cell()
    models = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.3)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v for k, v in models[0].init_params(0).items()}
    assert sorted(params) == ["U", "V", "W"]
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    grads = [m.loss_and_grad(params, x, y, method="rbp")[1] for m in models]
    _close(grads[0], grads[1], "numpy vs native")
    _close(grads[0], models[1].loss_and_grad(params, x, y, method="bptt", iterations=400)[1], "bptt", rtol=1e-6)
    fd = _central_W(lambda p: models[0].loss_and_grad(p, x, y, method="eqprop")[0], params)
    _close({"W": fd}, {"W": grads[1]["W"]}, "rbp vs central differences", rtol=1e-6)


def test_one_native_energy_model_from_several_threads():
    """Found by a probe: the compiled Hessian-vector products' buffers were shared by every
    thread without a lock (a ValueError from a reshape, with batches of different sizes)."""
    import threading
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-12, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    batches = [(rng.normal(size=(B, 3)), np.eye(2)[rng.integers(0, 2, B)]) for B in (4, 2, 6, 4)]
    want = [ref.loss_and_grad(params, bx, by, method="bptt", iterations=30)[1] for bx, by in batches]
    errors = []

    def work(i):
        bx, by = batches[i % 4]
        try:
            for _ in range(3):
                _close(want[i % 4], nat.loss_and_grad(params, bx, by, method="bptt", iterations=30)[1], f"thread {i}")
        except Exception as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_fixed_point_of_an_update_with_derived_weights():
    """The same KeyError, for compile_fixed_point without an energy, on NumPy (native ran the
    derived model): both run the plain cell now; RBP (iterated and direct) and BPTT through the
    relaxation against each other (1e-10) and central differences of the loss (1e-6)."""
    cell = rc.Cell("fixed_point_derived")
    x, h = cell.input("x", 2), cell.state("h", 3)
    W = cell.param("W", (3, 3))
    Wd = cell.weight("Wd", W * 0.5)
    cell.update(h, sp.tanh(Wd @ h + cell.param("U", (3, 2)) @ x))
    y = cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    rng = np.random.default_rng(0)
    xx, yy = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    models = _models(cell, tol=1e-13, max_iter=2000)
    params = {k: 0.3 * v for k, v in models[0].init_params(0).items()}
    want = models[0].loss_and_grad(params, xx, yy)[1]
    for m in models:
        for kw in ({}, {"solve": "direct"}, {"method": "bptt"}):
            _close(want, m.loss_and_grad(params, xx, yy, **kw)[1], (m.ex.backend, kw))
    fd = _central_W(lambda p: models[0].loss_and_grad(p, xx, yy)[0], params)
    _close({"W": fd}, {"W": want["W"]}, "rbp vs central differences", rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_an_inline_weight_in_energy_is_declared_as_cell_energy_would(backend):
    """Found by a probe: energy= with an inline weight (((W + Wᵀ)/2) @ r) was a bare KeyError
    on both backends; cell.energy(E) declared it.  Both forms now give the same numbers, and a
    parameter of the wrong shape is a CallError naming it (was a reshape ValueError)."""
    def make(declare):
        c = rc.Cell("inline_energy")
        x, s = c.input("x", 2), c.state("s", 3)
        W = c.param("W", (3, 3))
        c.update(s, s)
        r = sp.tanh(s)
        E = s ** 2 / 2 - r * (((W + W.T) / 2) @ r) / 2 - r * (c.param("U", (3, 2)) @ x)
        y = c.output("y", c.param("V", (2, 3)) @ s.new)
        c.loss((y - c.target("t", 2)) ** 2 / 2)
        if declare:
            c.energy(E)
        opts = {"cache": None} if backend == "native" else {}
        return rc.compile_fixed_point(c, energy=None if declare else E, tol=1e-12, max_iter=5000, step=0.3,
                                      backend=backend, **opts)
    given, declared = make(False), make(True)
    params = {k: 0.3 * v for k, v in declared.init_params(0).items()}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    for kw in ({"method": "rbp"}, {"method": "bptt", "iterations": 8}):
        (la, ga, _), (lb, gb, _) = given.loss_and_grad(params, x, y, **kw), declared.loss_and_grad(params, x, y, **kw)
        assert abs(la - lb) <= 1e-12 * abs(lb), kw
        _close(gb, ga, kw, rtol=1e-12)
    bad = dict(params, W=np.zeros((2, 3)))
    with pytest.raises(rc.errors.CallError, match=r"params\['W'\] has shape \(2, 3\), expected \(3, 3\)"):
        given.loss_and_grad(bad, x, y)


def test_blocks_of_iterations_between_convergence_tests():
    from rnncomp.algorithms.fixed_point import blocks
    for n in (1, 2, 3, 7, 100, 2000):
        for block in (1, 2, 5, 64):
            got = list(blocks(n, block))
            assert sum(m + 1 for _, m in got) == n and [i for i, _ in got] == list(np.cumsum([0] + [m + 1 for _, m in got[:-1]]))
            assert all(m == 0 or (m & (m - 1) == 0 and m + 1 <= block) for _, m in got)  # powers of two
    assert [m for _, m in blocks(40)] == [0, 1, 2, 4, 8, 16, 2]  # 1+2+3+5+9+17 = 37, then 3
    assert {m for _, m in blocks(50, 1)} == {0}


def _teacher_cell(n=4):
    """An update that reads the target (its forward needs targets=; its kept forward keeps ℓ)."""
    cell = rc.Cell("teacher")
    x, s, t = cell.input("x", 3), cell.state("s", n), cell.target("t", 2)
    cell.update(s, sp.tanh(cell.param("W", (n, n)) @ s + cell.param("U", (n, 3)) @ x
                           + cell.param("C", (n, 2)) @ t))
    y = cell.output("y", cell.param("V", (2, n)) @ s.new)
    cell.loss(rc.vsum((y - t) ** 2) / 2)
    return cell


@pytest.mark.parametrize("make", [lambda: CELLS["lstm"](), _teacher_cell], ids=["lstm", "teacher"])
def test_native_blocks_of_iterations_in_one_call(make, monkeypatch):
    """The native relaxation and adjoint iteration run a block's first m iterations as one call
    of m steps (the adjoint: one backward over them, λ scaled by m): a relaxation of n
    iterations makes about 2 log₂ n + n/16 calls, not n, and agrees with the NumPy executor and
    with testing after every iteration (``block = 1``) to 1e-10 (tol 1e-13: the iterates differ
    by rounding and by the extra iterations of the last block, each within tol)."""
    cell = make()
    ref, nat = _models(cell, tol=1e-13, max_iter=2000)
    params = _scaled(ref, scale=1.0)
    x, y = _data(cell, B=5)
    single = rc.compile_fixed_point(cell, backend="native", tol=1e-13, max_iter=2000, cache=None)
    single.block = 1
    calls = []
    forward = type(nat.ex.model).forward
    monkeypatch.setattr(type(nat.ex.model), "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    targets = y if cell.name == "teacher" else None
    s_nat = nat.forward(params, x, targets=targets)
    n = nat.iterations
    assert n >= 40 and len(calls) <= 2 * len(list(blocks_upto(n)))
    assert len(calls) < n / 4, (len(calls), n)
    s_one = single.forward(params, x, targets=targets)
    assert single.iterations <= n <= 2 * single.iterations + 1
    _close(s_one, s_nat, "s*, tested after each iteration")
    _close(ref.forward(params, x, targets=targets), s_nat, "s*")
    for kw in ({}, {"solve": "direct"}):
        (la, ga, _), (lb, gb, _), (lc, gc, _) = (m.loss_and_grad(params, x, y, **kw) for m in (ref, nat, single))
        assert abs(la - lb) <= 1e-10 * abs(la) and abs(la - lc) <= 1e-10 * abs(la), kw
        _close(ga, gb, kw)
        _close(ga, gc, kw)


def blocks_upto(n):
    from rnncomp.algorithms.fixed_point import blocks
    for i, m in blocks(10 ** 6):
        if i >= n:
            return
        yield i, m


@pytest.mark.parametrize("make", [lambda: CELLS["lstm"](), _teacher_cell], ids=["lstm", "teacher"])
def test_native_jacobian_in_chunks_equals_numpys(make):
    """∂f/∂s per sample from one backward over N seeded copies of the batch, in chunks of any
    size, equals the NumPy executor's forward-mode Jacobian to 1e-12 (float64)."""
    cell = make()
    ref, nat = _models(cell, tol=1e-13, max_iter=2000)
    params = _scaled(ref, scale=0.6)
    x, y = _data(cell, B=3)
    call, star = ref._call(params, x, y), ref.forward(params, x, targets=y if cell.name == "teacher" else None)
    want = ref.ex.point(call, star).jacobian()
    point = nat.ex.point(nat._call(params, x, y), star)
    N = want.shape[-1]
    for chunk in (10 ** 6, 3, 7, 3 * N - 1):
        got = point.jacobian(chunk=chunk)
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max(), chunk


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_backward_for_the_carried_adjoints_alone(backend):
    """What the adjoint iteration and the Jacobian run: a kept forward whose backward computes
    no parameter gradient products (Cotangents(params=False)), its initial states' cotangent
    bit for bit a full backward's, the parameters' gradients zero; with targets and without."""
    cell = _teacher_cell()
    m = rc.compile(cell, backend=backend, **({"cache": None} if backend == "native" else {}))
    rng = np.random.default_rng(3)
    params = {k: 0.5 * v for k, v in cell.init_params(0).items()}
    x, t = {"x": rng.normal(size=(4, 5, 3))}, {"t": rng.normal(size=(4, 5, 2))}
    h0, lam = {"s": rng.normal(size=(5, 4))}, {"s": rng.normal(size=(5, 4))}
    full = m.forward(params, x, h0=h0, targets=t, keep=True, wrt=()).backward(d_final=lam)
    alone = m._keep_carries(params, x, h0, t)
    assert alone.cot.params is False
    got = alone.backward(d_final=lam)
    np.testing.assert_array_equal(got.h0["s"], full.h0["s"])
    assert all(not np.any(v) for v in got.params.values()) and any(np.any(v) for v in full.params.values())
