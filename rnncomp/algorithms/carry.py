"""What an online algorithm carries from step to step, as arrays: for checkpoints.

``fit_online`` keeps the carry its last call ended with (``trainer._online_carry``), so that a
stream fed in pieces goes on as one stream (``continue_stream=True``); a checkpoint stores it
with :func:`to_arrays` and a loaded trainer's next continuing call restores it into the carry
its executor's ``begin`` makes (:func:`restore`, which checks every shape against it).

Carries, by executor: RTRL and dense SnAp {state: J (B, K, n)}; sparse SnAp J (B, nnz); UORO
(generator, {state: s̃ (B, n)}, θ̃ (B, P)) -- the generator's state goes along.

    >>> import numpy as np
    >>> arrays, rng = to_arrays({"h": np.ones((2, 3, 4))})
    >>> sorted(arrays), rng is None
    (['J/h'], True)
"""
from __future__ import annotations

import numpy as np

from ..errors import CheckpointError


def to_arrays(carry) -> tuple[dict, dict | None]:
    """({name: array}, the generator's state or None) of a carry."""
    if isinstance(carry, tuple):  # UORO
        rng, s, theta = carry
        return {**{f"s/{k}": v for k, v in s.items()}, "theta": theta}, rng.bit_generator.state
    if isinstance(carry, np.ndarray):
        return {"J": carry}, None
    return {f"J/{k}": v for k, v in carry.items()}, None


def snapshot(held) -> tuple:
    """``(batch, arrays, generator state)`` of a held carry ``(executor, batch, carry)``: what a
    checkpoint or a pickle keeps of it (copies: the native kernels update the carry in place)."""
    arrays, rng = to_arrays(held[2])
    return held[1], {k: np.array(v) for k, v in arrays.items()}, rng


def kept(trainer):
    """What a checkpoint or a pickle of ``trainer`` keeps of its online stream's carry: a
    snapshot of the one its last ``fit_online`` call holds, or the one it was loaded with and
    has not used yet (``_online_saved``), or None."""
    held = trainer.__dict__.get("_online_carry")
    return snapshot(held) if held is not None else trainer.__dict__.get("_online_saved")


def restore(fresh, arrays: dict, rng_state, prep):
    """``fresh`` (a carry ``prep.begin`` made) holding the saved ``arrays`` and generator state."""
    names, _ = to_arrays(fresh)
    if set(names) != set(arrays):
        raise CheckpointError(f"the checkpoint's online carry holds {sorted(arrays)}, but this algorithm "
                              f"carries {sorted(names)}: it was saved by another one")
    for k, a in names.items():
        if arrays[k].shape != a.shape:
            raise CheckpointError(f"the checkpoint's online carry {k!r} has shape {arrays[k].shape}, but this "
                                  f"algorithm carries {a.shape} (another cell, pattern or batch)")
        a[...] = arrays[k]
    if isinstance(fresh, tuple):  # UORO: the generator goes on where the saved one was
        fresh[0].bit_generator.state = rng_state
    return fresh
