"""BatchNorm2d forward and backward, fastconv vs PyTorch, side by side in one process.

    PYTHONPATH=$PWD python benchmarks/bench_norm.py [--shape 32 64 56 56] [--threads 2] [--repeat 20]

Training mode (batch statistics, running statistics updated), float32. Prints the median
time of each pass and fastconv's time divided by torch's (<= 1.0 is the goal).
"""

import argparse
import time

import numpy as np


def _median_ms(fn, repeat):
    fn()  # warm-up (compilation, allocation)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 64, 56, 56))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    import fastconv as fc
    from fastconv import nn

    torch.set_num_threads(args.threads)
    fc.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape).astype(np.float32)
    dy = rng.standard_normal(args.shape).astype(np.float32)
    C = args.shape[1]

    layer = nn.BatchNorm2d(C)
    tlayer = torch.nn.BatchNorm2d(C)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)
    out = {}

    def torch_forward():
        out["t"] = tlayer(tx)

    def torch_backward():
        tx.grad = None
        out["t"].backward(tdy, retain_graph=True)

    rows = [
        ("forward", lambda: layer(x), torch_forward),
        ("backward", lambda: layer.backward(dy), torch_backward),
    ]
    layer(x)
    torch_forward()
    print(f"BatchNorm2d training, x{tuple(args.shape)} float32, {args.threads} threads, median of {args.repeat}")
    print(f"{'pass':10s} {'fastconv ms':>12s} {'torch ms':>10s} {'ratio':>7s}")
    for name, ours, theirs in rows:
        a, b = _median_ms(ours, args.repeat), _median_ms(theirs, args.repeat)
        print(f"{name:10s} {a:12.2f} {b:10.2f} {a / b:7.2f}x")


if __name__ == "__main__":
    main()
