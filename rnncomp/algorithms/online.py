"""``Trainer.fit_online``: learning from a stream, updating every k steps, no stored history.

    trainer = rc.Trainer(cell, optimizer=rc.Adam(1e-3), gradient=rc.RTRL())   # SnAp(1), UORO(), BPTT()
    trainer.fit_online(stream_x, stream_y, every=1)

For RTRL, SnAp and UORO each step adds its contribution to ∂L/∂θ as it runs forward
(:mod:`.base`); every ``every`` steps the sum is applied (clipping as the trainer says, then
its optimizer) and the carried sensitivities go on with the new parameters, as in Williams &
Zipser's online RTRL.  :class:`BPTT` runs truncated BPTT over each window of ``every`` steps
with the trainer's compiled model, the state carried across windows: the usual baseline.
The online algorithms run in the trainer's dtype on its backend: natively for RTRL and SnAp
with ``backend="native"``, on the NumPy executor otherwise (with a warning where native was
asked for, :mod:`.compiled`).  A cell with derived weights or constants runs on its plain
cell, each update's gradient chained back to the declared parameters (:class:`Derived`).
"""
from __future__ import annotations

import numpy as np

from ..backends.validate import check_call, initial_states
from ..checks import count
from ..errors import CallError, TrainingError
from .base import Algorithm, has_derived_weights, initial_learned, run_window, unflatten


class BPTT(Algorithm):
    """``rc.BPTT()``: in ``fit_online``, back-propagation through each window of ``every`` steps."""

    name = "BPTT"

    def prepare(self, step):
        raise TypeError("BPTT runs backward over a window, not forward step by step: "
                        "use the compiled model's loss_and_grad (fit_online does)")


def check_gradient(gradient, cell=None, bptt=None):
    """``gradient=`` of a Trainer: None or one of rc.RTRL(), rc.SnAp(n), rc.UORO(), rc.DNI(),
    rc.BPTT(); the forward-step algorithms need a single cell (its step program); DNI checks
    its truncation (``bptt``) against the cell."""
    if gradient is not None and not isinstance(gradient, Algorithm):
        raise ValueError(f"gradient must be rc.RTRL(), rc.SnAp(n), rc.UORO(), rc.DNI() or rc.BPTT(), got {gradient!r}")
    if gradient is not None and not isinstance(gradient, BPTT) and cell is not None:
        check_single_cell(cell, repr(gradient))
    if hasattr(gradient, "check_truncation"):
        gradient.check_truncation(bptt, getattr(cell, "step", None))
    return gradient


def check_fit_gradient(trainer) -> None:
    """``Trainer.fit`` trains by BPTT over each batch (DNI: over rc.Truncated's windows); an
    online algorithm asked for would otherwise be dropped without a word."""
    g = trainer.gradient
    if g is None or isinstance(g, BPTT) or (hasattr(g, "fit_truncated") and trainer.bptt is not None):
        return
    need = "give bptt=rc.Truncated(k1, k2) for fit, " if hasattr(g, "fit_truncated") else ""
    raise TrainingError(f"Trainer.fit trains each batch by BPTT; gradient={g!r} is the algorithm of "
                        f"fit_online: {need}call trainer.fit_online(stream_x, stream_y), or make the "
                        "trainer without gradient= to train with fit")


def check_single_cell(cell, what: str, error=CallError, way_out: str | None = None) -> None:
    """A composition (rc.Stack, rc.Bidirectional) has no step program of its own to derive from."""
    from ..checks import is_composition
    if is_composition(cell):
        way_out = way_out or "train it with gradient=rc.BPTT() (or fit), or apply the algorithm to a single cell"
        raise error(f"{what} derives its recursion from one cell's step; {getattr(cell, 'name', cell)!r} is a "
                    f"composition ({type(cell).__name__}): {way_out}")


def fit_online(trainer, inputs, targets, every=1, h0=None, continue_stream=False, more_follows=False):
    """Train on one stream (T, B, n) (batch_first as the trainer says), applying an update
    every ``every`` steps; returns the mean loss over each update's steps.  The final states
    are kept in ``trainer.online_state``.

    ``continue_stream=True`` (or ``h0=trainer.online_state``, that very dict): these steps go
    on from where the last call ended: its final states *and* the algorithm's carry (RTRL's and
    SnAp's sensitivities, UORO's factors and generator), so a stream fed in pieces trains as
    the whole stream would, also across ``trainer.save`` / ``rc.Trainer.load``.  Otherwise a
    call starts a new stream: sensitivities from zero (a piece of k steps with ``every=k``
    would be truncated BPTT(k)).  DNI carries the states and its module, and trains ĝ at a
    continued piece's first step; its last window gets a synthetic gradient only where
    ``more_follows=True`` says that more of the stream comes in a later call (else it is the
    stream's end): pieces whose lengths are multiples of ``every`` then train as the whole
    stream.  The other algorithms' updates do not depend on ``more_follows``."""
    count("fit_online", "every", every, hint="steps per update")
    algo = trainer.gradient if trainer.gradient is not None else BPTT()
    going_on = getattr(trainer, "online_state", None)
    if h0 is not None and h0 is going_on:
        continue_stream = True
    for flag, value in (("continue_stream", continue_stream), ("more_follows", more_follows)):
        if not isinstance(value, (bool, np.bool_)):
            raise CallError(f"fit_online: {flag} must be True or False, got {value!r}")
    if continue_stream:
        if going_on is None:
            raise CallError("fit_online(continue_stream=True): there is no stream to continue (no fit_online call "
                            "has ended one on this trainer, or its checkpoint held none)")
        if h0 is not None and h0 is not going_on:
            raise CallError("fit_online: give h0= (a new stream from these states) or continue_stream=True "
                            "(go on from trainer.online_state), not both")
        h0 = going_on
    if trainer.dist is not None and not isinstance(algo, BPTT) and not hasattr(algo, "fit_windows"):
        # its carry is per process, never reduced (BPTT's and DNI's windows are reduced as fit's)
        raise TrainingError(f"fit_online with {algo!r} runs on one process: its carried state is this process's "
                            "and no rank's update would reach the others; train it without distributed= (or use "
                            "rc.BPTT() or rc.DNI(), whose windows are trained data-parallel like fit)")
    from ..train.data import read_data
    x, t, _, B = read_data(trainer, "fit_online", inputs, targets)
    st, dt = trainer.cell.step, trainer.dtype
    was = len(next(iter(going_on.values()))) if continue_stream and going_on else B
    if was != B:
        raise CallError(f"fit_online(continue_stream=True): these steps hold {B} sequences, but the stream they "
                        f"would continue has {was} (trainer.online_state): give its {was} sequences, or start "
                        "a new stream (without continue_stream)")
    if trainer.dist is not None:  # every rank the same stream, as fit checks its data
        trainer.dist.check_same_data({**x, **{"target:" + k: v for k, v in t.items()}}, (every, bool(continue_stream)),
                                       "fit_online")
    call = check_call(st, dt, trainer.params, x, t, trainer._state(h0), need_targets=True)
    losses = []
    if isinstance(algo, BPTT):  # (continuing needs the states only)
        state = call.h0 or None
        for lo in range(0, call.T, every):
            cut = lambda d: {k: v[lo:lo + every] for k, v in d.items()}  # noqa: E731
            loss, state = trainer.train_step(cut(x), cut(t), h0=state)
            losses.append(loss)
        trainer.online_state, trainer._online_carry, trainer._online_saved = state, None, None
        return losses
    if hasattr(algo, "fit_windows"):  # DNI: windows of BPTT with a synthetic gradient at the end
        trainer._online_carry = trainer._online_saved = None
        trainer.online_state = algo.fit_windows(trainer, call, every, lambda g, loss: apply(trainer, algo, g, loss, losses),
                                                continued=bool(continue_stream), goes_on=bool(more_follows))
        return losses
    derived, run_st, prep = prepared(trainer, algo)
    states = initial_states(st, call, dt)
    params = derived.expand() if derived else trainer.params
    saved = trainer.__dict__.pop("_online_saved", None)  # a checkpoint's carry: for this call only
    if continue_stream:
        carry = carried(trainer, prep, prep.begin(params, states, {}, call.B, dt), call.B, algo, saved)
    else:  # a new stream: UORO draws its own signs for each (its generator: the seed and k)
        core = getattr(prep, "prep", prep)
        if hasattr(core, "stream"):
            core.stream = trainer.__dict__.get("_online_streams", 0)
            trainer._online_streams = core.stream + 1
        carry = prep.begin(params, states, initial_learned(st, call.h0), call.B, dt)
    seqs = {**call.inputs, **call.targets}
    for lo in range(0, call.T, every):
        hi = min(lo + every, call.T)
        w = np.full((hi - lo, call.B), 1.0 / ((hi - lo) * call.B), dtype=dt)
        params = derived.expand() if derived else trainer.params
        loss, g, states, carry = run_window(prep, run_st, params, states, seqs, lo, hi, w, carry)
        apply(trainer, algo, derived.pullback(g) if derived else g, loss, losses)
    trainer.online_state = {s: np.array(v) for s, v in states.items()}
    trainer._online_carry = (prep, call.B, carry)
    return losses


def carried(trainer, prep, fresh, B: int, algo, saved):
    """The carry the last call ended with (its executor's, for this batch), or the one a
    checkpoint held (``saved``), copied into ``fresh`` (what ``prep.begin`` made: the shapes it checks)."""
    held, trainer._online_carry = trainer.__dict__.get("_online_carry"), None  # (a failed call leaves none)
    if held is not None and held[0] is prep and held[1] == B:
        return held[2]
    if held is None and saved is not None and saved[0] == B:
        from .carry import restore
        return restore(fresh, saved[1], saved[2], prep)
    made_for = held[1] if held is not None else saved[0] if saved is not None else None
    what = (f"a carry for a batch of {made_for}" if made_for not in (None, B) else
            "no carry of this algorithm, backend and dtype (its last call ran another one, or rc.BPTT / rc.DNI)")
    raise CallError(f"fit_online(continue_stream=True) with {algo!r}: the last call left {what}, so the "
                    f"sensitivities cannot go on with a batch of {B}: start a new stream (continue_stream=False)")


def prepared(trainer, algo):
    """(Derived or None, the step the algorithm runs, its prepared executor) for ``trainer``,
    made on its first fit_online and kept while the algorithm, backend, dtype and threads stay
    (preparing sparse SnAp -- its pattern, colouring and plan -- took ~50 ms for Elman 4→32,
    against ~0.15 ms a step: a stream fed in chunks of a few steps paid it every chunk)."""
    from .compiled import prepare
    threads = getattr(trainer.model, "threads", None)
    cache = trainer.compile_options.get("cache", "default")  # the model's: None caches nowhere
    # the algorithm's options too: one changed in place (trainer.gradient.seed = 9) prepares again
    options = tuple(sorted((k, repr(v)) for k, v in vars(algo).items()))
    # (a cell is equal to itself only)
    key = (type(algo), options, trainer.cell, trainer.backend, np.dtype(trainer.dtype), threads, cache)
    held = trainer.__dict__.get("_online_prepared")
    if held is not None and held[0] == key:
        return held[1]
    derived = Derived(trainer) if has_derived_weights(trainer.cell) else None
    run_st = derived.step if derived else trainer.cell.step
    made = derived, run_st, prepare(algo, run_st, trainer.backend, trainer.dtype, fallback=True, threads=threads,
                                     cache=cache)
    trainer._online_prepared = (key, made)
    return made


class Derived:
    """A cell with derived weights or constants (``cell.weight``, ``cell.const``): the algorithm
    runs on the plain cell whose parameters they are (:class:`rnncomp.weights.DerivedWeights`),
    its carried sensitivities are with respect to them, and each update's gradient is chained
    back to the declared parameters at the parameters of that update, as ``sequence_grad`` does
    for a whole sequence."""

    def __init__(self, trainer):
        from ..weights import DerivedWeights
        self.trainer, self.dw = trainer, DerivedWeights(trainer.cell)
        self.step = self.dw.plain.step

    def expand(self) -> dict:
        return self.dw.expand(self.trainer.params, self.trainer.dtype)

    def pullback(self, g):
        """The flat gradient of the plain cell's parameters → the trainer's flat vector's."""
        tr = self.trainer
        grads = self.dw.pullback(tr.params, unflatten(self.step, g), tr.dtype)
        return np.concatenate([np.asarray(grads[n], dtype=tr.dtype).ravel() for n in tr.names])


def apply(trainer, algo, g, loss, losses) -> None:
    """One update from the flat gradient ``g`` (:func:`rnncomp.train.apply.apply`: the trainer's
    compiled update where it has one, as a training step's);
    the window's ``loss`` (None for a window without losses) is appended to ``losses``."""
    from ..train.apply import apply as update
    update(trainer, g, loss, f"fit_online ({algo!r}), update {len(losses) + 1}")
    if loss is not None:  # None: an update without losses of its own (DNI's synthetic gradient only)
        losses.append(loss)
