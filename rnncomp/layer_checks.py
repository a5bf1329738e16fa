"""What the framework layers (:mod:`rnncomp.torch`, :mod:`rnncomp.jax`) check alike: that a
cell can be a layer, and the names of the arrays a call passes.  Imports no framework."""
from __future__ import annotations

from .backends.validate import forward_targets
from .errors import CallError, CellError


def check_layer_cell(step, output, who: str) -> None:
    """``step`` (a cell's) can be a layer returning ``output`` (an output name or None)."""
    if output is not None and output not in step.outputs:
        states = f"; {output!r} is a state: declare an output that returns it" if output in step.states else ""
        raise CellError(f"cell {step.name!r}: {who}(output={output!r}) names no output of the cell "
                        f"(outputs: {', '.join(map(repr, step.outputs)) or 'none'}){states}")
    if not step.inputs:
        raise CellError(f"cell {step.name!r}: {who} needs a cell with at least one input")
    if forward_targets(step):
        raise CellError(f"cell {step.name!r}: its outputs or updates read target "
                        f"{', '.join(map(repr, forward_targets(step)))} (teacher forcing), which a "
                        "layer does not pass; make it an input of the cell")


def named(step, kind: str, value, names, arrays: str = "arrays") -> dict:
    """``value`` as {name: array}: a dict with known names, None (empty), or one array where
    the cell has one name of this kind."""
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise CallError(f"cell {step.name!r}: {kind} names {', '.join(map(repr, unknown))}; "
                            f"expected {', '.join(map(repr, names)) or 'none'}")
        return value
    if len(names) == 1:
        return {names[0]: value}
    raise CallError(f"cell {step.name!r}: {kind} must be a dict of {arrays} keyed by "
                    f"{', '.join(map(repr, names))} (the cell has {len(names)}), got {type(value).__name__}")


def missing_inputs(step, xs: dict) -> None:
    missing = [n for n in step.inputs if n not in xs]
    if missing:
        raise CallError(f"cell {step.name!r}: missing input {', '.join(map(repr, missing))}")
