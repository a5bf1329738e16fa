"""The ``rnncomp`` command: ``demo``, ``inspect``, ``compile``, ``train``.

    rnncomp demo                 declare a GRU, show its equations and derived BPTT step,
                                 check the gradient against finite differences, time it
                                 against the NumPy reference, train it (checkpoint + PNG)
    rnncomp inspect CELL         equations [--latex|--markdown], graphs (--dot [step|unfolded|gradient]
                                 [--k K] [--png F|--svg F]), costs (--cost [--T 1000 --B 32 --dtype float32]),
                                 gradient flow (--flow [--T 50] [--png F]), --profile, --memory [--budget 10MB]
    rnncomp compile CELL --target ptx --arch sm_80 -o cell.ptx     compiled code (PTX, LLVM IR, assembly)
    rnncomp train CELL --task sine|adding|charlm|FILE [--epochs 5 --save F --resume F --plot F.png]
    mpiexec -n 4 rnncomp train ...     the same, data-parallel over 4 MPI ranks (docs/distributed.md)

``demo`` runs in :mod:`.cli_demo`, ``train`` in :mod:`.cli_train`; this module parses the
command line, runs ``inspect`` and ``compile``, and turns errors into messages.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import cells
from .cli_common import check_picture, check_writable, load_cell, natural, option, positive
from .cli_demo import demo
from .cli_train import add_arguments as _train_args, train_cmd
from .compile import compile as rc_compile
from .compose import Composition
from .errors import RnncompError
from .printing import explain


def _trained(spec: str):
    """``(cell, parameters)`` of a checkpoint file (``rnncomp inspect gru.ckpt``), or None
    when ``spec`` is not a file or is a .py file."""
    if spec.endswith(".py") or not os.path.isfile(spec):
        return None
    from .train import checkpoint as ck
    meta, arrays = ck.read(spec)
    if meta == "legacy":
        return arrays["cell"], {k: np.asarray(v, dtype=np.float64) for k, v in arrays["params"].items()}
    cell = ck.cell_from_dict(meta["cell"], spec)
    return cell, {n: arrays[f"param/{n}"].astype(np.float64) for n in meta["params"]}


def _unused_options(args) -> None:
    """Options given without the one they belong to: refused, not ignored."""
    if args.latex and args.markdown:
        raise SystemExit("rnncomp: --latex and --markdown: give one")
    if args.svg and args.flow:
        raise SystemExit("rnncomp: --svg draws a graph; the --flow plot is written with --png")
    drawn = args.dot is not None or args.svg or (args.png and not args.flow)
    for flag, given, needs, ok in (("--threads", args.threads is not None, "--profile", args.profile),
                                   ("--budget", args.budget is not None, "--memory", args.memory),
                                   ("--k", args.k is not None, "--dot unfolded", args.dot == "unfolded"),
                                   ("--detail", args.detail is not None, "--dot, --png or --svg", drawn)):
        if given and not ok:
            raise SystemExit(f"rnncomp: {flag} is for {needs}, which was not asked for")


def inspect_cmd(args) -> int:
    _unused_options(args)
    args.threads, args.k, args.detail = args.threads or 1, args.k or 3, args.detail or "full"
    check_writable(args.png, args.svg)
    check_picture("--png", args.png)
    check_picture("--svg", args.svg, ("svg",))
    if args.dot is not None or args.svg or (args.png and not args.flow):
        from .inspect.dot import check_view
        with option("--dot/--detail"):
            check_view(args.dot or "step", args.detail)
    trained = _trained(args.cell)
    if trained and any(v is not None for v in (args.inputs, args.hidden, args.outputs)):
        raise SystemExit(f"rnncomp: {args.cell} is a trained cell: its sizes are its own")
    cell = trained[0] if trained else load_cell(args.cell, args.inputs, args.hidden, args.outputs)
    args.trained_params = trained[1] if trained else None
    if isinstance(cell, Composition) and (args.cost or args.flow or args.memory or args.profile):
        raise SystemExit(f"rnncomp: --cost, --flow, --memory and --profile look at one cell; {cell.name} is a "
                         "composition: inspect its cells one by one (its equations and --dot show them all)")
    did = False
    if args.dot is not None or args.svg or (args.png and not args.flow):
        did = True
        _inspect_graph(cell, args)
    if args.cost:
        did = True
        from .inspect import cost
        print(cost(cell, T=args.T or 1000, B=args.B or 32, dtype=args.dtype).table())
        from .algorithms.cost import algorithm_costs
        print(algorithm_costs(cell, T=args.T or 1000, B=args.B or 32, dtype=args.dtype).table())
    if args.flow:
        did = True
        _inspect_flow(cell, args)
    if args.profile:
        did = True
        from .inspect.profile import profile
        print(profile(cell, T=args.T or 100, B=args.B or 32, dtype=args.dtype, threads=args.threads))
    if args.memory:
        did = True
        _inspect_memory(cell, args)
    if args.equations or not did:
        e = explain(cell)
        if args.latex:
            print(e.latex())
        elif args.markdown:
            print(e.markdown())
        else:
            print(e)
    return 0


def _inspect_graph(cell, args) -> None:
    """``--dot [KIND]``: print the DOT text; with ``--png``/``--svg`` (and no ``--flow``) draw it."""
    from .inspect import render, to_dot

    kind = args.dot or "step"
    pictures = [] if args.flow else [f for f in (args.png, args.svg) if f]
    if not pictures:
        print(to_dot(cell, kind, args.k, args.detail), end="")
    for path in pictures:
        try:
            engine = render(cell, path, kind=kind, k=args.k, detail=args.detail)
        except RuntimeError as exc:
            raise SystemExit(f"rnncomp: {exc}") from None
        print(f"wrote {path} ({kind} graph, drawn with {engine})")


def _inspect_flow(cell, args) -> None:
    """``--flow``: gradient flow through time for random data (``--seed``) and random
    parameters, or the trained ones of a checkpoint."""
    from .inspect import gradient_flow, random_problem

    params, inputs, targets = random_problem(cell, T=args.T or 50, B=args.B or 4, seed=args.seed)
    if args.trained_params is not None:
        params = args.trained_params
        print(f"trained parameters of {args.cell}; random data (--seed {args.seed})")
    f = gradient_flow(cell, params, inputs, targets)
    print(f.table())
    if args.png:
        try:
            f.plot(args.png)
        except RuntimeError as exc:
            raise SystemExit(f"rnncomp: {exc}") from None
        print(f"wrote {args.png} (gradient flow)")


def _inspect_memory(cell, args) -> None:
    """``--memory``: the checkpointing schedule of ``--budget`` against store-all and Every(√T)."""
    from .inspect.memory import memory_report

    with option("--budget"):
        report = memory_report(cell, T=args.T or 1000, B=args.B or 32, dtype=args.dtype, budget=args.budget)
    print(report.table())


def _inspect_args(ins) -> None:
    ins.add_argument("cell", help=f"a zoo cell ({', '.join(sorted(cells.ZOO))}), module:name, file.py[:name] "
                                  "or a checkpoint (its trained cell; --flow with its parameters)")
    ins.add_argument("--equations", action="store_true",
                     help="the forward and backward equations (the default when nothing else is asked)")
    ins.add_argument("--latex", action="store_true", help="the equations as LaTeX (an aligned block)")
    ins.add_argument("--markdown", action="store_true", help="the equations as Markdown with $$ LaTeX blocks")
    ins.add_argument("--dot", nargs="?", const="step", choices=["step", "unfolded", "gradient"],
                     help="Graphviz DOT text of the one-step (default), unfolded (--k steps) or gradient graph")
    ins.add_argument("--k", type=positive, default=None, help="steps of the unfolded graph (default 3)")
    ins.add_argument("--detail", choices=["full", "compact"], default=None,
                     help="compact: the graph as the equations, one node per named value (step) "
                          "or per line of the listing, clustered by gate (gradient)")
    ins.add_argument("--png", metavar="FILE", help="draw the graph (with --flow: the flow plot) to a PNG")
    ins.add_argument("--svg", metavar="FILE", help="draw the graph to an SVG")
    ins.add_argument("--cost", action="store_true", help="FLOPs, stored activations and memory; per gradient algorithm (BPTT, RTRL, SnAp, UORO)")
    ins.add_argument("--profile", action="store_true",
                     help="time one native training call by parts (products, element-wise, overhead) "
                          "against the machine's limits (--T 100 --B 32 --threads 1)")
    ins.add_argument("--threads", type=positive, default=None, help="threads for --profile (default 1)")
    ins.add_argument("--flow", action="store_true",
                     help="gradient flow through time for random parameters and data")
    ins.add_argument("--memory", action="store_true",
                     help="the checkpointing schedule for --budget (memory, recomputed steps, predicted time)")
    ins.add_argument("--budget", default=None, metavar="BYTES",
                     help="activation memory for --memory: 10000000, 10MB, 64MiB (default: 5%% of store-all)")
    ins.add_argument("--T", type=positive, default=None, help="sequence length (--cost, --memory: 1000, --flow: 50, --profile: 100)")
    ins.add_argument("--B", type=positive, default=None, help="batch size (--cost, --memory: 32, --flow: 4, --profile: 32)")
    ins.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="for --cost, --memory, --profile")
    ins.add_argument("--seed", type=natural, default=0, help="random parameters and data for --flow")
    _size_args(ins)


def _size_args(p) -> None:
    for name, default in (("--inputs", 8), ("--hidden", 16), ("--outputs", 4)):
        p.add_argument(name, type=positive, default=None, help=f"size of a zoo cell (default {default})")


def compile_cmd(args) -> int:
    """Write the compiled code of a cell: PTX for ``--target ptx``, LLVM IR or assembly for native."""
    check_writable(args.output)
    if args.target == "ptx" and args.emit is not None:
        raise SystemExit(f"rnncomp: --emit {args.emit} is for --target native; --target ptx writes PTX")
    if args.target == "native" and args.arch is not None:
        raise SystemExit(f"rnncomp: --arch {args.arch} is for --target ptx; --target native compiles for this CPU")
    cell = load_cell(args.cell, args.inputs, args.hidden, args.outputs)
    if isinstance(cell, Composition):
        raise SystemExit(f"rnncomp: compile writes one cell's code; {cell.name} is a composition: compile its "
                         "cells one by one")
    if args.target == "ptx":
        model = rc_compile(cell, backend="ptx", dtype=args.dtype, arch=args.arch or "sm_90")
        text = model.ptx
    else:
        model = rc_compile(cell, backend="native", dtype=args.dtype, cache=None)
        text = model.asm() if args.emit == "asm" else model.ir()
    text = text if text.endswith("\n") else text + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
        print(f"wrote {args.output} ({len(text.splitlines())} lines, {args.target}, {args.dtype})")
    return 0


DEMO_HELP = """\
A tour of a few seconds: declares a GRU in the DSL, prints its forward equations and
the BPTT step rnncomp derived, checks that gradient against central finite differences,
compiles it for this CPU and times it against the NumPy reference, then trains it on sine
waves. Writes rnncomp-demo-gru.ckpt and rnncomp-demo-gru.png to the temporary directory."""

INSPECT_HELP = """\
Shows what rnncomp derived for a cell: its forward and backward equations (the default),
graphs as DOT text or pictures, FLOP and memory costs, gradient norms through time, a
profile of one native training call, or a checkpointing schedule (docs/inspect.md)."""

INSPECT_EXAMPLES = """\
examples:
  rnncomp inspect lstm                              equations and the derived BPTT step
  rnncomp inspect lstm --latex
  rnncomp inspect gru --dot gradient --svg g.svg    draw the gradient graph
  rnncomp inspect lstm --cost --T 1000 --B 32       FLOPs and memory
  rnncomp inspect lstm --flow --png flow.png        gradient norms through time
  rnncomp inspect lstm --memory --budget 10MB       checkpointing schedule"""

COMPILE_HELP = """\
Writes the code rnncomp generates for a cell's forward and backward (BPTT) passes: LLVM IR
or assembly for this CPU, or PTX for an NVIDIA GPU."""

COMPILE_EXAMPLES = """\
examples:
  rnncomp compile lstm                               LLVM IR to standard output
  rnncomp compile lstm --emit asm -o lstm.s          this CPU's assembly
  rnncomp compile gru --target ptx --arch sm_80 -o gru.ptx"""

TRAIN_HELP = """\
Trains a cell (a zoo cell by default) on a built-in task or a text file and prints the
loss next to the task's trivial baseline."""

TRAIN_EXAMPLES = """\
examples:
  rnncomp train gru --task adding --T 100 --epochs 5 --save gru.ckpt
  rnncomp train --resume gru.ckpt                     5 more epochs, saved back to gru.ckpt
  rnncomp train lstm --task charlm --plot curve.png   character model of the shipped text
  mpiexec -n 4 rnncomp train lstm --task charlm       data-parallel over 4 MPI ranks"""


def build_parser() -> argparse.ArgumentParser:
    """The ``rnncomp`` argument parser (the docs' commands are checked against it)."""
    from . import __version__

    p = argparse.ArgumentParser(prog="rnncomp", description="A symbolic autodiff compiler for recurrent networks.")
    p.add_argument("--version", action="version", version=f"rnncomp {__version__}")
    sub = p.add_subparsers(dest="cmd")
    raw = argparse.RawDescriptionHelpFormatter  # keeps the examples' lines as written
    sub.add_parser("demo", help="declare a GRU, show its BPTT equations, check the gradient, train it",
                   formatter_class=raw, description=DEMO_HELP)
    ins = sub.add_parser("inspect", help="a cell's equations, graphs (DOT), costs and gradient flow",
                         formatter_class=raw, description=INSPECT_HELP, epilog=INSPECT_EXAMPLES)
    _inspect_args(ins)
    comp = sub.add_parser("compile", help="write a cell's compiled code (PTX, LLVM IR, assembly)",
                          formatter_class=raw, description=COMPILE_HELP, epilog=COMPILE_EXAMPLES)
    comp.add_argument("cell", help="a zoo cell, module:name or file.py[:name]")
    comp.add_argument("--target", choices=["ptx", "native"], default="native",
                      help="native: this CPU, via LLVM (default); ptx: NVIDIA GPUs (no GPU needed to compile)")
    comp.add_argument("--arch", default=None, help="GPU architecture for --target ptx (sm_75 and newer; default sm_90)")
    comp.add_argument("--emit", choices=["ir", "asm"], default=None, help="for --target native (default ir)")
    comp.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default float32")
    comp.add_argument("-o", "--output", help="file to write (default: standard output)")
    _size_args(comp)
    tr = sub.add_parser("train", help="train a cell on a built-in task or a text",
                        formatter_class=raw, description=TRAIN_HELP, epilog=TRAIN_EXAMPLES)
    _train_args(tr)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 0
    try:
        return {"demo": demo, "inspect": inspect_cmd, "compile": compile_cmd, "train": train_cmd}[args.cmd](args)
    except RnncompError as exc:  # a message, not a traceback: bad cells, checkpoints, options
        raise SystemExit(f"rnncomp: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C: a line, and the shell's status of a SIGINT (128 + 2)
        sys.stderr.write("\nrnncomp: interrupted\n")
        return 130
    except BrokenPipeError:  # `rnncomp ... | head`: the reader left; no message (it is gone too),
        devnull = os.open(os.devnull, os.O_WRONLY)  # but not a success: the command stopped there
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail the same way again
        return 1
    except OSError as exc:  # files: the name and the reason
        where = f"{exc.filename}: " if exc.filename else ""
        raise SystemExit(f"rnncomp: {where}{exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
