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


CASES = {"masked": _masked, "stateful": _stateful}
DROPOUT = {"dropout": _dropout, "dropout-stateful": _dropout_stateful}  # rc.Stack(..., dropout=p)
ALL = {**CASES, **DROPOUT}


def trainer(case, **options):
    kw, _ = ALL[case]()
    kw.update(options)  # e.g. backend="ptx"
    return rc.Trainer(kw.pop("cell"), kw.pop("optimizer"), **kw)


def fit(tr, case, **changes):
    _, kw = ALL[case]()
    kw.update(changes)
    return tr.fit(kw.pop("inputs"), kw.pop("targets"), verbose=0, **kw)


def run(case, **options):
    """Train ``case`` from its initial parameters; returns the Trainer."""
    tr = trainer(case, **options)
    fit(tr, case)
    return tr
