"""What the ``rnncomp`` command's subcommands share (:mod:`.cli` and :mod:`.cli_train`):
finding the cell a command names, refusing before any work a file that cannot be written,
the argument types for numbers, and :func:`option`, through which an option's value reaches
the library.  Mistakes end the command with a message (``SystemExit``), never a traceback.

    >>> load_cell("gru", 2, 3, 1).name, positive("3")
    ('gru', 3)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys

import numpy as np

from . import cells
from .cell import Cell
from .compose import Composition
from .errors import RnncompError


def load_cell(spec: str, n_in=None, hidden=None, n_out=None) -> Cell:
    """A zoo name, ``module:name``, or ``path/to/file.py[:name]`` holding a Cell.  The sizes
    (default 8, 16, 4) are for a zoo cell; a cell of your own declares its own."""
    if spec in cells.ZOO:
        return cells.ZOO[spec](n_in or 8, hidden or 16, n_out or 4)
    cell = _load(spec)
    given = [f for f, v in (("--inputs", n_in), ("--hidden", hidden), ("--outputs", n_out)) if v is not None]
    if given:
        raise SystemExit(f"rnncomp: {', '.join(given)} set the sizes of a zoo cell; {spec!r} declares its own")
    return cell


def _load(spec: str):
    """The Cell (or composition) ``module:name`` or ``file.py[:name]`` holds."""
    path, _, name = spec.partition(":")
    if path.endswith(".py"):
        if not os.path.isfile(path):
            raise SystemExit(f"rnncomp: no file {path} (a cell is a zoo name, module:name or file.py[:name])")
        s = importlib.util.spec_from_file_location("_rnncomp_user_cell", path)
        if s is None or s.loader is None:
            raise SystemExit(f"rnncomp: cannot read {path}")
        mod = importlib.util.module_from_spec(s)
        here = os.path.dirname(os.path.abspath(path))  # its own imports find its neighbours, as `python FILE.py`'s do
        sys.path.insert(0, here)
        try:
            s.loader.exec_module(mod)
        except SyntaxError as exc:  # the user's file: where, not the import machinery's traceback
            raise SystemExit(f"rnncomp: {path}, line {exc.lineno}: {exc.msg}") from None
        except RnncompError:
            raise  # a bad cell declared there: main prints its message
        except Exception as exc:  # noqa: BLE001 - the user's code failed: its line, not our frames
            raise SystemExit(f"rnncomp: {path}, line {_user_line(exc, path)}: {type(exc).__name__}: {exc}") from None
        finally:
            sys.path.remove(here)
    elif not path or path.startswith(".") or not all(p.isidentifier() for p in path.split(".")):
        raise SystemExit(f"rnncomp: {spec!r} is neither a zoo cell ({', '.join(sorted(cells.ZOO))}), "
                         "file.py[:name] nor module:name (a module's dotted name)")
    else:
        here = os.getcwd()  # `rnncomp inspect mymod:cell` finds ./mymod.py, as `python -m` would
        sys.path.insert(0, here)
        try:
            mod = importlib.import_module(path)
        except SyntaxError as exc:
            raise SystemExit(f"rnncomp: {exc.filename}, line {exc.lineno}: {exc.msg}") from None
        except ImportError as exc:
            from .zoo_matrix import MATRIX_ZOO
            hint = (f"; {spec} is a factory of rnncomp.zoo_matrix: write `from rnncomp.zoo_matrix import {spec}`"
                    f" and `cell = {spec}(8, 16, 4)` in a file and give FILE.py") if spec in MATRIX_ZOO else ""
            raise SystemExit(f"rnncomp: {spec!r} is neither a zoo cell ({', '.join(sorted(cells.ZOO))}) "
                             f"nor an importable module: {exc}{hint}") from None
        finally:
            sys.path.remove(here)
    kinds = (Cell, Composition)
    if name:
        if name not in vars(mod):
            raise SystemExit(f"rnncomp: {path} has no {name!r}; its cells: "
                             f"{', '.join(k for k, v in vars(mod).items() if isinstance(v, kinds)) or 'none'}")
        v = vars(mod)[name]
        if not isinstance(v, kinds):
            hint = f" (make the cell in a file, cell = {name}(...), and give FILE.py)" if callable(v) else ""
            raise SystemExit(f"rnncomp: {spec!r} is a {type(v).__name__}, not a Cell, rc.Stack or "
                             f"rc.Bidirectional{hint}")
        return v
    found = {k: v for k, v in vars(mod).items() if isinstance(v, kinds)}
    if len(found) != 1:
        raise SystemExit(f"rnncomp: {spec!r} must hold exactly one Cell, rc.Stack or rc.Bidirectional (found "
                         f"{len(found)}{': ' + ', '.join(found) if found else ''}); name one with {spec}:NAME")
    return next(iter(found.values()))


def _user_line(exc: BaseException, path: str):
    """The line of ``path`` (the user's file) where ``exc`` was raised, or '?'."""
    tb, line = exc.__traceback__, "?"
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def check_writable(*paths) -> None:
    """Refuse, before any work, a file to write in a folder that does not exist."""
    for path in paths:
        if path and path != "-":
            if path.endswith(os.sep):
                raise SystemExit(f"rnncomp: cannot write {path}: give a file name, not a folder")
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise SystemExit(f"rnncomp: cannot write {path}: folder {os.path.dirname(path) or folder} "
                                 "does not exist")


@contextlib.contextmanager
def option(name: str):
    """Wrap the call that hands an option's value to the library: what the library refuses on
    purpose (an :class:`~rnncomp.errors.RnncompError`) becomes ``rnncomp: NAME: why``.  Any
    other exception is a bug, not the user's mistake, and keeps its traceback."""
    try:
        yield
    except RnncompError as exc:
        raise SystemExit(f"rnncomp: {name}: {exc}") from None


def check_picture(name: str, path, formats=("png",)) -> None:
    """Refuse, before any work, a picture whose file name does not say its format (``--png
    graph.txt``): the drawing code picks the format by the name's ending."""
    if path and not any(str(path).lower().endswith("." + f) for f in formats):
        raise SystemExit(f"rnncomp: {name} {path}: the file name must end in "
                         f"{' or '.join('.' + f for f in formats)}")


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def natural(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0 and np.isfinite(v), "a positive number")


def natural_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0 and np.isfinite(v), "a number >= 0")


def _number(text, kind, ok, what):
    try:
        v = kind(text)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return v
