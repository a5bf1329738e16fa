"""PyTorch references of the matrix-state cells (``rnncomp.zoo_matrix`` and the tests'
``every_op``), written from the papers' equations as plain loops over time with batched
products: ``TORCH[name](P, x, targets, torch) -> (Σ of the per-step costs, final states)``,
in the dtype of ``x`` (sizes read from the parameters and inputs).

Used by tests/test_matrix_states.py (float64, against the oracle) and by
benchmarks/bench_matrix.py (float32, the PyTorch column).
"""


def _mlstm(P, x, tg, torch):
    B, dk, H = x.shape[1], P["Wk"].shape[0], P["Wv"].shape[0]
    C, n, m = x.new_zeros(B, H, dk), x.new_zeros(B, dk), x.new_zeros(B, 1)
    loss = 0
    for s in range(x.shape[0]):
        lin = lambda g: x[s] @ P[f"W{g}"].T + P[f"b{g}"]  # noqa: E731
        q, k, v = lin("q"), lin("k") / dk ** 0.5, lin("v")
        log_f = -torch.nn.functional.softplus(-lin("f"))
        m_new = torch.maximum(log_f + m, lin("i"))
        i, f = torch.exp(lin("i") - m_new), torch.exp(log_f + m - m_new)
        C = f[:, :, None] * C + i[:, :, None] * v[:, :, None] * k[:, None, :]
        n, m = f * n + i * k, m_new
        den = torch.maximum((n * q).sum(1, keepdim=True).abs(), torch.exp(-m))
        h = torch.sigmoid(lin("o")) * torch.einsum("bij,bj->bi", C, q) / den
        loss = loss + (((h @ P["V"].T + P["by"]) - tg[s]) ** 2 / 2).sum()
    return loss, {"C": C, "n": n, "m": m}


def _fast_weights(P, x, tg, torch):
    B, H = x.shape[1], P["W"].shape[0]
    h, A = x.new_zeros(B, H), x.new_zeros(B, H, H)
    loss = 0
    for s in range(x.shape[0]):
        z = h @ P["W"].T + x[s] @ P["U"].T + P["b"]
        A = 0.9 * A + 0.5 * h[:, :, None] * h[:, None, :]
        h = torch.tanh(z + torch.einsum("bij,bj->bi", A, torch.tanh(z)))
        loss = loss + (((h @ P["V"].T + P["by"]) - tg[s]) ** 2 / 2).sum()
    return loss, {"h": h, "A": A}


def _delta_rule(P, x, tg, torch):
    C = x.new_zeros(x.shape[1], P["Wv"].shape[0], P["Wk"].shape[0])
    loss = 0
    for s in range(x.shape[0]):
        kr = x[s] @ P["Wk"].T
        k = kr / torch.sqrt((kr ** 2).sum(1, keepdim=True) + 1e-6)
        v, q = x[s] @ P["Wv"].T, x[s] @ P["Wq"].T
        beta = torch.sigmoid(x[s] @ P["Wb"].T + P["bb"])
        C = C - beta[:, :, None] * (torch.einsum("bij,bj->bi", C, k) - v)[:, :, None] * k[:, None, :]
        y = torch.einsum("bij,bj->bi", C, q) @ P["V"].T + P["by"]
        loss = loss + ((y - tg[s]) ** 2 / 2).sum()
    return loss, {"C": C}


def _diag_linear(P, x, tg, torch):
    a = torch.exp(-torch.exp(P["nu"]))
    h, loss = x.new_zeros(x.shape[1], P["B"].shape[0]), 0
    for s in range(x.shape[0]):
        h = a * h + torch.sqrt(1 - a ** 2) * (x[s] @ P["B"].T)
        loss = loss + (((h @ P["C"].T + x[s] @ P["D"].T) - tg[s]) ** 2 / 2).sum()
    return loss, {"h": h}


def _every_op(P, x, tg, torch):
    C, loss = x.new_zeros(x.shape[1], P["Wg"].shape[0], x.shape[2]), 0
    for s in range(x.shape[0]):
        g = torch.sigmoid(x[s] @ P["Wg"].T)
        C = g[:, :, None] * C + torch.tanh(x[s] @ P["Wv"].T)[:, :, None] * x[s][:, None, :] / 2
        r = torch.einsum("bij,bj->bi", C, x[s]) + C.sum(2)
        c = torch.einsum("bij,i->bj", C, P["u"]) + (C * C).sum(1)
        loss = loss + (((r @ P["V"].T + c @ P["Vc"].T) - tg[s]) ** 2 / 2).sum()
    return loss, {"C": C}


TORCH = {"mlstm": _mlstm, "fast_weights": _fast_weights, "delta_rule": _delta_rule,
         "diag_linear": _diag_linear, "every_op": _every_op}
