"""Values the training API cannot take are refused where they are given, by an error naming
the class or function, the option and the value (found by an adversarial probe: each of
these was accepted and trained to a wrong result, or failed later with a raw traceback or a
message blaming something else)."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import ArgumentError

NAN, INF = float("nan"), float("inf")

BAD_OPTIMIZERS = [
    (lambda: rc.Adam(NAN), r"Adam: lr must be a finite number > 0, got nan"),
    (lambda: rc.Adam(INF), r"Adam: lr must be a finite number > 0, got inf"),
    (lambda: rc.Adam("0.1"), r"Adam: lr must be a finite number > 0, got '0.1'"),
    (lambda: rc.SGD(0.0), r"SGD: lr must be a finite number > 0, got 0.0"),
    (lambda: rc.Adam(1e-2, betas=(1.0, 0.999)), r"Adam: betas\[0\] must be a finite number in \[0, 1\), got 1.0"),
    (lambda: rc.Adam(1e-2, betas=(0.9, 1.5)), r"Adam: betas\[1\] must be a finite number in \[0, 1\), got 1.5"),
    (lambda: rc.Adam(1e-2, betas=0.9), r"Adam: betas must be a pair \(beta1, beta2\), got 0.9"),
    (lambda: rc.AdamW(1e-2, eps=0.0), r"AdamW: eps must be a finite number > 0, got 0.0"),
    (lambda: rc.RMSprop(1e-2, eps=-1e-8), r"RMSprop: eps must be a finite number > 0, got -1e-08"),
    (lambda: rc.RMSprop(1e-2, alpha=1.0), r"RMSprop: alpha must be a finite number in \[0, 1\), got 1.0"),
    (lambda: rc.Adagrad(1e-2, eps=NAN), r"Adagrad: eps must be a finite number > 0, got nan"),
    (lambda: rc.SGD(0.1, momentum=-1.5), r"SGD: momentum must be a finite number in \[0, 1\), got -1.5"),
    (lambda: rc.SGD(0.1, momentum=1.0), r"SGD: momentum must be a finite number in \[0, 1\), got 1.0"),
    (lambda: rc.SGD(0.1, weight_decay=-5.0), r"SGD: weight_decay must be a finite number >= 0, got -5.0"),
    (lambda: rc.AdamW(0.1, weight_decay=INF), r"AdamW: weight_decay must be a finite number >= 0, got inf"),
    (lambda: rc.Adam(0.1, schedule=0.5), r"Adam: schedule must be a function of the step .* got 0.5"),
    (lambda: rc.schedules.ExponentialDecay("0.5"), r"ExponentialDecay: rate must be a finite number in \(0, 1\]"),
    (lambda: rc.schedules.ExponentialDecay(NAN), r"ExponentialDecay: rate must be a finite number in \(0, 1\]"),
    (lambda: rc.schedules.Cosine(10, floor=NAN), r"Cosine: floor must be a finite number in \[0, 1\], got nan"),
    (lambda: rc.DNI(lr="1e-3"), r"DNI: lr must be a finite number > 0, got '1e-3'"),
    (lambda: rc.DNI(gamma=1.5), r"DNI: gamma must be a finite number in \[0, 1\], got 1.5"),
    (lambda: rc.schedules.Warmup(2.5), r"Warmup: steps must be a positive integer, got 2.5"),
]


@pytest.mark.parametrize("make, message", BAD_OPTIMIZERS, ids=[m for _, m in BAD_OPTIMIZERS])
def test_optimizer_options_are_checked_when_given(make, message):
    with pytest.raises(ArgumentError, match=message):
        make()


def test_optimizer_edge_values_that_mean_something_are_accepted():
    rc.SGD(0.1, momentum=0.0, weight_decay=0.0)
    rc.Adam(1e-3, betas=(0.0, 0.0), eps=1e-12)
    rc.Adam(np.float32(1e-3), betas=np.array([0.9, 0.999]))
    rc.RMSprop(1e-3, alpha=0.0)
    rc.schedules.ExponentialDecay(1.0, every=np.int64(3))
    s = rc.schedules.ExponentialDecay(1.0, every=np.int64(3))
    assert type(s.every) is int and s.to_dict() == {"name": "ExponentialDecay", "rate": 1.0, "every": 3, "smooth": False}


def _elman():
    return rc.cells.elman(2, 3, 1)


@pytest.mark.parametrize("kw, message", [
    ({"clip_norm": -1.0}, r"Trainer: clip_norm must be a finite number > 0, got -1.0 \(None: no clipping\)"),
    ({"clip_norm": 0.0}, r"Trainer: clip_norm must be a finite number > 0, got 0.0 \(None: no clipping\)"),
    ({"clip_norm": NAN}, r"Trainer: clip_norm must be a finite number > 0, got nan"),
    ({"clip_norm": "1"}, r"Trainer: clip_norm must be a finite number > 0, got '1'"),
    ({"clip_value": -1.0}, r"Trainer: clip_value must be a finite number > 0, got -1.0"),
    ({"clip_value": 0}, r"Trainer: clip_value must be a finite number > 0, got 0"),
    ({"clip_value": INF}, r"Trainer: clip_value must be a finite number > 0, got inf"),
    ({"optimizer": "adam"}, r"Trainer: optimizer must be an rc\.Optimizer \(rc\.Adam\(1e-3\), rc\.SGD\(\.\.\.\), \.\.\.\), got 'adam'"),
    ({"accumulate": 0}, r"Trainer: accumulate must be a positive integer, got 0"),
])
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_trainer_options_are_checked_when_given(kw, message, backend):
    """A negative clip_norm flipped the gradient (training climbed), clip_value < 0 replaced
    every element by -|c|, clip_norm = 0 froze training: on both update paths."""
    with pytest.raises(ArgumentError, match=message):
        rc.Trainer(_elman(), backend=backend, dtype="float64", cache=None, **kw) if backend == "native" \
            else rc.Trainer(_elman(), backend=backend, dtype="float64", **kw)


def test_clip_options_that_are_numbers_of_numpy_are_kept_as_floats():
    tr = rc.Trainer(_elman(), backend="numpy", clip_norm=np.float32(0.5), clip_value=2)
    assert (tr.clip_norm, tr.clip_value) == (0.5, 2.0) and type(tr.clip_norm) is float


def _data(T=6, N=4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(T, N, 2)), rng.normal(size=(T, N, 1))


def _trainer(**kw):
    return rc.Trainer(_elman(), rc.Adam(1e-2), backend="numpy", dtype="float64", **kw)


@pytest.mark.parametrize("call", ["fit", "evaluate", "fit_online"])
def test_inputs_and_targets_must_hold_the_same_sequences_and_steps(call):
    """fit with 4 input sequences and 3 targets was a raw IndexError; 3 and 4 silently
    ignored the 4th target."""
    x, y = _data()
    run = lambda tr, a, b: getattr(tr, call)(a, b, **({"verbose": 0} if call == "fit" else {}))  # noqa: E731
    tr = _trainer()
    p0 = tr.flat.copy()
    with pytest.raises(rc.CallError, match=rf"^{call}: targets\['target'\] has shape \(6, 3, 1\), but inputs\['x'\] "
                                           r"has \(6, 4, 2\): every input and target needs the same N \(sequences\)"):
        run(tr, x, y[:, :3])
    with pytest.raises(rc.CallError, match=r"targets\['target'\] has shape \(6, 4, 1\), but inputs\['x'\] has \(6, 3, 2\)"):
        run(tr, x[:, :3], y)
    with pytest.raises(rc.CallError, match=r"targets\['target'\] has shape \(5, 4, 1\), but inputs\['x'\] has "
                                           r"\(6, 4, 2\): every input and target needs the same T \(steps\)"):
        run(tr, x, y[:5])
    with pytest.raises(rc.CallError, match=rf"^{call}: inputs\['x'\] has shape \(6, 0, 2\): no sequences"):
        run(tr, x[:, :0], y[:, :0])
    with pytest.raises(rc.CallError, match=rf"^{call}: inputs\['x'\] has shape \(6, 2\), expected \(T, N, n\)"):
        run(tr, x[:, 0], y[:, 0])
    np.testing.assert_array_equal(tr.flat, p0)


def test_batch_first_errors_show_the_shapes_as_given():
    x, y = _data()
    tr = _trainer(batch_first=True)
    bf = lambda a: np.swapaxes(a, 0, 1)  # noqa: E731
    with pytest.raises(rc.CallError, match=r"^fit: targets\['target'\] has shape \(3, 6, 1\), but inputs\['x'\] has "
                                           r"\(4, 6, 2\): every input and target needs the same N \(sequences\)"):
        tr.fit(bf(x), bf(y[:, :3]), verbose=0)
    with pytest.raises(rc.CallError, match=r"^predict: inputs\['x'\] has shape \(6,\), expected \(N, T, n\)"):
        tr.predict(x[:, 0, 0])
    with pytest.raises(rc.CallError, match=r"^predict: inputs\['x'\] has shape \(4, 6\), expected \(N, T, n\)"):
        tr.predict(bf(x[..., 0]))


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_nan_in_the_data_is_named_where_the_caller_put_it(batch_first):
    """Found by an adversarial probe: the index was the one inside the shuffled batch (and,
    under MPI, inside the rank's shard), not in the data given to fit."""
    x, y = _data()
    x[3, 2, 1] = np.nan
    y[2, 3, 0] = np.inf
    tr = _trainer(batch_first=batch_first)
    bf = (lambda a: np.swapaxes(a, 0, 1)) if batch_first else (lambda a: a)  # noqa: E731
    where = r"\(2, 3, 1\)" if batch_first else r"\(3, 2, 1\)"
    with pytest.raises(rc.CallError, match=rf"^fit: inputs\['x'\] contains nan at index {where}$"):
        tr.fit(bf(x), bf(y), batch_size=2, verbose=0, seed=1)
    x[3, 2, 1] = 0
    with pytest.raises(rc.CallError, match=r"^evaluate: targets\['target'\] contains inf at index "
                                           + (r"\(3, 2, 0\)$" if batch_first else r"\(2, 3, 0\)$")):
        tr.evaluate(bf(x), bf(y))


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, r"^fit: batch_size must be a positive integer, got 0$"),
    ({"batch_size": -1}, r"^fit: batch_size must be a positive integer, got -1$"),
    ({"batch_size": 2.0}, r"^fit: batch_size must be a positive integer, got 2.0$"),
    ({"epochs": -1}, r"^fit: epochs must be an integer >= 0, got -1$"),
    ({"shuffle": "yes"}, r"^fit: shuffle must be True or False, or None \(True unless stateful\), got 'yes'$"),
    ({"shuffle": 0}, r"^fit: shuffle must be True or False, or None \(True unless stateful\), got 0$"),
    ({"stateful": "no"}, r"^fit: stateful must be True or False, got 'no'$"),
])
def test_fit_batch_size_and_epochs_are_checked(kw, message):
    """batch_size=0 was range()'s ValueError; -1 trained nothing and returned [nan]; shuffle="yes"
    and stateful="no" were read as true (user review s25)."""
    x, y = _data()
    tr = _trainer()
    with pytest.raises(ArgumentError, match=message):
        tr.fit(x, y, verbose=0, **kw)
    assert tr.step_count == 0 and tr.history == []


@pytest.mark.parametrize("kw, message", [
    ({"window": -1}, r"^evaluate: window must be a positive integer, got -1 \(None: all steps at once\)$"),
    ({"window": 0}, r"^evaluate: window must be a positive integer, got 0"),
    ({"batch_size": -2}, r"^evaluate: batch_size must be a positive integer, got -2 \(None: all sequences at once\)$"),
])
def test_evaluate_pieces_are_checked(kw, message):
    """Both were "evaluate: the mask selects no step"."""
    x, y = _data()
    with pytest.raises(ArgumentError, match=message):
        _trainer().evaluate(x, y, **kw)


def test_fit_online_every_is_checked():
    x, y = _data()
    with pytest.raises(ArgumentError, match=r"^fit_online: every must be a positive integer, got 0 \(steps per update\)$"):
        _trainer().fit_online(x, y, every=0)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("make", [lambda: rc.SGD(0.01, momentum=0.5), lambda: rc.Adam(0.01)], ids=["sgd", "adam"])
def test_an_update_that_makes_a_parameter_non_finite_is_named_and_stops_training(backend, make):
    """README: "NaN/Inf stops with the step and parameter named".  A finite gradient times a
    learning rate beyond float32's range made W -inf; the update was kept and the next step
    blamed the caller ("params['W'] contains -inf").  Now the update is named, and so is it
    by every later step until the parameters are finite again (train/apply.py says why it is
    not undone)."""
    x, y = _data(T=8, N=6)
    kw = {"cache": None} if backend == "native" else {}
    tr = rc.Trainer(_elman(), make(), backend=backend, dtype="float32", **kw)
    tr.fit(x, y, epochs=1, batch_size=6, verbose=0)       # one good step: optimizer state that is not 0
    good = tr.flat.copy()
    tr.optimizer.lr = 1e39                                 # beyond float32 (as SGD(1e39) from the start)
    named = r"^step 2: the update made parameter 'W' non-finite \(-?inf at index \(\d+, \d+\)\) from a finite gradient"
    with pytest.raises(rc.TrainingError, match=named + r" \(a learning rate too large for float32\?\)$"):
        tr.fit(x, y, epochs=1, batch_size=6, verbose=0)
    assert tr.step_count == 1
    tr.optimizer.lr = 0.01
    for again in (lambda: tr.fit(x, y, epochs=1, batch_size=6, verbose=0), lambda: tr.fit_online(x, y)):
        with pytest.raises(rc.TrainingError, match=named + r".*; the parameters still hold it: load a checkpoint"):
            again()
    tr.flat[:] = good                                      # finite parameters: training goes on
    tr.fit(x, y, epochs=1, batch_size=6, verbose=0)
    assert tr.step_count == 2 and np.isfinite(tr.flat).all()


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_fit_online_names_a_non_finite_update_too(backend, monkeypatch):
    """fit_online updates as a training step does: through the trainer's compiled update where it
    has one (the native backend's), NumPy's optimizer otherwise; a bad update is named either way."""
    x, y = _data(T=8, N=2)
    tr = rc.Trainer(_elman(), rc.SGD(1e39), gradient=rc.RTRL(), backend=backend, dtype="float32")
    assert (tr._update is not None) == (backend == "native")
    calls = []
    if tr._update is not None:
        compiled = tr._update
        monkeypatch.setattr(tr, "_update", lambda *a: calls.append(1) or compiled(*a))
    with np.errstate(over="ignore"), pytest.raises(
            rc.TrainingError, match=r"^fit_online \(rc.RTRL\(\)\), update 1: the update made parameter '\w+' non-finite"):
        tr.fit_online(x, y, every=4)
    assert tr.step_count == 0 and len(calls) == (backend == "native")


def test_trainer_params_missing_or_misshaped_are_named():
    """Trainer(cell, params={}) was a bare KeyError: 'W'."""
    p = _elman().init_params(0)
    with pytest.raises(rc.CallError, match=r"^cell 'elman': missing params 'W', 'U', 'b', 'V', 'by'$"):
        rc.Trainer(_elman(), params={}, backend="numpy")
    with pytest.raises(rc.CallError, match=r"^cell 'elman': missing params 'b'$"):
        rc.Trainer(_elman(), params={k: v for k, v in p.items() if k != "b"}, backend="numpy")
    with pytest.raises(rc.CallError, match=r"^cell 'elman': params\['W'\] has shape \(3,\), expected \(3, 2\)$"):
        rc.Trainer(_elman(), params={**p, "W": np.zeros(3)}, backend="numpy")
    with pytest.raises(rc.CallError, match=r"^cell 'elman': unknown params 'w'"):
        rc.Trainer(_elman(), params={**p, "w": np.zeros(3)}, backend="numpy")
    with pytest.raises(rc.CallError, match=r"^params\['W'\] cannot be read as float32 numbers"):
        rc.Trainer(_elman(), params={**p, "W": np.full((3, 2), "a")}, backend="numpy")
    with pytest.raises(rc.CallError, match=r"^cell 'elman': params must be a dict of arrays"):
        rc.Trainer(_elman(), params=[1.0], backend="numpy")


def _no_param_cell():
    import sympy as sp
    c = rc.Cell("noparam")
    x, h = c.input("x", 2), c.state("h", 2)
    c.update(h, sp.tanh(x + 0.5 * h))
    c.loss(rc.vsum((h.new - c.target("t", 2)) ** 2))
    return c


def test_sequence_grad_of_a_cell_without_parameters_is_its_loss_and_no_gradient():
    """SnAp(1, sparse=True) on the NumPy executor said "need at least one array to
    concatenate"; RTRL, dense SnAp and UORO return the loss and {}."""
    from rnncomp.algorithms import sequence_grad
    x, t = {"x": np.ones((4, 2, 2))}, {"t": np.ones((4, 2, 2))}
    ref = sequence_grad(rc.RTRL(), _no_param_cell(), {}, x, t)
    for algo in (rc.SnAp(1, sparse=True), rc.SnAp(2, sparse=True)):
        loss, grads, final = sequence_grad(algo, _no_param_cell(), {}, x, t)
        assert loss == pytest.approx(ref[0], rel=1e-14) and grads == {}
        np.testing.assert_allclose(final["h"], ref[2]["h"], rtol=1e-14)


def test_explain_refuses_snap0_as_snap_does():
    with pytest.raises(ArgumentError, match=r"^SnAp\(n=0\): n must be a positive integer, got 0 \(SnAp-1, SnAp-2, \.\.\.\)$"):
        rc.SnAp(0)
    with pytest.raises(ArgumentError, match=r"^SnAp\(n=0\): n must be a positive integer, got 0 \(SnAp-1, SnAp-2, \.\.\.\)$"):
        rc.explain(_elman(), algorithm="snap0")
    assert "SnAp-2" in str(rc.explain(_elman(), algorithm="snap2"))


def test_sequence_grad_and_uoro_arguments_are_named():
    from rnncomp.algorithms import sequence_grad
    cell, x, y = _elman(), np.ones((4, 2, 2)), np.ones((4, 2, 1))
    p = cell.init_params(0)
    with pytest.raises(ArgumentError, match=r"^sequence_grad: algorithm must be rc\.RTRL\(\), rc\.SnAp\(n\) or "
                                            r"rc\.UORO\(\), got None$"):
        sequence_grad(None, cell, p, x, y)
    with pytest.raises(ArgumentError, match=r"^UORO: seed must be an integer >= 0, got 'a'$"):
        rc.UORO(seed="a")
    with pytest.raises(ArgumentError, match=r"^UORO: seed must be an integer >= 0, got -1$"):
        rc.UORO(seed=-1)
    with pytest.raises(ArgumentError, match=r"^sequence_grad: dtype must be float32 or float64, got int64$"):
        sequence_grad(rc.RTRL(), cell, p, x, y, dtype="int64")


def test_predict_returns_a_dict_for_a_single_output_as_its_docstring_says():
    """The docstring said "an array for a single output"; docs/dsl.md, examples/jordan.py and
    the tests read out["y"]: the docstring now says a dict."""
    tr = _trainer()
    x = np.zeros((5, 2, 2))
    for kw in ({}, {"lengths": np.array([5, 2])}):
        out, final = tr.predict(x, **kw)
        assert list(out) == ["y"] and out["y"].shape == (5, 2, 1) and final["h"].shape == (2, 3)
    assert "a dict, for a single output too" in rc.Trainer.predict.__doc__


@pytest.mark.parametrize("mask", [np.zeros((6, 4)), np.zeros(6), np.full(6, np.nan), np.full(6, -1.0)])
def test_fit_refuses_a_mask_that_selects_no_step(mask):
    """fit skipped every batch and returned an epoch loss of NaN, without a word (an all-zero mask;
    a NaN one skipped every batch too, and evaluate divided by a weight of 0)."""
    x, y = _data()
    tr = _trainer()
    with pytest.raises(rc.CallError, match=r"^fit: the mask must be finite and non-negative, and select a step"):
        tr.fit(x, y, mask=mask, verbose=0)
    with pytest.raises(rc.CallError, match=r"^evaluate: the mask must be .* and select a step"):
        tr.evaluate(x, y, mask=mask)
    assert tr.history == []


@pytest.mark.parametrize("bptt", [5, "trunc", (5, 10)])
def test_trainer_bptt_must_be_a_truncation(bptt):
    """An int or a string was taken and failed at the first fit with "'int' object has no attribute 'k1'"."""
    with pytest.raises(ArgumentError, match=r"^Trainer: bptt must be None \(full BPTT\) or rc\.Truncated\(k1, k2\), got "):
        _trainer(bptt=bptt)


@pytest.mark.parametrize("k1, k2", [(True, None), (2, True), ("5", None)])
def test_truncated_takes_integers_not_booleans_or_strings(k1, k2):
    """Truncated(True) was Truncated(k1=True, k2=True): a window of one step."""
    with pytest.raises(ArgumentError, match=rf"^Truncated\(k1={k1!r}, k2={k2!r}\): need integers k2 >= k1 >= 1$"):
        rc.Truncated(k1, k2)


@pytest.mark.parametrize("steps, pick, message", [
    (3, "argmax", r"^generate: pick must be a function pick\(outputs, rng\) -> the next input, got 'argmax'$"),
    ("3", lambda out, rng: out, r"^generate: steps must be an integer >= 0, got '3'$"),
    (-1, lambda out, rng: out, r"^generate: steps must be an integer >= 0, got -1$"),
])
def test_generate_names_a_bad_pick_or_steps(steps, pick, message):
    """Were "'str' object is not callable", "'str' object cannot be interpreted as an integer";
    steps=-1 returned nothing without a word."""
    with pytest.raises(ArgumentError, match=message):
        _trainer().generate(np.zeros((2, 1, 2)), steps, pick)
