"""What the framework layers share (rnncomp/layer_common.py), without either framework."""
import doctest
import subprocess
import sys

import pytest

import rnncomp as rc
import rnncomp.layer_common as lc
from rnncomp.errors import CallError, CellError


def test_doctest():
    result = doctest.testmod(lc)
    assert result.failed == 0 and result.attempted > 0


def test_padded_plan_runs_each_sequence_over_its_own_steps():
    lengths = [4, 2, 4, 1, 2]
    chunks, back = lc.padded_plan(lengths)
    steps = {b: [] for b in range(5)}
    ended = []
    for c in chunks:
        for r in c.rows:
            steps[r] += list(range(c.start, c.stop))
        ended += [c.rows[i] for i in c.done]
        assert sorted(c.done + c.going) == list(range(len(c.rows)))
    assert all(steps[b] == list(range(n)) for b, n in enumerate(lengths))
    assert [ended[k] for k in back] == list(range(5))  # back[b]: where row b's finals are


def test_cells_that_cannot_be_layers_are_named():
    tf = rc.Cell("forced")
    x, h, t = tf.input("x", 2), tf.state("h", 2), tf.target("t", 2)
    tf.update(h, h + x + t)
    with pytest.raises(CellError, match="read target 't' \\(teacher forcing\\)"):
        lc.check_layer_cell(tf.step, None, "Recurrent")
    none = rc.Cell("closed")
    h = none.state("h", 2)
    none.update(h, none.param("A", (2, 2)) @ h)
    with pytest.raises(CellError, match="Recurrent needs a cell with at least one input"):
        lc.check_layer_cell(none.step, None, "Recurrent")
    with pytest.raises(CallError, match="lengths must be 2 ints"):
        lc.check_lengths(none.step, [1, True], 3, 2)
    with pytest.raises(CallError, match="lengths must be 2 ints .*, got 4"):  # not a list at all
        lc.check_lengths(none.step, 4, 3, 2)


@pytest.mark.parametrize("module, extra", [("torch", "torch"), ("jax", "jax")])
def test_the_layers_say_what_to_install(module, extra):
    code = f"import sys; sys.modules[{module!r}] = None; import rnncomp.{module}"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert f"pip install 'rnncomp[{extra}]'" in err


_CELLS = '''
import numpy as np, sympy as sp
import rnncomp as rc


def small(shape, rng):  # a custom initialiser: the model's __reduce__ holds the function itself
    return rng.normal(0, 0.1, shape)


def cell(act, derived):
    c = rc.Cell("mine")
    x, h = c.input("x", 3), c.state("h", 4)
    W, V = c.param("W", (4, 4), init=small), c.param("V", (4, 3))
    c.update(h, act(((W @ W.T) if derived else W) @ h + V @ x))
    c.output("y", h.new)
    return c


def fingerprints():
    from rnncomp.layer_common import _fingerprint
    relu = lambda a: sp.Max(a, 0)  # noqa: E731
    return [_fingerprint(rc.compile(cell(act, derived), backend="numpy", dtype="float64"))
            for derived in (False, True) for act in (sp.tanh, relu)]
'''


def test_a_layer_fingerprint_names_its_equations_and_is_the_same_in_every_process(tmp_path):
    """A saved torch.jit trace finds its layer by fingerprint.  A cell with derived weights
    (W·Wᵀ) was fingerprinted by its Cell's repr, which names only its sizes: a relu cell had a
    tanh cell's fingerprint.  A custom initialiser was fingerprinted by its repr, which holds
    its address: the same layer had another fingerprint in another process."""
    (tmp_path / "fp_cells.py").write_text(_CELLS)
    code = "import fp_cells; print(' '.join(fp_cells.fingerprints()))"
    runs = [subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    here, there = (r.stdout.split() for r in runs)
    assert here == there                       # plain tanh, plain relu, derived tanh, derived relu
    assert len(set(here)) == 4, here           # four models, four fingerprints


def test_a_key_whose_own_layer_is_gone_runs_a_layer_of_the_same_fingerprint():
    """Keys count the layers of one fingerprint, so a trace made after a copy (key ….1) found
    nothing in a process that made the layer once (….0), nor after its layer A was collected
    and an identical B made (found by the review): a refusal for a layer that exists.  A
    same-fingerprint model computes the same, so it runs; another cell's never does."""
    import gc
    from rnncomp.errors import CallError
    from rnncomp.layer_common import LayerModels

    class Owner:
        pass

    reg, elman = LayerModels(), rc.cells.elman(2, 3, 1)
    a = Owner()
    key_a = reg.add(a, rc.compile(elman, backend="numpy"))
    del a
    gc.collect()
    b = Owner()
    model_b = rc.compile(elman, backend="numpy")
    key_b = reg.add(b, model_b)
    assert key_a != key_b and key_a.rpartition(".")[0] == key_b.rpartition(".")[0]
    assert reg.get(key_a) is model_b
    other = Owner()
    reg.add(other, rc.compile(rc.cells.gru(2, 3, 1), backend="numpy"))
    del b
    gc.collect()
    with pytest.raises(CallError, match="does not exist in this process"):
        reg.get(key_a)   # the gru layer's fingerprint is another
