"""Average-pool kernels: windows given as row and column ranges, and the global average.

Every average pooling fastconv runs -- ``avg_pool2d`` with any stride, padding,
``ceil_mode``, ``count_include_pad`` and ``divisor_override``, and
``adaptive_avg_pool2d`` -- has *separable* windows: output ``(oh, ow)`` averages input
rows ``rows[oh]`` times columns ``cols[ow]``, and its divisor is ``row_div[oh] *
col_div[ow]`` (the plan works both out; :mod:`fastconv.plan`). So a plane is pooled in
two passes: each input row is summed over every column window (``H x Wo`` partial
sums), then the partial sums of a window's rows are added, a loop over the output row
that LLVM vectorises. The backward pass runs the same two passes in reverse. One
parallel job per ``(n, c)`` plane: every job writes its own plane only.

Kernels
-------
- :func:`avgpool_forward_ranges`: the average over ``rows[oh] x cols[ow]``.
- :func:`avgpool_backward_ranges`: each output gradient spread evenly over its window.
- :func:`avgpool_forward_global`: the mean of each plane (the ResNet head).
- :func:`avgpool_backward_global`: each plane's gradient spread over the plane.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT

#: Planes per parallel job of the global kernels (small planes: amortise the scheduling).
_PLANES = 64


@njit(**PARALLEL_JIT)
def avgpool_forward_ranges(x, rows, cols, row_div, col_div, out):
    """``out[p, oh, ow] = sum(x[p, rows[oh], cols[ow]]) / (row_div[oh] * col_div[ow])``.

    Parameters
    ----------
    x : (P, H, W) array
        Input planes.
    rows, cols : (Ho, 2), (Wo, 2) int64 arrays
        ``[start, end)`` of each output row's and column's window, inside the input and
        never empty.
    row_div, col_div : (Ho,), (Wo,) arrays of x's dtype
        The divisor's factors.
    out : (P, Ho, Wo) array
        Fully overwritten.
    """
    P, H, W = x.shape
    Ho = rows.shape[0]
    Wo = cols.shape[0]
    h_lo = rows[:, 0].min()
    h_hi = rows[:, 1].max()
    for p in prange(P):
        plane = x[p]
        part = np.empty((H, Wo), dtype=x.dtype)
        for h in range(h_lo, h_hi):
            row = plane[h]
            prow = part[h]
            for ow in range(Wo):
                acc = row[cols[ow, 0]]
                for w in range(cols[ow, 0] + 1, cols[ow, 1]):
                    acc += row[w]
                prow[ow] = acc
        for oh in range(Ho):
            orow = out[p, oh]
            first = part[rows[oh, 0]]
            for ow in range(Wo):
                orow[ow] = first[ow]
            for h in range(rows[oh, 0] + 1, rows[oh, 1]):
                prow = part[h]
                for ow in range(Wo):
                    orow[ow] += prow[ow]
            rd = row_div[oh]
            for ow in range(Wo):
                orow[ow] = orow[ow] / (rd * col_div[ow])


@njit(**PARALLEL_JIT)
def avgpool_backward_ranges(dy, rows, cols, row_div, col_div, dx):
    """The gradient of :func:`avgpool_forward_ranges`: ``dx[p, h, w] = sum of dy[p, oh, ow] / divisor``
    over the windows that hold ``(h, w)``.

    Parameters
    ----------
    dy : (P, Ho, Wo) array
    rows, cols, row_div, col_div
        As for :func:`avgpool_forward_ranges`.
    dx : (P, H, W) array
        Fully overwritten; inputs in no window get zero.
    """
    P, H, W = dx.shape
    Ho = rows.shape[0]
    Wo = cols.shape[0]
    for p in prange(P):
        part = np.zeros((H, Wo), dtype=dx.dtype)
        g = np.empty(Wo, dtype=dx.dtype)
        for oh in range(Ho):
            grow = dy[p, oh]
            rd = row_div[oh]
            for ow in range(Wo):
                g[ow] = grow[ow] / (rd * col_div[ow])
            for h in range(rows[oh, 0], rows[oh, 1]):
                prow = part[h]
                for ow in range(Wo):
                    prow[ow] += g[ow]
        for h in range(H):
            drow = dx[p, h]
            drow[:] = 0
            prow = part[h]
            for ow in range(Wo):
                v = prow[ow]
                for w in range(cols[ow, 0], cols[ow, 1]):
                    drow[w] += v


@njit(**PARALLEL_JIT)
def avgpool_forward_global(x, out):
    """``out[p] = mean(x[p])`` for ``(P, K)`` rows ``x`` (planes flattened), ``out`` of shape ``(P,)``."""
    P, K = x.shape
    for blk in prange((P + _PLANES - 1) // _PLANES):
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            row = x[p]
            acc = row[0]
            for k in range(1, K):
                acc += row[k]
            out[p] = acc / K


@njit(**PARALLEL_JIT)
def avgpool_backward_global(dy, dx):
    """``dx[p, :] = dy[p] / K`` for ``dx`` of shape ``(P, K)``: the gradient of :func:`avgpool_forward_global`."""
    P, K = dx.shape
    for blk in prange((P + _PLANES - 1) // _PLANES):
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            v = dy[p] / K
            row = dx[p]
            for k in range(K):
                row[k] = v
