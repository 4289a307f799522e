"""Max-pool kernels: the forward pass with recorded winners, and the backward routing.

Both run over NCHW planes directly: one parallel job per ``(n, c)`` plane, so every
job reads and writes its own plane only.

Winner rule (PyTorch's CPU rule): windows are scanned in row-major order starting from
``-inf`` at the first in-bounds element; a value replaces the current best when it is
strictly greater, or when it is NaN. Ties therefore keep the first maximum, and a NaN
in the window wins (the last NaN, as in PyTorch). Padding is ``-inf``: out-of-bounds
positions are simply never visited. The fast-math flags in :mod:`fastconv.config`
keep NaN and infinities exact, which these comparisons rely on.

Kernels
-------
- :func:`maxpool_forward_2x2`: 2 x 2 windows at stride 2 without padding.
- :func:`maxpool_forward_window`: any window, stride, padding and dilation (and the
  windows ``ceil_mode`` adds, which end past the input: they are clipped).
- :func:`maxpool_forward_columns`: the same windows (dilation, ``ceil_mode``), each window's
  rows merged first across the whole input row, then its columns: for narrow planes.
- :func:`maxpool_forward_ranges`: windows given as row and column ranges (adaptive pooling).
- :func:`maxpool_backward_route`: each output gradient to its window's winner.

Inline helpers: :func:`_window_max`, :func:`_first_tap`, :func:`_merge_rows`, :func:`_merge_columns`.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT

#: Planes per parallel job of the row-merging kernels (their row buffers are allocated once per job).
_PLANES = 16


@njit(**SERIAL_JIT, inline="always")
def _window_max(plane, h_lo, h_hi, dh, w_lo, w_hi, dw):
    """Winner of one window by the rule above: ``(value, flat index h * W + w)``.

    The window's taps are rows ``h_lo, h_lo + dh, ... < h_hi`` and columns likewise.
    """
    W = plane.shape[1]
    best = -np.inf
    best_idx = h_lo * W + w_lo
    for h in range(h_lo, h_hi, dh):
        row = plane[h]
        for w in range(w_lo, w_hi, dw):
            v = row[w]
            if v > best or v != v:
                best = v
                best_idx = h * W + w
    return best, best_idx


@njit(**SERIAL_JIT, inline="always")
def _first_tap(start, step):
    """The first tap ``start + i * step`` (``i >= 0``) that is not in the leading padding."""
    return start if start >= 0 else start + ((step - 1 - start) // step) * step


@njit(**PARALLEL_JIT)
def maxpool_forward_window(x, window, stride, padding, dilation, out, indices):
    """Max-pool every ``(n, c)`` plane of ``x``.

    The windows of one output row that lie wholly inside the row's columns (all but at
    most a few at the edges) are computed together, tap by tap: the tap's inputs are
    copied into a contiguous buffer and merged into the row's running maxima with a
    branch-free select, a loop LLVM vectorises. Window by window, the data-dependent
    branch of the comparison mispredicted on about every other element (random data:
    6.3 ms on 64x32x28x28, 2.2 ms now, on an AVX2 machine). The edge windows are
    scanned one by one. Both visit a window's elements in the same row-major order, so
    the winner rule is exactly the same.

    Parameters
    ----------
    x : (P, H, W) array
        Input planes (``P = N * C``).
    window, stride, padding, dilation : (int, int)
        ``(kh, kw)``, ``(sh, sw)``, the (``-inf``) padding ``(ph, pw)`` and the spacing
        of the taps ``(dh, dw)``. Windows may end past the input (``ceil_mode``): clipped.
    out : (P, Ho, Wo) array
        Maxima, fully overwritten.
    indices : (P, Ho, Wo) int64 array
        Flat index ``h * W + w`` of each winner inside its plane, fully overwritten.
    """
    kh, kw = window
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    # Output columns [ow_a, ow_b) have their whole (dilated) window inside [0, W).
    ow_a = min((pw + sw - 1) // sw, Wo)
    ow_b = max(min((W - (kw - 1) * dw - 1 + pw) // sw + 1, Wo), ow_a)
    inner = ow_b - ow_a
    for p in prange(P):
        plane = x[p]
        vals = np.empty(inner, dtype=x.dtype)
        for oh in range(Ho):
            h0 = oh * sh - ph
            h_lo = _first_tap(h0, dh)
            h_hi = min(h0 + (kh - 1) * dh + 1, H)
            orow = out[p, oh]
            irow = indices[p, oh]
            for ow in range(ow_a):
                w0 = ow * sw - pw
                orow[ow], irow[ow] = _window_max(plane, h_lo, h_hi, dh, _first_tap(w0, dw),
                                                 min(w0 + (kw - 1) * dw + 1, W), dw)
            for ow in range(ow_b, Wo):
                w0 = ow * sw - pw
                orow[ow], irow[ow] = _window_max(plane, h_lo, h_hi, dh, _first_tap(w0, dw),
                                                 min(w0 + (kw - 1) * dw + 1, W), dw)
            best = orow[ow_a:ow_b]
            best_idx = irow[ow_a:ow_b]
            first = True
            for h in range(h_lo, h_hi, dh):
                row = plane[h]
                for j in range(kw):
                    start = ow_a * sw - pw + j * dw
                    for k in range(inner):
                        vals[k] = row[start + k * sw]
                    at = h * W + start
                    if first:  # the window's first element: taken whatever it is
                        for k in range(inner):
                            best[k] = vals[k]
                            best_idx[k] = at + k * sw
                        first = False
                        continue
                    for k in range(inner):
                        v = vals[k]
                        b = best[k]
                        take = (v > b) | (v != v)
                        best[k] = v if take else b
                        best_idx[k] = at + k * sw if take else best_idx[k]


@njit(**SERIAL_JIT, inline="always")
def _merge_rows(plane, h_lo, h_hi, dh, col, col_idx):
    """Column by column, the winner of rows ``h_lo, h_lo + dh, ... < h_hi`` (the rule above, down each column).

    ``col[w]`` and ``col_idx[w]`` (flat index ``h * W + w``) receive it; branch-free
    selects over whole rows, which LLVM vectorises.
    """
    W = plane.shape[1]
    first = plane[h_lo]
    for w in range(W):
        col[w] = first[w]
        col_idx[w] = h_lo * W + w
    for h in range(h_lo + dh, h_hi, dh):
        row = plane[h]
        for w in range(W):
            v = row[w]
            b = col[w]
            take = (v > b) | (v != v)
            col[w] = v if take else b
            col_idx[w] = h * W + w if take else col_idx[w]


@njit(**SERIAL_JIT, inline="always")
def _merge_columns(col, col_idx, w_lo, w_hi, dw):
    """The winner among column winners ``col[w]`` (at flat ``col_idx[w]``), ``w = w_lo, w_lo + dw, ... < w_hi``.

    Each column winner is its column's last NaN, else its first maximum (the rule above,
    scanned down the column). The window's winner in row-major order is then the NaN of
    the largest flat index, else the maximum of the smallest flat index: the merge
    compares indices on ties, so the order of the columns does not matter.
    """
    best = col[w_lo]
    at = col_idx[w_lo]
    for w in range(w_lo + dw, w_hi, dw):
        v = col[w]
        i = col_idx[w]
        v_nan = v != v
        b_nan = best != best
        take = (v_nan & ((not b_nan) | (i > at))) | ((not v_nan) & (not b_nan) & ((v > best) | ((v == best) & (i < at))))
        best = v if take else best
        at = i if take else at
    return best, at


@njit(**PARALLEL_JIT)
def maxpool_forward_columns(x, window, stride, padding, dilation, out, indices):
    """:func:`maxpool_forward_window` for narrow planes: rows first, then columns.

    For each output row, the window's input rows are merged column by column over the
    whole width (branch-free selects over contiguous rows, which LLVM vectorises), then
    each output's columns are merged by :func:`_merge_columns`. On 14 x 14 planes the
    tap-by-tap kernel spends its time in loops of 6 outputs. Same winner rule and
    parameters as :func:`maxpool_forward_window`.
    """
    kh, kw = window
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    for blk in prange((P + _PLANES - 1) // _PLANES):
        col = np.empty(W, dtype=x.dtype)
        col_idx = np.empty(W, dtype=np.int64)
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            plane = x[p]
            for oh in range(Ho):
                h0 = oh * sh - ph
                h_lo = _first_tap(h0, dh)
                h_hi = min(h0 + (kh - 1) * dh + 1, H)
                _merge_rows(plane, h_lo, h_hi, dh, col, col_idx)
                for ow in range(Wo):
                    w0 = ow * sw - pw
                    out[p, oh, ow], indices[p, oh, ow] = _merge_columns(col, col_idx, _first_tap(w0, dw),
                                                                        min(w0 + (kw - 1) * dw + 1, W), dw)


@njit(**PARALLEL_JIT)
def maxpool_forward_ranges(x, rows, cols, out, indices):
    """Max-pool every plane of ``x`` over windows ``rows[oh] x cols[ow]`` (adaptive pooling).

    Same winner rule, and the order of :func:`maxpool_forward_columns`: a window's rows
    merged across the whole input row, then its columns (on 32x64x56x56 to 7x7, one
    thread: 21.7 ms scanning each window on its own, PyTorch 9.8).

    Parameters
    ----------
    x : (P, H, W) array
    rows, cols : (Ho, 2), (Wo, 2) int64 arrays
        ``[start, end)`` of every output row's and column's window, inside the input.
    out, indices : (P, Ho, Wo) arrays
        Maxima and flat winner indices ``h * W + w``, fully overwritten.
    """
    P, _, W = x.shape
    Ho = rows.shape[0]
    Wo = cols.shape[0]
    for blk in prange((P + _PLANES - 1) // _PLANES):
        col = np.empty(W, dtype=x.dtype)
        col_idx = np.empty(W, dtype=np.int64)
        for p in range(blk * _PLANES, min(P, (blk + 1) * _PLANES)):
            for oh in range(Ho):
                _merge_rows(x[p], rows[oh, 0], rows[oh, 1], 1, col, col_idx)
                for ow in range(Wo):
                    out[p, oh, ow], indices[p, oh, ow] = _merge_columns(col, col_idx, cols[ow, 0], cols[ow, 1], 1)


@njit(**PARALLEL_JIT)
def maxpool_backward_route(dy, indices, dx):
    """Route each ``dy`` element to its winner: ``dx[p, indices[p, k]] += dy[p, k]``.

    An index outside ``[0, H*W)`` is never used to write; it is counted instead, and the
    count is returned (0 for valid indices), so the caller can refuse the call without a
    separate pass over ``indices`` to check them first.

    Parameters
    ----------
    dy, indices : (P, K) arrays
        Output gradient and winners (flat indices into a plane).
    dx : (P, H * W) array
        Input gradient, fully overwritten; overlapping windows accumulate.

    Returns
    -------
    int
        How many indices were out of range.
    """
    P, K = dy.shape
    HW = dx.shape[1]
    bad = 0
    for p in prange(P):
        drow = dx[p]
        drow[:] = 0
        grow = dy[p]
        irow = indices[p]
        for k in range(K):
            i = irow[k]
            if 0 <= i < HW:
                drow[i] += grow[k]
            else:
                bad += 1
    return bad


@njit(**PARALLEL_JIT)
def maxpool_forward_2x2(x, out, indices):
    """:func:`maxpool_forward_window` for 2 x 2 windows at stride 2 without padding.

    The most common pooling layer gets a kernel of its own: with the window and stride
    known at compile time, the four taps of a row of windows are two stride-2 loads from
    each of two input rows, which LLVM vectorises (de-interleaving shuffles) and merges
    with branch-free selects. Same winner rule, same scan order ``(0,0), (0,1), (1,0),
    (1,1)``: the first element is taken whatever it is, a later one replaces it when it is
    strictly greater or NaN.

    Parameters
    ----------
    x : (P, H, W) array
        Input planes.
    out : (P, H // 2, W // 2) array
        Maxima, fully overwritten.
    indices : (P, H // 2, W // 2) int64 array
        Flat winner indices ``h * W + w``, fully overwritten.
    """
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0 = plane[2 * oh]
            r1 = plane[2 * oh + 1]
            orow = out[p, oh]
            irow = indices[p, oh]
            base = 2 * oh * W
            for ow in range(Wo):
                best = r0[2 * ow]
                at = base + 2 * ow
                v = r0[2 * ow + 1]
                take = (v > best) | (v != v)
                best = v if take else best
                at = base + 2 * ow + 1 if take else at
                v = r1[2 * ow]
                take = (v > best) | (v != v)
                best = v if take else best
                at = base + W + 2 * ow if take else at
                v = r1[2 * ow + 1]
                take = (v > best) | (v != v)
                best = v if take else best
                at = base + W + 2 * ow + 1 if take else at
                orow[ow] = best
                irow[ow] = at
