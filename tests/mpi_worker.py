"""Run by tests/test_distributed.py under ``mpiexec -n R``: ``python mpi_worker.py SCENARIO OUT``.

Each rank writes what it computed (parameters, losses, error messages) under OUT; the test
compares them with a one-process run.  Scenarios:
  ranks  the cases of mpi_cases.py (and one with accumulate=2), a global batch smaller
         than the ranks, one rank given other data, a diverged rank, a rank failing inside
         a step, rank 0 failing to write a checkpoint, and a resume on all ranks of a
         checkpoint written by a run on one rank fewer
  dropout  the cases of mpi_cases.DROPOUT (rc.Stack(..., dropout=p)) with accumulate=1 and 2,
         a resume on all ranks of a checkpoint written on one rank fewer, and a step failing
         on the last rank's rows (each rank writes its dropout generator's next draws)
  dni    the cases of mpi_cases.DNI (gradient=rc.DNI(), bptt=rc.Truncated) and DNI's fit_online
         on a stream fed in pieces (each rank writes its module too), a window failing on one rank
  gpu    the padded-sequence case on the PTX backend
  die    rank 0 is killed while writing a checkpoint over a good one
  raise  rank 1 raises outside any step, while rank 0 trains
"""
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import mpi_cases
import rnncomp as rc

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
scenario, out = sys.argv[1], sys.argv[2]


def keep(name, tr, losses=()):
    """What a rank computed: parameters, losses, and DNI's module (A, c) and its update count."""
    dni = getattr(tr.gradient, "module", None) is not None
    np.savez(os.path.join(out, f"{name}.rank{rank}.npz"), flat=tr.flat, history=np.array(tr.history),
             losses=np.array(losses), module=tr.gradient.flat if dni else np.zeros(0),
             updates=tr.gradient.updates if dni else 0)


def error_of(name, fn):
    """Run ``fn``, expecting it to raise; write its message (or that it did not raise)."""
    try:
        fn()
        text = "no error"
    except Exception as e:  # noqa: BLE001 -- the message is what the test checks
        text = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, f"{name}.rank{rank}.txt"), "w") as fh:
        fh.write(text)


class KillOnPickle:
    """Kills this process when pickled: a rank dying in the middle of writing a checkpoint."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def resumed_on_all(case, **options):
    """An epoch of ``case`` on ranks 0 … size-2 written to a checkpoint, then an epoch of all
    ranks from it (``options``: of the first run's Trainer); returns the resumed Trainer."""
    ckpt = os.path.join(out, f"{case}-resume.ckpt")
    first = comm.Split(0 if rank < size - 1 else MPI.UNDEFINED, rank)
    if first != MPI.COMM_NULL:
        tr = mpi_cases.trainer(case, comm=first, **options)
        mpi_cases.fit(tr, case, epochs=1)
        tr.save(ckpt)
        first.Free()
    comm.Barrier()
    tr = rc.Trainer.load(ckpt, backend="numpy", dtype="float64", distributed="mpi")
    mpi_cases.fit(tr, case, epochs=1)
    return tr


if scenario == "ranks":
    for case in mpi_cases.CASES:
        keep(case, mpi_cases.run(case, distributed="mpi"))
    if size == 2:
        keep("stateful-accumulate", mpi_cases.run("stateful", distributed="mpi", accumulate=2))
    error_of("small-batch", lambda: mpi_cases.fit(mpi_cases.trainer("masked", distributed="mpi"), "masked",
                                                  batch_size=size - 1))

    mine = mpi_cases.CASES["masked"]()[1]["inputs"].copy()
    if rank == size - 1:
        mine[3, 2, 1] += 1e-9  # one value differs on one rank
    error_of("other-data", lambda: mpi_cases.fit(mpi_cases.trainer("masked", distributed="mpi"), "masked",
                                                 inputs=mine))

    # other initial parameters on each rank (seed=rank): refused when fit starts, not at step check_every
    error_of("other-start", lambda: mpi_cases.fit(mpi_cases.trainer("masked", distributed="mpi", seed=rank),
                                                  "masked", epochs=1))

    class Nudge:  # after the first epoch, one ulp on the last rank: the ranks diverge mid-fit
        def on_epoch_end(self, trainer, epoch, loss):
            if rank == size - 1:
                trainer.flat[0] = np.nextafter(trainer.flat[0], np.inf)

        def on_interrupt(self, trainer):
            return None

    tr = mpi_cases.trainer("masked", distributed="mpi")
    tr.dist.check_every = 1
    error_of("diverged", lambda: mpi_cases.fit(tr, "masked", epochs=2, callbacks=[Nudge()]))

    x = mpi_cases.CASES["masked"]()[1]["inputs"]
    bad = x.copy()
    bad[0, 7] = np.nan  # sequence 7 of the first (unshuffled) batch of 8: the last rank's shard
    error_of("nan-shard", lambda: mpi_cases.fit(mpi_cases.trainer("masked", distributed="mpi"), "masked",
                                                inputs=bad, shuffle=False, epochs=1))

    error_of("save-fails", lambda: tr.save(os.path.join(out, "no-such-dir", "x.ckpt")))

    keep("resumed", resumed_on_all("masked"))

elif scenario == "dropout":  # every rank and micro-batch drops what one process on the whole batch drops
    for case in mpi_cases.DROPOUT:
        for k in (1, 2):
            keep(f"{case}-acc{k}", mpi_cases.run(case, distributed="mpi", accumulate=k))

    keep("dropout-resumed", resumed_on_all("dropout", accumulate=2))  # the generator's state is saved too

    tr = mpi_cases.trainer("dropout", distributed="mpi")
    x = mpi_cases.ALL["dropout"]()[1]["inputs"][:, :8].copy()
    x[2, 7] = np.nan  # the last rank's rows: it fails, the others finish their draws
    error_of("dropout-nan", lambda: tr.train_step(x, np.zeros((x.shape[0], 8, 2))))
    np.save(os.path.join(out, f"dropout-rng.rank{rank}.npy"), tr.model.rng.random(4))

elif scenario == "states":  # what a probe found: states, online algorithms, micro-batches, options
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5, 2)), rng.normal(size=(6, 5, 1))

    def make(**kw):
        return rc.Trainer(rc.cells.gru(2, 4, 1), rc.Adam(1e-2), backend="native", dtype="float64",
                          distributed="mpi", **kw)
    tr = make()
    _, final = tr.train_step(x, y)  # every row's final state, not only this rank's
    np.savez(os.path.join(out, f"states.rank{rank}.npz"), h=final["h"])
    st = make()
    st.fit(x, y, epochs=1, batch_size=3, stateful=True, shuffle=False, verbose=0)  # 3 then 2: shares move
    keep("stateful", st)
    error_of("rtrl", lambda: make(gradient=rc.RTRL()).fit_online(x, y, every=2))
    error_of("accumulate", lambda: make(accumulate=3).train_step(x, y))
    tr.save(os.path.join(out, "opts.ckpt"))
    error_of("comm", lambda: rc.Trainer(rc.cells.gru(2, 4, 1), comm=object()))
    error_of("pickle", lambda: __import__("pickle").dumps(tr))

elif scenario == "dni":  # every rank runs its rows' windows; one Allreduce per window
    for case in mpi_cases.DNI:
        keep(case, mpi_cases.run(case, distributed="mpi"))
    keep("dni-stream", *mpi_cases.dni_stream(distributed="mpi"))

    class FailsOnTheLastRank(rc.DNI):  # a window that fails on one rank only: every rank stops there
        def synthetic(self, end):
            self.calls = getattr(self, "calls", 0) + 1
            if rank == size - 1 and self.calls == 3:
                raise RuntimeError("the last rank's third synthetic gradient")
            return super().synthetic(end)
    tr = mpi_cases.trainer("dni-padded", distributed="mpi", gradient=FailsOnTheLastRank(lr=0.05, gamma=0.9))
    error_of("dni-fails", lambda: mpi_cases.fit(tr, "dni-padded"))
    np.save(os.path.join(out, f"dni-fails.rank{rank}.npy"), [tr.step_count, tr.gradient.updates])

elif scenario == "gpu":  # one rank per GPU (GPU local rank mod GPUs), gradients staged on the host
    keep("masked-ptx", mpi_cases.run("masked", distributed="mpi", backend="ptx"))

elif scenario == "die":
    ckpt = os.path.join(out, "good.ckpt")
    tr = mpi_cases.run("masked", distributed="mpi")
    tr.save(ckpt)
    keep("good", tr)
    mpi_cases.fit(tr, "masked", epochs=1)
    if rank == 0:
        tr.history.append(KillOnPickle())
    tr.save(ckpt)  # rank 0 dies writing; rank 1 waits for its outcome

elif scenario == "raise":
    tr = mpi_cases.trainer("masked", distributed="mpi")
    if rank == 1:
        raise RuntimeError("rank 1 stops outside any step")
    mpi_cases.fit(tr, "masked", epochs=50)
