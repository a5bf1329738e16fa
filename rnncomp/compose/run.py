"""Running a composition: one runner per layer, and the kept forward whose backward chains them.

Every runner has the same calls, on names local to its layer:

    forward(params, inputs, h0, ctx)   → (outputs, final)          no gradient kept
    keep(params, inputs, h0, ctx, *, targets, mask, wrt, outputs)
                                       → a kept forward: .outputs, .final, .loss,
                                         .backward(d_outputs, d_final) → Gradients, .free(),
                                         .residuals() → [arrays]
    residual_shapes(T, B, *, targets, wrt, outputs)    → the shapes of those residuals
    kept_from(res, params, inputs, h0, ctx, *, targets, mask, wrt, outputs)
                                       → a kept forward whose backward reads the residuals
                                         taken from the iterator ``res`` (no forward runs;
                                         .outputs, .final, .loss are None)

The residuals of a stack are its layers', bottom first, each followed by the wire to the layer
above (that layer's input) and, under dropout, the wire's mask; a bidirectional layer's are
its forward direction's, then its backward one's.

A cell's runner is its compiled model (``forward(keep=True)``, docs/vjp.md).  A stack's
runs its layers one after the other over all T (each layer's products hoisted over all
steps by its own compiled model), and its backward runs them top to bottom, the cotangent of
layer k's input becoming that of layer k-1's output.  A bidirectional layer's runs its cell
over the sequence and over each sequence reversed within its length.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from ..backends.vjp import Gradients
from ..errors import ArgumentError, CallError
from .bidirectional import reverse
from .layers import _prefixed, split


_worker = threading.local()  # .busy: this thread runs the second direction of a bidirectional layer


@dataclass
class Ctx:
    """What one call passes down to every layer: the sequence lengths (None: all T), the
    dropout generator of a training call (None: no dropout), whether to check finiteness, and
    the rows of a larger batch the call computes (None: a batch of its own)."""

    lengths: np.ndarray | None
    rng: np.random.Generator | None
    check_finite: bool
    rows: tuple | None = None  # (first, B): this call's b sequences are rows first … first+b-1 of B


def uniform(ctx: Ctx, shape: tuple) -> np.ndarray:
    """The uniform draws of a (T, b, n) wire's dropout mask from ``ctx.rng``; in a call on rows
    first … first+b-1 of a batch of B (``ctx.rows``), those rows of the draws for (T, B, n), so
    that its masks, and the generator's state after it, are those of one call on the whole batch
    (a shard of an MPI rank, a micro-batch: rnncomp/train/distributed.py)."""
    if ctx.rows is None:
        return ctx.rng.random(shape)
    first, B = ctx.rows
    T, b, rest = shape[0], shape[1], math.prod(shape[2:])
    gen = ctx.rng.bit_generator
    if b == B or type(gen).__name__ not in _ADVANCES or gen.state.get("has_uint32") or T * (B - b) * rest < _SKIP_MIN:
        return ctx.rng.random((T, B) + tuple(shape[2:]))[:, first:first + b]
    # for PCG64 a uniform is one 64-bit draw and advance(n) skips n of them: skip the other rows'
    # draws instead of drawing them (R·k times the work under R ranks and k micro-batches)
    out = np.empty(shape)
    rows = out.reshape(T, b * rest)
    before, after = first * rest, (B - first - b) * rest
    for t in range(T):
        if before:
            gen.advance(before)
        ctx.rng.random(out=rows[t])
        if after:
            gen.advance(after)
    return out


#: below this many skipped draws a call draws the whole batch (T calls of advance cost more)
_SKIP_MIN = 1 << 16
#: the bit generators whose advance(n) is n uniforms (Philox's counts blocks of four; others have none)
_ADVANCES = ("PCG64", "PCG64DXSM")


@contextmanager
def in_layer(where: str):
    """A call error inside a layer names the layer (``stack(lstm, gru), layer l1: cell 'gru': ...``);
    so does an argument that layer cannot take (a memory budget below its minimum: each layer
    has its own)."""
    try:
        yield
    except (CallError, ArgumentError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


class CellRun:
    """A cell: its compiled model, called with the call's lengths (backends/lengths.py: final
    states after each sequence's own last step, outputs zero past it)."""

    def __init__(self, model):
        self.model = model

    def forward(self, params, inputs, h0, ctx, targets=None):
        return self.model.forward(params, inputs, h0, targets=targets, check_finite=ctx.check_finite,
                                  lengths=ctx.lengths)

    def keep(self, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        return self.model.forward(params, inputs, h0, keep=True, targets=targets, mask=mask, wrt=wrt,
                                  outputs=outputs, check_finite=ctx.check_finite, lengths=ctx.lengths)

    def residual_shapes(self, T, B, *, targets, wrt, outputs):
        return self.model.residual_shapes(T, B, targets=bool(targets), wrt=wrt, outputs=outputs)

    def kept_from(self, res, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        T, B = next(iter(inputs.values())).shape[:2]
        n = len(self.residual_shapes(T, B, targets=targets is not None, wrt=wrt, outputs=outputs))
        return self.model.kept_from([next(res) for _ in range(n)], params, inputs, h0, targets=targets, mask=mask,
                                    wrt=wrt, outputs=outputs, check_finite=ctx.check_finite, lengths=ctx.lengths)


class StackRun:
    """Layers bottom to top; ``feeds[k]`` = (output of layer k, input of layer k+1)."""

    def __init__(self, comp, runs):
        self.name, self.prefixes, self.runs = comp.name, comp.prefixes, runs
        self.feeds, self.dropout = comp.feeds, comp.dropout
        self.wire_sizes = [layer.step.outputs[o] for layer, (o, _) in zip(comp.layers, comp.feeds)]

    def forward(self, params, inputs, h0, ctx, targets=None):
        ps, hs = split(params, self.prefixes), split(h0, self.prefixes)
        final, x = {}, inputs
        for i, run in enumerate(self.runs):
            top = i == len(self.runs) - 1
            with in_layer(f"{self.name}, layer {self.prefixes[i]}"):
                out, fin = run.forward(ps[i], x, hs[i], ctx, targets if top else None)
            final.update(_prefixed(fin, self.prefixes[i]))
            if not top:
                o, nxt = self.feeds[i]
                x = {nxt: self._dropped(out[o], ctx)[0]}
        return out, final

    def _dropped(self, y, ctx):
        """(the wire ``y`` after inverted dropout, its mask) in a call that drops (``ctx.rng``),
        else (``y``, None)."""
        if not (self.dropout and ctx.rng is not None):
            return y, None
        keep_mask = (uniform(ctx, y.shape) >= self.dropout) / (1.0 - self.dropout)
        return np.ascontiguousarray(y * keep_mask.astype(y.dtype)), keep_mask

    def _layer(self, i, targets, mask, wrt, outputs) -> dict:
        """The keyword arguments of layer i's kept forward: the stack's targets, mask and
        outputs at the top; below, the wire's output, and the inputs the layer below needs."""
        top = i == len(self.runs) - 1
        return dict(targets=targets if top else None, mask=mask if top else None,
                    wrt=wrt if i == 0 else (self.feeds[i - 1][1],),
                    outputs=outputs if top else (self.feeds[i][0],))

    def _chain(self, params, inputs, h0, how, targets, mask, wrt, outputs):
        """Layer i's kept forward is ``how(i, params, inputs, h0, kwargs)`` → (kept, wire to the
        layer above (None at the top), its dropout mask or None), bottom to top."""
        ps, hs = split(params, self.prefixes), split(h0, self.prefixes)
        kept, drops, wires, x = [], [], [], inputs
        try:
            for i in range(len(self.runs)):
                with in_layer(f"{self.name}, layer {self.prefixes[i]}"):
                    k, y, keep_mask = how(i, ps[i], x, hs[i], self._layer(i, targets, mask, wrt, outputs))
                kept.append(k)
                if y is not None:
                    wires.append(y)
                    drops.append(keep_mask)
                    x = {self.feeds[i][1]: y}
        except BaseException:
            for k in kept:
                k.free()
            raise
        return StackKept(self, kept, drops, wires)

    def keep(self, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        def how(i, p, x, h, kw):
            k = self.runs[i].keep(p, x, h, ctx, **kw)
            if i == len(self.runs) - 1:
                return k, None, None
            y, keep_mask = self._dropped(k.outputs[self.feeds[i][0]], ctx)   # inverted dropout on the wire
            return k, y, keep_mask
        return self._chain(params, inputs, h0, how, targets, mask, wrt, outputs)

    def residual_shapes(self, T, B, *, targets, wrt, outputs):
        shapes = []
        for i, run in enumerate(self.runs):
            kw = self._layer(i, targets, None, wrt, outputs)
            shapes += run.residual_shapes(T, B, targets=kw["targets"], wrt=kw["wrt"], outputs=kw["outputs"])
            if i < len(self.runs) - 1:
                wire = (T, B, self.wire_sizes[i])
                shapes += [wire, wire] if self.dropout else [wire]
        return shapes

    def kept_from(self, res, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        def how(i, p, x, h, kw):
            k = self.runs[i].kept_from(res, p, x, h, ctx, **kw)
            if i == len(self.runs) - 1:
                return k, None, None
            return k, next(res), next(res) if self.dropout else None
        return self._chain(params, inputs, h0, how, targets, mask, wrt, outputs)


class StackKept:
    def __init__(self, run, kept, drops, wires):
        self.run, self.kept, self.drops, self.wires = run, kept, drops, wires
        top = kept[-1]
        self.outputs, self.loss = top.outputs, top.loss
        self.final = None  # made by kept_from: the forward's results are elsewhere
        if all(k.final is not None for k in kept):
            self.final = {n: v for p, k in zip(run.prefixes, kept) for n, v in _prefixed(k.final, p).items()}

    def residuals(self) -> list:
        out = []
        for i, k in enumerate(self.kept):
            out += k.residuals()
            if i < len(self.wires):
                y, keep_mask = self.wires[i], self.drops[i]
                out.append(y)
                if self.run.dropout:  # no mask drawn (no training call): all ones
                    out.append(np.ones_like(y) if keep_mask is None else keep_mask.astype(y.dtype))
        return out

    def backward(self, d_outputs=None, d_final=None) -> Gradients:
        run = self.run
        fins = split(d_final, run.prefixes)
        params, h0 = {}, {}
        d_out = d_outputs
        for i in reversed(range(len(self.kept))):
            with in_layer(f"{run.name}, layer {run.prefixes[i]}"):
                g = self.kept[i].backward(d_outputs=d_out, d_final=fins[i] or None)
            params.update(_prefixed(g.params, run.prefixes[i]))
            h0.update(_prefixed(g.h0, run.prefixes[i]))
            if i:
                o, x = run.feeds[i - 1]
                d = g.inputs[x]
                if self.drops[i - 1] is not None:
                    d = np.ascontiguousarray(d * self.drops[i - 1].astype(d.dtype))
                d_out = {o: d}
        return Gradients(params, g.inputs, h0, self.loss)

    def free(self) -> None:
        for k in self.kept:
            k.free()


class BiRun:
    """A cell (or stack) over the sequence (``fwd``) and over it reversed (``bwd``); on the
    native backend the two directions run at once in two threads (the compiled calls
    release the GIL), when ``pool`` is given."""

    def __init__(self, comp, run, pool: ThreadPoolExecutor | None):
        self.name, self.merge, self.run, self.pool = comp.name, comp.merge, run, pool
        self.sizes = dict(comp.cell.step.outputs)

    def _both(self, f, b):
        """``(f(), b())``, at once when there is a pool (one after the other inside a pool's
        thread: a bidirectional layer nested in another must not wait on a busy pool)."""
        if self.pool is None or getattr(_worker, "busy", False):
            return f(), b()

        def in_worker():
            _worker.busy = True
            try:
                return b()
            finally:
                _worker.busy = False

        fut = self.pool.submit(in_worker)
        try:
            first = f()
        finally:
            second = fut.result()
        return first, second

    def _directions(self, f, b, ctx):
        """``(f(ctx_f), b(ctx_b))`` through :meth:`_both`, an error naming its direction.  In a
        call that drops units each direction draws its masks from a generator of its own,
        seeded from the call's before either runs: the two may run at once, and drawing from
        one generator would make the masks depend on which thread came first."""
        cf = cb = ctx
        if ctx.rng is not None:
            sf, sb = ctx.rng.integers(0, 2 ** 63, size=2)
            cf, cb = replace(ctx, rng=np.random.default_rng(sf)), replace(ctx, rng=np.random.default_rng(sb))

        def named(run, c, direction):
            with in_layer(f"{self.name}, layer {direction}"):
                return run(c)
        return self._both(lambda: named(f, cf, "fwd"), lambda: named(b, cb, "bwd"))

    def _merged(self, yf: dict, yb: dict, lengths) -> dict:
        out = {}
        for o in self.sizes:
            back = reverse(yb[o], lengths)
            out[o] = np.concatenate([yf[o], back], axis=-1) if self.merge == "concat" else yf[o] + back
        return out

    def forward(self, params, inputs, h0, ctx, targets=None):
        (pf, pb), (hf, hb) = split(params, ["fwd", "bwd"]), split(h0, ["fwd", "bwd"])
        xr = {k: reverse(v, ctx.lengths) for k, v in inputs.items()}
        (yf, ff), (yb, fb) = self._directions(lambda c: self.run.forward(pf, inputs, hf, c),
                                              lambda c: self.run.forward(pb, xr, hb, c), ctx)
        return self._merged(yf, yb, ctx.lengths), {**_prefixed(ff, "fwd"), **_prefixed(fb, "bwd")}

    def keep(self, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        (pf, pb), (hf, hb) = split(params, ["fwd", "bwd"]), split(h0, ["fwd", "bwd"])
        xr = {k: reverse(v, ctx.lengths) for k, v in inputs.items()}
        kf, kb = self._directions(lambda c: self.run.keep(pf, inputs, hf, c, wrt=wrt, outputs=outputs),
                                  lambda c: self.run.keep(pb, xr, hb, c, wrt=wrt, outputs=outputs), ctx)
        return BiKept(self, kf, kb, ctx.lengths)

    def residual_shapes(self, T, B, *, targets, wrt, outputs):
        return 2 * self.run.residual_shapes(T, B, targets=False, wrt=wrt, outputs=outputs)

    def kept_from(self, res, params, inputs, h0, ctx, *, targets=None, mask=None, wrt=None, outputs=None):
        (pf, pb), (hf, hb) = split(params, ["fwd", "bwd"]), split(h0, ["fwd", "bwd"])
        xr = {k: reverse(v, ctx.lengths) for k, v in inputs.items()}
        with in_layer(f"{self.name}, layer fwd"):
            kf = self.run.kept_from(res, pf, inputs, hf, ctx, wrt=wrt, outputs=outputs)
        try:
            with in_layer(f"{self.name}, layer bwd"):
                kb = self.run.kept_from(res, pb, xr, hb, ctx, wrt=wrt, outputs=outputs)
        except BaseException:
            kf.free()
            raise
        return BiKept(self, kf, kb, ctx.lengths)


_NO_DRAWS = Ctx(None, None, True)  # a backward draws no masks: its directions need no generators


class BiKept:
    def __init__(self, run, kf, kb, lengths):
        self.run, self.kf, self.kb, self.lengths = run, kf, kb, lengths
        made = kf.outputs is not None  # else made by kept_from: the forward's results are elsewhere
        self.outputs = run._merged(kf.outputs, kb.outputs, lengths) if made else None
        self.final = {**_prefixed(kf.final, "fwd"), **_prefixed(kb.final, "bwd")} if made else None
        self.loss = None

    def residuals(self) -> list:
        return self.kf.residuals() + self.kb.residuals()

    def backward(self, d_outputs=None, d_final=None) -> Gradients:
        run, lengths = self.run, self.lengths
        df, db = {}, {}
        for o, d in (d_outputs or {}).items():
            n = run.sizes[o]
            f, b = (d[..., :n], d[..., n:]) if run.merge == "concat" else (d, d)
            df[o], db[o] = np.ascontiguousarray(f), reverse(b, lengths)
        ff, fb = split(d_final, ["fwd", "bwd"])
        gf, gb = run._directions(lambda c: self.kf.backward(d_outputs=df, d_final=ff or None),
                                 lambda c: self.kb.backward(d_outputs=db, d_final=fb or None), _NO_DRAWS)
        d_in = {x: gf.inputs[x] + reverse(gb.inputs[x], lengths) for x in gf.inputs}
        return Gradients({**_prefixed(gf.params, "fwd"), **_prefixed(gb.params, "bwd")}, d_in,
                         {**_prefixed(gf.h0, "fwd"), **_prefixed(gb.h0, "bwd")}, None)

    def free(self) -> None:
        self.kf.free()
        self.kb.free()
