"""An independent oracle: BPTT written by hand in NumPy for Elman and LSTM (the textbook way)."""
import numpy as np
import pytest

import rnncomp as rc

from gradcheck import assert_grads_close, numpy_model, random_data


def sig(z):
    return 1 / (1 + np.exp(-z))


def elman_by_hand(p, x, tg):
    T, B, _ = x.shape
    H = p["U"].shape[0]
    hs = [np.zeros((B, H))]
    ys = []
    for t in range(T):
        hs.append(np.tanh(x[t] @ p["W"].T + hs[-1] @ p["U"].T + p["b"]))
        ys.append(hs[-1] @ p["V"].T + p["by"])
    loss = sum(((ys[t] - tg[t]) ** 2 / 2).sum() for t in range(T)) / (T * B)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros((B, H))
    for t in reversed(range(T)):
        dy = (ys[t] - tg[t]) / (T * B)
        g["V"] += dy.T @ hs[t + 1]
        g["by"] += dy.sum(0)
        dh = dy @ p["V"] + dh_next
        da = dh * (1 - hs[t + 1] ** 2)
        g["W"] += da.T @ x[t]
        g["U"] += da.T @ hs[t]
        g["b"] += da.sum(0)
        dh_next = da @ p["U"]
    return loss, g


def lstm_by_hand(p, x, tg):
    T, B, _ = x.shape
    H = p["Ui"].shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    cache, ys = [], []
    for t in range(T):
        gate = lambda n: x[t] @ p["W" + n].T + h @ p["U" + n].T + p["b" + n]  # noqa: E731
        i, f, g_, o = sig(gate("i")), sig(gate("f")), np.tanh(gate("g")), sig(gate("o"))
        c_new = f * c + i * g_
        h_new = o * np.tanh(c_new)
        cache.append((h, c, i, f, g_, o, c_new, h_new))
        h, c = h_new, c_new
        ys.append(h @ p["V"].T + p["by"])
    loss = sum(((ys[t] - tg[t]) ** 2 / 2).sum() for t in range(T)) / (T * B)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next, dc_next = np.zeros((B, H)), np.zeros((B, H))
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g_, o, c_new, h_new = cache[t]
        dy = (ys[t] - tg[t]) / (T * B)
        g["V"] += dy.T @ h_new
        g["by"] += dy.sum(0)
        dh = dy @ p["V"] + dh_next
        do = dh * np.tanh(c_new)
        dc = dh * o * (1 - np.tanh(c_new) ** 2) + dc_next
        di, dg, df = dc * g_, dc * i, dc * c_prev
        pre = {"i": di * i * (1 - i), "f": df * f * (1 - f), "g": dg * (1 - g_ ** 2), "o": do * o * (1 - o)}
        dh_next = np.zeros((B, H))
        for n, da in pre.items():
            g["W" + n] += da.T @ x[t]
            g["U" + n] += da.T @ h_prev
            g["b" + n] += da.sum(0)
            dh_next += da @ p["U" + n]
        dc_next = dc * f
    return loss, g


@pytest.mark.parametrize("cell_fn, by_hand", [(rc.cells.elman, elman_by_hand), (rc.cells.lstm, lstm_by_hand)])
@pytest.mark.parametrize("T, B", [(1, 1), (7, 3)])
def test_against_hand_written_bptt(cell_fn, by_hand, T, B):
    cell = cell_fn(3, 5, 2)
    params, inputs, targets = random_data(cell, T=T, B=B, seed=T + B)
    loss, grads, _ = numpy_model(cell).loss_and_grad(params, inputs, targets)
    ref_loss, ref_grads = by_hand(params, inputs["x"], targets["target"])
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert_grads_close(grads, ref_grads, rtol=1e-10, atol=1e-13)
