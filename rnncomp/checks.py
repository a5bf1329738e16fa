"""Checks of the numbers a user gives an option or argument (a learning rate, a clip, a batch
size, a seed): each refusal is an :class:`~rnncomp.errors.ArgumentError` naming the owner
(the class or function), the option and the value, raised where the value is given rather
than as a wrong result or a raw traceback later.

    >>> real("Adam", "lr", 1e-3, above=0)
    0.001
    >>> real("Adam", "betas[0]", 1.0, at_least=0, below=1)
    Traceback (most recent call last):
    ...
    rnncomp.errors.ArgumentError: Adam: betas[0] must be a finite number in [0, 1), got 1.0
    >>> count("fit", "batch_size", 0)
    Traceback (most recent call last):
    ...
    rnncomp.errors.ArgumentError: fit: batch_size must be a positive integer, got 0
    >>> flag("fit", "shuffle", "yes", none="True unless stateful")
    Traceback (most recent call last):
    ...
    rnncomp.errors.ArgumentError: fit: shuffle must be True or False, or None (True unless stateful), got 'yes'
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ArgumentError

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))  # what every backend computes in


def float_dtype(dtype, what: str = "dtype") -> np.dtype:
    """``dtype`` as the NumPy dtype a model computes in (float32 or float64); anything else,
    a name NumPy does not know included, is an ArgumentError (a ValueError) naming it."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in FLOAT_DTYPES:  # (np.dtype(None) is float64: None is not refused)
        raise ArgumentError(f"{what} must be float32 or float64, got {dtype}")
    return dt


def real(owner: str, option: str, v, *, above=None, at_least=None, below=None, at_most=None, hint="") -> float:
    """``v`` as a float: a finite real number (a NumPy one too; not a bool or a string) with
    ``above < v``, ``at_least <= v``, ``v < below``, ``v <= at_most`` where given; ``hint``
    (what to pass instead) ends the message in parentheses."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (above is None or v > above) and (at_least is None or v >= at_least) \
        and (below is None or v < below) and (at_most is None or v <= at_most)
    if not ok:
        raise ArgumentError(f"{owner}: {option} must be a finite number{_bounds(above, at_least, below, at_most)}, "
                            f"got {v!r}{_hint(hint)}")
    return float(v)


def count(owner: str, option: str, v, *, at_least: int = 1, hint="") -> int:
    """``v`` as an int: an integer (a NumPy one too; not a bool or a float) >= ``at_least``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < at_least:
        what = "a positive integer" if at_least == 1 else f"an integer >= {at_least}"
        raise ArgumentError(f"{owner}: {option} must be {what}, got {v!r}{_hint(hint)}")
    return int(v)


def flag(owner: str, option: str, v, *, none: str = "") -> bool | None:
    """``v`` as a bool: True or False (a NumPy bool too; not "yes", 1 or None, which would
    read as true or false silently); None too where ``none`` says what None means."""
    if v is None and none:
        return None
    if not isinstance(v, (bool, np.bool_)):
        alt = f", or None ({none})" if none else ""
        raise ArgumentError(f"{owner}: {option} must be True or False{alt}, got {v!r}")
    return bool(v)


def a_function(owner: str, option: str, v, signature: str) -> None:
    """``v`` is callable; else an ArgumentError naming ``owner``, the option and the ``signature`` wanted."""
    if not callable(v):
        raise ArgumentError(f"{owner}: {option} must be a function {signature}, got {v!r}")


def generator(owner: str, seed) -> np.random.Generator:
    """``np.random.default_rng(seed)``: a seed NumPy cannot take (a string, a float, a negative
    number) is an ArgumentError naming ``owner``, not NumPy's "SeedSequence expects int"."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ArgumentError(f"{owner}: seed must be a non-negative integer (or a sequence of them), "
                            f"got {seed!r}") from None


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def _bounds(above, at_least, below, at_most) -> str:
    lo, lo_open = (above, True) if above is not None else (at_least, False)
    hi, hi_open = (below, True) if below is not None else (at_most, False)
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def a_cell(who: str, cell) -> None:
    """``cell`` is an rc.Cell or a composition (what ``rc.compile`` takes), not, say, its name."""
    if isinstance(cell, type):  # rc.Cell itself: its properties answered "'property' object has no attribute"
        raise ArgumentError(f"{who}: the cell must be an rc.Cell or a composition, got the class "
                            f"{cell.__name__} itself; build one first (rc.Cell('name'), rc.cells.elman(...))")
    if not hasattr(type(cell), "step") and not hasattr(cell, "step"):
        hint = (f"; a zoo cell by name is rc.cells.get({cell!r})(n_in, n_hidden, n_out)" if isinstance(cell, str)
                else "")
        raise ArgumentError(f"{who}: the cell must be an rc.Cell or a composition (rc.Stack, rc.Bidirectional), "
                            f"got {type(cell).__name__}{hint}")


def is_composition(cell) -> bool:
    """A composition (rc.Stack, rc.Bidirectional) has no step program of its own."""
    return not hasattr(getattr(cell, "step", None), "prog")


def one_cell(who: str, cell) -> None:
    """What reads one cell's step program refuses a composition by name (the CLI does too)."""
    from .errors import CellError
    a_cell(who, cell)
    if is_composition(cell):
        raise CellError(f"{who} looks at one cell; {cell.name} is a composition: inspect its cells one by one "
                        "(rc.explain(...) and the DOT graphs show them all)")
