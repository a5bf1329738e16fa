"""``rc.compile(composition, backend=...)``: a compiled model of a stack or bidirectional layer.

Each distinct cell inside is compiled once for the backend (a cell used twice, as both
directions of a bidirectional layer are, shares its compiled model), and the calls of the
compiled cells are chained through their VJP entry points (:mod:`.run`).  The interface is a
compiled cell's -- ``forward`` (also ``keep=True``), ``loss_and_grad``, ``vjp``,
``init_params``, ``residual_shapes`` / ``kept_from`` -- with names prefixed by layer
(:mod:`.layers`), plus ``lengths=``.

    >>> import numpy as np, rnncomp as rc
    >>> model = rc.compile(rc.Stack([rc.cells.gru(3, 8, 4), rc.cells.elman(4, 8, 2)]))
    >>> params = model.init_params(seed=0)
    >>> x, t = np.ones((5, 2, 3)), np.zeros((5, 2, 2))
    >>> loss, grads, final = model.loss_and_grad(params, {"x": x}, {"target": t})
    >>> sorted(final), grads["l0.Wz"].shape
    (['l0.h', 'l1.h'], (8, 3))

Lengths: a model with a bidirectional layer reverses each sequence within its own length.
Give ``lengths=`` (N,), or a ``mask=``: then each sequence's length is taken as its last
step of nonzero weight (what ``rc.Trainer.fit(lengths=...)`` passes down), so the steps
after it are padding.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backends.validate import read_array
from ..backends.vjp import Gradients, check_cotangents, check_residual_count
from ..checks import generator
from ..errors import CallError
from ..show import TextShown
from .layers import Composition, _prefixed, split
from .run import BiRun, CellRun, Ctx, StackRun, in_layer
from .stack import Stack


class ComposedModel(TextShown):
    """The compiled model of a :class:`~.stack.Stack` or :class:`~.bidirectional.Bidirectional`.

    ``seed``: of the generator that draws the dropout masks (``model.rng``, drawn from at each
    training call).  ``parallel``: run the two directions of a bidirectional layer at once in
    two threads (default: on the native backend when there are two cores or more)."""

    def __init__(self, comp: Composition, backend: str, dtype="float64", *, seed: int = 0, parallel=None,
                 **options):
        from ..compile import compile as rc_compile
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise CallError(f"{comp.name}: seed must be an int (of the dropout generator, model.rng), got {seed!r}")
        if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
            raise CallError(f"{comp.name}: parallel must be True, False or None (default: on the native backend "
                            f"with two cores or more), got {parallel!r}")
        self._made_with = dict(options, seed=seed, parallel=parallel)  # what pickling compiles again with
        self.comp, self.step, self.backend = comp, comp.step, backend
        self.dtype = np.dtype(dtype)
        self.rng = generator(comp.name, seed)  # a negative seed: NumPy's "expected non-negative integer" before
        self.has_dropout = any(isinstance(l, Stack) and l.dropout for l in _all_layers(comp))
        if parallel is None:
            parallel = backend == "native" and (os.cpu_count() or 1) >= 2
        self.parallel = bool(parallel)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="rnncomp-bidirectional") if self.parallel else None
        self._options, self._models = dict(options), {}  # one compiled model per distinct cell
        self._compile = lambda cell, opts: rc_compile(cell, backend=backend, dtype=dtype, **opts)
        self._run = self._runner(comp, inside_bi=False)
        self.models = list(self._models.values())

    def _runner(self, layer, inside_bi: bool):
        if isinstance(layer, Stack):
            return StackRun(layer, [self._runner(l, inside_bi) for l in layer.layers])
        if isinstance(layer, Composition):  # Bidirectional
            return BiRun(layer, self._runner(layer.cell, True), self._pool)
        opts = dict(self._options)
        if inside_bi and self.parallel and self.backend == "native":
            opts.setdefault("threads", 1)  # the two directions already take a core each
        key = (id(layer), tuple(sorted(opts.items(), key=str)))
        if key not in self._models:
            self._models[key] = self._compile(layer, opts)
        return CellRun(self._models[key])

    def init_params(self, seed: int = 0) -> dict:
        return self.comp.init_params(seed, self.dtype)

    def _text(self) -> str:
        return (f"<ComposedModel of {self.comp.name!r} ({len(self.step.params)} parameter arrays, "
                f"{len(self._models)} compiled cell(s)): backend={self.backend!r}, dtype={self.dtype.name!r}>")

    def __reduce__(self):  # as a compiled cell: its declaration, compiled again where it is unpickled
        from ..train.checkpoint import cell_to_dict
        return (_recompile, (cell_to_dict(self.comp, callables=True), self.backend, self.dtype.name, self._made_with,
                             self.rng.bit_generator.state))

    # ------------------------------------------------------------------ checking
    def _ctx(self, params, inputs, h0, mask, lengths, check_finite, training, dropout_seed=None,
             dropout_rows=None) -> Ctx:
        st, where = self.step, self.comp.name
        if not isinstance(params, dict):
            raise CallError(f"{where}: params must be a dict of arrays (from model.init_params)")
        missing = [p for p in st.params if p not in params]
        unknown = sorted(p for p in params if p not in st.params)
        if missing or unknown:
            what = "; ".join(([f"missing params {', '.join(map(repr, missing))}"] if missing else []) +
                             ([f"unknown params {', '.join(map(repr, unknown))}"] if unknown else []))
            raise CallError(f"{where}: {what}; its parameters are named <layer>.<name>: "
                            f"{', '.join(map(repr, st.params))}")
        if h0 is not None and not isinstance(h0, dict):
            raise CallError(f"{where}: h0 must be a dict keyed by {', '.join(map(repr, st.states))}")
        bad = sorted(s for s in (h0 or {}) if s not in st.states)
        if bad:
            raise CallError(f"{where}: unknown initial states (h0) {', '.join(map(repr, bad))}; states: "
                            f"{', '.join(map(repr, st.states))}")
        T, B = self._sizes(inputs)
        with in_layer(where):  # the message names the model
            if lengths is not None:
                from ..backends.lengths import check_lengths
                lengths = check_lengths(lengths, T, B)
            elif mask is not None and self.comp.reads_lengths:  # what Trainer.fit(lengths=) passes down
                lengths = lengths_from_mask(mask, T, B)
        if dropout_seed is not None and (isinstance(dropout_seed, bool) or not isinstance(dropout_seed, (int, np.integer))):
            raise CallError(f"{where}: dropout_seed must be an int (the seed of this call's dropout masks) or "
                            f"None (the model's generator, model.rng), got {dropout_seed!r}")
        rng = None if not training else self.rng if dropout_seed is None else np.random.default_rng(dropout_seed)
        return Ctx(lengths, rng, check_finite, _rows(where, dropout_rows, B))

    def _training(self, training, default: bool) -> bool:
        if training is None:
            return default
        if not isinstance(training, (bool, np.bool_)):  # "no" would be true, and drop units
            raise CallError(f"{self.comp.name}: training must be True, False or None, got {training!r}")
        return bool(training)

    def _sizes(self, inputs):
        first = next(iter(inputs.values()), None) if isinstance(inputs, dict) else inputs
        shape = np.shape(first) if first is not None else ()
        if len(shape) != 3:  # the bottom layer's model says what is wrong
            return 0, 0
        return shape[0], shape[1]

    def _inputs(self, inputs) -> dict:
        """``inputs`` as {name: (T, B, n) array} (a lone array for a one-input model; nested
        lists read as arrays, as a cell's model reads them), its names and ranks checked here:
        the layers read their shapes before the bottom cell's model sees them."""
        names, where = list(self.step.inputs), self.comp.name
        if not isinstance(inputs, dict):
            if len(names) != 1 or inputs is None:
                raise CallError(f"{where}: inputs must be a dict of (T, B, n) arrays keyed by "
                                f"{', '.join(map(repr, names))}, got {type(inputs).__name__}")
            inputs = {names[0]: inputs}
        missing, unknown = [n for n in names if n not in inputs], sorted(set(inputs) - set(names))
        if missing or unknown:
            what = (f"missing inputs {', '.join(map(repr, missing))}" if missing else
                    f"unknown inputs {', '.join(map(repr, unknown))}")
            raise CallError(f"{where}: {what}; inputs: {', '.join(map(repr, names))}")
        out = {}
        for n in names:
            a = read_array(where, f"input {n!r}", inputs[n])
            if a.ndim != 3:
                raise CallError(f"{where}: input {n!r} must be time-major (T, B, n), got shape {a.shape}")
            out[n] = a
        sizes = {n: a.shape[:2] for n, a in out.items()}
        if len(set(sizes.values())) > 1:
            raise CallError(f"{where}: inputs disagree on (T, B): "
                            f"{', '.join(f'{n!r} {s}' for n, s in sizes.items())}")
        return out

    def _targets(self, targets) -> dict | None:
        names = list(self.step.targets)
        if targets is None or isinstance(targets, dict) or len(names) != 1:
            return targets
        return {names[0]: targets}

    # ------------------------------------------------------------------ calls
    def forward(self, params, inputs, h0=None, *, targets=None, keep=False, mask=None, wrt=None, outputs=None,
                lengths=None, check_finite=True, training=None, dropout_seed=None, dropout_rows=None):
        """``(outputs {name: (T, B, n)}, final states {layer.state: (B, n)})``; with
        ``keep=True`` a kept forward (``.outputs``, ``.final``, ``.backward(d_outputs, d_final)``,
        docs/vjp.md).  ``lengths`` (B,): see the module docstring; with them the final states
        are those after each sequence's own last step, also of a kept forward, whose
        ``d_final`` is their cotangent (:mod:`.by_length`).

        Dropout (``rc.Stack(..., dropout=p)``): ``training`` says whether this call drops
        units (default: a kept forward does, a plain one does not); ``dropout_seed``: the
        seed of its masks (default: drawn from ``model.rng``), so that a call made again with
        the same seed (a framework's recomputed forward) draws the same masks.  ``dropout_rows``
        ``(first, B)``: this call's b sequences are rows first … first+b-1 of a batch of B; its
        masks are those rows of the masks one call on the whole batch draws, and the generator
        advances as that call's would (how MPI ranks and micro-batches train as one process)."""
        inputs, targets = self._inputs(inputs), self._targets(targets)
        if keep:
            return self._keep(params, inputs, h0, targets, mask, wrt, outputs, lengths, check_finite,
                              self._training(training, True), dropout_seed, dropout_rows)
        ctx = self._ctx(params, inputs, h0, None, lengths, check_finite, self._training(training, False),
                        dropout_seed, dropout_rows)
        return self._run.forward(params, inputs, h0, ctx, targets)

    def forward_keep(self, params, inputs, h0=None, **kw):
        """``forward(..., keep=True)``, as every compiled model has it (backends/base.py)."""
        return self.forward(params, inputs, h0, keep=True, **kw)

    def _keep(self, params, inputs, h0, targets, mask, wrt, outputs, lengths, check_finite, training=True,
              dropout_seed=None, dropout_rows=None):
        ctx = self._ctx(params, inputs, h0, mask, lengths, check_finite, training, dropout_seed, dropout_rows)
        if targets is not None and not self.step.has_loss:
            raise CallError(f"{self.comp.name}: targets given but its top layer has no loss")
        kept = self._run.keep(params, inputs, h0, ctx, targets=targets, mask=mask, wrt=wrt,
                              outputs=self._outputs(outputs))
        return ComposedKept(self, kept, self._sizes(inputs), check_finite)

    def _outputs(self, outputs):
        """``outputs=`` of a kept forward as a tuple of known outputs (None: all)."""
        if isinstance(outputs, str):
            outputs = (outputs,)
        bad = [o for o in (outputs or ()) if o not in self.step.outputs]
        if bad:
            raise CallError(f"{self.comp.name}: outputs {', '.join(map(repr, bad))} are not outputs; outputs: "
                            f"{', '.join(map(repr, self.step.outputs))}")
        return outputs

    # ------------------------------------------------------------------ residuals (docs/vjp.md)
    def residual_shapes(self, T: int, B: int, *, targets: bool = False, wrt=None, outputs=None) -> list:
        """The shapes of a (T, B) kept forward's ``residuals()`` (run.py: the cells' residuals,
        the wires between layers and their dropout masks), all of the model's dtype."""
        shapes = self._run.residual_shapes(T, B, targets=bool(targets), wrt=wrt, outputs=self._outputs(outputs))
        return [tuple(s) for s in shapes]

    def kept_from(self, residuals, params, inputs, h0=None, *, targets=None, mask=None, wrt=None, outputs=None,
                  lengths=None, check_finite=True):
        """A kept forward made from another one's ``residuals()`` and its arguments: its
        ``backward`` reads them (each cell's as its own ``kept_from`` does: in place, or its
        forward again where the backend exports nothing), the dropout masks included.  Its
        ``outputs``, ``final`` and ``loss`` are None."""
        inputs, targets = self._inputs(inputs), self._targets(targets)
        ctx = self._ctx(params, inputs, h0, mask, lengths, check_finite, training=False)
        outputs, (T, B) = self._outputs(outputs), self._sizes(inputs)
        shapes = self.residual_shapes(T, B, targets=targets is not None, wrt=wrt, outputs=outputs)
        check_residual_count(self.comp.name, residuals, shapes, T, B)
        for i, (a, s) in enumerate(zip(residuals, shapes)):
            if tuple(np.shape(a)) != s or np.asarray(a).dtype != self.dtype:
                raise CallError(f"{self.comp.name}: residual {i} has shape {tuple(np.shape(a))} and dtype "
                                f"{np.asarray(a).dtype}, expected {s} of {self.dtype}")
        kept = self._run.kept_from(iter(residuals), params, inputs, h0, ctx, targets=targets, mask=mask, wrt=wrt,
                                   outputs=outputs)
        return ComposedKept(self, kept, (T, B), check_finite)

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, *, lengths=None, check_finite=True,
                      training=True, dropout_rows=None):
        """Loss (the top layer's: the masked mean of its per-step costs), the gradient of every
        parameter of every layer, final states.  ``training=False``: no dropout (an
        evaluation, as ``rc.Trainer.evaluate`` asks for); ``dropout_rows``: as :meth:`forward`'s."""
        if not self.step.has_loss:
            raise CallError(f"{self.comp.name} has no loss: its top layer declares none (put a cell with "
                            "a loss on top with rc.Stack)")
        inputs, targets = self._inputs(inputs), self._targets(targets)
        training = self._training(training, True)
        if targets is not None and not isinstance(targets, dict):
            raise CallError(f"{self.comp.name}: targets must be a dict of arrays keyed by "
                            f"{', '.join(map(repr, self.step.targets))}, got {type(targets).__name__}")
        missing = [n for n in self.step.targets if n not in (targets or {})]
        if missing:  # else the top layer's kept forward computes no loss, and every gradient is 0
            raise CallError(f"{self.comp.name}: missing targets {', '.join(map(repr, missing))} (of its top layer)")
        comp = self.comp
        ctx = self._ctx(params, inputs, h0, mask, lengths, check_finite, False, None, dropout_rows)
        if isinstance(comp, Stack) and len(comp.layers) == 1 and isinstance(self._run.runs[0], CellRun) and (
                ctx.lengths is None or ctx.lengths.min() == self._sizes(inputs)[0]):
            # one cell, every sequence T long: exactly the cell's numbers (with shorter lengths
            # the final states are those at each sequence's end: the general path below)
            (p,), (h,) = split(params, comp.prefixes), split(h0, comp.prefixes)
            loss, grads, final = self._run.runs[0].model.loss_and_grad(p, inputs, targets, h or None, mask,
                                                                       check_finite=check_finite)
            return loss, _prefixed(grads, "l0"), _prefixed(final, "l0")  # exactly the cell's numbers
        kept = self._keep(params, inputs, h0, targets, mask, (), (), lengths, check_finite, training, None,
                          dropout_rows)
        try:
            g = kept.backward()
        finally:
            kept.free()
        return g.loss, g.params, kept.final

    def vjp(self, params, inputs, h0=None, *, d_outputs=None, d_final=None, targets=None, mask=None, wrt=None,
            lengths=None, check_finite=True, training=True, dropout_seed=None) -> Gradients:
        """Gradients in and out in one call (docs/vjp.md): ``d_outputs`` {output: (T, B, n)},
        ``d_final`` {layer.state: (B, n)} in; parameters, inputs (``wrt``) and initial states out.
        ``training``, ``dropout_seed``: as :meth:`forward`'s."""
        names = tuple(o for o in self.step.outputs if isinstance(d_outputs, dict) and o in d_outputs)  # else: refused below
        kept = self._keep(params, self._inputs(inputs), h0, self._targets(targets), mask, wrt, names, lengths,
                          check_finite, self._training(training, True), dropout_seed)
        try:
            return kept.backward(d_outputs, d_final)
        finally:
            kept.free()


def _rows(where: str, rows, b: int):
    """``dropout_rows`` checked: None, or ``(first, B)`` with rows first … first+b-1 in a batch of B."""
    if rows is None:
        return None
    ok = isinstance(rows, (tuple, list)) and len(rows) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in rows)
    if not ok or not 0 <= rows[0] <= rows[0] + b <= rows[1]:
        raise CallError(f"{where}: dropout_rows must be (first, B): this call's {b} sequences are rows first … "
                        f"first+{b}-1 of a batch of B, got {rows!r}")
    return int(rows[0]), int(rows[1])


def _all_layers(layer) -> list:
    """``layer`` and every composition inside it."""
    if not isinstance(layer, Composition):
        return []
    return [layer] + [c for sub in layer.layers for c in _all_layers(sub)]


def _recompile(declaration: dict, backend: str, dtype: str, options: dict, rng_state=None):
    from ..compile import compile as rc_compile
    from ..train.checkpoint import cell_from_dict
    model = rc_compile(cell_from_dict(declaration, "pickled model"), backend=backend, dtype=dtype, **options)
    if rng_state is not None:  # the dropout generator goes on where the pickled one was
        model.rng.bit_generator.state = rng_state
    return model


def lengths_from_mask(mask, T: int, B: int) -> np.ndarray:
    """Each sequence's length from a (T, B) or (T,) mask: its last step of nonzero weight + 1
    (T where no step has weight)."""
    m = np.asarray(mask)
    if m.shape == (T,):
        m = np.repeat(m[:, None], B, axis=1)
    if m.shape != (T, B):
        raise CallError(f"mask has shape {m.shape}, expected ({T}, {B}) or ({T},)")
    nz = m != 0
    last = T - np.argmax(nz[::-1], axis=0)
    return np.where(nz.any(axis=0), last, T).astype(np.int64)


class ComposedKept:
    """A composition's kept forward: like a cell's (docs/vjp.md), names prefixed by layer; its
    backward checks the cotangents finite unless the forward had ``check_finite=False``."""

    def __init__(self, model, kept, sizes, check_finite=True):
        self._model, self._kept, self._check_finite = model, kept, check_finite
        self.outputs, self.final, self.loss = kept.outputs, kept.final, kept.loss
        self.T, self.B = sizes

    def __iter__(self):
        return iter((self.outputs, self.final))

    def backward(self, d_outputs=None, d_final=None) -> Gradients:
        m = self._model
        if self._kept is None:
            raise CallError(f"{m.comp.name}: backward on a forward whose buffers were freed")
        d_out, d_fin = check_cotangents(m.step, m.dtype, self.T, self.B, d_outputs, d_final, self._check_finite)
        return self._kept.backward(d_out or None, d_fin or None)

    def residuals(self) -> list:
        """The buffers its backward reads (``model.residual_shapes``), valid until :meth:`free`."""
        if self._kept is None:
            raise CallError(f"{self._model.comp.name}: residuals of a forward whose buffers were freed")
        return self._kept.residuals()

    def free(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.free()
