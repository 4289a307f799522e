#!/usr/bin/env python
"""The strided passes of issues 14 and 15, fastconv and PyTorch side by side in one process: the ratios to check.

    PYTHONPATH=$PWD python benchmarks/bench_strided.py                 # 1-thread CPU time and 2-thread wall time
    PYTHONPATH=$PWD python benchmarks/bench_strided.py --only wall     # or cpu

- the transposed 4x4 stride-2 convolution (a DCGAN/U-Net decoder layer, x 16x128x16x16 -> 64 channels, with
  bias): ``conv_transpose2d`` forward (the convolution's input gradient, ``phases_vector``); goal <= 1.5x,
  moonshot 1.0 (issue 15);
- the report's ``strided`` case (16x64x56x56 -> 128, 3x3, stride 2, padding 1): the input gradient and the full
  backward (dx, dw, db); goal <= 1.0 (issue 14);
- ``conv1x1s2`` (8x256x28x28 -> 512, 1x1, stride 2): forward and full backward; goal <= 1.5x (issue 15).

1-thread CPU time (``time.process_time``, both libraries on one thread, blocks of calls alternated, the
minimum per call) is the measure to decide with on a loaded machine; the 2-thread wall time (minimum over
alternated blocks, :func:`benchmarks.bench_dilated_grouped.blocks`) is the issues' measure, comparable only on
a quiet machine. Each line prints fastconv's time, torch's and the ratio.
"""

import argparse
import os
import time

import numpy as np

from benchmarks.bench_dilated_grouped import blocks


def cpu_times(calls, rounds=5, seconds=0.4):
    """The minimum 1-thread CPU time per call of each of ``calls``, over ``rounds`` alternated blocks."""
    best = [np.inf] * len(calls)
    for call in calls:
        call()
    for _ in range(rounds):
        for k, call in enumerate(calls):
            count, start = 0, time.process_time()
            while True:
                t0 = time.process_time()
                call()
                t1 = time.process_time()
                best[k] = min(best[k], t1 - t0)
                count += 1
                if t1 - start > seconds and count >= 3:
                    break
    return best


def cases(fc, torch):
    """``(name, fastconv call, torch call)`` of every pass."""
    rng = np.random.default_rng(0)
    bwd = torch.ops.aten.convolution_backward

    def arrays(*shapes):
        return [rng.standard_normal(s).astype(np.float32) for s in shapes]

    x, w, b = arrays((16, 128, 16, 16), (128, 64, 4, 4), (64,))
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    out = [("transposed 4x4 s2 forward", lambda x=x, w=w, b=b: fc.conv_transpose2d(x, w, b, stride=2, padding=1),
            lambda tx=tx, tw=tw, tb=tb: torch.nn.functional.conv_transpose2d(tx, tw, tb, 2, 1))]
    for name, xs, ws, s, p, passes in [("strided 3x3 s2", (16, 64, 56, 56), (128, 64, 3, 3), 2, 1, ("input grad", "backward")),
                                       ("conv1x1s2", (8, 256, 28, 28), (512, 256, 1, 1), 2, 0, ("forward", "backward"))]:
        x, w, b = arrays(xs, ws, ws[:1])
        dy = arrays(fc.conv2d(x, w, b, s, p).shape)[0]
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        ours = {"forward": lambda x=x, w=w, b=b, s=s, p=p: fc.conv2d(x, w, b, s, p),
                "input grad": lambda dy=dy, w=w, x=x, s=s, p=p: fc.conv2d_backward_input(dy, w, x.shape, s, p),
                "backward": lambda dy=dy, x=x, w=w, s=s, p=p: fc.conv2d_backward(dy, x, w, s, p)}
        theirs = {"forward": lambda tx=tx, tw=tw, tb=tb, s=s, p=p: torch.nn.functional.conv2d(tx, tw, tb, s, p),
                  "input grad": lambda tdy=tdy, tx=tx, tw=tw, s=s, p=p: bwd(tdy, tx, tw, None, (s, s), (p, p), (1, 1),
                                                                           False, (0, 0), 1, (True, False, False)),
                  "backward": lambda tdy=tdy, tx=tx, tw=tw, s=s, p=p, F=ws[0]: bwd(tdy, tx, tw, [F], (s, s), (p, p),
                                                                                   (1, 1), False, (0, 0), 1,
                                                                                   (True, True, True))}
        out += [(f"{name} {op}", ours[op], theirs[op]) for op in passes]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("cpu", "wall"), help="one of the two measures")
    parser.add_argument("--seconds", type=float, default=3.0, help="wall-time budget per call and library")
    args = parser.parse_args(argv)

    import torch

    import fastconv as fc

    print(f"fastconv {fc.__file__}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    with torch.no_grad():
        for measure, threads in (("cpu", 1), ("wall", 2)):
            if args.only and args.only != measure:
                continue
            torch.set_num_threads(threads)
            fc.set_num_threads(threads)
            label = "1-thread CPU time" if measure == "cpu" else "2-thread wall time"
            print(f"{label}: {'pass':34s} {'fastconv ms':>12s} {'torch ms':>10s} {'ratio':>7s}")
            for name, ours, theirs in cases(fc, torch):
                if measure == "cpu":
                    a, b = cpu_times((ours, theirs))
                else:
                    (a, b), _ = blocks((ours, theirs), args.seconds)
                print(f"{'':19s}{name:34s} {a * 1e3:12.2f} {b * 1e3:10.2f} {a / b:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
