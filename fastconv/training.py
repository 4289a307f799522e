"""A training loop for any classification model and data set: epochs, progress, checkpoints, evaluation.

The pieces work with any :class:`fastconv.nn.Module` that maps a batch of inputs of
shape ``(B, ...)`` to ``(B, K)`` logits, trained on integer labels in ``[0, K)``:

- :func:`train_epoch` runs one epoch (or the rest of one) of forward, backward and
  optimizer steps, with a running loss and accuracy in an :class:`EpochProgress`, an
  optional :class:`ProgressBar`, hooks before and after every step (learning-rate
  schedules, periodic checkpoints) and a clean stop between two steps; a non-finite loss
  or gradient raises :class:`NonFiniteError` before the step is taken (or skips the batch);
- :class:`StopOnSignals` turns SIGINT, SIGTERM and SIGHUP into such a stop, so that a run
  preempted by a scheduler saves where it is and exits with ``128 + signum``;
- :func:`save_checkpoint`, :func:`load_checkpoint` and :func:`restore_checkpoint` save
  and restore a run (model, optimizer, shuffling and dropout generators, history, a
  partly done epoch) so that it resumes bitwise exactly where it stopped; given a
  :class:`CheckpointFiles` they keep the last K files and resume from the newest one that
  reads; they never write NaN or infinite weights;
- :func:`evaluate` gives the loss, accuracy and predictions on a test set, in evaluation
  mode; :mod:`fastconv.metrics` turns the predictions into a confusion matrix;
- :func:`warm_up` compiles the kernels before timing, and :func:`to_json` writes metrics.

What belongs to one data set or network lives elsewhere: MNIST's loading and
preprocessing in :mod:`fastconv.datasets`, the reference CNN in :mod:`fastconv.models`,
and the command line in ``scripts/train_mnist.py`` and ``scripts/predict.py``. For
example, on MNIST (the training loop stays in Python and calls one compiled kernel per
layer per step)::

    import numpy as np
    from fastconv import nn, optim
    from fastconv.datasets import load_mnist, preprocess_mnist
    from fastconv.models import reference_cnn
    from fastconv.training import evaluate, train_epoch

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train, x_test = preprocess_mnist(x_train), preprocess_mnist(x_test)
    rng = np.random.default_rng(0)
    model = reference_cnn(rng=rng)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        stats = train_epoch(model, nn.CrossEntropyLoss(), opt, x_train, y_train,
                            rng.permutation(len(x_train)), batch_size=64)
        print(epoch + 1, stats.loss, evaluate(model, x_test, y_test).accuracy)

A loop that survives preemption, crashes and divergence (what ``scripts/train_mnist.py``
does; the guide's "Training that survives interruptions" section explains it)::

    files = CheckpointFiles("ck.npz", keep=2)
    with StopOnSignals() as stop:
        for epoch in range(3):
            order = rng.permutation(len(x_train))
            progress = EpochProgress()
            def every_100_steps(p):
                if p.batch % 100 == 0:
                    save_checkpoint(files, model, opt, rng, config, history, epoch, order, p)
            train_epoch(model, loss_fn, opt, x_train, y_train, order, 64, progress=progress,
                        should_stop=stop, after_step=every_100_steps)   # may raise NonFiniteError
            if stop():
                save_checkpoint(files, model, opt, rng, config, history, epoch, order, progress)
                raise SystemExit(stop.exit_code)
            history.append({"loss": progress.loss})
            save_checkpoint(files, model, opt, rng, config, history, epoch + 1)
"""

import importlib
import json
import math
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from . import metrics, nn, serialization
from ._signals import DEFAULT_SIGNALS, SignalAbort, StopOnSignals
from .checkpoint import CheckpointFiles, find_nonfinite

__all__ = [
    "CHECKPOINT_KIND",
    "DEFAULT_SIGNALS",
    "CheckpointFiles",
    "EpochProgress",
    "Evaluation",
    "NonFiniteError",
    "ProgressBar",
    "SignalAbort",
    "StopOnSignals",
    "evaluate",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "to_json",
    "train_epoch",
    "warm_up",
]


def warm_up(model, x):
    """Compile every kernel the model uses (forward, backward, no-grad forward) before timing.

    Runs a forward and backward pass on the first two samples and clears the gradients
    afterwards; the parameters and the buffers (e.g. batch norms' running statistics,
    which a training-mode forward updates) are put back as they were, so training is
    unaffected.

    Parameters
    ----------
    model : fastconv.nn.Module
    x : numpy.ndarray, shape (N, ...)
        Model inputs, as for :func:`train_epoch` (only ``x[:2]`` is used).

    Returns
    -------
    float
        Seconds spent (mostly Numba compilation, or loading it from the disk cache).
    """
    start = time.perf_counter()
    was_training = model.training
    buffers = [(b, b.copy()) for b in model.buffers()]
    model.train()
    out = model(x[:2])
    model.backward(np.ones_like(out), input_grad=False)
    model.zero_grad()
    with nn.no_grad():
        model.eval()(x[:2])
    model.train(was_training)
    for b, saved in buffers:
        b[...] = saved
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
        Sum over the samples seen of their loss (batch mean times batch size).
    correct : int
        Samples seen so far that were classified correctly (before the step on their batch).
    seen : int
        Samples seen so far.
    seconds : float
        Training time spent in this epoch so far (summed over interrupted sessions).
    loss_curve : list of [float, float]
        ``[fraction of the epoch done, mean loss since the previous point]`` points.
    curve_mark : [float, int]
        ``loss_sum`` and ``seen`` at the last point of ``loss_curve``.
    skipped : int
        Batches skipped because their loss or gradient was not finite
        (``train_epoch(..., nonfinite="skip")``); they count in ``batch`` but not in
        ``seen``, ``loss_sum`` or ``correct``.
    """

    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    loss_curve: list = field(default_factory=list)
    curve_mark: list = field(default_factory=lambda: [0.0, 0])
    skipped: int = 0

    @property
    def loss(self):
        """Mean training loss over the samples seen (nan before the first batch)."""
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def accuracy(self):
        """Fraction of the samples seen that were classified correctly."""
        return self.correct / self.seen if self.seen else float("nan")

    @property
    def images_per_second(self):
        return self.seen / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


class NonFiniteError(FloatingPointError):
    """A loss, gradient or weight is NaN or infinite: training stops rather than go on with it.

    Raised by :func:`train_epoch` before the optimizer step on the offending batch (so the
    model and optimizer still hold the finite state after the previous batch and the
    epoch's ``progress`` stands at that batch), and by :func:`save_checkpoint` instead of
    writing non-finite weights (the file on disk is left as it was).

    Attributes
    ----------
    batch : int or None
        0-based index of the batch within the epoch (``None`` from :func:`save_checkpoint`).
    indices : numpy.ndarray or None
        The samples of that batch (positions in ``x``).
    what : str
        ``"loss"``, ``"gradient of <parameter>"`` or where in the checkpoint the value is.
    """

    def __init__(self, message, batch=None, indices=None, what=""):
        super().__init__(message)
        self.batch, self.indices, self.what = batch, indices, what


def _describe_samples(idx, shown=8):
    listed = ", ".join(str(int(i)) for i in idx[:shown])
    return f"[{listed}{', ...' if len(idx) > shown else ''}] ({len(idx)} samples)"


def _nonfinite_gradient(model):
    """``"gradient of <name>"`` for the first parameter whose gradient holds a NaN or infinity, else None."""
    for name, p in model.named_parameters():
        if not np.isfinite(p.grad).all():
            return f"gradient of {name}"
    return None


_NONFINITE_MODES = ("raise", "skip")


def train_epoch(model, loss_fn, optimizer, x, y, order, batch_size, progress=None, should_stop=None,
                bar=None, before_step=None, curve_every=None, after_step=None, nonfinite="raise", replicas=None,
                transform=None):
    """Run (the rest of) one training epoch: forward, backward and an optimizer step per batch.

    Works for any classification model: ``model(x[idx])`` must give ``(B, K)`` logits for
    a batch of ``B`` samples, and the running accuracy counts ``argmax`` of the logits
    equal to the label.

    Parameters
    ----------
    model : fastconv.nn.Module
        Maps ``(B, ...)`` inputs to ``(B, K)`` logits; put in training mode. Its
        ``backward(dlogits, input_grad=False)`` fills the parameter gradients (as
        :meth:`fastconv.nn.Sequential.backward` does).
    loss_fn : fastconv.nn.CrossEntropyLoss or alike
        ``loss_fn(logits, labels)`` returns the batch's mean loss and then
        ``loss_fn.backward()`` its gradient with respect to the logits.
    optimizer : fastconv.optim optimizer over ``model.parameters()``
    x : numpy.ndarray, shape (N, ...)
        The training inputs, in the model's dtype (e.g. images ``(N, C, H, W)``
        preprocessed by :func:`fastconv.datasets.preprocess_mnist`).
    y : numpy.ndarray of int, shape (N,)
        Class labels in ``[0, K)``.
    order : numpy.ndarray of int, shape (N,)
        The epoch's permutation of ``range(N)``; batch ``k`` is
        ``order[k * batch_size:(k + 1) * batch_size]`` (the last one may be smaller).
    batch_size : int
    progress : EpochProgress, optional
        State of a partly done epoch to continue (it is updated in place); ``None``
        starts at batch 0.
    should_stop : callable, optional
        Called after every batch but the epoch's last; when it returns True the epoch
        stops there, with the model, optimizer and ``progress`` consistent (pass a
        :class:`StopOnSignals` to stop on Ctrl-C, SIGTERM and SIGHUP).
    bar : ProgressBar, optional
        Updated after every batch with the running loss, accuracy and images/s.
    before_step : callable, optional
        ``before_step(k)`` is called before batch ``k`` (0-based within the epoch), e.g.
        to set the learning rate of a schedule.
    curve_every : int, optional
        Record a point of ``progress.loss_curve`` every this many batches (default:
        about 20 points per epoch).
    after_step : callable, optional
        ``after_step(progress)`` is called after every batch (``progress.batch`` of them
        done), with the model, optimizer and ``progress`` consistent: the place for a
        checkpoint every N steps (``save_checkpoint(..., order, progress)`` there resumes
        exactly). Its time is not counted in ``progress.seconds``.
    nonfinite : {"raise", "skip"}, default "raise"
        What a NaN or infinite loss or parameter gradient does. ``"raise"``: raise
        :class:`NonFiniteError` naming the batch and its samples, before the optimizer
        step, so the model and optimizer keep the finite state of the batch before and
        ``progress`` stands there. ``"skip"``: leave the parameters and the optimizer
        unchanged on that batch, count it in ``progress.skipped`` and go on.
    replicas : fastconv.distributed.Replicas, optional
        Data-parallel training over MPI ranks: ``batch_size`` is the global batch, each
        rank computes the gradient of its shard of it, and :meth:`Replicas.synchronize
        <fastconv.distributed.Replicas.synchronize>` turns that into the gradient of the
        whole batch before every optimizer step; ``progress`` then counts the images and
        loss of all ranks, and a non-finite loss or gradient on any rank stops (or skips the
        batch on) every rank alike. Every rank must call this with the same ``order``.
    transform : callable, optional
        Data augmentation: ``transform(x[idx])`` gives the inputs of the batch ``idx``
        (same shape and dtype), e.g. a ``fastconv.transforms.Compose`` of random crops
        and flips. It sees the whole global batch on every rank (each rank then takes its
        shard), so a transform drawing from a generator seeded alike on every rank stays
        in step across ranks, and a generator saved in a checkpoint resumes exactly.

    Returns
    -------
    EpochProgress
        ``progress.batch == ceil(N / batch_size)`` if the epoch finished.

    Raises
    ------
    NonFiniteError
        With ``nonfinite="raise"``, on the first batch whose loss or gradient is not finite.
    """
    n = len(order)
    if len(x) != len(y):
        raise ValueError(f"train_epoch: x has {len(x)} images but y has {len(y)} labels")
    if n != len(x):
        raise ValueError(f"train_epoch: order has {n} entries but there are {len(x)} images")
    if nonfinite not in _NONFINITE_MODES:
        raise ValueError(f"train_epoch: nonfinite must be 'raise' or 'skip'; got {nonfinite!r}")
    progress = EpochProgress() if progress is None else progress
    n_batches = -(-n // batch_size)
    curve_every = max(1, round(n_batches / 20)) if curve_every is None else curve_every
    model.train()
    for k in range(progress.batch, n_batches):
        start = time.perf_counter()
        idx = order[k * batch_size:(k + 1) * batch_size]
        n_batch = len(idx)
        xb = None if transform is None else transform(x[idx])  # the global batch (see transform)
        if replicas is not None:  # [distributed] this rank's shard of the global batch
            part = replicas.shard(np.arange(n_batch))
            idx, xb = idx[part], None if xb is None else xb[part]
        xb, yb = (x[idx] if xb is None else xb), y[idx]
        if before_step is not None:
            before_step(k)
        model.zero_grad()
        loss, correct, bad = 0.0, 0, None
        if len(idx):  # [distributed] empty on a rank whose shard of a short last batch is empty
            logits = model(xb)
            loss = float(loss_fn(logits, yb))
            bad = "loss" if not math.isfinite(loss) else None
            if bad is None:
                model.backward(loss_fn.backward(), input_grad=False)
                bad = _nonfinite_gradient(model)
                correct = int(np.count_nonzero(logits.argmax(axis=1) == yb))
        # [distributed] every rank takes the same decision, before the collective gradient average.
        if replicas is not None and replicas.world.any(bad is not None):
            bad = bad or "loss or gradient on another process"
        if bad is not None and nonfinite == "raise":
            progress.seconds += time.perf_counter() - start
            model.zero_grad()
            state = f"after batch {k - 1}" if k else "from before this epoch"
            raise NonFiniteError(
                f"train_epoch: non-finite {bad} at batch {k} of {n_batches} (0-based, step {k + 1} of this epoch), "
                f"samples {_describe_samples(idx)}; the step was not taken: the model and optimizer hold the state "
                f"{state}. Lower the learning rate, or pass nonfinite='skip' to skip such batches",
                batch=k, indices=np.array(idx), what=bad)
        if bad is None:
            loss_sum = loss * len(idx)
            if replicas is not None:  # [distributed] the global batch's gradient, loss sum and correct count
                loss_sum, correct = replicas.synchronize(len(idx), n_batch, loss_sum, correct)
            optimizer.step()
            progress.loss_sum += loss_sum
            progress.correct += correct
            progress.seen += n_batch
        else:
            model.zero_grad()
            progress.skipped += 1
        progress.batch = k + 1
        at_point = progress.batch % curve_every == 0 or progress.batch == n_batches
        if at_point and progress.seen > progress.curve_mark[1]:  # (a window of skipped batches has no point)
            mark_loss, mark_seen = progress.curve_mark
            window = (progress.loss_sum - mark_loss) / (progress.seen - mark_seen)
            progress.loss_curve.append([progress.batch / n_batches, window])
            progress.curve_mark = [progress.loss_sum, progress.seen]
        progress.seconds += time.perf_counter() - start
        if bar is not None:
            bar.update(1, loss=f"{progress.loss:.4f}", acc=f"{100 * progress.accuracy:.2f}%",
                       img_s=f"{progress.seen / progress.seconds:.0f}")
        if after_step is not None:
            after_step(progress)
        if should_stop is not None and k + 1 < n_batches and should_stop():
            break
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
        Predicted class of each sample (``argmax`` of its logits).
    seconds : float
        Wall time of the evaluation.
    """

    loss: float
    accuracy: float
    predictions: np.ndarray
    seconds: float


def evaluate(model, x, y, batch_size=1000):
    """Cross-entropy loss, accuracy and predictions of a classifier on ``(x, y)``, in evaluation mode.

    Parameters
    ----------
    model : fastconv.nn.Module
        Maps ``(B, ...)`` inputs to ``(B, K)`` logits; left in evaluation mode.
    x : numpy.ndarray, shape (N, ...)
        Inputs, in the model's dtype.
    y : numpy.ndarray of int, shape (N,)
        Class labels in ``[0, K)``.
    batch_size : int
        Samples per forward pass (memory only; results do not depend on it).

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


#: Value of the ``"kind"`` entry of a training checkpoint.
CHECKPOINT_KIND = "fastconv.training/checkpoint"
#: Kinds written by earlier versions, in the same format: :func:`load_checkpoint` reads them too.
#: ("fastconv.training/mnist": before the training loop was separated from the MNIST example.)
_EARLIER_CHECKPOINT_KINDS = ("fastconv.training/mnist",)


def _generator_states(model):
    """Bit-generator states of the random streams a model draws from while training (dropout masks).

    ``"fastconv.nn.default"``: the module-wide default generator (:func:`fastconv.nn.manual_seed`);
    ``"module:<name>"``: a submodule's own generator (``Dropout(rng=...)``).
    """
    states = {"fastconv.nn.default": nn.default_generator().bit_generator.state}
    for name, module in model.named_modules():
        own = getattr(module, "_rng", None)
        if isinstance(own, np.random.Generator):
            states[f"module:{name}"] = own.bit_generator.state
    return states


def _restore_generators(model, states):
    modules = dict(model.named_modules())
    for key, state in states.items():
        if key == "fastconv.nn.default":
            nn.default_generator().bit_generator.state = state
        elif key.startswith("module:") and isinstance(getattr(modules.get(key[7:]), "_rng", None),
                                                      np.random.Generator):
            modules[key[7:]]._rng.bit_generator.state = state


def save_checkpoint(path, model, optimizer, rng, config, history, epoch, order=None, progress=None):
    """Save a training checkpoint atomically (via :func:`fastconv.serialization.save`); never non-finite weights.

    Parameters
    ----------
    path : str, os.PathLike or CheckpointFiles
        The file; a :class:`CheckpointFiles` keeps its predecessors (``ck.1.npz``, ...)
        as well.
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

    Returns
    -------
    pathlib.Path or str
        Where it was written.

    Raises
    ------
    NonFiniteError
        A weight or an optimizer state holds NaN or infinity; nothing is written, and the
        files on disk stay as they were.

    Notes
    -----
    The file holds ``kind``, ``config``, ``model`` (state dict), ``optimizer`` (state dict),
    ``rng``, ``generators`` (the dropout streams: see :func:`restore_checkpoint`),
    ``history``, ``epoch``, ``order`` and ``progress`` (``None`` at an epoch boundary).
    No pickle: see :mod:`fastconv.serialization`.
    """
    if (order is None) != (progress is None):
        raise ValueError("save_checkpoint: order and progress go together (both or neither)")
    state = {"kind": CHECKPOINT_KIND, "config": dict(config), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state, "history": list(history),
             "epoch": int(epoch), "order": order, "progress": None if progress is None else asdict(progress),
             "generators": _generator_states(model)}
    for part in ("model", "optimizer"):
        where = find_nonfinite(state[part])
        if where is not None:
            raise NonFiniteError(f"save_checkpoint: refusing to save NaN or infinite values ({part}{where}); "
                                 f"{path} was left as it was", what=f"{part}{where}")
    if isinstance(path, CheckpointFiles):
        return path.save(state)
    serialization.save(state, path)
    return path


def load_checkpoint(path):
    """Load a checkpoint written by :func:`save_checkpoint`, of this version or an earlier one.

    Parameters
    ----------
    path : str, os.PathLike or CheckpointFiles
        A :class:`CheckpointFiles` gives the newest of its files that reads as a training
        checkpoint; its ``loaded`` and ``skipped`` attributes say which one and why the
        newer ones were passed over.

    Returns
    -------
    dict
        The saved entries; ``"progress"`` is an :class:`EpochProgress` or ``None``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (none of the files, for a :class:`CheckpointFiles`).
    fastconv.serialization.CheckpointError
        If the file is not a readable checkpoint, or not a training checkpoint.
    """
    if isinstance(path, CheckpointFiles):
        return path.load(load_checkpoint)
    ckpt = serialization.load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in (CHECKPOINT_KIND, *_EARLIER_CHECKPOINT_KINDS):
        raise serialization.CheckpointError(f"{path} is a fastconv file but not a training checkpoint "
                                            f"(written by fastconv.training.save_checkpoint)")
    if ckpt["progress"] is not None:
        ckpt["progress"] = EpochProgress(**ckpt["progress"])
    return ckpt


def restore_checkpoint(ckpt, model, optimizer, rng):
    """Put a loaded checkpoint's state back into ``model``, ``optimizer``, ``rng`` and the dropout generators.

    After it, training from ``ckpt["epoch"]`` (and ``ckpt["order"]``/``ckpt["progress"]``
    for a partly done epoch) continues bitwise as the saved run would have (same thread
    count).

    Parameters
    ----------
    ckpt : dict
        From :func:`load_checkpoint`.
    model : fastconv.nn.Module
        Built as for the saved run; its state dict is loaded (checked first).
    optimizer : fastconv.optim.Optimizer
        Over ``model.parameters()``.
    rng : numpy.random.Generator
        The shuffling generator; gets the saved state.
    """
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.bit_generator.state = ckpt["rng"]
    _restore_generators(model, ckpt.get("generators", {}))  # absent in checkpoints of earlier versions


# ---------------------------------------------------------------------------------------
# Names that moved out of this module: deprecated aliases, kept for one release
# ---------------------------------------------------------------------------------------


def _confusion_matrix_of_ten(y_true, y_pred, num_classes=10):
    # The old fastconv.training.confusion_matrix defaulted to MNIST's 10 classes; the new one infers them.
    return metrics.confusion_matrix(y_true, y_pred, num_classes)


#: Old name -> (new module, new name).
_MOVED = {
    "MNIST_MEAN": ("fastconv.datasets", "MNIST_MEAN"),
    "MNIST_STD": ("fastconv.datasets", "MNIST_STD"),
    "preprocess": ("fastconv.datasets", "preprocess_mnist"),
    "reference_cnn": ("fastconv.models", "reference_cnn"),
    "model_from_checkpoint": ("fastconv.models", "reference_cnn_from_checkpoint"),
    "confusion_matrix": ("fastconv.metrics", "confusion_matrix"),
    "format_confusion_matrix": ("fastconv.metrics", "format_confusion_matrix"),
}


def __getattr__(name):
    """The moved names, with a DeprecationWarning that says where they are now."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = _MOVED[name]
    warnings.warn(f"fastconv.training.{name} is deprecated: use {module}.{new} (this alias will be removed "
                  "in the next release)", DeprecationWarning, stacklevel=2)
    if name == "confusion_matrix":
        return _confusion_matrix_of_ten
    return getattr(importlib.import_module(module), new)
