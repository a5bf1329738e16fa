"""The printed equations: content checks, LaTeX, determinism."""
import numpy as np
import sympy as sp

import rnncomp as rc


def test_elman_backward_shows_tanh_derivative_and_transpose():
    text = rc.explain(rc.cells.elman(3, 4, 2)).backward_text()
    assert "(1 - h[t]**2)" in text
    assert "Uᵀ·" in text
    assert "δh[t-1] = Uᵀ·" in text
    assert "(carried: δ⁺h[t-1])" in text
    assert "∂L/∂U = Σ_t Σ_batch" in text


def test_cell_text_lists_declarations_and_equations():
    text = str(rc.cells.lstm(3, 4, 2))
    assert "states:  h ∈ R^4 (h[0] = 0), c ∈ R^4 (c[0] = 0)" in text
    assert "c[t] = " in text and "h[t] = " in text
    assert "sigmoid(" in text


def test_sigmoid_derivative_reuses_forward_value():
    cell = rc.Cell("g")
    x, h = cell.input("x", 2), cell.state("h", 2)
    cell.update(h, rc.sigmoid(cell.param("W", (2, 2)) @ x + cell.param("U", (2, 2)) @ h))
    cell.loss(h.new ** 2)
    text = rc.explain(cell).backward_text()
    assert "h[t]*(1 - h[t])" in text or "(1 - h[t])*h[t]" in text


def test_latex_and_determinism():
    e1 = rc.explain(rc.cells.gru(3, 4, 2))
    e2 = rc.explain(rc.cells.gru(3, 4, 2))
    assert e1.latex() == e2.latex()
    assert str(e1) == str(e2)
    assert r"\frac{\partial L}{\partial Un}" in e1.latex()
    assert e1.markdown().startswith("$$")
    assert rc.cells.gru(3, 4, 2)._repr_latex_().startswith("$$")


def test_products_are_named_after_their_scaled_transposed_matrices():
    """In the derived equations a product's value is named after its matrix: scaled by 2 or -1,
    transposed, or a sum of matrices."""
    import sympy as sp
    c = rc.Cell("names")
    x, h = c.input("x", 3), c.state("h", 3)
    W, U = c.param("W", (3, 3)), c.param("U", (3, 3))
    c.update(h, sp.tanh((2 * W) @ x) * ((-U) @ h) + sp.sin((W - U) @ h) + sp.cos(U.T @ h))
    c.loss(rc.vsum(h.new ** 2))
    text = rc.explain(c).backward_text()
    assert "δ(-U·h)[t] = tanh(2W·x)[t]*δh[t]" in text
    assert "δ((-U + W)·h)[t] = δh[t]*cos((-U + W)·h[t-1])" in text
    assert "δ(Uᵀ·h)[t] = -δh[t]*sin(Uᵀ·h[t-1])" in text
    assert "∂L/∂W = Σ_t Σ_batch δ((-U + W)·h)[t]·h[t-1]ᵀ + 2*δ(2W·x)[t]·x[t]ᵀ" in text


def test_vsum_printed_grouped_where_it_is_a_factor_or_a_base():
    """(Σ h)² and Σ h² printed alike ("Σ h**2"), Σ(a + h)/4 as "Σ a + h/4": the listing, and the
    checkpoint fingerprint that is its text, could not tell different cells apart."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("sig")
    x, h = cell.input("x", 3), cell.state("h", 4)
    a = cell.param("W", (4, 3)) @ x
    cell.define("sq_of_sum", rc.vsum(h) ** 2)
    cell.define("sum_of_sq", rc.vsum(h ** 2))
    cell.define("mean_of_add", rc.vsum(a + h) / 4)
    cell.update(h, sp.tanh(a + h))
    text = str(cell)
    assert "sq_of_sum[t] = (Σ h[t-1])**2" in text
    assert "sum_of_sq[t] = Σ h[t-1]**2" in text
    assert "mean_of_add[t] = (Σ (h[t-1] + W·x[t]))/4" in text


def _read(text: str, values: dict):
    """A printed right-hand side evaluated as Python, ``·`` as ``@`` (which binds as ``*`` and
    ``/`` do, from the left, and below ``**``): the value a reader takes the text to mean."""
    import re
    import numpy as np
    code = text.replace("·", "@").replace("[t-1]", "_p").replace("[t]", "")
    code = re.sub(r"(\d)([A-Z])", r"\1*\2", re.sub(r"\b(tanh|exp)\(", r"np.\1(", code))  # 2W·x: (2*W)@x
    return eval(code, {"np": np, **values})  # noqa: S307


def test_products_printed_grouped_where_they_are_a_factor_a_divisor_or_a_base():
    """``U·x[t]**2`` read as U·x², ``x[t]/W·h[t-1]`` as (x/W)·h and ``x[t]*W·x[t]`` as (x*W)·x:
    the text of a product inside a power, a divisor or a product misread the equation (and
    the checkpoint fingerprint, which is this text, confused such cells).  Each right-hand
    side, read as Python with · for @, computes the cell's own value."""
    import numpy as np
    import sympy as sp
    c = rc.Cell("p")
    x, h = c.input("x", 4), c.state("h", 4)
    W, U, b = c.param("W", (4, 4)), c.param("U", (4, 4)), c.param("b", 4)
    c.define("a", sp.tanh(W @ h) ** 2 + x / (W @ h) + (U @ x) ** 2 + 2 * (W @ h) ** 3)
    c.define("m", x * (W @ x) - (W @ x) * (U @ h) / (1 + (U @ h) ** 2) + h * ((2 * W) @ x))
    c.define("n", b - U @ h - (W @ x) / (1 + x))
    c.update(h, sp.tanh(b + U @ h))
    c.loss(rc.vsum(h.new))
    text = str(c)
    lines = dict(line.strip().split(" = ", 1) for line in text.splitlines() if " = " in line)
    assert lines["a[t]"] == "x[t]/(W·h[t-1]) + tanh(W·h[t-1])**2 + (U·x[t])**2 + 2*(W·h[t-1])**3"
    assert lines["h[t]"] == "tanh(b + U·h[t-1])"                # bare where nothing binds tighter
    assert lines["ℓ[t]"] == "Σ h[t]"       # rc.vsum is one unit: ℓ is it, not Σ Σ h[t]
    rng = np.random.default_rng(0)
    v = {k: rng.normal(size=s) for k, s in [("x", 4), ("h_p", 4), ("W", (4, 4)), ("U", (4, 4)), ("b", 4)]}
    xv, hv, Wv, Uv, bv = v["x"], v["h_p"], v["W"], v["U"], v["b"]
    want = {"a[t]": np.tanh(Wv @ hv) ** 2 + xv / (Wv @ hv) + (Uv @ xv) ** 2 + 2 * (Wv @ hv) ** 3,
            "m[t]": xv * (Wv @ xv) - (Wv @ xv) * (Uv @ hv) / (1 + (Uv @ hv) ** 2) + hv * (2 * Wv @ xv),
            "n[t]": bv - Uv @ hv - (Wv @ xv) / (1 + xv)}
    for lhs, value in want.items():
        np.testing.assert_allclose(_read(lines[lhs], v), value, rtol=1e-12, err_msg=lines[lhs])
    r = rc.Cell("p")                  # the report's cell: its backward step and its LaTeX
    x, h = r.input("x", 4), r.state("h", 4)
    W, U = r.param("W", (4, 4)), r.param("U", (4, 4))
    r.update(h, sp.tanh(W @ h) ** 2 + x / (W @ h) + (U @ x) ** 2 + 2 * (W @ h) ** 3 + x * (W @ x))
    r.loss(rc.vsum(h.new))
    back = rc.explain(r).backward_text()
    assert "-x[t]/(W·h[t-1])**2 + 6*(W·h[t-1])**2" in back and "W·h[t-1]**2" not in back
    tex = rc.explain(r).latex()
    assert r"\left(U\,x_{t}\right)^{2}" in tex and r"x_{t} \left(W\,x_{t}\right)" in tex
    assert r"{\ell}_{t} &= \sum h_{t}" in tex


def test_matrix_and_weight_products_printed_grouped():
    """The same for a matrix state's products and a derived weight's: ``C[t-1]·x[t]**2``,
    ``0.1*v·kᵀ**2`` and the weight ``M*W·A`` (read (M*W)·A) misread their equations."""
    import numpy as np
    import sympy as sp
    c = rc.Cell("ms")
    x, C, h = c.input("x", 3), c.state("C", (3, 3)), c.state("h", 3)
    W, A = c.param("W", (3, 3)), c.param("A", (3, 3))
    M = c.const("M", np.tril(np.ones((3, 3))))
    c.update(C, 0.9 * C + rc.outer(x, x) ** 2)
    c.update(h, sp.tanh(x * (C @ x) + (C @ x) ** 2 + ((W @ A) * M) @ h))
    text = str(c)
    assert "C[t] = 0.9*C[t-1] + (x[t]·x[t]ᵀ)**2" in text
    assert "h[t] = tanh(x[t]*(C[t-1]·x[t]) + (M*(W·A))·h[t-1] + (C[t-1]·x[t])**2)" in text
    assert "(M*(W·A)) = M*(W·A)" in text
    tex = rc.explain(c).latex()
    assert r"x_{t} \left(C_{t-1}\,x_{t}\right)" in tex


def test_the_listing_gives_a_learned_initial_states_gradient():
    """∂L/∂h_0 is listed with the other parameters' (it was missing): the cotangent carried out of
    step 1, summed over the batch; 0 for a state the step never reads back (checked numerically)."""
    c = rc.Cell("learned")
    x, h = c.input("x", 2), c.state("h", 3, init="learn")
    g = c.state("g", 2, init="learn")
    c.update(h, sp.tanh(c.param("W", (3, 2)) @ x + c.param("U", (3, 3)) @ h))
    c.update(g, sp.tanh(c.param("V", (2, 2)) @ x))
    c.loss(rc.vsum(h.new ** 2) + rc.vsum(g.new))
    e = rc.explain(c)
    lines = e.backward_text().splitlines()
    assert "  ∂L/∂h_0 = Σ_batch δ⁺h[0]" in lines and "  ∂L/∂g_0 = 0" in lines
    assert r"\frac{\partial L}{\partial h_{0}} &= {\delta^{+} h}_{0}" in e.latex()
    params = c.init_params(seed=1)
    x_ = np.random.default_rng(0).normal(size=(4, 3, 2))
    _, grads, _ = rc.compile(c, backend="numpy", dtype="float64").loss_and_grad(params, {"x": x_}, {})
    assert not grads["g_0"].any() and grads["h_0"].any()
