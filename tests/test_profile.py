"""The profiled native build (`rc.compile(..., profile=True)`, `rnncomp inspect --profile`):
the same numbers as the plain build, and the work it counts per part equals the FLOPs counted
by hand from the cell's shapes."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.cli import main
from rnncomp.inspect.profile import profile

from gradcheck import random_data


@pytest.mark.parametrize("name", ["elman", "lstm", "jordan"])
def test_profiled_build_gives_bitwise_the_same_training_call(name):
    cell = rc.cells.get(name)(3, 6, 2)
    params, inputs, targets = random_data(cell, T=9, B=5, seed=1)
    plain = rc.compile(cell, backend="native", threads=1, cache=None)
    prof = rc.compile(cell, backend="native", threads=1, profile=True)
    a, b = plain.loss_and_grad(params, inputs, targets), prof.loss_and_grad(params, inputs, targets)
    assert a[0] == b[0]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)


def test_counted_products_are_the_training_flops_of_an_elman_cell():
    D, H, O = 5, 7, 3
    cell = rc.cells.elman(D, H, O)      # h = tanh(W x + U h + b), y = V h + c, squared error
    model = rc.compile(cell, backend="native", threads=1, profile=True)
    w = model.profile_work
    # per (step, sample), by hand: forward W·x (hoisted), U·h and V·h; backward Vᵀ·δy and
    # Uᵀ·δa; gradients of W, U and V (outer products): 2·m·n FLOPs each
    assert w["hoisted products"] == 2 * H * D
    assert w["step products"] == 2 * (H * H + O * H) * 2
    assert w["gradient products"] == 2 * (H * D + H * H + O * H)
    assert w["element-wise"] > 0


def test_profile_report_adds_up_to_the_wall_time():
    p = profile(rc.cells.gru(4, 8, 2), T=12, B=3, dtype="float64", repeats=2, limits=False)
    assert abs(sum(r.seconds for r in p.rows) - p.wall) < 1e-9
    assert {r.part for r in p.rows} == {"step products", "hoisted products", "gradient products",
                                        "element-wise", "other native", "outside native"}
    assert all(r.seconds >= 0 for r in p.rows if r.part != "outside native")
    steps = {r.part: r for r in p.rows}
    assert steps["step products"].work > 0 and steps["step products"].rate > 0
    text = str(p)
    assert "gradient products" in text and "GFLOP/s" in text


def test_profile_of_two_threads_reports_cpu_time_not_negative_parts():
    # each part adds both threads' time: read against the wall time, the parts came to more
    # than the call and "outside native" to a negative number
    p = profile(rc.cells.gru(16, 64, 8), T=50, B=16, dtype="float64", threads=2, repeats=3, limits=False)
    assert p.threads == 2 and p.cpu is not None
    assert all(r.seconds >= 0 for r in p.rows)
    assert abs(sum(r.seconds for r in p.rows) - p.cpu) < 1e-9
    assert abs(sum(r.share for r in p.rows) - 1) < 1e-9
    assert "ms CPU: each part adds every thread's time" in str(p)


def test_inspect_profile_command_prints_the_table(capsys):
    assert main(["inspect", "elman", "--profile", "--T", "8", "--B", "2", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "profile of one training call of 'elman': T=8 B=2 float64" in out
    assert "of limit" in out and "step products" in out


def test_profile_refuses_bad_sizes():
    with pytest.raises(ValueError, match="T, B and repeats must be positive"):
        profile(rc.cells.elman(2, 3, 1), T=0)
