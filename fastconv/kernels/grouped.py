"""The grouped strategy: grouped and dilated convolutions (any stride), every group in one launch.

Only ``@njit`` code; :mod:`fastconv.plan` decides when it runs (``groups`` between 1 and
``C``, or a dilation the dilation phases do not cover). Activations are NHWC (zero-padded
for ``x``), so a pixel's channels are contiguous; weights are ``(G, KH, KW, ., .)`` with the
vector axis last. Tap ``(i, j)`` of output ``(oh, ow)`` reads padded input
``(oh*sh + i*dh, ow*sw + j*dw)``.

Kernels
-------
- :func:`grouped_forward`: one job per output row ``(n, oh)``; each output pixel's ``F``
  accumulators form a contiguous row, updated group by group with the group's filter axis
  as the inner (vector) loop, as :func:`fastconv.kernels.filter_vector.filter_vector_forward`.
- :func:`grouped_input_grad`: a gather: one job per input row ``(n, h)``; each dx element
  sums the taps that reach it, no atomics and no multiplication by padding (so a non-finite
  weight reaches only the inputs it touches, as in the reference).
- :func:`grouped_weight_grad`: one job per ``(group, tap)``; each owns its ``Cg x Fg`` block
  of dw and sums over the batch and the pixels in a fixed order, whatever the thread count.

At stride 1 the flat kernels (:mod:`fastconv.kernels.flat`, which take groups and a dilation)
are faster; these serve the strided geometries and the non-finite fallbacks.

Inline helpers: :func:`_rank_update` (an accumulator row += a pixel's channels x a tap's
matrix) and :func:`_store_transposed` (the accumulators of one row, pixel-major, into NCHW).
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


@njit(**SERIAL_JIT, inline="always")
def _rank_update(arow, pix, tap):
    """``arow[m] += sum_k pix[k] * tap[k, m]``, the inner (vector) loop over ``m``."""
    for k in range(tap.shape[0]):
        v = pix[k]
        trow = tap[k]
        for m in range(tap.shape[1]):
            arow[m] += v * trow[m]


@njit(**SERIAL_JIT, inline="always")
def _store_transposed(acc, out, n, row):
    """``out[n, k, row, p] = acc[p, k]`` for every channel ``k`` and pixel ``p`` of the row."""
    for k in range(acc.shape[1]):
        orow = out[n, k, row]
        for p in range(acc.shape[0]):
            orow[p] = acc[p, k]


@njit(**PARALLEL_JIT)
def grouped_forward(xp, wk, b, stride, dilation, out):
    """``out[n, g*Fg + f, oh, ow] = b + sum_{i, j, c} xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c] * wk[g, i, j, c, f]``.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wk : (G, KH, KW, Cg, Fg) array
        Weights of each group, the filter axis last.
    b : (F,) array
    stride, dilation : (int, int)
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    G, KH, KW, Cg, Fg = wk.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    sh, sw = stride
    dh, dw = dilation
    for job in prange(xp.shape[0] * Ho):
        n = job // Ho
        oh = job - n * Ho
        acc = np.empty((Wo, G * Fg), dtype=out.dtype)
        for ow in range(Wo):
            acc[ow, :] = b
        for g in range(G):
            c0 = g * Cg
            f0 = g * Fg
            for i in range(KH):
                xrow = xp[n, oh * sh + i * dh]
                for j in range(KW):
                    wtap = wk[g, i, j]
                    for ow in range(Wo):
                        _rank_update(acc[ow, f0:f0 + Fg], xrow[ow * sw + j * dw, c0:c0 + Cg], wtap)
        _store_transposed(acc, out, n, oh)


@njit(**PARALLEL_JIT)
def grouped_input_grad(dyc, wt, stride, dilation, padding, dx):
    """``dx[n, g*Cg + c, h, w] = sum dyc[n, oh, ow, g*Fg + f] * wt[g, i, j, f, c]`` over the taps reaching ``(h, w)``.

    Tap ``(i, j)`` of output ``(oh, ow)`` reaches ``h = oh*sh + i*dh - ph``, ``w = ow*sw + j*dw - pw``.

    Parameters
    ----------
    dyc : (N, Ho, Wo, F) array
        The output gradient, NHWC.
    wt : (G, KH, KW, Fg, Cg) array
        Weights of each group, the channel axis last.
    stride, dilation, padding : (int, int)
    dx : (N, C, H, W) array
        Fully overwritten.
    """
    N, Ho, Wo, F = dyc.shape
    G, KH, KW, Fg, Cg = wt.shape
    H = dx.shape[2]
    W = dx.shape[3]
    sh, sw = stride
    dh, dw = dilation
    ph, pw = padding
    for job in prange(N * H):
        n = job // H
        h = job - n * H
        acc = np.zeros((W, G * Cg), dtype=dx.dtype)
        for i in range(KH):
            hp = h + ph - i * dh
            if hp < 0 or hp % sh != 0 or hp // sh >= Ho:
                continue
            dyrow = dyc[n, hp // sh]
            for j in range(KW):
                off = j * dw - pw  # w = ow*sw + off
                ow0 = max(0, (sw - 1 - off) // sw)
                ow1 = min(Wo, (W - 1 - off) // sw + 1)
                for g in range(G):
                    wtap = wt[g, i, j]
                    for ow in range(ow0, ow1):
                        _rank_update(acc[ow * sw + off, g * Cg:(g + 1) * Cg], dyrow[ow, g * Fg:(g + 1) * Fg], wtap)
        _store_transposed(acc, dx, n, h)


@njit(**PARALLEL_JIT)
def grouped_weight_grad(xp, dyc, stride, dilation, dwk):
    """``dwk[g, i, j, c, f] = sum_{n, oh, ow} xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c] * dyc[n, oh, ow, g*Fg + f]``.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    dyc : (N, Ho, Wo, F) array
        The output gradient, NHWC.
    stride, dilation : (int, int)
    dwk : (G, KH, KW, Cg, Fg) array
        Fully overwritten.
    """
    N = xp.shape[0]
    Ho = dyc.shape[1]
    Wo = dyc.shape[2]
    G, KH, KW, Cg, Fg = dwk.shape
    sh, sw = stride
    dh, dw = dilation
    for job in prange(G * KH * KW):
        g = job // (KH * KW)
        i = (job - g * KH * KW) // KW
        j = job - g * KH * KW - i * KW
        acc = np.zeros((Cg, Fg), dtype=dwk.dtype)
        for n in range(N):
            for oh in range(Ho):
                xrow = xp[n, oh * sh + i * dh]
                dyrow = dyc[n, oh]
                for ow in range(Wo):
                    xpix = xrow[ow * sw + j * dw, g * Cg:(g + 1) * Cg]
                    dpix = dyrow[ow, g * Fg:(g + 1) * Fg]
                    for c in range(Cg):
                        xv = xpix[c]
                        arow = acc[c]
                        for f in range(Fg):
                            arow[f] += xv * dpix[f]
        dwk[g, i, j] = acc
