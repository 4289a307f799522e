"""Reusable pieces of the MNIST example: the reference CNN, preprocessing, one epoch, evaluation.

``scripts/train_mnist.py`` and ``scripts/predict.py`` are thin command-line wrappers
around these functions; the tests use them directly.

The training loop stays in Python and calls one compiled kernel per layer per step::

    import numpy as np
    from fastconv import nn, optim
    from fastconv.datasets import load_mnist
    from fastconv.training import evaluate, preprocess, reference_cnn, train_epoch

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train, x_test = preprocess(x_train), preprocess(x_test)
    rng = np.random.default_rng(0)
    model = reference_cnn(rng=rng)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        stats = train_epoch(model, nn.CrossEntropyLoss(), opt, x_train, y_train,
                            rng.permutation(len(x_train)), batch_size=64)
        print(epoch + 1, stats.loss, evaluate(model, x_test, y_test).accuracy)
"""

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import nn, serialization

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "CHECKPOINT_KIND",
    "EpochProgress",
    "Evaluation",
    "ProgressBar",
    "confusion_matrix",
    "evaluate",
    "format_confusion_matrix",
    "load_checkpoint",
    "model_from_checkpoint",
    "preprocess",
    "reference_cnn",
    "save_checkpoint",
    "to_json",
    "train_epoch",
    "warm_up",
]

#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def reference_cnn(dtype=np.float32, rng=None):
    """Build the reference MNIST network.

    ``conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1, ReLU, maxpool 2,
    flatten, linear 3136->128, ReLU, linear 128->10`` (421,642 parameters).

    Parameters
    ----------
    dtype : {numpy.float32, numpy.float64}
        Parameter dtype; inputs must have the same dtype.
    rng : numpy.random.Generator, optional
        Source of the initial weights (PyTorch's default initialisation). ``None``: a
        fresh unseeded generator.

    Returns
    -------
    fastconv.nn.Sequential
        Maps ``(N, 1, 28, 28)`` images to ``(N, 10)`` logits.
    """
    rng = np.random.default_rng() if rng is None else rng
    kw = dict(dtype=dtype, rng=rng)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128, **kw), nn.ReLU(), nn.Linear(128, 10, **kw),
    )


def preprocess(images, dtype=np.float32):
    """Scale uint8 images to [0, 1], standardise with the MNIST mean/std and add a channel axis.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (N, H, W)
        Raw pixels as returned by :func:`fastconv.datasets.load_mnist`.
    dtype : {numpy.float32, numpy.float64}
        Output dtype.

    Returns
    -------
    numpy.ndarray, shape (N, 1, H, W)
        ``(images / 255 - MNIST_MEAN) / MNIST_STD``, C-contiguous, a new array.
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"preprocess: images must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"preprocess: images must be uint8 of shape (N, H, W), got {images.dtype} "
                         f"of shape {images.shape}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"preprocess: dtype must be float32 or float64, got {dtype}")
    out = images.astype(dtype)[:, None]
    out *= dtype.type(1 / (255 * MNIST_STD))
    out -= dtype.type(MNIST_MEAN / MNIST_STD)
    return out


def warm_up(model, x):
    """Compile every kernel the model uses (forward, backward, no-grad forward) before timing.

    Runs a forward and backward pass on the first two images and clears the gradients
    afterwards; the parameters are not changed, so training is unaffected.

    Parameters
    ----------
    model : fastconv.nn.Module
    x : numpy.ndarray, shape (N, 1, 28, 28)
        Preprocessed images (only ``x[:2]`` is used).

    Returns
    -------
    float
        Seconds spent (mostly Numba compilation, or loading it from the disk cache).
    """
    start = time.perf_counter()
    was_training = model.training
    model.train()
    out = model(x[:2])
    model.backward(np.ones_like(out), input_grad=False)
    model.zero_grad()
    with nn.no_grad():
        model.eval()(x[:2])
    model.train(was_training)
    return time.perf_counter() - start


def to_json(obj):
    """``json.dumps(obj, indent=2)`` with innermost lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


class ProgressBar:
    """A progress bar over batches: tqdm when installed, else a plain text line on stderr.

    Parameters
    ----------
    total : int
        Number of steps.
    desc : str
        Label in front of the bar.
    enabled : bool
        ``False`` prints nothing.
    initial : int
        Steps already done (when resuming mid-epoch).
    """

    def __init__(self, total, desc, enabled=True, initial=0):
        self.total, self.desc, self.n, self.enabled = total, desc, initial, enabled
        self._tqdm = None
        self._postfix = ""
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._tqdm = tqdm(total=total, desc=desc, initial=initial, unit="batch", leave=False,
                          dynamic_ncols=True)

    def update(self, n=1, **postfix):
        """Advance by ``n`` steps and show ``postfix`` (name -> already formatted string)."""
        self.n += n
        if not self.enabled:
            return
        text = " ".join(f"{k}={v}" for k, v in postfix.items())
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
            self._tqdm.update(n)
            return
        now = time.monotonic()
        if now - self._last >= 1.0 or self.n >= self.total:
            self._last = now
            width = 30
            done = int(width * self.n / max(self.total, 1))
            sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] "
                             f"{self.n}/{self.total} {text}")
            sys.stderr.flush()

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\r\033[K" if sys.stderr.isatty() else "\n")
            sys.stderr.flush()


@dataclass
class EpochProgress:
    """Where one training epoch stands; enough to resume it exactly.

    Attributes
    ----------
    batch : int
        Number of batches done.
    loss_sum : float
        Sum over the images seen of their cross-entropy loss (batch mean times batch size).
    correct : int
        Images seen so far that were classified correctly (before the step on their batch).
    seen : int
        Images seen so far.
    seconds : float
        Training time spent in this epoch so far (summed over interrupted sessions).
    loss_curve : list of [float, float]
        ``[fraction of the epoch done, mean loss since the previous point]`` points.
    curve_mark : [float, int]
        ``loss_sum`` and ``seen`` at the last point of ``loss_curve``.
    """

    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    loss_curve: list = field(default_factory=list)
    curve_mark: list = field(default_factory=lambda: [0.0, 0])

    @property
    def loss(self):
        """Mean training loss over the images seen (nan before the first batch)."""
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def accuracy(self):
        """Fraction of the images seen that were classified correctly."""
        return self.correct / self.seen if self.seen else float("nan")

    @property
    def images_per_second(self):
        return self.seen / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


def train_epoch(model, loss_fn, optimizer, x, y, order, batch_size, progress=None, should_stop=None,
                bar=None, before_step=None, curve_every=None):
    """Run (the rest of) one training epoch: forward, backward and an optimizer step per batch.

    Parameters
    ----------
    model : fastconv.nn.Module
        Put in training mode.
    loss_fn : fastconv.nn.CrossEntropyLoss
    optimizer : fastconv.optim optimizer over ``model.parameters()``
    x : numpy.ndarray, shape (N, 1, 28, 28)
        Preprocessed images (see :func:`preprocess`), the model's dtype.
    y : numpy.ndarray of int, shape (N,)
        Labels.
    order : numpy.ndarray of int, shape (N,)
        The epoch's permutation of ``range(N)``; batch ``k`` is
        ``order[k * batch_size:(k + 1) * batch_size]`` (the last one may be smaller).
    batch_size : int
    progress : EpochProgress, optional
        State of a partly done epoch to continue (it is updated in place); ``None``
        starts at batch 0.
    should_stop : callable, optional
        Called after every batch; when it returns True the epoch stops there, with the
        model, optimizer and ``progress`` consistent (this is how Ctrl-C is handled).
    bar : ProgressBar, optional
        Updated after every batch with the running loss, accuracy and images/s.
    before_step : callable, optional
        ``before_step(k)`` is called before batch ``k`` (0-based within the epoch), e.g.
        to set the learning rate of a schedule.
    curve_every : int, optional
        Record a point of ``progress.loss_curve`` every this many batches (default:
        about 20 points per epoch).

    Returns
    -------
    EpochProgress
        ``progress.batch == ceil(N / batch_size)`` if the epoch finished.
    """
    n = len(order)
    if len(x) != len(y):
        raise ValueError(f"train_epoch: x has {len(x)} images but y has {len(y)} labels")
    if n != len(x):
        raise ValueError(f"train_epoch: order has {n} entries but there are {len(x)} images")
    progress = EpochProgress() if progress is None else progress
    n_batches = -(-n // batch_size)
    curve_every = max(1, round(n_batches / 20)) if curve_every is None else curve_every
    model.train()
    start = time.perf_counter()
    for k in range(progress.batch, n_batches):
        idx = order[k * batch_size:(k + 1) * batch_size]
        xb, yb = x[idx], y[idx]
        if before_step is not None:
            before_step(k)
        logits = model(xb)
        loss = float(loss_fn(logits, yb))
        model.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

        progress.batch = k + 1
        progress.loss_sum += loss * len(idx)
        progress.correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
        progress.seen += len(idx)
        if progress.batch % curve_every == 0 or progress.batch == n_batches:
            mark_loss, mark_seen = progress.curve_mark
            window = (progress.loss_sum - mark_loss) / (progress.seen - mark_seen)
            progress.loss_curve.append([progress.batch / n_batches, window])
            progress.curve_mark = [progress.loss_sum, progress.seen]
        elapsed = progress.seconds + time.perf_counter() - start
        if bar is not None:
            bar.update(1, loss=f"{progress.loss:.4f}", acc=f"{100 * progress.accuracy:.2f}%",
                       img_s=f"{progress.seen / elapsed:.0f}")
        if should_stop is not None and k + 1 < n_batches and should_stop():
            break
    progress.seconds += time.perf_counter() - start
    return progress


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    loss : float
        Mean cross-entropy loss.
    accuracy : float
        Fraction classified correctly.
    predictions : numpy.ndarray of int64, shape (N,)
        Predicted class of each image.
    seconds : float
        Wall time of the evaluation.
    """

    loss: float
    accuracy: float
    predictions: np.ndarray
    seconds: float


def evaluate(model, x, y, batch_size=1000):
    """Loss, accuracy and predictions of ``model`` on ``(x, y)``, in evaluation mode.

    Parameters
    ----------
    model : fastconv.nn.Module
        Left in evaluation mode.
    x : numpy.ndarray, shape (N, 1, 28, 28)
        Preprocessed images.
    y : numpy.ndarray of int, shape (N,)
        Labels.
    batch_size : int
        Images per forward pass (memory only; results do not depend on it).

    Returns
    -------
    Evaluation
    """
    if len(x) != len(y):
        raise ValueError(f"evaluate: x has {len(x)} images but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError("evaluate: no images")
    start = time.perf_counter()
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    loss_sum = 0.0
    predictions = np.empty(len(x), dtype=np.int64)
    with nn.no_grad():  # no caches for backward: less memory
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            loss_sum += float(loss_fn(logits, y[i:i + batch_size])) * len(logits)
            predictions[i:i + batch_size] = logits.argmax(axis=1)
    accuracy = float(np.mean(predictions == y))
    return Evaluation(loss_sum / len(x), accuracy, predictions, time.perf_counter() - start)


def confusion_matrix(y_true, y_pred, num_classes=10):
    """Count how often each true class was predicted as each class.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (N,)
        Values in ``[0, num_classes)``.
    num_classes : int

    Returns
    -------
    numpy.ndarray of int64, shape (num_classes, num_classes)
        ``m[i, j]`` = number of images of class ``i`` predicted as ``j``; the diagonal
        holds the correct predictions.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"confusion_matrix: y_true and y_pred must be 1-d of equal length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has values outside [0, {num_classes})")
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def format_confusion_matrix(matrix):
    """Render a confusion matrix as text: rows are true classes, columns predictions, plus recall.

    Parameters
    ----------
    matrix : numpy.ndarray of int, shape (K, K)

    Returns
    -------
    str
    """
    k = len(matrix)
    width = max(5, len(str(int(matrix.max()))) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k)) + "   recall"]
    for i in range(k):
        total = matrix[i].sum()
        recall = f"{100 * matrix[i, i] / total:7.2f}%" if total else "      -"
        lines.append(f"{i:>9}" + "".join(f"{v:>{width}}" for v in matrix[i]) + " " + recall)
    return "\n".join(lines)


#: Value of the ``"kind"`` entry of a training checkpoint.
CHECKPOINT_KIND = "fastconv.training/mnist"


def save_checkpoint(path, model, optimizer, rng, config, history, epoch, order=None, progress=None):
    """Save a training checkpoint atomically (via :func:`fastconv.serialization.save`).

    Parameters
    ----------
    path : str or os.PathLike
    model : fastconv.nn.Module
    optimizer : fastconv.optim.Optimizer
    rng : numpy.random.Generator
        The shuffling generator; its ``bit_generator.state`` is saved.
    config : dict
        The settings of the run (must contain ``"dtype"``); JSON-compatible values.
    history : list of dict
        Per-epoch metrics of the epochs done.
    epoch : int
        Number of complete epochs.
    order : numpy.ndarray of int, shape (N,), optional
        The permutation of a partly done epoch.
    progress : EpochProgress, optional
        Where that partly done epoch stands.

    Notes
    -----
    The file holds ``kind``, ``config``, ``model`` (state dict), ``optimizer`` (state dict),
    ``rng``, ``history``, ``epoch``, ``order`` and ``progress`` (``None`` at an epoch
    boundary). No pickle: see :mod:`fastconv.serialization`.
    """
    if (order is None) != (progress is None):
        raise ValueError("save_checkpoint: order and progress go together (both or neither)")
    state = {"kind": CHECKPOINT_KIND, "config": dict(config), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state, "history": list(history),
             "epoch": int(epoch), "order": order, "progress": None if progress is None else asdict(progress)}
    serialization.save(state, path)


def load_checkpoint(path):
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    dict
        The saved entries; ``"progress"`` is an :class:`EpochProgress` or ``None``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    fastconv.serialization.CheckpointError
        If the file is not a readable checkpoint, or not a training checkpoint.
    """
    ckpt = serialization.load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise serialization.CheckpointError(f"{path} is a fastconv file but not a training checkpoint "
                                            f"(written by fastconv.training.save_checkpoint)")
    if ckpt["progress"] is not None:
        ckpt["progress"] = EpochProgress(**ckpt["progress"])
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild the reference CNN of a checkpoint with its trained weights.

    Parameters
    ----------
    ckpt : dict
        As returned by :func:`load_checkpoint`.

    Returns
    -------
    fastconv.nn.Sequential
        In evaluation mode, with the checkpoint's dtype.
    """
    model = reference_cnn(np.dtype(ckpt["config"]["dtype"]), rng=np.random.default_rng(0))
    model.load_state_dict(ckpt["model"])
    return model.eval()
