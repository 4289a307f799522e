#!/usr/bin/env python
"""The speed goals of issues 15 and 16, fastconv and PyTorch side by side in one process: one table, one clock.

Each :class:`Row` is one pass of one layer at the size its issue names (MobileNet's depthwise
layers, ResNeXt's groups, DeepLab's dilation, a U-Net decoder's transposed convolution, ResNet's
BatchNorm and pools), with the goal the issue sets for fastconv's time over torch's. Every row
is checked against torch (outputs within float32 rounding, pool indices exact) before it is timed;
``benchmarks/test_bench_layers.py`` runs the same check on small inputs. ``scripts/bench_report.py``
writes the table into ``BENCHMARKS.md``; run from the repository root::

    PYTHONPATH=$PWD python benchmarks/layers.py                      # 2 threads, wall time, every row
    PYTHONPATH=$PWD python benchmarks/layers.py --only depthwise     # rows whose name has this text
    PYTHONPATH=$PWD python benchmarks/layers.py --clock cpu          # 1 thread, CPU time (a busy machine)
    PYTHONPATH=$PWD python benchmarks/layers.py --case grouped32     # any conv case of benchmarks/cases.py

Clocks. ``wall`` (the issues' measure, both libraries on ``--threads`` threads): each library is
timed in blocks of calls after a short pause, the two libraries' blocks alternated, because Numba's
and torch's thread pools keep spinning after a call and slow whatever runs next (``benchmarks/NOTES.md``,
"Measuring: pitfalls met"). ``cpu``: one thread (set before Numba starts its pool), the process's CPU
time of each call: other jobs on a shared machine disturb it far less. Each row prints the minimum of
each library and the median of the rounds' ratios; on a quiet machine the two agree.
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

#: The goals: fastconv's time / torch's (float32, 2 threads) at most this.
GOAL_DEPTHWISE = 1.0  # issue 15: depthwise 3x3, stride 1 and 2, MobileNet-sized maps
GOAL_ISSUE15 = 1.5  # issue 15: grouped, dilated, 'same' 5x5, 1x1 stride 2, transposed 4x4 stride 2
GOAL_ISSUE16 = 1.0  # issue 16: BatchNorm2d, average, adaptive and global pooling, ceil-mode max-pooling
GOAL_CONV = 1.0  # issue 14: every conv case of the report, forward and full backward (--case)

#: The pooling and normalisation shapes: ResNet's late and early stages.
POOL_SHAPES = ((32, 256, 14, 14), (32, 64, 56, 56))


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed pass: ``build(shape, rng)`` returns ``(fastconv call, torch call)``; each returns what it computed.

    ``small`` is the input shape of the correctness test (same layer, smaller batch and map).
    """

    name: str
    issue: int
    goal: float
    shape: tuple
    small: tuple
    build: object


def _torch():
    import torch

    return torch


def _conv_rows(case, goal, issue, label=None):
    """Forward and full backward of a conv case of :mod:`benchmarks.cases` (depthwise rows included)."""
    label = label or case.name

    def build(which):
        def make(shape, rng):
            import fastconv as fc

            torch = _torch()
            x = rng.standard_normal(shape, dtype=np.float32)
            w = (rng.standard_normal(case.w_shape) / np.sqrt(np.prod(case.w_shape[1:]))).astype(np.float32)
            b = rng.standard_normal(case.f, dtype=np.float32)
            opts = dict(dilation=case.dilation, groups=case.groups)
            y = fc.conv2d(x, w, b, case.stride, case.pad, **opts)
            dy = rng.standard_normal(y.shape, dtype=np.float32)
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
            dil = case.dilation_hw
            if which == "forward":
                return (lambda: fc.conv2d(x, w, b, case.stride, case.pad, **opts),
                        lambda: torch.nn.functional.conv2d(tx, tw, tb, case.stride, case.pad, dil, case.groups))
            pad = case.pad
            if isinstance(pad, str):  # aten's backward takes numbers ('same' is symmetric for an odd kernel)
                pad = tuple(d * (k - 1) // 2 if pad == "same" else 0 for d, k in zip(dil, case.kernel_hw))
            from benchmarks.im2col import _pair

            return (lambda: fc.conv2d_backward(dy, x, w, case.stride, case.pad, **opts),
                    lambda: torch.ops.aten.convolution_backward(
                        tdy, tx, tw, [case.f], _pair(case.stride), _pair(pad), dil, False, (0, 0), case.groups,
                        (True, True, True)))
        return make

    small = (2,) + case.x_shape[1:]
    return [Row(f"{label} forward", issue, goal, case.x_shape, small, build("forward")),
            Row(f"{label} full backward", issue, goal, case.x_shape, small, build("backward"))]


def _transposed(which):
    """ConvTranspose2d 128 -> 64, 4x4, stride 2, padding 1, with bias (a U-Net / DCGAN decoder layer)."""

    def make(shape, rng):
        import fastconv as fc

        torch = _torch()
        x = rng.standard_normal(shape, dtype=np.float32)
        w = (rng.standard_normal((shape[1], 64, 4, 4)) / np.sqrt(shape[1] * 16)).astype(np.float32)
        b = rng.standard_normal(64, dtype=np.float32)
        y = fc.conv_transpose2d(x, w, b, 2, 1)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        if which == "forward":
            return (lambda: fc.conv_transpose2d(x, w, b, 2, 1),
                    lambda: torch.nn.functional.conv_transpose2d(tx, tw, tb, 2, 1))
        return (lambda: fc.conv_transpose2d_backward(dy, x, w, 2, 1),
                lambda: torch.ops.aten.convolution_backward(tdy, tx, tw, [64], (2, 2), (1, 1), (1, 1), True, (0, 0),
                                                            1, (True, True, True)))
    return make


def _batch_norm(which):
    """BatchNorm2d as layers: training forward (batch statistics, running ones updated), its backward, eval forward."""

    def make(shape, rng):
        from fastconv import nn

        torch = _torch()
        C = shape[1]
        x = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
        dy = rng.standard_normal(shape, dtype=np.float32)
        ours, theirs = nn.BatchNorm2d(C), torch.nn.BatchNorm2d(C)
        if which == "eval forward":
            ours(x)  # a training step first, so the running statistics are not the initial ones
            with torch.no_grad():
                theirs(torch.from_numpy(x))
            ours.eval()
            theirs.eval()
        tx = torch.from_numpy(x).requires_grad_(which == "backward")
        if which == "eval forward":
            def torch_eval():
                with torch.no_grad():
                    return theirs(tx)
            return (lambda: ours(x)), torch_eval
        if which == "forward":
            def torch_forward():
                with torch.no_grad():
                    return theirs(tx)
            return (lambda: ours(x)), torch_forward
        ours(x)
        ty = theirs(tx)
        tdy = torch.from_numpy(dy)

        def torch_backward():
            tx.grad = None
            ty.backward(tdy, retain_graph=True)
            return tx.grad
        return (lambda: ours.backward(dy)), torch_backward
    return make


def _pool(name):
    """One pooling pass: ``make(shape, rng) -> (fastconv call, torch call)``."""

    def make(shape, rng):
        import fastconv.functional as fc

        torch = _torch()
        F, aten = torch.nn.functional, torch.ops.aten
        x = rng.standard_normal(shape, dtype=np.float32)
        tx = torch.from_numpy(x)
        N, C, H, W = shape

        def grad_of(y_shape):
            dy = rng.standard_normal(y_shape, dtype=np.float32)
            return dy, torch.from_numpy(dy)

        if name == "avg_pool2d 3x3 s2 p1":
            return lambda: fc.avg_pool2d(x, 3, 2, 1), lambda: F.avg_pool2d(tx, 3, 2, 1)
        if name == "avg_pool2d 2x2 s2":
            return lambda: fc.avg_pool2d(x, 2, 2), lambda: F.avg_pool2d(tx, 2, 2)
        if name == "avg_pool2d 3x3 s2 p1 backward":
            dy, tdy = grad_of(fc.avg_pool2d(x, 3, 2, 1).shape)
            return (lambda: fc.avg_pool2d_backward(dy, shape, 3, 2, 1),
                    lambda: aten.avg_pool2d_backward(tdy, tx, [3, 3], [2, 2], [1, 1], False, True, None))
        if name == "adaptive_avg_pool2d 7x7":
            return lambda: fc.adaptive_avg_pool2d(x, 7), lambda: F.adaptive_avg_pool2d(tx, 7)
        if name == "adaptive_avg_pool2d 7x7 backward":
            dy, tdy = grad_of((N, C, 7, 7))
            return (lambda: fc.adaptive_avg_pool2d_backward(dy, shape),
                    lambda: aten._adaptive_avg_pool2d_backward(tdy, tx))
        if name == "global average pool":
            return lambda: fc.adaptive_avg_pool2d(x, 1), lambda: F.adaptive_avg_pool2d(tx, 1)
        if name == "global average pool backward":
            dy, tdy = grad_of((N, C, 1, 1))
            # autograd's backward of adaptive_avg_pool2d(x, 1), which torch computes as a mean over (H, W)
            return (lambda: fc.adaptive_avg_pool2d_backward(dy, shape),
                    lambda: tdy.expand_as(tx) / (H * W))
        if name == "max_pool2d 3x3 s2 ceil_mode":
            return (lambda: fc.max_pool2d(x, 3, 2, 0, 1, True),
                    lambda: F.max_pool2d(tx, 3, 2, 0, 1, True, return_indices=True))
        if name == "max_pool2d 3x3 s2 ceil_mode backward":
            y, idx = fc.max_pool2d(x, 3, 2, 0, 1, True)
            _, tidx = F.max_pool2d(tx, 3, 2, 0, 1, True, return_indices=True)
            dy, tdy = grad_of(y.shape)
            return (lambda: fc.max_pool2d_backward(dy, idx, shape),
                    lambda: aten.max_pool2d_with_indices_backward(tdy, tx, [3, 3], [2, 2], [0, 0], [1, 1], True, tidx))
        if name == "max_pool2d 2x2 s2 ceil_mode":
            return (lambda: fc.max_pool2d(x, 2, 2, 0, 1, True),
                    lambda: F.max_pool2d(tx, 2, 2, 0, 1, True, return_indices=True))
        if name == "adaptive_max_pool2d 7x7":
            return (lambda: fc.adaptive_max_pool2d(x, 7, return_indices=True),
                    lambda: F.adaptive_max_pool2d(tx, 7, return_indices=True))
        raise KeyError(name)
    return make


POOL_PASSES = ("avg_pool2d 3x3 s2 p1", "avg_pool2d 2x2 s2", "avg_pool2d 3x3 s2 p1 backward",
               "adaptive_avg_pool2d 7x7", "adaptive_avg_pool2d 7x7 backward", "global average pool",
               "global average pool backward", "max_pool2d 3x3 s2 ceil_mode", "max_pool2d 3x3 s2 ceil_mode backward",
               "max_pool2d 2x2 s2 ceil_mode", "adaptive_max_pool2d 7x7")


def rows():
    """Every goal row, in the report's order."""
    from benchmarks import cases

    out = []
    for case in cases.CONV_DEPTHWISE:
        if case.bench_batch:
            out += _conv_rows(case.with_batch(case.bench_batch), GOAL_DEPTHWISE, 15,
                              f"depthwise {case.c}x{case.h}x{case.w}" + (" s2" if case.stride != 1 else ""))
    for name in ("grouped32", "dilated3x3d2", "same5x5", "conv1x1s2"):
        out += _conv_rows(cases.CONV_CASES[name], GOAL_ISSUE15, 15)
    for which in ("forward", "full backward"):
        out.append(Row(f"conv_transpose2d 4x4 s2 {which}", 15, GOAL_ISSUE15, (16, 128, 16, 16), (2, 128, 5, 6),
                       _transposed("forward" if which == "forward" else "backward")))
    for shape in POOL_SHAPES:
        for which in ("forward", "backward", "eval forward"):
            out.append(Row(f"BatchNorm2d {which}", 16, GOAL_ISSUE16, shape, (2, shape[1], 5, 7), _batch_norm(which)))
    for shape in POOL_SHAPES:
        for name in POOL_PASSES:
            out.append(Row(name, 16, GOAL_ISSUE16, shape, (2, shape[1], 11, 9), _pool(name)))
    return out


def case_rows(names):
    """Forward and full backward of named conv cases of :mod:`benchmarks.cases`, with issue 14's goal."""
    from benchmarks import cases

    every = {c.name: c for c in cases.CONV_ROWS + cases.CONV_DEPTHWISE}
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; the conv cases are: {', '.join(sorted(every))}")
    out = []
    for n in names:
        c = every[n]
        out += _conv_rows(c.with_batch(c.bench_batch or c.n), GOAL_CONV, 14)
    return out


def _arrays(value):
    """The arrays a call returned, as NumPy (a tuple or one array; torch tensors converted)."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [np.asarray(v.detach().numpy() if hasattr(v, "detach") else v) for v in items]


def check(row, shape=None, seed=0):
    """Build ``row`` at ``shape`` (default: its own) and assert that fastconv's result is torch's; returns the calls."""
    ours, theirs = row.build(shape or row.shape, np.random.default_rng(seed))
    got, want = _arrays(ours()), _arrays(theirs())
    assert len(got) == len(want), f"{row.name}: {len(got)} results against torch's {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{row.name}, result {k}: shape {g.shape} against torch's {w.shape}"
        if w.dtype.kind in "iu":
            assert np.array_equal(g, w), f"{row.name}, result {k}: indices differ from torch's"
        else:
            err = float(np.abs(g - w).max()) if g.size else 0.0
            scale = max(1.0, float(np.abs(w).max()) if w.size else 0.0)
            assert err <= 1e-4 * scale * 10, f"{row.name}, result {k}: max difference {err:.3g} (scale {scale:.3g})"
    return ours, theirs


def side_by_side(calls, seconds=2.0, rounds=4, clock=time.perf_counter, pause=0.15):
    """``(minimum time of each call, median over rounds of the first call's block minimum / the second's)``.

    Each round times each call in a block of ``seconds / rounds`` (3 calls at least) after a
    ``pause``, the calls' blocks alternated, so that both libraries see the same machine load and
    neither runs while the other's thread pool is still spinning.
    """
    for call in calls:
        call()
    best = np.full((rounds, len(calls)), np.inf)
    for r in range(rounds):
        for k, call in enumerate(calls):
            time.sleep(pause)
            end, count = time.perf_counter() + seconds / rounds, 0
            while time.perf_counter() < end or count < 3:
                start = clock()
                call()
                best[r, k] = min(best[r, k], clock() - start)
                count += 1
    return best.min(axis=0), float(np.median(best[:, 0] / best[:, 1]))


def measure(selected, seconds=2.0, clock=time.perf_counter, out=None, shape=None):
    """Check and time each row of ``selected`` (at ``shape``, default each row's own); a list of result dicts
    (printed as they come when ``out`` is given)."""
    # No torch.no_grad() around the rows: the BatchNorm backward row builds an autograd graph (its forward
    # calls take no_grad themselves; the other torch inputs do not require grad, so they record nothing).
    results = []
    for row in selected:
        ours, theirs = check(row, shape)
        (t_fc, t_torch), median = side_by_side((ours, theirs), seconds, clock=clock)
        res = dict(name=row.name, issue=row.issue, goal=row.goal, shape=shape or row.shape,
                   fastconv_ms=1e3 * t_fc, torch_ms=1e3 * t_torch, ratio=t_fc / t_torch, median_ratio=median)
        results.append(res)
        if out is not None:
            print(format_result(res), file=out, flush=True)
    return results


def format_result(r):
    goal = "" if np.isnan(r["goal"]) else f"goal <= {r['goal']:.1f}: {'met' if r['ratio'] <= r['goal'] else 'NOT met'}"
    return (f"{r['name']:40s} {'x'.join(map(str, r['shape'])):16s} {r['fastconv_ms']:9.3f} {r['torch_ms']:9.3f} "
            f"{r['ratio']:6.2f} {r['median_ratio']:6.2f}  {goal}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", help="rows whose name contains this text (repeatable)")
    parser.add_argument("--case", action="append", help="a conv case of benchmarks/cases.py instead (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (wall clock; default 2)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: 1 thread, the CPU time of each call (robust on a busy machine)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per row and library")
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        # Set before Numba starts its pool: idle pool threads spinning after a call would count in the
        # process's CPU time, the other library's calls included.
        args.threads = 1
        os.environ["NUMBA_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    import fastconv as fc

    torch = _torch()
    torch.set_num_threads(args.threads)
    fc.set_num_threads(args.threads)
    selected = case_rows(args.case) if args.case else rows()
    if args.only:
        selected = [r for r in selected if any(s in r.name for s in args.only)]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"fastconv {fc.__version__} ({os.path.dirname(fc.__file__)}), torch {torch.__version__}, float32, "
          f"{args.threads} thread(s), {args.clock} clock, {args.seconds:g} s per row and library; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'pass':40s} {'input':16s} {'fc ms':>9s} {'torch ms':>9s} {'ratio':>6s} {'median':>6s}")
    results = measure(selected, args.seconds, clock, out=sys.stdout)
    missed = [r for r in results if r["ratio"] > r["goal"]]
    print(f"{len(results) - len(missed)} of {len(results)} rows meet their goal"
          + (": not " + ", ".join(f"{r['name']} {'x'.join(map(str, r['shape']))} ({r['ratio']:.2f})" for r in missed)
             if missed else ""))
    print(f"load average {os.getloadavg()[0]:.1f}")
    return results


if __name__ == "__main__":
    main()
