"""``rnncomp train``: a cell on a built-in task (sine, adding) or a text, with checkpoints.

The task and its sizes are kept in the checkpoint (``Trainer.info["task"]``), so
``rnncomp train --resume F`` continues the same run; each epoch's state is saved to
``--save`` (by default, with ``--resume F``: back to F; every ``--save-every`` epochs, and on
Ctrl-C), atomically.  Every task prints
its trivial baseline next to the loss, so a loss that learnt nothing reads as such.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from . import cells
from .cli_common import (check_picture, check_writable, load_cell, natural, natural_float, option, positive,
                         positive_float)


def add_arguments(tr) -> None:
    tr.add_argument("cell", nargs="?", default=None,
                    help="a zoo cell, module:name or file.py[:name] (default gru; with --resume: the saved one)")
    tr.add_argument("--task", default=None, metavar="sine|adding|charlm|FILE",
                    help="a built-in task, the shipped text (charlm) or a text FILE to model "
                         "character by character (default: sine; with --resume: the saved one)")
    tr.add_argument("--epochs", type=natural, default=5, help="passes over the training data (default 5)")
    tr.add_argument("--lr", type=positive_float, default=None, help="the optimizer's learning rate (default 1e-2; text: 3e-3)")
    tr.add_argument("--hidden", type=positive, default=None, help="hidden units of a zoo cell (default 32; text: 128)")
    tr.add_argument("--T", type=positive, default=None, help="sequence length (default 50; text: 100)")
    tr.add_argument("--N", type=positive, default=None, help="number of sequences (sine: 256, adding: 4096)")
    tr.add_argument("--batch", type=positive, default=None,
                    help="sequences per update (default 32; with --resume: the saved one)")
    tr.add_argument("--k1", type=natural, default=None,
                    help="truncated BPTT: steps between updates (0, the default: off, whole sequences; "
                         "with --resume: the saved one)")
    tr.add_argument("--k2", type=natural, default=None, help="truncated BPTT: steps back-propagated (default --k1)")
    tr.add_argument("--backend", choices=["native", "numpy"], default=None,
                    help="default native; with --resume: the saved one")
    tr.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None, help="default adam")
    tr.add_argument("--clip", type=natural_float, default=None, metavar="NORM",
                    help="clip the gradient's norm to NORM (default 1.0; 0: no clipping)")
    tr.add_argument("--memory", default=None, metavar="all|every[:N]|binomial:S|budget:BYTES",
                    help="what BPTT stores (native backend): all (default), every N steps (every: √T), "
                         "revolve with S slots, or the fewest recomputations within BYTES (30MB)")
    tr.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default float32")
    tr.add_argument("--threads", type=positive, default=None, help="native backend threads (default: all cores)")
    tr.add_argument("--seed", type=natural, default=None,
                    help="of the data and the initial parameters (default 0; with --resume: the saved one)")
    tr.add_argument("--save", help="write a checkpoint here after every epoch (see --save-every) and on Ctrl-C")
    tr.add_argument("--save-every", type=positive, default=1, metavar="K", help="save every K epochs (default 1)")
    tr.add_argument("--resume", help="continue from a checkpoint (its cell, task and sizes), saved back to it "
                         "as the run goes on (--save elsewhere to keep it as it is)")
    tr.add_argument("--plot", metavar="PNG", help="write the learning curve here")
    tr.add_argument("--distributed", choices=["auto", "mpi", "none"], default="auto",
                    help="data-parallel over MPI ranks; auto: when started by mpiexec/srun among "
                         "other processes")


OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


def parse_memory(text: str):
    """``all``, ``every``, ``every:N``, ``binomial:S``, ``budget:30MB`` → a memory schedule."""
    from .memory import Binomial, Budget, Every
    kind, _, arg = text.partition(":")
    try:
        if kind == "all" and not arg:
            return "all"
        if kind in ("every", "binomial") and arg and not arg.isdigit():
            raise SystemExit(f"rnncomp: --memory {text}: {kind}:{'N' if kind == 'every' else 'S'} takes a whole number, got {arg!r}")
        if kind == "every":
            return Every(int(arg)) if arg else Every()
        if kind == "binomial":
            if not arg:
                raise SystemExit(f"rnncomp: --memory {text}: binomial:S needs S, the number of checkpoint slots")
            return Binomial(int(arg))
        if kind == "budget":
            return Budget(arg)
    except ValueError as exc:
        raise SystemExit(f"rnncomp: --memory {text}: {exc}") from None
    raise SystemExit(f"rnncomp: --memory {text!r}: use all, every, every:N, binomial:S or budget:BYTES")


def _compile_options(args) -> dict:
    opts = {}
    if args.memory is not None:
        opts["memory"] = parse_memory(args.memory)
    if args.threads is not None:
        opts["threads"] = args.threads
    return opts


TASK_DEFAULTS = {"sine": {"T": 50, "N": 256, "hidden": 32, "lr": 1e-2},
                 "adding": {"T": 100, "N": 4096, "hidden": 32, "lr": 1e-2},
                 "text": {"T": 100, "N": None, "hidden": 128, "lr": 3e-3}}


def train_cmd(args) -> int:
    """Train a cell on a built-in task (sine, adding) or a text (charlm: the shipped corpus,
    or a FILE) as a character-level language model; with checkpoints and a learning curve."""
    from .train import Trainer
    from .train.tasks import TASKS
    if args.cell is not None and not args.cell.strip():
        raise SystemExit("rnncomp: the cell is an empty name: give a zoo cell, module:name or file.py[:name]")

    if args.resume and not args.save:  # a continued run is saved where it came from, not lost
        target = args.resume if os.path.exists(args.resume) else os.path.dirname(os.path.abspath(args.resume))
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise SystemExit(f"rnncomp: --resume {args.resume} saves the continued run back to it, but it is "
                             "read-only here: give --save FILE to write it elsewhere")
        args.save = args.resume
    check_writable(args.save, args.plot)
    check_picture("--plot", args.plot, ("png", "svg"))
    with contextlib.ExitStack() as stack:
        if _distributed(args):  # one output: rank 0's (the others train silently)
            from .train.distributed import Group
            group = Group()
            if group.is_root:
                print(f"distributed: {group.size} MPI ranks, each sharing the node's cores "
                      f"({group.threads_per_rank()} thread(s) per rank on this node)")
            else:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        return _train(args, Trainer, TASKS)


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


def _train(args, Trainer, TASKS) -> int:
    tr, run = None, {}
    if args.resume:
        given = [f for f, v in (("--lr", args.lr), ("--optimizer", args.optimizer), ("--clip", args.clip)) if v is not None]
        if given:
            raise SystemExit(f"rnncomp: {', '.join(given)}: {args.resume} holds its optimizer, learning rate and "
                             "clipping, and continues with them")
        if args.memory or args.threads:  # the backend is the saved one unless given (not always native)
            backend = args.backend or _saved_backend(args.resume)
            if backend != "native":
                raise SystemExit("rnncomp: --memory and --threads are for the native backend" + (
                    "" if args.backend else f"; {args.resume} trains on the {backend} backend (--backend "
                                            "native moves it)"))
        given = {} if args.k1 is None and args.k2 is None else {"bptt": _bptt(args)}  # else the saved one
        tr = Trainer.load(args.resume, backend=args.backend, dtype=args.dtype, distributed=_distributed(args),
                          **_compile_options(args), **given)
        run = _resumed_run(args, tr)
    task = args.task or run.get("task") or "sine"
    kind = task if task in TASKS else "text"
    d = TASK_DEFAULTS[kind]
    run = {"task": task, "cell": args.cell or run.get("cell") or "gru",
           "T": args.T or run.get("T") or d["T"], "N": args.N or run.get("N") or d["N"],
           "hidden": args.hidden or run.get("hidden") or d["hidden"],
           "lr": args.lr or run.get("lr") or d["lr"], "batch": args.batch or run.get("batch") or 32,
           "seed": run.get("seed", 0) if args.seed is None else args.seed}
    args.batch = run["batch"]  # a resumed run goes on with its own batch size unless given
    if args.cell and args.cell not in cells.ZOO and args.hidden:
        raise SystemExit(f"rnncomp: --hidden sets the size of a zoo cell; {args.cell!r} declares its own sizes")
    if kind == "text":
        tr = _train_text(args, run, tr)
    else:
        tr = _train_task(args, run, TASKS[task], tr)
    if args.plot:
        print(f"  learning curve: {tr.plot(args.plot)}")
    return 0


def _saved_backend(path) -> str:
    from .train import checkpoint
    meta, _ = checkpoint.read(path)
    return "native" if meta == "legacy" else meta.get("backend", "native")


def _resumed_run(args, tr) -> dict:
    """The run a checkpoint records; a different cell or task is refused, not trained."""
    run = dict(tr.info.get("task") or {})
    print(f"resumed {args.resume} at step {tr.step_count}: cell {tr.cell.name!r}"
          + (f", task {run['task']} (T={run['T']})" if run else " (no task recorded: a checkpoint of rnncomp < 0.2)"))
    if args.cell and (args.cell != run.get("cell", args.cell) or (args.cell in cells.ZOO and not run
                                                                    and args.cell != tr.cell.name)):
        raise SystemExit(f"rnncomp: {args.resume} holds cell {run.get('cell', tr.cell.name)!r}, not {args.cell!r}: "
                         "leave the cell out to continue it, or start a new run without --resume")
    if args.task and run and args.task != run["task"] and not (args.task not in ("sine", "adding")
                                                               and run["task"] not in ("sine", "adding")):
        raise SystemExit(f"rnncomp: {args.resume} was trained on {run['task']!r}, not {args.task!r}: "
                         "leave --task out to continue it")
    if args.hidden and args.hidden != run.get("hidden", args.hidden):
        raise SystemExit(f"rnncomp: {args.resume} holds a cell of {run['hidden']} hidden units; "
                         "--hidden cannot change a trained cell")
    return run


def _new_trainer(args, run, cell, resumed):
    from .train import Trainer

    if resumed is not None:
        return resumed
    from . import train
    bptt = _bptt(args)
    backend = args.backend or "native"
    if backend != "native" and (args.memory or args.threads):
        raise SystemExit("rnncomp: --memory and --threads are for the native backend")
    optimizer = getattr(train, OPTIMIZERS[args.optimizer or "adam"])(run["lr"])
    clip = 1.0 if args.clip is None else (args.clip or None)
    return Trainer(cell, optimizer, clip_norm=clip, bptt=bptt, backend=backend, seed=run["seed"],
                   dtype=args.dtype or "float32", distributed=_distributed(args), **_compile_options(args))


def _bptt(args):
    """``--k1``/``--k2`` as a :class:`Truncated` (None: whole sequences)."""
    from .train import Truncated
    if args.k2 and not args.k1:
        raise SystemExit(f"rnncomp: --k2 {args.k2} needs --k1 (the steps between updates of truncated BPTT)")
    with option("--k1/--k2"):
        return Truncated(args.k1, args.k2 or args.k1) if args.k1 else None


def _check_memory(tr, T: int, B: int) -> None:
    """A --memory budget too small for a batch: a message before any work, for every compiled
    cell of a composition and for the plain cell under derived weights or constants."""
    for model in getattr(tr.model, "models", [tr.model]):
        model = getattr(model, "inner", model)
        if hasattr(model, "memory_plan"):
            with option("--memory"):
                model.memory_plan(T, B)


def _fit(args, tr, run, x, y, **kw) -> None:
    """``tr.fit`` with the run recorded and saved every ``--save-every`` epochs and on Ctrl-C."""
    from .train import Checkpoint

    tr.info["task"] = run
    callbacks = [Checkpoint(args.save, every=args.save_every, epochs=args.epochs)] if args.save else []
    try:
        tr.fit(x, y, epochs=args.epochs, batch_size=args.batch, verbose=1, callbacks=callbacks, **kw)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise SystemExit("rnncomp: interrupted" + (f"; saved the trainer at step {tr.step_count} to {args.save} "
                                                   f"(continue: rnncomp train --resume {args.save})"
                                                   if args.save else "")) from None
    if args.save:
        if args.epochs == 0:
            tr.save(args.save)
        print(f"  checkpoint: {args.save} (continue: rnncomp train --resume {args.save})")


def held_out(N: int) -> int:
    """How many of a task's N sequences are held out (the first ones): an eighth, at least one.
    ``rnncomp demo`` splits its data so too, so that ``--resume`` continues on the same data."""
    return max(1, N // 8)


def _train_task(args, run, task, resumed):
    """A built-in task: ``--N`` sequences of ``--T`` steps, an eighth held out."""
    from .train.tasks import baseline

    n_test = held_out(run["N"])
    if run["N"] - n_test < 1:
        raise SystemExit(f"rnncomp: --N {run['N']}: the task holds out {n_test} of {run['N']} sequences (an eighth, "
                         "at least one) and trains on the rest: it needs --N 2 or more")
    x, y, mask = task(T=run["T"], N=run["N"], seed=run["seed"])
    n_in, n_out = x.shape[2], y.shape[2]
    if resumed is not None:
        cell = resumed.cell
    else:
        cell = load_cell(run["cell"], n_in, run["hidden"], n_out) if run["cell"] in cells.ZOO else load_cell(run["cell"])
    sizes = (list(cell.step.inputs.values()), list(cell.step.targets.values()))
    if sizes != ([n_in], [n_out]):
        raise SystemExit(f"rnncomp: task {run['task']} needs a cell with one input of size {n_in} and one "
                         f"target of size {n_out}; cell {cell.name!r} has inputs {sizes[0]} and targets {sizes[1]}")
    tr = _new_trainer(args, run, cell, resumed)
    _check_memory(tr, run["T"], min(args.batch, run["N"] - n_test))
    xt, yt = x[:, :n_test], y[:, :n_test]
    mt = None if mask is None else mask[:, :n_test]
    what, base = baseline(run["task"], x[:, n_test:], y[:, n_test:], None if mask is None else mask[:, n_test:],
                          xt, yt, mt)
    print(f"training {tr.cell.name!r} on {run['task']} (T={run['T']}, {run['N']} sequences), {tr.backend} backend")
    print(f"  trivial baseline ({what}): held-out loss {base:.5f}")
    print(f"  before: held-out loss {tr.evaluate(xt, yt, mask=mt):.5f}")
    _fit(args, tr, run, x[:, n_test:], y[:, n_test:], mask=None if mask is None else mask[:, n_test:])
    after = tr.evaluate(xt, yt, mask=mt)
    verdict = "below" if after < 0.9 * base else "NOT clearly below"
    print(f"  after:  held-out loss {after:.5f}  ({verdict} the trivial baseline {base:.5f})")
    return tr


def _check_cross_entropy(cell) -> None:
    """A text is scored in bits per character, its loss read as a cross-entropy in nats: a cell
    whose loss has no log in it (a squared error) printed its loss as bits per character."""
    import sympy as sp
    loss = getattr(cell, "loss_expr", None)  # (a composition's is its last layer's: not checked)
    if loss is None or any(isinstance(n, sp.log) or type(n).__name__ == "LogSumExp" for n in sp.preorder_traversal(loss)):
        return
    raise SystemExit(f"rnncomp: a character model is scored in bits per character, from a cross-entropy loss; "
                     f"the loss of cell {cell.name!r} has no log in it ({loss}): declare "
                     "cell.loss(rc.softmax_xent(y, target))")


def _read_utf8(path: str) -> str:
    """A text file as UTF-8; another encoding is refused by name (read with replacement, every
    byte it cannot decode became one character, so é, à and ç of latin-1 were one letter)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"rnncomp: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > utf8.txt") from None


def _train_text(args, run, resumed):
    """``--task charlm`` (the shipped corpus) or ``--task FILE``: next-character prediction with
    softmax cross-entropy, stateful over ``--batch`` parallel streams of ``--T``-step windows;
    the last 10 % of the text is held out."""
    from .train.text import CharVocab, bits_per_char, char_data, corpus, sample_text

    if run["task"] == "charlm":
        text, what = corpus(), "Pride and Prejudice, ch. 1-30 (shipped)"
    elif os.path.isfile(run["task"]):
        text, what = _read_utf8(run["task"]), run["task"]
    else:
        raise SystemExit(f"rnncomp: --task must be sine, adding, charlm or a text file; {run['task']!r} is none")
    T = run["T"]
    need = max(4 * args.batch * T, 10 * (T + 1))  # char_data holds out the last tenth: T + 1 or more
    if len(text) < need:
        raise SystemExit(f"rnncomp: {what} has {len(text)} characters, too few for --batch {args.batch} "
                         f"streams of --T {T} and a held-out tenth of one window ({need} or more); lower them")
    vocab = CharVocab(text)
    V = len(vocab)
    if resumed is not None:
        cell = resumed.cell
    elif run["cell"] in cells.ZOO:
        cell = cells.ZOO[run["cell"]](V, run["hidden"], V, loss="xent")
    else:
        cell = load_cell(run["cell"])
    sizes = list(cell.step.inputs.values()) + list(cell.step.targets.values())
    if len(sizes) != 2 or sizes != [V, V]:
        raise SystemExit(f"rnncomp: a character model of {what} needs one input and one target of "
                         f"size {V} (its vocabulary); cell {cell.name!r} has {sizes}")
    _check_cross_entropy(cell)
    if resumed is not None and run.get("vocab") not in (None, vocab.chars):
        raise SystemExit(f"rnncomp: {what} has other characters than the text {args.resume} was trained on; "
                         "the model would read them as different letters")
    run["vocab"] = vocab.chars
    tr = _new_trainer(args, run, cell, resumed)
    _check_memory(tr, T, args.batch)
    try:
        data = char_data(text, T=T, batch_size=args.batch, vocab=vocab, dtype=tr.dtype)
    except MemoryError:  # one-hot rows of V numbers per character, inputs and targets
        need = 2 * len(text) * V * tr.dtype.itemsize
        raise SystemExit(f"rnncomp: {what} has {V} distinct characters: as one-hot rows its {len(text)} characters "
                         f"take {need / 2**30:.1f} GiB (inputs and targets, {tr.dtype.name}), more than this "
                         "machine could allocate; train on a shorter text or one with fewer distinct characters") from None
    print(f"training {tr.cell.name!r} as a character model of {what}: {len(text)} characters, "
          f"{V} distinct, {tr.backend} backend")

    def bpc():
        return bits_per_char(tr.evaluate(data.x_test, data.y_test, window=T))

    freq = data.x_train.reshape(-1, V).sum(axis=0) + 1  # add-one: no character has probability 0
    p = freq / freq.sum()
    unigram = float(-(data.y_test.reshape(-1, V) @ np.log2(p)).mean()) + 0.0  # not -0.000 for one character
    print(f"  trivial baselines: uniform {np.log2(V):.3f}, character frequencies {unigram:.3f} bits per character")
    print(f"  before: held-out {bpc():.3f} bits per character (uniform: {np.log2(V):.3f})")
    _fit(args, tr, run, data.x_train, data.y_train, stateful=True)
    print(f"  after:  held-out {bpc():.3f} bits per character (character frequencies: {unigram:.3f})")
    prime = text[:max(1, text.find(" "))][:20]
    print("  sample: " + sample_text(tr, vocab, prime, 200, temperature=0.7).replace("\n", "\n          "))
    return tr
