"""Graphs: one-step graph, unfolding, determinism, scale."""
import sys
import time

import networkx as nx

import rnncomp as rc
from rnncomp.autodiff import unrolled
from rnncomp.ir import verify


def test_step_graph_marks_recurrent_edges():
    g = rc.cells.lstm(3, 4, 2).graph
    rec = sorted((u, v) for u, v, d in g.edges(data=True) if d.get("recurrent"))
    assert rec == [(("c", "t-1"), ("c", "t")), (("h", "t-1"), ("h", "t"))]
    assert g.nodes[("h", "t")]["size"] == 4


def test_unfold_shares_parameters_and_links_steps():
    cell = rc.cells.elman(3, 4, 2)
    g = rc.unfold(cell, 3)
    params = [n for n in g if n[1] is None]
    assert sorted(p[0] for p in params) == ["U", "V", "W", "b", "by"]
    for p in params:  # one node per parameter, an edge to every step that uses it
        assert {v[1] for v in g.successors(p)} == {1, 2, 3}
    assert g.has_node(("h", 0)) and g.nodes[("h", 0)]["op"] == "state"
    assert nx.has_path(g, ("h", 1), ("h", 3))
    assert nx.is_directed_acyclic_graph(g)


def test_unfold_is_deterministic():
    a = list(rc.unfold(rc.cells.gru(2, 3, 2), 4).nodes)
    b = list(rc.unfold(rc.cells.gru(2, 3, 2), 4).nodes)
    assert a == b
    assert list(nx.topological_sort(rc.unfold(rc.cells.gru(2, 3, 2), 4)))  # a DAG


def test_ten_thousand_steps_no_recursion_limit():
    cell = rc.cells.elman(2, 3, 1)
    limit = sys.getrecursionlimit()
    start = time.perf_counter()
    u = unrolled(cell.step, 10_000)
    assert sys.getrecursionlimit() == limit
    verify(u.fwd)
    verify(u.rev.prog)
    assert (("h", 0)) in u.rev.adjoints
    assert len(u.fwd) > 10_000 * 5
    assert time.perf_counter() - start < 120


def test_backward_program_verifies_for_the_zoo():
    for name, make in rc.cells.ZOO.items():
        bwd = rc.backward_step(make(3, 4, 2).step)
        verify(bwd.prog)
        assert set(bwd.carry_out) == set(bwd.step.states)


def test_cost_is_independent_of_hidden_size():
    """Deriving an LSTM with 1024 units costs the same as with 8: no per-element symbols."""
    def derive(H):
        t0 = time.perf_counter()
        rc.explain(rc.cells.lstm(H, H, H)).backward_text()
        return time.perf_counter() - t0
    derive(8)
    small, big = derive(8), derive(1024)
    assert big < 5 * small + 0.5
