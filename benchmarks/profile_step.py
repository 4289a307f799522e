"""Where one training step of the reference MNIST CNN goes, layer by layer, beside PyTorch's step.

Usage (from the repository root)::

    python benchmarks/profile_step.py [--batch 64] [--steps 40] [--threads 2] [--model resnet]

``--model resnet`` profiles ``train_mnist.py --model resnet``'s network instead (ResNet-8 of
width 16 on 28x28 digits, ``--depth``/``--width`` to change it; SGD as in the reference
profile); its rows are the top-level layers: stem, the three stages, pooling, classifier.

Prints the median time of each layer's forward and backward pass over ``--steps`` steps
(the model run layer by layer, exactly as ``Sequential`` runs it), the SGD update, the
minor page faults per step (fresh memory the step touched), and the whole step's median
next to PyTorch's on the same weights and batch (when torch is installed). The batch is
real MNIST when ``FASTCONV_DATA_DIR`` points at it (PyTorch's step is faster on real
digits than on noise), else standard-normal noise.
"""

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastconv  # noqa: E402
from benchmarks.training import LR, MOMENTUM, make_batch  # noqa: E402
from fastconv import nn, optim  # noqa: E402
from fastconv.models import reference_cnn, resnet, to_torch  # noqa: E402


def _batch(batch):
    try:
        from fastconv.datasets import load_mnist, preprocess_mnist
        (x, y), _ = load_mnist(download=False, progress=False)
    except Exception:  # no data set here: noise
        return make_batch(batch)
    return preprocess_mnist(x[:batch]), y[:batch].astype(np.int64)


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_methods(model, times):
    """Wrap each layer's passes (an instance attribute shadows the method) to time them.

    Sequential's fused calls (``_forward`` with the ReLU, ``_backward`` with the ReLU's
    mask) are timed under the layer that runs them; the ReLU it absorbs then shows no time.
    """
    for i, m in enumerate(model):
        name = f"{i} {type(m).__name__}"
        for phase in ("forward", "backward"):
            # A layer's plain pass calls its fusable one (Conv2d.forward calls _forward): wrap that.
            method = "_" + phase if hasattr(m, "_" + phase) else phase

            def wrapper(*a, _f=getattr(m, method), _k=(phase, name), **kw):
                t = time.perf_counter()
                out = _f(*a, **kw)
                times.setdefault(_k, []).append(time.perf_counter() - t)
                return out
            setattr(m, method, wrapper)


def build(args):
    """The profiled network, in fastconv (the same weights for both engines)."""
    if args.model == "resnet":
        return resnet(args.depth, args.width, in_channels=1, rng=0)
    return reference_cnn(rng=0)


def profile_fastconv(model, x, y, steps):
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    times = {}
    _timed_methods(model, times)
    faults, steps_t, sgd = [], [], []
    for _ in range(steps + 3):
        f0, t0 = _faults(), time.perf_counter()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        sgd.append(time.perf_counter() - t1)
        steps_t.append(time.perf_counter() - t0)
        faults.append(_faults() - f0)
    per_step = {k: statistics.median(v[-steps:]) for k, v in sorted(times.items(), key=_order)}
    per_step["sgd", ""] = statistics.median(sgd[3:])
    per_step["step", ""] = statistics.median(steps_t[3:])
    return per_step, statistics.median(faults[3:])


def _order(item):
    (phase, name), _ = item
    i = int(name.split()[0])
    return (0, i) if phase == "forward" else (1, -i)


def torch_step_time(model, x, y, steps):
    try:
        import torch
    except ImportError:
        return None
    model = to_torch(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    times = []
    for _ in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(xt), yt).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", choices=["reference", "resnet"], default="reference")
    p.add_argument("--depth", type=int, default=8, help="resnet only (default: 8)")
    p.add_argument("--width", type=int, default=16, help="resnet only (default: 16)")
    args = p.parse_args(argv)
    fastconv.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    x, y = _batch(args.batch)
    times, faults = profile_fastconv(build(args), x, y, args.steps)
    time.sleep(0.2)  # let fastconv's threads settle before torch's pool runs
    t_torch = torch_step_time(build(args), x, y, args.steps)
    what = "reference CNN" if args.model == "reference" else f"ResNet-{args.depth} (width {args.width})"
    print(f"{what}, batch {args.batch}, {args.threads} threads, median of {args.steps} steps (ms)")
    for (phase, name), t in times.items():
        if phase != "step":
            print(f"  {phase:9s} {name:18s} {1e3 * t:7.3f}")
    step = times["step", ""]
    print(f"  step (fastconv)              {1e3 * step:7.3f}   minor page faults per step: {faults:.0f}")
    if t_torch is not None:
        print(f"  step (torch)                 {1e3 * t_torch:7.3f}   fastconv/torch time {step / t_torch:.2f}")


if __name__ == "__main__":
    main()
