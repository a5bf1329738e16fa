"""Smoke test: every example runs and agrees with the reference."""
import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_custom_cell_example(capsys):
    spec = importlib.util.spec_from_file_location("custom_cell", EXAMPLES / "custom_cell.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(T=5, B=2) < 1e-10
    assert "backward step of 'leaky_softsign'" in capsys.readouterr().out
