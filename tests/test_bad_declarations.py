"""Bad arguments to a cell's declarations and its ``init_params`` (found by a probe of bad
input, each a silent wrong value or a traceback from NumPy before): a clear error naming the
cell, the parameter and the value."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import ArgumentError


@pytest.mark.parametrize("dtype", ["int32", np.int64, "float16", "complex64", "bool"])
def test_init_params_refuses_a_dtype_no_model_computes_in(dtype):
    # int32 rounded every weight to 0 or ±1, silently
    with pytest.raises(ArgumentError, match=r"cell 'elman': init_params: dtype must be float32 or float64"):
        rc.cells.elman(2, 3, 1).init_params(0, dtype)
