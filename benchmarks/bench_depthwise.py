#!/usr/bin/env python
"""Depthwise 3x3 convolutions side by side with PyTorch, in one process: MobileNet-sized maps, float32.

For each depthwise row of the case table (``benchmarks.cases.CONV_DEPTHWISE``, at its
``bench_batch``), times the forward pass and the full backward pass (dx + dw + db) of
fastconv's plan and of torch (``F.conv2d`` and ``aten.convolution_backward``, what
autograd calls), alternating one call of each per round and keeping the minimum:

- 1 thread, CPU time of the process (``time.process_time``: other workers' load on the
  shared cores does not count);
- 2 threads, wall time (both libraries set to 2 threads), each library timed in a block of
  calls after a pause (:func:`block_times`).

Also prints the effective memory traffic of fastconv's forward (the bytes its passes read
and write, over its time) against the machine's copy bandwidth (a large ``np.copyto``)::

    PYTHONPATH=$PWD python benchmarks/bench_depthwise.py [row-name ...]

``BENCH_SECONDS`` (default 2) is the time per measurement. One JSON line per row and pass (on stderr,
with the strategies that ran); the last lines give the worst ratio of each pass, issue 15's goal being 1.0.
"""

import json
import os
import sys
import time

import numpy as np

from benchmarks import cases
from benchmarks.bench_activations import best_times
from fastconv import _validation as V
from fastconv import plan as P


def block_times(calls, seconds, pause=0.15):
    """The minimum wall time of each of ``calls``, each timed in a block (one warm-up and three timed
    calls, :func:`best_times`) after a ``pause``: on two threads, interleaving the libraries call by
    call keeps the other's pool spinning (``benchmarks/NOTES.md``). Blocks alternate until ``seconds``
    have passed (2 rounds at least)."""
    best = [float("inf")] * len(calls)
    end = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < end or rounds < 2:
        for i, call in enumerate(calls):
            time.sleep(pause)
            best[i] = min(best[i], best_times([call], 0.0)[0])
        rounds += 1
    return best


def copy_bandwidth():
    """GB/s of a 64 MiB ``np.copyto`` (read + write; one thread), the best over half a second."""
    a = np.ones(1 << 24, np.float32)
    b = np.empty_like(a)
    t = best_times([lambda: np.copyto(b, a)], 0.5)[0]
    return 2 * a.nbytes / t / 1e9


def calls_for(row, rng):
    import torch

    g = V.conv_geometry("bench", row.x_shape, row.w_shape, row.stride_hw, row.pad_hw, dilation=row.dilation,
                        groups=row.groups)
    plan = P.plan_conv2d(g, np.float32)
    x = rng.standard_normal(row.x_shape, dtype=np.float32)
    w = rng.standard_normal(row.w_shape, dtype=np.float32)
    b = rng.standard_normal(row.f, dtype=np.float32)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
    opts = dict(stride=row.stride_hw, padding=row.pad_hw, dilation=g.dilation, groups=row.groups)
    _, packed = plan.run_forward(x, w, b)

    def fc_backward():
        plan.run_input_grad(dy, w)
        plan.run_weight_grad(dy, x, packed)
        plan.run_bias_grad(dy)

    def torch_backward():
        torch.ops.aten.convolution_backward(tdy, tx, tw, [row.f], list(row.stride_hw), list(row.pad_hw),
                                            list(g.dilation), False, [0, 0], row.groups, [True, True, True])

    with torch.no_grad():
        return plan, {
            "forward": (lambda: plan.run_forward(x, w, b), lambda: torch.nn.functional.conv2d(tx, tw, tb, **opts)),
            "backward": (fc_backward, torch_backward),
        }, (x.nbytes, dy.nbytes)


def main(names):
    import numba
    import torch

    seconds = float(os.environ.get("BENCH_SECONDS", "2"))
    rows = [r for r in cases.CONV_DEPTHWISE if r.bench_batch and (not names or r.name in names)]
    rng = np.random.default_rng(0)
    bw = copy_bandwidth()
    worst_ratio = {}
    print(f"{'row':34} {'pass':9} {'fc 1T ms':>9} {'torch 1T':>9} {'ratio':>6} {'fc 2T ms':>9} {'torch 2T':>9} "
          f"{'ratio':>6} {'fwd GB/s 2T':>11}")
    for row in rows:
        row = row.with_batch(row.bench_batch)
        plan, ops, (xbytes, ybytes) = calls_for(row, rng)
        for name, (ours, theirs) in ops.items():
            result = {"row": row.name, "pass": name, "strategy": plan.forward.name if name == "forward" else
                      f"{plan.input_grad.name}/{plan.weight_grad.name}"}
            for threads in (1, 2):
                numba.set_num_threads(threads)
                torch.set_num_threads(threads)
                if threads == 1:
                    t_fc, t_torch = best_times([ours, theirs], seconds, time.process_time)
                else:
                    t_fc, t_torch = block_times([ours, theirs], seconds)
                result[f"fastconv_{threads}T_ms"] = 1e3 * t_fc
                result[f"torch_{threads}T_ms"] = 1e3 * t_torch
            # forward traffic: pack reads x, writes xp; the kernel reads xp, writes y
            result["forward_GBps_2T"] = (3 * xbytes + ybytes) / (result["fastconv_2T_ms"] / 1e3) / 1e9 \
                if name == "forward" else None
            r1 = result["fastconv_1T_ms"] / result["torch_1T_ms"]
            r2 = result["fastconv_2T_ms"] / result["torch_2T_ms"]
            worst_ratio.setdefault((name, 1), []).append(r1)
            worst_ratio.setdefault((name, 2), []).append(r2)
            gbs = f"{result['forward_GBps_2T']:.1f}" if result["forward_GBps_2T"] else ""
            print(f"{str(row.name):34} {name:9} {result['fastconv_1T_ms']:9.2f} {result['torch_1T_ms']:9.2f} "
                  f"{r1:6.2f} {result['fastconv_2T_ms']:9.2f} {result['torch_2T_ms']:9.2f} {r2:6.2f} {gbs:>11}")
            print(json.dumps(result), file=sys.stderr)
    print(f"np.copyto bandwidth (read + write, 1 thread): {bw:.1f} GB/s")
    for name in ("forward", "backward"):  # issue 15's goal: every ratio <= 1.0
        worst = {t: max(worst_ratio[name, t], default=float("nan")) for t in (1, 2)}
        print(f"worst {name} ratio (goal <= 1.0): 1T {worst[1]:.2f}, 2T {worst[2]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
