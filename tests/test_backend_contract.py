"""The backend contract (rnncomp/backends/base.py): every backend's model has the same public
methods with the same signatures, implements every hook, and gives the NumPy oracle's
numbers and the same named errors on a small cell.  The models that wrap another one
(derived weights, compositions) accept every argument of the contract."""
import inspect

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.backends.base import CONTRACT, BackendModel
from rnncomp.backends.derived import DerivedModel
from rnncomp.backends.native import NativeModel
from rnncomp.backends.numpy import NumpyModel
from rnncomp.backends.ptx import PtxModel
from rnncomp.compose.model import ComposedModel
from rnncomp.errors import CallError

from gradcheck import mask_and_h0, random_data

BACKENDS = {"numpy": NumpyModel, "native": NativeModel, "ptx": PtxModel}
OPTIONS = {"numpy": {}, "native": {}, "ptx": {"runner": "host"}}
T, B = 5, 3


def _signature(cls, name):
    return inspect.signature(getattr(cls, name))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_model_is_a_backend_model_with_the_contract_signatures(backend):
    cls = BACKENDS[backend]
    assert issubclass(cls, BackendModel)
    assert not inspect.isabstract(cls), sorted(cls.__abstractmethods__)
    assert cls.backend == backend
    for name in CONTRACT:
        assert _signature(cls, name) == _signature(BackendModel, name), name


def _call_with_every_argument(sig):
    """``sig.bind`` of every parameter of the contract method, by its kind."""
    positional, keywords = [], {}
    for p in list(sig.parameters.values())[1:]:  # self
        if p.kind is p.POSITIONAL_OR_KEYWORD:
            positional.append(p.name)
        elif p.kind is p.KEYWORD_ONLY:
            keywords[p.name] = None
    return positional, keywords


@pytest.mark.parametrize("wrapper", [DerivedModel, ComposedModel])
def test_the_wrapping_models_accept_every_argument_of_the_contract(wrapper):
    for name in CONTRACT:
        positional, keywords = _call_with_every_argument(_signature(BackendModel, name))
        _signature(wrapper, name).bind(None, *positional, **keywords)  # TypeError if one is refused


def _cell():
    """Elman with a learned initial state: every part of the contract has work to do."""
    cell = rc.Cell("contract")
    x, h = cell.input("x", 2), cell.state("h", 3, init="learn")
    W, U, b = cell.param("W", (3, 2)), cell.param("U", (3, 3)), cell.param("b", 3)
    cell.update(h, sp.tanh(W @ x + U @ h + b))
    y, t = cell.output("y", cell.param("V", (2, 3)) @ h.new), cell.target("t", 2)
    cell.loss((y - t) ** 2 / 2)
    return cell


def _close(a, b, what):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), what
        for k in a:
            _close(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, tuple):
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{what}[{i}]")
    else:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=what)


def _results(model, params, x, t, mask, d_out, d_fin):
    kept = model.forward(params, x, keep=True, targets=t, mask=mask)
    g = kept.backward(d_out, d_fin)
    v = model.vjp(params, x, d_outputs=d_out, d_final=d_fin)
    return {"forward": model.forward(params, x),
            "loss_and_grad": model.loss_and_grad(params, x, t, mask=mask),
            "kept": (kept.outputs, kept.final, kept.loss, g.params, g.inputs, g.h0, g.loss),
            "vjp": (v.params, v.inputs, v.h0)}


@pytest.mark.parametrize("backend", ["native", "ptx"])
def test_every_backend_gives_the_oracles_numbers(backend):
    cell = _cell()
    params, x, t = random_data(cell, T, B)
    mask, _ = mask_and_h0(cell, T, B)
    rng = np.random.default_rng(4)
    d_out, d_fin = {"y": rng.normal(size=(T, B, 2))}, {"h": rng.normal(size=(B, 3))}
    ref = _results(rc.compile(cell), params, x, t, mask, d_out, d_fin)
    got = _results(rc.compile(cell, backend=backend, **OPTIONS[backend]), params, x, t, mask, d_out, d_fin)
    for what in ref:
        _close(got[what], ref[what], f"{backend} {what}")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_raises_the_same_named_errors(backend):
    cell = _cell()
    model = rc.compile(cell, backend=backend, **OPTIONS[backend])
    params, x, t = random_data(cell, T, B)
    with pytest.raises(CallError, match=r"inputs\['x'\] has shape \(5, 3, 4\), expected \(5, 3, 2\)"):
        model.forward(params, {"x": np.zeros((T, B, 4))})
    with pytest.raises(CallError, match="targets"):
        model.loss_and_grad(params, x, None)
    nl = rc.Cell("noloss")
    xx, hh = nl.input("x", 2), nl.state("h", 2)
    nl.update(hh, rc.sigmoid(nl.param("W", (2, 2)) @ xx + hh))
    with pytest.raises(CallError, match=r"cell 'noloss' has no loss \(declare one with cell.loss\)"):
        rc.compile(nl, backend=backend, **OPTIONS[backend]).loss_and_grad(nl.init_params(seed=0), x, {})


@pytest.mark.parametrize("backend, option, value, message", [
    ("native", "hoist", "no", r"hoist must be True or False, got 'no'"),  # "no" switched the pass on
    ("native", "fuse", None, r"fuse must be True or False, got None"),
    ("native", "grad_after", "x", r"grad_after must be True or False or None \(chosen for you\), got 'x'"),
    ("ptx", "tiled", "no", r"tiled must be True or False, got 'no'"),
    ("ptx", "persistent", 1, r"persistent must be True or False or None \(chosen for you\), got 1"),
    ("ptx", "block", 0, r"block \(threads per block\) must be an integer from 1 to 1024, got 0"),  # ÷ 0 on a GPU
    ("ptx", "block", "256", r"block \(threads per block\) must be an integer from 1 to 1024, got '256'"),
    ("ptx", "device", -1, r"device \(a CUDA ordinal\) must be an integer >= 0, got -1"),
    ("ptx", "features", 3, r"features must be a string of LLVM target features"),  # a TypeError in subprocess
])
def test_an_option_value_a_backend_cannot_take_is_refused_by_rc_compile(backend, option, value, message):
    with pytest.raises(rc.ArgumentError, match=rf"^rc\.compile\(backend='{backend}'\): {message}"):
        rc.compile(rc.cells.elman(2, 3, 1), backend=backend, **{option: value})


def test_switches_of_numpy_booleans_and_none_where_it_means_automatic_are_taken():
    rc.compile(rc.cells.elman(2, 3, 1), backend="native", hoist=np.bool_(False), grad_after=None)
    rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host", persistent=None, block=128, device=0)
