"""Data-parallel training: R MPI ranks (mpiexec, from the mpi extra) and k micro-batches give
the parameters of one process on the same global batches; a failing rank stops them all.

The MPI tests run tests/mpi_worker.py under ``mpiexec -n R``; without mpiexec they fail
(the test extra installs it), they never skip."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_cases
import rnncomp as rc
from rnncomp.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rc.__file__)))  # the rnncomp under test
TOL = 1e-12  # float64: one sum in another order


def mpiexec(n, *args, cwd, timeout=240):
    """Run ``python ARGS`` on n ranks; (completed process, seconds)."""
    exe = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                        os.environ.get("PATH", "")]))
    if exe is None:
        pytest.fail("mpiexec not found: install the test extra, which brings mpi4py and MPICH "
                    "(pip install '.[test]')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    t0 = time.perf_counter()
    p = subprocess.run([exe, "-n", str(n), sys.executable, *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0


def ran(p):
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"


def same_as(ref, path):
    """The parameters and losses a rank wrote equal the one-process run's."""
    got = np.load(path)
    np.testing.assert_allclose(got["flat"], ref.flat, rtol=0, atol=TOL, err_msg=path)
    np.testing.assert_allclose(got["history"], ref.history, rtol=0, atol=TOL, err_msg=path)
    return got["flat"]


def message(out, name, rank):
    with open(os.path.join(out, f"{name}.rank{rank}.txt")) as fh:
        return fh.read()


def resumed_in_one_process(case, tmp_path):
    """What the worker's resumed_on_all gives, in one process: an epoch, a checkpoint, an epoch."""
    tr = mpi_cases.trainer(case)
    mpi_cases.fit(tr, case, epochs=1)
    tr.save(tmp_path / "one.ckpt")
    tr = rc.Trainer.load(tmp_path / "one.ckpt", backend="numpy", dtype="float64")
    mpi_cases.fit(tr, case, epochs=1)
    return tr


@pytest.mark.parametrize("case", list(mpi_cases.ALL))
@pytest.mark.parametrize("k", [2, 3])
def test_accumulate_gives_the_one_batch_parameters(case, k):
    ref = mpi_cases.run(case)
    acc = mpi_cases.run(case, accumulate=k)
    np.testing.assert_allclose(acc.flat, ref.flat, rtol=0, atol=TOL)
    np.testing.assert_allclose(acc.history, ref.history, rtol=0, atol=TOL)
    assert acc.step_count == ref.step_count > 0


def test_accumulate_train_step_with_a_per_step_mask():
    """train_step called directly, with a (T,) mask and initial states: the same update."""
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 5, 3)), rng.normal(size=(6, 5, 2))
    h0 = {"h": rng.normal(size=(5, 6)), "c": rng.normal(size=(5, 6))}
    mask = np.array([0, 1, 1, 0.5, 1, 0])
    one, two = (mpi_cases.trainer("masked", accumulate=k) for k in (1, 2))
    (l1, f1), (l2, f2) = (tr.train_step({"x": x}, {"target": y}, h0=h0, mask=mask) for tr in (one, two))
    np.testing.assert_allclose(two.flat, one.flat, rtol=0, atol=TOL)
    assert abs(l2 - l1) < TOL
    for s in f1:
        np.testing.assert_allclose(f2[s], f1[s], rtol=0, atol=TOL)


def test_accumulate_stops_on_a_non_finite_gradient_as_one_batch_does():
    messages = []
    for k in (1, 2):
        tr = rc.Trainer(rc.cells.elman(2, 4, 1), rc.SGD(0.1), backend="numpy", dtype="float64", accumulate=k)
        tr.params["V"][...] = 1e300
        before = tr.flat.copy()
        with np.errstate(all="ignore"), pytest.raises(rc.TrainingError) as err:
            tr.train_step(np.ones((3, 4, 2)), np.ones((3, 4, 1)))  # lone arrays, not dicts
        np.testing.assert_array_equal(tr.flat, before)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "non-finite gradient of" in messages[0]


def test_accumulate_bad_values_are_named():
    tr = mpi_cases.trainer("masked", accumulate=4)
    with pytest.raises(rc.errors.CallError, match=r"a batch of 3 sequences over 1 rank\(s\), each in accumulate=4 "
                                                  "micro-batches, needs at least 4"):
        mpi_cases.fit(tr, "masked", batch_size=3)
    with pytest.raises(ValueError, match="accumulate must be a positive integer, got 0"):
        mpi_cases.trainer("masked", accumulate=0)


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_the_one_process_parameters(tmp_path, ranks):
    refs = {case: mpi_cases.run(case) for case in mpi_cases.CASES}  # also fills the compile cache
    resumed = resumed_in_one_process("masked", tmp_path)

    p, _ = mpiexec(ranks, os.path.join(HERE, "mpi_worker.py"), "ranks", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, ran(p)
    runs = [(case, ref) for case, ref in refs.items()] + [("resumed", resumed)]
    if ranks == 2:
        runs.append(("stateful-accumulate", refs["stateful"]))
    for name, ref in runs:
        flats = [same_as(ref, tmp_path / f"{name}.rank{r}.npz") for r in range(ranks)]
        for f in flats[1:]:
            np.testing.assert_array_equal(f, flats[0])  # bit for bit the same on every rank

    for r in range(ranks):
        assert f"a global batch of {ranks - 1} sequences cannot be shared by {ranks} ranks" \
            in message(tmp_path, "small-batch", r)
        assert f"fit: rank(s) [{ranks - 1}] were given other data or options than rank 0" \
            in message(tmp_path, "other-data", r)
        assert f"step 0: the parameters of rank(s) [{', '.join(map(str, range(1, ranks)))}] differ from rank 0's" \
            in message(tmp_path, "other-start", r)
        assert "every rank must start from the same parameters: give each Trainer the same seed=" \
            in message(tmp_path, "other-start", r)
        steps = -(-23 // 8)  # the masked case's steps per epoch: the first after the nudge is caught
        assert f"step {steps + 1}: the parameters of rank(s) [{ranks - 1}] differ" in message(tmp_path, "diverged", r)
        assert "the ranks have diverged" in message(tmp_path, "diverged", r)
        save = message(tmp_path, "save-fails", r)
        assert save.startswith("CheckpointError" if r == 0 else "TrainingError: rank 0 failed: CheckpointError")
        # every rank holds the global data: each names the NaN where the caller put it, before any step
        assert message(tmp_path, "nan-shard", r) == "CallError: fit: inputs['x'] contains nan at index (0, 7, 0)"


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_with_dropout_give_the_one_process_parameters(tmp_path, ranks):
    """rc.Stack(..., dropout=p): every rank and micro-batch draws the masks of the whole global
    batch from the same generator state and takes its rows, so the masks, and the generator
    after the step, are one process's (before: each rank drew masks for its own rows' shape,
    every rank the same, and the parameters ended 0.2 away from one process's).  Uneven
    shards, accumulate=2, bidirectional layers (a generator per direction), stateful
    truncated BPTT with shards and micro-batches that only carry their states, a resume."""
    refs = {case: mpi_cases.run(case) for case in mpi_cases.DROPOUT}
    resumed = resumed_in_one_process("dropout", tmp_path)

    p, _ = mpiexec(ranks, os.path.join(HERE, "mpi_worker.py"), "dropout", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, ran(p)
    runs = [(f"{case}-acc{k}", ref) for case, ref in refs.items() for k in (1, 2)] + [("dropout-resumed", resumed)]
    for name, ref in runs:
        flats = [same_as(ref, tmp_path / f"{name}.rank{r}.npz") for r in range(ranks)]
        for f in flats[1:]:
            np.testing.assert_array_equal(f, flats[0])
    start = mpi_cases.trainer("dropout").model.rng.random(4)  # a failed step leaves it where the step started
    for r in range(ranks):
        said = message(tmp_path, "dropout-nan", r)
        assert ("contains nan" if r == ranks - 1 else f"1 of {ranks} ranks failed") in said
        np.testing.assert_array_equal(np.load(tmp_path / f"dropout-rng.rank{r}.npy"), start)


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_with_dni_give_the_one_process_parameters_and_module(tmp_path, ranks):
    """gradient=rc.DNI(): each rank runs every window on its rows; a window's loss parts are
    scaled by the rank's share of the global count (S_rank / S) and its synthetic-gradient parts
    are not, and one Allreduce sums the cell's gradient, ĝ's gradient and the loss, so the
    parameters, the module (A, c) and the losses are one process's on the same global batches.
    Truncated(3) with padded sequences, Truncated(2, 4) stateful with masked holes, a
    teacher-forced cell, windows where one rank's rows have no loss and the others' have;
    fit_online on a stream in pieces; a window that fails on one rank stops every rank at that
    window, without an update (the others do not wait in the Allreduce).  Largest difference
    seen: 6e-15 relative (the module).  (Before: refused, 'the synthetic-gradient module is per
    process and its updates are not reduced across ranks'.)"""
    refs = {case: mpi_cases.run(case) for case in mpi_cases.DNI}
    stream, losses = mpi_cases.dni_stream()
    p, _ = mpiexec(ranks, os.path.join(HERE, "mpi_worker.py"), "dni", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, ran(p)
    for name, ref in [*refs.items(), ("dni-stream", stream)]:
        assert ref.step_count > 0 and np.abs(ref.gradient.flat).max() > 0
        flats = [same_as(ref, tmp_path / f"{name}.rank{r}.npz") for r in range(ranks)]
        got = [np.load(tmp_path / f"{name}.rank{r}.npz") for r in range(ranks)]
        for r, g in enumerate(got):
            np.testing.assert_allclose(g["module"], ref.gradient.flat, rtol=TOL, atol=TOL, err_msg=f"{name}, {r}")
            assert g["updates"] == ref.gradient.updates > 0
            np.testing.assert_array_equal(flats[r], flats[0])  # bit for bit the same on every rank
            np.testing.assert_array_equal(g["module"], got[0]["module"])
    for r in range(ranks):
        np.testing.assert_allclose(np.load(tmp_path / f"dni-stream.rank{r}.npz")["losses"], losses, rtol=TOL, atol=0)
        said = message(tmp_path, "dni-fails", r)  # every rank stops at the same window, none updates there
        why = (f"rank {r} of {ranks} failed: RuntimeError: the last rank's third synthetic gradient" if r == ranks - 1
               else f"1 of {ranks} ranks failed")
        assert said.startswith(f"TrainingError: step 3: {why}"), said
        assert np.load(tmp_path / f"dni-fails.rank{r}.npy").tolist() == [2, 1]


def _cuda_present():
    from rnncomp.backends.ptx.runtime import cuda_available
    return cuda_available()


@pytest.mark.skipif(not _cuda_present(), reason="no CUDA GPU/driver or cuda-python in this process")
def test_ranks_on_the_gpu_give_the_one_process_parameters(tmp_path):
    ref = mpi_cases.run("masked", backend="ptx")
    p, _ = mpiexec(2, os.path.join(HERE, "mpi_worker.py"), "gpu", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, ran(p)
    for r in range(2):
        same_as(ref, tmp_path / f"masked-ptx.rank{r}.npz")


def test_a_rank_killed_while_saving_leaves_the_good_checkpoint(tmp_path):
    p, seconds = mpiexec(2, os.path.join(HERE, "mpi_worker.py"), "die", str(tmp_path), cwd=tmp_path)
    assert p.returncode != 0 and seconds < 120, ran(p)
    from rnncomp.train import checkpoint
    meta, arrays = checkpoint.read(str(tmp_path / "good.ckpt"))  # the portable checkpoint (npz + JSON)
    good = np.load(tmp_path / "good.rank0.npz")
    saved = np.concatenate([arrays[f"param/{n}"].ravel() for n in meta["params"]])
    np.testing.assert_array_equal(saved, good["flat"])
    assert meta["history"] == list(good["history"])


def test_an_uncaught_exception_on_one_rank_stops_every_rank(tmp_path):
    p, seconds = mpiexec(2, os.path.join(HERE, "mpi_worker.py"), "raise", str(tmp_path), cwd=tmp_path)
    # without the abort, rank 0 would wait in its first Allreduce until the timeout
    assert p.returncode != 0 and seconds < 120, ran(p)
    assert "rank 1 of 2 stopped on an uncaught RuntimeError; aborting every rank" in p.stderr, ran(p)
    assert "RuntimeError: rank 1 stops outside any step" in p.stderr, ran(p)


def test_cli_under_mpiexec_trains_like_one_process(tmp_path, capsys):
    args = ["train", "elman", "--task", "sine", "--N", "40", "--T", "12", "--hidden", "8", "--batch", "9",
            "--epochs", "2", "--backend", "numpy"]
    assert main(args + ["--save", str(tmp_path / "one.ckpt")]) == 0
    capsys.readouterr()
    p, _ = mpiexec(2, "-m", "rnncomp.cli", *args, "--save", "two.ckpt", "--plot", "two.png", cwd=tmp_path)
    assert p.returncode == 0, ran(p)
    assert p.stdout.count("training 'elman' on sine") == 1, ran(p)  # rank 0 speaks, alone
    assert "distributed: 2 MPI ranks" in p.stdout, ran(p)
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    one, two = (rc.Trainer.load(tmp_path / f, backend="numpy") for f in ("one.ckpt", "two.ckpt"))
    assert one.step_count == two.step_count > 0
    np.testing.assert_allclose(two.flat, one.flat, rtol=0, atol=1e-6)  # float32, sums in another order


def test_states_online_algorithms_micro_batches_and_options_under_ranks(tmp_path):
    """Found by a probe: each rank's final states had the other ranks' rows at 0 (so stateful
    fit with a smaller last batch, and train_step's states, were wrong); RTRL's fit_online ran
    undistributed on every rank; a batch too small for ranks × accumulate failed on one rank
    only (the others waited); a checkpoint saved each rank's threads= as the user's."""
    p, _ = mpiexec(2, os.path.join(HERE, "mpi_worker.py"), "states", str(tmp_path), cwd=tmp_path, timeout=120)
    assert p.returncode == 0, ran(p)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5, 2)), rng.normal(size=(6, 5, 1))

    def make(**kw):
        return rc.Trainer(rc.cells.gru(2, 4, 1), rc.Adam(1e-2), backend="native", dtype="float64", **kw)
    _, final = make().train_step(x, y)
    st = make()
    st.fit(x, y, epochs=1, batch_size=3, stateful=True, shuffle=False, verbose=0)
    for r in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"states.rank{r}.npz")["h"], final["h"], rtol=0, atol=TOL)
        same_as(st, tmp_path / f"stateful.rank{r}.npz")
        assert "fit_online with rc.RTRL() runs on one process" in message(tmp_path, "rtrl", r)
        assert ("a batch of 5 sequences over 2 rank(s), each in accumulate=3 micro-batches, needs at least 6"
                in message(tmp_path, "accumulate", r))
    assert "comm must be an mpi4py communicator" in message(tmp_path, "comm", 0)
    assert "a distributed Trainer does not pickle" in message(tmp_path, "pickle", 0)
    assert "threads" not in rc.Trainer.load(tmp_path / "opts.ckpt").compile_options


@pytest.mark.parametrize("k", [1, 2])
def test_a_failed_step_leaves_the_dropout_generator_where_it_started(k):
    """A step that fails after the lower layers drew their masks (a nan in the top layer's
    targets) put the generator back with accumulate=2 but left it advanced with accumulate=1:
    from there on one process and its micro-batches dropped different units."""
    comp = rc.Stack([rc.cells.gru(3, 4, 3), rc.cells.elman(3, 4, 2)], dropout=0.4)
    tr = rc.Trainer(comp, rc.Adam(1e-2), backend="numpy", dtype="float64", seed=4, accumulate=k)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 8, 3)), rng.normal(size=(5, 8, 2))
    y[2, 7] = np.nan
    start = tr.model.rng.bit_generator.state
    with pytest.raises(rc.errors.RnncompError, match=r"targets\['target'\] contains nan"):
        tr.train_step(x, y)
    assert tr.model.rng.bit_generator.state == start
