"""ConvTranspose2d (4x4, stride 2, padding 1: the U-Net / DCGAN upsampling) and a reflect-padded Conv2d, fastconv vs
PyTorch, side by side in one process.

    PYTHONPATH=$PWD python benchmarks/bench_conv_transpose.py [--threads 2] [--repeat 10] [--rounds 3]

Layers forward and full backward (dx, dw, db), float32, in alternating blocks of calls (see
:func:`benchmarks.bench_norm._times_ms`). Prints the median and minimum time of each pass and fastconv's time
divided by torch's (issue 15's goal for the transposed 4x4 stride 2: <= 1.5x).
"""

import argparse
import os

import numpy as np

from benchmarks.bench_norm import _times_ms

#: (name, layer class, args, input shape)
CASES = [
    ("transposed 4x4 s2, 64->32, 16x16", "ConvTranspose2d", (64, 32, 4), dict(stride=2, padding=1), (16, 64, 16, 16)),
    ("transposed 4x4 s2, 128->64, 28x28", "ConvTranspose2d", (128, 64, 4), dict(stride=2, padding=1), (8, 128, 28, 28)),
    ("conv 3x3 reflect, 32->32, 28x28", "Conv2d", (32, 32, 3), dict(padding=1, padding_mode="reflect"),
     (32, 32, 28, 28)),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="calls per block (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks of each library, alternating (default 3)")
    args = parser.parse_args(argv)

    import torch

    import fastconv as fc
    from fastconv import nn
    from fastconv.models import to_torch

    torch.set_num_threads(args.threads)
    fc.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"float32, {args.threads} threads, {args.rounds} alternating blocks of {args.repeat} calls; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'case, pass':44s} {'fastconv ms':>18s} {'torch ms':>18s} {'ratio':>14s}")
    print(f"{'':44s} {'median':>9s}{'min':>9s} {'median':>9s}{'min':>9s} {'median':>7s}{'min':>7s}")
    for name, cls, positional, options, shape in CASES:
        layer = getattr(nn, cls)(*positional, **options, rng=0)
        twin = to_torch(layer)
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(layer(x).shape).astype(np.float32)
        tx, tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
        out = {}

        def torch_forward(twin=twin, tx=tx):
            out["t"] = twin(tx)

        def torch_backward(tx=tx, tdy=tdy):
            tx.grad = None
            out["t"].backward(tdy, retain_graph=True)

        def ours_backward(layer=layer, x=x, dy=dy):
            layer.backward(dy)

        for label, ours, theirs in [("forward", lambda layer=layer, x=x: layer(x), torch_forward),
                                    ("full backward", ours_backward, torch_backward)]:
            layer(x)
            torch_forward()
            a, b = _times_ms(ours, theirs, args.repeat, args.rounds)
            ma, mb = float(np.median(a)), float(np.median(b))
            print(f"{name + ', ' + label:44s} {ma:9.2f}{min(a):9.2f} {mb:9.2f}{min(b):9.2f} "
                  f"{ma / mb:6.2f}x{min(a) / min(b):6.2f}x")


if __name__ == "__main__":
    main()
