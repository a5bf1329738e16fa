"""Arguments of the algorithms beyond BPTT that were taken without a check (found by a probe):
each is now an error that names it, where it was a bare TypeError, a limit silently off, or
an argument silently ignored."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import ArgumentError, CallError

from test_fixed_point import energy_cell


@pytest.mark.parametrize("make", [lambda b: rc.RTRL(max_bytes=b), lambda b: rc.SnAp(1, max_bytes=b)],
                         ids=["rtrl", "snap"])
@pytest.mark.parametrize("bad", ["1GB", float("nan"), -5, 0, 2.5, True])
def test_max_bytes_must_be_a_positive_integer_or_none(make, bad):
    with pytest.raises(ArgumentError, match=r"max_bytes must be a positive integer, got .* \(bytes the "
                                            r"sensitivities may take; None: no limit\)"):
        make(bad)


def test_max_bytes_none_and_integers_still_work():
    assert rc.RTRL(max_bytes=None).max_bytes is None
    assert rc.SnAp(2, max_bytes=np.int64(1 << 20)).max_bytes == 1 << 20


@pytest.mark.parametrize("comp", [rc.Stack([rc.cells.elman(2, 3, 3), rc.cells.elman(3, 3, 1)]),
                                  rc.Bidirectional(rc.cells.elman(2, 3, 1))], ids=["stack", "bidirectional"])
def test_compile_fixed_point_refuses_a_composition_by_name(comp):
    with pytest.raises(CallError, match="compile_fixed_point derives its recursion from one cell's step; .* is a "
                                        "composition") as e:
        rc.compile_fixed_point(comp)
    # the way out fits a settling model (it offered gradient=rc.BPTT(), an option of online training)
    assert "settle one cell" in str(e.value) and "BPTT" not in str(e.value)


def test_fixed_point_options_of_the_wrong_kind_are_named():
    cell = rc.cells.elman(2, 3, 1)
    with pytest.raises(ValueError, match="need tol > 0 and an integer max_iter >= 1, got tol='1e-8'"):
        rc.compile_fixed_point(cell, tol="1e-8")
    for step in (0, float("nan"), 0.1):  # without an energy, nothing takes a step
        with pytest.raises(ValueError, match=rf"step={step!r} is the step of the descent on an energy, and cell "
                                             "'elman' declares none"):
            rc.compile_fixed_point(cell, step=step)


def test_energy_model_arguments_are_checked_and_named_after_the_users_cell():
    cell, energy = energy_cell()
    model = rc.compile_fixed_point(cell, energy=energy, tol=1e-10, max_iter=2000)
    p, x, t = model.init_params(0), np.ones((2, 3)), np.eye(2)
    for beta in ("0.1", None, 0, float("nan")):
        with pytest.raises(ArgumentError, match=rf"eqprop: beta must be a finite number > 0, got {beta!r}"):
            model.loss_and_grad(p, x, t, method="eqprop", beta=beta)
    with pytest.raises(ValueError, match="an energy model solves H μ = ∂C/∂s by iteration only .* got "
                                         "solve='direct'"):
        model.loss_and_grad(p, x, t, solve="direct")
    with pytest.raises(CallError, match=r"cell 'hopfield': inputs\['x'\] has shape") as err:
        model.loss_and_grad(p, np.ones((2, 4)), t)
    assert "hopfield_" not in str(err.value)


def test_a_direct_solve_at_an_unstable_fixed_point_warns():
    import sympy as sp
    cell = rc.Cell("unstable")
    x, s = cell.input("x", 2), cell.state("s", 2)
    cell.update(s, sp.tanh(cell.param("U", (2, 2)) @ s + cell.param("W", (2, 2)) @ x))
    cell.loss(rc.vsum((s.new - cell.target("t", 2)) ** 2))
    model = rc.compile_fixed_point(cell, tol=1e-12)
    p = {"U": 2 * np.eye(2), "W": np.eye(2)}  # s = 0 is a fixed point for x = 0, with ∂f/∂s = 2I
    x0, t = np.zeros((1, 2)), np.ones((1, 2))
    with pytest.warns(RuntimeWarning, match=r"not attracting \(spectral radius of ∂f/∂s 2 ≥ 1 for sample 0\)"):
        model.loss_and_grad(p, x0, t, solve="direct")
    with pytest.raises(rc.FixedPointError):
        model.loss_and_grad(p, x0, t, solve="iterate")
    p["U"] = 0.5 * np.eye(2)  # attracting: no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.loss_and_grad(p, x0, t, solve="direct")


def test_a_direct_solve_decomposes_only_samples_no_norm_bounds(monkeypatch):
    """solve="direct" took every sample's eigenvalues (O(N³), ~25 LU solves) only to warn at
    ρ(∂f/∂s) ≥ 1: 6.0 of 7 s at 512 units, B = 32.  A norm bounding ρ below 1 skips them; a
    sample it cannot bound is still decomposed (the warning above)."""
    import sympy as sp
    cell = rc.Cell("settle")
    x, s = cell.input("x", 3), cell.state("s", 24)
    cell.update(s, sp.tanh(cell.param("W", (24, 24)) @ s + cell.param("U", (24, 3)) @ x))
    cell.loss(rc.vsum((s.new - cell.target("t", 24)) ** 2))
    model = rc.compile_fixed_point(cell, tol=1e-12)
    rng = np.random.default_rng(0)
    p = {"W": rng.normal(size=(24, 24)) * 0.02, "U": rng.normal(size=(24, 3))}
    p["W"][0] = 0.1   # row 0: ‖D‖∞ ≥ 1 possible only through it; ρ < 1 still
    decomposed = []
    eigvals = np.linalg.eigvals
    monkeypatch.setattr(np.linalg, "eigvals", lambda a: decomposed.append(len(a)) or eigvals(a))
    xs, ts = rng.normal(size=(16, 3)), rng.normal(size=(16, 24))
    _, g, _ = model.loss_and_grad(p, xs, ts, solve="direct")
    _, g_it, _ = model.loss_and_grad(p, xs, ts)
    assert sum(decomposed) < 16 and all(np.allclose(g[k], g_it[k], rtol=1e-8, atol=1e-12) for k in g), decomposed
