"""A cell that exercises every part of a framework layer's call (tests/test_torch.py, test_jax.py)."""
import sympy as sp

import rnncomp as rc


def two_inputs_learned_state():
    """Two inputs, two states (h with a learned initial state), two outputs."""
    cell = rc.Cell("two")
    x, u = cell.input("x", 2), cell.input("u", 3)
    h, c = cell.state("h", 3, init="learn"), cell.state("c", 2)
    cell.update(h, sp.tanh(cell.param("W", (3, 2)) @ x + cell.param("U", (3, 3)) @ h + cell.param("A", (3, 3)) @ u))
    cell.update(c, rc.sigmoid(cell.param("M", (2, 3)) @ h.new) * c + cell.param("K", (2, 3)) @ u)
    cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.output("z", c.new * c.new)
    return cell
