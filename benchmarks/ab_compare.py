#!/usr/bin/env python
"""Compare two fastconv trees op by op, on a noisy machine: min-of-many timings, alternated.

A whole ``scripts/bench_report.py`` run per tree drifts with the machine's load (two runs
an hour apart disagreed by 0.6-1.6x, torch's times included). This times the ops of the
benchmark cases with the fastconv found on ``sys.path``, each for a fixed time, and keeps
the minimum; run it alternately from each tree and compare::

    for i in 1 2 3; do
        (cd ../before && PYTHONPATH=$PWD python $OLDPWD/benchmarks/ab_compare.py before) >> ab.jsonl
        (cd ../after && PYTHONPATH=$PWD python $OLDPWD/benchmarks/ab_compare.py after) >> ab.jsonl
    done
    python benchmarks/ab_compare.py --compare ab.jsonl

``PYTHONPATH`` matters: a script's own folder, not the working directory, comes first on
``sys.path``, so without it both runs import the installed fastconv. Each run prints which
fastconv it timed. ``AB_CASES=resnet_conv,k5`` limits the cases.
"""

import json
import sys
import time

import numpy as np

#: name: (N, C, H, W, F, k, stride, padding), as in benchmarks/cases.py.
CASES = {
    "mnist_conv1": (64, 1, 28, 28, 32, 3, 1, 1), "mnist_conv2": (64, 32, 14, 14, 64, 3, 1, 1),
    "cifar_conv": (32, 3, 32, 32, 64, 3, 1, 1), "resnet_conv": (16, 64, 56, 56, 64, 3, 1, 1),
    "strided": (16, 64, 56, 56, 128, 3, 2, 1), "k5": (64, 32, 14, 14, 64, 5, 1, 2),
    "conv1x1": (32, 256, 14, 14, 64, 1, 1, 0), "odd": (16, 17, 23, 29, 33, 3, 1, 1),
    "deep": (8, 512, 7, 7, 512, 3, 1, 1),
}


def best_time(call, seconds=0.6, at_least=5):
    """The minimum over repeated calls of ``call`` for ``seconds`` (after one warm-up call)."""
    call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < at_least:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(dtype=np.float32):
    import os

    import fastconv as fc

    print(f"timing {os.path.dirname(os.path.dirname(fc.__file__))}", file=sys.stderr)
    only = os.environ.get("AB_CASES")
    rng = np.random.default_rng(0)
    found = {}
    for name, (N, C, H, W, F, k, s, p) in CASES.items():
        if only and name not in only.split(","):
            continue
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        w = rng.standard_normal((F, C, k, k)).astype(dtype)
        b = np.zeros(F, dtype)
        dy = rng.standard_normal(fc.conv2d(x, w, b, s, p).shape).astype(dtype)
        found[f"{name} fwd"] = best_time(lambda: fc.conv2d(x, w, b, s, p))
        found[f"{name} dx"] = best_time(lambda: fc.conv2d_backward_input(dy, w, x.shape, s, p))
        found[f"{name} dw"] = best_time(lambda: fc.conv2d_backward_weight(dy, x, w.shape, s, p))
    if only:
        return found
    x = rng.standard_normal((16, 64, 56, 56)).astype(dtype)
    y, idx = fc.max_pool2d(x, 3, 2, 1)
    found["pool_k3s2p1 fwd"] = best_time(lambda: fc.max_pool2d(x, 3, 2, 1))
    found["pool_k3s2p1 bwd"] = best_time(lambda: fc.max_pool2d_backward(y, idx, x.shape))
    return found


def compare(path):
    runs = {}
    for line in open(path):
        for label, times in json.loads(line).items():
            runs.setdefault(label, []).append(times)
    (a, ra), (b, rb) = list(runs.items())[:2]
    print(f"{'op':20} {a:>10} {b:>10} {b + '/' + a:>12}  (ms, min over {len(ra)} and {len(rb)} runs)")
    for op in ra[0]:
        ta, tb = min(r[op] for r in ra), min(r[op] for r in rb)
        print(f"{op:20} {ta * 1e3:10.3f} {tb * 1e3:10.3f} {tb / ta:12.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2])
    else:
        print(json.dumps({sys.argv[1] if len(sys.argv) > 1 else "run": measure()}))
