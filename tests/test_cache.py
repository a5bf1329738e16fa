"""The on-disk compile cache under concurrent processes, and when it cannot be written (issue #8).

``rnncomp/backends/llvm/jit.py`` writes each object to a temporary file and installs it with
``os.replace`` (atomic), and checks a SHA-256 of the payload on every read, so:

* processes compiling the same cell into the same fresh directory at once all succeed, with
  identical results, and leave exactly one complete object and no temporary files;
* a process reading while another writes sees either no file (and compiles) or a complete
  one, never a partial one;
* an unwritable cache directory costs only the cache: the model compiles and runs, with one
  ``RuntimeWarning`` naming the directory.

(A truncated cache file is rebuilt: ``test_native.py::test_compile_cache_hit_and_truncated_file``.)
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.backends.llvm import jit
from rnncomp.errors import CompileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a child process: compile elman(3, 4, 2) into argv[1] once argv[2] exists, save the results
CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import rnncomp as rc
    cache, go, out = sys.argv[1:4]
    cell = rc.cells.elman(3, 4, 2)
    rng = np.random.default_rng(0)
    params = cell.init_params(0)
    x, t = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 2))
    open(out + ".ready", "w").close()
    while not os.path.exists(go):
        time.sleep(0.001)
    model = rc.compile(cell, backend="native", cache=cache, threads=1)
    loss, grads, final = model.loss_and_grad(params, x, t)
    np.savez(out, loss=loss, h=final["h"], **{"g_" + k: v for k, v in grads.items()})
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for(paths, procs, timeout=120):
    t0 = time.time()
    while not all(os.path.exists(p) for p in paths):
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"child failed:\n{p.stderr.read().decode()[-3000:]}")
        assert time.time() - t0 < timeout, "children did not start"
        time.sleep(0.01)


def test_processes_compiling_the_same_cell_into_a_fresh_cache_at_once(tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    outs = [str(tmp_path / f"out{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(go), o], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for o in outs]
    try:
        _wait_for([o + ".ready" for o in outs], procs)  # every child imported and built its cell
        go.touch()                                       # ... then all compile at once
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [np.load(o + ".npz") for o in outs]
    for r in results[1:]:
        assert sorted(r.files) == sorted(results[0].files)
        for k in r.files:
            np.testing.assert_array_equal(r[k], results[0][k], err_msg=k)
    objs = glob.glob(str(cache / "obj" / "*.o"))
    assert len(objs) == 1, objs
    assert jit._read_cache(objs[0]) is not None           # complete, checksum intact
    assert not glob.glob(str(cache / "obj" / ".tmp-*"))   # no temporary file left behind
    # a later process-local compile hits that object and agrees bit for bit
    cell = rc.cells.elman(3, 4, 2)
    rng = np.random.default_rng(0)
    params = cell.init_params(0)
    x, t = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 2))
    loss, grads, _ = rc.compile(cell, backend="native", cache=str(cache), threads=1).loss_and_grad(params, x, t)
    assert loss == results[0]["loss"]
    for k, v in grads.items():
        np.testing.assert_array_equal(v, results[0]["g_" + k])


WRITER = textwrap.dedent("""
    import os, sys, time
    from rnncomp.backends.llvm import jit
    path, src, stop = sys.argv[1:4]
    obj = jit._read_cache(src)
    assert obj is not None
    n = 0
    open(stop + ".started", "w").close()
    while not os.path.exists(stop) and n < 100000:
        if n % 3 == 0:
            try:
                os.unlink(path)       # readers in between see no file: a miss, they compile
            except FileNotFoundError:
                pass
        assert jit._write_cache(path, obj)
        n += 1
    print(n)
""")


def test_reading_while_another_process_writes(tmp_path):
    cache = tmp_path / "cache"
    cell = rc.cells.elman(3, 4, 2)
    rng = np.random.default_rng(1)
    params = cell.init_params(1)
    x, t = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a writable cache: no warning
        ref = rc.compile(cell, backend="native", cache=str(cache), threads=1).loss_and_grad(params, x, t)
    (path,) = glob.glob(str(cache / "obj" / "*.o"))
    src = str(tmp_path / "object.copy")
    with open(path, "rb") as fh, open(src, "wb") as out:
        out.write(fh.read())
    obj = jit._read_cache(src)
    stop = str(tmp_path / "stop")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, src, stop], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for([stop + ".started"], [writer])
        seen = {"complete": 0, "missing": 0}
        t0 = time.time()
        while time.time() - t0 < 0.5 or (seen["complete"] == 0 and time.time() - t0 < 60):  # all or nothing
            got = jit._read_cache(path)
            assert got is None or got == obj, "a partial or foreign object was read"
            seen["complete" if got is not None else "missing"] += 1
        # a whole compile racing the writer: a hit, or a miss that compiles
        again = rc.compile(rc.cells.elman(3, 4, 2), backend="native", cache=str(cache), threads=1)
        got = again.loss_and_grad(params, x, t)
        assert got[0] == ref[0]
        for k in ref[1]:
            np.testing.assert_array_equal(got[1][k], ref[1][k], err_msg=k)
    finally:
        open(stop, "w").close()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err.decode()[-3000:]
    assert int(out) > 0 and seen["complete"] > 0, (out, seen)
    assert jit._read_cache(path) == obj


def test_unwritable_cache_directory_warns_and_compiles_without_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cell = rc.cells.elman(2, 3, 1)
    match = r"cannot write to the compile cache .*file.*compiled without caching"
    with pytest.warns(RuntimeWarning, match=match):  # a parent of the directory is a file
        model = rc.compile(cell, backend="native", cache=str(blocker / "sub"))
    params = cell.init_params()
    rng = np.random.default_rng(0)
    loss = model.loss_and_grad(params, rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 1)))[0]
    assert np.isfinite(loss)
    with pytest.warns(RuntimeWarning, match=match):  # the directory itself is a file
        assert not jit._write_cache(str(blocker / "obj" / "k.o"), b"object")
    assert blocker.read_text() == "not a directory"
    assert os.listdir(tmp_path) == ["file"]  # no temporary file left anywhere


def test_cache_argument_of_the_wrong_type_is_a_clear_error():
    with pytest.raises(CompileError, match=r"cache must be a directory.*'default' or None, got 5"):
        rc.compile(rc.cells.elman(2, 3, 1), backend="native", cache=5)
    with pytest.raises(CompileError, match=r"cache must be a directory.*'default' or None, got ''"):
        rc.compile(rc.cells.elman(2, 3, 1), backend="native", cache="")  # it wrote into the working folder


def test_a_cache_under_the_home_folder_is_there(tmp_path, monkeypatch):
    """``cache="~/x"`` (and RNNCOMP_CACHE_DIR=~/x) is the home's x, not a folder named "~" in
    the working one (found by an adversarial probe)."""
    from rnncomp.backends.llvm.jit import default_cache_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    rc.compile(rc.cells.elman(2, 3, 1), backend="native", cache="~/rc-cache")
    assert (tmp_path / "home" / "rc-cache" / "obj").is_dir() and not (tmp_path / "~").exists()
    monkeypatch.setenv("RNNCOMP_CACHE_DIR", "~/env-cache")
    assert default_cache_dir() == str(tmp_path / "home" / "env-cache")


def test_default_cache_dir_is_the_platform_one(tmp_path, monkeypatch):
    import platformdirs

    from rnncomp.backends.llvm.jit import default_cache_dir
    monkeypatch.delenv("RNNCOMP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == platformdirs.user_cache_dir("rnncomp", appauthor=False)
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == str(tmp_path / "rnncomp")
    monkeypatch.setenv("RNNCOMP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == str(tmp_path / "mine")


def _twice_module():
    from llvmlite import ir
    m = ir.Module(name="twice")
    f = ir.Function(m, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()]), "twice")
    b = ir.IRBuilder(f.append_basic_block())
    b.ret(b.fadd(f.args[0], f.args[0]))
    return m


@pytest.mark.parametrize("entry", ["compile_module", "compile_keyed"])
def test_the_optimisation_pipeline_is_part_of_the_cache_key(tmp_path, entry):
    """Cells compile with ``unroll=False`` (jit.optimize), kernels with the full pipeline: the
    same IR or key under the other pipeline must be a miss, never the other's object."""
    host = jit.HostTarget.detect()
    compile_ = (lambda unroll: jit.compile_module(_twice_module(), unroll=unroll, cache=str(tmp_path))) \
        if entry == "compile_module" else \
        (lambda unroll: jit.compile_keyed("twice", _twice_module, unroll=unroll, cache=str(tmp_path)))
    key = str(_twice_module()) if entry == "compile_module" else "twice"
    compile_(True)
    assert len(glob.glob(str(tmp_path / "obj" / "*.o"))) == 1
    compile_(False)
    objs = glob.glob(str(tmp_path / "obj" / "*.o"))
    assert len(objs) == 2                                   # a miss: a second object
    assert jit._cache_key(key, host, 3, True) != jit._cache_key(key, host, 3, False)
    assert jit._cache_key(key, host, 3, True) == jit._cache_key(key, host, 3)   # default unchanged


def test_a_cache_folder_keeps_its_recently_used_entries_up_to_a_bound(tmp_path):
    """The cache grew without bound (every cell, under every rnncomp source: 180 MB on one
    machine); past jit.MAX_ENTRIES a write removes the least recently used quarter, a read
    counting as a use, and a killed writer's old temporary files."""
    folder = tmp_path / "obj"
    names = [f"k-{i}.o" for i in range(6)]
    for i, name in enumerate(names):
        assert jit._write_cache(str(folder / name), name.encode())
        os.utime(folder / name, (1000 + i, 1000 + i))   # written one after another, long ago
    (folder / ".tmp-old").write_bytes(b"half")
    os.utime(folder / ".tmp-old", (1000, 1000))
    (folder / ".tmp-writing").write_bytes(b"half")            # a writer at work now
    assert jit._read_cache(str(folder / names[0])) == b"k-0.o"   # the oldest, used again
    jit._prune(str(folder), keep=4)                           # 6 > 4: down to 3
    assert sorted(os.listdir(folder)) == [".tmp-writing", "k-0.o", "k-4.o", "k-5.o"]
    jit._prune(str(folder), keep=4)                           # within the bound: nothing goes
    assert len(os.listdir(folder)) == 4
    for i in range(jit.MAX_ENTRIES + 1):                      # a full folder, then one write
        (folder / f"f-{i}.o").write_bytes(b"x")
    assert jit._write_cache(str(folder / "new.o"), b"new")
    left = os.listdir(folder)
    assert len(left) <= jit.MAX_ENTRIES * 3 // 4 + 1 and "new.o" in left
