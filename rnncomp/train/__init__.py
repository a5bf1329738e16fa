"""Training: optimizers over a flat parameter vector, truncated BPTT, the Trainer, batches."""
from .data import pad_sequences, stream_batches
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop
from .callbacks import Callback, Checkpoint, EarlyStopping
from .checkpoint import CheckpointError
from .trainer import Trainer, TrainingError
from .truncated import Truncated

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Trainer", "Truncated", "TrainingError", "Callback",
           "Checkpoint", "CheckpointError", "EarlyStopping",
           "pad_sequences", "stream_batches"]
