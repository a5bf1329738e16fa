import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
# RNNCOMP_FUZZ_EXAMPLES: the long profile's number of examples per test (default 2000)
settings.register_profile("long", max_examples=int(os.environ.get("RNNCOMP_FUZZ_EXAMPLES", "2000")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``fuzz`` (long fuzzing runs) are skipped unless asked for:
    ``pytest -m fuzz`` (any -m expression naming fuzz without negating it) or RNNCOMP_FUZZ=1."""
    markexpr = config.getoption("markexpr", "") or ""
    wanted = os.environ.get("RNNCOMP_FUZZ") == "1" or ("fuzz" in markexpr and "not fuzz" not in markexpr)
    if wanted:
        return
    skip = pytest.mark.skip(reason="fuzz test: run with -m fuzz (and HYPOTHESIS_PROFILE=long) "
                                   "or RNNCOMP_FUZZ=1")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


@pytest.fixture
def jax_x64():
    """JAX in float64 for one test (``pytestmark = pytest.mark.usefixtures("jax_x64")``), restored after it."""
    jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)
