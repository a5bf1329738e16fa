"""Training: optimizers over a flat parameter vector, truncated BPTT, the Trainer."""
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop
from .trainer import Trainer, TrainingError, Truncated

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Trainer", "Truncated", "TrainingError"]
