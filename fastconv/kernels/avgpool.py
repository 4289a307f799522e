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

Inline helpers: :func:`_row_sums`, :func:`_row_spread`.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT

#: Planes per parallel job: large enough to amortise scheduling and the job's buffers.
_PLANES = 16
#: Planes per parallel job of the global kernels.
_GLOBAL_PLANES = 64


@njit(**SERIAL_JIT, inline="always")
def _row_sums(row, cols, interior, prow):
    """``prow[ow] = sum(row[cols[ow, 0]:cols[ow, 1]])`` for every output column.

    ``interior = (kw, sw, ow_a, ow_b)``: columns ``[ow_a, ow_b)`` are ``kw`` wide and ``sw``
    apart; they are summed tap by tap (a loop over the output columns LLVM vectorises),
    the others one by one.
    """
    kw, sw, ow_a, ow_b = interior
    Wo = cols.shape[0]
    for ow in range(Wo):
        if ow_a <= ow < ow_b:
            continue
        acc = row[cols[ow, 0]]
        for w in range(cols[ow, 0] + 1, cols[ow, 1]):
            acc += row[w]
        prow[ow] = acc
    if ow_b > ow_a:
        base = cols[ow_a, 0]
        seg = prow[ow_a:ow_b]
        for k in range(ow_b - ow_a):
            seg[k] = row[base + k * sw]
        for j in range(1, kw):
            for k in range(ow_b - ow_a):
                seg[k] += row[base + j + k * sw]


@njit(**SERIAL_JIT, inline="always")
def _row_spread(prow, cols, interior, drow):
    """``drow[cols[ow, 0]:cols[ow, 1]] += prow[ow]`` for every output column (the adjoint of :func:`_row_sums`)."""
    kw, sw, ow_a, ow_b = interior
    Wo = cols.shape[0]
    for ow in range(Wo):
        if ow_a <= ow < ow_b:
            continue
        v = prow[ow]
        for w in range(cols[ow, 0], cols[ow, 1]):
            drow[w] += v
    if ow_b > ow_a:
        base = cols[ow_a, 0]
        seg = prow[ow_a:ow_b]
        for j in range(kw):
            for k in range(ow_b - ow_a):
                drow[base + j + k * sw] += seg[k]


@njit(**PARALLEL_JIT)
def avgpool_forward_ranges(x, rows, cols, row_div, col_div, interior, out):
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
    interior : (int, int, int, int)
        ``(kw, sw, ow_a, ow_b)``: the output columns ``[ow_a, ow_b)`` whose windows are
        ``kw`` wide and ``sw`` apart (see :func:`_row_sums`); ``(0, 0, 0, 0)`` for none.
    out : (P, Ho, Wo) array
        Fully overwritten.
    """
    P, H, W = x.shape
    Ho = rows.shape[0]
    Wo = cols.shape[0]
    for blk in prange((P + _PLANES - 1) // _PLANES):
        column = np.empty(W, dtype=x.dtype)
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            plane = x[p]
            for oh in range(Ho):
                first = plane[rows[oh, 0]]
                for w in range(W):
                    column[w] = first[w]
                for h in range(rows[oh, 0] + 1, rows[oh, 1]):
                    row = plane[h]
                    for w in range(W):
                        column[w] += row[w]
                orow = out[p, oh]
                _row_sums(column, cols, interior, orow)
                rd = row_div[oh]
                for ow in range(Wo):
                    orow[ow] = orow[ow] / (rd * col_div[ow])


@njit(**PARALLEL_JIT)
def avgpool_backward_ranges(dy, rows, cols, row_div, col_div, interior, dx):
    """The gradient of :func:`avgpool_forward_ranges`: ``dx[p, h, w] = sum of dy[p, oh, ow] / divisor``
    over the windows that hold ``(h, w)``.

    Parameters
    ----------
    dy : (P, Ho, Wo) array
    rows, cols, row_div, col_div, interior
        As for :func:`avgpool_forward_ranges`.
    dx : (P, H, W) array
        Fully overwritten; inputs in no window get zero.
    """
    P, H, W = dx.shape
    Ho = rows.shape[0]
    Wo = cols.shape[0]
    for blk in prange((P + _PLANES - 1) // _PLANES):
        column = np.empty(W, dtype=dx.dtype)
        g = np.empty(Wo, dtype=dx.dtype)
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            plane = dx[p]
            plane[:] = 0
            for oh in range(Ho):
                grow = dy[p, oh]
                rd = row_div[oh]
                for ow in range(Wo):
                    g[ow] = grow[ow] / (rd * col_div[ow])
                column[:] = 0
                _row_spread(g, cols, interior, column)
                for h in range(rows[oh, 0], rows[oh, 1]):
                    row = plane[h]
                    for w in range(W):
                        row[w] += column[w]


@njit(**PARALLEL_JIT)
def avgpool_forward_global(x, out):
    """``out[p] = mean(x[p])`` for ``(P, K)`` rows ``x`` (planes flattened), ``out`` of shape ``(P,)``."""
    P, K = x.shape
    for blk in prange((P + _GLOBAL_PLANES - 1) // _GLOBAL_PLANES):
        for p in range(blk * _GLOBAL_PLANES, min(P, (blk + 1) * _GLOBAL_PLANES)):
            row = x[p]
            acc = row[0]
            for k in range(1, K):
                acc += row[k]
            out[p] = acc / K


@njit(**PARALLEL_JIT)
def avgpool_backward_global(dy, dx):
    """``dx[p, :] = dy[p] / K`` for ``dx`` of shape ``(P, K)``: the gradient of :func:`avgpool_forward_global`."""
    P, K = dx.shape
    for blk in prange((P + _GLOBAL_PLANES - 1) // _GLOBAL_PLANES):
        for p in range(blk * _GLOBAL_PLANES, min(P, (blk + 1) * _GLOBAL_PLANES)):
            v = dy[p] / K
            row = dx[p]
            for k in range(K):
                row[k] = v
