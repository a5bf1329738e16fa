"""Checkpointing planners (pure Python): optimal against exhaustive search, valid, fast."""
import heapq
import math
import time
from functools import lru_cache

import pytest

import rnncomp as rc
from rnncomp import schedules as S
from rnncomp.memory import parse_bytes


def replay(T, actions):
    """An independent check of a plan: returns (advanced steps, longest leaf, most checkpoints held).

    The executor's rules: advances and leaves start at the current states; a checkpoint is
    restored only while held; the leaves reverse steps T-1 … 0, each exactly once."""
    pos, held, reversed_steps, advanced, longest, most = 0, set(), [], 0, 0, 0
    for act in actions:
        if act[0] == "advance":
            assert pos == act[1] and act[1] < act[2], act
            advanced += act[2] - act[1]
            pos = act[2]
        elif act[0] == "store":
            assert pos == act[1] and act[1] not in held, act
            held.add(act[1])
            most = max(most, len(held))
        elif act[0] == "restore":
            assert act[1] == 0 or act[1] in held, act
            pos = act[1]
        elif act[0] == "free":
            held.remove(act[1])
        else:
            assert act[0] == "leaf" and pos == act[1], act
            reversed_steps += range(act[2] - 1, act[1] - 1, -1)
            longest = max(longest, act[2] - act[1])
            pos = None
    assert reversed_steps == list(range(T - 1, -1, -1))
    return advanced, longest, most


@lru_cache(maxsize=None)
def exhaustive(T, L, k):
    """The fewest advanced steps over ALL executions (Dijkstra over executor states) with leaves
    of at most L steps and at most k checkpoints held: no assumption on the plan's shape."""
    start = (frozenset(), 0, T)  # checkpoints held (besides 0), current position (-1: none), steps left
    dist, heap = {start: 0}, [(0, start)]
    while heap:
        d, (held, pos, todo) = heapq.heappop(heap)
        if todo == 0:
            return d
        if d > dist[(held, pos, todo)]:
            continue
        moves = [(0, (held, q, todo)) for q in held | {0}]                  # restore
        moves += [(0, (held - {q}, pos, todo)) for q in held]               # free
        if pos >= 0:
            if pos + 1 < todo:
                moves.append((1, (held, pos + 1, todo)))                    # advance one step
            if pos > 0 and pos not in held and len(held) < k:
                moves.append((0, (held | {pos}, pos, todo)))                # store
            if todo - pos <= L:
                moves.append((0, (held, -1, pos)))                          # leaf pos..todo
        for c, s in moves:
            if d + c < dist.get(s, math.inf):
                dist[s] = d + c
                heapq.heappush(heap, (d + c, s))
    return math.inf


def test_closed_form_equals_the_recurrence_table():
    for L in range(1, 5):
        @lru_cache(maxsize=None)
        def P(t, k):
            if t <= L:
                return 0
            if k < 0:
                return math.inf
            return min(y + P(t - y, k - 1) + P(y, k) for y in range(1, t))
        for k in range(-1, 5):
            for t in range(1, 45):
                want = P(t, k)
                got = S.advances(t, k, L)
                assert (got >= S._INF if want == math.inf else got == want), (t, k, L)


@pytest.mark.parametrize("T", range(1, 9))
def test_revolve_is_optimal_against_exhaustive_search(T):
    for slots in range(0, 4):
        plan = S.binomial(T, slots)
        advanced, longest, most = replay(T, plan.actions)
        assert advanced == plan.advanced == exhaustive(T, 1, slots), (T, slots)
        assert longest == 1 and most <= slots


def test_revolve_matches_griewank_formula():
    # t(l, s) = r·l − β(s+1, r−1) with β(s, r−1) < l ≤ β(s, r), s snapshots including the initial one
    for s in range(1, 6):
        for l in range(1, 200):
            r = 0
            while math.comb(s + r, s) < l:
                r += 1
            want = r * l - (math.comb(s + 1 + r - 1, s + 1) if r else 0)
            assert S.binomial(l, s - 1).advanced == want, (l, s)


@pytest.mark.parametrize("T", range(1, 8))
def test_budget_is_optimal_against_exhaustive_search(T):
    fp = S.Footprint(state=2, step=5, B=1)
    full = fp.memory(T, 0)
    for nbytes in range(fp.minimum(T), full + 3):
        plan = S.budget(T, nbytes, fp)
        advanced, longest, most = replay(T, plan.actions)
        best = min(exhaustive(T, L, k) for L in range(1, T + 1) for k in range(T)
                   if fp.memory(L, k) <= nbytes)
        assert advanced == plan.advanced == best, (T, nbytes)
        assert fp.memory(longest, most) <= nbytes


def test_plans_are_valid_and_fit():
    fp = S.Footprint(state=7, step=40, B=3)
    for T in list(range(1, 70)) + [97, 128, 1000]:
        plans = [S.store_all(T), S.every(T, 1), S.every(T, 5), S.every(T, S.sqrt_segment(T)),
                 S.binomial(T, 0), S.binomial(T, 3), S.binomial(T, T)]
        lo, hi = fp.minimum(T), S.store_all(T).memory(fp)
        for nbytes in {lo, lo + 1, lo + fp.state, lo + fp.step, (lo + hi) // 2, max(lo, hi - 1), hi, 2 * hi}:
            plan = S.budget(T, nbytes, fp)
            assert plan.memory(fp) <= nbytes
            plans.append(plan)
        for plan in plans:
            advanced, longest, most = replay(T, plan.actions)
            assert (advanced, longest, most) == (plan.advanced, plan.max_leaf, plan.max_held), plan.name
        assert S.store_all(T).advanced == 0
        assert S.budget(T, hi, fp).advanced == 0  # enough for everything: store all


def test_budget_never_worse_than_every_sqrt():
    fp = S.Footprint(state=512, step=4895, B=1)  # an LSTM's proportions (H=256)
    for T in list(range(1, 400)) + [1000, 2500, 10_000]:
        every = S.every(T, S.sqrt_segment(T))
        plan = S.budget(T, every.memory(fp), fp)
        assert plan.advanced <= every.advanced, T
        assert plan.memory(fp) <= every.memory(fp)


def test_budget_below_the_minimum_is_a_clear_error():
    fp = S.Footprint(state=2048, step=16384, B=32)
    with pytest.raises(ValueError, match=r"below the minimum for T=100, B=32: 18432 bytes"):
        S.budget(100, 18431, fp)
    assert S.budget(100, 18432, fp).max_leaf == 1


def test_planning_is_fast_for_long_sequences():
    fp = S.Footprint(state=512, step=4895, B=1)
    T = 10_000
    t0 = time.perf_counter()
    for frac in (0.002, 0.01, 0.05, 0.3):
        S.budget(T, int(frac * S.store_all(T).memory(fp)), fp)
    S.binomial(T, 20)
    assert time.perf_counter() - t0 < 10  # about 0.3 s on a loaded 2-core machine


def test_specs_and_bytes():
    assert parse_bytes("10MB") == 10_000_000 and parse_bytes("64MiB") == 64 * 2**20
    assert parse_bytes(" 1.5 kb ") == 1500 and parse_bytes(4096) == 4096
    assert rc.Budget("2MB").nbytes == 2_000_000
    with pytest.raises(ValueError, match="cannot read"):
        parse_bytes("ten MB")
    with pytest.raises(ValueError, match="positive"):
        rc.Budget(0)
    with pytest.raises(ValueError, match="integer >= 0"):
        rc.Binomial(-1)
    fp = S.Footprint(state=1, step=4, B=1)
    assert S.make_plan("all", 9, fp).name == "store all"
    assert S.make_plan(rc.Every(3), 9, fp).advanced == 6
    assert S.make_plan(rc.Binomial(2), 9, fp).advanced == S.advances(9, 2, 1)


@pytest.mark.parametrize("nbytes", [float("nan"), float("inf"), -float("inf")])
def test_a_budget_of_a_non_finite_number_is_named(nbytes):
    """int(nan) said "cannot convert float NaN to integer" from memory.parse_bytes."""
    with pytest.raises(rc.ArgumentError, match=rf"^cannot read {nbytes!r} as a number of bytes"):
        rc.Budget(nbytes)
