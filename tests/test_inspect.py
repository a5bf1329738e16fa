"""rnncomp.inspect: DOT views, costs against hand counts, gradient flow against finite differences."""
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import rnncomp as rc
from rnncomp import inspect as ri
from rnncomp.autodiff import WEIGHT, unrolled
from rnncomp.backends.numpy import FORWARD, NumpyModel, run_program
from rnncomp.cli import main
from rnncomp.inspect import draw as render_mod

from fuzzgen import fuzz_cells

D, H, O = 3, 4, 2


def elman():
    return rc.cells.elman(D, H, O)


# ----------------------------------------------------------------------------- DOT
@pytest.mark.parametrize("kind", ri.KINDS)
def test_dot_is_deterministic(kind):
    a = ri.to_dot(rc.cells.lstm(2, 3, 1), kind, k=2)
    b = ri.to_dot(rc.cells.lstm(2, 3, 1), kind, k=2)  # a fresh cell: no id()-based names
    assert a == b
    assert a.startswith("digraph ") and a.endswith("}\n")
    assert "0x" not in a


def _parse(dot):
    nodes = dict(re.findall(r'^\s+(n\d+) \[label="([^"]*)"', dot, re.M))
    edges = re.findall(r"^\s+(n\d+) -> (n\d+) \[([^\]]*)\]", dot, re.M)
    return nodes, edges


def test_unfolded_dot_draws_each_parameter_once():
    dot = ri.to_dot(elman(), "unfolded", k=3)
    assert "rankdir=LR" in dot
    assert dot.count("subgraph cluster_") == 1 + 1 + 3  # parameters, t = 0, steps 1..3
    nodes, edges = _parse(dot)
    heads = [lab.split("\\n")[0] for lab in nodes.values()]
    for p in ("W", "U", "b", "V", "by"):
        assert heads.count(p) == 1, p
        (nid,) = [n for n, lab in nodes.items() if lab.split("\\n")[0] == p]
        out = [e for e in edges if e[0] == nid]
        assert len(out) == 3, (p, out)  # one read per step
        # one edge into each of the three steps
        targets = sorted(nodes[e[1]].split("\\n")[0][-3:] for e in out)
        # U's products read h[0], h[1], h[2] (labelled by what they compute: U·h[k-1] in step k)
        assert targets == (["[0]", "[1]", "[2]"] if p == "U" else ["[1]", "[2]", "[3]"]), p
    assert heads.count("h[0]") == 1 and "h[3]" in heads


def test_gradient_dot_marks_backward_nodes():
    dot = ri.to_dot(elman(), "gradient")
    nodes, edges = _parse(dot)
    fwd_lines = [l for l in dot.splitlines() if 'label="h[t]' in l]
    bwd_lines = [l for l in dot.splitlines() if 'label="δpre(h)[t]' in l]
    assert fwd_lines and bwd_lines
    assert "shape=octagon" in bwd_lines[0] and "shape=octagon" not in fwd_lines[0]
    assert "#fee2e2" in bwd_lines[0] and "#fee2e2" not in fwd_lines[0]
    shapes = dict(re.findall(r"^\s+(n\d+) \[label=.*?shape=(\w+)", dot, re.M))
    bwd_ids = {n for n, sh in shapes.items() if sh in ("octagon", "invhouse", "house", "note")}
    assert {nodes[n].split("\\n")[0] for n in bwd_ids} >= {"δ⁺h[t]", "w[t]", "δy[t]", "δh[t]", "δpre(h)[t]",
                                                            "Uᵀ·δpre(h)[t]", "∂L/∂U", "δ⁺h[t-1]"}
    assert not any(nodes[n].startswith(("h[t]", "y[t]", "pre(h)[t]")) for n in bwd_ids)
    into_bwd = [e for e in edges if e[1] in bwd_ids]
    assert into_bwd and all("style=dashed" in e[2] for e in into_bwd)
    assert all("style=dashed" not in e[2] for e in edges if e[1] not in bwd_ids)
    for p in ("W", "U", "b", "V", "by"):
        assert f'label="∂L/∂{p}\\n' in dot
    assert "carried to step t-1" in dot


def test_step_dot_marks_recurrence_and_rejects_unknown_kind():
    dot = ri.to_dot(rc.cells.lstm(2, 3, 1), "step")
    assert dot.count("style=dotted") == 2  # h and c
    with pytest.raises(ValueError, match="graph kind"):
        ri.to_dot(elman(), "nope")


def test_render_without_renderer_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(render_mod, "have_dot", lambda: False)
    monkeypatch.setattr(render_mod, "have_matplotlib", lambda: False)
    with pytest.raises(ri.RenderError, match="graphviz.*matplotlib"):
        ri.render(elman(), tmp_path / "g.svg", kind="unfolded")
    with pytest.raises(ValueError, match="format"):
        ri.render(elman(), tmp_path / "g.pdf")


def test_matplotlib_render_is_deterministic(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (optional extra rnncomp[plot])")
    for kind in ri.KINDS:
        a, b = tmp_path / f"a_{kind}.svg", tmp_path / f"b_{kind}.svg"
        assert ri.render(elman(), a, kind=kind, k=2, engine="matplotlib") == "matplotlib"
        ri.render(elman(), b, kind=kind, k=2, engine="matplotlib")
        assert a.read_bytes() == b.read_bytes()
    ri.render(elman(), tmp_path / "u.png", kind="unfolded", engine="matplotlib")
    assert (tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"


def test_layout_columns_are_time_steps():
    g = ri.build(elman(), "unfolded", k=3)
    pos = render_mod.layout(g)
    x_of_step = {s: min(pos[n.id][0] for n in g.nodes if n.group == s + 1) for s in range(4)}
    assert x_of_step[0] < x_of_step[1] < x_of_step[2] < x_of_step[3]
    assert pos == render_mod.layout(ri.build(elman(), "unfolded", k=3))


# ----------------------------------------------------------------------------- cost
def test_elman_cost_by_hand():
    c = ri.cost(elman(), T=100, B=8, dtype="float32")
    assert c.forward["matvec"] == 2 * H * (D + H) + 2 * O * H
    # a1 = U·h + W·x + b: 2 adds; tanh: 1; y = V·h + by: 1; (y - target)²/2: 3 (sub, pow, div)
    assert c.forward["elementwise"] == 2 * H + H + O + 3 * O
    assert c.forward["reduction"] == O
    assert c.forward_flops == 2 * H * (D + H) + 2 * O * H + 3 * H + 4 * O + O
    # adjoints: Vᵀ·δy (2·O·H), Uᵀ·δa1 (2·H·H); δy = δa2·(y - target): 2; δh = δ⁺h + Vᵀδy: 1;
    # δa1 = δh·(1 - h²): 3; δa2 = w: a copy
    assert c.backward["matvec"] == 2 * O * H + 2 * H * H
    assert c.backward["elementwise"] == 2 * O + H + 3 * H
    # ∂W, ∂U, ∂V outer products (2mn each), ∂b, ∂by batch sums
    assert c.param_grads == 2 * H * D + 2 * H * H + 2 * O * H + H + O
    assert c.stored == {"y[t]": O, "h[t]": H}
    assert set(c.inputs_read) == {"x[t]", "target[t]"}
    assert c.stored_bytes == (O + H) * 4
    assert c.n_params == H * D + H * H + H + O * H + O and c.param_bytes == 4 * c.n_params
    assert c.activation_bytes == (100 * (O + H) + H) * 8 * 4
    assert c.sequence_flops["forward"] == 100 * 8 * c.forward_flops
    assert c.memory["total"] == c.activation_bytes + 2 * c.param_bytes
    t = c.table()
    assert "matvec" in t and "parameters: 42" in t
    assert c.as_dict()["forward_flops"] == c.forward_flops
    assert ri.cost(elman(), T=100, B=8, dtype="float64").stored_bytes == (O + H) * 8


def test_lstm_h1024_equations_and_costs_under_a_second():
    t0 = time.perf_counter()
    cell = rc.cells.lstm(256, 1024, 10)
    text = str(rc.explain(cell))
    c = ri.cost(cell, T=1000, B=32, dtype="float32")
    table = c.table()
    dt = time.perf_counter() - t0
    assert dt < 1.0, dt
    assert "δc[t-1]" in text or "δ⁺c" in text
    assert c.forward["matvec"] == 4 * 2 * 1024 * (256 + 1024) + 2 * 10 * 1024
    assert "GFLOP" in table or "TFLOP" in table


# ----------------------------------------------------------------------------- gradient flow
def _problem(cell, T, B, seed=1):
    params, inputs, targets = ri.random_problem(cell, T=T, B=B, seed=seed)
    return params, inputs, targets


def _loss_with_bump(cell, params, inputs, targets, t0, state, delta):
    """The executor's loss with ``delta`` added to state ``state`` right after step t0 computes it."""
    st = cell.step
    T, B = next(iter(inputs.values())).shape[:2]
    states = {s: np.zeros((B, n)) for s, n in st.states.items()}
    if t0 == 0:
        states[state] = states[state] + delta
    loss = 0.0
    for t in range(T):
        env = {(p, None): v for p, v in params.items()}
        env.update({(s, "t-1"): v for s, v in states.items()})
        env.update({(n, "t"): a[t] for n, a in list(inputs.items()) + list(targets.items())})
        for key, node in st.prog.nodes.items():
            if node.is_leaf:
                continue
            vals = [env[a] for a in node.args]
            if node.op == "matvec":
                vals += [env[(p, None)] for p, _, _ in node.attrs["terms"]]
            env[key] = FORWARD[node.op](node, vals, B, np.dtype("float64"))
            if t + 1 == t0 and key == (state, "t"):
                env[key] = env[key] + delta
        loss += float(env[st.loss_key][:, 0].sum()) / (T * B)
        states = {s: env[(s, "t")] for s in st.states}
    return loss


def test_flow_matches_the_executor_loss():
    cell = rc.cells.gru(2, 3, 1)
    params, inputs, targets = _problem(cell, 6, 2)
    f = ri.gradient_flow(cell, params, inputs, targets)
    loss = NumpyModel(cell).loss_and_grad(params, inputs, targets)[0]
    assert f.loss == pytest.approx(loss, rel=1e-12)
    assert _loss_with_bump(cell, params, inputs, targets, 0, "h", 0.0) == pytest.approx(loss, rel=1e-12)


def test_flow_adjoint_norms_match_finite_differences():
    cell = rc.cells.elman(2, 3, 2)
    T, B = 5, 2
    params, inputs, targets = _problem(cell, T, B)
    f = ri.gradient_flow(cell, params, inputs, targets)
    assert f.grad_norm["h"].shape == (T + 1,)
    eps = 1e-6
    for t in range(T + 1):
        fd = np.zeros((B, 3))
        for b in range(B):
            for i in range(3):
                d = np.zeros((B, 3))
                d[b, i] = eps
                fd[b, i] = (_loss_with_bump(cell, params, inputs, targets, t, "h", d)
                            - _loss_with_bump(cell, params, inputs, targets, t, "h", -d)) / (2 * eps)
        np.testing.assert_allclose(f.adjoints["h"][t], fd, rtol=1e-6, atol=1e-10)
        assert f.grad_norm["h"][t] == pytest.approx(np.linalg.norm(fd), rel=1e-6)


def test_flow_lstm_matches_unrolled_adjoints_and_directional_fd():
    cell = rc.cells.lstm(2, 3, 1)
    T, B = 4, 3
    params, inputs, targets = _problem(cell, T, B, seed=2)
    f = ri.gradient_flow(cell, params, inputs, targets)
    # the unrolled graph: one reverse walk over all T steps, its adjoints of h[t], c[t]
    st = cell.step
    u = unrolled(st, T)
    env = {(p, None): v for p, v in params.items()}
    env.update({(s, 0): np.zeros((B, n)) for s, n in st.states.items()})
    for n, a in list(inputs.items()) + list(targets.items()):
        env.update({(n, t + 1): a[t] for t in range(T)})
    env.update({(WEIGHT, t + 1): np.full((B, 1), 1 / (T * B)) for t in range(T)})
    run_program(u.fwd, env, B, np.dtype("float64"))
    run_program(u.rev.prog, env, B, np.dtype("float64"))
    for s in st.states:
        for t in range(T + 1):
            np.testing.assert_allclose(f.adjoints[s][t], env[u.rev.adjoints[(s, t)]], rtol=1e-10, atol=1e-14)
    # and central differences in a random direction, for c at t = 2 and h at t = 0
    rng = np.random.default_rng(0)
    for s, t in (("c", 2), ("h", 0), ("h", T)):
        d = rng.normal(size=(B, 3)) * 1e-6
        fd = (_loss_with_bump(cell, params, inputs, targets, t, s, d)
              - _loss_with_bump(cell, params, inputs, targets, t, s, -d)) / 2
        assert float((f.adjoints[s][t] * d).sum()) == pytest.approx(fd, rel=1e-6)
    joint = np.sqrt(f.grad_norm["h"] ** 2 + f.grad_norm["c"] ** 2)
    np.testing.assert_allclose(f.grad_norm_joint, joint)


def _fd_jacobian(cell, params, x_t, s_prev):
    """∂s[t]/∂s[t-1] for one sample by central differences over the joint state."""
    st = cell.step
    names, sizes = list(st.states), list(st.states.values())
    N = sum(sizes)

    def step(v):
        env = {(p, None): a for p, a in params.items()}
        lo = 0
        for s, n in zip(names, sizes):
            env[(s, "t-1")] = v[None, lo:lo + n]
            lo += n
        env.update({(k, "t"): a[None] for k, a in x_t.items()})
        run_program(NumpyModel(cell)._fwd_only, env, 1, np.dtype("float64"))
        return np.concatenate([env[(s, "t")][0] for s in names])

    eps, J = 1e-6, np.zeros((N, N))
    for j in range(N):
        e = np.zeros(N)
        e[j] = eps
        J[:, j] = (step(s_prev + e) - step(s_prev - e)) / (2 * eps)
    return J


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_step_jacobian_sigma_matches_fd_svd(name):
    cell = rc.cells.ZOO[name](2, 3, 1)
    T, B = 4, 2
    params, inputs, targets = _problem(cell, T, B, seed=3)
    f = ri.gradient_flow(cell, params, inputs, targets, keep_jacobians=True)
    assert f.sigma_max.shape == (T,)
    model = NumpyModel(cell)
    for t in range(1, T + 1):
        if t == 1:
            prev = {s: np.zeros((B, n)) for s, n in cell.step.states.items()}
        else:
            prev = model.forward(params, {k: a[:t - 1] for k, a in inputs.items()})[1]
        s_prev = np.concatenate([prev[s][0] for s in cell.step.states])
        J = _fd_jacobian(cell, params, {k: a[t - 1, 0] for k, a in inputs.items()}, s_prev)
        np.testing.assert_allclose(f.jacobians[t - 1], J, rtol=1e-6, atol=1e-9)
        assert f.sigma_max[t - 1] == pytest.approx(np.linalg.svd(J, compute_uv=False)[0], rel=1e-6)


def test_flow_table_and_plot(tmp_path):
    cell = rc.cells.indrnn(2, 3, 1)
    f = ri.gradient_flow(cell, *_problem(cell, 10, 2))
    t = f.table()
    assert "‖∂L/∂h[t]‖" in t and "σmax" in t
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ri.RenderError, match="matplotlib"):
            f.plot(tmp_path / "f.png")
        return
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- CLI
def test_cli_inspect_views(capsys):
    assert main(["inspect", "elman", "--hidden", "4", "--inputs", "3", "--outputs", "2"]) == 0
    assert "backward step of 'elman'" in capsys.readouterr().out
    assert main(["inspect", "elman", "--hidden", "4", "--dot", "unfolded", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "elman unfolded x2"') and "backward step" not in out
    assert main(["inspect", "gru", "--dot", "gradient", "--equations"]) == 0
    out = capsys.readouterr().out
    assert "shape=octagon" in out and "backward step of 'gru'" in out
    assert main(["inspect", "lstm", "--cost", "--T", "1000", "--B", "32", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "costs of 'lstm': T = 1000, B = 32, float32" in out
    assert main(["inspect", "mgu", "--flow", "--T", "12", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "gradient flow through time of 'mgu': T = 12" in out


def test_cli_pictures(capsys, tmp_path):
    svg = tmp_path / "g.svg"
    if render_mod.available_engine() is None:
        with pytest.raises(SystemExit, match="no renderer available"):
            main(["inspect", "elman", "--dot", "unfolded", "--svg", str(svg)])
        with pytest.raises(SystemExit, match="matplotlib"):
            main(["inspect", "elman", "--flow", "--T", "5", "--png", str(tmp_path / "f.png")])
        return
    assert main(["inspect", "elman", "--dot", "unfolded", "--svg", str(svg)]) == 0
    assert svg.exists() and "wrote" in capsys.readouterr().out


# ----------------------------------------------------------------------------- docs
def test_docs_inspect_md_is_generated_and_up_to_date():
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("make_inspect", root / "docs" / "make_inspect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.generate()
    stale = [p for p, t in files.items() if (root / p).read_text() != t]
    assert not stale, f"run python docs/make_inspect.py (stale: {stale})"


@pytest.mark.parametrize("mod", ["rnncomp.inspect", "rnncomp.inspect.dot", "rnncomp.inspect.compact",
                                 "rnncomp.inspect.draw", "rnncomp.aliases", "rnncomp.latex"])
def test_doctests(mod):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(mod), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_compact_step_graph_is_the_cells_equations(name, tmp_path):
    """--detail compact: one node per input, target, previous state and named equation; no
    parameter and no generated temporary as a node (the full LSTM step graph was a
    400x2255 strip)."""
    cell = rc.cells.ZOO[name](3, 4, 2)
    nodes, edges = _parse(ri.to_dot(cell, "step", detail="compact"))
    kinds = [d.kind for d in cell.decls.values()]
    named = kinds.count("output") + kinds.count("define") + kinds.count("state") + 1   # + the loss
    assert len(nodes) == kinds.count("input") + kinds.count("target") + kinds.count("state") + named
    assert not any(lab.split("\\n")[0] in cell.decls and cell.decls[lab.split("\\n")[0]].kind == "param"
                   for lab in nodes.values())
    heads = {lab.split("\\n")[0] for lab in nodes.values()}
    assert {f"{s} =" for s, d in cell.decls.items() if d.kind == "state"} <= {h.replace("[t] =", " =") for h in heads}
    ri.render(cell, tmp_path / "c.png", kind="step", engine="matplotlib", detail="compact")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="compact' is drawn for the step and gradient views"):
        ri.to_dot(cell, "unfolded", detail="compact")


def _check_compact_gradient(cell):
    """The compact gradient graph is the equation listing: one node per line of rc.explain
    (its forward equations, backward equations, where block, carried adjoints, gradients)
    plus the leaves they read; every backward node is reached by the adjoint flow."""
    e = rc.explain(cell)
    eqs, carried, grads, used = e._listing()
    nodes, edges = _parse(ri.to_dot(cell, "gradient", detail="compact"))
    heads = [lab.split("\\n")[0] for lab in nodes.values()]
    lines = [f"{lhs} =" for lhs, _ in used + eqs] + [f"δ⁺{s}[t-1] =" for s, _, _ in carried]
    lines += [f"∂L/∂{p} = Σ" for p, _ in grads]
    for line in lines:
        assert heads.count(line) == 1, (cell.name, line, heads)
    text = str(e)
    for lab in nodes.values():   # the names of the listing, never a generated key
        for name in re.findall(r"(?<![\w′])([^\W\d][\w′]*(?:\([^()]*\))?)\[t", lab.replace("\\n", " ")):
            assert name + "[t" in text, (cell.name, name, lab)
    into = {d for _, d, style in edges if "dashed" in style}
    for nid, lab in nodes.items():
        if lab.startswith(("δ", "∂L")) and "∈ R^" not in lab and not lab.endswith("=\\n0"):  # 0: none reaches it
            assert nid in into, (cell.name, lab)
    assert len(nodes) <= len(lines) + len(_ordered_lines(cell)) + len(cell.decls), cell.name


def _ordered_lines(cell):
    from rnncomp.printing import _ordered
    return _ordered(cell)


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_compact_gradient_graph_is_the_listing_clustered_by_gate(name, tmp_path):
    cell = rc.cells.ZOO[name](3, 4, 2)
    _check_compact_gradient(cell)
    dot = ri.to_dot(cell, "gradient", detail="compact")
    assert "rankdir=LR" in dot
    if name == "lstm":   # one cluster per gate, with its forward, backward and gradient nodes
        for gate in "figo":
            block = dot.split(f'label="gate {gate}"')[1].split("subgraph")[0]
            assert f"pre({gate})[t] =" in block and f"δpre({gate})[t] =" in block and f"∂L/∂W{gate} = Σ" in block
    ri.render(cell, tmp_path / "g.png", kind="gradient", engine="matplotlib", detail="compact")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz_cells())
def test_compact_gradient_graph_of_fuzzed_cells(cell):
    _check_compact_gradient(cell)


def test_picture_shows_itself_as_svg_in_a_notebook():
    """rc.inspect.picture: SVG from dot or matplotlib (matplotlib is a dependency, so one is
    always there); without a renderer (engine=None) the notebook gets the DOT text and what
    to install, and SVG is not offered."""
    p = ri.picture(rc.cells.lstm(3, 4, 2))
    svg = p._repr_svg_()
    assert svg is not None and "<svg" in svg and "pre(o)" in svg and p._repr_html_() is None
    assert repr(p).startswith("<lstm gradient (compact): ") and p.dot == ri.to_dot(rc.cells.lstm(3, 4, 2), "gradient",
                                                                                   detail="compact")
    plain = ri.picture(rc.cells.lstm(3, 4, 2), "step", detail="full", engine=None)
    assert plain._repr_svg_() is None
    assert "install Graphviz" in plain._repr_html_() and "digraph" in plain._repr_html_()
    mpl = ri.picture(rc.cells.gru(3, 4, 2), engine="matplotlib")._repr_svg_()
    assert "<svg" in mpl
    assert rc.explain(rc.cells.gru(3, 4, 2)).picture().dot == ri.to_dot(rc.cells.gru(3, 4, 2), "gradient",
                                                                         detail="compact")
