#!/usr/bin/env python
"""Train a ResNet on CIFAR-10 with fastconv, with random crops and horizontal flips.

``scripts/train_mnist.py --dataset cifar10 --model resnet`` under its own name: every
flag of train_mnist.py works the same (checkpoints, ``--resume``, metrics, plots, signals,
MPI; see ``python scripts/train_mnist.py --help``). The defaults here: ResNet-20
(``--depth 20 --width 16``, 272,474 parameters), ``--augment`` (4-pixel random crops and
flips, drawn from the ``--seed`` stream), 5 epochs of batch 128, SGD with Nesterov
momentum 0.9, lr 0.1, weight decay 5e-4, cosine schedule. He et al. train 164 epochs;
pass ``--epochs`` for a longer run. ``fastconv.datasets.load_cifar10`` reads (and on
first use downloads) the official binary tarball.

Examples
--------
::

    python scripts/train_cifar10.py --epochs 30 --checkpoint cifar.npz --metrics-out cifar.json
    python scripts/train_cifar10.py --checkpoint cifar.npz --epochs 30 --resume
    python scripts/predict.py cifar.npz
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_mnist  # noqa: E402

FLAGS = ["--dataset", "cifar10", "--model", "resnet"]


def main(argv=None):
    """train_mnist.main with ``--dataset cifar10 --model resnet`` before ``argv`` (later flags win)."""
    return train_mnist.main(FLAGS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    with train_mnist.distributed.world().abort_on_exception():
        code = main()
    sys.exit(code)
