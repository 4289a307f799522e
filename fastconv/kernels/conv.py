"""Compiled direct-loop kernels for 2-D convolution and its gradients.

Only ``@njit`` code lives here: no validation, no allocation policy. The public wrappers in
:mod:`fastconv.functional` check the arguments, repack the operands into the layouts
below (one pass over the data each), allocate the outputs and call these kernels.

Layouts
-------
Activations are repacked to zero-padded NHWC (``xp[n, h, w, c]``) so that the channel
axis -- the reduction axis of the forward pass -- is contiguous, and so that the
innermost loops of every kernel run over a contiguous axis that LLVM vectorises:

================================  ============================  =========================
kernel                            innermost (vector) loop       reduction (register row)
================================  ============================  =========================
``conv2d_forward``                output filters ``f``          taps x input channels
``conv2d_backward_input``         input channels ``c``          taps x output filters
``conv2d_backward_weight``        output filters ``f``          batch x output pixels
================================  ============================  =========================

Each parallel job owns one output row (``n, oh``) and accumulates it in a small
row buffer, which is written back to NCHW transposed, so parallel iterations write
disjoint memory. The weight gradient sums over the whole batch: each thread
accumulates its own contiguous chunk of output rows into its own partial buffer, and the
partials are summed afterwards in a fixed order -- no atomics, no races, and results
are bitwise reproducible for a given thread count.

Geometry arguments (strides, paddings) are plain ints so that dilation and groups can
be added later as further ints without changing the layouts.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT


@njit(**PARALLEL_JIT)
def pack_nhwc_padded(x, ph, pw, out):
    """Copy ``x`` (N, C, H, W) into the interior of ``out`` (N, H+2ph, W+2pw, C).

    The border of ``out`` is zeroed here, so ``out`` may come from ``np.empty``.
    """
    N, C, H, W = x.shape
    Hp = out.shape[1]
    Wp = out.shape[2]
    for job in prange(N * Hp):
        n = job // Hp
        hp = job - n * Hp
        h = hp - ph
        row = out[n, hp]
        if h < 0 or h >= H:
            row[:, :] = 0
            continue
        for wp in range(pw):
            row[wp, :] = 0
        for wp in range(pw + W, Wp):
            row[wp, :] = 0
        for c in range(C):
            src = x[n, c, h]
            for w in range(W):
                row[pw + w, c] = src[w]


@njit(**PARALLEL_JIT)
def conv2d_forward(xp, wt, b, sh, sw, out):
    """Direct cross-correlation: ``out[n, f, oh, ow] = b[f] + sum xp[n, oh*sh+i, ow*sw+j, c] * wt[i, j, c, f]``.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input in NHWC.
    wt : (KH, KW, C, F) array
        Weights with the filter axis last (contiguous).
    b : (F,) array
        Bias (zeros when the layer has none).
    sh, sw : int
        Strides.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    N, Hp, Wp, C = xp.shape
    KH, KW, _, F = wt.shape
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
                wtap = wt[i, j]
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


@njit(**PARALLEL_JIT)
def conv2d_backward_input(dy, wrot, sh, sw, ph, pw, dx):
    """Input gradient as a full correlation of ``dy`` with the 180-degree-rotated kernel.

    Conceptually ``dy`` is dilated (``sh - 1`` zeros between rows, ``sw - 1`` between
    columns) and zero-padded by ``KH - 1 - ph`` / ``KW - 1 - pw``; ``dx`` is then the
    stride-1 correlation of that array with ``wrot``. The dilation zeros are skipped
    rather than multiplied: a tap contributes only where the dilated position holds a
    real ``dy`` element.

    Parameters
    ----------
    dy : (N, Ho, Wo, F) array
        Output gradient, NHWC.
    wrot : (KH, KW, F, C) array
        ``wrot[i, j, f, c] == w[f, c, KH-1-i, KW-1-j]``: the kernel rotated by 180
        degrees with its channel axes swapped.
    sh, sw, ph, pw : int
        Stride and padding of the forward convolution.
    dx : (N, C, H, W) array
        Input gradient, NCHW, fully overwritten.
    """
    N, Ho, Wo, F = dy.shape
    KH, KW, _, C = wrot.shape
    H = dx.shape[2]
    W = dx.shape[3]
    # Offset of dy[0, 0] inside the dilated, padded gradient.
    oh_off = KH - 1 - ph
    ow_off = KW - 1 - pw
    for job in prange(N * H):
        n = job // H
        ih = job - n * H
        acc = np.zeros((W, C), dtype=dx.dtype)
        for i in range(KH):
            u = ih + i - oh_off
            if u < 0 or u % sh != 0:
                continue
            oh = u // sh
            if oh >= Ho:
                continue
            dyrow = dy[n, oh]
            for j in range(KW):
                wtap = wrot[i, j]
                for iw in range(W):
                    v = iw + j - ow_off
                    if v < 0 or v % sw != 0:
                        continue
                    ow = v // sw
                    if ow >= Wo:
                        continue
                    g = dyrow[ow]
                    arow = acc[iw]
                    for f in range(F):
                        gv = g[f]
                        wrow = wtap[f]
                        for c in range(C):
                            arow[c] += gv * wrow[c]
        for c in range(C):
            drow = dx[n, c, ih]
            for iw in range(W):
                drow[iw] = acc[iw, c]


@njit(**PARALLEL_JIT)
def conv2d_backward_weight(xp, dy, sh, sw, partial):
    """Per-thread partial weight gradients: the correlation of ``xp`` with ``dy``.

    ``partial[t, i, j, c, f]`` receives ``sum xp[n, oh*sh+i, ow*sw+j, c] * dy[n, oh, ow, f]``
    over the ``t``-th contiguous chunk of the ``N * Ho`` output rows. The caller sums
    ``partial`` over ``t``. Each chunk is written by one iteration only.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    dy : (N, Ho, Wo, F) array
        Output gradient, NHWC.
    sh, sw : int
        Strides.
    partial : (T, KH, KW, C, F) array
        Fully overwritten.
    """
    N, Ho, Wo, F = dy.shape
    T, KH, KW, C, _ = partial.shape
    rows = N * Ho
    for t in prange(T):
        part = partial[t]
        part[:] = 0
        start = (rows * t) // T
        stop = (rows * (t + 1)) // T
        for i in range(KH):
            for j in range(KW):
                block = part[i, j]
                for r in range(start, stop):
                    n = r // Ho
                    oh = r - n * Ho
                    xrow = xp[n, oh * sh + i]
                    dyrow = dy[n, oh]
                    for ow in range(Wo):
                        xpix = xrow[ow * sw + j]
                        g = dyrow[ow]
                        for c in range(C):
                            xv = xpix[c]
                            brow = block[c]
                            for f in range(F):
                                brow[f] += xv * g[f]


@njit(**PARALLEL_JIT)
def conv2d_backward_bias(dy, db):
    """``db[f] += sum over n, h, w of dy[n, f, h, w]`` for NCHW ``dy``; one filter per job.

    ``db`` must come in zeroed; the sum runs in ``db``'s dtype.
    """
    N, F, Ho, Wo = dy.shape
    for f in prange(F):
        s = db[f]
        for n in range(N):
            plane = dy[n, f]
            for oh in range(Ho):
                row = plane[oh]
                for ow in range(Wo):
                    s += row[ow]
        db[f] = s
