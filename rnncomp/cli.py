"""The ``rnncomp`` command: ``demo``, ``inspect``.

    rnncomp demo                 declare a GRU, show its equations and derived BPTT step,
                                 check the gradient against finite differences, time it
                                 against the NumPy reference, train it (checkpoint + PNG)
    rnncomp inspect CELL         equations, graphs, costs, gradient flow of a cell
    rnncomp compile CELL --target ptx --arch sm_80 -o cell.ptx     compiled code;
                                 --dot [step|unfolded|gradient] [--k K] [--png F|--svg F],
                                 --cost [--T 1000 --B 32 --dtype float32], --flow [--T 50] [--png F]
    rnncomp train CELL --task sine|adding|charlm|FILE [--epochs 5 --save F --resume F --plot F.png]
    mpiexec -n 4 rnncomp train ...     the same, data-parallel over 4 MPI ranks (docs/distributed.md)
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time

import numpy as np

from . import cells
from .cell import Cell
from .compile import compile as rc_compile
from .printing import explain


def load_cell(spec: str, n_in=8, hidden=16, n_out=4) -> Cell:
    """A zoo name, ``module:name``, or ``path/to/file.py[:name]`` holding a Cell."""
    if spec in cells.ZOO:
        return cells.ZOO[spec](n_in, hidden, n_out)
    path, _, name = spec.partition(":")
    if path.endswith(".py"):
        s = importlib.util.spec_from_file_location("_rnncomp_user_cell", path)
        if s is None or s.loader is None:
            raise SystemExit(f"rnncomp: cannot read {path}")
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(path)
        except ImportError as exc:
            raise SystemExit(f"rnncomp: {spec!r} is neither a zoo cell ({', '.join(sorted(cells.ZOO))}) "
                             f"nor an importable module: {exc}") from None
    found = [v for k, v in vars(mod).items() if isinstance(v, Cell) and (not name or k == name)]
    if len(found) != 1:
        raise SystemExit(f"rnncomp: {spec!r} must hold exactly one Cell (found {len(found)}); "
                         "name it with FILE.py:NAME")
    return found[0]


def demo(args) -> int:
    print("rnncomp demo: a GRU declared in the DSL, its derived BPTT step, checked.\n")
    cell = cells.gru(4, 8, 2)
    e = explain(cell)
    print(e.forward_text(), "\n")
    print(e.backward_text(), "\n")
    model = rc_compile(cell, backend="numpy", dtype="float64")
    rng = np.random.default_rng(0)
    params = cell.init_params(seed=0)
    x = rng.normal(size=(20, 4, 4))
    y = rng.normal(size=(20, 4, 2))
    t0 = time.perf_counter()
    loss, grads, _ = model.loss_and_grad(params, x, y)
    dt = time.perf_counter() - t0
    print(f"loss over T=20, B=4: {loss:.6f}  ({dt * 1e3:.1f} ms, NumPy reference executor)")
    print("gradient check, central differences (eps 1e-6) in a random direction per parameter:")
    worst = 0.0
    for name, value in params.items():
        d = rng.normal(size=value.shape)
        lp = model.loss_and_grad(dict(params, **{name: value + 1e-6 * d}), x, y)[0]
        lm = model.loss_and_grad(dict(params, **{name: value - 1e-6 * d}), x, y)[0]
        fd, an = (lp - lm) / 2e-6, float((grads[name] * d).sum())
        rel = abs(fd - an) / max(abs(fd), 1e-12)
        worst = max(worst, rel)
        print(f"  {name:>3}: derived {an:+.10f}   finite difference {fd:+.10f}   rel. error {rel:.1e}")
    ok = worst < 1e-6
    print(f"\n{'OK' if ok else 'MISMATCH'}: worst relative error {worst:.1e} (tolerance 1e-6)")
    ok = _native_vs_reference(cell, params, x, y, loss, grads) and ok
    _demo_training()
    return 0 if ok else 1


def _demo_training() -> None:
    import os
    import tempfile

    from .train import Adam, Trainer
    from .train.tasks import sine

    print("\ntraining a GRU (H=32) to continue sine waves: native backend, float32, Adam, clip 1.0")
    xs, ys, _ = sine(T=50, N=544, seed=1)
    xt, yt, x, y = xs[:, :32], ys[:, :32], xs[:, 32:], ys[:, 32:]  # 32 held-out waves, 512 to train on
    tr = Trainer(cells.gru(1, 32, 1), Adam(1e-2), clip_norm=1.0, backend="native", dtype="float32")
    print(f"  held-out loss before: {tr.evaluate(xt, yt):.5f}")
    t0 = time.perf_counter()
    for epoch in range(8):
        tr.fit(x, y, epochs=1, batch_size=32, seed=epoch, verbose=0)
        print(f"  epoch {epoch + 1}: training loss {tr.history[-1]:.5f}   held-out {tr.evaluate(xt, yt):.5f}")
    print(f"  {tr.step_count} updates (forward + BPTT + clip + Adam) in {time.perf_counter() - t0:.2f} s")
    ref = rc_compile(tr.cell, backend="numpy", dtype="float32")
    b = (x[:, :32], y[:, :32])
    tn = min(_timed(lambda: tr.model.loss_and_grad(tr.params, *b)) for _ in range(5))
    tref = min(_timed(lambda: ref.loss_and_grad(tr.params, *b)) for _ in range(3))
    print(f"  one step of this training (T=50, B=32, forward + BPTT): native {tn * 1e3:.2f} ms, "
          f"NumPy reference {tref * 1e3:.2f} ms ({tref / tn:.1f}x)")
    ckpt = os.path.join(tempfile.gettempdir(), "rnncomp-demo-gru.ckpt")
    png = os.path.join(tempfile.gettempdir(), "rnncomp-demo-gru.png")
    tr.save(ckpt)
    tr.plot(png, title="rnncomp demo: GRU learning sine waves")
    print(f"  checkpoint: {ckpt}  (resume: rnncomp train --resume {ckpt})")
    print(f"  learning curve: {png}")


def _native_vs_reference(cell, params, x, y, loss, grads) -> bool:
    print("\nnative backend (LLVM, this CPU), float64, against the NumPy reference:")
    t0 = time.perf_counter()
    native = rc_compile(cell, backend="native", dtype="float64")
    print(f"  compiled in {time.perf_counter() - t0:.2f} s")
    nl, ng, _ = native.loss_and_grad(params, x, y)
    diff = max(float(np.abs(ng[k] - grads[k]).max() / (np.abs(grads[k]).max() + 1e-300)) for k in grads)
    ref = rc_compile(cell, backend="numpy", dtype="float64")
    tn = min(_timed(lambda: native.loss_and_grad(params, x, y)) for _ in range(5))
    tr = min(_timed(lambda: ref.loss_and_grad(params, x, y)) for _ in range(3))
    print(f"  loss {nl:.12f} (reference {loss:.12f}); largest gradient difference {diff:.1e} (relative)")
    print(f"  training step: native {tn * 1e3:.2f} ms, reference {tr * 1e3:.2f} ms ({tr / tn:.1f}x)")
    return diff < 1e-10


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def inspect_cmd(args) -> int:
    cell = load_cell(args.cell, args.inputs, args.hidden, args.outputs)
    did = False
    if args.dot is not None or args.svg or (args.png and not args.flow):
        did = True
        _inspect_graph(cell, args)
    if args.cost:
        did = True
        from .inspect import cost
        print(cost(cell, T=args.T or 1000, B=args.B or 32, dtype=args.dtype).table())
    if args.flow:
        did = True
        _inspect_flow(cell, args)
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
        print(to_dot(cell, kind, args.k), end="")
    for path in pictures:
        try:
            engine = render(cell, path, kind=kind, k=args.k)
        except RuntimeError as exc:
            raise SystemExit(f"rnncomp: {exc}") from None
        print(f"wrote {path} ({kind} graph, drawn with {engine})")


def _inspect_flow(cell, args) -> None:
    """``--flow``: gradient flow through time for random parameters and data (``--seed``)."""
    from .inspect import gradient_flow, random_problem

    params, inputs, targets = random_problem(cell, T=args.T or 50, B=args.B or 4, seed=args.seed)
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

    try:
        print(memory_report(cell, T=args.T or 1000, B=args.B or 32, dtype=args.dtype, budget=args.budget).table())
    except ValueError as exc:
        raise SystemExit(f"rnncomp: {exc}") from None


def _inspect_args(ins) -> None:
    ins.add_argument("cell", help=f"a zoo cell ({', '.join(sorted(cells.ZOO))}), module:name or file.py[:name]")
    ins.add_argument("--equations", action="store_true",
                     help="the forward and backward equations (the default when nothing else is asked)")
    ins.add_argument("--latex", action="store_true")
    ins.add_argument("--markdown", action="store_true")
    ins.add_argument("--dot", nargs="?", const="step", choices=["step", "unfolded", "gradient"],
                     help="Graphviz DOT text of the one-step (default), unfolded (--k steps) or gradient graph")
    ins.add_argument("--k", type=int, default=3, help="steps of the unfolded graph (default 3)")
    ins.add_argument("--png", metavar="FILE", help="draw the graph (with --flow: the flow plot) to a PNG")
    ins.add_argument("--svg", metavar="FILE", help="draw the graph to an SVG")
    ins.add_argument("--cost", action="store_true", help="FLOPs, stored activations and memory")
    ins.add_argument("--flow", action="store_true",
                     help="gradient flow through time for random parameters and data")
    ins.add_argument("--memory", action="store_true",
                     help="the checkpointing schedule for --budget (memory, recomputed steps, predicted time)")
    ins.add_argument("--budget", default=None, metavar="BYTES",
                     help="activation memory for --memory: 10000000, 10MB, 64MiB (default: 5%% of store-all)")
    ins.add_argument("--T", type=int, default=None, help="sequence length (--cost, --memory: 1000, --flow: 50)")
    ins.add_argument("--B", type=int, default=None, help="batch size (--cost, --memory: 32, --flow: 4)")
    ins.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="for --cost, --memory")
    ins.add_argument("--seed", type=int, default=0, help="random parameters and data for --flow")
    ins.add_argument("--inputs", type=int, default=8)
    ins.add_argument("--hidden", type=int, default=16)
    ins.add_argument("--outputs", type=int, default=4)


def train_cmd(args) -> int:
    """Train a cell on a built-in task (sine, adding) or a text (charlm: the shipped corpus,
    or a FILE) as a character-level language model; with checkpoints and a learning curve."""
    import contextlib
    import os

    from .train.tasks import TASKS

    with contextlib.ExitStack() as stack:
        if _distributed(args):  # one output: rank 0's (the others train silently)
            from .train.distributed import Group
            group = Group()
            if group.is_root:
                print(f"distributed: {group.size} MPI ranks, each sharing the node's cores "
                      f"({group.threads_per_rank()} thread(s) per rank on this node)")
            else:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        tr = _train_task(args, TASKS[args.task]) if args.task in TASKS else _train_text(args)
        if args.save:
            tr.save(args.save)
            print(f"  checkpoint: {args.save}")
        if args.plot:
            print(f"  learning curve: {tr.plot(args.plot)}")
    return 0


def _distributed(args):
    """"mpi" when asked to (``--distributed mpi``), or, by default, when an MPI launcher
    started this process among others; None otherwise."""
    from .train.distributed import launched_by_mpiexec

    if args.distributed == "none":
        return None
    n = launched_by_mpiexec()
    if args.distributed == "auto" and n <= 1:
        return None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise SystemExit(f"rnncomp: started as one of {n} MPI processes, but mpi4py is not installed; "
                         "pip install 'rnncomp[mpi]' (or pass --distributed none to train "
                         "independently)") from None
    return "mpi"


def _new_or_resumed(args, make_cell, lr, check=None):
    from .train import Adam, Trainer, Truncated

    if args.resume:
        tr = Trainer.load(args.resume, backend=args.backend, distributed=_distributed(args))
        print(f"resumed {args.resume} at step {tr.step_count}")
    else:
        bptt = Truncated(args.k1, args.k2 or args.k1) if args.k1 else None
        tr = Trainer(make_cell(), Adam(lr), clip_norm=1.0, bptt=bptt, backend=args.backend, seed=args.seed,
                     distributed=_distributed(args))
    if check:
        check(tr.cell)
    return tr


def _train_task(args, task):
    """A built-in task: ``--N`` sequences of ``--T`` steps, an eighth held out."""
    T, hidden, lr = args.T or 50, args.hidden or 32, args.lr or 1e-2
    x, y, mask = task(T=T, N=args.N, seed=args.seed)
    n_in, n_out = x.shape[2], y.shape[2]
    tr = _new_or_resumed(args, lambda: load_cell(args.cell, n_in, hidden, n_out), lr)
    n_test = max(1, args.N // 8)
    xt, yt = x[:, :n_test], y[:, :n_test]
    mt = None if mask is None else mask[:, :n_test]
    print(f"training {tr.cell.name!r} on {args.task} (T={T}, {args.N} sequences), {args.backend} backend")
    print(f"  before: held-out loss {tr.evaluate(xt, yt, mask=mt):.5f}")
    tr.fit(x[:, n_test:], y[:, n_test:], epochs=args.epochs, batch_size=args.batch,
           mask=None if mask is None else mask[:, n_test:], verbose=1)
    print(f"  after:  held-out loss {tr.evaluate(xt, yt, mask=mt):.5f}")
    return tr


def _train_text(args):
    """``--task charlm`` (the shipped corpus) or ``--task FILE``: next-character prediction with
    softmax cross-entropy, stateful over ``--batch`` parallel streams of ``--T``-step windows;
    the last 10 % of the text is held out."""
    import os

    from .train.text import CharVocab, bits_per_char, char_data, corpus, sample_text

    if args.task == "charlm":
        text, what = corpus(), "Pride and Prejudice, ch. 1-30 (shipped)"
    elif os.path.isfile(args.task):
        with open(args.task, encoding="utf-8", errors="replace") as fh:
            text, what = fh.read(), args.task
    else:
        raise SystemExit(f"rnncomp: --task must be sine, adding, charlm or a text file; {args.task!r} is none")
    T, hidden, lr = args.T or 100, args.hidden or 128, args.lr or 3e-3
    vocab = CharVocab(text)
    V = len(vocab)
    if len(text) < 4 * args.batch * T:
        raise SystemExit(f"rnncomp: {what} has {len(text)} characters, too few for --batch {args.batch} "
                         f"streams of --T {T}; lower them")

    def make_cell():
        if args.cell in cells.ZOO:
            return cells.ZOO[args.cell](V, hidden, V, loss="xent")
        return load_cell(args.cell)

    def check(cell):
        sizes = list(cell.step.inputs.values()) + list(cell.step.targets.values())
        if len(sizes) != 2 or sizes != [V, V]:
            raise SystemExit(f"rnncomp: a character model of {what} needs one input and one target of "
                             f"size {V} (its vocabulary); cell {cell.name!r} has {sizes}")

    tr = _new_or_resumed(args, make_cell, lr, check)
    data = char_data(text, T=T, batch_size=args.batch, vocab=vocab, dtype=tr.dtype)
    print(f"training {tr.cell.name!r} as a character model of {what}: {len(text)} characters, "
          f"{V} distinct, {args.backend} backend")

    def bpc():
        return bits_per_char(tr.evaluate(data.x_test, data.y_test, window=T))

    print(f"  before: held-out {bpc():.3f} bits per character (uniform: {np.log2(V):.3f})")
    tr.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=args.batch, stateful=True, verbose=1)
    print(f"  after:  held-out {bpc():.3f} bits per character")
    prime = text[:max(1, text.find(" "))][:20]
    print("  sample: " + sample_text(tr, vocab, prime, 200, temperature=0.7).replace("\n", "\n          "))
    return tr


def compile_cmd(args) -> int:
    """Write the compiled code of a cell: PTX for ``--target ptx``, LLVM IR or assembly for native."""
    cell = load_cell(args.cell, args.inputs, args.hidden, args.outputs)
    if args.target == "ptx":
        model = rc_compile(cell, backend="ptx", dtype=args.dtype, arch=args.arch)
        text = model.ptx
    else:
        model = rc_compile(cell, backend="native", dtype=args.dtype, cache=None)
        text = model.asm() if args.emit == "asm" else model.ir()
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
        print(f"wrote {args.output} ({len(text.splitlines())} lines, {args.target}, {args.dtype})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rnncomp", description="A symbolic autodiff compiler for recurrent networks.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="declare a GRU, show its BPTT equations, check the gradient, train it")
    ins = sub.add_parser("inspect", help="a cell's equations, graphs (DOT), costs and gradient flow")
    _inspect_args(ins)
    comp = sub.add_parser("compile", help="write a cell's compiled code (PTX, LLVM IR, assembly)")
    comp.add_argument("cell", help="a zoo cell, module:name or file.py[:name]")
    comp.add_argument("--target", choices=["ptx", "native"], default="native")
    comp.add_argument("--arch", default="sm_90", help="GPU architecture for --target ptx (sm_75 and newer)")
    comp.add_argument("--emit", choices=["ir", "asm"], default="ir", help="for --target native")
    comp.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    comp.add_argument("-o", "--output", help="file to write (default: standard output)")
    for name, default in (("--inputs", 8), ("--hidden", 16), ("--outputs", 4)):
        comp.add_argument(name, type=int, default=default)
    tr = sub.add_parser("train", help="train a cell on a built-in task or a text")
    tr.add_argument("cell", nargs="?", default="gru", help="a zoo cell, module:name or file.py[:name]")
    tr.add_argument("--task", default="sine", metavar="sine|adding|charlm|FILE",
                    help="a built-in task, the shipped text (charlm) or a text FILE to model "
                         "character by character (default: sine)")
    tr.add_argument("--epochs", type=int, default=5)
    tr.add_argument("--lr", type=float, default=None, help="Adam's step (default 1e-2; text: 3e-3)")
    tr.add_argument("--hidden", type=int, default=None, help="hidden units (default 32; text: 128)")
    tr.add_argument("--T", type=int, default=None, help="sequence length (default 50; text: 100)")
    tr.add_argument("--N", type=int, default=256, help="number of sequences (sine, adding)")
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--k1", type=int, default=0, help="truncated BPTT: steps between updates")
    tr.add_argument("--k2", type=int, default=0, help="truncated BPTT: steps back-propagated")
    tr.add_argument("--backend", choices=["native", "numpy"], default="native")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save", help="write a checkpoint here")
    tr.add_argument("--resume", help="continue from a checkpoint")
    tr.add_argument("--plot", metavar="PNG", help="write the learning curve here")
    tr.add_argument("--distributed", choices=["auto", "mpi", "none"], default="auto",
                    help="data-parallel over MPI ranks; auto: when started by mpiexec/srun among "
                         "other processes")
    args = p.parse_args(argv)
    return {"demo": demo, "inspect": inspect_cmd, "compile": compile_cmd, "train": train_cmd}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
