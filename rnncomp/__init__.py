"""rnncomp: a symbolic autodiff compiler for recurrent networks.

Declare a cell with sympy (:class:`Cell`), look at its equations and its derived
BPTT step (:func:`explain`), unfold it (:func:`unfold`), and compile it
(:func:`compile`).
"""
from . import backends, cell_views, cells, inspect, schedules  # noqa: F401 - cell_views: Cell's compiler views
from .algorithms import BPTT, DNI, RTRL, UORO, FixedPointError, SensitivityMemoryError, SnAp, compile_fixed_point
from .autodiff import backward_step
from .cell import Cell
from .compile import compile
from .compose import Bidirectional, Stack
from .dsl import concat, logsumexp, softmax, softmax_xent, vslice, vsum
from .errors import (ArgumentError, CallError, CellError, CompileError, DifferentiationError, RnncompError,
                     ShapeError)
from .functions import gelu, hard_sigmoid, relu, sigmoid, softplus, softsign, swish
from .graph import unfold
from .matrix_dsl import colsum, matvec, outer, rowsum
from .weight_dsl import norm, weight
from .memory import Binomial, Budget, Every
from .printing import explain
from .train import (SGD, Adagrad, Adam, AdamW, Callback, Checkpoint, CheckpointError, EarlyStopping, RMSprop, Trainer,
                    TrainingError, Truncated, pad_sequences, stream_batches)

__all__ = [
    "Cell", "compile", "Stack", "Bidirectional", "Every", "Binomial", "Budget", "Trainer", "Truncated", "TrainingError", "pad_sequences", "stream_batches",
    "Callback", "Checkpoint", "CheckpointError", "EarlyStopping", "schedules",
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "unfold", "explain", "backward_step", "cells", "inspect",
    "concat", "vslice", "vsum", "logsumexp", "softmax", "softmax_xent", "norm", "weight",
    "outer", "matvec", "rowsum", "colsum",
    "sigmoid", "softplus", "relu", "softsign", "hard_sigmoid", "gelu", "swish",
    "RTRL", "SnAp", "UORO", "BPTT", "DNI", "SensitivityMemoryError", "compile_fixed_point", "FixedPointError",
    "RnncompError", "CellError", "ShapeError", "DifferentiationError", "CallError", "CompileError", "ArgumentError",
]
__version__ = "0.1.0"


def __getattr__(name):
    """``rc.torch`` and ``rc.jax`` (the framework layers) are imported on first use, so that
    ``import rnncomp`` never imports PyTorch or JAX."""
    if name in ("torch", "jax"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnncomp' has no attribute {name!r}")
