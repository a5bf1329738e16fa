"""Data-parallel training: a global batch shared by MPI ranks (and split into micro-batches).

Owns the sharding of a global batch, the gradient arena and its one ``Allreduce``, the
check that parameters stay identical on every rank, rank-0-only saving, and the abort of
all ranks when one fails outside a step.  The Trainer calls :func:`loss_and_grad` instead
of the model's when ``distributed=`` or ``accumulate=`` is set; everything else it does
(clipping, the optimizer, non-finite checks) runs unchanged on the reduced gradient, so
every rank applies the same update to the same parameters.

One step of a global batch of B rows, R ranks, k micro-batches per rank:

    rows of rank r:      shard(B, R)[r]          contiguous, sizes differ by at most 1
    micro-batch j:       shard(len(rows), k)[j]
    weight of a piece:   S_piece / S_global      S: the summed mask (T·rows without a mask)
    dropout masks:       the global batch's      each piece draws them from the step's start
                                                 state and keeps its rows (``dropout_rows``)
    arena (n + 2):       Σ_pieces weight · ∇loss_piece | Σ weight · loss_piece | failed ranks
    MPI Allreduce(IN_PLACE, arena, SUM)          the only difference from one process:
                                                 the order of this sum

A backend's ``loss_and_grad`` is the masked mean over its own rows, so a piece's
gradient times ``S_piece / S_global`` is its share of the global mean: the sum over
ranks is the global-batch gradient (with masks, the normaliser is the global count).

    >>> shard(7, 3)
    [slice(0, 3, None), slice(3, 5, None), slice(5, 7, None)]
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import zlib

import numpy as np

from ..errors import CallError


def shard(n: int, parts: int, what: str = "ranks") -> list:
    """``n`` rows in ``parts`` contiguous slices whose sizes differ by at most one (the first
    ``n % parts`` one row longer); a clear error when a part would be empty."""
    if n < parts:
        raise CallError(f"a global batch of {n} sequences cannot be shared by {parts} {what}: each "
                        f"needs at least one (use batch_size >= {parts}, and a number of sequences "
                        f"whose remainder by batch_size is 0 or >= {parts})")
    q, r = divmod(n, parts)
    ends = np.cumsum([0] + [q + (i < r) for i in range(parts)])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # the extra is not installed
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'rnncomp[mpi]'") from e
    return MPI


def launched_by_mpiexec() -> int:
    """The number of processes an MPI launcher started, read from the variable it gives each
    process (MPICH's Hydra: PMI_SIZE, Open MPI: OMPI_COMM_WORLD_SIZE, Slurm's srun:
    SLURM_STEP_NUM_TASKS); 1 when none is set.  The CLI trains distributed under ``mpiexec``
    without a flag when this is above 1 (and says so; ``--distributed`` overrides it)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


_hook_installed = False


def abort_on_uncaught_exception(comm) -> None:
    """Make an exception that escapes to the top of this rank print and call ``MPI_Abort``
    (as ``python -m mpi4py`` does), so the other ranks stop instead of waiting forever in
    the next collective.  Installed once per process by a :class:`Group` of more than one rank."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        note = (f"rnncomp: rank {comm.Get_rank()} of {comm.Get_size()} stopped on an uncaught "
                f"{kind.__name__}; aborting every rank\n")
        if previous is sys.__excepthook__:  # the traceback and the note in one write: MPI_Abort
            sys.stderr.write("".join(traceback.format_exception(kind, value, tb)) + note)
        else:  # a hook of the program's own (IPython's, ...) prints the traceback its way
            previous(kind, value, tb)
            sys.stderr.write(note)
        sys.stderr.flush()
        time.sleep(0.2)  # mpiexec forwards this rank's stderr: let it read the text before the abort
        comm.Abort(1)

    sys.excepthook = hook
    _hook_installed = True


class Group:
    """The ranks of one data-parallel training: ``Group(comm)`` (default ``MPI.COMM_WORLD``).

    ``check_every``: every that many steps the ranks compare a checksum of their parameters
    (an exact integer sum of their bits) and raise naming the step if any differ."""

    def __init__(self, comm=None, check_every: int = 100):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(self.comm, MPI.Comm) or self.comm == MPI.COMM_NULL:
            raise ValueError(f"comm must be an mpi4py communicator (MPI.COMM_WORLD, or one made from it), got "
                             f"{'MPI.COMM_NULL' if isinstance(self.comm, MPI.Comm) else repr(comm)}")
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.check_every = check_every
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._arena = None
        self._sums = np.zeros(self.size, dtype=np.uint64)
        if self.size > 1:
            abort_on_uncaught_exception(self.comm)

    def __reduce__(self):  # an MPI communicator belongs to the processes of one run
        raise TypeError("a distributed Trainer does not pickle (its MPI communicator belongs to this run's "
                        "processes): save it with trainer.save(path) and load it with "
                        "rc.Trainer.load(path, distributed='mpi')")

    @property
    def check_every(self) -> int:
        return self._check_every

    @check_every.setter
    def check_every(self, v) -> None:  # a user may set it on trainer.dist: checked when set
        if isinstance(v, bool) or not (isinstance(v, int) and v >= 1):
            raise ValueError(f"check_every must be a positive integer, got {v!r}")
        self._check_every = v

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def threads_per_rank(self) -> int:
        """The cores this process may use shared by the ranks on its node (at least 1)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.local_size)

    def gpu(self) -> int:
        """The GPU of this rank: one rank per GPU, by rank on the node (modulo the GPUs it
        sees, so a rank that sees only its own GPU, as under ``srun --gpus-per-task=1``, takes it)."""
        from ..backends.ptx.runtime import NoGPUError, import_driver
        try:
            drv = import_driver()
        except NoGPUError:  # compiling PTX needs no GPU; running will say what is missing
            return 0
        drv.cuInit(0)
        err, count = drv.cuDeviceGetCount()
        return self.local_rank % count if err == drv.CUresult.CUDA_SUCCESS and count > 0 else 0

    def compile_defaults(self, backend: str, options: dict) -> dict:
        """``options`` with this rank's share of the node unless given: ``threads`` (native),
        ``device`` (ptx)."""
        options = dict(options)
        if backend == "native" and "threads" not in options:
            options["threads"] = self.threads_per_rank()
        if backend == "ptx" and "device" not in options:
            options["device"] = self.gpu()
        return options

    def arena(self, n: int, dtype) -> np.ndarray:
        """The gradient arena: n gradient slots, the loss, the count of failed ranks (zeroed)."""
        if self._arena is None or self._arena.size != n + 2 or self._arena.dtype != dtype:
            self._arena = np.zeros(n + 2, dtype=dtype)
        else:
            self._arena[...] = 0
        return self._arena

    def allreduce(self, buf: np.ndarray) -> None:
        """Sum ``buf`` over the ranks, in place (one buffer-based Allreduce, no pickling)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def check_same(self, flat: np.ndarray, step: int, start: bool = False, end: bool = False) -> None:
        """Every ``check_every`` steps (and with ``start`` / ``end``, when ``fit`` starts and
        ends: a short run is checked too): raise if the parameters differ between ranks."""
        if step % self.check_every and not (start or end):
            return
        bits = flat.view(np.uint32 if flat.dtype.itemsize == 4 else np.uint64)
        mine = np.array([bits.sum(dtype=np.uint64)], dtype=np.uint64)  # wraps: exact, order-free
        self.comm.Allgather(mine, self._sums)
        if (self._sums != self._sums[0]).any():
            from .trainer import TrainingError
            odd = [r for r in range(self.size) if self._sums[r] != self._sums[0]]
            why = ("every rank must start from the same parameters: give each Trainer the same seed= "
                   "(or load the same checkpoint)") if start else "the ranks have diverged"
            raise TrainingError(f"step {step}: the parameters of rank(s) {odd} differ from rank 0's "
                                f"(checksums {self._sums.tolist()}): {why}")

    def check_same_data(self, arrays: dict, options: tuple, who: str = "fit") -> None:
        """Raise on every rank unless every rank passed ``fit`` the same data and options: each
        rank takes its rows of the global batches it computes from them."""
        crc = zlib.crc32(repr(options).encode())
        for name in sorted(k for k, v in arrays.items() if v is not None):
            a = np.ascontiguousarray(arrays[name])
            crc = zlib.crc32(memoryview(a).cast("B"), zlib.crc32(f"{name}{a.shape}{a.dtype}".encode(), crc))
        self.comm.Allgather(np.array([crc], dtype=np.uint64), self._sums)
        odd = [r for r in range(self.size) if self._sums[r] != self._sums[0]]
        if odd:
            raise CallError(f"{who}: rank(s) {odd} were given other data or options than rank 0; every "
                            f"rank passes the same global data (each takes its shard of every batch)")

    def on_root(self, fn, *args):
        """Run ``fn`` on rank 0 only; every rank returns its result or raises its error."""
        result, error = None, None
        if self.is_root:
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001 -- sent to every rank, re-raised below
                error = e
        message = self.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if message is not None:
            from .trainer import TrainingError
            raise TrainingError(f"rank 0 failed: {message}")
        return result


def check_last_batch(tr, N: int, batch_size: int) -> None:
    """``fit``'s last batch of an epoch, when N is no multiple of ``batch_size``, too small for
    ranks × ``accumulate``: refused before the first update (it failed after the epoch's others,
    saying batch_size >= k of a batch_size that was)."""
    k = tr.accumulate * (1 if tr.dist is None else tr.dist.size)
    last = N % batch_size
    if k > 1 and batch_size >= k and 0 < last < k:
        raise CallError(f"fit: {N} sequences in batches of {batch_size} leave a last batch of {last}, fewer than the "
                        f"{k} that accumulate={tr.accumulate} micro-batches on {k // tr.accumulate} rank(s) need: use "
                        f"a batch_size whose remainder of {N} is 0 or {k} or more, or drop {last} sequences")


def loss_and_grad(tr, inputs, targets, h0, mask):
    """The global batch's loss and flat gradient, this rank's rows computed in ``tr.accumulate``
    micro-batches and summed over the ranks.  Returns (loss, gradient: a view into the
    arena, final states (B, n) of every row, gathered from the ranks that ran them)."""
    from .data import as_dict
    group, step = tr.dist, tr.cell.step
    inputs = as_dict(inputs, list(step.inputs), "inputs")  # a lone array, as the backends take
    targets = None if targets is None else as_dict(targets, list(step.targets), "targets")
    x0 = next(iter(inputs.values()))
    T, B = x0.shape[:2]
    ranks = 1 if group is None else group.size
    if mask is not None and np.ndim(mask) == 1:  # (T,): the same weights for every row
        mask = np.repeat(np.asarray(mask)[:, None], B, axis=1)
    total = float(mask.sum(dtype=np.float64)) if mask is not None else float(T * B)
    mine = shard(B, ranks)[0 if group is None else group.rank]
    n = tr.flat.size
    arena = group.arena(n, tr.dtype) if group is not None else np.zeros(n + 2, dtype=tr.dtype)
    final = {s: np.zeros((B, k), dtype=tr.dtype) for s, k in step.states.items()}
    if B < ranks * tr.accumulate:  # every rank sees it (the same B): no rank waits for another
        raise CallError(f"a batch of {B} sequences over {ranks} rank(s), each in accumulate={tr.accumulate} "
                        f"micro-batches, needs at least {ranks * tr.accumulate} sequences (batch_size >= "
                        f"{ranks * tr.accumulate})")
    pieces = shard(mine.stop - mine.start, tr.accumulate, "micro-batches")  # each share >= accumulate (above)
    error, drops = None, getattr(tr.model, "has_dropout", False)
    drawn_from = tr.model.rng.bit_generator.state if drops else None  # the dropout generator at the step's start
    for p in pieces:
        rows = slice(mine.start + p.start, mine.start + p.stop)
        cut = lambda d: None if d is None else {k: np.ascontiguousarray(v[:, rows]) for k, v in d.items()}  # noqa: E731
        m = None if mask is None else np.ascontiguousarray(mask[:, rows])
        h = None if h0 is None else {k: np.ascontiguousarray(np.asarray(v)[rows]) for k, v in h0.items()}
        part = float(m.sum(dtype=np.float64)) if m is not None else float(T * (rows.stop - rows.start))
        kw = carry_kw = {}
        if drops:  # rc.Stack(dropout=): every piece draws the whole batch's masks and takes its rows
            tr.model.rng.bit_generator.state = drawn_from
            kw = {"dropout_rows": (rows.start, B)}
            carry_kw = dict(kw, training=True)  # the states of a training call on the whole batch
        try:
            if part == 0:  # no step of these rows counts: carry their states only
                fin = tr.model.forward(tr.params, cut(inputs), h0=h, **carry_kw)[1]
            else:
                loss, grads, fin = tr.model.loss_and_grad(tr.params, cut(inputs), cut(targets), h0=h, mask=m, **kw)
                w, off = part / total, 0
                for name in tr.names:
                    g = grads[name].ravel()
                    arena[off:off + g.size] += w * g
                    off += g.size
                arena[n] += w * loss
        except Exception as e:  # noqa: BLE001 -- reported to every rank through the arena
            error = e
            break
        for s, v in fin.items():
            final[s][rows] = v
    if error is not None:
        arena[n + 1] = 1
    if group is not None:
        group.allreduce(arena)
    if arena[n + 1] > 0:
        if drops:  # every rank's generator where the step started (the failed rank's stopped halfway)
            tr.model.rng.bit_generator.state = drawn_from
        stop(group, arena[n + 1], error, tr.step_count + 1)
    return float(arena[n]), arena[:n], gathered(group, final, tr.dtype)


def stop(group, failed, error, step: int) -> None:
    """Raise on every rank after an Allreduce whose failed-ranks slot is ``failed`` (> 0): the
    failing rank its own ``error``, the others how many failed, so that none updates."""
    from .trainer import TrainingError
    ranks = 1 if group is None else group.size
    where = f"rank {group.rank} of {ranks}" if group is not None else "this process"
    if error is not None:
        raise TrainingError(f"step {step}: {where} failed: {type(error).__name__}: {error}") from error
    raise TrainingError(f"step {step}: {int(round(float(failed)))} of {ranks} ranks failed (their own "
                        f"error names the cause); no rank updated its parameters")


def gathered(group, final: dict, dtype) -> dict:
    """Every row's final state on every rank: ``final`` {state: (B, n)} holds this rank's rows
    and zeros in the others', so one Allreduce's sum is exact (one process: ``final`` itself)."""
    if group is None or group.size == 1:
        return final
    names = list(final)
    buf = np.concatenate([final[k].ravel() for k in names]) if names else np.zeros(0, dtype)
    group.allreduce(buf)
    out, off = {}, 0
    for k in names:
        out[k] = buf[off:off + final[k].size].reshape(final[k].shape)
        off += final[k].size
    return out
