"""A trainer trained in two runs with a checkpoint between them (tests of exact resumption)."""
import rnncomp as rc


def resumed(make, x, y, path, before: int, after: int, **fit):
    """``make()``'s trainer fit ``before`` epochs, saved to ``path``, loaded, and fit ``after`` more."""
    tr = make()
    tr.fit(x, y, epochs=before, verbose=0, **fit)
    tr.save(path)
    tr = rc.Trainer.load(path)
    tr.fit(x, y, epochs=after, verbose=0, **fit)
    return tr
