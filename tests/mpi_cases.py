"""Training runs shared by tests/test_distributed.py (one process, the reference) and
tests/mpi_worker.py (the same run on every MPI rank): same data, seeds and global batches."""
import numpy as np

import rnncomp as rc

N_STREAMS = 7  # parallel streams of the stateful case: uneven over 2 and 3 ranks


def _masked():
    """Padded sequences (a normalised mask), shuffled batches of 8 then 7 sequences,
    full BPTT, Adam with clipping by norm, the NumPy oracle."""
    rng = np.random.default_rng(1)
    T, N = 9, 23
    x, y = rng.normal(0, 0.7, (T, N, 3)), rng.normal(0, 0.7, (T, N, 2))
    lengths = rng.integers(1, T + 1, N)
    trainer = dict(cell=rc.cells.lstm(3, 6, 2), optimizer=rc.Adam(2e-2), clip_norm=0.3,
                   backend="numpy", dtype="float64")
    fit = dict(inputs=x, targets=y, lengths=lengths, batch_size=8, epochs=2, seed=5)
    return trainer, fit


def _stateful():
    """Long streams laid out by stream_batches, stateful truncated BPTT(3, 6) whose windows
    carry the states across batches, a 0/1 mask with holes, SGD with Nesterov momentum and
    clipping by value, the native backend (its compiled update, its batch split)."""
    rng = np.random.default_rng(2)
    L = N_STREAMS * 4 * 12
    stream_x = np.sin(np.arange(L) / 5.0)[:, None] + rng.normal(0, 0.1, (L, 2))
    stream_y = np.roll(stream_x[:, :1], -1, axis=0)
    x = rc.stream_batches(stream_x, T=12, batch_size=N_STREAMS)
    y = rc.stream_batches(stream_y, T=12, batch_size=N_STREAMS)
    mask = (rng.random(x.shape[:2]) > 0.25).astype(float)
    trainer = dict(cell=rc.cells.elman(2, 5, 1), optimizer=rc.SGD(0.05, momentum=0.9, nesterov=True),
                   clip_value=0.2, bptt=rc.Truncated(3, 6), backend="native", dtype="float64")
    fit = dict(inputs=x, targets=y, mask=mask, batch_size=N_STREAMS, epochs=2, stateful=True, shuffle=False)
    return trainer, fit


def _dropout():
    """Dropout on the wires of a stack and, inside a bidirectional layer, on those of each
    direction's stack (each direction its own generator); padded sequences, shuffled batches
    of 8, 8 then 7 sequences (uneven over 2 and 3 ranks), Adam with clipping by norm, NumPy."""
    rng = np.random.default_rng(3)
    T, N = 7, 23
    x, y = rng.normal(0, 0.7, (T, N, 3)), rng.normal(0, 0.7, (T, N, 2))
    lengths = rng.integers(1, T + 1, N)
    inner = rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.elman(3, 4, 3)], dropout=0.4)
    comp = rc.Stack([rc.Bidirectional(inner, merge="concat"), rc.cells.gru(6, 5, 2)], dropout=0.3)
    trainer = dict(cell=comp, optimizer=rc.Adam(2e-2), clip_norm=0.5, backend="numpy", dtype="float64", seed=4)
    fit = dict(inputs=x, targets=y, lengths=lengths, batch_size=8, epochs=2, seed=6)
    return trainer, fit


def _dropout_stateful():
    """A stack with dropout over 7 streams, stateful truncated BPTT(3, 6) on the native
    backend: its final states (dropped wires included) carried across batches.  Streams 5 and
    6 have no weight in the first two batches of 7, so a shard or micro-batch of only them
    computes no gradient there: it carries their states (dropped as in the whole batch) to the
    batches where they count, and must draw the masks as the whole batch does."""
    trainer, fit = _stateful()
    fit["mask"][:, [5, 6, N_STREAMS + 5, N_STREAMS + 6]] = 0
    trainer["cell"] = rc.Stack([rc.cells.gru(2, 5, 4), rc.cells.elman(4, 5, 1)], dropout=0.35)
    return trainer, fit


def _dni_padded():
    """DNI at the boundaries of truncated BPTT(3): padded sequences (whose last windows only
    carry the state, or learn from ĝ alone where a later step of the batch has a loss),
    shuffled batches of 8, 8 then 7 (uneven over 2 and 3 ranks), Adam with clipping by norm."""
    rng = np.random.default_rng(11)
    T, N = 10, 23
    x, y = rng.normal(0, 0.7, (T, N, 2)), rng.normal(0, 0.7, (T, N, 1))
    lengths = rng.integers(1, T + 1, N)
    trainer = dict(cell=rc.cells.gru(2, 4, 1), optimizer=rc.Adam(2e-2), clip_norm=0.5, bptt=rc.Truncated(3),
                   gradient=rc.DNI(lr=0.05, gamma=0.9), backend="numpy", dtype="float64")
    fit = dict(inputs=x, targets=y, lengths=lengths, batch_size=8, epochs=2, seed=5)
    return trainer, fit


def _dni_stateful():
    """DNI with overlapping windows, truncated BPTT(2, 4), stateful over 7 streams (a batch's
    last window credited ĝ(s[T]) whole): a mask with holes, a window no stream has a loss in
    (ĝ alone reaches back through it), and windows where streams 4-6 (the last rank's rows on
    2 and on 3 ranks) have none while the others have: there that rank's losses are no part of
    the mean, its ĝ parts are.  SGD with momentum, clipping by value, the native backend."""
    trainer, fit = _stateful()
    fit["mask"][4:6] = 0
    fit["mask"][:4, 4:7] = fit["mask"][6:8, 11:14] = 0  # batches 1 and 2
    trainer.update(cell=rc.cells.lstm(2, 4, 1), bptt=rc.Truncated(2, 4), gradient=rc.DNI(lr=0.05, gamma=0.8))
    return trainer, fit


def teacher_forced():
    """A cell whose update reads its target (teacher forcing): its forward needs the targets,
    also on a rank whose rows have no loss in a window."""
    import sympy as sp
    cell = rc.Cell("teacher_forced")
    x, h, t = cell.input("x", 1), cell.state("h", 3), cell.target("t", 1)
    cell.update(h, sp.tanh(cell.param("W", (3, 1)) @ x + cell.param("U", (3, 3)) @ h + cell.param("A", (3, 1)) @ t))
    y = cell.output("y", cell.param("V", (1, 3)) @ h.new)
    cell.loss((y - t) ** 2 / 2)
    return cell


def _dni_teacher():
    """DNI, truncated BPTT(3), a teacher-forced cell, windows where the last rank's rows have no loss."""
    trainer, fit = _dni_padded()
    x, y = fit["inputs"][..., :1], fit["targets"]
    mask = np.ones(x.shape[:2])
    mask[3:6, 4:8] = mask[3:6, 12:16] = mask[3:6, 20:] = 0  # each batch's last rows: the last rank's shard
    trainer.update(cell=teacher_forced(), optimizer=rc.SGD(0.05))
    fit.update(inputs=x, targets=y, lengths=None, mask=mask, shuffle=False)
    return trainer, fit


CASES = {"masked": _masked, "stateful": _stateful}
DROPOUT = {"dropout": _dropout, "dropout-stateful": _dropout_stateful}  # rc.Stack(..., dropout=p)
ALL = {**CASES, **DROPOUT}
DNI = {"dni-padded": _dni_padded, "dni-stateful": _dni_stateful, "dni-teacher": _dni_teacher}  # gradient=rc.DNI()


def _case(name):
    return {**ALL, **DNI}[name]()


def trainer(case, **options):
    kw, _ = _case(case)
    kw.update(options)  # e.g. backend="ptx"
    return rc.Trainer(kw.pop("cell"), kw.pop("optimizer"), **kw)


def fit(tr, case, **changes):
    _, kw = _case(case)
    kw.update(changes)
    return tr.fit(kw.pop("inputs"), kw.pop("targets"), verbose=0, **kw)


def run(case, **options):
    """Train ``case`` from its initial parameters; returns the Trainer."""
    tr = trainer(case, **options)
    fit(tr, case)
    return tr


def dni_stream(**options):
    """DNI trained by fit_online on 7 streams of 30 steps in three pieces (windows of 3 steps,
    the pieces continuing each other); returns (the Trainer, the losses of its updates)."""
    rng = np.random.default_rng(4)
    x = rng.choice([-1.0, 1.0], size=(30, N_STREAMS, 1))
    y = np.zeros_like(x)
    y[4:] = x[:-4]
    tr = rc.Trainer(rc.cells.elman(1, 5, 1), rc.Adam(1e-2), clip_norm=1.0, gradient=rc.DNI(lr=0.02, gamma=0.9),
                    backend="numpy", dtype="float64", **options)
    losses = []
    for i, (lo, hi) in enumerate([(0, 9), (9, 21), (21, 30)]):
        losses += tr.fit_online(x[lo:hi], y[lo:hi], every=3, continue_stream=i > 0, more_follows=hi < 30)
    return tr, losses
