"""Compiled max-pool kernels (forward with recorded winners, backward routing).

Both run over NCHW planes directly: one parallel job per ``(n, c)`` plane, so every
job reads and writes its own plane only.

Winner rule (PyTorch's CPU rule): windows are scanned in row-major order starting from
``-inf`` at the first in-bounds element; a value replaces the current best when it is
strictly greater, or when it is NaN. Ties therefore keep the first maximum, and a NaN
in the window wins (the last NaN, as in PyTorch). Padding is ``-inf``: out-of-bounds
positions are simply never visited. The fast-math flags in :mod:`fastconv.config`
keep NaN and infinities exact, which these comparisons rely on.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT


@njit(**PARALLEL_JIT)
def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, out, indices):
    """Max-pool every ``(n, c)`` plane of ``x``.

    Parameters
    ----------
    x : (P, H, W) array
        Input planes (``P = N * C``).
    kh, kw, sh, sw, ph, pw : int
        Window, stride and (``-inf``) padding.
    out : (P, Ho, Wo) array
        Maxima, fully overwritten.
    indices : (P, Ho, Wo) int64 array
        Flat index ``h * W + w`` of each winner inside its plane, fully overwritten.
    """
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            h0 = oh * sh - ph
            h_lo = max(h0, 0)
            h_hi = min(h0 + kh, H)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w_lo = max(w0, 0)
                w_hi = min(w0 + kw, W)
                best = -np.inf
                best_idx = h_lo * W + w_lo
                for h in range(h_lo, h_hi):
                    row = plane[h]
                    for w in range(w_lo, w_hi):
                        v = row[w]
                        if v > best or v != v:
                            best = v
                            best_idx = h * W + w
                out[p, oh, ow] = best
                indices[p, oh, ow] = best_idx


@njit(**PARALLEL_JIT)
def max_pool2d_backward(dy, indices, dx):
    """Route each ``dy`` element to its winner: ``dx[p, indices[p, k]] += dy[p, k]``.

    Parameters
    ----------
    dy, indices : (P, K) arrays
        Output gradient and winners (flat indices into a plane, already range-checked).
    dx : (P, H * W) array
        Input gradient, fully overwritten; overlapping windows accumulate.
    """
    P, K = dy.shape
    for p in prange(P):
        drow = dx[p]
        drow[:] = 0
        grow = dy[p]
        irow = indices[p]
        for k in range(K):
            drow[irow[k]] += grow[k]
