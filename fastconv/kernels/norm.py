"""Normalisation kernels (batch, layer and group norm) over ``(N, C, L)`` arrays.

An activation is viewed as ``(N, C, L)``: the statistics of "channel" ``c`` are taken
over ``N * L`` values (batch norm: ``(N, C, H*W)``; layer and group norm view the batch
as ``(1, N*G, L)`` instead).

Statistics are numerically sound: ``E[x^2] - E[x]^2`` loses every digit of a float32
activation with mean 1000 and standard deviation 1. Here each block of a channel (at most
:data:`_BLOCK` values, in cache) is summed twice in float64 -- its mean, then the squared
deviations from that mean -- and the blocks are merged with Chan's pairwise formula, so
the data is read from memory once.

:func:`norm_affine_stream` (and :func:`norm_fused_backward_stream`) write with non-temporal vector stores: an output
larger than the cache goes straight to memory instead of being read into the cache first
(a plain store reads every line it writes), one read and one write of memory per element
instead of two reads and a write.

The ``fused`` kernels do a batch norm's two passes channel by channel in one job: the
statistics (or the gradient's sums) of a channel, then its normalisation (or ``dx``),
while the channel's values are still in the cache. The separate kernels split the second
pass by rows instead, for batches with fewer channels than threads.

Kernels
-------
- :func:`norm_moments`: per-channel mean and sum of squared deviations (``M2``).
- :func:`norm_affine`: ``out = (x - mean[c]) * scale[c] + shift[c]``.
- :func:`norm_affine_stream`: the same, the output written by non-temporal vector stores.
- :func:`norm_grad_sums`: per-channel ``sum(dy)`` and ``sum(dy * (x - mean[c]))``.
- :func:`norm_grad_apply`: ``dx = dy * a[c] + (x - mean[c]) * b[c] + k[c]``.
- :func:`norm_fused_forward`: :func:`norm_moments` then :func:`norm_affine`, per channel.
- :func:`norm_fused_backward`: :func:`norm_grad_sums` then :func:`norm_grad_apply`, per channel.
- :func:`norm_fused_backward_stream`: the same in training, ``dx`` written by non-temporal vector stores.

Inline helpers: :func:`_channel_moments`, :func:`_channel_grad_sums`, :func:`_channel_affine`,
:func:`_channel_grad_coefficients`, :func:`_channel_grad_apply`, :func:`_channel_grad_apply_stream`,
:func:`_row_affine_stream` (one channel's or row's pass of the kernels above).
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import lanes, misaligned, stream_fence, vfma, vload, vsplat, vstream, vsub, vzero

#: Values summed as one block (a piece of a row, or whole short rows): small enough to
#: stay in the L1 cache between the block's two sums.
_BLOCK = 2048


@njit(**SERIAL_JIT, inline="always")
def _channel_moments(x, c):
    """``(mean, m2)`` in float64 of channel ``c`` of an (N, C, L) array: blocks' deviations merged by Chan's formula.

    A block is at most :data:`_BLOCK` values: a piece of one row, or several whole short rows
    (an (N, C) input has rows of one value).
    """
    N, C, L = x.shape
    rows = max(1, _BLOCK // max(L, 1))
    count = 0.0
    mu = 0.0
    acc = 0.0
    total = 0.0
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        for lo in range(0, L, _BLOCK):
            hi = min(L, lo + _BLOCK)
            nb = float((n1 - n0) * (hi - lo))
            s = 0.0
            for n in range(n0, n1):
                blk = x[n, c, lo:hi]
                for i in range(hi - lo):
                    s += np.float64(blk[i])
            total += s
            bm = s / nb
            q = 0.0
            for n in range(n0, n1):
                blk = x[n, c, lo:hi]
                for i in range(hi - lo):
                    d = np.float64(blk[i]) - bm
                    q += d * d
            merged = count + nb
            delta = bm - mu
            mu += delta * (nb / merged)
            acc += q + delta * delta * (count * nb / merged)
            count = merged
    # The mean returned is the plain float64 sum's (as accurate, and +-inf as PyTorch's for an
    # infinite input, where Chan's running mean turns into NaN); Chan's serves the deviations.
    return total / count if count else 0.0, acc


@njit(**SERIAL_JIT, inline="always")
def _channel_affine(x, c, m, s, t, out):
    """``out[:, c] = (x[:, c] - m) * s + t`` (scalars of x's dtype)."""
    N, C, L = x.shape
    for n in range(N):
        src = x[n, c]
        dst = out[n, c]
        for i in range(L):
            dst[i] = (src[i] - m) * s + t


@njit(**SERIAL_JIT, inline="always")
def _channel_grad_sums(dy, x, c, m):
    """``(sum(dy[:, c]), sum(dy[:, c] * (x[:, c] - m)))`` in float64 (``m`` float64)."""
    N, C, L = x.shape
    a = 0.0
    b = 0.0
    for n in range(N):
        g = dy[n, c]
        src = x[n, c]
        for i in range(L):
            gi = np.float64(g[i])
            a += gi
            b += gi * (np.float64(src[i]) - m)
    return a, b


@njit(**SERIAL_JIT, inline="always")
def _channel_grad_coefficients(dy, x, c, stats, gain, training, sums, coef):
    """Channel ``c``'s gradient sums into ``sums[:, c]`` (float64) and its ``dx`` coefficients into ``coef[:, c]``.

    ``coef[:, c]`` (x's dtype): the mean, then ``a``, ``b``, ``k`` of ``dx = dy * a + (x - mean) * b + k``,
    ``k`` holding the rest of the float64 mean (``b = k = 0`` without ``training``: constant statistics).
    """
    N, C, L = x.shape
    M = N * L
    mean = stats[0, c]
    invstd = stats[1, c]
    a, b = _channel_grad_sums(dy, x, c, mean)
    sums[0, c] = a
    sums[1, c] = b
    ca = gain[c] * invstd
    cb = -ca * invstd * invstd * b / M if training else 0.0
    ck = -ca * a / M if training else 0.0
    coef[0, c] = mean
    coef[1, c] = ca
    coef[2, c] = cb
    coef[3, c] = ck - (mean - np.float64(coef[0, c])) * cb


@njit(**SERIAL_JIT, inline="always")
def _channel_grad_apply(dy, x, c, m, coefficients, dx):
    """``dx[:, c] = dy[:, c] * a + (x[:, c] - m) * b + k`` with ``(a, b, k) = coefficients`` (x's dtype)."""
    N, C, L = x.shape
    a, b, k = coefficients
    for n in range(N):
        g = dy[n, c]
        src = x[n, c]
        dst = dx[n, c]
        for i in range(L):
            dst[i] = g[i] * a + (src[i] - m) * b + k


@njit(**SERIAL_JIT, inline="always")
def _channel_grad_apply_stream(v, dy, x, c, m, coefficients, dx):
    """:func:`_channel_grad_apply` with ``dx`` written by non-temporal stores of vectors like ``v``."""
    N, C, L = x.shape
    V = lanes(v)
    a, b, k = coefficients
    av = vsplat(v, a)
    bv = vsplat(v, b)
    kv = vsplat(v, k)
    mv = vsplat(v, m)
    for n in range(N):
        g = dy[n, c]
        src = x[n, c]
        dst = dx[n, c]
        head = min(L, misaligned(v, dst, 0))
        for i in range(head):
            dst[i] = g[i] * a + (src[i] - m) * b + k
        i = head
        while i + V <= L:
            vstream(dst, i, vfma(vfma(kv, vload(v, g, i), av), vsub(vload(v, src, i), mv), bv))
            i += V
        for j in range(i, L):
            dst[j] = g[j] * a + (src[j] - m) * b + k


@njit(**PARALLEL_JIT)
def norm_moments(x, mean, m2):
    """``mean[c]`` and ``m2[c] = sum((x[:, c, :] - mean[c])**2)`` (float64 outputs) of an (N, C, L) array.

    One job per channel.
    """
    for c in prange(x.shape[1]):
        mean[c], m2[c] = _channel_moments(x, c)


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


@njit(**SERIAL_JIT, inline="always")
def _row_affine_stream(v, src, dst, m, s, t):
    """``dst = (src - m) * s + t`` for 1-D rows, by non-temporal stores of vectors like ``v`` where ``dst`` is aligned."""
    L = src.shape[0]
    V = lanes(v)
    head = min(L, misaligned(v, dst, 0))
    for i in range(head):
        dst[i] = (src[i] - m) * s + t
    mv = vsplat(v, m)
    sv = vsplat(v, s)
    tv = vsplat(v, t)
    i = head
    while i + V <= L:
        vstream(dst, i, vfma(tv, vsub(vload(v, src, i), mv), sv))
        i += V
    for k in range(i, L):
        dst[k] = (src[k] - m) * s + t


@njit(**PARALLEL_JIT)
def norm_affine_stream(width, x, mean, scale, shift, out, rows):
    """:func:`norm_affine` with the output written by non-temporal vector stores of register ``width``.

    One job per ``rows`` consecutive (n, c) rows; in a row, the elements before the first
    vector-aligned one of ``out`` and the last partial vector are stored one by one. Each job
    ends with :func:`~fastconv.kernels.simd.stream_fence`.
    """
    N, C, L = x.shape
    v = vzero(width, x)
    for job in prange((N * C + rows - 1) // rows):
        for r in range(job * rows, min(N * C, (job + 1) * rows)):
            n = r // C
            c = r - n * C
            _row_affine_stream(v, x[n, c], out[n, c], mean[c], scale[c], shift[c])
        stream_fence()


@njit(**PARALLEL_JIT)
def norm_grad_sums(dy, x, mean, sum_dy, sum_dy_xmu):
    """``sum_dy[c] = sum(dy[:, c])`` and ``sum_dy_xmu[c] = sum(dy[:, c] * (x[:, c] - mean[c]))`` in float64."""
    for c in prange(x.shape[1]):
        sum_dy[c], sum_dy_xmu[c] = _channel_grad_sums(dy, x, c, np.float64(mean[c]))


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


@njit(**PARALLEL_JIT)
def norm_fused_forward(x, gain, shift, eps, out, stats, coef):
    """Batch norm of (N, C, L) ``x`` with its own statistics, channel by channel.

    ``out[:, c] = (x[:, c] - mean) / sqrt(var + eps) * gain[c] + shift[c]`` (``gain``,
    ``shift`` float64); ``stats[0, c]`` and ``stats[1, c]`` receive the mean and ``1 /
    sqrt(var + eps)`` (float64). ``coef`` (3, C), of x's dtype, is scratch: the mean in x's
    dtype, the scale, and the shift with the rest of the float64 mean folded in.
    """
    N, C, L = x.shape
    M = N * L
    for c in prange(C):
        mean, m2 = _channel_moments(x, c)
        invstd = 1.0 / np.sqrt(m2 / M + eps)
        scale = gain[c] * invstd
        coef[0, c] = mean
        coef[1, c] = scale
        coef[2, c] = shift[c] - (mean - np.float64(coef[0, c])) * scale
        stats[0, c] = mean
        stats[1, c] = invstd
        stats[2, c] = m2
        _channel_affine(x, c, coef[0, c], coef[1, c], coef[2, c], out)


@njit(**PARALLEL_JIT)
def norm_fused_backward_stream(width, dy, x, stats, gain, dx, sums, coef):
    """:func:`norm_fused_backward` in training, ``dx`` written by non-temporal stores of register ``width``."""
    v = vzero(width, x)
    for c in prange(x.shape[1]):
        _channel_grad_coefficients(dy, x, c, stats, gain, True, sums, coef)
        _channel_grad_apply_stream(v, dy, x, c, coef[0, c], (coef[1, c], coef[2, c], coef[3, c]), dx)
        stream_fence()


@njit(**PARALLEL_JIT)
def norm_fused_backward(dy, x, stats, gain, training, dx, sums, coef):
    """``dx`` of :func:`norm_fused_forward` (``training``) or of a normalisation by constants, channel by channel.

    ``stats`` (2, C) float64: the mean and ``invstd`` used; ``gain`` float64. ``sums[0, c]``
    and ``sums[1, c]`` receive ``sum(dy)`` and ``sum(dy * (x - mean))`` (float64); ``coef``
    (4, C), of x's dtype, is scratch.
    """
    for c in prange(x.shape[1]):
        _channel_grad_coefficients(dy, x, c, stats, gain, training, sums, coef)
        _channel_grad_apply(dy, x, c, coef[0, c], (coef[1, c], coef[2, c], coef[3, c]), dx)
