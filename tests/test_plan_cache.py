"""The native backend's declaration cache (``rnncomp/backends/native_plan_cache.py``).

A warm compile restores the derived plan (backward step, programs, layout, object key) keyed
by the cell's declaration, the options and every rnncomp source.  Checked here:

* a hit computes bit for bit what the compile that stored the plan computed, and what a
  compile without any cache computes (loss, gradients, final states, outputs; a memory
  schedule's ``advance`` entry, compiled on first use from a restored plan, included);
* a changed equation, a changed option or a changed rnncomp source misses (the results are
  those of the changed model, compiled without a cache);
* so does a native online kernel (RTRL's here) after an edit of any rnncomp source.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnncomp as rc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(cell, T=6, B=3, seed=0):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = cell.init_params(seed)
    x = {k: rng.normal(size=(T, B, n)) for k, n in st.inputs.items()}
    y = {k: rng.normal(size=(T, B, n)) for k, n in st.targets.items()}
    return params, x, y


def _results(model, cell):
    params, x, y = _problem(cell)
    loss, grads, final = model.loss_and_grad(params, x, y)
    outs, _ = model.forward(params, x)
    return loss, grads, final, outs


def _assert_identical(a, b):
    assert a[0] == b[0]
    for got, want in zip(a[1:], b[1:]):
        assert got.keys() == want.keys()
        for k in want:
            assert np.array_equal(got[k], want[k]), k


def _plans(cache):
    d = os.path.join(cache, "plan")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("make", [lambda: rc.cells.elman(3, 4, 2), lambda: rc.cells.lstm(3, 4, 2)],
                         ids=["elman", "lstm"])
def test_a_warm_hit_computes_bit_for_bit_what_the_cold_compile_did(tmp_path, make):
    cache = str(tmp_path)
    cold = rc.compile(make(), backend="native", cache=cache, threads=1)
    assert not cold._plan_restored and len(_plans(cache)) == 1
    warm = rc.compile(make(), backend="native", cache=cache, threads=1)  # a new but equal cell
    assert warm._plan_restored and len(_plans(cache)) == 1
    plain = rc.compile(make(), backend="native", cache=None, threads=1)
    assert not plain._plan_restored
    ref = _results(cold, make())
    _assert_identical(_results(warm, make()), ref)
    _assert_identical(_results(plain, make()), ref)


def test_a_restored_plan_compiles_the_advance_entry_of_a_memory_schedule(tmp_path):
    cache, cell = str(tmp_path), rc.cells.gru(3, 4, 2)
    rc.compile(cell, backend="native", cache=cache, threads=1)
    warm = rc.compile(cell, backend="native", cache=cache, threads=1, memory=rc.Every(2))
    assert warm._plan_restored
    plain = rc.compile(cell, backend="native", cache=None, threads=1, memory=rc.Every(2))
    _assert_identical(_results(warm, cell), _results(plain, cell))


def test_a_changed_equation_misses(tmp_path):
    cache = str(tmp_path)
    tanh = rc.compile(rc.cells.elman(3, 4, 2), backend="native", cache=cache, threads=1)
    changed = rc.cells.elman(3, 4, 2, activation=rc.sigmoid)   # one equation differs
    sig = rc.compile(changed, backend="native", cache=cache, threads=1)
    assert not sig._plan_restored and len(_plans(cache)) == 2
    plain = rc.compile(changed, backend="native", cache=None, threads=1)
    _assert_identical(_results(sig, changed), _results(plain, changed))
    assert _results(sig, changed)[0] != _results(tanh, changed)[0]


def test_a_changed_option_misses(tmp_path):
    cache, cell = str(tmp_path), rc.cells.elman(3, 4, 2)
    rc.compile(cell, backend="native", cache=cache, threads=1)
    other = rc.compile(cell, backend="native", cache=cache, threads=1, hoist=False)
    assert not other._plan_restored and len(_plans(cache)) == 2
    # threads= and memory= are not part of the plan: they hit
    assert rc.compile(cell, backend="native", cache=cache, threads=2)._plan_restored


# a child: compile elman(3, 4, 2) with the rnncomp of argv[1] into cache argv[2]; print whether
# the plan was restored and the loss
CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import rnncomp as rc
    assert rc.__file__.startswith(sys.argv[1]), rc.__file__
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="native", cache=sys.argv[2], threads=1)
    rng = np.random.default_rng(0)
    loss = m.loss_and_grad(cell.init_params(0), rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 2)))[0]
    print(m._plan_restored, repr(loss))
""")


def test_a_changed_rnncomp_source_misses(tmp_path):
    copy, cache = tmp_path / "src", str(tmp_path / "cache")
    shutil.copytree(os.path.join(ROOT, "rnncomp"), copy / "rnncomp",
                    ignore=shutil.ignore_patterns("__pycache__"))

    def run():
        out = subprocess.run([sys.executable, "-c", CHILD, str(copy), cache], capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    first, again = run(), run()
    assert first[0] == "False" and again == ["True", first[1]]
    with open(copy / "rnncomp" / "autodiff.py", "a") as fh:  # any edit of any source file
        fh.write("\n# an edit\n")
    edited = run()
    assert edited == ["False", first[1]] and len(_plans(cache)) == 2


# a child: RTRL's native online kernel (its own cache key, native_online_emit.sources_hash) for a
# cell with tan, which the printer evaluates as functions.EVALUATED_AS says, with the rnncomp of
# argv[1] and the cache argv[2]; print its loss and the NumPy executor's
ONLINE_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    os.environ["RNNCOMP_CACHE_DIR"] = sys.argv[2]
    import numpy as np, sympy as sp
    import rnncomp as rc
    from rnncomp.algorithms.base import sequence_grad
    assert rc.__file__.startswith(sys.argv[1]), rc.__file__
    c = rc.Cell("tan")
    x, y, h = c.input("x", 2), c.target("y", 1), c.state("h", 3)
    W, U, V = c.param("W", (3, 2)), c.param("U", (3, 3)), c.param("V", (1, 3))
    c.update(h, sp.tan(0.3 * (W @ x + U @ h)))
    c.loss((V @ h - y) ** 2)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 2, 1))
    native = sequence_grad(rc.RTRL(), c, c.init_params(0), xs, ys, backend="native")[0]
    print(repr(native), repr(sequence_grad(rc.RTRL(), c, c.init_params(0), xs, ys)[0]))
""")


def test_an_online_kernel_of_another_rnncomp_source_is_not_loaded(tmp_path):
    """The online kernels' key once hashed a list of files that missed functions.py: code an
    older rnncomp compiled (here tan evaluated as 2 sin/cos) was loaded by a newer one."""
    copy, cache = tmp_path / "src", str(tmp_path / "cache")
    shutil.copytree(os.path.join(ROOT, "rnncomp"), copy / "rnncomp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    functions = copy / "rnncomp" / "functions.py"
    right = functions.read_text()
    wrong = right.replace("sp.tan: lambda x: sp.sin(x) / sp.cos(x),", "sp.tan: lambda x: 2 * sp.sin(x) / sp.cos(x),")
    assert wrong != right

    def run():
        out = subprocess.run([sys.executable, "-c", ONLINE_CHILD, str(copy), cache], capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return [float(v) for v in out.stdout.split()]

    functions.write_text(wrong)
    native, reference = run()
    assert abs(native - reference) > 1e-3   # the edit changed the code
    functions.write_text(right)
    native, reference = run()
    assert native == pytest.approx(reference, rel=1e-12, abs=1e-12)
