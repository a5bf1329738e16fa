"""``Trainer``: training loops around a compiled model; truncated BPTT's windows are in
:mod:`.truncated`, saving and resuming in :mod:`.resume`, the data conversions in :mod:`.data`.

    >>> import numpy as np, rnncomp as rc
    >>> cell = rc.cells.elman(1, 8, 1)
    >>> tr = rc.Trainer(cell, optimizer=rc.Adam(1e-2), clip_norm=1.0, backend="numpy", dtype="float64")
    >>> x = np.sin(np.linspace(0, 6, 40))[:, None, None].repeat(4, 1)
    >>> h = tr.fit(x[:-1], x[1:], epochs=3, batch_size=4, verbose=0)
    >>> len(h), h[-1] < h[0]
    (3, True)
"""
from __future__ import annotations

import numpy as np

from ..backends.validate import check_param_shapes
from ..checks import a_function, count, flag, generator, real
from ..compile import compile as rc_compile
from ..errors import ArgumentError, CallError, TrainingError
from .callbacks import checked
from .distributed import check_last_batch
from .data import (as_dict, as_given, check_lengths, check_validation, converted, read_data, remember_orders,
                   shuffled_orders, step_weights, time_major)
from .apply import apply, unbroken, updates_whole
from .optim import Adam, Optimizer
from .progress import EpochProgress, nanmean
from .truncated import Truncated, sequence, truncation


class Trainer:
    """Fit a cell's parameters: ``Trainer(cell, optimizer=rc.Adam(1e-3), clip_norm=1.0,
    bptt=rc.Truncated(k1, k2), backend="native")``."""

    def __getstate__(self):
        """Pickled without the online executor fit_online keeps (compiled code, locks): made again
        on the next fit_online (:func:`rnncomp.algorithms.online.prepared`); the carry of its
        stream goes as arrays, as a checkpoint holds it (``continue_stream=True`` restores it)."""
        from ..algorithms.carry import kept
        state = {k: v for k, v in self.__dict__.items() if k not in ("_online_prepared", "_online_carry")}
        state["_online_saved"] = kept(self)
        return state

    def __setstate__(self, state):
        """The parameter dict as views into the flat vector again (a pickle copies each view:
        updates of ``flat`` would no longer reach the arrays the model is called with)."""
        self.__dict__.update(state)
        self._views({n: np.shape(v) for n, v in self.params.items()})

    def _views(self, shapes: dict) -> None:
        """``params`` as views into ``flat``, in ``names`` order: one vectorised update for all."""
        self.params, off = {}, 0
        for n in self.names:
            size = int(np.prod(shapes[n]))
            self.params[n] = self.flat[off:off + size].reshape(shapes[n])
            off += size

    def __init__(self, cell, optimizer: Optimizer | None = None, *, clip_norm=None, clip_value=None,
                 bptt: Truncated | None = None, backend="native", dtype="float32", seed=0,
                 params=None, update=None, batch_first=False, distributed=None, comm=None, accumulate=1,
                 gradient=None, **compile_options):
        """``update``: "native" runs clipping + the optimizer as one compiled call (the default
        with ``backend="native"`` when the optimizer is a built-in one), "numpy" with NumPy.
        ``batch_first=True``: every array this trainer takes or returns is (N, T, ...) instead
        of time-major (T, N, ...): data, masks, predictions, generated sequences.

        ``distributed="mpi"`` (or ``comm=`` an mpi4py communicator): data-parallel over the MPI
        ranks, each taking its shard of every global batch (docs/distributed.md).
        ``accumulate=k``: each (shard of a) batch runs as k micro-batches whose gradients are
        summed before one update: the same result with a k-th of the activation memory.

        ``clip_norm`` / ``clip_value``: None (no clipping) or a finite number > 0 (0 would
        freeze training, a negative one flip the gradient: both refused)."""
        from .distributed import Group
        self.batch_first = bool(batch_first)
        generator("Trainer", seed)  # a seed init_params and the dropout masks can take
        self.accumulate = count("Trainer", "accumulate", accumulate)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise ArgumentError(f"Trainer: optimizer must be an rc.Optimizer (rc.Adam(1e-3), rc.SGD(...), ...), "
                                f"got {optimizer!r}")
        self.clip_norm, self.clip_value = (None if v is None else real("Trainer", k, v, above=0, hint="None: no clipping")
                                           for k, v in (("clip_norm", clip_norm), ("clip_value", clip_value)))
        if distributed not in (None, "mpi"):
            raise ValueError(f"distributed must be None or 'mpi', got {distributed!r}")
        self.dist = Group(comm) if distributed == "mpi" or comm is not None else None
        given = dict(compile_options)  # what a checkpoint saves: not this rank's threads= or device=
        if self.dist is not None:  # this rank's threads (its share of the node's cores) or GPU
            compile_options = self.dist.compile_defaults(backend, compile_options)
        self.cell, self.bptt = cell, truncation(bptt)
        from ..algorithms.online import check_gradient
        self.gradient = check_gradient(gradient, cell, bptt)  # fit_online's algorithm (rnncomp/algorithms/online.py)
        self.backend, self.dtype = backend, np.dtype(dtype)
        self.model = rc_compile(cell, backend=backend, dtype=dtype, **compile_options)
        if getattr(self.model, "has_dropout", False):  # the dropout masks follow the trainer's seed too
            self.model.rng = np.random.default_rng([seed, 1])  # (a stream apart from init_params')
        self.compile_options = given  # saved in checkpoints
        self.info: dict = {}  # free-form, JSON-able, saved in checkpoints (the CLI keeps its task here)
        self.names = list(cell.step.params)
        if not self.names:
            raise TrainingError(f"{cell.step.name!r} declares no parameters, so a Trainer has nothing to "
                                "train: declare them with cell.param(...) (rc.compile runs a cell without any)")
        if params is None:
            params = cell.init_params(seed, dtype)
        check_param_shapes(cell.step.name, params, cell.step.params)
        params = converted(params, self.dtype, "params")
        self.flat = np.concatenate([params[n].ravel() for n in self.names])
        self._views({n: np.shape(params[n]) for n in self.names})
        self.optimizer = optimizer or Adam()
        self.optimizer.init(self.flat)
        self.step_count, self.history = 0, []
        self.val_history: list = []  # fit(validation_data=...): the validation loss after each epoch
        self.batch_history: list = []  # (position in epochs, loss) of every batch
        if update not in (None, "native", "numpy"):
            raise ValueError(f"update must be 'native' or 'numpy', got {update!r}")
        self._update = None  # the compiled post-gradient step (train/native_update.py)
        if update == "native" or (update is None and backend == "native"):
            from .native_update import NativeUpdate
            native = NativeUpdate(self.dtype, cache=compile_options.get("cache", "default"))
            if native.supports(self.optimizer):
                self._update = native
            elif update == "native":
                raise ValueError(f"update='native': no compiled rule for {type(self.optimizer).__name__}")
        self.update = "native" if self._update is not None else "numpy"
        self._ends = np.cumsum([self.params[n].size for n in self.names])  # flat index -> parameter
        self._broken = None  # the error of an update that made a parameter non-finite (train/apply.py)
        self._updating = self._interrupted = False  # a Ctrl-C held until the update is whole (apply.updates_whole)

    def __repr__(self) -> str:
        last = f", last epoch loss {self.history[-1]:.5g}" if self.history else ""
        return (f"<Trainer of cell {self.cell.name!r}: {self.backend} {self.dtype.name}, "
                f"{type(self.optimizer).__name__}(lr={self.optimizer.lr:g}), step {self.step_count}, "
                f"{len(self.history)} epoch(s){last}>")

    def _repr_html_(self) -> str:
        import html
        return f"<pre>{html.escape(repr(self))}</pre>"

    # ------------------------------------------------------------------ one update
    def train_step(self, inputs, targets, h0=None, mask=None):
        """Forward + BPTT + clipping + optimizer update; returns (loss, final states)."""
        unbroken(self)  # not the caller's arrays blamed for a parameter an update made non-finite
        if self.dist is not None or self.accumulate > 1:  # shards and micro-batches, summed
            from .distributed import loss_and_grad
            loss, g, final = loss_and_grad(self, inputs, targets, h0, mask)
        else:
            drops = getattr(self.model, "has_dropout", False)
            start = self.model.rng.bit_generator.state if drops else None
            try:
                loss, grads, final = self.model.loss_and_grad(self.params, inputs, targets, h0=h0, mask=mask)
            except BaseException:  # the dropout generator where the step started, as distributed.loss_and_grad
                if drops:
                    self.model.rng.bit_generator.state = start
                raise
            g = np.concatenate([grads[n].ravel() for n in self.names])
        apply(self, g, loss, f"step {self.step_count + 1}")
        if self.dist is not None:
            self.dist.check_same(self.flat, self.step_count)
        return loss, final

    def _sequence(self, x, t, mask, h0=None, goes_on=False):
        """One batch of sequences (the next continues them: ``goes_on``): :func:`.truncated.sequence`."""
        return sequence(self, x, t, mask, h0, goes_on)

    def fit_online(self, inputs, targets, every=1, h0=None, *, continue_stream=False, more_follows=False):
        """Learn from a stream with ``gradient=``, an update every ``every`` steps; ``continue_stream``
        / ``more_follows``: a stream in pieces: :func:`rnncomp.algorithms.online.fit_online`."""
        from ..algorithms.online import fit_online
        unbroken(self)
        return fit_online(self, inputs, targets, every, h0, continue_stream, more_follows)

    # ------------------------------------------------------------------ loops
    def fit(self, inputs, targets, epochs=1, batch_size=32, mask=None, shuffle=None, seed=0, verbose=1,
            *, lengths=None, stateful=False, callbacks=(), validation_data=None):
        """Train on time-major arrays (T, N, n); returns the mean loss of each epoch.

        Data of another dtype (NumPy's default float64 for a float32 model, say) is
        converted to the model's dtype once per call (a copy).

        ``mask`` (T, N) or (T,) weights each step's cost (0: left out).  ``lengths`` (N,):
        the steps past each sequence's end are padding (:func:`rnncomp.pad_sequences`) and
        add nothing to the loss or the gradients.  ``stateful=True``: batch k starts from the
        final states of batch k-1 (the state is reset at each epoch; no shuffling), for long
        streams laid out by :func:`rnncomp.train.data.stream_batches`.  ``shuffle`` defaults
        to True unless stateful; ``seed`` draws the orders, epoch k of the trainer's life the k-th
        (counted over its fit calls and checkpoints: fit(4) = fit(2) + fit(2)).  Each batch's loss is kept in ``batch_history``
        (for :meth:`plot`).  ``callbacks``: :class:`~.callbacks.Callback` objects called after
        each epoch (one returning True stops), and on Ctrl-C before it propagates
        (:class:`~.callbacks.Checkpoint` saves then; :class:`~.callbacks.EarlyStopping` stops).
        ``validation_data``: ``(inputs, targets)`` or ``(inputs, targets, mask)``, evaluated after
        each epoch into ``val_history`` (what the callbacks can watch)."""
        from ..algorithms.online import check_fit_gradient
        check_fit_gradient(self)
        callbacks = checked(callbacks, validation_data is not None)
        if validation_data is not None:
            check_validation(self, validation_data)
        try:
            with updates_whole(self):
                return self._fit(inputs, targets, epochs, batch_size, mask, shuffle, seed, verbose,
                                 lengths, stateful, callbacks, validation_data)
        except KeyboardInterrupt:
            for cb in callbacks:
                getattr(cb, "on_interrupt", lambda tr: None)(self)
            raise

    def _fit(self, inputs, targets, epochs, batch_size, mask, shuffle, seed, verbose, lengths, stateful, callbacks,
             validation_data):
        x, t, T, N = read_data(self, "fit", inputs, targets)
        epochs, batch_size = count("fit", "epochs", epochs, at_least=0), count("fit", "batch_size", batch_size)
        shuffle, stateful = flag("fit", "shuffle", shuffle, none="True unless stateful"), flag("fit", "stateful", stateful)
        if stateful and shuffle:
            raise CallError("fit(stateful=True): batches continue each other in order; pass shuffle=False")
        if stateful and lengths is not None:
            raise CallError("fit(stateful=True) carries the state of the last step to the next batch; "
                            "with lengths= it would be carried through the padding")
        shuffle = (not stateful) if shuffle is None else shuffle
        verbose = verbose if self.dist is None or self.dist.is_root else 0  # one progress bar: rank 0's
        mask = step_weights(self, mask, lengths, T, N)
        check_last_batch(self, N, batch_size)  # not after the epoch's other updates
        if self.dist is not None:
            self.dist.check_same_data({**x, **{"target:" + k: v for k, v in t.items()}, "mask": mask},
                                      (epochs, batch_size, shuffle, seed, stateful))
            self.dist.check_same(self.flat, self.step_count, start=True)  # not only every check_every steps
        first = len(self.history)
        rng = shuffled_orders(seed, N, first if shuffle else 0, self.__dict__.setdefault("_orders", {}))
        for epoch in range(epochs):
            order = rng.permutation(N) if shuffle else np.arange(N)
            losses, carry = [], None
            batches = [order[i:i + batch_size] for i in range(0, N, batch_size)]
            progress = EpochProgress(verbose, epoch, epochs, len(batches))
            for bi, idx in enumerate(batches):
                sl = lambda d: {k: np.ascontiguousarray(v[:, idx]) for k, v in d.items()}  # noqa: E731
                m = None if mask is None else np.ascontiguousarray(mask[:, idx])
                h0 = None if carry is None else {k: v[:len(idx)] for k, v in carry.items()}
                loss, final = self._sequence(sl(x), sl(t), m, h0, stateful and bi + 1 < len(batches))
                carry = final if stateful else None
                losses.append(loss)
                self.batch_history.append((len(self.history) + (bi + 1) / len(batches), loss))
                progress.batch_done(losses)
            progress.end(losses, tokens=N * T)
            self.history.append(nanmean(losses))  # nan: no batch had a step to learn from
            if validation_data is not None:
                self.val_history.append(self.evaluate(*validation_data))
                if verbose:
                    print(f"  validation loss {self.val_history[-1]:.5f}", flush=True)
            if shuffle:
                remember_orders(self._orders, rng, seed, N, len(self.history))
            if any([bool(cb.on_epoch_end(self, epoch + 1, self.history[-1])) for cb in callbacks]):
                break
        if self.dist is not None:  # a run shorter than check_every steps is compared too
            self.dist.check_same(self.flat, self.step_count, end=True)
        return list(self.history[first:])

    def _state(self, h0):
        return None if h0 is None else converted(h0, self.dtype, "h0")

    def evaluate(self, inputs, targets, mask=None, *, lengths=None, h0=None, window=None,
                 batch_size=None) -> float:
        """The loss (the masked mean of the per-step costs) on data; nothing is updated.

        Long data runs in pieces with the same result: ``window`` steps at a time with the
        state carried across, ``batch_size`` sequences at a time."""
        x, t, T, N = read_data(self, "evaluate", inputs, targets)
        bs, win = (N if v is None else count("evaluate", k, v, hint=f"None: all {what} at once")
                   for k, v, what in (("batch_size", batch_size, "sequences"), ("window", window, "steps")))
        mask = step_weights(self, mask, lengths, T, N, "evaluate")
        h0 = self._state(h0)
        total, weight = 0.0, 0.0
        no_dropout = {"training": False} if getattr(self.model, "has_dropout", False) else {}  # rc.Stack(dropout=)
        for c0 in range(0, N, bs):
            cols = slice(c0, c0 + bs)
            state = None if h0 is None else {k: np.asarray(v)[cols] for k, v in h0.items()}
            for lo in range(0, T, win):
                cut = lambda d: {k: v[lo:lo + win, cols] for k, v in d.items()}  # noqa: E731
                m = None if mask is None else mask[lo:lo + win, cols]
                w = float(m.sum()) if m is not None else float(np.prod(next(iter(cut(x).values())).shape[:2]))
                if w > 0:
                    loss, _, state = self.model.loss_and_grad(self.params, cut(x), cut(t), h0=state, mask=m,
                                                              **no_dropout)
                    total, weight = total + float(loss) * w, weight + w
                else:
                    state = self.model.forward(self.params, cut(x), h0=state)[1]
        return total / weight

    def predict(self, inputs, h0=None, *, lengths=None):
        """Outputs ``{name: (T, N, n)}`` (a dict, for a single output too: ``out["y"]``) and
        final states ``{name: (N, n)}``; (N, T, n) with ``batch_first``.

        With ``lengths``: the outputs past each sequence's end are 0 and the final states are
        those after each sequence's own last step."""
        x, _, T, N = read_data(self, "predict", inputs, None, with_targets=False)
        h0 = self._state(h0)
        lengths = None if lengths is None else check_lengths(lengths, T, N)
        out, final = self.model.forward(self.params, x, h0=h0, lengths=lengths)  # backends/lengths.py
        return as_given(out, self.batch_first), final

    def generate(self, prime, steps: int, pick, *, h0=None, seed=0):
        """Run on ``prime`` (T0, B, n_in), then feed the cell its own choices for ``steps``
        steps: ``pick(outputs, rng)`` maps the outputs of the last step ((B, n) array for a
        single output, else a dict) to the next input ((B, n_in) array, or a dict).
        Returns the chosen inputs (steps, B, n_in) (a dict for several inputs) and the final states."""
        names, outs_names = list(self.cell.step.inputs), list(self.cell.step.outputs)
        steps, rng = count("generate", "steps", steps, at_least=0), generator("generate", seed)
        a_function("generate", "pick", pick, "pick(outputs, rng) -> the next input")  # was "'str' object is not callable"
        out, state = self.model.forward(self.params, converted(time_major(as_dict(prime, names, "prime"), self.batch_first),
                                                                self.dtype, "prime"), h0=self._state(h0))
        chosen = []
        for _ in range(steps):
            last = {k: v[-1] for k, v in out.items()}
            nxt = as_dict(pick(last[outs_names[0]] if len(outs_names) == 1 else last, rng), names, "pick(...)")
            chosen.append(nxt)
            out, state = self.model.forward(self.params, {k: np.asarray(v, self.dtype)[None] for k, v in nxt.items()},
                                            h0=state)
        seq = {k: np.stack([np.asarray(c[k]) for c in chosen]) for k in names} if chosen else {}
        return as_given(seq[names[0]] if len(names) == 1 and chosen else seq, self.batch_first), state

    def plot(self, path, title=None) -> str:
        """Write the learning curve (the loss of every batch, the mean of every epoch, and the
        validation loss when there is one) to a PNG or SVG (matplotlib); returns the path."""
        from .plot import learning_curve, line_plot
        series, legend = learning_curve(self.history, self.batch_history, self.val_history)
        if self.dist is not None and not self.dist.is_root:  # every rank has the same history
            return str(path)
        line_plot(path, series, title=title or f"{self.cell.name}: training loss", xlabel="epoch",
                  ylabel="loss", legend=legend, xinteger=True)
        return str(path)

    # ------------------------------------------------------------------ checkpoints (train/resume.py)
    def save(self, path) -> None:
        """Write a portable checkpoint (:mod:`.checkpoint`): parameters and optimizer state
        as arrays, the cell as its declaration, backend, dtype, memory schedule and options;
        atomically (temporary file + rename), so a killed save keeps the last good one.
        Distributed: rank 0 writes, every rank returns once it has (or raises its error)."""
        from .resume import save
        if self.dist is None:
            return save(self, path)
        return self.dist.on_root(save, self, path)

    @classmethod
    def load(cls, path, cell=None, backend=None, dtype=None, *, schedule=None, **compile_options) -> "Trainer":
        """Resume from :meth:`save`: the same backend, dtype, memory schedule and options as
        saved unless given here.  With ``cell``, the checkpoint must be of that cell (needed
        for a cell using functions of your own); ``schedule``: the learning-rate schedule,
        needed when the saved one was a Python function.  A file that is not a checkpoint,
        or one that would load differently, is a :class:`~.checkpoint.CheckpointError`."""
        from .resume import load
        return load(cls, path, cell, backend, dtype, schedule=schedule, **compile_options)
