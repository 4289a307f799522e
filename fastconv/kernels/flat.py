"""The flat strategy: stride-1 convolutions as long contiguous loops over whole padded planes.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

With the input zero-padded to width ``Wp`` (NCHW) and each plane read as one flat
vector, tap ``(c, i, j)`` of a stride-1 convolution is a shift by ``i * Wp + j``: every
tap is one loop over ``L = (Ho - 1) * Wp + Wo`` positions, whatever the image width
(the ``Wp - Wo`` columns past each row's end are computed and dropped). For the first
layers (C = 1 or 3), whose receptive fields are too short to fill the tiled kernels'
vectors.

Kernels
-------
- :func:`flat_forward`: the forward pass; four taps and two filters share each pass.
- :func:`flat_weight_grad`: per-thread partial weight gradients, the mirror of the
  forward pass (dy copied at the padded pitch). Needs a finite input.
- :func:`flat_bias_grad`: the bias gradient, each ``(n, f)`` plane summed as one run.

Inline helper: :func:`_tap_run`.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


@njit(**SERIAL_JIT, inline="always")
def _tap_run(planes, base, t, KHW, KW, Wp, L):
    """The run of ``L`` input positions that tap ``t = (c * KH + i) * KW + j`` reads.

    ``planes[base + c]`` shifted by ``i * Wp + j``: the plane of channel ``c`` of the image
    whose first plane is ``base``, at the tap's offset.
    """
    c = t // KHW
    r = t - c * KHW
    i = r // KW
    o = i * Wp + (r - i * KW)
    return planes[base + c, o:o + L]


@njit(**PARALLEL_JIT)
def flat_forward(xq, w, b, relu, out):
    """Stride-1 cross-correlation for short receptive fields, vectorised along whole images.

    With the input zero-padded to width ``Wp`` and each plane read as one flat vector,
    tap ``(c, i, j)`` adds ``w[f, c, i, j] * plane_c[p + i*Wp + j]`` to output position
    ``p = oh*Wp + ow`` of an accumulator laid out like the padded image: one long
    contiguous loop per tap, whatever the image width (the ``Wp - Wo`` columns past each
    row's end are computed and dropped). Four taps and two filters share each pass, so
    every accumulator load and store serves eight multiply-adds.

    See ``benchmarks/NOTES.md``.

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    w : (F, C, KH, KW) array
        Filters (C-contiguous).
    b : (F,) array
        Bias.
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output as it is written.
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
    # The ReLU as a floor: -inf (no change) or 0, one select either way (no branch on ``relu``
    # in the loop: LLVM would compile the loop twice).
    floor = np.full(1, 0 if relu else -np.inf, dtype=out.dtype)[0]
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
            s0 = _tap_run(planes, n * C, t0, KHW, KW, Wp, L)
            s1 = _tap_run(planes, n * C, t0 + 1, KHW, KW, Wp, L)
            s2 = _tap_run(planes, n * C, t0 + 2, KHW, KW, Wp, L)
            s3 = _tap_run(planes, n * C, t0 + 3, KHW, KW, Wp, L)
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
            s0 = _tap_run(planes, n * C, t, KHW, KW, Wp, L)
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
                    v = src[ow]
                    row[ow] = floor if v <= floor else v


@njit(**PARALLEL_JIT)
def flat_weight_grad(xq, dy, KH, KW, partial):
    """Per-thread partial weight gradients at stride 1 for short receptive fields.

    The mirror of :func:`flat_forward`: with ``dy``'s rows copied at the padded
    input's row pitch ``Wp`` (zeros in the ``Wp - Wo`` gaps), the gradient of tap
    ``(c, i, j)`` of filter ``f`` is one dot product of that flat ``dy`` plane with
    the input plane ``c`` shifted by ``i * Wp + j``: long contiguous loops whatever the
    image width. Four taps and two filters share each pass (8 accumulators). The gaps
    multiply real inputs by zero, so ``xq`` must be finite (the plan checks; with an
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
                    s0 = _tap_run(planes, n * C, t0, KHW, KW, Wp, L)
                    s1 = _tap_run(planes, n * C, t0 + 1, KHW, KW, Wp, L)
                    s2 = _tap_run(planes, n * C, t0 + 2, KHW, KW, Wp, L)
                    s3 = _tap_run(planes, n * C, t0 + 3, KHW, KW, Wp, L)
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
                    s0 = _tap_run(planes, n * C, r, KHW, KW, Wp, L)
                    a0 = b0 = zero
                    for p in range(L):
                        x0 = s0[p]
                        a0 += da[p] * x0
                        b0 += db[p] * x0
                    pa[r] += a0
                    if g != f:
                        pb[r] += b0


@njit(**PARALLEL_JIT)
def flat_bias_grad(dy, db):
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
