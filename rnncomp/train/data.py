"""Batches for the Trainer: padding variable-length sequences, laying out long streams,
and reading the data it is given as ``{name: array}`` of the model's dtype (time-major:
``batch_first`` data and outputs turned; the step weights of a mask and lengths).

    >>> x, lengths = pad_sequences([np.ones((3, 2)), np.ones((5, 2))])
    >>> x.shape, lengths.tolist(), lengths_mask(lengths, 5).sum(axis=0).tolist()
    ((5, 2, 2), [3, 5], [3.0, 5.0])
    >>> stream_batches(np.arange(12), T=2, batch_size=2)[:, :, 0].T.tolist()
    [[0, 1], [6, 7], [2, 3], [8, 9], [4, 5], [10, 11]]
"""
from __future__ import annotations

import numpy as np

from ..backends.lengths import check_lengths, lengths_mask  # noqa: F401 - the trainer's too
from ..checks import count, generator
from ..errors import CallError, TrainingError


def pad_sequences(sequences, dtype="float32", value=0.0, *, batch_first=False):
    """A list of N arrays ``(T_i, n)`` (or ``(T_i,)``, read as ``n = 1``) → the time-major
    padded array ``(max T_i, N, n)`` and the lengths ``(N,)``; steps past a sequence's end
    hold ``value``.  Pass the lengths to ``Trainer.fit/evaluate/predict(lengths=...)``.
    ``batch_first=True``: ``(N, max T_i, n)``, for a ``Trainer(batch_first=True)``."""
    if not hasattr(sequences, "__iter__") or isinstance(sequences, (str, bytes)):  # None: "not iterable"
        raise ValueError(f"pad_sequences: expected a list of arrays, got {type(sequences).__name__}")
    seqs = []
    for i, s in enumerate(sequences):
        try:
            seqs.append(np.asarray(s, dtype=dtype))
        except (TypeError, ValueError) as exc:  # NumPy's "could not convert string to float" named no sequence
            raise ValueError(f"pad_sequences: sequence {i} cannot be read as {dtype} numbers: {exc}") from None
    if not seqs:
        raise ValueError("pad_sequences: no sequences")
    seqs = [s[:, None] if s.ndim == 1 else s for s in seqs]
    bad = [i for i, s in enumerate(seqs) if s.ndim != 2 or s.shape[0] == 0]
    if bad:
        raise ValueError(f"pad_sequences: sequence {bad[0]} has shape {seqs[bad[0]].shape}; "
                         "each must be (T_i, n) or (T_i,) with T_i >= 1")
    widths = {s.shape[1] for s in seqs}
    if len(widths) != 1:
        raise ValueError(f"pad_sequences: sequences have different widths {sorted(widths)}")
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    out = np.full((int(lengths.max()), len(seqs), widths.pop()), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[:len(s), i] = s
    return (np.ascontiguousarray(out.swapaxes(0, 1)) if batch_first else out), lengths


def stream_batches(stream, T: int, batch_size: int, *, batch_first=False) -> np.ndarray:
    """Lay a long stream ``(L, n)`` (or ``(L,)``) out for ``fit(..., batch_size=batch_size,
    stateful=True, shuffle=False)``: cut into ``batch_size`` parallel streams of
    ``L // batch_size`` steps, each cut into windows of ``T``; batch k (columns
    ``k·B … k·B + B - 1``) holds window k of every stream, so each batch continues the
    previous one.  Returns ``(T, K·B, n)`` (``batch_first=True``: ``(K·B, T, n)``); the tail
    that does not fill a window is dropped."""
    T, batch_size = count("stream_batches", "T", T), count("stream_batches", "batch_size", batch_size)
    s = np.asarray(stream)
    if s.ndim not in (1, 2) or s.dtype.kind not in "biuf":  # a string: "tuple index out of range"
        raise CallError(f"stream_batches: the stream must be an (L, n) or (L,) array of numbers, "
                        f"got shape {s.shape} of {s.dtype}")
    s = s[:, None] if s.ndim == 1 else s
    per = s.shape[0] // batch_size
    K = per // T
    if K == 0:
        raise ValueError(f"stream_batches: a stream of {s.shape[0]} steps is too short for "
                         f"{batch_size} streams of windows of {T}")
    s = s[:per * batch_size].reshape(batch_size, per, -1)[:, :K * T]   # (B, K·T, n)
    s = s.reshape(batch_size, K, T, -1).transpose(2, 1, 0, 3)           # (T, K, B, n)
    s = s.reshape(T, K * batch_size, -1)
    return np.ascontiguousarray(s.swapaxes(0, 1) if batch_first else s)


def shuffled_orders(seed, N: int, done: int, memo: dict):
    """The generator of ``fit``'s shuffled orders past the ``done`` epochs a trainer has run:
    epoch k of a trainer's life is the k-th permutation drawn from ``seed``, whether it runs in
    one ``fit`` call or after others (a checkpoint keeps the epochs run), so training on after
    ``Trainer.load`` or ``rnncomp train --resume`` sees the orders an uninterrupted run sees.
    ``memo`` (the trainer's, see :func:`remember_orders`) holds where the last call left the
    generator, so a loop of ``fit(epochs=1)`` calls does not redraw every earlier epoch's order
    (quadratic in the epochs); after a load, the first call draws them once."""
    rng = generator("fit", seed)
    if memo.get("at") == (seed, N, done) and isinstance(seed, (int, np.integer)):
        rng.bit_generator.state = memo["state"]
        return rng
    for _ in range(done):
        rng.permutation(N)
    return rng


def remember_orders(memo: dict, rng, seed, N: int, done: int) -> None:
    """Keep where ``rng`` is after ``done`` epochs of orders (for the next :func:`shuffled_orders`)."""
    memo.update(at=(seed, N, done), state=rng.bit_generator.state)


def as_dict(a, names, what):
    """``a`` as ``{name: array}``: a dict as given, a lone array for the only name in ``names``."""
    if isinstance(a, dict):
        return a
    if not names:
        raise TrainingError(f"{what}: the model declares none (give {{}})")
    if len(names) != 1:
        raise TrainingError(f"{what} must be a dict keyed by {', '.join(names)}")
    return {names[0]: a}


def targets_of(targets, model) -> dict:
    """``targets`` as ``{name: array}`` for a model (cell or composition) that has a loss to train."""
    st = model.step
    if not st.has_loss:
        raise TrainingError(f"{st.name!r} declares no loss, so there is nothing to train or evaluate: give "
                            "a cell a loss with cell.loss(...); a Bidirectional has none, so put a cell with a "
                            "loss on top of it: rc.Stack([rc.Bidirectional(...), head])")
    if targets is None:
        if st.targets:
            raise TrainingError(f"{st.name!r}: targets is None, but its loss reads {', '.join(st.targets)}: give "
                                "them as an array (one target) or a dict keyed by name")
        return {}
    return as_dict(targets, list(st.targets), "targets")


def batch_dims(where: str, arrays: dict, batch_first=False) -> tuple:
    """(T, N) shared by the time-major arrays ``{label: array}`` (``inputs['x']``,
    ``targets['y']``, ...), with T, N >= 1 and every value finite: else a CallError naming
    ``where`` and the array, its shape or the index of its first NaN/inf as given ((N, T, ...)
    with ``batch_first``; a batch's own check would give the index inside a shuffled batch)."""
    if not arrays:
        raise CallError(f"{where}: no inputs or targets, so the sequence length is unknown")
    axes = "(N, T, n)" if batch_first else "(T, N, n)"
    given = lambda a: (a.shape[1], a.shape[0]) + a.shape[2:] if batch_first and a.ndim >= 2 else a.shape  # noqa: E731
    for label, a in arrays.items():
        if a.ndim != 3:
            raise CallError(f"{where}: {label} has shape {given(a)}, expected {axes}")
    (first, a0), *rest = arrays.items()
    T, N = a0.shape[:2]
    for label, a in rest:
        if a.shape[:2] != (T, N):
            which = "N (sequences)" if a.shape[1] != N else "T (steps)"
            raise CallError(f"{where}: {label} has shape {given(a)}, but {first} has {given(a0)}: every input "
                            f"and target needs the same {which}")
    if not (T and N):
        raise CallError(f"{where}: {first} has shape {given(a0)}: no {'sequences' if not N else 'steps'}")
    for label, a in arrays.items():
        if not np.isfinite(a).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
            value = a[bad]
            if batch_first:
                bad = (bad[1], bad[0]) + bad[2:]
            raise CallError(f"{where}: {label} contains {value} at index {bad}")
    return T, N


def converted(d, dtype, what):
    """``{name: array}`` as contiguous arrays of the model's ``dtype``: the Trainer takes
    NumPy's default float64 (or ints, lists) for a float32 model and converts it once."""
    if not isinstance(d, dict):  # predict(x, y): the second argument is h0
        raise CallError(f"{what} must be a dict {{name: array}}, got {type(d).__name__}"
                        + (" (predict(inputs, h0): it takes no targets)" if what == "h0" else ""))
    out = {}
    for k, v in d.items():
        if np.iscomplexobj(v):  # NumPy's cast would drop the imaginary part with a ComplexWarning only
            raise CallError(f"{what}[{k!r}] is complex ({np.asarray(v).dtype}); the model computes with real "
                            f"{np.dtype(dtype).name} numbers: pass .real if that is what you mean")
        try:
            out[k] = np.ascontiguousarray(v, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise CallError(f"{what}[{k!r}] cannot be read as {np.dtype(dtype).name} numbers: {exc}") from None
    return out


def read_data(trainer, where: str, inputs, targets, *, with_targets=True):
    """(inputs, targets, T, N) of a :class:`~.trainer.Trainer`: dicts of arrays in the model's
    dtype, converted once here (data may come as NumPy's default float64 for a float32 model),
    holding the same T steps of N sequences (:func:`batch_dims`; errors name ``where``).  Targets
    None: a loss that reads none; ``with_targets=False``: inputs only (``{}`` for the targets)."""
    bf, dt = trainer.batch_first, trainer.dtype
    x = converted(time_major(as_dict(inputs, list(trainer.cell.step.inputs), "inputs"), bf), dt, "inputs")
    t = converted(time_major(targets_of(targets, trainer.cell), bf), dt, "targets") if with_targets else {}
    labelled = {**{f"inputs[{k!r}]": v for k, v in x.items()}, **{f"targets[{k!r}]": v for k, v in t.items()}}
    return (x, t, *batch_dims(where, labelled, bf))


def time_major(d: dict, batch_first: bool) -> dict:
    """With ``batch_first``: (N, T, ...) arrays as the (T, N, ...) the models take (one of
    fewer axes is left for :func:`batch_dims` to name)."""
    if not batch_first:
        return d
    return {k: np.swapaxes(a, 0, 1) if a.ndim >= 2 else a for k, a in ((k, np.asarray(v)) for k, v in d.items())}


def as_given(out, batch_first: bool):
    """Model outputs ((T, N, n), a dict or one array) laid out as the trainer's data."""
    if not batch_first:
        return out
    if isinstance(out, dict):
        return {k: np.swapaxes(v, 0, 1) for k, v in out.items()}
    return np.swapaxes(out, 0, 1)


def step_weights(trainer, mask, lengths, T: int, N: int, where="fit"):
    """The (T, N) step weights of a trainer's call from ``mask`` and ``lengths`` (None: every
    step counts; all 0: refused), in the model's dtype."""
    m = None
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)  # scaled below, then made the model's dtype
        if trainer.batch_first and m.ndim == 2:
            m = m.T
        if m.shape == (T,):
            m = np.repeat(m[:, None], N, axis=1)
        if m.shape != (T, N):
            want = f"({N}, {T})" if trainer.batch_first else f"({T}, {N})"
            raise CallError(f"mask has shape {np.shape(mask)}, expected {want} or ({T},)")
    if lengths is not None:
        lm = lengths_mask(check_lengths(lengths, T, N), T, trainer.dtype)
        m = lm if m is None else m * lm
    if m is not None and (not np.isfinite(m).all() or (m < 0).any() or not m.any()):
        raise CallError(f"{where}: the mask must be finite and non-negative, and select a step (a weight > 0)")
    return m if m is None else (m / m.max()).astype(trainer.dtype)  # a float32 sum of 3e38s was inf: NaN


def check_validation(trainer, validation_data) -> None:
    """``fit(validation_data=...)`` checked before the first epoch (it was read after one, its
    errors naming ``inputs['x']`` as if the training data were wrong)."""
    from ..backends.validate import check_call
    if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
        raise CallError("fit(validation_data=...) must be (inputs, targets) or (inputs, targets, mask)")
    where = "fit(validation_data=...)"
    x, t, T, N = read_data(trainer, where, *validation_data[:2])
    try:
        mask = step_weights(trainer, validation_data[2], None, T, N) if len(validation_data) == 3 else None
        check_call(trainer.cell.step, trainer.dtype, trainer.params, x, t, mask=mask, need_targets=True)
    except CallError as exc:
        raise CallError(f"{where}: {exc}") from None
