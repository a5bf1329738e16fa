"""A stored product or slice prints with the time index of what it reads (issue #18):
``Uo·h[t-1]``, never ``Uo·h[t]``, in the backward listing, its LaTeX and the graphs."""
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings

import rnncomp as rc
from rnncomp.inspect import to_dot
from rnncomp.ir import NodeSym, key_str
from rnncomp.printing import node_expr

from fuzzgen import fuzz_cells


def _misdated(cell):
    """(wrong text, wrong LaTeX, right text) of each forward product/slice whose key's time
    differs from its operand's: found from the IR, not from the printer."""
    prog = cell.step.prog
    out = []
    for key, node in prog.nodes.items():
        if node.op in ("matvec", "slice") and node.args[0][1] != key[1]:
            out.append((key_str(key), sp.latex(NodeSym(key)), sp.sstr(node_expr(prog, key))))
    return out


def _check(cell):
    e = rc.explain(cell)
    text, latex = e.backward_text(), e.latex()
    dots = to_dot(cell, "step") + to_dot(cell, "gradient")
    wrong = _misdated(cell)
    for bad, bad_latex, right in wrong:
        assert bad not in text and bad not in dots, f"{cell.name}: {bad} printed for {right}"
        assert bad_latex not in latex, f"{cell.name}: {bad_latex} in the LaTeX for {right}"
    return text, wrong


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_zoo_backward_listings_date_products_right(name):
    text, wrong = _check(rc.cells.ZOO[name](3, 4, 2))
    used = {a for n in rc.backward_step(rc.cells.ZOO[name](3, 4, 2).step).prog.nodes.values() for a in n.args}
    if name == "softsign_lstm":   # the example: (Uo·h[t] + Wo·x[t] + bo)
        assert any(right == "Uo·h[t-1]" for _, _, right in wrong) and "Uo·h[t-1]" in text
    for bad, _, right in wrong:
        key = next(k for k in used if key_str(k) == bad) if any(key_str(k) == bad for k in used) else None
        if key is not None:       # read by the backward step: printed as what it computes
            assert right in text


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz_cells())
def test_fuzzed_cells_date_products_right(cell):
    _check(cell)
