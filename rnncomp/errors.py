"""The exceptions rnncomp raises.  Every message names where the problem is."""


class RnncompError(Exception):
    """Base class of every error rnncomp raises on purpose."""


class CellError(RnncompError, ValueError):
    """A cell declaration is invalid (names the cell and the equation)."""


class ShapeError(CellError):
    """Sizes that do not fit together (names both shapes)."""


class DifferentiationError(CellError):
    """A gradient is required through something that has no usable derivative."""


class CallError(RnncompError, ValueError):
    """Arrays passed at call time do not fit the compiled cell."""


class ArgumentError(RnncompError, ValueError):
    """A value an option or argument cannot take (a truncation, a memory schedule, a graph view):
    names the class or function and the value.  The command line names its option too."""


class CompileError(RnncompError, RuntimeError):
    """A backend could not compile the cell."""


class TrainingError(RnncompError, RuntimeError):
    """Training stopped: a non-finite loss or gradient, or a checkpoint that does not fit."""


class CheckpointError(TrainingError, ValueError):
    """A file that is not a checkpoint, or one that cannot load as it was saved."""


class IRError(CompileError, AssertionError):
    """A program breaks an invariant of the IR (an op outside :data:`rnncomp.ops.OPS`, a value read
    before it is defined, a template reading an unbound argument): a compiler bug, not the user's;
    the message names the program and the node.  An ``AssertionError`` too, as ``ir.verify``'s
    checks always were."""
