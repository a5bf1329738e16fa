"""The printed equations: content checks, LaTeX, determinism."""
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
