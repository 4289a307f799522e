"""The tiled strategy: dot-product register tiles over interleaved zero-padded NHWC rows.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

Layout
------
Activations are zero-padded NHWC (``xp[n, h, w, c]``). Each parallel job interleaves the
``KH`` input rows that one output row reads into a small buffer ``buf[w, i, c]``
(:func:`_stack_rows`), so that the receptive field of an output pixel -- taps ``(j, i)``
and channels ``c`` -- is one contiguous run of ``R = KW * KH * C`` elements. Weights are
``(F, R)`` in the same order.

Kernels
-------
- :func:`tiled_forward_4x4`: each job owns one output row ``(n, oh)``; 4 filters x 4
  pixels are computed as 16 dot products along the contiguous run (:func:`_row_4x4`).
  The plan runs it only for fewer filters than a vector register holds (the input
  gradient of a first layer): there the vector kernels would compute mostly padding.
  (A 4 x 3 variant for 16-register CPUs went with the vector kernels, which cover those
  CPUs' common layers; with fewer than 4 filters both ran :func:`_forward_single_filters`.)
- :func:`tiled_weight_grad_by_rows`: each job owns a contiguous chunk of the ``N * Ho``
  output rows and its own partial ``(F, R)``; a rank-4 update per 4 filters x 4 pixels
  (:func:`_weight_grad_row`). The caller sums the partials in a fixed order: no atomics,
  bitwise reproducible for a given thread count.
- :func:`tiled_weight_grad_by_filters`: the same arithmetic with the filters split
  between the jobs (no partials), for narrow maps and large weights.

Inline helpers: :func:`_stack_rows`, :func:`_row_tiles`, :func:`_row_4x4`,
:func:`_forward_single_filters` (filters left over by a tile),
:func:`_weight_grad_row`, :func:`_weight_grad_row_4`.

Indexing goes through slices taken before each inner loop, so the loop index is a
``range`` variable LLVM knows to be non-negative. With a run-time offset in the index
expression, Numba's negative-index wraparound blocks vector loads.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


@njit(**SERIAL_JIT, inline="always")
def _stack_rows(xp, n, h0, KH, buf):
    """``buf[w, i, c] = xp[n, h0 + i, w, c]``: the KH input rows one output row reads, interleaved.

    With this layout the whole receptive field of output column ``ow`` -- taps
    ``(j, i)`` and channels ``c`` -- is the contiguous run ``buf[ow*sw : ow*sw + KW]``,
    so the reduction of the forward pass (and the weight gradient's vector loop) runs
    over ``KW * KH * C`` contiguous elements instead of ``C``.
    """
    for i in range(KH):
        src = xp[n, h0 + i]
        for w in range(src.shape[0]):
            buf[w, i, :] = src[w]


@njit(**SERIAL_JIT, inline="always")
def _row_tiles(Wo):
    """How the forward kernels cover an output row of ``Wo`` pixels: ``(tiles, narrow)``.

    Rows of 4 or more pixels take ``ceil(Wo / 4)`` tiles of 4, the last one starting at
    ``min(4 * t, Wo - 4)`` so that it overlaps the one before it (its recomputed outputs
    get the same values again) and ``narrow = 0``; narrower rows take no tile and go pixel
    by pixel (``narrow = Wo``). With the last ``Wo % 4`` pixels one at a time, each paying
    the loads of a whole tile, 7x7 maps ran 28% slower than 8x8 ones.
    """
    if Wo >= 4:
        return (Wo + 3) // 4, 0
    return 0, Wo


@njit(**PARALLEL_JIT)
def tiled_forward_4x4(xp, wt, KH, b, sh, sw, out):
    """Direct cross-correlation, register-tiled: ``out = b + sum xp[...] * wt[...]``.

    ``out[n, f, oh, ow] = b[f] + sum_{j, i, c} xp[n, oh*sh + i, ow*sw + j, c] * wt[f, (j*KH + i)*C + c]``.

    Each parallel job computes one output row ``(n, oh)``. It interleaves the KH input
    rows it needs (see :func:`_stack_rows`) so that every output pixel's receptive field
    is one contiguous vector, then computes 4 filters x 4 pixels at a time as 16
    dot products sharing their loads (16 vector accumulators held in registers).

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wt : (F, KW * KH * C) array
        Weights ordered ``(f, j, i, c)`` (columns, then rows, then channels).
    KH : int
        Kernel height.
    b : (F,) array
        Bias (zeros when the layer has none).
    sh, sw : int
        Strides.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    N, Hp, Wp, C = xp.shape
    F = wt.shape[0]
    Ho = out.shape[2]
    step = sw * KH * C
    F4 = F - F % 4
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        buf = np.empty((Wp, KH, C), dtype=xp.dtype)
        _stack_rows(xp, n, oh * sh, KH, buf)
        bf = buf.reshape(Wp * KH * C)
        for f0 in range(0, F4, 4):
            _row_4x4(bf, wt, b, step, f0, out[n, :, oh])
        _forward_single_filters(bf, wt, b, step, F4, out[n, :, oh])


@njit(**SERIAL_JIT, inline="always")
def _row_4x4(bf, wt, b, step, f0, orows):
    """Output row ``orows`` (``out[n, :, oh]``) of filters ``f0:f0+4``: tiles of 4 filters x 4 pixels.

    The 16 dot products of a tile run along the contiguous receptive field ``bf[ow*step:][:R]``
    and share their loads (16 accumulators). Rows narrower than 4 go pixel by pixel.
    """
    R = wt.shape[1]
    Wo = orows.shape[1]
    tiles, narrow = _row_tiles(Wo)
    zero = np.zeros(1, dtype=orows.dtype)[0]
    w0 = wt[f0]
    w1 = wt[f0 + 1]
    w2 = wt[f0 + 2]
    w3 = wt[f0 + 3]
    o0 = orows[f0]
    o1 = orows[f0 + 1]
    o2 = orows[f0 + 2]
    o3 = orows[f0 + 3]
    for t in range(tiles):
        ow = min(4 * t, Wo - 4)  # the last tile overlaps the one before it
        a = ow * step
        x0 = bf[a:a + R]
        x1 = bf[a + step:a + step + R]
        x2 = bf[a + 2 * step:a + 2 * step + R]
        x3 = bf[a + 3 * step:a + 3 * step + R]
        s00 = s01 = s02 = s03 = zero
        s10 = s11 = s12 = s13 = s00
        s20 = s21 = s22 = s23 = s00
        s30 = s31 = s32 = s33 = s00
        for r in range(R):
            v0 = w0[r]
            v1 = w1[r]
            v2 = w2[r]
            v3 = w3[r]
            u = x0[r]
            s00 += u * v0
            s01 += u * v1
            s02 += u * v2
            s03 += u * v3
            u = x1[r]
            s10 += u * v0
            s11 += u * v1
            s12 += u * v2
            s13 += u * v3
            u = x2[r]
            s20 += u * v0
            s21 += u * v1
            s22 += u * v2
            s23 += u * v3
            u = x3[r]
            s30 += u * v0
            s31 += u * v1
            s32 += u * v2
            s33 += u * v3
        o0[ow] = s00 + b[f0]
        o1[ow] = s01 + b[f0 + 1]
        o2[ow] = s02 + b[f0 + 2]
        o3[ow] = s03 + b[f0 + 3]
        o0[ow + 1] = s10 + b[f0]
        o1[ow + 1] = s11 + b[f0 + 1]
        o2[ow + 1] = s12 + b[f0 + 2]
        o3[ow + 1] = s13 + b[f0 + 3]
        o0[ow + 2] = s20 + b[f0]
        o1[ow + 2] = s21 + b[f0 + 1]
        o2[ow + 2] = s22 + b[f0 + 2]
        o3[ow + 2] = s23 + b[f0 + 3]
        o0[ow + 3] = s30 + b[f0]
        o1[ow + 3] = s31 + b[f0 + 1]
        o2[ow + 3] = s32 + b[f0 + 2]
        o3[ow + 3] = s33 + b[f0 + 3]
    for ow in range(narrow):
        x0 = bf[ow * step:ow * step + R]
        s0 = s1 = s2 = s3 = zero
        for r in range(R):
            u = x0[r]
            s0 += u * w0[r]
            s1 += u * w1[r]
            s2 += u * w2[r]
            s3 += u * w3[r]
        o0[ow] = s0 + b[f0]
        o1[ow] = s1 + b[f0 + 1]
        o2[ow] = s2 + b[f0 + 2]
        o3[ow] = s3 + b[f0 + 3]


@njit(**SERIAL_JIT, inline="always")
def _forward_single_filters(bf, wt, b, step, f_lo, orows):
    """Filters ``f_lo:`` left over by a register tile, one filter by 4 pixels at a time.

    ``orows[f, ow]`` is output row ``oh`` of filter ``f``; ``bf`` the interleaved input rows.
    Four pixels share each load of the filter: with one pixel per dot product the loop
    was load-bound and paid a horizontal reduction per output (the input gradient of a
    layer with 1 or 3 input channels, which has only 1 or 3 "filters", ran at a tenth
    of the tiled speed).
    """
    F, R = wt.shape
    Wo = orows.shape[1]
    tiles, narrow = _row_tiles(Wo)
    zero = np.zeros(1, dtype=orows.dtype)[0]
    for f in range(f_lo, F):
        w0 = wt[f]
        o0 = orows[f]
        for t in range(tiles):
            ow = min(4 * t, Wo - 4)
            a = ow * step
            x0 = bf[a:a + R]
            x1 = bf[a + step:a + step + R]
            x2 = bf[a + 2 * step:a + 2 * step + R]
            x3 = bf[a + 3 * step:a + 3 * step + R]
            s0 = s1 = s2 = s3 = zero
            for r in range(R):
                v = w0[r]
                s0 += x0[r] * v
                s1 += x1[r] * v
                s2 += x2[r] * v
                s3 += x3[r] * v
            o0[ow] = s0 + b[f]
            o0[ow + 1] = s1 + b[f]
            o0[ow + 2] = s2 + b[f]
            o0[ow + 3] = s3 + b[f]
        for ow in range(narrow):
            x0 = bf[ow * step:ow * step + R]
            s0 = zero
            for r in range(R):
                s0 += x0[r] * w0[r]
            o0[ow] = s0 + b[f]


@njit(**SERIAL_JIT, inline="always")
def _weight_grad_row(bf, dy, n, oh, step, f_lo, f_hi, part):
    """Add output row ``(n, oh)``'s contribution to filters ``f_lo:f_hi`` of ``part``.

    ``bf`` holds the row's interleaved input rows (:func:`_stack_rows`); ``part[f, r]``
    accumulates ``sum_ow dy[n, f, oh, ow] * bf[ow*step + r]``: blocks of 4 filters
    (:func:`_weight_grad_row_4`), then the leftover filters one at a time.
    """
    R = part.shape[1]
    Wo = dy.shape[3]
    F4 = f_hi - (f_hi - f_lo) % 4
    for f0 in range(f_lo, F4, 4):
        _weight_grad_row_4(bf, dy, n, oh, step, f0, part)
    for f in range(F4, f_hi):
        g0 = dy[n, f, oh]
        p0 = part[f]
        for ow in range(Wo):
            x0 = bf[ow * step:ow * step + R]
            d0 = g0[ow]
            for r in range(R):
                p0[r] += d0 * x0[r]


@njit(**SERIAL_JIT, inline="always")
def _weight_grad_row_4(bf, dy, n, oh, step, f0, part):
    """:func:`_weight_grad_row` for the 4 filters ``f0:f0+4``.

    A rank-4 update per 4 filters x 4 pixels along the contiguous receptive field, then
    the leftover pixels two at a time, then one.
    """
    R = part.shape[1]
    Wo = dy.shape[3]
    W4 = Wo - Wo % 4
    W2 = Wo - Wo % 2
    g0 = dy[n, f0, oh]
    g1 = dy[n, f0 + 1, oh]
    g2 = dy[n, f0 + 2, oh]
    g3 = dy[n, f0 + 3, oh]
    p0 = part[f0]
    p1 = part[f0 + 1]
    p2 = part[f0 + 2]
    p3 = part[f0 + 3]
    for ow in range(0, W4, 4):
        a = ow * step
        x0 = bf[a:a + R]
        x1 = bf[a + step:a + step + R]
        x2 = bf[a + 2 * step:a + 2 * step + R]
        x3 = bf[a + 3 * step:a + 3 * step + R]
        d00 = g0[ow]
        d01 = g0[ow + 1]
        d02 = g0[ow + 2]
        d03 = g0[ow + 3]
        d10 = g1[ow]
        d11 = g1[ow + 1]
        d12 = g1[ow + 2]
        d13 = g1[ow + 3]
        d20 = g2[ow]
        d21 = g2[ow + 1]
        d22 = g2[ow + 2]
        d23 = g2[ow + 3]
        d30 = g3[ow]
        d31 = g3[ow + 1]
        d32 = g3[ow + 2]
        d33 = g3[ow + 3]
        for r in range(R):
            u0 = x0[r]
            u1 = x1[r]
            u2 = x2[r]
            u3 = x3[r]
            p0[r] += d00 * u0 + d01 * u1 + d02 * u2 + d03 * u3
            p1[r] += d10 * u0 + d11 * u1 + d12 * u2 + d13 * u3
            p2[r] += d20 * u0 + d21 * u1 + d22 * u2 + d23 * u3
            p3[r] += d30 * u0 + d31 * u1 + d32 * u2 + d33 * u3
    # Leftover pixels two at a time: a rank-1 update costs the same loads and
    # stores of the partial rows as a rank-2 one for half the multiply-adds.
    for ow in range(W4, W2, 2):
        x0 = bf[ow * step:ow * step + R]
        x1 = bf[ow * step + step:ow * step + step + R]
        d00 = g0[ow]
        d01 = g0[ow + 1]
        d10 = g1[ow]
        d11 = g1[ow + 1]
        d20 = g2[ow]
        d21 = g2[ow + 1]
        d30 = g3[ow]
        d31 = g3[ow + 1]
        for r in range(R):
            u0 = x0[r]
            u1 = x1[r]
            p0[r] += d00 * u0 + d01 * u1
            p1[r] += d10 * u0 + d11 * u1
            p2[r] += d20 * u0 + d21 * u1
            p3[r] += d30 * u0 + d31 * u1
    for ow in range(W2, Wo):
        x0 = bf[ow * step:ow * step + R]
        d0 = g0[ow]
        d1 = g1[ow]
        d2 = g2[ow]
        d3 = g3[ow]
        for r in range(R):
            u0 = x0[r]
            p0[r] += d0 * u0
            p1[r] += d1 * u0
            p2[r] += d2 * u0
            p3[r] += d3 * u0


@njit(**PARALLEL_JIT)
def tiled_weight_grad_by_rows(xp, dy, KH, sh, sw, partial):
    """Per-thread partial weight gradients: the correlation of ``xp`` with ``dy``.

    ``partial[t, f, (j*KH + i)*C + c]`` receives
    ``sum dy[n, f, oh, ow] * xp[n, oh*sh + i, ow*sw + j, c]`` over the ``t``-th contiguous
    chunk of the ``N * Ho`` output rows; the caller sums ``partial`` over ``t`` in order.
    Each chunk belongs to one iteration, so nothing is written by two threads.

    For each output row the KH input rows are interleaved (:func:`_stack_rows`), so an
    output pixel's receptive field is one contiguous vector; the update is then a
    rank-4 outer product per 4 filters x 4 pixels, accumulated along that vector
    (:func:`_weight_grad_row`).

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    dy : (N, F, Ho, Wo) array
        Output gradient, NCHW.
    KH, sh, sw : int
        Kernel height and strides.
    partial : (T, F, KW * KH * C) array
        Fully overwritten.
    """
    N, Hp, Wp, C = xp.shape
    F = dy.shape[1]
    Ho = dy.shape[2]
    T = partial.shape[0]
    step = sw * KH * C
    rows = N * Ho
    for t in prange(T):
        part = partial[t]
        part[:, :] = 0
        buf = np.empty((Wp, KH, C), dtype=xp.dtype)
        bf = buf.reshape(Wp * KH * C)
        for row in range((rows * t) // T, (rows * (t + 1)) // T):
            n = row // Ho
            oh = row - n * Ho
            _stack_rows(xp, n, oh * sh, KH, buf)
            _weight_grad_row(bf, dy, n, oh, step, 0, F, part)


@njit(**PARALLEL_JIT)
def tiled_weight_grad_by_filters(xp, dy, KH, sh, sw, FB, dw):
    """The weight gradient with the filters split between jobs instead of the rows.

    Same arithmetic as :func:`tiled_weight_grad_by_rows`, but each job owns ``FB`` filters
    and goes through every output row, so it writes its rows of ``dw`` directly: no
    per-thread partials and no sum afterwards, at the cost of interleaving every input
    row once per job. Used on narrow maps, where each row's updates would otherwise
    sweep a partial for all filters for a few pixels' work, and for large weights,
    where the partials are megabytes (8x512x7x7 -> 512 filters: two of 9.4 MB); see
    :mod:`fastconv.plan`.

    Parameters
    ----------
    xp, dy, KH, sh, sw :
        As for :func:`tiled_weight_grad_by_rows`.
    FB : int
        Filters per job.
    dw : (F, KW * KH * C) array
        Fully overwritten; each element is summed over the rows in order, whatever the
        number of threads.
    """
    N, Hp, Wp, C = xp.shape
    F = dy.shape[1]
    Ho = dy.shape[2]
    step = sw * KH * C
    for job in prange((F + FB - 1) // FB):
        f_lo = job * FB
        f_hi = min(F, f_lo + FB)
        dw[f_lo:f_hi, :] = 0
        buf = np.empty((Wp, KH, C), dtype=xp.dtype)
        bf = buf.reshape(Wp * KH * C)
        for n in range(N):
            for oh in range(Ho):
                _stack_rows(xp, n, oh * sh, KH, buf)
                _weight_grad_row(bf, dy, n, oh, step, f_lo, f_hi, dw)
