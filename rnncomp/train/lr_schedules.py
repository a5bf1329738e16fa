"""Named learning-rate schedules: a factor of the optimizer's ``lr`` at each (1-based) step.

Unlike a lambda, a named schedule is saved in a checkpoint as its name and numbers and
comes back from it.  Also reachable as ``rc.schedules.ExponentialDecay`` and so on.

    >>> s = Warmup(10, then=ExponentialDecay(0.5, every=100))
    >>> [round(s(k), 3) for k in (1, 5, 10, 110, 210)]
    [0.1, 0.5, 1.0, 0.5, 0.25]
    >>> from_dict(s.to_dict()) == s
    True
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..checks import count, real
from ..errors import ArgumentError


@dataclass(frozen=True)
class ExponentialDecay:
    """``rate ** (step // every)`` (``smooth=True``: ``rate ** (step / every)``)."""

    rate: float
    every: int = 1
    smooth: bool = False

    def __post_init__(self):
        _set(self, rate=real("ExponentialDecay", "rate", self.rate, above=0, at_most=1),
             every=count("ExponentialDecay", "every", self.every))

    def __call__(self, step: int) -> float:
        k = step / self.every if self.smooth else step // self.every
        return self.rate ** k

    def to_dict(self) -> dict:
        return {"name": "ExponentialDecay", **asdict(self)}


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from 1 to ``floor`` over ``steps`` steps, ``floor`` after them."""

    steps: int
    floor: float = 0.0

    def __post_init__(self):
        _set(self, steps=count("Cosine", "steps", self.steps),
             floor=real("Cosine", "floor", self.floor, at_least=0, at_most=1))

    def __call__(self, step: int) -> float:
        p = min(step, self.steps) / self.steps
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p))

    def to_dict(self) -> dict:
        return {"name": "Cosine", **asdict(self)}


@dataclass(frozen=True)
class Warmup:
    """A linear ramp ``step / steps`` over the first ``steps`` steps, then ``then`` (a named
    schedule counted from the end of the warm-up) or 1."""

    steps: int
    then: object = None

    def __post_init__(self):
        _set(self, steps=count("Warmup", "steps", self.steps))
        if self.then is not None and type(self.then) not in NAMED.values():
            raise ArgumentError(f"Warmup: then must be a named schedule ({', '.join(NAMED)}) or None, "
                             f"got {self.then!r}")

    def __call__(self, step: int) -> float:
        if step <= self.steps:
            return step / self.steps
        return 1.0 if self.then is None else self.then(step - self.steps)

    def to_dict(self) -> dict:
        return {"name": "Warmup", "steps": self.steps,
                "then": None if self.then is None else self.then.to_dict()}


def _set(schedule, **checked) -> None:
    """Keep the checked values (a NumPy integer as a Python int: the checkpoint is JSON)."""
    for k, v in checked.items():
        object.__setattr__(schedule, k, v)


NAMED = {"ExponentialDecay": ExponentialDecay, "Cosine": Cosine, "Warmup": Warmup}


def from_dict(d: dict):
    """The schedule written by ``to_dict()``."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in NAMED:
        raise ValueError(f"unknown learning-rate schedule {name!r}; known: {', '.join(NAMED)}")
    if name == "Warmup" and d.get("then") is not None:
        d["then"] = from_dict(d["then"])
    return NAMED[name](**d)
