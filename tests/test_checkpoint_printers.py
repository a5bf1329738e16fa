"""A checkpoint written before a change of the printer still loads: its fingerprint is the cell's
printed text, and printing products grouped (``(U·x[t])**2``, ``M*(W·A)``) and a loss of one
unit without its Σ (``ℓ[t] = Σ h[t]``) changed the text of such cells and the generated names of
their derived weights.  The old texts below are what the printer before wrote (commit 5793df1)."""
import json
import pickle

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.train import checkpoint as ck


def products():
    c = rc.Cell("p")
    x, h = c.input("x", 4), c.state("h", 4)
    W, U = c.param("W", (4, 4)), c.param("U", (4, 4))
    c.update(h, sp.tanh(W @ h) ** 2 + x / (W @ h + 3) + (U @ x) ** 2 + 2 * (W @ h) ** 3 - U @ h)
    c.loss(rc.vsum(h.new))
    return c


def weights():
    c = rc.Cell("weights")
    x, h = c.input("x", 3), c.state("h", 4)
    W, A = c.param("W", (4, 4)), c.param("A", (4, 4))
    M = c.const("M", np.tril(np.ones((4, 4))))
    c.update(h, sp.tanh((W * M) @ h + (W @ W.T / 4) @ h + ((W @ A) * M) @ h))
    c.loss(rc.vsum(h.new) ** 2)
    return c


OLD = {  # cell -> (its text before, {a derived weight's generated name now: before})
    products: ("cell 'p'\n  inputs:  x[t] ∈ R^4\n  states:  h ∈ R^4 (h[0] = 0)\n"
               "  params:  W ∈ R^4×4, U ∈ R^4×4\n"
               "  h[t] = x[t]/(W·h[t-1] + 3) + tanh(W·h[t-1])**2 - U·h[t-1] + U·x[t]**2 + 2*W·h[t-1]**3\n"
               "  ℓ[t] = Σ Σ h[t]", {}),
    weights: ("cell 'weights'\n  inputs:  x[t] ∈ R^3\n  states:  h ∈ R^4 (h[0] = 0)\n"
              "  params:  W ∈ R^4×4, A ∈ R^4×4\n  consts:  M ∈ R^4×4 (fixed)\n"
              "  derived weights (computed once per call, before the loop):\n"
              "    (W·Wᵀ/4) = W·Wᵀ/4\n    (M*W) = M*W\n    (M*W·A) = M*W·A\n"
              "  h[t] = tanh((M*W)·h[t-1] + (M*W·A)·h[t-1] + (W·Wᵀ/4)·h[t-1])\n"
              "  ℓ[t] = Σ (Σ h[t])**2", {"((W·Wᵀ)/4)%": "(W·Wᵀ/4)%", "(M*(W·A))%": "(M*W·A)%"}),
}


def _old_checkpoint(tmp_path, make):
    """A checkpoint of ``make()`` as the printer before wrote it: its text, its record's names."""
    text, names = OLD[make]
    cell = make()
    assert str(cell) != text                       # the printer changed this cell's text
    path = tmp_path / f"{make.__name__}.ckpt"
    rc.Trainer(cell, backend="numpy", dtype="float64").save(path)
    meta, arrays = ck.read(path)
    record = json.dumps(meta["cell"], ensure_ascii=False)
    for now, before in names.items():
        assert now in record
        record = record.replace(now, before)
    meta["cell"], meta["fingerprint"] = json.loads(record), text
    ck.write(path, meta, arrays)
    return path, cell


@pytest.mark.parametrize("make", [products, weights])
def test_a_checkpoint_the_printer_before_wrote_still_loads(tmp_path, make):
    path, cell = _old_checkpoint(tmp_path, make)
    again = rc.Trainer.load(path)                          # rebuilt from its record
    assert again.cell.step.params == cell.step.params
    given = rc.Trainer.load(path, cell=cell)               # the same declaration, given
    assert given.cell is cell and given.step_count == 0
    np.testing.assert_array_equal(given.flat, again.flat)


def test_another_cell_or_a_damaged_record_is_still_refused(tmp_path):
    path, _ = _old_checkpoint(tmp_path, weights)
    other = rc.Cell("weights")                             # W @ A where it was W * A inside
    x, h = other.input("x", 3), other.state("h", 4)
    W, A = other.param("W", (4, 4)), other.param("A", (4, 4))
    M = other.const("M", np.tril(np.ones((4, 4))))
    other.update(h, sp.tanh((W * M) @ h + (W @ W.T / 4) @ h + ((W * A) * M) @ h))
    other.loss(rc.vsum(h.new) ** 2)
    with pytest.raises(rc.CheckpointError, match="other equations"):
        rc.Trainer.load(path, cell=other)
    meta, arrays = ck.read(path)
    meta["cell"]["updates"]["h"] = meta["cell"]["updates"]["h"].replace("tanh(", "sin(")
    ck.write(path, meta, arrays)
    with pytest.raises(rc.CheckpointError, match="other equations"):
        rc.Trainer.load(path)


def test_a_format_1_pickle_with_the_old_text_loads_with_its_cell_given(tmp_path):
    cell = products()
    params = cell.init_params(1, "float64")
    opt = rc.Adam(0.02)
    opt.init(np.concatenate([v.ravel() for v in params.values()]))
    blob = {"format": 1, "cell": cell, "fingerprint": OLD[products][0], "params": params, "optimizer": opt,
            "step": 3, "history": [0.5], "batch_history": [], "update": "numpy",
            "options": {"clip_norm": None, "clip_value": None, "bptt": None}}
    (tmp_path / "old.ckpt").write_bytes(pickle.dumps(blob))
    tr = rc.Trainer.load(tmp_path / "old.ckpt", cell=products(), backend="numpy", dtype="float64")
    assert tr.step_count == 3
    np.testing.assert_array_equal(tr.params["W"], params["W"])
