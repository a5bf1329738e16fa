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
