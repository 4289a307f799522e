#!/usr/bin/env python
"""Issue 15's convolution cases, fastconv and PyTorch side by side in one process.

For each case: the forward pass and the full backward (dx, dw, db), the minimum over
repeated calls (after a warm-up), in float32 at the same thread count for both libraries::

    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py              # 1 thread, CPU time
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --threads 2  # wall time
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --case grouped32 --strategies

On one thread the process CPU time is timed (robust on a loaded machine); on more, the
wall time. The cases are the benchmark rows of :data:`benchmarks.cases.CONV_CASES` whose
geometry is issue 15's (dilation, groups, 'same', 1x1 at stride 2) plus the transposed
4x4 stride-2 convolution, timed as the input gradient of its convolution.
"""

import argparse
import sys
import time

import numpy as np

#: name: (case-table row or None, shapes for the transposed case).
ISSUE_CASES = ("grouped32", "dilated3x3d2", "same5x5", "conv1x1s2")
#: The transposed 4x4 stride-2 convolution (a DCGAN/U-Net decoder layer) as the input gradient of
#: the convolution (N, C, H, W) -> (N, F, H/2, W/2): x (16, 64, 32, 32), w (128, 64, 4, 4), padding 1.
TRANSPOSED = ((16, 64, 32, 32), (128, 64, 4, 4), 2, 1)


def best(call, seconds, clock):
    call()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = clock()
        call()
        times.append(clock() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per call and library")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--strategies", action="store_true", help="print fastconv's plan of each case")
    args = parser.parse_args(argv)

    import torch

    import fastconv as fc
    from benchmarks import cases

    torch.set_num_threads(args.threads)
    fc.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"fastconv {fc.__file__}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{'CPU' if args.threads == 1 else 'wall'} time, min over {args.seconds:g} s", file=sys.stderr)
    rows = []
    for name in ISSUE_CASES + ("transposed4x4s2",):
        if args.case and name not in args.case:
            continue
        rng = np.random.default_rng(0)
        if name == "transposed4x4s2":
            x_shape, w_shape, stride, pad = TRANSPOSED
            opts, label = {}, f"x{x_shape} w{w_shape} s{stride} p{pad} (its input grad)"
        else:
            c = cases.CONV_CASES[name]
            x_shape, w_shape, stride, pad, opts = c.x_shape, c.w_shape, c.stride, c.pad, c.options
            label = c.describe()
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        y = fc.conv2d(x, w, b, stride, pad, **opts)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        tpad = pad if isinstance(pad, str) else cases.im2col._pair(pad)
        dil, groups = opts.get("dilation", 1), opts.get("groups", 1)
        if args.strategies:
            print(fc.conv2d_plan(x.shape, w.shape, stride, pad, np.float32, dilation=dil, groups=groups),
                  file=sys.stderr)
        if isinstance(tpad, str):  # aten's backward takes numbers: 'same' here is symmetric
            tpad = tuple(d * (k - 1) // 2 for d, k in zip(cases.im2col._pair(dil), w_shape[2:]))
        bwd = torch.ops.aten.convolution_backward
        pair = cases.im2col._pair
        ops = {
            "forward": (lambda: fc.conv2d(x, w, b, stride, pad, **opts),
                        lambda: torch.nn.functional.conv2d(tx, tw, tb, stride, pad, dil, groups)),
            "backward": (lambda: fc.conv2d_backward(dy, x, w, stride, pad, **opts),
                         lambda: bwd(tdy, tx, tw, [w_shape[0]], pair(stride), tpad, pair(dil), False, (0, 0),
                                     groups, (True, True, True))),
        }
        if name == "transposed4x4s2":
            ops = {"transposed (input grad)": (
                lambda: fc.conv2d_backward_input(dy, w, x.shape, stride, pad),
                lambda: torch.nn.functional.conv_transpose2d(tdy, tw, None, stride, pad))}
        with torch.no_grad():
            for op, (f_fc, f_t) in ops.items():
                t_fc, t_t = best(f_fc, args.seconds, clock), best(f_t, args.seconds, clock)
                rows.append((name, op, t_fc, t_t))
                print(f"{name:16s} {op:24s} fastconv {t_fc * 1e3:8.2f} ms  torch {t_t * 1e3:8.2f} ms  "
                      f"ratio {t_fc / t_t:5.2f}x   {label}", flush=True)
    return rows


if __name__ == "__main__":
    main()
