"""Tests for fastconv.training (the generic training loop) and the scripts train_mnist.py / predict.py.

Most runs are in-process on a small synthetic data set (``load_mnist`` is replaced in the
script module), so they are fast and need no files. The smoke run on real MNIST runs the
script as a user does, in a subprocess; it needs ``FASTCONV_DATA_DIR`` (skipped otherwise).
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import functional, nn, optim, serialization, training
from fastconv.datasets import MNIST_FILES, preprocess_mnist
from fastconv.models import reference_cnn, reference_cnn_from_checkpoint, to_torch

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = os.environ.get("FASTCONV_DATA_DIR")
HAVE_REAL = bool(REAL_DIR) and all(
    Path(REAL_DIR, n).is_file() or Path(REAL_DIR, n + ".gz").is_file() for n in MNIST_FILES
)
requires_real = pytest.mark.skipif(not HAVE_REAL, reason="real MNIST files not found via $FASTCONV_DATA_DIR")
TIMING_KEYS = {"epoch_seconds", "images_per_second", "eval_seconds"}


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_fastconv_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    return load_script("train_mnist")


@pytest.fixture(scope="module")
def predict_script():
    return load_script("predict")


def synthetic_mnist(n_train=96, n_test=40, seed=3):
    """Digit-like data: class k lights up the k-th row band, plus noise. Learnable in a few steps."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 * k + 3: 2 * k + 6, 4:24] = 255
        return x, y

    return make(n_train), make(n_test)


@pytest.fixture
def fake_data(train_script, predict_script, monkeypatch):
    data = synthetic_mnist()
    for module in (train_script, predict_script):
        monkeypatch.setattr(module, "load_mnist", lambda *a, **k: data)
    return data


def run(script, *argv):
    return script.main([str(a) for a in argv])


TINY = ("--batch-size", 32, "--threads", 1, "--no-progress")


def assert_same_run(path_a, path_b):
    """Two checkpoints hold bitwise the same model, optimizer, RNG and metrics (timings aside)."""
    a, b = training.load_checkpoint(path_a), training.load_checkpoint(path_b)
    assert a["epoch"] == b["epoch"] and a["progress"] is None and b["progress"] is None
    assert list(a["model"]) == list(b["model"])
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key], b["model"][key], err_msg=key)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for idx in sa:
        for name, value in sa[idx].items():
            np.testing.assert_array_equal(value, sb[idx][name], err_msg=f"optimizer state {idx}/{name}")
    assert a["rng"] == b["rng"]
    strip = lambda h: [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


EARLIER_KIND = "fastconv.training/mnist"  # the checkpoint kind of the versions before issue 13


def save_as_kind(path, kind):
    """Rewrite the checkpoint at ``path`` with another ``"kind"`` entry (as an earlier version wrote it).

    The earlier kind's config also lacks the settings added with the ResNet (issue 17).
    """
    ckpt = serialization.load(path)
    if kind == EARLIER_KIND:
        ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in NEWER_CONFIG_KEYS}
    serialization.save({**ckpt, "kind": kind}, path)


NEWER_CONFIG_KEYS = ("architecture", "dataset", "augment", "nesterov", "weight_decay", "synthetic")


# --------------------------------------------------------------------------- library pieces


def test_train_epoch_stops_between_steps_and_resumes_exactly():
    """Stopping after batch 2 and continuing gives the same parameters as one go."""
    (x, y), _ = synthetic_mnist(n_train=80)
    x = preprocess_mnist(x)
    order = np.random.default_rng(5).permutation(len(x))

    def fresh():
        model = reference_cnn(rng=np.random.default_rng(0))
        return model, optim.Adam(model.parameters())

    model_a, opt_a = fresh()
    full = training.train_epoch(model_a, nn.CrossEntropyLoss(), opt_a, x, y, order, 16, curve_every=2)
    model_b, opt_b = fresh()
    calls = []
    part = training.train_epoch(model_b, nn.CrossEntropyLoss(), opt_b, x, y, order, 16, curve_every=2,
                                should_stop=lambda: calls.append(1) or len(calls) == 2)
    assert part.batch == 2 and part.seen == 32
    training.train_epoch(model_b, nn.CrossEntropyLoss(), opt_b, x, y, order, 16, progress=part, curve_every=2)
    assert part.batch == full.batch == 5
    assert (part.loss_sum, part.correct, part.seen, part.loss_curve) == (
        full.loss_sum, full.correct, full.seen, full.loss_curve)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_evaluate_matches_manual_forward():
    (x, y), _ = synthetic_mnist(n_train=30)
    x = preprocess_mnist(x)
    model = reference_cnn(rng=np.random.default_rng(0))
    result = training.evaluate(model, x, y, batch_size=7)
    logits = model(x).astype(np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    np.testing.assert_array_equal(result.predictions, logits.argmax(1))
    assert result.accuracy == np.mean(logits.argmax(1) == y)
    assert result.loss == pytest.approx(-log_probs[np.arange(30), y].mean(), rel=1e-5)


def test_warm_up_leaves_parameters_and_grads_unchanged():
    model = reference_cnn(rng=np.random.default_rng(0))
    before = [p.data.copy() for p in model.parameters()]
    training.warm_up(model, np.zeros((4, 1, 28, 28), np.float32))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
        assert not p.grad.any()


def test_checkpoint_kind_is_generic_and_earlier_kinds_load(tmp_path):
    """Files saved before the loop was split from the MNIST example (kind "fastconv.training/mnist") still load."""
    model = reference_cnn(rng=0, image_size=8, channels=(2,), hidden=4)
    opt = optim.SGD(model.parameters(), lr=0.1)
    training.save_checkpoint(tmp_path / "c.npz", model, opt, np.random.default_rng(1), {"dtype": "float32"},
                             [], 0, np.arange(3), training.EpochProgress(batch=1, seen=2))
    assert serialization.load(tmp_path / "c.npz")["kind"] == training.CHECKPOINT_KIND == "fastconv.training/checkpoint"
    save_as_kind(tmp_path / "c.npz", EARLIER_KIND)
    ckpt = training.load_checkpoint(tmp_path / "c.npz")
    assert ckpt["kind"] == EARLIER_KIND and ckpt["progress"] == training.EpochProgress(batch=1, seen=2)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(ckpt["model"][key], value)
    save_as_kind(tmp_path / "c.npz", "fastconv.training/other")
    with pytest.raises(serialization.CheckpointError, match="not a training checkpoint"):
        training.load_checkpoint(tmp_path / "c.npz")


@pytest.mark.parametrize(
    "old, module, new",
    [("MNIST_MEAN", "fastconv.datasets", "MNIST_MEAN"), ("MNIST_STD", "fastconv.datasets", "MNIST_STD"),
     ("preprocess", "fastconv.datasets", "preprocess_mnist"), ("reference_cnn", "fastconv.models", "reference_cnn"),
     ("model_from_checkpoint", "fastconv.models", "reference_cnn_from_checkpoint"),
     ("format_confusion_matrix", "fastconv.metrics", "format_confusion_matrix")],
)
def test_moved_names_still_import_with_a_deprecation_warning(old, module, new):
    with pytest.warns(DeprecationWarning, match=rf"fastconv\.training\.{old} is deprecated: use {module}\.{new}"):
        alias = getattr(training, old)
    assert alias is getattr(importlib.import_module(module), new)
    with pytest.warns(DeprecationWarning, match=f"use {module}"):
        exec(f"from fastconv.training import {old}", {})


def test_moved_confusion_matrix_keeps_its_ten_classes():
    with pytest.warns(DeprecationWarning, match=r"use fastconv\.metrics\.confusion_matrix"):
        old = training.confusion_matrix
    assert old([0, 1], [1, 1]).shape == (10, 10)  # the new one infers 2 classes here
    np.testing.assert_array_equal(old([0, 1], [1, 1], 3), [[0, 1, 0], [0, 1, 0], [0, 0, 0]])


def test_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        training.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- train_mnist.py


def test_metrics_json_and_plot(train_script, fake_data, tmp_path, capsys):
    metrics, png = tmp_path / "m.json", tmp_path / "curves.png"
    threads_before = functional.get_num_threads()
    assert run(train_script, "--epochs", 2, *TINY, "--metrics-out", metrics, "--plot", png) == 0
    out = capsys.readouterr().out
    doc = json.loads(metrics.read_text())
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2]
    for e in doc["epochs"]:
        assert {"train_loss", "train_accuracy", "test_accuracy", "epoch_seconds", "images_per_second"} <= set(e)
        assert 0 <= e["train_accuracy"] <= 1 and 0 <= e["test_accuracy"] <= 1
        assert e["images_per_second"] == pytest.approx(len(fake_data[0][0]) / e["epoch_seconds"])
    assert doc["test_accuracy"] == doc["epochs"][-1]["test_accuracy"]
    assert doc["images_per_second"] == pytest.approx(np.mean([e["images_per_second"] for e in doc["epochs"]]))
    assert doc["config"]["batch_size"] == 32 and doc["config"]["threads"] == 1
    assert f"test acc {100 * doc['test_accuracy']:.2f}%" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert functional.get_num_threads() == threads_before  # --threads 1 is undone afterwards


def test_torch_baseline_trains_the_same_run(train_script, fake_data, tmp_path, monkeypatch):
    """scripts/torch_mnist_baseline.py: the same weights, order, schedule and loss as train_mnist.py.

    The README compares the two scripts' images/s; that is fair only if they train the
    same run. After one epoch of 3 steps their losses agree to float32 rounding.
    """
    pytest.importorskip("torch")
    baseline = load_script("torch_mnist_baseline")
    monkeypatch.setattr(baseline, "load_mnist", lambda *a, **k: fake_data)
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    assert run(train_script, "--epochs", 1, *TINY, "--metrics-out", ours) == 0
    assert run(baseline, "--epochs", 1, "--batch-size", 32, "--threads", 1, "--metrics-out", theirs) == 0
    a, b = json.loads(ours.read_text())["epochs"][0], json.loads(theirs.read_text())["epochs"][0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["train_accuracy"] == pytest.approx(a["train_accuracy"], abs=1 / len(fake_data[0][0]))
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1 / len(fake_data[1][0]))
    assert b["images_per_second"] == pytest.approx(len(fake_data[0][0]) / b["epoch_seconds"])


def test_plot_without_matplotlib(train_script, fake_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run(train_script, "--epochs", 1, *TINY, "--plot", tmp_path / "x.png") == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", [training.CHECKPOINT_KIND, EARLIER_KIND], ids=["current kind", "earlier kind"])
@pytest.mark.parametrize("optimizer", ["adam"])
def test_resume_at_epoch_boundary_equals_uninterrupted(train_script, fake_data, tmp_path, optimizer, kind):
    flags = (*TINY, "--optimizer", optimizer, "--lr-schedule", "constant")
    assert run(train_script, "--epochs", 2, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    assert run(train_script, "--epochs", 1, *flags, "--checkpoint", tmp_path / "b.npz") == 0
    save_as_kind(tmp_path / "b.npz", kind)
    assert training.load_checkpoint(tmp_path / "b.npz")["epoch"] == 1
    assert run(train_script, "--epochs", 2, *flags, "--checkpoint", tmp_path / "b.npz", "--resume") == 0
    assert_same_run(tmp_path / "a.npz", tmp_path / "b.npz")


def interrupt_after_batch(monkeypatch, k):
    """Deliver a real SIGINT to this process right after the k-th training step (counted across calls)."""
    original, count = training.ProgressBar.update, [0]

    def update(self, n=1, **postfix):
        original(self, n, **postfix)
        count[0] += 1
        if count[0] == k:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(training.ProgressBar, "update", update)


@pytest.mark.parametrize("optimizer, stop_at", [("sgd", 2), ("adam", 4)],
                         ids=["sgd, epoch 1 batch 2", "adam, epoch 2 batch 1"])
def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(train_script, fake_data, tmp_path, monkeypatch,
                                                          capsys, optimizer, stop_at):
    flags = ("--epochs", 2, *TINY, "--optimizer", optimizer)  # cosine schedule: the step index matters
    assert run(train_script, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    with monkeypatch.context() as m:
        interrupt_after_batch(m, stop_at)
        assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz") == 130
    err = capsys.readouterr().err
    assert "Stopped in epoch" in err and "--resume" in err
    ckpt = training.load_checkpoint(tmp_path / "b.npz")
    assert ckpt["epoch"] * 3 + ckpt["progress"].batch == stop_at  # 96 images / 32 = 3 batches per epoch
    assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_run(tmp_path / "a.npz", tmp_path / "b.npz")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_during_evaluation_saves_the_finished_epoch(train_script, fake_data, tmp_path, monkeypatch, capsys):
    flags = ("--epochs", 2, *TINY)
    assert run(train_script, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    original = training.evaluate

    def evaluate(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(training, "evaluate", evaluate)
        assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz") == 130
    assert "Stopped after epoch 1" in capsys.readouterr().err
    ckpt = training.load_checkpoint(tmp_path / "b.npz")
    assert ckpt["epoch"] == 1 and ckpt["progress"] is None
    assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz", "--resume") == 0
    assert_same_run(tmp_path / "a.npz", tmp_path / "b.npz")


def test_ctrl_c_without_checkpoint_flag_saves_in_cwd(train_script, fake_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_after_batch(monkeypatch, 1)
    assert run(train_script, "--epochs", 1, *TINY) == 130
    assert train_script.INTERRUPT_CHECKPOINT in capsys.readouterr().err
    assert training.load_checkpoint(tmp_path / train_script.INTERRUPT_CHECKPOINT)["progress"].batch == 1


def test_resume_with_other_settings_is_refused(train_script, fake_data, tmp_path, capsys):
    assert run(train_script, "--epochs", 1, *TINY, "--checkpoint", tmp_path / "c.npz") == 0
    assert run(train_script, "--epochs", 2, *TINY, "--lr", 0.01, "--checkpoint", tmp_path / "c.npz",
               "--resume") == 1
    err = capsys.readouterr().err
    assert "--lr 0.05 (checkpoint) vs 0.01 (now)" in err and "--epochs 1 (checkpoint) vs 2 (now)" in err


def test_resume_without_checkpoint_file(train_script, fake_data, tmp_path, capsys):
    assert run(train_script, *TINY, "--checkpoint", tmp_path / "missing.npz", "--resume") == 1
    assert "missing.npz" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [(["--resume"], "--resume needs --checkpoint"), (["--epochs", "0"], "positive integer"),
     (["--lr", "-1"], "positive number"), (["--momentum", "1.5"], "--momentum"),
     (["--optimizer", "rmsprop"], "invalid choice")],
    ids=["resume", "epochs", "lr", "momentum", "optimizer"],
)
def test_bad_arguments(train_script, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_offline(train_script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCONV_DATA_DIR", raising=False)
    assert run(train_script, "--data-dir", tmp_path / "empty", "--no-download") == 1
    err = capsys.readouterr().err
    assert "MNIST files not found" in err and str(tmp_path / "empty") in err


# --------------------------------------------------------------------------- predict.py


def test_predict_reports_accuracy_and_confusion_matrix(train_script, predict_script, fake_data, tmp_path, capsys):
    assert run(train_script, "--epochs", 1, *TINY, "--checkpoint", tmp_path / "c.npz",
               "--metrics-out", tmp_path / "m.json") == 0
    assert run(predict_script, tmp_path / "c.npz", "--json", tmp_path / "r.json", "--batch-size", 7) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    matrix = np.array(report["confusion_matrix"])
    _, (x_test, y_test) = fake_data
    assert matrix.shape == (10, 10) and matrix.sum() == len(y_test)
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(y_test, minlength=10))
    assert report["test_accuracy"] == np.trace(matrix) / len(y_test)
    # Same model, same test set: the accuracy train_mnist.py measured after the epoch.
    assert report["test_accuracy"] == json.loads((tmp_path / "m.json").read_text())["test_accuracy"]
    assert f"test accuracy: {100 * report['test_accuracy']:.2f}%" in out and "true\\pred" in out


def test_predict_agrees_with_pytorch(train_script, predict_script, fake_data, tmp_path):
    """Predictions of the checkpoint's weights in a PyTorch copy of the network give the same matrix."""
    torch = pytest.importorskip("torch")
    assert run(train_script, "--epochs", 1, *TINY, "--checkpoint", tmp_path / "c.npz") == 0
    assert run(predict_script, tmp_path / "c.npz", "--json", tmp_path / "r.json") == 0
    net = to_torch(reference_cnn_from_checkpoint(training.load_checkpoint(tmp_path / "c.npz")))
    _, (x_test, y_test) = fake_data
    x = torch.from_numpy(((x_test.astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None])
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (y_test.astype(np.int64), pred), 1)
    np.testing.assert_array_equal(json.loads((tmp_path / "r.json").read_text())["confusion_matrix"], expected)


def test_predict_reads_a_checkpoint_of_the_earlier_kind(train_script, predict_script, fake_data, tmp_path, capsys):
    assert run(train_script, "--epochs", 1, *TINY, "--checkpoint", tmp_path / "c.npz") == 0
    capsys.readouterr()
    assert run(predict_script, tmp_path / "c.npz") == 0
    expected = capsys.readouterr().out
    save_as_kind(tmp_path / "c.npz", EARLIER_KIND)
    assert run(predict_script, tmp_path / "c.npz") == 0
    strip = lambda text: re.sub(r"[\d.]+ images/s", "", text)  # noqa: E731
    assert strip(capsys.readouterr().out) == strip(expected)


def test_predict_rejects_a_non_training_checkpoint(predict_script, tmp_path, capsys):
    serialization.save({"model": {}}, tmp_path / "other.npz")
    assert run(predict_script, tmp_path / "other.npz") == 1
    assert "not a training checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data


@requires_real
def test_smoke_training_run_on_real_mnist(tmp_path):
    """What a user runs, in a subprocess: 2,000 real images, one epoch; the loss falls, accuracy >> 10%."""
    metrics = tmp_path / "m.json"
    cmd = [sys.executable, str(REPO / "scripts" / "train_mnist.py"), "--limit", "2000", "--epochs", "1",
           "--batch-size", "32", "--test-limit", "2000", "--data-dir", REAL_DIR, "--no-download", "--no-progress",
           "--checkpoint", str(tmp_path / "c.npz"), "--metrics-out", str(metrics)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1: train loss" in proc.stdout
    doc = json.loads(metrics.read_text())
    curve = [loss for _, loss in doc["epochs"][0]["loss_curve"]]
    assert curve[0] > 1.5 and np.mean(curve[-3:]) < 0.4 * curve[0], curve
    assert doc["test_accuracy"] > 0.7  # chance: 0.1
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), str(tmp_path / "c.npz"),
                           "--data-dir", REAL_DIR, "--no-download", "--limit", "2000"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"test accuracy: {100 * doc['test_accuracy']:.2f}%" in proc.stdout


def test_float64_run_and_predict(train_script, predict_script, fake_data, tmp_path, capsys):
    assert run(train_script, "--epochs", 1, *TINY, "--dtype", "float64", "--checkpoint", tmp_path / "c.npz") == 0
    ckpt = training.load_checkpoint(tmp_path / "c.npz")
    assert all(a.dtype == np.float64 for a in ckpt["model"].values())
    assert run(predict_script, tmp_path / "c.npz") == 0
    assert "float64" in capsys.readouterr().out


# --------------------------------------------------------------------------- --model resnet, --dataset

RESNET = ("--model", "resnet", "--depth", 8, "--width", 2, *TINY)


def test_resnet_run_resumes_mid_epoch_exactly_and_predict_rebuilds_it(train_script, predict_script, fake_data,
                                                                      tmp_path, monkeypatch, capsys):
    """Batch norms' running statistics, Nesterov momentum and weight decay survive a Ctrl-C and --resume."""
    flags = ("--epochs", 2, *RESNET)  # augmented by default: the crops come from the checkpointed stream
    assert run(train_script, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    with monkeypatch.context() as m:
        interrupt_after_batch(m, 2)
        assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz") == 130
    assert run(train_script, *flags, "--checkpoint", tmp_path / "b.npz", "--resume") == 0
    assert_same_run(tmp_path / "a.npz", tmp_path / "b.npz")
    ckpt = training.load_checkpoint(tmp_path / "a.npz")
    config = ckpt["config"]
    assert (config["model"], config["architecture"]) == ("resnet", {"depth": 8, "width": 2, "in_channels": 1,
                                                                    "num_classes": 10})
    assert (config["lr"], config["nesterov"], config["weight_decay"], config["dataset"], config["augment"]) == (
        0.1, True, 5e-4, "mnist", True)
    assert ckpt["model"]["1.num_batches_tracked"] == 6  # 2 epochs of 3 steps; the warm-up is not counted
    capsys.readouterr()
    assert run(predict_script, tmp_path / "a.npz") == 0
    assert f"test accuracy: {100 * ckpt['history'][-1]['test_accuracy']:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_torch_baseline_trains_the_same_resnet_run(train_script, fake_data, tmp_path, monkeypatch, augment):
    pytest.importorskip("torch")
    baseline = load_script("torch_mnist_baseline")
    monkeypatch.setattr(baseline, "load_mnist", lambda *a, **k: fake_data)
    # Width 8: PyTorch 2.13's oneDNN (3.12) corrupts the heap on AVX2-only CPUs in the backward of a channels-last
    # 1x1 stride-2 convolution with fewer than 8 input channels (the shortcuts of width 2 and 4; seen on Zen 3).
    flags = ("--model", "resnet", "--depth", 8, "--width", 8, "--epochs", 2, "--batch-size", 32, "--threads", 1,
             "--augment" if augment else "--no-augment")
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    assert run(train_script, *flags, "--no-progress", "--metrics-out", ours) == 0
    assert run(baseline, *flags, "--metrics-out", theirs) == 0
    for a, b in zip(json.loads(ours.read_text())["epochs"], json.loads(theirs.read_text())["epochs"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1 / len(fake_data[1][0]))


def test_fashion_mnist_and_cifar10_flags_use_their_loaders(train_script, tmp_path, monkeypatch, capsys):
    """--dataset calls fastconv.datasets.load_fashion_mnist / load_cifar10 (stand-ins here: the real ones
    come with the i17-data branch and have their own tests)."""
    from fastconv import datasets
    calls = []
    fashion = synthetic_mnist(seed=4)
    gen = np.random.default_rng(5)
    cifar = tuple((gen.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), gen.integers(0, 10, n).astype(np.uint8))
                  for n in (64, 16))
    monkeypatch.setattr(datasets, "load_fashion_mnist", lambda *a, **k: calls.append("fashion") or fashion,
                        raising=False)
    monkeypatch.setattr(datasets, "load_cifar10", lambda *a, **k: calls.append("cifar10") or (*cifar, list("abc")),
                        raising=False)
    monkeypatch.setattr(datasets, "preprocess_fashion_mnist", preprocess_mnist, raising=False)
    monkeypatch.setattr(datasets, "preprocess_cifar10", lambda x, dtype=np.float32: (x / 255).astype(dtype),
                        raising=False)
    out = tmp_path / "m.json"
    assert run(train_script, "--dataset", "fashion-mnist", "--epochs", 1, *TINY, "--metrics-out", out) == 0
    assert json.loads(out.read_text())["config"]["dataset"] == "fashion-mnist"
    assert run(train_script, "--dataset", "cifar10", "--no-augment", "--epochs", 1, *RESNET[:6],
               *TINY, "--checkpoint", tmp_path / "c.npz") == 0
    assert calls == ["fashion", "cifar10"]
    ckpt = training.load_checkpoint(tmp_path / "c.npz")
    assert ckpt["config"]["architecture"]["in_channels"] == 3 and ckpt["model"]["0.weight"].shape == (2, 3, 3, 3)
    assert "ResNet-8 (width 2) on cifar10: training on 64 images" in capsys.readouterr().out


def test_synthetic_timing_data(train_script, tmp_path, capsys):
    """The hidden --synthetic N flag (for timing an epoch of the real size) needs no files."""
    assert run(train_script, "--synthetic", 64, "--dataset", "cifar10", "--no-augment", *RESNET[:6], "--epochs", 1,
               *TINY, "--test-limit", 16) == 0
    assert "on cifar10: training on 64 images, testing on 16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [(["--model", "resnet", "--depth", "10"], "--depth must be 6n+2"), (["--depth", "8"], "--depth and --width"),
     (["--dataset", "cifar10"], "needs --model resnet"), (["--weight-decay", "-1"], "--weight-decay"),
     (["--model", "resnet", "--optimizer", "adam", "--nesterov"], "--nesterov needs")],
    ids=["depth", "depth-for-reference", "cifar10-reference", "weight-decay", "nesterov-adam"],
)
def test_bad_resnet_arguments(train_script, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_per_model_defaults(train_script):
    ref, res = train_script.parse_args([]), train_script.parse_args(["--model", "resnet"])
    assert (ref.epochs, ref.batch_size, ref.lr, ref.weight_decay, ref.nesterov, ref.augment) == (3, 64, 0.05, 0, False,
                                                                                             False)
    assert (res.epochs, res.batch_size, res.lr, res.weight_decay, res.nesterov, res.depth, res.width) == (
        5, 128, 0.1, 5e-4, True, 8, 16)
    assert res.augment and not train_script.parse_args(["--model", "resnet", "--no-augment"]).augment
    cifar = train_script.parse_args(["--model", "resnet", "--dataset", "cifar10"])
    assert (cifar.depth, cifar.augment) == (20, True)
    adam = train_script.parse_args(["--model", "resnet", "--optimizer", "adam"])
    assert (adam.lr, adam.nesterov) == (1e-3, False)


@requires_real
def test_resnet_smoke_run_on_real_mnist(tmp_path):
    """A user's --model resnet run in a subprocess (a few steps of real images), then predict.py on it."""
    ckpt = tmp_path / "r.npz"
    cmd = [sys.executable, str(REPO / "scripts" / "train_mnist.py"), "--model", "resnet", "--width", "4",
           "--limit", "640", "--epochs", "1", "--test-limit", "500", "--data-dir", REAL_DIR, "--no-download",
           "--no-progress", "--checkpoint", str(ckpt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ResNet-8 (width 4) on mnist (augmented): training on 640 images" in proc.stdout
    accuracy = training.load_checkpoint(ckpt)["history"][0]["test_accuracy"]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), str(ckpt), "--data-dir", REAL_DIR,
                           "--no-download", "--limit", "500"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"test accuracy: {100 * accuracy:.2f}%" in proc.stdout
