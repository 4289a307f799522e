"""Compile every kernel ahead of time, once, into Numba's disk cache.

A kernel is compiled the first time a call needs it (several seconds each with a cold cache; see
``docs/compile.md``). To pay that once, up front, with a progress line::

    python -m fastconv.compile                  # float32 and float64
    python -m fastconv.compile --dtype float32

or from Python, ``fastconv.compile.compile_all()``. It runs every strategy of
:data:`fastconv.plan.STRATEGIES` on tiny inputs for this CPU, so later processes load machine
code from the cache instead of compiling (unless ``FASTCONV_NO_CACHE=1``).
"""

import argparse
import sys
import time

import numba
import numpy as np

from . import functional as F
from . import plan as P

__all__ = ["CONV_GEOMETRIES", "compile_all", "main"]

#: Tiny convolutions that, planned for the host CPU, reach every conv strategy:
#: ``(x_shape, w_shape, stride, padding)``, and a dict of ``dilation``/``groups`` for issue 15's strategies.
CONV_GEOMETRIES = (
    ((2, 1, 9, 9), (4, 1, 3, 3), 1, 1),       # flat forward and weight gradient (first layer)
    ((2, 1, 9, 9), (4, 1, 3, 3), 2, 1),       # filter_vector forward, the phases' vector input gradient
    ((2, 8, 5, 5), (32, 8, 3, 3), 1, 1),      # vector forward, input and weight gradient
    ((2, 1, 9, 9), (64, 1, 3, 3), 2, 1),      # phases on one shared pack (tiled), tiled weight gradient
    ((2, 16, 5, 5), (3, 16, 3, 3), 1, 1),     # tiled forward, weight gradient by filters
    ((2, 16, 5, 20), (3, 16, 3, 3), 1, 1),    # weight gradient by rows
    ((2, 8, 4, 4), (4, 8, 1, 1), 1, 0),       # pointwise matrix products
    ((2, 16, 4, 3), (32, 1, 3, 3), 2, 1, {"groups": 16}),  # depthwise, NHWC (groups 16, 2 filters per channel)
    ((2, 4, 5, 40), (8, 1, 3, 3), 1, 1, {"groups": 4}),    # depthwise, flat planes (stride 1, Wo == W)
    ((2, 4, 5, 40), (8, 1, 3, 3), 1, 0, {"groups": 4}),    # depthwise, NCHW rows (wide maps, Wo != W)
    ((2, 4, 5, 40), (8, 1, 3, 3), 2, 1, {"groups": 4}),    # depthwise, NCHW rows, the strided input gradient
    ((2, 8, 24, 24), (4, 8, 1, 1), 2, 0),     # 1x1 at stride 2: the subsampled matrix products
    ((2, 40, 9, 10), (17, 40, 1, 1), 2, 0),   # 1x1 at stride 2, small plane: the subsampled vector tiles
    ((2, 4, 7, 7), (4, 2, 3, 3), 1, 1, {"groups": 2}),     # grouped flat kernels (stride 1)
    ((2, 4, 7, 7), (4, 2, 3, 3), 2, 1, {"groups": 2}),     # grouped vector kernels (strided), the gather
    ((2, 32, 5, 5), (32, 16, 3, 3), 1, 1, {"groups": 2}),  # grouped vector kernels (stride 1, 32 registers)
    ((2, 32, 5, 5), (32, 32, 3, 3), 1, 2, {"dilation": 2}),  # dilated vector kernels (stride 1), dx a forward pass
    ((2, 4, 7, 7), (4, 4, 2, 2), 1, 3, {"dilation": 2}),   # dilation phases: dx when the padding passes d*(K-1)
)


def _run_conv(plan, rng):
    g = plan.geometry
    x, w, dy = (rng.standard_normal(s).astype(plan.dtype) for s in (g.x_shape, g.w_shape, g.y_shape))
    _, packed = plan.run_forward(x, w)
    plan.run_input_grad(dy, w)
    plan.run_weight_grad(dy, x, packed)
    plan.run_bias_grad(dy)
    if plan.weight_grad.needs_finite:
        x.flat[0] = np.inf
        plan.run_weight_grad(dy, x)


def _run_others(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        y, idx = F.max_pool2d(x, k, s, p)
        F.max_pool2d_backward(y, idx, x.shape)
    wide = np.zeros((1, 1, 2, 70), dtype)  # 70 columns: window_any (narrow outputs take window_columns)
    F.max_pool2d(wide, 3, 2, 1)
    F.avg_pool2d(wide, 3, 2, 1)  # tap by tap over the interior columns
    for size in (1, 3):  # global, ranges
        F.adaptive_avg_pool2d_backward(F.adaptive_avg_pool2d(x, size), x.shape)
        F.adaptive_max_pool2d(x, size)
    F.avg_pool2d_backward(F.avg_pool2d(x, 3, 2, 1), x.shape, 3, 2, 1)
    a, w = x.reshape(12, 18), rng.standard_normal((4, 18)).astype(dtype)
    F.relu_backward(x, F.relu(x))
    F.linear_backward(F.linear(a, w), a, w)
    F.matmul(a, w.T.copy())
    for C in (1, numba.config.NUMBA_NUM_THREADS + 1):  # batch norm by rows and channel by channel
        xc = rng.standard_normal((2, C, 6)).astype(dtype)
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        y, mean, invstd = F.batch_norm(xc, rm, rv, training=True, return_stats=True)
        F.batch_norm(xc, rm, rv)
        F.batch_norm_backward(y, xc, mean, invstd)
        P.norm_affine(xc, mean, invstd, np.zeros(C), stream=True)  # large outputs' non-temporal stores
        P.norm_fused_backward(y, xc, mean, invstd, np.ones(C), True, stream=True)
    y, saved = P.group_norm_forward(x, 3, None, None, 1e-5)  # layer and group norm (cs231n's compat)
    P.group_norm_backward(y, x, 3, saved, np.ones(3, dtype))


def compile_all(dtypes=("float32", "float64"), progress=True, file=None):
    """Compile (or load from the cache) every kernel fastconv can run on this CPU, for ``dtypes``.

    Returns the set of strategies run: all of :data:`fastconv.plan.STRATEGIES`.
    """
    file = sys.stderr if file is None else file
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    steps = [(dt, geo) for dt in dtypes for geo in CONV_GEOMETRIES] + [(dt, None) for dt in dtypes]
    reached = set()
    for k, (dt, geo) in enumerate(steps, start=1):
        if progress:
            what = "pooling, ReLU, dense and norm layers" if geo is None else f"conv2d x{geo[0]} w{geo[1]}"
            file.write(f"\rcompiling fastconv kernels: {k}/{len(steps)} ({np.dtype(dt).name} {what})"
                       f" {time.perf_counter() - start:5.1f} s\033[K")
            file.flush()
        if geo is None:
            _run_others(dt, rng)
            reached |= {s for (op, _), s in P.STRATEGIES.items() if not op.startswith("conv2d")}
        else:
            plan = F.conv2d_plan(*geo[:4], dtype=dt, **(geo[4] if len(geo) > 4 else {}))
            _run_conv(plan, rng)
            reached |= set(plan.strategies())
    if progress:
        file.write(f"\rcompiled fastconv's kernels for {', '.join(np.dtype(d).name for d in dtypes)} in "
                   f"{time.perf_counter() - start:.1f} s\033[K\n")
    return reached


def main(argv=None):
    """The command line, ``python -m fastconv.compile [--dtype {float32,float64}] [--quiet]``; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m fastconv.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "float64"), action="append",
                        help="compile for this dtype (repeatable; default: both)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    compile_all(tuple(args.dtype or ("float32", "float64")), progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
