"""fastconv's average, adaptive, global and ceil-mode pooling side by side with PyTorch, in one process.

Prints, for each case, the best of ``--repeat`` timed calls of fastconv and of torch (float32,
``--threads`` threads for both, in alternated blocks of calls, inputs converted to tensors
before timing, never inside)
and the ratio fastconv / torch (below 1: fastconv is faster). Every case is checked
against torch before it is timed. Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/bench_pool_variants.py --threads 2
    PYTHONPATH=$PWD python benchmarks/bench_pool_variants.py --threads 1 --clock cpu   # on a busy machine
"""

import argparse
import time

import numpy as np

SHAPES = ((32, 256, 14, 14), (32, 64, 56, 56))


def cases(torch):
    """``(name, fastconv thunk factory, torch thunk factory)``; a factory takes ``(x, tx)`` (dy for backward)."""
    import fastconv.functional as fc

    F = torch.nn.functional
    aten = torch.ops.aten
    return [
        ("avg_pool2d 3x3 s2 p1", lambda a: lambda: fc.avg_pool2d(a["x"], 3, 2, 1),
         lambda t: lambda: F.avg_pool2d(t["x"], 3, 2, 1)),
        ("avg_pool2d 2x2 s2", lambda a: lambda: fc.avg_pool2d(a["x"], 2, 2),
         lambda t: lambda: F.avg_pool2d(t["x"], 2, 2)),
        ("avg_pool2d 3x3 s2 p1 backward",
         lambda a: lambda: fc.avg_pool2d_backward(a["dy_avg"], a["x"].shape, 3, 2, 1),
         lambda t: lambda: aten.avg_pool2d_backward(t["dy_avg"], t["x"], [3, 3], [2, 2], [1, 1], False, True, None)),
        ("adaptive_avg_pool2d 7x7", lambda a: lambda: fc.adaptive_avg_pool2d(a["x"], 7),
         lambda t: lambda: F.adaptive_avg_pool2d(t["x"], 7)),
        ("adaptive_avg_pool2d 7x7 backward",
         lambda a: lambda: fc.adaptive_avg_pool2d_backward(a["dy7"], a["x"].shape),
         lambda t: lambda: aten._adaptive_avg_pool2d_backward(t["dy7"], t["x"])),
        ("global average pool", lambda a: lambda: fc.adaptive_avg_pool2d(a["x"], 1),
         lambda t: lambda: F.adaptive_avg_pool2d(t["x"], 1)),
        ("global average pool backward",
         lambda a: lambda: fc.adaptive_avg_pool2d_backward(a["dy1"], a["x"].shape),
         # autograd's backward of adaptive_avg_pool2d(x, 1) = x.mean((-1, -2), keepdim=True)
         lambda t: lambda: t["dy1"].expand_as(t["x"]) / (t["x"].shape[2] * t["x"].shape[3])),
        ("max_pool2d 3x3 s2 ceil_mode", lambda a: lambda: fc.max_pool2d(a["x"], 3, 2, 0, 1, True),
         lambda t: lambda: F.max_pool2d(t["x"], 3, 2, 0, 1, True, return_indices=True)),
        ("max_pool2d 2x2 s2 ceil_mode", lambda a: lambda: fc.max_pool2d(a["x"], 2, 2, 0, 1, True),
         lambda t: lambda: F.max_pool2d(t["x"], 2, 2, 0, 1, True, return_indices=True)),
        ("adaptive_max_pool2d 7x7", lambda a: lambda: fc.adaptive_max_pool2d(a["x"], 7, return_indices=True),
         lambda t: lambda: F.adaptive_max_pool2d(t["x"], 7, return_indices=True)),
    ]


def best_of(thunks, repeat, clock=time.perf_counter, rounds=3):
    """The best time of each thunk: ``rounds`` blocks of calls per thunk, the thunks' blocks alternated.

    Blocks, after a pause, because calling two libraries call by call slows both (their
    thread pools spin after a call; ``benchmarks/NOTES.md``); alternated, so that both
    see the same machine load.
    """
    best = [float("inf")] * len(thunks)
    for _ in range(rounds):
        for i, thunk in enumerate(thunks):
            time.sleep(0.15)
            thunk()
            for _ in range(max(1, repeat // rounds)):
                start = clock()
                thunk()
                best[i] = min(best[i], clock() - start)
    return best


def _same(got, want, name):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for g, w in zip(got, want):
        w = w.numpy()
        if w.dtype.kind in "iu":
            assert np.array_equal(g, w), f"{name}: indices differ from torch's"
        else:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the calling thread's CPU time (with --threads 1 only: robust to a busy machine)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    import torch

    import fastconv.functional as fc
    from benchmarks.cases import pinned_threads

    rng = np.random.default_rng(0)
    with pinned_threads(args.threads):
        print(f"float32, {args.threads} threads, best of {args.repeat} ({args.clock} clock); torch {torch.__version__}")
        print(f"{'case':34s} {'shape':18s} {'fastconv ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(np.float32)
            a = {"x": x,
                 "dy_avg": rng.standard_normal(fc.avg_pool2d(x, 3, 2, 1).shape).astype(np.float32),
                 "dy7": rng.standard_normal(shape[:2] + (7, 7)).astype(np.float32),
                 "dy1": rng.standard_normal(shape[:2] + (1, 1)).astype(np.float32)}
            t = {k: torch.from_numpy(v) for k, v in a.items()}
            for name, ours, theirs in cases(torch):
                f, g = ours(a), theirs(t)
                _same(f(), g(), name)
                tf, tt = best_of((f, g), args.repeat, clock)
                print(f"{name:34s} {'x'.join(map(str, shape)):18s} {tf * 1e3:11.3f} {tt * 1e3:9.3f} {tf / tt:6.2f}")


if __name__ == "__main__":
    main()
