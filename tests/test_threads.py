"""One model called from several threads at once gives each call its serial answer.

Issue #22: a PTX model's single arena and staging buffer were shared by concurrent calls
(losses from another thread's data; with another (T, B) the process died).  Every backend
is hammered from 4 threads with mixed shapes, training and forward calls interleaved, and
compared bit for bit with the same calls made one after another.  The PTX backend runs on
its host runner (the same kernels and launch plan on this CPU; no GPU needed), and on a GPU
where there is one (``ptx-cuda``, skipped otherwise).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rnncomp as rc

from gradcheck import mask_and_h0, random_data

SHAPES = [(3, 1), (25, 8), (2, 3), (17, 6), (9, 5), (1, 2)]  # (T, B)


def _calls(cell):
    out = []
    for i, (T, B) in enumerate(SHAPES):
        params, inputs, targets = random_data(cell, T=T, B=B, seed=i)
        mask, h0 = mask_and_h0(cell, T, B)
        out.append(("train", params, inputs, targets, mask if i % 2 else None, h0 if i % 3 else None))
        out.append(("forward", params, inputs, None, None, h0 if i % 2 else None))
    return out


def _run(model, call):
    kind, params, inputs, targets, mask, h0 = call
    if kind == "train":
        return model.loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
    return model.forward(params, inputs, h0=h0)


def _assert_same(a, b, rtol):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y, rtol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k], rtol)
    elif rtol == 0:
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    else:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=rtol)


MODELS = {
    "numpy": lambda cell: rc.compile(cell, backend="numpy"),
    "native": lambda cell: rc.compile(cell, backend="native", cache=None, threads=2),
    "ptx-host": lambda cell: rc.compile(cell, backend="ptx", runner="host", persistent=False),
    "ptx-host-persistent": lambda cell: rc.compile(cell, backend="ptx", runner="host"),
    "ptx-cuda": lambda cell: rc.compile(cell, backend="ptx", runner="cuda"),
}


@pytest.mark.parametrize("backend", sorted(MODELS))
def test_four_threads_with_mixed_shapes_give_the_serial_answers(backend):
    if backend == "ptx-cuda":
        from rnncomp.backends.ptx.runtime import cuda_available
        if not cuda_available():
            pytest.skip("needs a CUDA GPU, its driver and cuda-python")
    cell = rc.cells.gru(4, 24, 3)
    model = MODELS[backend](cell)
    calls = _calls(cell)
    serial = [_run(model, c) for c in calls]
    order = [i for _ in range(6) for i in range(len(calls))]
    np.random.default_rng(0).shuffle(order)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: _run(model, calls[i]), order))
    # a GPU sums split-K products with atomics in any order: equal to rounding, not bit for bit
    rtol = 1e-12 if backend == "ptx-cuda" else 0
    for i, g in zip(order, got):
        _assert_same(serial[i], g, rtol)
