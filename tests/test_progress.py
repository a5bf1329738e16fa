"""Training progress: a live tqdm bar on a terminal, one plain line per epoch in a log
(the old output joined every update of a run with carriage returns) (issue #18)."""
import os
import pty
import subprocess
import sys

import numpy as np

import rnncomp as rc

FIT = """
import numpy as np, rnncomp as rc
tr = rc.Trainer(rc.cells.elman(1, 4, 1), rc.Adam(1e-2), backend="numpy", dtype="float64")
x = np.sin(np.linspace(0, 6, 21))[:, None, None].repeat(8, 1)
tr.fit(x[:-1], x[1:], epochs=2, batch_size=2)
"""


def test_a_log_gets_one_line_per_epoch(capsys):
    tr = rc.Trainer(rc.cells.elman(1, 4, 1), rc.Adam(1e-2), backend="numpy", dtype="float64")
    x = np.sin(np.linspace(0, 6, 21))[:, None, None].repeat(8, 1)
    tr.fit(x[:-1], x[1:], epochs=3, batch_size=2)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [l.split(":")[0] for l in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("tokens/s" in l and "loss" in l for l in lines)


def test_a_terminal_gets_a_live_bar():
    main, sub = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", FIT], stdout=sub, stderr=sub, env=env, close_fds=True)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(timeout=60) == 0, out.decode()
    text = out.decode()
    assert "epoch 1/2: 100%" in text and "epoch 2/2: 100%" in text and "4/4" in text   # tqdm's bar
    assert "tokens/s" in text
