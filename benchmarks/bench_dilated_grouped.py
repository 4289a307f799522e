#!/usr/bin/env python
"""Issue 15's convolution cases, fastconv and PyTorch side by side in one process.

For each case: the forward pass and the full backward (dx, dw, db), the minimum over
repeated calls (after a warm-up), in float32 at the same thread count for both libraries::

    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py              # 1 thread
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --threads 2
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --case grouped32 --strategies
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --cpu        # 1 thread, CPU time
    PYTHONPATH=$PWD python benchmarks/bench_dilated_grouped.py --cpu --case mnist_conv2 --case resnet_conv

``--cpu`` times single calls of the two libraries alternated, by ``time.process_time`` (no thread pool) (one
thread each), and keeps each one's minimum: on a machine shared with other jobs the CPU time of
a single-threaded call moves less than its wall time. ``--case`` takes any row of the case table
(the dense ones too, to check that a change of the vector kernels leaves them as they were).

Wall time, each library in blocks (after a pause, as ``scripts/bench_report.py`` does), the
blocks of the two alternated: the minimum of each and the median of the per-round ratios. On
the loaded development machine (load 6-7 on 2 cores) single calls of one torch convolution took
0.7 to 100 ms, and its fastest call moved from 0.4 ms to 2.0 ms within minutes (CPU time
drifted alike), so only numbers timed side by side compare. The cases are the benchmark rows of :data:`benchmarks.cases.CONV_CASES` whose
geometry is issue 15's (dilation, groups, 'same', 1x1 at stride 2) plus the transposed
4x4 stride-2 convolution, timed as the input gradient of its convolution.
"""

import argparse
import os
import sys
import time

import numpy as np

#: name: (case-table row or None, shapes for the transposed case).
ISSUE_CASES = ("grouped32", "dilated3x3d2", "same5x5", "conv1x1s2")
#: The transposed 4x4 stride-2 convolution (a DCGAN/U-Net decoder layer) as the input gradient of
#: the convolution (N, C, H, W) -> (N, F, H/2, W/2): x (16, 64, 32, 32), w (128, 64, 4, 4), padding 1.
TRANSPOSED = ((16, 64, 32, 32), (128, 64, 4, 4), 2, 1)


def blocks(calls, seconds, rounds=4, pause=0.15):
    """``(minimum times, median ratio)``: each call timed in ``rounds`` blocks of ``seconds / rounds``,
    the blocks of the two alternated, each after a ``pause``.

    Alternating call by call slows both libraries (each one's thread pool keeps spinning after a
    call: ``benchmarks/NOTES.md``, "Measuring: pitfalls met"); the load of this machine drifts
    within seconds, so the blocks alternate and the median of the per-round ratios of the
    blocks' minima is reported with the ratio of the overall minima.
    """
    for call in calls:
        call()
    per_round = np.full((rounds, len(calls)), np.inf)
    for r in range(rounds):
        for k, call in enumerate(calls):
            time.sleep(pause)
            end, count = time.perf_counter() + seconds / rounds, 0
            while time.perf_counter() < end or count < 3:
                start = time.perf_counter()
                call()
                per_round[r, k] = min(per_round[r, k], time.perf_counter() - start)
                count += 1
    return per_round.min(axis=0), float(np.median(per_round[:, 0] / per_round[:, 1]))


def cpu_times(calls, seconds, at_least=5):
    """``(minimum CPU times, median ratio)``: the calls alternated one by one, each timed by ``time.process_time``."""
    for call in calls:
        call()
    times = [[] for _ in calls]
    end = time.perf_counter() + seconds * len(calls)
    while time.perf_counter() < end or len(times[0]) < at_least:
        for k, call in enumerate(calls):
            start = time.process_time()
            call()
            times[k].append(time.process_time() - start)
    t = np.array(times)
    return t.min(axis=1), float(np.median(t[0] / t[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per call and library")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--strategies", action="store_true", help="print fastconv's plan of each case")
    parser.add_argument("--cpu", action="store_true", help="1 thread, CPU time of single calls alternated")
    args = parser.parse_args(argv)
    if args.cpu:
        # One thread and no thread pool: idle pool threads spinning after a call would be counted in the
        # process's CPU time, the other library's calls included (NUMBA_NUM_THREADS is read at import).
        args.threads = 1
        os.environ["NUMBA_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"

    import torch

    import fastconv as fc
    from benchmarks import cases

    torch.set_num_threads(args.threads)
    fc.set_num_threads(args.threads)
    clock = "CPU time of single calls" if args.cpu else "wall time"
    print(f"fastconv {fc.__file__}, torch {torch.__version__}, {args.threads} thread(s), "
          f"min {clock} over {args.seconds:g} s per library", file=sys.stderr)
    rows = []
    names = ISSUE_CASES + ("transposed4x4s2",)
    for name in names + tuple(c for c in args.case or () if c not in names):
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
                (t_fc, t_t), median = (cpu_times if args.cpu else blocks)((f_fc, f_t), args.seconds)
                rows.append((name, op, t_fc, t_t, median))
                print(f"{name:16s} {op:24s} fastconv {t_fc * 1e3:8.2f} ms  torch {t_t * 1e3:8.2f} ms  "
                      f"ratio of minima {t_fc / t_t:5.2f}x  median of the rounds' ratios {median:5.2f}x   {label}", flush=True)
    return rows


if __name__ == "__main__":
    main()
