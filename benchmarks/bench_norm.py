"""BatchNorm2d forward and backward, fastconv vs PyTorch, side by side in one process.

    PYTHONPATH=$PWD python benchmarks/bench_norm.py [--shape 32 64 56 56] [--threads 2] [--repeat 10] [--rounds 3]
    PYTHONPATH=$PWD python benchmarks/bench_norm.py --threads 1 --clock cpu    # on a busy machine

Training mode (batch statistics, running statistics updated) forward and backward, and the
evaluation-mode forward (running statistics), float32. The two libraries
run in alternating blocks of calls, so that both see the same load on a shared machine.
Prints the median and the minimum time of each pass and fastconv's time divided by torch's
(<= 1.0 is the goal). ``--clock cpu`` times the calling thread's CPU time (with ``--threads 1``
only), which other jobs on the machine disturb far less than the wall clock.
"""

import argparse
import os
import time

import numpy as np


def _times_ms(ours, theirs, repeat, rounds=3, clock=time.perf_counter):
    """``(ours, theirs)`` lists of times in ms: ``rounds`` blocks of ``repeat`` calls of each, alternating.

    Blocks rather than call-by-call alternation, each after a short pause: Numba's and
    torch's thread pools keep spinning after a call and slow whatever runs next (see
    ``benchmarks/NOTES.md``, "Measuring: pitfalls met"); alternating blocks lets both see the
    same machine load.
    """
    ours()  # warm-up (compilation, allocation)
    theirs()
    a, b = [], []
    for _ in range(rounds):
        for fn, times in ((ours, a), (theirs, b)):
            time.sleep(0.15)
            fn()
            for _ in range(repeat):
                start = clock()
                fn()
                times.append(1e3 * (clock() - start))
    return a, b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 64, 56, 56))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="calls per block (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks of each library, alternating (default 3)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the calling thread's CPU time (with --threads 1 only: robust to a busy machine)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

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

    eval_layer = nn.BatchNorm2d(C).eval()
    teval = torch.nn.BatchNorm2d(C).eval()

    def torch_eval():
        with torch.no_grad():
            teval(tx)

    rows = [
        ("forward", lambda: layer(x), torch_forward),
        ("backward", lambda: layer.backward(dy), torch_backward),
        ("eval fwd", lambda: eval_layer(x), torch_eval),
    ]
    layer(x)
    torch_forward()
    print(f"BatchNorm2d training, x{tuple(args.shape)} float32, {args.threads} threads, {args.rounds} alternating "
          f"blocks of {args.repeat} calls ({args.clock} clock); load average {os.getloadavg()[0]:.1f}")
    print(f"{'pass':10s} {'fastconv ms':>18s} {'torch ms':>18s} {'ratio':>14s}")
    print(f"{'':10s} {'median':>9s}{'min':>9s} {'median':>9s}{'min':>9s} {'median':>7s}{'min':>7s}")
    ratios = []
    for name, ours, theirs in rows:
        a, b = _times_ms(ours, theirs, args.repeat, args.rounds, clock)
        ma, mb = float(np.median(a)), float(np.median(b))
        print(f"{name:10s} {ma:9.2f}{min(a):9.2f} {mb:9.2f}{min(b):9.2f} {ma / mb:6.2f}x{min(a) / min(b):6.2f}x")
        ratios.append(f"{name} {min(a) / min(b):.2f}")
    print("ratios to check (fastconv / torch, minima; goal <= 1.0): " + ", ".join(ratios))

if __name__ == "__main__":
    main()
