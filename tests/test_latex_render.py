"""The LaTeX of every zoo cell and of fuzzed cells renders with KaTeX (issue #18): no
double subscripts from names with '_', no raw ᵀ · Σ δ, no error of any kind.  All strings
go to one node process.  KaTeX comes from the npm registry (.ci/run installs it into
.ci/katex; set RNNCOMP_KATEX to another node_modules folder)."""
import json
import os
import pathlib
import shutil
import subprocess

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnncomp as rc

from fuzzgen import fuzz_cells

HERE = pathlib.Path(__file__).resolve().parent
MODULES = pathlib.Path(os.environ.get("RNNCOMP_KATEX", HERE.parent / ".ci" / "katex" / "node_modules"))
NEEDS = "needs node and KaTeX (npm install --prefix .ci/katex katex)"
if not (shutil.which("node") and (MODULES / "katex").is_dir()):
    pytestmark = pytest.mark.skip(reason=NEEDS)


def katex_errors(strings):
    r = subprocess.run(["node", str(HERE / "katex_render.js")], input=json.dumps(strings), text=True,
                       capture_output=True, env=dict(os.environ, NODE_PATH=str(MODULES)), timeout=300)
    assert r.returncode == 0, r.stderr
    return [(strings[i], msg) for i, msg in json.loads(r.stdout)]


def _underscored():
    """A cell whose every name has '_' (h_1 gave h_{1}_{t}, a double subscript)."""
    cell = rc.Cell("under_scores")
    x = cell.input("x_in", 2)
    h = cell.state("h_1", 3, init="learn")
    W = cell.param("W_in", (3, 2))
    U = cell.param("U_rec_2", (3, 3))
    a = cell.define("a_pre", W @ x + (U - U.T) @ h)
    cell.update(h, sp.tanh(a) * rc.sigmoid(a) ** 2 + rc.vsum(h) / 3)
    y = cell.output("y_out", cell.param("V_o", (2, 3)) @ h.new)
    cell.loss(rc.softmax_xent(y, cell.target("t_gt", 2)))
    return cell


def _latex_of(cell):
    e = rc.explain(cell)
    return [e.latex(), cell._repr_latex_().strip("$")]


def test_latex_of_the_zoo_and_underscored_names_renders(tmp_path):
    from rnncomp.zoo_matrix import MATRIX_ZOO
    cells = [rc.cells.ZOO[n](3, 4, 2) for n in sorted(rc.cells.ZOO)] + [_underscored()]
    cells += [MATRIX_ZOO[n](3, 4, 2) for n in sorted(MATRIX_ZOO)]  # outer products, C·k, colsum
    strings = [s for c in cells for s in _latex_of(c)]
    for s in strings:
        for raw in ("ᵀ", "·", "Σ", "δ", "ℓ", "⁺"):   # KaTeX would render these as text
            assert raw not in s, (raw, s[:200])
    assert katex_errors(strings) == []


def test_latex_of_fuzzed_cells_renders():
    found = []

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzz_cells())
    def collect(cell):
        found.extend(_latex_of(cell))

    collect()
    assert len(found) >= 20
    assert katex_errors(found) == []
