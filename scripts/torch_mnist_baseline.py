#!/usr/bin/env python
"""Train the reference CNN or a ResNet on MNIST with PyTorch CPU: the baseline for ``train_mnist.py``.

The same run as ``scripts/train_mnist.py`` with the same flags, in PyTorch: the same
network (``--model``, ``--depth``, ``--width``: built by train_mnist.py's own code with the
same seed, so from the same initial weights, and converted by
``fastconv.models.to_torch``), the same data set, preprocessing, shuffling, augmentation
(drawn from the same stream), batch size, optimizer (SGD with momentum, Nesterov and weight
decay as the model's defaults say, or Adam), cosine learning-rate schedule, and the same
thread count. Only the engine differs, so the epoch times and images/s of the two scripts
compare directly. The per-model defaults are train_mnist.py's (``--model resnet``: 5
epochs, batch 128, lr 0.1, Nesterov, weight decay 5e-4, random 2-pixel shifts).
Epoch time counts the training steps only, as ``train_mnist.py`` does (not the test
evaluation).

Needs PyTorch (``pip install torch``); it is not a dependency of fastconv. On CPUs without AVX-512, PyTorch
2.13's oneDNN corrupts memory (a crash, or ``free(): invalid size``) in the backward pass of a 1x1 stride-2
convolution with fewer than 8 input channels: ``--model resnet --width`` below 8 there.

Example::

    python scripts/torch_mnist_baseline.py --epochs 3 --metrics-out torch_metrics.json
    python scripts/torch_mnist_baseline.py --model resnet --metrics-out torch_resnet.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from fastconv import functional
from fastconv.datasets import load_mnist
from fastconv.models import to_torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_mnist as fastconv_run  # noqa: E402  the flags, defaults, data and network of the fastconv run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fastconv_run.add_run_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the thread count fastconv would use, i.e. all cores)")
    p.add_argument("--data-dir", type=Path, default=None, help="as for train_mnist.py")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--metrics-out", type=Path, default=None, help="write per-epoch metrics as JSON")
    args = p.parse_args(argv)
    fastconv_run.complete_run_arguments(p, args)
    return args


def make_optimizer(torch, model, args):
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                               weight_decay=args.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: PyTorch is not installed (pip install torch); this baseline needs it", file=sys.stderr)
        return 1
    threads = args.threads or functional.get_num_threads()
    torch.set_num_threads(threads)
    (x_train, y_train), (x_test, y_test) = fastconv_run.load_data(args, np.dtype(np.float32), mnist=load_mnist)

    rng = np.random.default_rng(args.seed)  # the same stream as train_mnist.py: weights, then shuffles (and crops)
    model = to_torch(fastconv_run.build_model(args, np.dtype(np.float32), rng))
    transform = fastconv_run.augmentation(args, rng)
    opt = make_optimizer(torch, model, args)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))
    n_batches = -(-len(x_train) // args.batch_size)
    total_steps = args.epochs * n_batches
    what = "reference CNN" if args.model == "reference" else f"ResNet-{args.depth} (width {args.width})"
    print(f"PyTorch {torch.__version__}, {threads} threads: {what} on {args.dataset}"
          f"{' (augmented)' if args.augment else ''}, training on {len(x_train)} images, "
          f"batch size {args.batch_size}, {args.optimizer} lr={args.lr:g} (cosine)", flush=True)
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        model.train()
        loss_sum = correct = 0
        start = time.perf_counter()
        for k in range(n_batches):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            xb = torch.from_numpy(x_train[idx] if transform is None else transform(x_train[idx]))
            yb = torch.from_numpy(y_train[idx].astype(np.int64))
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
