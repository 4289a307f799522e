"""The grouped strategy: the input gradient of grouped and dilated convolutions as a gather, every group in one launch.

Only ``@njit`` code; :mod:`fastconv.plan` decides when it runs: strided grouped or dilated
geometries, a padding past ``d * (K - 1)`` (the forward pass of ``dy`` would need a negative
padding), and non-finite weights (a forward pass of the zero-padded ``dy`` would multiply them
by padding). The forward pass and the weight gradient of these geometries run the vector
kernels (:mod:`fastconv.kernels.vector`) or, at stride 1 with few filters per group, the flat
ones. ``dy`` is NHWC, so a pixel's channels are contiguous; weights are ``(G, KH, KW, Fg, Cg)``
with the vector axis last. Tap ``(i, j)`` of output ``(oh, ow)`` reads padded input
``(oh*sh + i*dh, ow*sw + j*dw)``.

Kernels
-------
- :func:`grouped_input_grad`: a gather: one job per input row ``(n, h)``; each dx element
  sums the taps that reach it, no atomics and no multiplication by padding (so a non-finite
  weight reaches only the inputs it touches, as in the reference).

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
