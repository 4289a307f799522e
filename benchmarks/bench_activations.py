#!/usr/bin/env python
"""Activations side by side with PyTorch, in one process: forward and backward, float32, 2 threads.

Times, op by op, the minimum over repeated calls (alternated: one call of each per round) of
fastconv's and torch's forward and backward passes (torch's backward through autograd, its
forward graph kept as a training step keeps it) of GELU (both forms), SiLU and sigmoid on a
64x256x28x28 activation and of softmax and log-softmax over the last axis of 4096x1000
logits (and over axis 1 of 64x1000x16, the strided kernel)::

    PYTHONPATH=$PWD NUMBA_NUM_THREADS=2 python benchmarks/bench_activations.py

``BENCH_SECONDS`` (default 4) is the time spent per op. Prints a table and
one JSON line per op.
"""

import json
import os
import time

import numpy as np

import fastconv as fc

THREADS = 2


def best_times(calls, seconds, clock=time.perf_counter):
    """The minimum time (by ``clock``) of each of ``calls``, run alternately (one of each per round) for ``seconds``.

    Alternating exposes both libraries to the same machine load (other processes share the cores).
    """
    for call in calls:
        call()
    best = [float("inf")] * len(calls)
    end = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < end or rounds < 3:
        for i, call in enumerate(calls):
            t0 = clock()
            call()
            best[i] = min(best[i], clock() - t0)
        rounds += 1
    return best


def main():
    import torch

    torch.set_num_threads(THREADS)
    fc.set_num_threads(THREADS)
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 256, 28, 28), dtype=np.float32)
    logits = rng.standard_normal((4096, 1000), dtype=np.float32) * 3
    strided = rng.standard_normal((64, 1000, 16), dtype=np.float32) * 3
    F = torch.nn.functional
    ops = [  # name, x, fastconv forward, fastconv backward(dy, x, y), torch forward
        ("gelu", big, fc.gelu, lambda dy, x, y: fc.gelu_backward(dy, x), F.gelu),
        ("gelu_tanh", big, lambda x: fc.gelu(x, approximate="tanh"),
         lambda dy, x, y: fc.gelu_backward(dy, x, approximate="tanh"), lambda t: F.gelu(t, approximate="tanh")),
        ("silu", big, fc.silu, lambda dy, x, y: fc.silu_backward(dy, x), F.silu),
        ("sigmoid", big, fc.sigmoid, lambda dy, x, y: fc.sigmoid_backward(dy, x), torch.sigmoid),
        ("softmax_lastdim", logits, lambda x: fc.softmax(x, 1), None, lambda t: F.softmax(t, 1)),
        ("log_softmax_lastdim", logits, lambda x: fc.log_softmax(x, 1), None, lambda t: F.log_softmax(t, 1)),
        ("softmax_dim1_of_3d", strided, lambda x: fc.softmax(x, 1), None, lambda t: F.softmax(t, 1)),
    ]
    from fastconv import plan

    rows = []
    for name, x, fwd, bwd, tfwd in ops:
        dy = rng.standard_normal(x.shape, dtype=np.float32)
        y = fwd(x)
        if bwd is None:  # softmax: the backward reads the forward output, as nn.Softmax does
            log = name.startswith("log")

            def ours_backward():
                plan.softmax_backward(dy, y, 1, log)
        else:
            def ours_backward():
                bwd(dy, x, y)
        tx = torch.from_numpy(x).requires_grad_(True)
        tdy = torch.from_numpy(dy)
        ty = tfwd(tx)

        def torch_forward():
            with torch.no_grad():
                tfwd(tx)

        ours_f, torch_f, ours_b, torch_b = best_times(
            [lambda: fwd(x), torch_forward, ours_backward,
             lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)], seconds)
        row = {"op": name, "shape": list(x.shape), "threads": THREADS,
               "fastconv_forward_ms": ours_f * 1e3, "torch_forward_ms": torch_f * 1e3,
               "fastconv_backward_ms": ours_b * 1e3, "torch_backward_ms": torch_b * 1e3}
        rows.append(row)
    print(f"fastconv {fc.__file__}, torch {torch.__version__}, {THREADS} threads, float32, min of repeats (ms)")
    print(f"{'op':22s} {'shape':18s} {'fwd fc':>8s} {'fwd torch':>9s} {'ratio':>6s} "
          f"{'bwd fc':>8s} {'bwd torch':>9s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['op']:22s} {'x'.join(map(str, r['shape'])):18s} {r['fastconv_forward_ms']:8.2f} "
              f"{r['torch_forward_ms']:9.2f} {r['fastconv_forward_ms'] / r['torch_forward_ms']:6.2f} "
              f"{r['fastconv_backward_ms']:8.2f} {r['torch_backward_ms']:9.2f} "
              f"{r['fastconv_backward_ms'] / r['torch_backward_ms']:6.2f}")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
