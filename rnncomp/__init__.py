"""rnncomp: a symbolic autodiff compiler for recurrent networks.

Declare a cell with sympy (:class:`Cell`), look at its equations and its derived
BPTT step (:func:`explain`), unfold it (:func:`unfold`), and compile it
(:func:`compile`).
"""
from . import backends, cells, inspect, schedules
from .autodiff import backward_step
from .cell import Cell
from .compile import compile
from .dsl import concat, logsumexp, softmax, softmax_xent, vslice, vsum
from .errors import (CallError, CellError, CompileError, DifferentiationError, RnncompError,
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
    "Cell", "compile", "Every", "Binomial", "Budget", "Trainer", "Truncated", "TrainingError", "pad_sequences", "stream_batches",
    "Callback", "Checkpoint", "CheckpointError", "EarlyStopping", "schedules",
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "unfold", "explain", "backward_step", "cells", "inspect",
    "concat", "vslice", "vsum", "logsumexp", "softmax", "softmax_xent", "norm", "weight",
    "outer", "matvec", "rowsum", "colsum",
    "sigmoid", "softplus", "relu", "softsign", "hard_sigmoid", "gelu", "swish",
    "RnncompError", "CellError", "ShapeError", "DifferentiationError", "CallError", "CompileError",
]
__version__ = "0.1.0"
