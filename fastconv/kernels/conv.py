"""Compiled direct-loop kernels for 2-D convolution and its gradients.

Only ``@njit`` code lives here: no validation, no allocation policy. The public wrappers in
:mod:`fastconv.functional` check the arguments, repack the operands into the layouts
below (one pass over the data each), allocate the outputs and call these kernels.

Layouts
-------
Activations are repacked to zero-padded NHWC (``xp[n, h, w, c]``). Each parallel job
then interleaves the ``KH`` input rows that one output row reads into a small buffer
``buf[w, i, c]`` (:func:`_stack_rows`), so that the receptive field of an output pixel
-- taps ``(j, i)`` and channels ``c`` -- is one contiguous run of ``KW * KH * C``
elements. Weights are repacked to ``(F, KW * KH * C)`` in the same order.

- ``conv2d_forward``: each job owns one output row ``(n, oh)``; 4 filters x 4 output
  pixels are computed as 16 dot products along that contiguous run, held in vector
  registers and written straight to the NCHW output.
- ``conv2d_forward_few_channels``: the same result for receptive fields too short to
  fill a vector (first layers, C = 1 or 3): the vector axis is the filter axis.
- ``conv2d_backward_weight``: each job owns a contiguous chunk of the ``N * Ho`` output
  rows and its own partial buffer ``(F, KW * KH * C)``; a rank-4 update per 4 filters
  x 4 pixels runs along the same contiguous run. The caller sums the partials in a
  fixed order: no atomics, no races, bitwise reproducible for a given thread count.
- The input gradient has no kernel of its own: it is a full correlation of ``dy``
  with the rotated kernel, which :mod:`fastconv.functional` computes with
  ``conv2d_forward`` (per stride phase when the stride is above one).

Indexing goes through slices taken before each inner loop, so the loop index is a
``range`` variable LLVM knows to be non-negative. With a run-time offset in the index
expression, Numba's negative-index wraparound blocks vector loads.

Geometry arguments (strides, kernel height) are plain ints so that dilation and groups
can be added later as further ints without changing the layouts.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


#: Channels per job of :func:`pack_nhwc_padded`.
_PACK_CHANNELS = 16


@njit(**PARALLEL_JIT)
def pack_nhwc_padded(x, ph, pw, out):
    """Copy ``x`` (N, C, H, W) into the interior of ``out`` (N, H+2ph, W+2pw, C).

    The border of ``out`` is zeroed here, so ``out`` may come from ``np.empty``.
    Each job copies a block of 16 channels of one image, row by row: it reads 16
    sequential streams and fills whole cache lines of ``out``. One job per output row
    (reading all C channel rows, a plane apart) ran up to 4x slower when the plane size
    was a multiple of 4 KiB (32 x 32 and 64 x 64 float32 planes): every load then
    aliased the stores before it. See ``benchmarks/NOTES.md``.
    """
    N, C, H, W = x.shape
    Hp = out.shape[1]
    Wp = out.shape[2]
    blocks = (C + _PACK_CHANNELS - 1) // _PACK_CHANNELS
    for job in prange(N * blocks):
        n = job // blocks
        c0 = (job - n * blocks) * _PACK_CHANNELS
        c1 = min(C, c0 + _PACK_CHANNELS)
        img = out[n]
        for hp in range(Hp):
            h = hp - ph
            row = img[hp]
            if h < 0 or h >= H:
                for wp in range(Wp):
                    row[wp, c0:c1] = 0
                continue
            for wp in range(pw):
                row[wp, c0:c1] = 0
            for wp in range(pw + W, Wp):
                row[wp, c0:c1] = 0
            for c in range(c0, c1):
                src = x[n, c, h]
                for w in range(W):
                    row[pw + w, c] = src[w]


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
def conv2d_forward(xp, wt, KH, b, sh, sw, out):
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
    F, R = wt.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    step = sw * KH * C
    F4 = F - F % 4
    tiles, narrow = _row_tiles(Wo)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        buf = np.empty((Wp, KH, C), dtype=xp.dtype)
        _stack_rows(xp, n, oh * sh, KH, buf)
        bf = buf.reshape(Wp * KH * C)
        for f0 in range(0, F4, 4):
            w0 = wt[f0]
            w1 = wt[f0 + 1]
            w2 = wt[f0 + 2]
            w3 = wt[f0 + 3]
            o0 = out[n, f0, oh]
            o1 = out[n, f0 + 1, oh]
            o2 = out[n, f0 + 2, oh]
            o3 = out[n, f0 + 3, oh]
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
        _forward_single_filters(bf, wt, b, step, F4, out[n, :, oh])


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


@njit(**PARALLEL_JIT)
def conv2d_forward_4x3(xp, wt, KH, b, sh, sw, out):
    """:func:`conv2d_forward` with a tile of 4 pixels x 3 filters, for 16-register CPUs.

    Same arguments and result. The 4 x 4 tile needs 16 accumulators plus 8 loaded
    vectors: more than the 16 vector registers of an AVX2 CPU (x86 without AVX-512), so
    LLVM spills accumulators to the stack. 4 x 3 needs 12 + 4 (the filter vectors are
    read from memory by the FMAs). Measured on an AVX2 machine (AMD EPYC, Zen 3): 1.3-1.6x
    the 4 x 4 tile; see ``benchmarks/NOTES.md``.
    """
    N, Hp, Wp, C = xp.shape
    F, R = wt.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    step = sw * KH * C
    F3 = F - F % 3
    tiles, narrow = _row_tiles(Wo)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        buf = np.empty((Wp, KH, C), dtype=xp.dtype)
        _stack_rows(xp, n, oh * sh, KH, buf)
        bf = buf.reshape(Wp * KH * C)
        for f0 in range(0, F3, 3):
            w0 = wt[f0]
            w1 = wt[f0 + 1]
            w2 = wt[f0 + 2]
            o0 = out[n, f0, oh]
            o1 = out[n, f0 + 1, oh]
            o2 = out[n, f0 + 2, oh]
            for t in range(tiles):
                ow = min(4 * t, Wo - 4)  # the last tile overlaps the one before it
                a = ow * step
                x0 = bf[a:a + R]
                x1 = bf[a + step:a + step + R]
                x2 = bf[a + 2 * step:a + 2 * step + R]
                x3 = bf[a + 3 * step:a + 3 * step + R]
                s00 = s01 = s02 = zero
                s10 = s11 = s12 = s00
                s20 = s21 = s22 = s00
                s30 = s31 = s32 = s00
                for r in range(R):
                    v0 = w0[r]
                    v1 = w1[r]
                    v2 = w2[r]
                    u = x0[r]
                    s00 += u * v0
                    s01 += u * v1
                    s02 += u * v2
                    u = x1[r]
                    s10 += u * v0
                    s11 += u * v1
                    s12 += u * v2
                    u = x2[r]
                    s20 += u * v0
                    s21 += u * v1
                    s22 += u * v2
                    u = x3[r]
                    s30 += u * v0
                    s31 += u * v1
                    s32 += u * v2
                o0[ow] = s00 + b[f0]
                o1[ow] = s01 + b[f0 + 1]
                o2[ow] = s02 + b[f0 + 2]
                o0[ow + 1] = s10 + b[f0]
                o1[ow + 1] = s11 + b[f0 + 1]
                o2[ow + 1] = s12 + b[f0 + 2]
                o0[ow + 2] = s20 + b[f0]
                o1[ow + 2] = s21 + b[f0 + 1]
                o2[ow + 2] = s22 + b[f0 + 2]
                o0[ow + 3] = s30 + b[f0]
                o1[ow + 3] = s31 + b[f0 + 1]
                o2[ow + 3] = s32 + b[f0 + 2]
            for ow in range(narrow):
                x0 = bf[ow * step:ow * step + R]
                s0 = s1 = s2 = zero
                for r in range(R):
                    u = x0[r]
                    s0 += u * w0[r]
                    s1 += u * w1[r]
                    s2 += u * w2[r]
                o0[ow] = s0 + b[f0]
                o1[ow] = s1 + b[f0 + 1]
                o2[ow] = s2 + b[f0 + 2]
        _forward_single_filters(bf, wt, b, step, F3, out[n, :, oh])


@njit(**PARALLEL_JIT)
def pack_nchw_padded(x, ph, pw, out):
    """Copy ``x`` (N, C, H, W) into the interior of ``out`` (N, C, H+2ph, W+2pw); zero the border."""
    N, C, H, W = x.shape
    Hp = out.shape[2]
    Wp = out.shape[3]
    for job in prange(N * C):
        n = job // C
        c = job - n * C
        plane = out[n, c]
        for hp in range(Hp):
            row = plane[hp]
            h = hp - ph
            if h < 0 or h >= H:
                row[:] = 0
                continue
            row[:pw] = 0
            row[pw + W:] = 0
            src = x[n, c, h]
            for w in range(W):
                row[pw + w] = src[w]


@njit(**SERIAL_JIT, inline="always")
def _tap(t, KHW, KW, Wp):
    """Channel and flat plane offset ``i * Wp + j`` of tap ``t = (c * KH + i) * KW + j``."""
    c = t // KHW
    r = t - c * KHW
    i = r // KW
    return c, i * Wp + (r - i * KW)


@njit(**PARALLEL_JIT)
def conv2d_forward_flat(xq, w, b, out):
    """Stride-1 cross-correlation for short receptive fields, vectorised along whole images.

    With the input zero-padded to width ``Wp`` and each plane read as one flat vector,
    tap ``(c, i, j)`` adds ``w[f, c, i, j] * plane_c[p + i*Wp + j]`` to output position
    ``p = oh*Wp + ow`` of an accumulator laid out like the padded image: one long
    contiguous loop per tap, whatever the image width (the ``Wp - Wo`` columns past each
    row's end are computed and dropped). Four taps and two filters share each pass, so
    every accumulator load and store serves eight multiply-adds.

    For the first layers (C = 1 or 3), where the tiled kernels' reductions are too short
    to fill a vector. See ``benchmarks/NOTES.md``.

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    w : (F, C, KH, KW) array
        Filters (C-contiguous).
    b : (F,) array
        Bias.
    out : (N, F, Ho, Wo) array
        Output, fully overwritten; ``Ho = Hp - KH + 1``, ``Wo = Wp - KW + 1``.
    """
    N, C, Hp, Wp = xq.shape
    F, _, KH, KW = w.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    L = (Ho - 1) * Wp + Wo
    KHW = KH * KW
    T = C * KHW
    T4 = T - T % 4
    pairs = (F + 1) // 2
    planes = xq.reshape(N * C, Hp * Wp)
    wf = w.reshape(F, T)
    for job in prange(N * pairs):
        n = job // pairs
        f = 2 * (job - n * pairs)
        g = min(f + 1, F - 1)  # odd F: the last pair computes filter F - 1 twice
        acc = np.empty((2, L), dtype=out.dtype)
        a0 = acc[0]
        a1 = acc[1]
        a0[:] = b[f]
        a1[:] = b[g]
        wa = wf[f]
        wb = wf[g]
        for t0 in range(0, T4, 4):
            c0, o0 = _tap(t0, KHW, KW, Wp)
            c1, o1 = _tap(t0 + 1, KHW, KW, Wp)
            c2, o2 = _tap(t0 + 2, KHW, KW, Wp)
            c3, o3 = _tap(t0 + 3, KHW, KW, Wp)
            s0 = planes[n * C + c0, o0:o0 + L]
            s1 = planes[n * C + c1, o1:o1 + L]
            s2 = planes[n * C + c2, o2:o2 + L]
            s3 = planes[n * C + c3, o3:o3 + L]
            v0 = wa[t0]
            v1 = wa[t0 + 1]
            v2 = wa[t0 + 2]
            v3 = wa[t0 + 3]
            u0 = wb[t0]
            u1 = wb[t0 + 1]
            u2 = wb[t0 + 2]
            u3 = wb[t0 + 3]
            for p in range(L):
                x0 = s0[p]
                x1 = s1[p]
                x2 = s2[p]
                x3 = s3[p]
                a0[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
                a1[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3
        for t in range(T4, T):
            c0, o0 = _tap(t, KHW, KW, Wp)
            s0 = planes[n * C + c0, o0:o0 + L]
            v0 = wa[t]
            u0 = wb[t]
            for p in range(L):
                x0 = s0[p]
                a0[p] += v0 * x0
                a1[p] += u0 * x0
        for k in range(g - f + 1):
            plane = out[n, f + k]
            a = acc[k]
            for oh in range(Ho):
                row = plane[oh]
                src = a[oh * Wp:oh * Wp + Wo]
                for ow in range(Wo):
                    row[ow] = src[ow]


@njit(**PARALLEL_JIT)
def conv2d_forward_few_channels(xp, wk, b, sh, sw, out):
    """Direct cross-correlation for short reductions (few input channels, small kernels).

    Same result as :func:`conv2d_forward`, for layers whose receptive field
    ``KH * KW * C`` is too short to fill a vector (the first layer of a network: C = 1
    or 3). Here the vector axis is the filter axis instead: each output pixel's ``F``
    accumulators form a contiguous row, updated by ``x * w[i, j, c, :]`` for every tap.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wk : (KH, KW, C, F) array
        Weights with the filter axis last.
    b : (F,) array
        Bias.
    sh, sw : int
        Strides.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    N, Hp, Wp, C = xp.shape
    KH, KW, _, F = wk.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        acc = np.empty((Wo, F), dtype=out.dtype)
        for ow in range(Wo):
            acc[ow, :] = b
        for i in range(KH):
            xrow = xp[n, oh * sh + i]
            for j in range(KW):
                wtap = wk[i, j]
                for ow in range(Wo):
                    xpix = xrow[ow * sw + j]
                    arow = acc[ow]
                    for c in range(C):
                        xv = xpix[c]
                        wrow = wtap[c]
                        for f in range(F):
                            arow[f] += xv * wrow[f]
        for f in range(F):
            orow = out[n, f, oh]
            for ow in range(Wo):
                orow[ow] = acc[ow, f]


@njit(**SERIAL_JIT, inline="always")
def _weight_grad_row(bf, dy, n, oh, step, f_lo, f_hi, part):
    """Add output row ``(n, oh)``'s contribution to filters ``f_lo:f_hi`` of ``part``.

    ``bf`` holds the row's interleaved input rows (:func:`_stack_rows`); ``part[f, r]``
    accumulates ``sum_ow dy[n, f, oh, ow] * bf[ow*step + r]``: a rank-4 update per
    4 filters x 4 pixels, then pairs and single pixels, then leftover filters.
    """
    R = part.shape[1]
    Wo = dy.shape[3]
    W4 = Wo - Wo % 4
    W2 = Wo - Wo % 2
    F4 = f_hi - (f_hi - f_lo) % 4
    for f0 in range(f_lo, F4, 4):
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
    for f in range(F4, f_hi):
        g0 = dy[n, f, oh]
        p0 = part[f]
        for ow in range(Wo):
            x0 = bf[ow * step:ow * step + R]
            d0 = g0[ow]
            for r in range(R):
                p0[r] += d0 * x0[r]


@njit(**PARALLEL_JIT)
def conv2d_backward_weight(xp, dy, KH, sh, sw, partial):
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
def conv2d_backward_weight_by_filters(xp, dy, KH, sh, sw, FB, dw):
    """The weight gradient with the filters split between jobs instead of the rows.

    Same arithmetic as :func:`conv2d_backward_weight`, but each job owns ``FB`` filters
    and goes through every output row, so it writes its rows of ``dw`` directly: no
    per-thread partials and no sum afterwards, at the cost of interleaving every input
    row once per job. Used on narrow maps, where each row's updates would otherwise
    sweep a partial for all filters for a few pixels' work, and for large weights,
    where the partials are megabytes (8x512x7x7 -> 512 filters: two of 9.4 MB); see
    ``fastconv.functional._weight_grad``.

    Parameters
    ----------
    xp, dy, KH, sh, sw :
        As for :func:`conv2d_backward_weight`.
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


@njit(**PARALLEL_JIT)
def conv2d_backward_weight_flat(xq, dy, KH, KW, partial):
    """Per-thread partial weight gradients at stride 1 for short receptive fields.

    The mirror of :func:`conv2d_forward_flat`: with ``dy``'s rows copied at the padded
    input's row pitch ``Wp`` (zeros in the ``Wp - Wo`` gaps), the gradient of tap
    ``(c, i, j)`` of filter ``f`` is one dot product of that flat ``dy`` plane with
    the input plane ``c`` shifted by ``i * Wp + j``: long contiguous loops whatever the
    image width. Four taps and two filters share each pass (8 accumulators). The gaps
    multiply real inputs by zero, so ``xq`` must be finite (the caller checks; with an
    infinity, ``0 * inf`` would add a NaN).

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    dy : (N, F, Ho, Wo) array
        Output gradient; ``Ho = Hp - KH + 1``, ``Wo = Wp - KW + 1``.
    KH, KW : int
        Kernel size.
    partial : (T, F, C * KH * KW) array
        Fully overwritten: ``partial[t]`` sums the ``t``-th contiguous chunk of the
        batch, taps ordered ``(c, i, j)``. The caller sums over ``t`` in order.
    """
    N, C, Hp, Wp = xq.shape
    F = dy.shape[1]
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    T = partial.shape[0]
    L = (Ho - 1) * Wp + Wo
    KHW = KH * KW
    R = C * KHW
    R4 = R - R % 4
    planes = xq.reshape(N * C, Hp * Wp)
    zero = np.zeros(1, dtype=partial.dtype)[0]
    for t in prange(T):
        part = partial[t]
        part[:, :] = 0
        dyw = np.zeros((F, L), dtype=dy.dtype)
        for n in range((N * t) // T, (N * (t + 1)) // T):
            for f in range(F):
                for oh in range(Ho):
                    src = dy[n, f, oh]
                    dst = dyw[f, oh * Wp:oh * Wp + Wo]
                    for ow in range(Wo):
                        dst[ow] = src[ow]
            for f in range(0, F, 2):
                g = min(f + 1, F - 1)  # odd F: the last pair is filter F - 1 twice, added once
                da = dyw[f]
                db = dyw[g]
                pa = part[f]
                pb = part[g]
                for t0 in range(0, R4, 4):
                    c0, o0 = _tap(t0, KHW, KW, Wp)
                    c1, o1 = _tap(t0 + 1, KHW, KW, Wp)
                    c2, o2 = _tap(t0 + 2, KHW, KW, Wp)
                    c3, o3 = _tap(t0 + 3, KHW, KW, Wp)
                    s0 = planes[n * C + c0, o0:o0 + L]
                    s1 = planes[n * C + c1, o1:o1 + L]
                    s2 = planes[n * C + c2, o2:o2 + L]
                    s3 = planes[n * C + c3, o3:o3 + L]
                    a0 = a1 = a2 = a3 = zero
                    b0 = b1 = b2 = b3 = zero
                    for p in range(L):
                        u = da[p]
                        v = db[p]
                        x0 = s0[p]
                        x1 = s1[p]
                        x2 = s2[p]
                        x3 = s3[p]
                        a0 += u * x0
                        a1 += u * x1
                        a2 += u * x2
                        a3 += u * x3
                        b0 += v * x0
                        b1 += v * x1
                        b2 += v * x2
                        b3 += v * x3
                    pa[t0] += a0
                    pa[t0 + 1] += a1
                    pa[t0 + 2] += a2
                    pa[t0 + 3] += a3
                    if g != f:
                        pb[t0] += b0
                        pb[t0 + 1] += b1
                        pb[t0 + 2] += b2
                        pb[t0 + 3] += b3
                for r in range(R4, R):
                    c0, o0 = _tap(r, KHW, KW, Wp)
                    s0 = planes[n * C + c0, o0:o0 + L]
                    a0 = b0 = zero
                    for p in range(L):
                        x0 = s0[p]
                        a0 += da[p] * x0
                        b0 += db[p] * x0
                    pa[r] += a0
                    if g != f:
                        pb[r] += b0


@njit(**PARALLEL_JIT)
def scatter_phase(phase, first_h, first_w, rh, rw, sh, sw, ph, pw, dx):
    """Write one stride phase of the input gradient into ``dx``, cropping the padding.

    ``dx[n, c, rh + sh*qh - ph, rw + sw*qw - pw] = phase[n, c, first_h + qh, first_w + qw]``
    for every ``qh, qw >= 0`` that lands inside ``dx`` and inside ``phase``; nothing else
    is written. The phases of a strided convolution's input gradient write disjoint
    positions. One job per ``(n, c)`` plane.

    Parameters
    ----------
    phase : (N, C, Ph, Pw) array
        The phase, computed in padded coordinates; rows (columns) before ``first_h``
        (``first_w``) are surplus and skipped.
    first_h, first_w, rh, rw, sh, sw, ph, pw : int
        Offsets into ``phase``, the phase residues, strides and padding.
    dx : (N, C, H, W) array
    """
    N, C, H, W = dx.shape
    qh_lo = max(0, (ph - rh + sh - 1) // sh)
    qh_hi = min(phase.shape[2] - first_h, (H + ph - rh + sh - 1) // sh)
    qw_lo = max(0, (pw - rw + sw - 1) // sw)
    qw_hi = min(phase.shape[3] - first_w, (W + pw - rw + sw - 1) // sw)
    for job in prange(N * C):
        n = job // C
        c = job - n * C
        for qh in range(qh_lo, qh_hi):
            src = phase[n, c, first_h + qh]
            dst = dx[n, c, rh + sh * qh - ph]
            for qw in range(qw_lo, qw_hi):
                dst[rw + sw * qw - pw] = src[first_w + qw]


@njit(**PARALLEL_JIT)
def conv2d_backward_bias(dy, db):
    """``db[f] += sum over n, h, w of dy[n, f, h, w]`` for NCHW ``dy``; one filter per job.

    ``db`` must come in zeroed; the sum runs in ``db``'s dtype. Each ``(n, f)`` plane is
    summed as one flat run, long enough to vectorise (a row of 14 is not).
    """
    N, F, Ho, Wo = dy.shape
    L = Ho * Wo
    planes = dy.reshape(N, F, L)
    for f in prange(F):
        s = db[f]
        for n in range(N):
            plane = planes[n, f]
            for i in range(L):
                s += plane[i]
        db[f] = s
