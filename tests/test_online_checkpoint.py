"""``Trainer(gradient=...)`` in the portable checkpoint (issue #20): each algorithm with its
options round-trips, and DNI's trained synthetic-gradient module with it, so that training
resumed from the file goes on exactly as the saved trainer would (the reference: the saved
trainer itself, continued on the same stream; equal to the last bit, float64, same executor)."""
import json
import zipfile

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.algorithms import Algorithm
from rnncomp.train import checkpoint as ck

ALGORITHMS = [rc.RTRL(max_bytes=123456789), rc.SnAp(2, sparse=False), rc.SnAp(1), rc.UORO(seed=7),
              rc.DNI(lr=2e-3, gamma=0.5), rc.BPTT()]


def _stream(T=24, B=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(T, B, 1))
    y = np.zeros_like(x)
    y[2:] = x[:-2]
    return x, y


@pytest.mark.parametrize("gradient", ALGORITHMS, ids=repr)
def test_gradient_round_trips_and_training_resumes_identically(gradient, tmp_path):
    x, y = _stream()
    tr = rc.Trainer(rc.cells.elman(1, 4, 1), optimizer=rc.Adam(0.01), gradient=gradient,
                    backend="numpy", dtype="float64", clip_norm=1.0)
    tr.fit_online(x[:12], y[:12], every=3)
    path = tmp_path / "t.ckpt"
    tr.save(path)
    again = rc.Trainer.load(path)
    assert type(again.gradient) is type(gradient) and repr(again.gradient) == repr(gradient)
    assert vars(again.gradient).keys() == vars(gradient).keys()
    for k, v in vars(gradient).items():
        if k not in ("flat", "opt"):
            assert getattr(again.gradient, k) == v, k
    if isinstance(gradient, rc.DNI):  # the trained module and its Adam, not fresh ones
        assert gradient.module is not None and np.abs(gradient.module[0]).max() > 0 and gradient.updates == 3
        for a, b in zip(again.gradient.module, gradient.module):
            np.testing.assert_array_equal(a, b)
        for k, v in gradient.opt.state_dict().items():
            np.testing.assert_array_equal(again.gradient.opt.state_dict()[k], v)
    ref = tr.fit_online(x[12:], y[12:], every=3, continue_stream=True)  # states and sensitivities go on
    got = again.fit_online(x[12:], y[12:], every=3, continue_stream=True)
    assert got == ref
    np.testing.assert_array_equal(again.flat, tr.flat)


def test_no_gradient_and_an_override(tmp_path):
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64")
    tr.save(tmp_path / "a.ckpt")
    assert rc.Trainer.load(tmp_path / "a.ckpt").gradient is None
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64", gradient=rc.RTRL())
    tr.save(tmp_path / "b.ckpt")
    assert isinstance(rc.Trainer.load(tmp_path / "b.ckpt", gradient=rc.UORO(seed=3)).gradient, rc.UORO)


class _Mine(Algorithm):
    name = "mine"


def test_errors(tmp_path):
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64", gradient=_Mine())
    with pytest.raises(rc.CheckpointError, match=r"gradient=rc.mine\(\): _Mine is not an algorithm a checkpoint can name"):
        tr.save(tmp_path / "x.ckpt")
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64", gradient=rc.SnAp(2))
    path = tmp_path / "t.ckpt"
    tr.save(path)
    meta, arrays = ck.read(path)
    for gradient, message in [({"name": "KFRTRL", "config": {}}, "gradient algorithm 'KFRTRL' is not one"),
                              ({"name": "SnAp", "config": {"n": 0}}, r"options of gradient algorithm SnAp: SnAp\(n=0\)"),
                              ({"name": "UORO", "config": {"sed": 1}}, "options of gradient algorithm UORO")]:
        ck.write(path, dict(meta, gradient=gradient), arrays)
        with pytest.raises(rc.CheckpointError, match=message):
            rc.Trainer.load(path)
    ck.write(path, dict(meta, gradient={"name": "DNI", "config": {}}),
             dict(arrays, **{"gradient/A": np.zeros((3, 2)), "gradient/c": np.zeros(3)}))
    with pytest.raises(rc.CheckpointError, match=r"DNI's module has A \(3, 2\), c \(3,\)"):
        rc.Trainer.load(path)


def test_the_file_holds_no_pickle(tmp_path):
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64", gradient=rc.DNI())
    tr.fit_online(*_stream(T=9), every=3)
    tr.save(tmp_path / "t.ckpt")
    with zipfile.ZipFile(tmp_path / "t.ckpt") as z:
        meta = json.loads(np.load(z.open("__meta__.npy"), allow_pickle=False).item())
        assert meta["gradient"] == {"name": "DNI", "config": {"lr": 1e-3, "gamma": 1.0}, "updates": 2}
        for name in z.namelist():
            assert np.load(z.open(name), allow_pickle=False).dtype != object
