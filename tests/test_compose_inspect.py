"""rc.explain, rnncomp inspect and the drawings of a composition (rc.Stack, rc.Bidirectional)."""
import textwrap

import pytest

import rnncomp as rc
from rnncomp.cli import main
from rnncomp.inspect import to_dot


def _stack():
    return rc.Stack([rc.Bidirectional(rc.cells.gru(3, 4, 2)), rc.cells.elman(4, 4, 1)])


def test_explain_shows_each_cell_with_the_backward_it_runs_as_a_layer():
    e = rc.explain(_stack())
    titles = [t for t, _ in e.parts]
    assert titles[0].startswith("layer l0.fwd, bwd: cell 'gru' (fwd and bwd") and "feeds layer l1" in titles[0]
    assert titles[1].startswith("layer l1: cell 'elman' (the top")
    low, top = (p.backward_text() for _, p in e.parts)
    assert "δyᵉˣᵗ[t]: the cotangent of output y[t] from the caller" in low and "δx[t]" not in low
    assert "δx[t] = Wᵀ·δpre(h)[t]" in top and "δy[t] = w[t]*(-target[t] + y[t])" in top  # the loss seeds the top
    text = str(e)
    assert text.startswith("stack(bidirectional(gru), elman): 2 layer(s)") and "\\begin{aligned}" in e.latex()
    alone = rc.explain(rc.Bidirectional(rc.cells.elman(2, 3, 1)))  # no loss: seeded by the outputs' cotangents
    assert "δyᵉˣᵗ[t]" in alone.parts[0][1].backward_text()


def test_dot_clusters_each_layer_and_wires_them():
    text = to_dot(_stack())
    assert "layer l0.fwd, bwd: step t of 'gru'" in text and "layer l1: step t of 'elman'" in text
    assert text.count('label="feeds"') == 1
    unfolded = to_dot(_stack(), "unfolded", k=3)
    assert unfolded.count('label="feeds"') == 3  # once per step
    assert to_dot(_stack(), "gradient").count("subgraph cluster_") >= 4


def test_cli_inspects_a_composition_from_a_file(tmp_path, capsys):
    f = tmp_path / "mystack.py"
    f.write_text(textwrap.dedent("""
        import rnncomp as rc
        model = rc.Stack([rc.Bidirectional(rc.cells.gru(3, 8, 4)), rc.cells.elman(8, 8, 2)])
    """))
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "layer l1: cell 'elman'" in out and "backward step of 'gru'" in out
    assert main(["inspect", str(f), "--dot"]) == 0
    assert "feeds" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="is a composition: inspect its cells one by one"):
        main(["inspect", str(f), "--cost"])


def test_cli_trains_a_composition_and_resumes(tmp_path, capsys):
    f = tmp_path / "bi.py"
    f.write_text(textwrap.dedent("""
        import rnncomp as rc
        model = rc.Stack([rc.Bidirectional(rc.cells.gru(1, 8, 4)), rc.cells.elman(8, 8, 1)])
    """))
    ckpt = tmp_path / "bi.ckpt"
    assert main(["train", str(f), "--task", "sine", "--epochs", "1", "--save", str(ckpt)]) == 0
    assert "epoch 1/1: loss" in capsys.readouterr().out
    assert main(["train", "--resume", str(ckpt), "--epochs", "1"]) == 0
    assert main(["inspect", str(ckpt)]) == 0
    assert "stack(bidirectional(gru), elman)" in capsys.readouterr().out
