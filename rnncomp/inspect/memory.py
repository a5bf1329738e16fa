"""Which checkpointing schedule a memory budget gets: ``rnncomp inspect CELL --memory``.

    >>> import rnncomp as rc
    >>> from rnncomp.inspect.memory import memory_report
    >>> r = memory_report(rc.cells.elman(2, 4, 1), T=100, B=2, budget="2KiB")
    >>> [row.name for row in r.rows]
    ['store all', 'Every(√T)', 'Budget(2048)']
    >>> r.rows[2].memory <= 2048 < r.rows[0].memory
    True

The sizes are the native backend's own (the model is compiled for the footprint); the
predicted time is FLOPs: one training step is T·(forward + backward) and each recomputed
step costs one "advance" step (the forward program pruned to the states).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..ir import prune
from ..memory import Budget, Every
from ..schedules import Plan, make_plan
from .cost import _bytes, cost, program_flops
from ..show import TextShown


@dataclass
class Row:
    name: str
    plan: Plan
    memory: int
    overhead: float


@dataclass(repr=False)
class MemoryReport(TextShown):
    cell: str
    T: int
    B: int
    dtype: str
    budget: int
    advance_cost: float          # one advanced step / one forward + backward step (FLOPs)
    plan_seconds: float          # time to plan the budget's schedule
    rows: list = field(default_factory=list)

    def _text(self) -> str:
        return self.table()

    def table(self) -> str:
        return memory_table(self)

    def __str__(self) -> str:
        return memory_table(self)


def memory_report(cell, T: int = 1000, B: int = 32, dtype="float32", budget=None) -> MemoryReport:
    """Store-all, ``Every(√T)`` and ``Budget(budget)`` (default: 5% of store-all, at least the
    minimum) for a training call of (T, B)."""
    from ..backends.checkpoint import footprint
    from ..backends.derived import DerivedModel
    from ..checks import count, one_cell
    from ..compile import compile as rc_compile

    one_cell("memory_report", cell)
    T, B = count("memory_report", "T", T), count("memory_report", "B", B)
    model = rc_compile(cell, backend="native", dtype=dtype)
    if isinstance(model, DerivedModel):  # derived weights are computed once per call: the plain cell's buffers
        model = model.inner
    fp = footprint(model, B)
    full = make_plan("all", T, fp)
    nbytes = Budget(budget).nbytes if budget is not None else max(fp.minimum(T), full.memory(fp) // 20)
    c = cost(cell, T=T, B=B, dtype=dtype)
    step = cell.step
    adv = sum(program_flops(prune(step.prog, [(s, "t") for s in step.states])).values())
    ratio = adv / max(1, c.forward_flops + c.backward_flops)
    t0 = time.perf_counter()
    chosen = make_plan(Budget(nbytes), T, fp)
    dt = time.perf_counter() - t0
    r = MemoryReport(step.name, T, B, str(model.dtype), nbytes, ratio, dt)
    for name, plan in (("store all", full), ("Every(√T)", make_plan(Every("sqrt"), T, fp)),
                       (f"Budget({nbytes})", chosen)):
        r.rows.append(Row(name, plan, plan.memory(fp), plan.overhead(ratio)))
    return r


def _actions(plan: Plan, n=6) -> str:
    names = {"advance": "advance {}→{}", "store": "store {}", "restore": "restore {}", "free": "free {}",
             "leaf": "leaf {}…{}"}
    shown = [names[a[0]].format(*a[1:]) for a in plan.actions[:n]]
    more = len(plan.actions) - n
    return ", ".join(shown) + (f", … ({more} more)" if more > 0 else "")


def memory_table(r: MemoryReport) -> str:
    full = r.rows[0].memory
    w1 = max([16] + [len(row.name) for row in r.rows])   # columns as wide as their longest entry
    w2 = max([36] + [len(row.plan.name) for row in r.rows])
    lines = [f"memory schedules of {r.cell!r} for T={r.T}, B={r.B}, {r.dtype}: activation buffers, "
             "recomputed forward steps, predicted time (FLOPs)",
             f"  {'schedule':<{w1}} {'plan':<{w2}} {'memory':>10} {'vs all':>7} {'recomputed':>11} "
             f"{'leaves':>7} {'checkpoints':>12} {'time':>7}"]
    for row in r.rows:
        p = row.plan
        lines.append(f"  {row.name:<{w1}} {p.name:<{w2}} {_bytes(row.memory):>10} {row.memory / full:>7.1%} "
                     f"{p.advanced:>11} {p.leaves:>7} {p.max_held:>12} {row.overhead:>6.2f}x")
    chosen, sqrt = r.rows[2], r.rows[1]
    lines += ["",
              f"chosen for a budget of {r.budget} bytes ({_bytes(r.budget)}), planned in "
              f"{r.plan_seconds * 1e3:.1f} ms: {chosen.plan.name}",
              f"  uses {chosen.memory} bytes ({chosen.memory / full:.1%} of store-all), recomputes "
              f"{chosen.plan.advanced} forward steps ({chosen.plan.advanced / r.T:.2f} per step), "
              f"predicted {chosen.overhead:.2f}x the store-all time "
              f"(one recomputed step ≈ {r.advance_cost:.2f} of a forward + backward step)",
              f"  vs Every(√T): {sqrt.memory / full:.1%} of the memory, {sqrt.plan.advanced} recomputed steps, "
              f"{sqrt.overhead:.2f}x",
              f"  first actions: {_actions(chosen.plan)}"]
    return "\n".join(lines)
