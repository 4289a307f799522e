"""Normalisation kernels (batch, layer and group norm) over ``(N, C, L)`` arrays.

An activation is viewed as ``(N, C, L)``: the statistics of "channel" ``c`` are taken
over ``N * L`` values (batch norm: ``(N, C, H*W)``; layer and group norm view the batch
as ``(1, N*G, L)`` instead). Every kernel is one parallel pass over the data.

Statistics are numerically sound: ``E[x^2] - E[x]^2`` loses every digit of a float32
activation with mean 1000 and standard deviation 1. Here each block of a row (at most
:data:`_BLOCK` values, in cache) is summed twice in float64 -- its mean, then the squared
deviations from that mean -- and the blocks are merged with Chan's pairwise formula, so
the data is read from memory once.

Kernels
-------
- :func:`norm_moments`: per-channel mean and sum of squared deviations (``M2``).
- :func:`norm_affine`: ``out = (x - mean[c]) * scale[c] + shift[c]``.
- :func:`norm_grad_sums`: per-channel ``sum(dy)`` and ``sum(dy * (x - mean[c]))``.
- :func:`norm_grad_apply`: ``dx = dy * a[c] + (x - mean[c]) * b[c] + k[c]``.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT

#: Values of a row summed as one block: small enough to stay in the L1 cache between
#: the block's two sums.
_BLOCK = 2048


@njit(**PARALLEL_JIT)
def norm_moments(x, mean, m2):
    """``mean[c]`` and ``m2[c] = sum((x[:, c, :] - mean[c])**2)`` (float64 outputs) of an (N, C, L) array.

    One job per channel; blocks of a row are merged with Chan's formula.
    """
    N, C, L = x.shape
    for c in prange(C):
        count = 0.0
        mu = 0.0
        acc = 0.0
        for n in range(N):
            row = x[n, c]
            for lo in range(0, L, _BLOCK):
                hi = min(L, lo + _BLOCK)
                nb = float(hi - lo)
                s = 0.0
                for i in range(lo, hi):
                    s += np.float64(row[i])
                bm = s / nb
                q = 0.0
                for i in range(lo, hi):
                    d = np.float64(row[i]) - bm
                    q += d * d
                total = count + nb
                delta = bm - mu
                mu += delta * (nb / total)
                acc += q + delta * delta * (count * nb / total)
                count = total
        mean[c] = mu
        m2[c] = acc


@njit(**PARALLEL_JIT)
def norm_affine(x, mean, scale, shift, out):
    """``out[n, c, :] = (x[n, c, :] - mean[c]) * scale[c] + shift[c]`` for (N, C, L) arrays; one job per row."""
    N, C, L = x.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        m = mean[c]
        s = scale[c]
        t = shift[c]
        src = x[n, c]
        dst = out[n, c]
        for i in range(L):
            dst[i] = (src[i] - m) * s + t


@njit(**PARALLEL_JIT)
def norm_grad_sums(dy, x, mean, sum_dy, sum_dy_xmu):
    """``sum_dy[c] = sum(dy[:, c])`` and ``sum_dy_xmu[c] = sum(dy[:, c] * (x[:, c] - mean[c]))`` in float64."""
    N, C, L = x.shape
    for c in prange(C):
        m = np.float64(mean[c])
        a = 0.0
        b = 0.0
        for n in range(N):
            g = dy[n, c]
            src = x[n, c]
            for i in range(L):
                gi = np.float64(g[i])
                a += gi
                b += gi * (np.float64(src[i]) - m)
        sum_dy[c] = a
        sum_dy_xmu[c] = b


@njit(**PARALLEL_JIT)
def norm_grad_apply(dy, x, mean, a, b, k, dx):
    """``dx[n, c, :] = dy[n, c, :] * a[c] + (x[n, c, :] - mean[c]) * b[c] + k[c]``; one job per row."""
    N, C, L = x.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        m = mean[c]
        ac = a[c]
        bc = b[c]
        kc = k[c]
        g = dy[n, c]
        src = x[n, c]
        dst = dx[n, c]
        for i in range(L):
            dst[i] = g[i] * ac + (src[i] - m) * bc + kc
