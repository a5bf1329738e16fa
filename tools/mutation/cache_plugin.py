"""pytest plugin for mutation runs only (loaded by tools/mutation.sh, never by CI).

The native backend's on-disk cache is keyed on the code generators' *source text*, which
is the same for every mutant (mutmut switches mutants at run time), so a mutant could be
served the unmutated object and wrongly survive.  Each pytest session (one per mutant)
gets an empty cache directory of its own.
"""
import os
import tempfile


def pytest_configure(config):
    os.environ["RNNCOMP_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnncomp-mut-cache-")


def pytest_runtest_setup(item):
    """Empty the derivative and printer caches before every test: mutmut maps each test to the
    functions it calls, and a test served from a cache filled by an earlier test would not be
    mapped to (nor rerun against a mutant of) ``_diff``, the kink rules or the NumPy printer."""
    import sys
    for mod, fn in (("rnncomp.derivatives", "partials"), ("rnncomp.backends.numpy", "ew_function")):
        f = getattr(sys.modules.get(mod), fn, None)
        if f is not None:
            f.cache_clear()
