"""Smoke tests: every example runs in its small (--quick) configuration and reaches something real."""
import ast
import importlib.util
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_cell_example(capsys):
    assert load("custom_cell").main(T=5, B=2) < 1e-10
    assert "backward step of 'leaky_softsign'" in capsys.readouterr().out


def test_sine_elman_example(tmp_path, capsys):
    wave, curve = tmp_path / "wave.png", tmp_path / "curve.png"
    r = load("sine_elman").main(["--quick", "--plot", str(wave), "--curve", str(curve)])
    assert r["mse_after"] < 0.1 * r["mse_before"]
    assert r["mse_after"] < r["persistence"]  # beats repeating the last value
    assert np.isfinite(r["closed_loop_mse"])
    assert wave.read_bytes()[:8] == PNG and curve.read_bytes()[:8] == PNG
    assert "closed loop" in capsys.readouterr().out


def test_adding_problem_example(capsys):
    r = load("adding_problem").main(["--quick", "--backend", "numpy"])  # three cells: no compile time
    assert set(r) == {"gru", "lstm", "elman"}
    for name, v in r.items():
        assert v["mse"] < v["mse_before"], name  # training lowered the held-out error
        assert v["flow"].shape == (31,) and np.isfinite(v["flow"]).all()
    e = r["elman"]["flow"]
    assert e[0] < 0.1 * e[-1]  # the tanh RNN's gradient vanishes going back in time
    out = capsys.readouterr().out
    assert "held-out MSE" in out and "‖∂L/∂h[t]‖" in out


def test_charlm_example(tmp_path, capsys):
    ckpt = tmp_path / "charlm.ckpt"
    r = load("charlm").main(["--quick", "--save", str(ckpt)])
    assert r["bpc"] < r["bpc_before"] - 1.5 and r["bpc"] < r["uniform_bpc"] - 1.5
    assert math.isclose(r["uniform_bpc"], math.log2(74))
    assert r["sample"].startswith("Elizabeth") and len(r["sample"]) == len("Elizabeth") + 60
    assert ckpt.exists()
    assert "bits per character" in capsys.readouterr().out


def test_jordan_example(capsys):
    r = load("jordan").main(["--quick"])
    assert r["xent_after"] < 0.5 * r["xent_before"]
    assert r["accuracy"] > 0.6 and r["accuracy_long"] > 0.6  # chance: 1/6
    assert "s[t] = y[t]" in capsys.readouterr().out  # the state is the previous output


def test_torch_charlm_example(capsys):
    pytest.importorskip("torch", reason="examples/torch_charlm.py needs PyTorch")
    r = load("torch_charlm").main(["--quick"])
    d_out, d_grad = r["loop_difference"]
    # the PyTorch loop and the rnncomp layer: the same cell, float32 (rounding of ~50 terms)
    assert d_out < 1e-5 and d_grad < 1e-4
    assert r["bpc"] < r["bpc_before"] - 0.5 and r["bpc_before"] < r["uniform_bpc"] + 0.1  # it learned
    assert set(r["step_times"]) == {"rnncomp", "loop", "nn.LSTM"}  # --quick leaves out torch.compile
    assert all(0 < t["best_s"] <= t["step_s"] for t in r["step_times"].values())
    assert "bits per character" in capsys.readouterr().out


def test_jax_charlm_example(capsys):
    pytest.importorskip("jax", reason="examples/jax_charlm.py needs JAX")
    pytest.importorskip("optax", reason="examples/jax_charlm.py needs optax")
    r = load("jax_charlm").main(["--quick"])
    d_out, d_grad = r["scan_difference"]
    assert d_out < 1e-5 and d_grad < 1e-4  # lax.scan and the rnncomp layer: the same cell, float32
    assert r["bpc"] < r["bpc_before"] - 0.5 and r["bpc_before"] < r["uniform_bpc"] + 0.1
    assert set(r["step_times"]) == {"rnncomp", "lax.scan"}
    assert all(0 < t["best_s"] <= t["step_s"] for t in r["step_times"].values())
    assert "bits per character" in capsys.readouterr().out


NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "charlm_common")


@pytest.mark.parametrize("name", NAMES)
def test_every_example_answers_help_with_its_whole_summary(name):
    """examples/README.md: each example takes --help (custom_cell.py ran in full on any flag), and
    the description is the docstring's whole first paragraph (it stopped mid-sentence)."""
    r = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--help"], capture_output=True,
                       text=True, timeout=120, cwd=EXAMPLES.parent)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-500:]
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    summary = "".join(doc.split("\n\n")[0].split())  # argparse wraps lines, also after a hyphen
    assert summary in "".join(r.stdout.split()), (summary, r.stdout[:400])
