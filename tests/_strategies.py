"""Run every strategy of ``fastconv.plan.STRATEGIES`` once, on small inputs.

Used by the 64-bit index audit (``test_numerics.py``), which needs every registered
kernel compiled, and checked by ``test_plan.py``, which asserts that the walk reaches the
whole registry. The geometries come from the case table; the tiled forward kernels are
reached at both vector widths by planning for a 512- and a 256-bit CPU.
"""

import numpy as np

from fastconv import _validation as V
from fastconv import plan as P

#: Two CPUs the plan chooses between (the tile of the tiled forward kernel).
CPUS = (P.CPU("512-bit vectors (AVX-512)", 64), P.CPU("256-bit vectors (AVX2)", 32))


def conv_plans(rows, dtype):
    """``(row, cpu, plan)`` for every conv row of the case table on both CPUs."""
    for row in rows:
        g = V.conv_geometry("test", row.x_shape, row.w_shape, row.stride_hw, row.pad_hw, **row.options)
        for cpu in CPUS:
            yield row, cpu, P.plan_conv2d(g, dtype, cpu)


def pool_plans(rows, dtype):
    """``(row, plan)`` for every pool row of the case table."""
    for row in rows:
        g = V.pool_geometry("test", row.x_shape, row.kernel_hw, row.stride_hw, row.pad_hw, "x", row.dilation_hw,
                            row.ceil_mode)
        yield row, P.plan_max_pool2d(g, dtype)


def avg_pool_plans(rows, dtype):
    """``(row, plan)`` for every average-pool row (:data:`benchmarks.cases.AVG_POOL_ROWS`)."""
    import fastconv.functional as F

    for row in rows:
        yield row, F.avg_pool2d_plan(row.x_shape, row.kernel_hw, row.stride_hw, row.pad_hw, dtype, **row.options)


def adaptive_pool_plans(rows, dtype):
    """``(row, avg_plan, max_plan)`` for every adaptive row (:data:`benchmarks.cases.ADAPTIVE_POOL_ROWS`)."""
    for row in rows:
        yield row, P.plan_adaptive_avg_pool2d(row.x_shape, row.out_hw, np.dtype(dtype)), \
            P.plan_adaptive_max_pool2d(row.x_shape, row.out_hw, np.dtype(dtype))


def run_pool_variants(rows_avg, rows_adaptive, dtype, rng):
    """Run every average and adaptive plan of the case table once; returns the strategies run."""
    plans = [p for _, p in avg_pool_plans(rows_avg, dtype)]
    plans += [p for _, a, m in adaptive_pool_plans(rows_adaptive, dtype) for p in (a, m)]
    reached = set()
    for plan in plans:
        x = rng.standard_normal(plan.geometry.x_shape).astype(dtype)
        if isinstance(plan, P.AvgPoolPlan):
            plan.run_backward(plan.run_forward(x))
        else:
            reached |= run_pool(plan, rng)
        reached |= set(plan.strategies())
    return reached


def run_conv(plan, rng, finite=True):
    """Run every pass of ``plan`` (and its non-finite fallback) on random data; returns the strategies run."""
    g, dtype = plan.geometry, plan.dtype
    x = rng.standard_normal(g.x_shape).astype(dtype)
    w = rng.standard_normal(g.w_shape).astype(dtype)
    dy = rng.standard_normal(g.y_shape).astype(dtype)
    _, packed = plan.run_forward(x, w, np.zeros(g.F, dtype))
    plan.run_input_grad(dy, w)
    plan.run_weight_grad(dy, x, packed)
    plan.run_bias_grad(dy)
    if plan.weight_grad.needs_finite:
        x[(0,) * 4] = np.inf
        plan.run_weight_grad(dy, x)
    return set(plan.strategies())


def run_elementwise_and_dense(dtype, rng):
    """ReLU, the other activations, the dense layer (forward and backward) and matmul; returns the strategies run."""
    import fastconv.functional as F

    x = rng.standard_normal((5, 7)).astype(dtype)
    w = rng.standard_normal((3, 7)).astype(dtype)
    F.relu_backward(x, F.relu(x))
    F.linear_backward(F.linear(x, w), x, w)
    F.matmul(x, w.T.copy())
    for op, variants in P.POINTWISE.items():
        for name in variants:
            P.pointwise_backward(op, x, x, 0.5, name), P.pointwise_forward(op, x, 0.5, name)
    for dim in (0, 1):  # columns, rows
        for log in (False, True):
            P.softmax_backward(x, P.softmax_forward(x, dim, log), dim, log)
    activations = tuple(P.POINTWISE) + ("softmax", "log_softmax")
    return {s for (op, _), s in P.STRATEGIES.items() if op.startswith(("relu", "linear", "matmul") + activations)}


def run_norm(dtype, rng):
    """Batch norm forward (training and eval) and backward, channel by channel and by rows, and group
    norm (the separate statistics kernels); returns the norm strategies run."""
    import numba

    import fastconv.functional as F

    C = numba.config.NUMBA_NUM_THREADS + 1  # the fused per-channel strategies need a channel per thread
    x = rng.standard_normal((3, C, 5)).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    _, mean, invstd = F.batch_norm(x, rm, rv, training=True, return_stats=True)
    F.batch_norm(x, rm, rv)
    F.batch_norm_backward(x, x, mean, invstd)
    y, saved = P.group_norm_forward(x, 1, None, None, 1e-5)
    P.group_norm_backward(y, x, 1, saved, np.ones(C, dtype))
    P.norm_affine(x, mean, invstd, np.zeros(C), stream=True)  # large outputs' non-temporal stores
    P.norm_fused_backward(x, x, mean, invstd, np.ones(C), True, stream=True)
    return {s for (op, _), s in P.STRATEGIES.items() if op.startswith("norm_")}


def run_pool(plan, rng):
    x = rng.standard_normal(plan.geometry.x_shape).astype(plan.dtype)
    y, idx = plan.run_forward(x)
    plan.run_backward(y, idx)
    plan.run_backward(y, idx, relu_output=y)
    return set(plan.strategies())
