#!/usr/bin/env python
"""Train the reference CNN on MNIST with PyTorch CPU: the baseline for ``train_mnist.py``.

The same run as ``scripts/train_mnist.py`` with its defaults, in PyTorch: the same
network, starting from the same initial weights (``fastconv.models.reference_cnn`` with
the same seed, converted by ``fastconv.models.to_torch``), the same preprocessing,
shuffling, batch size, SGD with momentum and cosine learning-rate schedule, and the same
thread count. Only the engine differs, so the epoch times and images/s of the two scripts
compare directly.
Epoch time counts the training steps only, as ``train_mnist.py`` does (not the test
evaluation).

Needs PyTorch (``pip install torch``); it is not a dependency of fastconv.

Example::

    python scripts/torch_mnist_baseline.py --epochs 3 --metrics-out torch_metrics.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from fastconv import functional
from fastconv.datasets import load_mnist, preprocess_mnist
from fastconv.models import reference_cnn, to_torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="default: 3")
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default: 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="default: 0.9")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the thread count fastconv would use, i.e. all cores)")
    p.add_argument("--data-dir", type=Path, default=None, help="as for train_mnist.py")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--metrics-out", type=Path, default=None, help="write per-epoch metrics as JSON")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: PyTorch is not installed (pip install torch); this baseline needs it", file=sys.stderr)
        return 1
    threads = args.threads or functional.get_num_threads()
    torch.set_num_threads(threads)
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_train, x_test = preprocess_mnist(x_train), preprocess_mnist(x_test)

    rng = np.random.default_rng(args.seed)  # the same stream as train_mnist.py: weights, then shuffles
    model = to_torch(reference_cnn(np.float32, rng=rng))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))
    n_batches = -(-len(x_train) // args.batch_size)
    total_steps = args.epochs * n_batches
    print(f"PyTorch {torch.__version__}, {threads} threads: training on {len(x_train)} images, "
          f"batch size {args.batch_size}, sgd lr={args.lr:g} (cosine)", flush=True)
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        model.train()
        loss_sum = correct = 0
        start = time.perf_counter()
        for k in range(n_batches):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            xb, yb = torch.from_numpy(x_train[idx]), torch.from_numpy(y_train[idx].astype(np.int64))
            for group in opt.param_groups:
                group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * (epoch * n_batches + k) / total_steps))
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == yb).sum())
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            test_acc = float(np.mean([(model(xt[i:i + 1000]).argmax(dim=1) == yt[i:i + 1000]).float().mean()
                                      for i in range(0, len(xt), 1000)]))
        record = {"epoch": epoch + 1, "train_loss": loss_sum / len(x_train), "train_accuracy": correct / len(x_train),
                  "test_accuracy": test_acc, "epoch_seconds": seconds, "images_per_second": len(x_train) / seconds}
        history.append(record)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f}, "
              f"train acc {100 * record['train_accuracy']:.2f}%, test acc {100 * test_acc:.2f}%, "
              f"{seconds:.1f} s, {record['images_per_second']:.0f} images/s", flush=True)
    print(f"final test accuracy {100 * history[-1]['test_accuracy']:.2f}%; "
          f"mean {np.mean([h['images_per_second'] for h in history]):.0f} images/s")
    if args.metrics_out is not None:
        args.metrics_out.write_text(json.dumps({
            "epochs": history, "test_accuracy": history[-1]["test_accuracy"],
            "images_per_second": float(np.mean([h["images_per_second"] for h in history])),
            "torch": torch.__version__, "threads": threads}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
