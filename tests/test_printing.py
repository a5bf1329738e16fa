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
