"""Regenerate docs/inspect.md and the DOT files under docs/img/ from the cell zoo.

    python docs/make_inspect.py            # docs/inspect.md + docs/img/*.dot
    python docs/make_inspect.py --images   # also docs/img/*.svg (needs `dot` or matplotlib)
    python docs/make_inspect.py --check    # exit 1 if the committed files are stale

Everything written is deterministic: the same rnncomp gives byte-identical files.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rnncomp as rc  # noqa: E402
from rnncomp import inspect as ri  # noqa: E402

DOCS, IMG = ROOT / "docs", ROOT / "docs" / "img"
SIZES = (3, 4, 2)          # n_in, hidden, n_out of the pictured cells
UNFOLDED = ("elman", "lstm")

INTRO = """\
# Inspecting a cell: equations, pictures, costs, gradient flow

`rnncomp.inspect` (and `rnncomp inspect CELL ...`) shows what the compiler derived for a cell:

| view | API | command line |
|---|---|---|
| forward and backward equations | `rc.explain(cell)` | `rnncomp inspect CELL [--equations] [--latex\\|--markdown]` |
| one-step graph (DOT) | `ri.to_dot(cell, "step")` | `rnncomp inspect CELL --dot step` |
| unfolded over k steps | `ri.to_dot(cell, "unfolded", k)` | `rnncomp inspect CELL --dot unfolded --k 3` |
| gradient graph (forward + backward step) | `ri.to_dot(cell, "gradient")` | `rnncomp inspect CELL --dot gradient` |
| a picture of any of them | `ri.render(cell, "g.svg", kind, k)` | `... --svg g.svg` / `--png g.png` |
| FLOPs, stored activations, memory | `ri.cost(cell, T, B, dtype)` | `rnncomp inspect CELL --cost --T 1000 --B 32 --dtype float32` |
| gradient flow through time | `ri.gradient_flow(cell, params, inputs, targets)` | `rnncomp inspect CELL --flow [--T 50] [--png flow.png]` |
| where a native training call's time goes | `rnncomp.inspect.profile.profile(cell, T=, B=, dtype=)` | `rnncomp inspect CELL --profile --T 100 --B 32 --threads 1` |
| checkpointing schedule for a memory budget | `rnncomp.inspect.memory.memory_report(cell, T, B, dtype, budget)` | `rnncomp inspect CELL --memory --T 1000 --B 32 --budget 10MB` ([memory.md](memory.md)) |

(`from rnncomp import inspect as ri`; `CELL` is a zoo name, `module:name` or `file.py[:name]`;
`--hidden/--inputs/--outputs` size zoo cells.)

## Names in the listings
The compiler's temporaries have keys such as `a7` and `sigmoid8` (marked as generated, so
they never meet a name you declare).  The listings, their LaTeX and the graphs show each
under a readable alias instead (printing only: nothing computed changes):

| alias | what it is |
|---|---|
| `pre(z)` | the pre-activation of `z`: the argument of the function that computes your `z` (GRU `z = sigmoid(...)`) or, for an unnamed value, of the gate its parameters spell (`Wo·x + Uo·h + bo` → `pre(o)`), or the argument of the one function in the equation of the value that reads it (`h = h + 0.1*tanh(...)` → `pre(h)`) |
| `o` | an unnamed activation of such a gate (LSTM `sigmoid(pre(o))`), when you declared no `o` |
| `tanh(c)`, `Abs(pre(o))` | another function of values of the same step |
| `Uo·h`, `h[2:5]` | a product or a slice, by what it computes |
| `a₁`, `cat₁`, `Σ₁` | anything else, numbered in order (subscript digits: never a declared name) |
| `δpre(o)`, `δ(Uo·h)` | the adjoint of an aliased value |

A name that is already taken (you declared `o`) gets another rule or primes (`o′`).  Every
name the backward listing reads is defined: in the forward equations, in the backward step
or in its `where` block (the forward values of step t it reads); in LaTeX `pre(o)` is
$\\operatorname{{pre}}(o)$ and `a₁` is $\\mathsf{{a}}_1$.

## Where the time goes (`--profile`)
`rnncomp inspect lstm --inputs 64 --hidden 128 --profile` compiles a *profiled* native build
(`rc.compile(cell, backend="native", profile=True)`: the same code, with a cycle counter read
before and after each part, `backends/native_profile.py`), runs five training calls on random
data and splits one call into: per-step products (`U·h[t-1]` and `Uᵀ·δa[t]`), hoisted products
(`W·x` for all T at once, and `δx` after the loop), gradient products (`Σ δa·vᵀ`), element-wise
code, for a cell with a matrix state its matrix ops (outer products, `C·v`, row gates and sums, in
GB/s), other native code (loops, slices, copies, packing) and what lies outside native code (the
Python call, argument checks, ctypes). Products are reported in GFLOP/s against the FMA peak
measured on the spot (`rnncomp/inspect/peak.py`: a generated register-only FMA loop), element-wise
code in GB/s read and written against a large NumPy copy (a DRAM figure: data that stays in cache
can beat it). FLOPs are counted while the code is generated (`2·m·n` per product row), so they
are exactly what the compiled code does. With `--threads 2` the parts add both threads' time:
the table gives CPU milliseconds, shares of the call's CPU time, and rates per thread against one
core's peak; "outside native" is the wall time less the native time per thread (the Python call,
and the threads waiting for each other).

```python
import rnncomp as rc
from rnncomp.inspect.profile import profile

p = profile(rc.cells.gru(16, 32, 4), T=50, B=8, repeats=3)
print(p)                                    # the table; p.rows holds the figures
assert abs(sum(r.seconds for r in p.rows) - p.wall) < 1e-9
```

## Graphs
The DOT text is plain text and needs nothing installed.  It is deterministic: node ids
are `n0, n1, ...` in program order, so the same cell gives byte-identical DOT.

* **step**: the one-step program; the dotted edge `h[t] → h[t-1]` is the recurrence.
* **unfolded**: `rankdir=LR`, one cluster per step (`t = 0` holds the initial states);
  every parameter is drawn **once**, with an edge to each step that reads it.
* **gradient, compact** (`to_dot(cell, "gradient", detail="compact")`, `--dot gradient --detail
  compact`): the equation listing as a picture, one node per line (`name = expression`, with
  the names above: element-wise chains are folded into one expression), clustered by gate or
  state (`pre(o)`, `o`, `δpre(o)`, `∂L/∂Wo` together), time left to right (inputs, previous
  states and the arriving adjoints `δ⁺h[t]` first, the adjoints carried to step t-1 last);
  dashed edges follow the adjoints only, the forward values they read are in the labels.
  `--detail compact` on the step view: one node per named value.
* **gradient**: the forward step, the derived backward step (red octagons, dashed
  edges; seeds `δ⁺h[t]`, `w[t]` are red inverted houses), the carried adjoints
  `δ⁺h[t-1]` and the parameter-gradient terms `∂L/∂W = Σ δa·vᵀ`.

A matrix-valued state (`cell.state("C", (m, n))`, [dsl.md](dsl.md#matrix-valued-states)) is
one node in every view, labelled with its shape (`C[t-1] ∈ R^m×n`), as are its carried adjoint
`δ⁺C[t-1]` and the outer products, `C·v` and row sums that read it; a `Stack` or
`Bidirectional` draws each cell in clusters of its layer, wired bottom to top:

```python
from rnncomp import inspect as ri
from rnncomp.zoo_matrix import delta_rule

dot = ri.to_dot(delta_rule(3, 4, 2), "step")
assert dot.count('label="C[t-1]') == 1 and "R^4×4" in dot
```

In a notebook, `ri.picture(cell)` or `rc.explain(cell).picture()` (default: the compact
gradient graph; `kind=`, `detail=` as `to_dot`) shows itself as SVG; without a renderer it
shows the DOT text and what to install.

**Rendering** (`ri.render`, `--svg`, `--png`) takes the first route available:

1. Graphviz: `dot` on `PATH` renders the DOT text (best pictures; `apt install graphviz`).
2. matplotlib (installed with rnncomp): a deterministic layered drawing of the same
   graph: one column per group (parameters, then each time step; for the gradient graph:
   parameters, forward, backward, gradients), nodes in program order down the column,
   shifted right by their depth so that skipping edges stay visible.  SVG output has no
   date and a fixed hash salt, so it is byte-identical from run to run.
3. Neither: `RenderError` says what to install; the DOT text is still available.

## Costs
Per sample and per step, read off the programs: a `matvec` is 2·m·n FLOPs per term;
an element-wise node is `sympy.count_ops(template)` × its size (a copy is free);
`sum` is n, `lse` 4n; parameter gradients are 2·m·n per outer-product term and n per
bias term.  *Stored activations* are the forward values the backward program reads
(a lower bound on what an executor must keep for BPTT; a state is stored once per
step); inputs and targets are listed but belong to the caller.  Memory for (T, B) is
T·B·(stored per step) plus the initial states, the parameters and their gradients;
the table also shows what keeping every forward value would cost.

## Gradient flow
`ri.gradient_flow` runs the NumPy reference forward (keeping each step's values) and
the derived backward step for t = T … 1, and records per state the **total adjoint**
`∂L/∂h[t]` (what arrives from t+1 plus what step t's own cost adds), t = 0 … T: the change of the
loss when the value of the state node `h[t]` is perturbed after step t computed it (so a
cost that reads another node with the same value, such as `y[t]` for Jordan's `s[t] = y[t]`,
is not included, and `∂L/∂s[T]` is 0 there).
The step Jacobian `J[t] = ∂s[t]/∂s[t-1]` of the joint state vector (all states,
batch element 0) is exact: one backward step with `w = 0` and the unit vectors as
`δ⁺s[t]` (one per row of a batch) carries out the rows `e_iᵀ J`; `σmax` is its largest
singular value (above 1 for many steps: exploding gradients, below: vanishing).
The tests check both against central finite differences.

The sections below are generated by `python docs/make_inspect.py` for the zoo cells
(n_in = {n_in}, hidden = {hidden}, n_out = {n_out}): the DOT files in `docs/img/` and, drawn
from them by Graphviz (`python docs/make_inspect.py --images`), the SVG pictures beside them.
"""



def section(name: str) -> tuple[str, dict]:
    cell = rc.cells.ZOO[name](*SIZES)
    files = {f"{name}_step.dot": ri.to_dot(cell, "step"), f"{name}_gradient.dot": ri.to_dot(cell, "gradient"),
             f"{name}_gradient-compact.dot": ri.to_dot(cell, "gradient", detail="compact")}
    if name in UNFOLDED:
        files[f"{name}_unfolded3.dot"] = ri.to_dot(cell, "unfolded", 3)
    c = ri.cost(rc.cells.ZOO[name](64, 256, 10), T=1000, B=32, dtype="float32")
    params, inputs, targets = ri.random_problem(cell, T=30, B=4, seed=0)
    f = ri.gradient_flow(cell, params, inputs, targets)
    links = ", ".join(f"[{k}](img/{k})" for k in files)
    text = (f"## `{name}`\n\nGraphs (DOT): {links}.\n\n"
            f"![the gradient graph of {name}, compact](img/{name}_gradient-compact.svg)\n\n"
            f"```text\n{rc.explain(cell)}\n```\n\n"
            f"Costs at n_in = 64, hidden = 256, n_out = 10 (the first table of `rnncomp inspect {name} "
            f"--inputs 64 --hidden 256 --outputs 10 --cost`, which then compares the gradient "
            f"algorithms):\n\n```text\n{c.table()}\n```\n\n"
            f"Gradient flow, `init_params(seed=0)`, standard normal data, T = 30, B = 4 "
            f"(every 5th step of `rnncomp inspect {name} --inputs 3 --hidden 4 --outputs 2 --flow --T 30`, "
            f"which prints every step while T < 40):\n\n"
            f"```text\n{f.table(every=5)}\n```\n")
    return text, files


def generate() -> dict:
    """{path relative to the repository: text} of every generated file."""
    n_in, hidden, n_out = SIZES
    parts, out = [INTRO.format(n_in=n_in, hidden=hidden, n_out=n_out)], {}
    for name in rc.cells.ZOO:
        text, files = section(name)
        parts.append(text)
        out.update({f"docs/img/{k}": v for k, v in files.items()})
    out["docs/inspect.md"] = "\n".join(parts)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", action="store_true", help="also render docs/img/*.svg")
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = ap.parse_args(argv)
    files = generate()
    if args.check:
        stale = [p for p, t in files.items() if not (ROOT / p).exists() or (ROOT / p).read_text() != t]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    IMG.mkdir(parents=True, exist_ok=True)
    for p, t in files.items():
        (ROOT / p).write_text(t)
    if args.images:
        for p in files:
            if p.endswith(".dot"):
                name, kind = pathlib.Path(p).stem.rsplit("_", 1)
                kind, _, detail = kind.partition("-")
                k = 3 if kind.startswith("unfolded") else 1
                kind = "unfolded" if kind.startswith("unfolded") else kind
                engine = ri.render(rc.cells.ZOO[name](*SIZES), (ROOT / p).with_suffix(".svg"), kind=kind, k=k,
                                   detail=detail or "full")
                print(f"rendered {p[:-4]}.svg with {engine}")
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
