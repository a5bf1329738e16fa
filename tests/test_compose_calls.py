"""Calls of a compiled composition that a probe from the outside got wrong: dropout masks in
a bidirectional layer whose directions run in two threads, dropout across a saved and loaded
trainer, the rows of a batch (MPI shards) dropped as the whole batch, a loss without targets,
a one-layer stack's lengths, which direction an error is in, and arguments that are not what
they should be."""
import pickle
import threading
import time

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.compose import run
from rnncomp.errors import CallError
from resume_check import resumed


def _bi_dropout():
    return rc.Bidirectional(rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.lstm(3, 4, 2)], dropout=0.5), merge="sum")


def test_dropout_in_a_bidirectional_layer_does_not_depend_on_thread_timing(monkeypatch):
    # the two directions run at once on the native backend; both drew from one generator, so
    # the same seed gave other masks whenever the backward direction's thread drew first
    # (2 different outputs in 30 calls); here the forward direction is made to draw last
    x = np.random.default_rng(0).normal(size=(6, 3, 3))
    models = [rc.compile(_bi_dropout(), backend="native", dtype="float64", parallel=True),
              rc.compile(_bi_dropout(), backend="native", dtype="float64", parallel=False),
              rc.compile(_bi_dropout(), backend="numpy", dtype="float64")]
    p = models[0].init_params(1)
    ref = [m.forward(p, {"x": x}, training=True, dropout_seed=5)[0]["y"] for m in models]
    for y in ref[1:]:  # in two threads, one after the other, or the oracle: the same masks
        np.testing.assert_allclose(y, ref[0], rtol=1e-12, atol=1e-14)
    assert not np.allclose(models[0].forward(p, {"x": x})[0]["y"], ref[0])  # a training call drops units

    dropped = run.StackRun._dropped

    def main_thread_last(self, y, ctx):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.05)
        return dropped(self, y, ctx)
    monkeypatch.setattr(run.StackRun, "_dropped", main_thread_last)
    np.testing.assert_array_equal(models[0].forward(p, {"x": x}, training=True, dropout_seed=5)[0]["y"], ref[0])


def test_a_vjp_with_a_seed_is_the_gradient_of_the_forward_with_that_seed():
    m = rc.compile(_bi_dropout(), backend="native", dtype="float64")
    rng = np.random.default_rng(2)
    p, x, w = m.init_params(3), rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 2))
    g = m.vjp(p, {"x": x}, d_outputs={"y": w}, dropout_seed=11, wrt=("x",))
    f = lambda x: float((m.forward(p, {"x": x}, training=True, dropout_seed=11)[0]["y"] * w).sum())  # noqa: E731
    d = rng.normal(size=x.shape)
    eps = 1e-6   # central differences in float64: error ~eps² + 1e-16/eps, ~1e-10 relative here
    fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
    assert abs(float((g.inputs["x"] * d).sum()) - fd) <= 1e-7 * max(1.0, abs(fd))


def test_a_resumed_trainer_draws_the_dropout_masks_the_saved_one_would_have(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 16, 3)), rng.normal(size=(8, 16, 2))

    def make(seed=0):
        comp = rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 3), merge="sum"), rc.cells.elman(3, 4, 2)], dropout=0.3)
        return rc.Trainer(comp, rc.Adam(1e-2), backend="native", dtype="float64", seed=seed)

    a = make()
    for _ in range(2):  # two calls, as below (the orders of fit(epochs=2) either way)
        a.fit(x, y, epochs=1, batch_size=8, verbose=0)
    c = resumed(make, x, y, tmp_path / "t.ckpt", 1, 1, batch_size=8)
    np.testing.assert_array_equal(a.flat, c.flat)
    # the trainer's seed reaches the masks: two seeds, two runs
    d, e = make(seed=1), make(seed=2)
    d.fit(x, y, epochs=1, batch_size=8, verbose=0)
    e.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(d.model.rng.random(4), e.model.rng.random(4))


def test_rows_of_a_batch_drop_what_the_whole_batch_drops():
    """``dropout_rows=(first, B)`` (what MPI ranks and micro-batches pass): a call on some rows
    drops those rows' units of a call on all B, inside the bidirectional layer too, and leaves
    the generator where the whole call does."""
    comp = rc.Stack([_bi_dropout(), rc.cells.elman(2, 4, 2)], dropout=0.3)
    m = rc.compile(comp, backend="numpy", dtype="float64", seed=3)
    p, x = m.init_params(0), np.random.default_rng(1).normal(size=(6, 5, 3))
    start = m.rng.bit_generator.state
    whole = m.forward(p, {"x": x}, training=True)[0]["y"]
    after = m.rng.bit_generator.state
    for rows in (slice(0, 2), slice(2, 5), slice(4, 5)):
        m.rng.bit_generator.state = start
        part = m.forward(p, {"x": x[:, rows]}, training=True, dropout_rows=(rows.start, 5))[0]["y"]
        np.testing.assert_allclose(part, whole[:, rows], rtol=0, atol=1e-15)
        assert m.rng.bit_generator.state == after
    for bad in [(4, 5), (0,), (-1, 5), ("0", 5), (True, 5)]:
        with pytest.raises(CallError, match=r"dropout_rows must be \(first, B\)"):
            m.loss_and_grad(p, {"x": x[:, :2]}, {"target": np.zeros((6, 2, 2))}, dropout_rows=bad)


def test_a_pickled_model_keeps_its_dropout_generator():
    m = rc.compile(_bi_dropout(), backend="numpy")
    m.rng.random(7)
    again = pickle.loads(pickle.dumps(m))
    assert np.array_equal(again.rng.random(5), m.rng.random(5))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_loss_without_its_targets_is_an_error_not_zero_gradients(backend):
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    comp = rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.elman(3, 4, 2)])
    m = rc.compile(comp, backend=backend)
    with pytest.raises(CallError, match=r"stack\(gru, elman\): missing targets 'target' \(of its top layer\)"):
        m.loss_and_grad(m.init_params(0), {"x": x})
    with pytest.raises(CallError, match="targets must be a dict of arrays keyed by 'target', 'other', got list"):
        rc.compile(rc.Stack([rc.cells.gru(3, 4, 3), _two_targets()]), backend=backend).loss_and_grad(
            m.init_params(0), {"x": x}, [1, 2])
    tr = rc.Trainer(comp, rc.Adam(), backend=backend)
    with pytest.raises(CallError, match="missing targets 'target'"):
        tr.train_step({"x": x.astype(np.float32)}, None)


def _two_targets():
    import sympy as sp
    c = rc.Cell("two")
    x, h = c.input("x", 3), c.state("h", 2)
    c.update(h, sp.tanh(c.param("W", (2, 3)) @ x + c.param("U", (2, 2)) @ h))
    c.loss(rc.vsum((h.new - c.target("target", 2)) ** 2) + rc.vsum(h.new * c.target("other", 2)))
    return c


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_one_layer_stack_ends_each_sequence_at_its_length(backend):
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 2))
    m = rc.compile(rc.Stack([rc.cells.gru(3, 4, 2)]), backend=backend, dtype="float64")
    p = m.init_params(0)
    _, fin = m.forward(p, {"x": x}, lengths=[5, 2])
    loss, grads, fin_lg = m.loss_and_grad(p, {"x": x}, {"target": t}, lengths=[5, 2])
    np.testing.assert_allclose(fin_lg["l0.h"], fin["l0.h"], rtol=1e-13)
    alone = rc.compile(rc.cells.gru(3, 4, 2), backend=backend, dtype="float64")  # sequence 1, its 2 steps
    _, f1 = alone.forward({k[3:]: v for k, v in p.items()}, {"x": x[:2, 1:]})
    np.testing.assert_allclose(fin_lg["l0.h"][1], f1["h"][0], rtol=1e-13)
    # all lengths T: still the cell's own numbers, bit for bit
    a = m.loss_and_grad(p, {"x": x}, {"target": t}, lengths=[5, 5])
    b = alone.loss_and_grad({k[3:]: v for k, v in p.items()}, {"x": x}, {"target": t})
    assert a[0] == b[0] and all(np.array_equal(a[1]["l0." + k], v) for k, v in b[1].items())


def test_an_error_in_a_bidirectional_layer_names_its_direction():
    x, t = np.random.default_rng(0).normal(size=(5, 2, 3)), np.zeros((5, 2, 2))
    m = rc.compile(rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 4, 2)]), backend="native")
    P = m.init_params(0)
    for direction in ("fwd", "bwd"):
        p = dict(P)
        p[f"l0.{direction}.Wz"] = P[f"l0.{direction}.Wz"].copy()
        p[f"l0.{direction}.Wz"][1, 2] = np.nan
        with pytest.raises(CallError, match=rf"bidirectional\(gru\), layer {direction}: cell 'gru': "
                                            r"params\['Wz'\] contains nan at index \(1, 2\)"):
            m.loss_and_grad(p, {"x": x}, {"target": t})


@pytest.mark.parametrize("comp", [rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.elman(3, 4, 2)]),
                                  rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 4, 2)])],
                         ids=["stack", "bidirectional"])
def test_inputs_that_are_not_arrays_are_read_or_named(comp):
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    m = rc.compile(comp, backend="numpy", dtype="float64")
    p = m.init_params(0)
    y, _ = m.forward(p, {"x": x})
    y_list, _ = m.forward(p, {"x": x.tolist()})  # nested lists, as a cell's model reads them
    np.testing.assert_array_equal(y_list["y"], y["y"])
    for bad, msg in [(None, "inputs must be a dict of \\(T, B, n\\) arrays keyed by 'x', got NoneType"),
                     ({}, "missing inputs 'x'"), ({"x": x, "z": x}, "unknown inputs 'z'"),
                     ({"x": 1.0}, r"input 'x' must be time-major \(T, B, n\), got shape \(\)"),
                     ({"x": [[1.0], [1.0, 2.0]]}, "input 'x' \\(list\\) cannot be read as an array")]:
        with pytest.raises(CallError, match=msg):
            m.forward(p, bad)
        with pytest.raises(CallError, match=msg):
            m.loss_and_grad(p, bad, {"target": np.zeros((5, 2, 2))})


def test_flags_and_seeds_that_are_not_what_they_say_are_refused():
    comp = rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.elman(3, 4, 2)], dropout=0.5)
    m = rc.compile(comp, backend="numpy")
    p, x = m.init_params(0), np.zeros((5, 2, 3))
    with pytest.raises(CallError, match="training must be True, False or None, got 'no'"):
        m.forward(p, {"x": x}, training="no")
    with pytest.raises(CallError, match="training must be True, False or None, got 'False'"):
        m.vjp(p, {"x": x}, d_outputs={"y": np.ones((5, 2, 2))}, training="False")
    with pytest.raises(CallError, match="seed must be an int .*, got 'a'"):
        rc.compile(comp, backend="numpy", seed="a")
    with pytest.raises(CallError, match="parallel must be True, False or None .*, got 'maybe'"):
        rc.compile(comp, backend="numpy", parallel="maybe")
    with pytest.raises(CallError, match=r"stack\(gru, elman\): lengths must lie in 1 … 5"):
        m.forward(p, {"x": x}, lengths=[0, 5])


@pytest.mark.parametrize("memory", [rc.Every(3), rc.Binomial(2)], ids=["every3", "binomial2"])
def test_a_composition_under_a_memory_schedule_equals_storing_all_to_rounding(memory):
    # docs/memory.md: to rounding, not bit for bit (each layer's kept forward computes its
    # input's cotangent, whose sums a schedule orders per leaf)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(9, 2, 3)), rng.normal(size=(9, 2, 2))
    comp = rc.Stack([rc.Bidirectional(rc.cells.lstm(3, 4, 3), merge="sum"), rc.cells.gru(3, 4, 2)])
    a = rc.compile(comp, backend="native", dtype="float64")
    b = rc.compile(comp, backend="native", dtype="float64", memory=memory)
    p = a.init_params(0)
    (la, ga, fa), (lb, gb, fb) = (m.loss_and_grad(p, {"x": x}, {"target": t}, lengths=[9, 5]) for m in (a, b))
    assert abs(la - lb) <= 1e-14 * abs(la)
    for k in ga:  # float64: each sum reordered, a few ulp of the largest entry
        np.testing.assert_allclose(gb[k], ga[k], rtol=0, atol=1e-13 * max(1.0, np.abs(ga[k]).max()), err_msg=k)
    for k in fa:
        np.testing.assert_array_equal(fb[k], fa[k])


class _Counting:
    """A generator that counts its ``random`` calls."""

    def __init__(self, gen):
        self.gen, self.bit_generator, self.calls = gen, gen.bit_generator, 0

    def random(self, *args, **kw):
        self.calls += 1
        return self.gen.random(*args, **kw)


def _same_state(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.MT19937])
@pytest.mark.parametrize("half", [False, True], ids=["", "buffered-uint32"])
def test_a_slice_of_rows_skips_the_other_rows_draws_exactly(bitgen, half):
    """A rank's share of a dropout mask (rows first … first+b-1 of B) drew all B rows' numbers:
    R·k times the work under R ranks and k micro-batches (17 ms for one (100, 64, 512) wire where
    its 16 rows take 4).  With PCG64 the other rows' draws are now skipped (``advance``): the same
    numbers and the same generator state after as drawing all B, for every bit generator (the
    ones without a per-draw advance, or with a buffered 32-bit half, draw all B as before)."""
    from rnncomp.compose.run import Ctx, uniform
    advanced = []
    for shape, rows in [((50, 3, 700), (5, 16)), ((40, 5, 513), (11, 16)), ((40, 5, 513), (0, 16)),
                        ((7, 2, 3), (1, 4))]:
        g1, g2 = np.random.Generator(bitgen(5)), np.random.Generator(bitgen(5))
        if half:
            g1.integers(0, 9, size=1, dtype=np.uint32)
            g2.integers(0, 9, size=1, dtype=np.uint32)
        whole = g1.random((shape[0], rows[1]) + shape[2:])[:, rows[0]:rows[0] + shape[1]]
        spy = _Counting(g2)
        part = uniform(Ctx(None, spy, True, rows), shape)
        advanced.append(spy.calls == shape[0])   # one draw per step's rows, the rest skipped
        assert np.array_equal(whole, part)
        assert _same_state(g1.bit_generator.state, g2.bit_generator.state)
        assert np.array_equal(g1.random(4), g2.random(4))
    skips = bitgen.__name__.startswith("PCG64") and not half
    assert advanced == [skips, skips, skips, False]   # the last one is too small to skip


@pytest.mark.parametrize("d_outputs", [np.ones((4, 3, 2)), [np.ones((4, 3, 2))], "y"])
def test_a_vjp_cotangent_that_is_not_a_dict_is_named(d_outputs):
    """An array for d_outputs failed in the composition's vjp with NumPy's "The truth value of
    an array with more than one element is ambiguous"; a plain cell's vjp names it."""
    model = rc.compile(rc.Stack([rc.cells.elman(2, 3, 2), rc.cells.elman(2, 3, 2)]))
    with pytest.raises(rc.CallError, match=r"stack\(elman, elman\)'?: d_outputs must be a dict keyed by 'y', got "):
        model.vjp(model.init_params(0), np.ones((4, 3, 2)), d_outputs=d_outputs)
