#!/usr/bin/env python
"""Train the reference CNN or a ResNet on MNIST (or Fashion-MNIST, CIFAR-10) with fastconv.

Examples
--------
Full run (downloads MNIST into the user cache on first use)::

    python scripts/train_mnist.py --checkpoint mnist.npz --metrics-out metrics.json --plot curves.png

Continue an interrupted run (Ctrl-C, SIGTERM and SIGHUP save where it stopped; so does
``--checkpoint-every N`` every N steps, keeping the previous file as ``mnist.1.npz``)::

    python scripts/train_mnist.py --checkpoint mnist.npz --resume

Smoke test on 2,000 images::

    python scripts/train_mnist.py --limit 2000 --epochs 1

A residual network (:func:`fastconv.models.resnet`, ResNet-8 of width 16 here; its own
defaults: 5 epochs, batch 128, SGD with Nesterov momentum, lr 0.1, weight decay 5e-4,
cosine schedule, random 2-pixel shifts (``--no-augment``: none)) on MNIST, or on
Fashion-MNIST::

    python scripts/train_mnist.py --model resnet --checkpoint resnet.npz
    python scripts/train_mnist.py --model resnet --dataset fashion-mnist

CIFAR-10 (ResNet-20 by default there, with random crops and flips;
``scripts/train_cifar10.py`` is this with ``--dataset cifar10``)::

    python scripts/train_mnist.py --dataset cifar10 --model resnet --epochs 30

Data-parallel on 4 processes (MPI, ``pip install 'fastconv[mpi]'``; see docs/distributed.md)::

    mpiexec -n 4 python scripts/train_mnist.py --checkpoint mnist.npz

Exit status: 0 on success, 1 for a data or checkpoint problem, 2 for bad arguments,
3 when training diverged (a NaN or infinite loss or gradient; no checkpoint is overwritten),
128 + the signal number after SIGINT (130), SIGTERM (143) or SIGHUP (129), with the
checkpoint saved.
"""

import argparse
import math
import os
import shlex
import signal
import sys
from pathlib import Path

import numpy as np

from fastconv import datasets, distributed, functional, nn, optim, serialization, training
from fastconv.datasets import CorruptFileError, load_mnist, preprocess_mnist
from fastconv.models import ARCHITECTURES

INTERRUPT_CHECKPOINT = "train_mnist_interrupted.npz"
#: --model -> the builder's name in fastconv.models.ARCHITECTURES (recorded in the checkpoint).
MODELS = {"reference": "reference_cnn", "resnet": "resnet"}
#: Per-model defaults of the flags left unset (--lr: per optimizer). The resnet ones reach >= 99.5% on MNIST
#: in 5 epochs (README, "Measured"); --depth/--width default per data set (DEFAULT_DEPTH).
MODEL_DEFAULTS = {
    "reference": {"epochs": 3, "batch_size": 64, "lr": {"sgd": 0.05, "adam": 1e-3}, "weight_decay": 0.0,
                  "nesterov": False},
    "resnet": {"epochs": 5, "batch_size": 128, "lr": {"sgd": 0.1, "adam": 1e-3}, "weight_decay": 5e-4,
               "nesterov": True},
}
DEFAULT_LR = MODEL_DEFAULTS["reference"]["lr"]
#: --dataset -> image shape; --depth and --width of the resnet default per data set.
DATASETS = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}
DEFAULT_DEPTH = {"mnist": (8, 16), "fashion-mnist": (8, 16), "cifar10": (20, 16)}
# Flags that change the trajectory of training: a resumed run must use the checkpoint's values.
TRAJECTORY_FLAGS = ("model", "architecture", "dataset", "augment", "optimizer", "lr", "momentum", "nesterov",
                    "weight_decay", "lr_schedule", "batch_size", "seed", "dtype", "limit", "synthetic")
#: The values of the flags added since, for a checkpoint of an earlier version that does not record them.
EARLIER_CONFIG = {"model": "reference_cnn", "architecture": {}, "dataset": "mnist", "augment": False,
                  "nesterov": False, "weight_decay": 0.0, "synthetic": None}
#: Exit status when training diverged.
EXIT_DIVERGED = 3
#: Test-only: "STEP:SIGNAME" makes the process send itself SIGNAME right after global step STEP
#: (1-based), so that tests can interrupt a subprocess at an exact step.
SELF_SIGNAL_ENV = "FASTCONV_TRAIN_MNIST_TEST_SIGNAL"


class ResumeError(Exception):
    """The checkpoint cannot be resumed with the given flags."""


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_run_arguments(p):
    """The flags that define the network, the data and the optimisation (shared with torch_mnist_baseline.py)."""
    p.add_argument("--model", choices=sorted(MODELS), default="reference",
                   help="reference: the reference CNN (default); resnet: He et al.'s CIFAR-style ResNet "
                        "(fastconv.models.resnet) with --depth and --width")
    p.add_argument("--depth", type=positive_int, metavar="D", default=None,
                   help="resnet depth, 6n+2 (default: 8 on MNIST and Fashion-MNIST, 20 on CIFAR-10)")
    p.add_argument("--width", type=positive_int, metavar="W", default=None,
                   help="resnet channels of the first stage (default: 16)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist", help="default: mnist")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops of the zero-padded images (4 pixels on CIFAR-10, 2 on the 28x28 sets) "
                        "and, on CIFAR-10, horizontal flips, drawn from the --seed stream (default: on for "
                        "resnet, off for reference)")
    p.add_argument("--epochs", type=positive_int, metavar="N", default=None,
                   help="total epochs to train (default: 3 for reference, 5 for resnet)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", default=None,
                   help="images per step, over all MPI processes together (default: 64 for reference, 128 "
                        "for resnet)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="default: sgd")
    p.add_argument("--lr", type=positive_float, metavar="LR", default=None,
                   help="peak learning rate (default: sgd 0.05 for reference, 0.1 for resnet; adam 0.001)")
    p.add_argument("--momentum", type=float, metavar="M", default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="SGD with Nesterov momentum (default: on for resnet, off for reference)")
    p.add_argument("--weight-decay", type=float, metavar="WD", default=None,
                   help="L2 penalty of the optimizer (default: 0 for reference, 5e-4 for resnet)")
    # Timing only: N random uint8 images of the data set's shape instead of its files (and 1,000 test images).
    p.add_argument("--synthetic", type=positive_int, metavar="N", default=None, help=argparse.SUPPRESS)


def complete_run_arguments(p, args):
    """Check those flags and fill in the per-model defaults of the ones left unset."""
    if not 0 <= args.momentum < 1:
        p.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.model != "resnet" and (args.depth is not None or args.width is not None):
        p.error("--depth and --width are for --model resnet")
    if args.model == "reference" and args.dataset == "cifar10":
        p.error("--dataset cifar10 needs --model resnet (the reference CNN is the MNIST network)")
    defaults = MODEL_DEFAULTS[args.model]
    for name in ("epochs", "batch_size", "weight_decay"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.nesterov is None:
        args.nesterov = defaults["nesterov"] and args.optimizer == "sgd" and args.momentum > 0
    if args.lr is None:
        args.lr = defaults["lr"][args.optimizer]
    if args.augment is None:
        args.augment = args.model == "resnet"
    if args.model == "resnet":
        depth, width = DEFAULT_DEPTH[args.dataset]
        args.depth = depth if args.depth is None else args.depth
        args.width = width if args.width is None else args.width
        if (args.depth - 2) % 6 or args.depth < 8:
            p.error(f"--depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {args.depth}")
    if not args.weight_decay >= 0 or not math.isfinite(args.weight_decay):
        p.error(f"--weight-decay must be a number >= 0, got {args.weight_decay}")
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        p.error("--nesterov needs --optimizer sgd and a momentum > 0 (pass --no-nesterov)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train the reference CNN (conv32-pool-conv64-pool-fc128-fc10) or a ResNet on MNIST, "
                    "Fashion-MNIST or CIFAR-10 with fastconv.",
        epilog="Exit status: 0 done, 1 data/checkpoint error, 2 bad arguments, 3 diverged (NaN/inf), "
               "128+signal after SIGINT/SIGTERM/SIGHUP (130/143/129; checkpoint saved).")
    add_run_arguments(p)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: decay the learning rate to 0 over all steps of --epochs (default)")
    p.add_argument("--seed", type=int, metavar="S", default=0,
                   help="seeds the initial weights and the shuffling (default: 0)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: float32")
    p.add_argument("--threads", type=positive_int, metavar="N", default=None,
                   help="threads for the kernels (default: all cores, shared out among the MPI processes on "
                        "a machine; results are bitwise reproducible for a given thread count)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", default=None,
                   help="directory holding the data set's files (default: $FASTCONV_DATA_DIR, then the cache)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    p.add_argument("--limit", type=positive_int, metavar="N", default=None,
                   help="train on the first N training images only")
    p.add_argument("--test-limit", type=positive_int, metavar="N", default=None,
                   help="evaluate on the first N test images only (for smoke tests)")
    p.add_argument("--checkpoint", type=Path, metavar="PATH", default=None,
                   help="save model, optimizer and progress here (atomically) after every epoch and on "
                        "Ctrl-C, SIGTERM or SIGHUP")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N", default=None,
                   help="also save every N steps (mid-epoch; needs --checkpoint)")
    p.add_argument("--keep-checkpoints", type=positive_int, metavar="K", default=2,
                   help="keep the K newest checkpoints: PATH, then PATH's stem.1, .2, ... (default: 2)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest readable of --checkpoint's files")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a batch whose loss or gradient is NaN/inf (counted) instead of stopping with "
                        "an error")
    p.add_argument("--metrics-out", type=Path, metavar="FILE.json", default=None,
                   help="write per-epoch metrics as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE.png", default=None,
                   help="write loss and accuracy curves as PNG (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
    args = p.parse_args(argv)
    if args.resume and args.checkpoint is None:
        p.error("--resume needs --checkpoint PATH")
    if args.checkpoint_every is not None and args.checkpoint is None:
        p.error("--checkpoint-every needs --checkpoint PATH")
    complete_run_arguments(p, args)
    return args


def architecture_of(args):
    """Keyword arguments of the model's builder in fastconv.models (recorded in the checkpoint)."""
    if args.model == "reference":
        return {}
    channels, _ = DATASETS[args.dataset]
    return {"depth": args.depth, "width": args.width, "in_channels": channels, "num_classes": 10}


def build_model(args, dtype, rng):
    """The network of ``args``, its initial weights drawn from ``rng`` (the --seed stream)."""
    return ARCHITECTURES[MODELS[args.model]](dtype=dtype, rng=rng, **architecture_of(args))


def load_data(args, dtype, mnist=None):
    """((x_train, y_train), (x_test, y_test)) of --dataset, preprocessed to ``dtype``, cut to --limit/--test-limit.

    ``mnist``: the MNIST loader (default: ``load_mnist``; the tests pass a synthetic one).
    """
    download = not getattr(args, "no_download", False)
    if getattr(args, "synthetic", None):
        (x_train, y_train), (x_test, y_test) = synthetic_data(args.synthetic, *DATASETS[args.dataset])
        preprocess = lambda x, dtype: ((x - np.float32(127.5)) / np.float32(64)).astype(dtype)  # noqa: E731
    elif args.dataset == "cifar10":
        (x_train, y_train), (x_test, y_test) = dataset_loader("load_cifar10")(args.data_dir, download=download)[:2]
        preprocess = dataset_loader("preprocess_cifar10")
    elif args.dataset == "fashion-mnist":
        (x_train, y_train), (x_test, y_test) = dataset_loader("load_fashion_mnist")(args.data_dir, download=download)
        preprocess = dataset_loader("preprocess_fashion_mnist")
    else:
        (x_train, y_train), (x_test, y_test) = (mnist or load_mnist)(args.data_dir, download=download)
        preprocess = preprocess_mnist
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_test, y_test = x_test[:getattr(args, "test_limit", None)], y_test[:getattr(args, "test_limit", None)]
    return (preprocess(x_train, dtype), y_train), (preprocess(x_test, dtype), y_test)


def synthetic_data(n, channels, side, n_test=1000):
    """``n`` (and ``n_test``) random uint8 images and labels of one shape, for timing (--synthetic)."""
    gen = np.random.default_rng(12345)
    return tuple((gen.integers(0, 256, (m, channels, side, side), dtype=np.uint8), gen.integers(0, 10, m))
                 for m in (n, n_test))


def dataset_loader(name):
    """``fastconv.datasets.<name>``, looked up when needed (the Fashion-MNIST and CIFAR-10 loaders are newer)."""
    try:
        return getattr(datasets, name)
    except AttributeError:
        raise OSError(f"this fastconv has no fastconv.datasets.{name}; update fastconv for this data set") from None


def augmentation(args, rng):
    """The --augment transform of a batch, drawing from ``rng``, or None."""
    if not args.augment:
        return None
    try:
        from fastconv import transforms
    except ImportError:
        raise OSError("--augment needs fastconv.transforms, which this fastconv does not have") from None
    channels, side = DATASETS[args.dataset]
    steps = [transforms.RandomCrop(side, padding=4 if args.dataset == "cifar10" else 2, rng=rng)]
    if args.dataset == "cifar10":
        steps.append(transforms.RandomHorizontalFlip(rng=rng))
    return transforms.Compose(steps)


def config_of(args, world):
    """The settings stored in the checkpoint and metrics (everything that defines the run)."""
    return {"model": MODELS[args.model], "architecture": architecture_of(args), "dataset": args.dataset,
            "augment": args.augment, "optimizer": args.optimizer, "lr": args.lr,
            "momentum": args.momentum if args.optimizer == "sgd" else None,
            "nesterov": args.nesterov, "weight_decay": args.weight_decay, "lr_schedule": args.lr_schedule,
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "dtype": args.dtype,
            "limit": args.limit, "test_limit": args.test_limit, "threads": functional.get_num_threads(),
            "skip_nonfinite": args.skip_nonfinite, "world_size": world.size, "synthetic": args.synthetic}


def make_optimizer(model, args):
    if args.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay)
    return optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def learning_rate(args, step, total_steps):
    """Learning rate of ``step`` (0-based) out of ``total_steps``."""
    if args.lr_schedule == "constant":
        return args.lr
    return 0.5 * args.lr * (1 + math.cos(math.pi * step / total_steps))


def checkpoint_files(args):
    """The checkpoint family of the run: --checkpoint (or the interrupt file in the cwd) and its predecessors."""
    return training.CheckpointFiles(args.checkpoint or Path(INTERRUPT_CHECKPOINT), keep=args.keep_checkpoints)


def note(world, message):
    """A note on stderr, from rank 0 only."""
    if world.is_root:
        print(message, file=sys.stderr)


def resume_command(args, path):
    """The command line that continues this run from ``path``."""
    argv = list(args.argv)
    if args.checkpoint is None:
        argv += ["--checkpoint", str(path)]
    if not args.resume:
        argv.append("--resume")
    return shlex.join(["python", sys.argv[0] if sys.argv[0].endswith(".py") else "scripts/train_mnist.py", *argv])


def self_signal_for_tests():
    """(step, signum) from $FASTCONV_TRAIN_MNIST_TEST_SIGNAL (tests only), or None."""
    spec = os.environ.get(SELF_SIGNAL_ENV)
    if not spec:
        return None
    step, name = spec.split(":")
    return int(step), getattr(signal, name)


def load_checkpoint_on_root(files, world):
    """[distributed] Rank 0 reads the newest readable checkpoint and sends it (or the error) to every rank.

    Returns ``(ckpt, path_loaded, [(path_passed_over, why), ...])``.
    """
    got = None
    if world.is_root:
        try:
            got = (training.load_checkpoint(files), files.loaded, list(files.skipped))
        except Exception as exc:  # raised below on every rank alike
            got = exc
    got = world.broadcast_object(got)
    if isinstance(got, Exception):
        raise got
    return got


def resume(files, args, model, opt, rng, world):
    """Restore the newest readable checkpoint into model, opt and rng; return (history, epoch, order, progress)."""
    ckpt, path, skipped = load_checkpoint_on_root(files, world)
    for passed, why in skipped:
        if why != "does not exist" or passed == files.path:
            note(world, f"note: not resuming from {passed}: {why}")
    saved, current = ckpt["config"], config_of(args, world)
    names = TRAJECTORY_FLAGS + (("epochs",) if args.lr_schedule != "constant" else ())
    diffs = [f"--{k.replace('_', '-')} {saved.get(k, EARLIER_CONFIG.get(k))} (checkpoint) vs {current[k]} (now)"
             for k in names if saved.get(k, EARLIER_CONFIG.get(k)) != current[k]]
    if diffs:
        raise ResumeError(f"{path} was trained with different settings; pass the same flags to resume:\n  "
                          + "\n  ".join(diffs))
    for key, what in (("threads", "threads"), ("world_size", "processes")):
        before = saved.get(key, 1 if key == "world_size" else None)  # 1 process before fastconv.distributed
        if before != current[key]:
            note(world, f"note: the checkpoint was trained with {before} {what}, now {current[key]}: "
                        "the result may differ from an uninterrupted run in the last bits")
    if ckpt["progress"] is not None and ckpt["epoch"] >= args.epochs:
        raise ResumeError(f"{path} stopped inside epoch {ckpt['epoch'] + 1}; pass --epochs {ckpt['epoch'] + 1} "
                          "or more to finish it")
    training.restore_checkpoint(ckpt, model, opt, rng)
    progress = ckpt["progress"]
    where = f"epoch {ckpt['epoch'] + 1}, batch {progress.batch}" if progress else f"the end of epoch {ckpt['epoch']}"
    older = f" (the newest readable of {files.path}'s files)" if path != files.path else ""
    print(f"resumed from {path}{older} at {where}")
    return ckpt["history"], ckpt["epoch"], ckpt["order"], progress


def summary(history, config):
    """The --metrics-out document."""
    return {"epochs": history,
            "test_accuracy": history[-1]["test_accuracy"] if history else None,
            "images_per_second": float(np.mean([h["images_per_second"] for h in history])) if history else None,
            "world_size": config.get("world_size", 1), "config": config}


def plot(history, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot written",
              file=sys.stderr)
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [h["epoch"] - 1 + f for h in history for f, _ in h["loss_curve"]]
    ax_loss.plot(xs, [loss for h in history for _, loss in h["loss_curve"]], label="train (running)")
    ax_loss.plot([h["epoch"] for h in history], [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="Loss")
    epochs = [h["epoch"] for h in history]
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")


def train(args, world):
    if args.threads is not None:
        functional.set_num_threads(args.threads)
    elif world.local_size > 1:  # [distributed] the processes on one machine share its cores
        functional.set_num_threads(max(1, functional.get_num_threads() // world.local_size))
    dtype = np.dtype(args.dtype)
    (x_train, y_train), (x_test, y_test) = load_data(args, dtype)

    rng = np.random.default_rng(args.seed)
    model = build_model(args, dtype, rng)
    transform = augmentation(args, rng)  # draws from the shuffling stream, so the checkpoint's rng resumes it
    opt = make_optimizer(model, args)
    loss_fn = nn.CrossEntropyLoss()
    config = config_of(args, world)
    history, epoch, order, progress = [], 0, None, None
    files = checkpoint_files(args)
    if args.resume:
        history, epoch, order, progress = resume(files, args, model, opt, rng, world)
    elif args.checkpoint is not None and world.is_root and files.existing():
        note(world, f"note: {args.checkpoint} exists; a new run starts (the old files move down as the new run "
                    f"saves; use --resume to continue it)")
    replicas = distributed.Replicas(model, world)  # [distributed] rank 0's parameters on every rank
    ranks = f" x {world.size} processes" if world.size > 1 else ""
    what = "reference CNN" if args.model == "reference" else f"ResNet-{args.depth} (width {args.width})"
    print(f"{what} on {args.dataset}{' (augmented)' if args.augment else ''}: training on {len(x_train)} images, "
          f"testing on {len(x_test)}, {args.dtype}, {functional.get_num_threads()} threads{ranks}, "
          f"{args.optimizer} lr={args.lr:g} ({args.lr_schedule}), batch size {args.batch_size}")

    print(f"compiling kernels (cached after the first run)... {training.warm_up(model, x_train):.1f} s", flush=True)
    n_batches = -(-len(x_train) // args.batch_size)
    total_steps = args.epochs * n_batches
    self_signal = self_signal_for_tests()

    def save(*state):
        """[distributed] Rank 0 alone writes; returns the path written (None on the other ranks)."""
        return training.save_checkpoint(files, model, opt, rng, config, history, *state) if world.is_root else None

    with training.StopOnSignals() as stop:
        stopping = lambda: world.any(stop())  # noqa: E731  [distributed] every rank stops if one was signalled
        while epoch < args.epochs:
            if progress is None:  # a fresh epoch (else: finish the interrupted one)
                order, progress = rng.permutation(len(x_train)), training.EpochProgress()
            first_step = epoch * n_batches

            def before_step(k):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(args, first_step + k, total_steps)

            def after_step(p):
                step = first_step + p.batch
                if self_signal is not None and step == self_signal[0]:
                    os.kill(os.getpid(), self_signal[1])
                if args.checkpoint_every is not None and step % args.checkpoint_every == 0 and p.batch < n_batches:
                    save(epoch, order, p)

            bar = training.ProgressBar(n_batches, f"epoch {epoch + 1}/{args.epochs}",
                                       enabled=not args.no_progress and world.is_root, initial=progress.batch)
            try:
                training.train_epoch(model, loss_fn, opt, x_train, y_train, order, args.batch_size,
                                     progress=progress, should_stop=stopping, bar=bar, before_step=before_step,
                                     after_step=after_step, nonfinite="skip" if args.skip_nonfinite else "raise",
                                     replicas=replicas, transform=transform)
            except training.NonFiniteError as exc:
                exc.where = f"epoch {epoch + 1}, step {first_step + exc.batch + 1} of the run"
                raise
            finally:
                bar.close()
            if progress.batch < n_batches:  # stopped by a signal between two steps
                saved = save(epoch, order, progress)
                note(world, f"Stopped in epoch {epoch + 1} after batch {progress.batch}/{n_batches} ({stop.name or 'signal to another process'}); "
                            f"saved this mid-epoch state to {saved}. Continue with:\n  {resume_command(args, saved)}")
                return stop.exit_code or 130  # (130 on a rank that only heard of another's signal)

            result = distributed.evaluate(model, x_test, y_test, world)
            epoch += 1
            history.append({
                "epoch": epoch, "train_loss": progress.loss, "train_accuracy": progress.accuracy,
                "test_loss": result.loss, "test_accuracy": result.accuracy,
                "epoch_seconds": progress.seconds, "images_per_second": progress.images_per_second,
                "eval_seconds": result.seconds, "loss_curve": progress.loss_curve,
                "skipped_batches": progress.skipped})
            skipped = f", {progress.skipped} non-finite batch(es) skipped" if progress.skipped else ""
            print(f"epoch {epoch}/{args.epochs}: train loss {progress.loss:.4f}, "
                  f"train acc {100 * progress.accuracy:.2f}%, test acc {100 * result.accuracy:.2f}%, "
                  f"{progress.seconds:.1f} s, {progress.images_per_second:.0f} images/s{skipped}", flush=True)
            progress = None
            stopped = stopping()  # a signal during the last step or the evaluation
            if args.checkpoint is not None or stopped:
                saved = save(epoch)
            if stopped:
                note(world, f"Stopped after epoch {epoch} ({stop.name or 'signal to another process'}); saved it to {saved}. Continue with:\n  "
                            f"{resume_command(args, saved)}")
                return stop.exit_code or 130

    if history:
        final = history[-1]
        print(f"final test accuracy {100 * final['test_accuracy']:.2f}% after {final['epoch']} epoch(s); "
              f"mean {np.mean([h['images_per_second'] for h in history]):.0f} images/s")
    if args.metrics_out is not None and world.is_root:
        args.metrics_out.write_text(training.to_json(summary(history, config)) + "\n")
        print(f"metrics written to {args.metrics_out}")
    if args.plot is not None and history and world.is_root:
        plot(history, args.plot)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    world = distributed.world()  # [distributed] the MPI world when started by mpiexec, else a world of one
    threads_before = functional.get_num_threads()
    try:
        with world.root_only_stdout():
            code = train(args, world)
        world.barrier()  # [distributed] no rank exits before rank 0 has written its files
        return code
    except training.NonFiniteError as exc:  # every rank raises it at the same step (train_epoch agrees)
        where = f" in {exc.where}" if getattr(exc, "where", None) else ""
        kept = f"; {args.checkpoint} and its predecessors are left as they were" if args.checkpoint else ""
        note(world, f"error: training diverged{where}: {exc}{kept}")
        return EXIT_DIVERGED
    except (OSError, CorruptFileError, serialization.CheckpointError, ResumeError) as exc:  # OSError: files, downloads
        print(f"error: {exc}", file=sys.stderr)
        return world.abort(1)  # [distributed] ends every rank (in a single process: returns 1)
    except KeyboardInterrupt as exc:  # a second Ctrl-C/SIGTERM/SIGHUP (SignalAbort), or one outside training
        print("Aborted; nothing saved since the last checkpoint.", file=sys.stderr)
        return world.abort(getattr(exc, "exit_code", 130))
    finally:
        functional.set_num_threads(threads_before)


if __name__ == "__main__":
    with distributed.world().abort_on_exception():  # [distributed] an exception on one rank ends the whole job
        code = main()
    sys.exit(code)  # every rank returns the same status (an error on one rank aborts inside main)
