"""The shared value layout (rnncomp/passes/layout.py) that the native and PTX backends fill."""
import pytest

import rnncomp as rc
from rnncomp.autodiff import LOSS_ONLY, backward_step
from rnncomp.ir import LEAF_OPS
from rnncomp.passes.layout import (MEMORY_OPS, PER_SAMPLE, SHARED, Layout, place_sequences, place_values,
                                   place_weights)
from rnncomp.passes.prepare import prepare


def _prepared(make):
    step = make(3, 4, 2).step
    bwd = backward_step(step, LOSS_ONLY)
    return step, bwd, prepare(step, bwd, hoist=True, stack=True)


@pytest.mark.parametrize("make", [rc.cells.lstm, rc.cells.gru, rc.cells.elman])
def test_every_value_placed_members_inside_their_whole(make):
    step, _, p = _prepared(make)
    L = Layout()
    place_weights(L, step.params, p.stacks, p.shapes)
    state_slot, io_slot = place_sequences(L, step)
    placed = place_values(L, p.fwd.nodes, p.views, "fwd")
    for key, node in p.fwd.nodes.items():
        assert key in L.where, key
        if node.op in LEAF_OPS:
            continue
        if key in p.views:
            whole, col, width = p.views[key]
            assert key not in placed
            assert L.where[key].slot == L.where[whole].slot and L.where[key].col == col
            assert L.ld(key) == width and L.step_units(key) == width
        elif key[0] in step.states:  # h[t] is written where the next step reads h[t-1]
            assert key not in placed and L.where[key].slot == state_slot[key[0]]
        elif node.op not in MEMORY_OPS:
            assert key in placed and L.where[key].col == 0
    for s, n in step.states.items():  # h[t-1] and h[t]: one slot, one step apart
        assert L.where[(s, "t-1")] == (state_slot[s], 0, 0) and L.where[(s, "t")] == (state_slot[s], 1, 0)
        assert L.elems(state_slot[s], T=5, B=2) == 6 * 2 * n
    for name, k in io_slot.items():
        assert L.where[(name, "t")] == (k, 0, 0) and L.timed((name, "t"))
    for p_ in step.params:
        assert L.of((p_, None)).rows == SHARED and L.ld((p_, None), "own size") == "own size"
    assert len({w.slot for k, w in L.where.items() if k in placed}) == len(placed)  # a slot each


def test_a_whole_keeps_every_step_if_one_member_does():
    step, bwd, p = _prepared(rc.cells.lstm)
    members = [k for k in p.views if k in p.bwd.nodes]
    assert len(members) == 4
    L = Layout()
    timed = {members[2]}
    place_values(L, p.bwd.nodes, p.views, "bwd", lambda key: 0 if key in timed else PER_SAMPLE,
                 leaves=set(p.bwd.nodes))
    whole = p.views[members[0]][0]
    assert L.of(whole).timed and all(L.timed(m) for m in members)
    others = [k for k in L.where if k not in p.views and k != whole]
    assert others and all(L.of(k).rows == PER_SAMPLE and L.step_units(k) == 0 for k in others)
    assert L.elems(L.where[whole].slot, T=7, B=3) == 7 * 3 * p.views[members[0]][2]


def test_with_rows_copies_and_offsets_align():
    L = Layout()
    a, b = L.slot("a", 3, rows=0), L.slot("b", 5, rows=1)
    L.place("x", a)
    L.place("y", b, off=1, col=2)
    one = L.with_rows({a}, PER_SAMPLE)
    assert one.step_units("x") == 0 and L.step_units("x") == 3   # the original is untouched
    assert one.where == L.where and one.where is not L.where
    offsets, size = L.offsets(T=4, B=2, itemsize=8, align=256)
    assert offsets == [0, 256] and size == 256 + 512    # 4·2·3·8 = 192 → 256; 5·2·5·8 = 400 → 512
