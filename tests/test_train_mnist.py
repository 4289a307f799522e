"""Tests for fastconv.training and the scripts train_mnist.py / predict.py.

Most runs are in-process on a small synthetic data set (``load_mnist`` is replaced in the
script module), so they are fast and need no files. The smoke run on real MNIST runs the
script as a user does, in a subprocess; it needs ``FASTCONV_DATA_DIR`` (skipped otherwise).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import functional, nn, optim, training
from fastconv.datasets import MNIST_FILES

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


# --------------------------------------------------------------------------- library pieces


def test_reference_cnn_architecture():
    model = training.reference_cnn(rng=np.random.default_rng(0))
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 3136), (128,), (10, 128), (10,)]
    assert sum(p.size for p in model.parameters()) == 421_642
    out = model(np.zeros((3, 1, 28, 28), np.float32))
    assert out.shape == (3, 10) and out.dtype == np.float32
    same = training.reference_cnn(rng=np.random.default_rng(0))
    for p, q in zip(model.parameters(), same.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess(dtype):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    before = images.copy()
    out = training.preprocess(images, dtype)
    assert out.shape == (5, 1, 28, 28) and out.dtype == dtype and out.flags.c_contiguous
    expected = (images.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize(
    "images, dtype, error",
    [([[1]], np.float32, TypeError), (np.zeros((2, 28, 28), np.float32), np.float32, ValueError),
     (np.zeros((28, 28), np.uint8), np.float32, ValueError), (np.zeros((2, 28, 28), np.uint8), np.int32, TypeError)],
    ids=["list", "float input", "2-d", "int dtype"],
)
def test_preprocess_errors(images, dtype, error):
    with pytest.raises(error, match="preprocess"):
        training.preprocess(images, dtype)


def test_confusion_matrix_matches_counting_loop():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), np.int64)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(training.confusion_matrix(y_true, y_pred), expected)
    text = training.format_confusion_matrix(expected)
    assert len(text.splitlines()) == 11 and "recall" in text


@pytest.mark.parametrize("y_true, y_pred", [([1, 2], [1]), ([0, 10], [0, 1]), ([-1], [0])],
                         ids=["length", "too large", "negative"])
def test_confusion_matrix_errors(y_true, y_pred):
    with pytest.raises(ValueError, match="confusion_matrix"):
        training.confusion_matrix(y_true, y_pred)


def test_train_epoch_stops_between_steps_and_resumes_exactly():
    """Stopping after batch 2 and continuing gives the same parameters as one go."""
    (x, y), _ = synthetic_mnist(n_train=80)
    x = training.preprocess(x)
    order = np.random.default_rng(5).permutation(len(x))

    def fresh():
        model = training.reference_cnn(rng=np.random.default_rng(0))
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
    x = training.preprocess(x)
    model = training.reference_cnn(rng=np.random.default_rng(0))
    result = training.evaluate(model, x, y, batch_size=7)
    logits = model(x).astype(np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    np.testing.assert_array_equal(result.predictions, logits.argmax(1))
    assert result.accuracy == np.mean(logits.argmax(1) == y)
    assert result.loss == pytest.approx(-log_probs[np.arange(30), y].mean(), rel=1e-5)


def test_warm_up_leaves_parameters_and_grads_unchanged():
    model = training.reference_cnn(rng=np.random.default_rng(0))
    before = [p.data.copy() for p in model.parameters()]
    training.warm_up(model, np.zeros((4, 1, 28, 28), np.float32))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
        assert not p.grad.any()


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


@pytest.mark.parametrize("optimizer", ["adam"])
def test_resume_at_epoch_boundary_equals_uninterrupted(train_script, fake_data, tmp_path, optimizer):
    flags = (*TINY, "--optimizer", optimizer, "--lr-schedule", "constant")
    assert run(train_script, "--epochs", 2, *flags, "--checkpoint", tmp_path / "a.npz") == 0
    assert run(train_script, "--epochs", 1, *flags, "--checkpoint", tmp_path / "b.npz") == 0
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
    weights = training.load_checkpoint(tmp_path / "c.npz")["model"]
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                         tnn.Linear(3136, 128), tnn.ReLU(), tnn.Linear(128, 10))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    _, (x_test, y_test) = fake_data
    x = torch.from_numpy(((x_test.astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None])
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (y_test.astype(np.int64), pred), 1)
    np.testing.assert_array_equal(json.loads((tmp_path / "r.json").read_text())["confusion_matrix"], expected)


def test_predict_rejects_a_non_training_checkpoint(predict_script, tmp_path, capsys):
    from fastconv import serialization
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
