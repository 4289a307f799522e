"""Training that survives what clusters and laptops do to it (issue 19).

- SIGINT, SIGTERM and SIGHUP stop :func:`fastconv.training.train_epoch` after the current
  step (:class:`~fastconv.training.StopOnSignals`); ``scripts/train_mnist.py`` then saves a
  checkpoint with the position inside the epoch and exits with ``128 + signum``; ``--resume``
  ends bitwise where an uninterrupted run ends. Tested in a subprocess, as a user runs it:
  stopped at an exact step by the script's test-only self-signal variable, and by a real
  ``kill`` from outside at whatever step it lands;
- ``--checkpoint-every`` keeps the previous checkpoint (:class:`~fastconv.checkpoint.CheckpointFiles`);
  a corrupt newest file is passed over, and ``--resume`` says so;
- a NaN or infinite loss or gradient raises :class:`~fastconv.training.NonFiniteError`
  naming the batch, before the step (or skips the batch), and no checkpoint is ever
  written with non-finite weights.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_mnist import (  # noqa: F401 (fixtures)
    assert_same_run, fake_data, predict_script, run, synthetic_mnist, train_script)

from fastconv import nn, optim, serialization, training
from fastconv.checkpoint import CheckpointFiles, find_nonfinite
from fastconv.datasets import preprocess_mnist
from fastconv.models import reference_cnn

REPO = Path(__file__).resolve().parents[1]
TINY = ("--batch-size", 32, "--threads", 1, "--no-progress")

# --------------------------------------------------------------------------- StopOnSignals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_first_signal_requests_a_stop_second_aborts_and_handlers_come_back(sig):
    def previous(signum, frame):
        raise AssertionError("the previous handler must not run inside the block")

    old = signal.signal(sig, previous)
    try:
        with training.StopOnSignals(stream=None) as stop:
            assert not stop() and stop.exit_code == 0
            signal.raise_signal(sig)
            assert stop() and stop.signum == sig and stop.exit_code == 128 + sig
            with pytest.raises(training.SignalAbort) as info:
                signal.raise_signal(sig)
            assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 128 + sig
        assert signal.getsignal(sig) is previous
    finally:
        signal.signal(sig, old)


def test_stop_on_signals_outside_the_main_thread_installs_nothing():
    import threading

    seen = []

    def body():
        with training.StopOnSignals(stream=None) as stop:
            seen.append((stop(), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [(False, before)]


# --------------------------------------------------------------------------- non-finite steps


class PoisonGradient(nn.Module):
    """Identity forward; from call ``at`` on, its backward makes the gradient infinite (the loss stays finite)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        return x

    def backward(self, dout, input_grad=True):
        self.calls += 1
        return dout * np.float32(np.inf) if self.calls > self.at else dout


def small_run(poison_at=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    layers = [nn.Linear(6, 3, rng=1)] + ([PoisonGradient(poison_at)] if poison_at is not None else [])
    model = nn.Sequential(*layers)
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y, rng.permutation(40)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the bias gradient
def test_nonfinite_gradient_raises_before_the_step_naming_the_batch():
    model, opt, x, y, order = small_run(poison_at=2)
    p = training.EpochProgress()
    with pytest.raises(training.NonFiniteError, match=r"non-finite gradient of 0\.weight at batch 2 of 5") as info:
        training.train_epoch(model, nn.CrossEntropyLoss(), opt, x, y, order, 8, progress=p)
    assert info.value.batch == 2 and info.value.what == "gradient of 0.weight"
    np.testing.assert_array_equal(info.value.indices, order[16:24])
    assert str(order[16]) in str(info.value)
    assert p.batch == 2 and p.seen == 16  # progress stands at the failed batch: resumable
    ref_model, ref_opt, *_ = small_run()  # the same run, stopped cleanly after batch 1
    calls = []
    ref = training.train_epoch(ref_model, nn.CrossEntropyLoss(), ref_opt, x, y, order, 8,
                               should_stop=lambda: calls.append(1) or len(calls) == 2)
    assert ref.batch == 2
    for a, b in zip(model.parameters(), ref_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)  # the bad step changed nothing
    assert not any(p.grad.any() for p in model.parameters())  # and left no inf gradient behind


def test_nonfinite_loss_raises_and_skip_mode_counts_and_leaves_the_parameters():
    model, opt, x, y, order = small_run()
    x_bad = x.copy()
    x_bad[order[9]] = np.nan  # batch 1 (samples order[8:16]) gets a NaN loss
    with pytest.raises(training.NonFiniteError, match="non-finite loss at batch 1 of 5") as info:
        training.train_epoch(model, nn.CrossEntropyLoss(), opt, x_bad, y, order, 8)
    assert info.value.what == "loss" and "hold the state after batch 0" in str(info.value)
    model, opt, *_ = small_run()
    x_first = x.copy()
    x_first[order[0]] = np.inf
    with pytest.raises(training.NonFiniteError, match="at batch 0 of 5 .* the state from before this epoch"):
        training.train_epoch(model, nn.CrossEntropyLoss(), opt, x_first, y, order, 8)
    model, opt, *_ = small_run()
    progress = training.train_epoch(model, nn.CrossEntropyLoss(), opt, x_bad, y, order, 8, nonfinite="skip")
    assert progress.batch == 5 and progress.skipped == 1 and progress.seen == 32
    assert np.isfinite(progress.loss) and all(np.isfinite(p.data).all() for p in model.parameters())
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'skip'"):
        training.train_epoch(model, nn.CrossEntropyLoss(), opt, x, y, order, 8, nonfinite="ignore")


def test_save_checkpoint_refuses_nonfinite_weights_and_leaves_the_file(tmp_path):
    model, opt, *_ = small_run()
    rng = np.random.default_rng(0)
    files = CheckpointFiles(tmp_path / "ck.npz")
    training.save_checkpoint(files, model, opt, rng, {"dtype": "float32"}, [], 1)
    before = files.path.read_bytes()
    model[0].weight.data[1, 2] = np.inf
    with pytest.raises(training.NonFiniteError, match=r"refusing to save .*model\['0\.weight'\]"):
        training.save_checkpoint(files, model, opt, rng, {"dtype": "float32"}, [], 2)
    assert files.path.read_bytes() == before and files.existing() == [files.path]  # nothing moved or written
    assert find_nonfinite(training.load_checkpoint(files.path)["model"]) is None


# --------------------------------------------------------------------------- checkpoint files


def test_checkpoint_files_keep_the_last_k_and_resume_from_the_newest_readable(tmp_path):
    files = CheckpointFiles(tmp_path / "ck.npz", keep=3)
    for step in range(1, 6):
        files.save({"step": step})
    assert [p.name for p in files.existing()] == ["ck.npz", "ck.1.npz", "ck.2.npz"]
    assert [serialization.load(p)["step"] for p in files.existing()] == [5, 4, 3]
    data = files.path.read_bytes()
    files.path.write_bytes(data[: len(data) // 2])  # truncated newest
    assert files.load()["step"] == 4 and files.loaded.name == "ck.1.npz"
    assert files.skipped[0][0] == files.path and "not a valid fastconv checkpoint" in files.skipped[0][1]
    files.save({"step": 6})  # the corrupt file is set aside, not rotated over the good one
    assert [serialization.load(p)["step"] for p in files.existing()] == [6, 4, 3]
    assert (tmp_path / "ck.npz.corrupt").read_bytes() == data[: len(data) // 2]
    files.path.unlink()  # a crash between two saves: the newest name is missing
    assert files.load()["step"] == 4 and files.skipped == [(files.path, "does not exist")]


def test_checkpoint_files_errors(tmp_path):
    files = CheckpointFiles(tmp_path / "ck.npz")
    with pytest.raises(FileNotFoundError, match="ck.npz"):
        files.load()
    files.path.write_bytes(b"junk")
    with pytest.raises(serialization.CheckpointError, match="no readable checkpoint"):
        files.load()
    with pytest.raises(ValueError, match="keep must be a positive int"):
        CheckpointFiles("x.npz", keep=0)


def test_restore_checkpoint_restores_the_dropout_generators(tmp_path):
    nn.manual_seed(7)
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5, rng=3), nn.Linear(4, 2, rng=0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    training.save_checkpoint(tmp_path / "c.npz", model, opt, np.random.default_rng(0), {"dtype": "float32"}, [], 0)
    x = np.ones((3, 4), np.float32)
    expected = model(x)
    model(x)  # both generators move on
    training.restore_checkpoint(training.load_checkpoint(tmp_path / "c.npz"), model, opt, np.random.default_rng(1))
    np.testing.assert_array_equal(model(x), expected)


# --------------------------------------------------------------------------- train_mnist.py in-process


def test_checkpoint_every_keeps_the_predecessor_and_resume_passes_over_a_corrupt_newest(
        train_script, fake_data, tmp_path, monkeypatch, capsys):
    flags = ("--epochs", 2, "--batch-size", 16, "--threads", 1, "--no-progress")  # 6 steps per epoch
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert run(train_script, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    monkeypatch.setenv(train_script.SELF_SIGNAL_ENV, "9:SIGHUP")
    b = tmp_path / "b.npz"
    assert run(train_script, *flags, "--checkpoint", b, "--checkpoint-every", 4) == 128 + signal.SIGHUP
    monkeypatch.delenv(train_script.SELF_SIGNAL_ENV)
    newest, older = training.load_checkpoint(b), training.load_checkpoint(tmp_path / "b.1.npz")
    assert (newest["epoch"], newest["progress"].batch) == (1, 3)  # stopped after step 9
    assert (older["epoch"], older["progress"].batch) == (1, 2)  # the every-4-steps save of step 8
    b.write_bytes(b.read_bytes()[:1000])
    capsys.readouterr()
    assert run(train_script, *flags, "--checkpoint", b, "--resume") == 0
    out, err = capsys.readouterr()
    assert f"not resuming from {b}: " in err and "corrupt or truncated" in err
    assert f"resumed from {tmp_path / 'b.1.npz'} (the newest readable of {b}'s files) at epoch 2, batch 2" in out
    assert_same_run(tmp_path / "a.npz", b)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the handlers from before training are back
        assert signal.getsignal(sig) is before[sig], signal.Signals(sig).name


def test_checkpoint_every_needs_a_checkpoint_path(train_script, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.main(["--checkpoint-every", "5"])
    assert info.value.code == 2 and "--checkpoint-every needs --checkpoint" in capsys.readouterr().err


def test_divergence_stops_with_an_error_and_never_writes_nonfinite_weights(train_script, fake_data, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    flags = ("--epochs", 2, "--batch-size", 16, "--threads", 1, "--no-progress", "--checkpoint", ck)
    assert run(train_script, *flags, "--lr", 1e6, "--checkpoint-every", 1) == train_script.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "error: training diverged in epoch 1, step" in err and "non-finite loss at batch" in err
    assert "samples [" in err and "left as they were" in err
    step = int(err.split("step ")[1].split()[0])
    files = CheckpointFiles(ck)
    for path in files.existing():
        ckpt = training.load_checkpoint(path)
        assert find_nonfinite(ckpt["model"]) is None and find_nonfinite(ckpt["optimizer"]) is None
    assert training.load_checkpoint(ck)["progress"].batch == step - 1  # the last good step


def test_skip_nonfinite_finishes_and_counts_the_skipped_batches(train_script, fake_data, tmp_path, capsys):
    metrics = tmp_path / "m.json"
    assert run(train_script, "--epochs", 1, "--batch-size", 16, "--threads", 1, "--no-progress", "--lr", 1e6,
               "--skip-nonfinite", "--metrics-out", metrics) == 0
    import json

    epoch = json.loads(metrics.read_text())["epochs"][0]
    assert 1 <= epoch["skipped_batches"] <= 6
    assert f"{epoch['skipped_batches']} non-finite batch(es) skipped" in capsys.readouterr().out


# --------------------------------------------------------------------------- train_mnist.py in a subprocess

DRIVER = textwrap.dedent(
    """
    # scripts/train_mnist.py on a synthetic data set (argv[1] images), run as a user runs it.
    import importlib.util, sys
    sys.path.insert(0, {tests!r})
    from test_train_mnist import synthetic_mnist
    spec = importlib.util.spec_from_file_location("train_mnist", {script!r})
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = synthetic_mnist(n_train=int(sys.argv[1]))
    script.load_mnist = lambda *a, **k: data
    sys.exit(script.main(sys.argv[2:]))
    """
)
N_TRAIN = 600  # 2 epochs of 75 steps of 8 images: long enough for a kill from outside to land mid-run
SUB_FLAGS = ("--epochs", 2, "--batch-size", 8, "--threads", 1, "--no-progress", "--checkpoint-every", 5)


def driver_cmd(tmp, *argv):
    path = Path(tmp) / "driver.py"
    path.write_text(DRIVER.format(tests=str(REPO / "tests"), script=str(REPO / "scripts" / "train_mnist.py")))
    return [sys.executable, str(path), str(N_TRAIN), *map(str, SUB_FLAGS), *map(str, argv)]


def sub_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_TRAIN_MNIST_TEST_SIGNAL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def run_sub(tmp, *argv, env=None, expect=0):
    proc = subprocess.run(driver_cmd(tmp, *argv), capture_output=True, text=True, timeout=600, env=env or sub_env())
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_sub(tmp, "--checkpoint", tmp / "full.npz")
    return tmp / "full.npz"


def test_sigterm_at_a_step_mid_epoch_saves_and_resume_is_bitwise_uninterrupted(uninterrupted, tmp_path):
    ck = tmp_path / "ck.npz"
    proc = run_sub(tmp_path, "--checkpoint", ck, env=sub_env(FASTCONV_TRAIN_MNIST_TEST_SIGNAL="83:SIGTERM"),
                   expect=128 + signal.SIGTERM)
    assert "SIGTERM received: stopping after this step" in proc.stderr
    assert "Stopped in epoch 2 after batch 8/75 (SIGTERM)" in proc.stderr
    command = proc.stderr.split("Continue with:\n")[1].split("\n")[0].strip()
    assert command.endswith(f"--checkpoint {ck} --resume")
    ckpt = training.load_checkpoint(ck)
    assert (ckpt["epoch"], ckpt["progress"].batch) == (1, 8)
    assert len(ckpt["order"]) == N_TRAIN
    proc = run_sub(tmp_path, "--checkpoint", ck, "--resume")
    assert f"resumed from {ck} at epoch 2, batch 8" in proc.stdout
    assert_same_run(uninterrupted, ck)


def test_kill_from_outside_saves_within_seconds_and_resume_is_bitwise_uninterrupted(uninterrupted, tmp_path):
    ck = tmp_path / "ck.npz"
    proc = subprocess.Popen(driver_cmd(tmp_path, "--checkpoint", ck), env=sub_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ck.exists():  # the first every-5-steps checkpoint: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert time.monotonic() - sent < 20, "the run did not stop within seconds"
    ckpt = training.load_checkpoint(ck)
    steps_done = ckpt["epoch"] * 75 + (ckpt["progress"].batch if ckpt["progress"] else 0)
    assert 5 <= steps_done < 150, steps_done
    run_sub(tmp_path, "--checkpoint", ck, "--resume")
    assert_same_run(uninterrupted, ck)


def test_train_epoch_resumes_from_a_saved_mid_epoch_checkpoint(tmp_path):
    """The library alone: save in after_step, load, restore, continue -> the uninterrupted parameters."""
    (x, y), _ = synthetic_mnist(n_train=48)
    x = preprocess_mnist(x)

    def fresh():
        model = reference_cnn(rng=np.random.default_rng(0), image_size=28, channels=(2,), hidden=8)
        return model, optim.Adam(model.parameters())

    order = np.random.default_rng(1).permutation(48)
    model, opt = fresh()
    training.train_epoch(model, nn.CrossEntropyLoss(), opt, x, y, order, 8)
    files = CheckpointFiles(tmp_path / "ck.npz")
    model_b, opt_b = fresh()
    rng = np.random.default_rng(2)

    def after_step(p):
        if p.batch == 4:
            training.save_checkpoint(files, model_b, opt_b, rng, {"dtype": "float32"}, [], 0, order, p)
    training.train_epoch(model_b, nn.CrossEntropyLoss(), opt_b, x, y, order, 8, after_step=after_step)
    model_c, opt_c = fresh()
    ckpt = training.load_checkpoint(files)
    training.restore_checkpoint(ckpt, model_c, opt_c, np.random.default_rng(9))
    training.train_epoch(model_c, nn.CrossEntropyLoss(), opt_c, x, y, ckpt["order"], 8, progress=ckpt["progress"])
    for a, c in zip(model.parameters(), model_c.parameters()):
        np.testing.assert_array_equal(a.data, c.data)


@pytest.mark.parametrize("module", ["fastconv._signals", "fastconv.checkpoint"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
