#!/usr/bin/env python
"""Evaluate a train_mnist.py checkpoint on its data set's test set: accuracy and confusion matrix.

The checkpoint records the network (the reference CNN or a ResNet of some depth and width)
and the data set (MNIST, Fashion-MNIST or CIFAR-10); both are rebuilt from it.

Example::

    python scripts/predict.py mnist.npz
    python scripts/predict.py mnist.npz --json report.json

Exit status: 0 on success, 1 for a data or checkpoint problem, 2 for bad arguments.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from fastconv import datasets, functional, serialization, training
from fastconv.datasets import CorruptFileError, load_mnist, preprocess_mnist
from fastconv.metrics import confusion_matrix, format_confusion_matrix, per_class_recall
from fastconv.models import model_from_checkpoint

#: config["dataset"] of a checkpoint -> (loader, preprocessing) names in fastconv.datasets
DATASETS = {"fashion-mnist": ("load_fashion_mnist", "preprocess_fashion_mnist"),
            "cifar10": ("load_cifar10", "preprocess_cifar10")}


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Test accuracy and confusion matrix of a train_mnist.py checkpoint.")
    p.add_argument("checkpoint", type=Path, help="file written by train_mnist.py --checkpoint")
    p.add_argument("--data-dir", type=Path, metavar="DIR", default=None,
                   help="directory holding the data set's files (default: $FASTCONV_DATA_DIR, then the cache)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    p.add_argument("--limit", type=positive_int, metavar="N", default=None, help="use the first N test images only")
    p.add_argument("--batch-size", type=positive_int, metavar="N", default=1000,
                   help="images per forward pass (default: 1000)")
    p.add_argument("--threads", type=positive_int, metavar="N", default=None,
                   help="threads for the kernels (default: all cores)")
    p.add_argument("--json", type=Path, metavar="FILE.json", default=None, dest="json_out",
                   help="also write accuracy, confusion matrix and per-class recall as JSON")
    return p.parse_args(argv)


def test_set_functions(name):
    """(loader, preprocessing) of the data set a checkpoint was trained on."""
    if name == "mnist":
        return load_mnist, preprocess_mnist
    try:
        return tuple(getattr(datasets, f) for f in DATASETS[name])
    except (KeyError, AttributeError):
        raise serialization.CheckpointError(f"the checkpoint was trained on {name!r}, which this fastconv "
                                            "cannot load") from None


def run(args):
    if args.threads is not None:
        functional.set_num_threads(args.threads)
    ckpt = training.load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    load, preprocess = test_set_functions(ckpt["config"].get("dataset", "mnist"))
    _, (x_test, y_test) = load(args.data_dir, download=not args.no_download)[:2]
    x_test, y_test = x_test[:args.limit], y_test[:args.limit]
    x = preprocess(x_test, np.dtype(ckpt["config"]["dtype"]))
    result = training.evaluate(model, x, y_test, batch_size=args.batch_size)
    matrix = confusion_matrix(y_test, result.predictions, num_classes=10)
    state = f"after epoch {ckpt['epoch']}" + (f" + {ckpt['progress'].batch} batches" if ckpt["progress"] else "")

    print(f"checkpoint {args.checkpoint} ({state}, {ckpt['config']['dtype']})")
    print(f"test accuracy: {100 * result.accuracy:.2f}% ({int(np.trace(matrix))}/{len(y_test)}), "
          f"loss {result.loss:.4f}, {len(y_test) / result.seconds:.0f} images/s")
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion_matrix(matrix))
    if args.json_out is not None:
        recall = [None if np.isnan(r) else float(r) for r in per_class_recall(matrix)]
        report = {"checkpoint": str(args.checkpoint), "epoch": ckpt["epoch"], "images": len(y_test),
                  "test_accuracy": result.accuracy, "test_loss": result.loss,
                  "confusion_matrix": matrix.tolist(), "recall": recall}
        args.json_out.write_text(training.to_json(report) + "\n")
        print(f"report written to {args.json_out}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    threads_before = functional.get_num_threads()
    try:
        return run(args)
    except (OSError, CorruptFileError, serialization.CheckpointError) as exc:  # OSError: files, downloads
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        functional.set_num_threads(threads_before)


if __name__ == "__main__":
    sys.exit(main())
