"""Tests for fastconv.distributed and for scripts/train_mnist.py under ``mpiexec -n 2``.

The single-process behaviour (no MPI import, every call a no-op) is tested everywhere. The
MPI tests launch ``mpiexec -n 2 python tests/_mpi_worker.py ...`` in a subprocess with a
timeout (a hang fails the test instead of blocking the suite) and are skipped where mpi4py
or mpiexec is missing (``pip install -e ".[mpi]"`` installs both).
"""

import doctest
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastconv import distributed, nn, training

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_mpi_worker.py"
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
requires_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec not installed (pip install '.[mpi]')")
TIMEOUT = 120  # seconds for a whole mpiexec run: compiling is the slow part, a hang is caught


def plain_env(**extra):
    """The environment of a process not started by an MPI launcher, with this worktree first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=str(REPO), NUMBA_NUM_THREADS="1", **extra)
    return env


def mpirun(*args, n=2, timeout=TIMEOUT):
    """Run the worker on ``n`` ranks; return (CompletedProcess, seconds)."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(WORKER), *map(str, args)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=plain_env(), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def report(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------- one process, no MPI


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, True),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({"PMIX_RANK": "0"}, True),
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, False),
    ({"PMI_RANK": "0", "PMI_SIZE": "2", "FASTCONV_DISTRIBUTED": "0"}, False),
], ids=["plain", "mpich", "openmpi", "pmix-no-size", "mpiexec-n1", "opted-out"])
def test_launched_by_mpi_reads_the_environment(env, expected):
    assert distributed.launched_by_mpi(env) is expected


@pytest.mark.parametrize("env", [{}, {"PMI_RANK": "0", "PMI_SIZE": "1"}], ids=["plain", "mpiexec-n1"])
def test_importing_and_a_world_of_one_never_import_mpi4py(env):
    code = ("import sys, fastconv, fastconv.training, fastconv.distributed as d\n"
            "w = d.world()\n"
            "print(w.size, w.rank, d.get_world_size(), 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=plain_env(**env), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "1", "False"]


def test_launched_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    with pytest.raises(RuntimeError, match=r"mpi4py is not installed.*fastconv\[mpi\]"):
        distributed.world()
    assert distributed._WORLD is None


def test_docstring_examples_run():
    assert doctest.testmod(distributed, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_world_of_one_changes_nothing():
    """Replicas, GradientAverager and evaluate in one process: the single-process results, grads untouched."""
    w = distributed.World(None)
    model, opt, x, y, order, batch = load_worker().step_problem()
    replicas = distributed.Replicas(model, w)
    assert replicas.averager.nbytes == 0
    model(x[:4])
    model.backward(np.ones((4, 4)), input_grad=False)
    grads = [p.grad.copy() for p in model.parameters()]
    assert replicas.synchronize(4, 8, 1.5, 3) == (1.5, 3)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_array_equal(p.grad, g)
    assert replicas.shard(order) is order and w.any(True) and not w.any(0)
    with w.abort_on_exception(), w.root_only_stdout():
        pass
    assert w.abort(7) == 7
    ours, theirs = distributed.evaluate(model, x, y, w), training.evaluate(model, x, y)
    assert (ours.loss, ours.accuracy) == (theirs.loss, theirs.accuracy)
    np.testing.assert_array_equal(ours.predictions, theirs.predictions)


@pytest.mark.parametrize("n_local, n_global", [(5, 4), (-1, 4), (0, 0)], ids=["more-than-global", "negative",
                                                                           "empty-batch"])
def test_synchronize_rejects_impossible_counts(n_local, n_global):
    model, *_ = load_worker().step_problem()
    with pytest.raises(ValueError, match=rf"Replicas.synchronize: .*n_local={n_local}, n_global={n_global}"):
        distributed.Replicas(model, distributed.World(None)).synchronize(n_local, n_global, 0.0, 0)


def test_gradient_averager_refuses_a_changed_parameter():
    class Fake:  # a two-rank world's interface, without MPI
        comm, _mpi, size, rank = object(), None, 2, 0
    model, *_ = load_worker().step_problem()
    averager = distributed.GradientAverager(model.parameters(), Fake())
    model.float()  # was float64
    with pytest.raises(ValueError, match="GradientAverager.average: a parameter's gradient is now"):
        averager.average()


def load_worker():
    spec = importlib.util.spec_from_file_location("_mpi_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- two ranks


@requires_mpi
def test_two_rank_steps_equal_one_process_on_the_whole_batch(tmp_path):
    """float64: three SGD steps on 2 ranks (batches 7, 7, 1: shards 4+3, 4+3, 1+0) equal one process."""
    proc, _ = mpirun("step", tmp_path)
    assert proc.returncode == 0, report(proc)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]

    model, opt, x, y, order, batch = load_worker().step_problem()
    progress = training.train_epoch(model, nn.CrossEntropyLoss(), opt, x, y, order, batch)
    assert ranks[0]["nbytes"] == 8 * sum(p.size for p in model.parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(ranks[0][name], p.data, rtol=0, atol=1e-12, err_msg=f"rank 0 {name}")
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name], err_msg=f"rank 1 differs: {name}")
    for r in ranks:
        assert (int(r["correct"]), int(r["seen"])) == (progress.correct, progress.seen)
        np.testing.assert_allclose(float(r["loss_sum"]), progress.loss_sum, rtol=1e-12)


@requires_mpi
@pytest.mark.parametrize("mode, code", [("raise", 1), ("exit", 3)])
def test_a_failing_rank_ends_the_job(tmp_path, mode, code):
    proc, seconds = mpirun(mode, tmp_path, timeout=60)
    assert proc.returncode == code, report(proc)
    assert seconds < 30, f"the job took {seconds:.0f} s to end"
    if mode == "raise":
        assert "rank 1 of 2 failed" in proc.stderr and "a failure on rank 1" in proc.stderr, report(proc)


# --------------------------------------------------------------------------- the training script on 2 ranks


def script_args(tmp_path, *extra):
    return ("--batch-size", 32, "--threads", 1, "--no-progress", "--dtype", "float64", "--lr-schedule", "constant",
            "--checkpoint", tmp_path / "ck.npz", *extra)


def run_in_process(tmp_path, *argv):
    """The script in this process (a world of one) on the synthetic data; returns its checkpoint."""
    worker = load_worker()
    script = worker.load(REPO / "scripts" / "train_mnist.py", "_train_mnist_single")
    data = worker.load(REPO / "tests" / "test_train_mnist.py", "_test_train_mnist").synthetic_mnist()
    script.load_mnist = lambda *args, **kwargs: data
    assert script.main([str(a) for a in argv]) == 0
    return training.load_checkpoint(tmp_path / "ck.npz")


def assert_close_checkpoints(a, b):
    assert a["epoch"] == b["epoch"] and a["rng"] == b["rng"]
    for key in a["model"]:
        np.testing.assert_allclose(a["model"][key], b["model"][key], rtol=1e-9, atol=1e-12, err_msg=key)
    for ha, hb in zip(a["history"], b["history"]):
        np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-9)
        assert (ha["train_accuracy"], ha["test_accuracy"]) == (hb["train_accuracy"], hb["test_accuracy"])


@requires_mpi
def test_script_on_two_ranks_trains_like_one_process_and_rank_0_alone_writes(tmp_path):
    """96 images, batch 32, 2 epochs in two sessions, resumed with the other number of processes (2->1, 1->2)."""
    a, b, single_dir = tmp_path / "a", tmp_path / "b", tmp_path / "single"
    for d in (a, b, single_dir):
        d.mkdir()
    single = run_in_process(single_dir, *script_args(single_dir, "--epochs", 2))

    proc, _ = mpirun("script", a, "none", *script_args(a, "--epochs", 1))  # 2 ranks, then 1 process
    assert proc.returncode == 0, report(proc)
    assert "x 2 processes" in proc.stdout and proc.stdout.count("epoch 1/1:") == 1, report(proc)
    assert_close_checkpoints(run_in_process(a, *script_args(a, "--epochs", 2, "--resume")), single)

    run_in_process(b, *script_args(b, "--epochs", 1))  # 1 process, then 2 ranks
    proc, _ = mpirun("script", b, "none", *script_args(b, "--epochs", 2, "--resume", "--metrics-out", b / "m.json",
                                                   "--plot", b / "p.png"))
    assert proc.returncode == 0, report(proc)
    assert proc.stdout.count("epoch 2/2:") == 1 and "resumed from" in proc.stdout, report(proc)  # rank 0 alone
    assert "trained with 1 processes, now 2" in proc.stderr, report(proc)
    # Rank 0's files only: the checkpoint and its kept predecessor (--keep-checkpoints 2), metrics, plot.
    assert sorted(p.name for p in b.iterdir()) == ["ck.1.npz", "ck.npz", "m.json", "p.png"]
    metrics = json.loads((b / "m.json").read_text())
    assert metrics["world_size"] == 2 and metrics["config"]["world_size"] == 2
    assert_close_checkpoints(training.load_checkpoint(b / "ck.npz"), single)


@requires_mpi
def test_killing_one_rank_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    proc, seconds = mpirun("script", tmp_path, "kill:3", *script_args(tmp_path, "--epochs", 3))
    assert proc.returncode != 0, report(proc)
    assert seconds < 60, f"the job took {seconds:.0f} s to end"
    ckpt = training.load_checkpoint(tmp_path / "ck.npz")
    assert ckpt["epoch"] in (1, 2) and ckpt["config"]["world_size"] == 2


@requires_mpi
def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step_and_resumes(tmp_path):
    """Rank 1 alone sees Ctrl-C after step 1: both stop there, rank 0 saves, the job exits 130; resuming matches."""
    proc, _ = mpirun("script", tmp_path, "interrupt:1", *script_args(tmp_path, "--epochs", 2))
    assert proc.returncode == 130, report(proc)
    ckpt = training.load_checkpoint(tmp_path / "ck.npz")
    assert ckpt["epoch"] == 0 and ckpt["progress"].batch == 1 and ckpt["progress"].seen == 32
    resumed = run_in_process(tmp_path, *script_args(tmp_path, "--epochs", 2, "--resume"))
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    assert_close_checkpoints(resumed, run_in_process(single_dir, *script_args(single_dir, "--epochs", 2)))
