"""The flat strategy: stride-1 convolutions as long contiguous loops over whole padded planes.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

With the input zero-padded to width ``Wp`` (NCHW) and each plane read as one flat
vector, tap ``(c, i, j)`` of a stride-1 convolution is a shift by ``i * dh * Wp + j * dw``
(dilation ``(dh, dw)``, 1 when dense): every tap is one loop over ``L = (Ho - 1) * Wp + Wo``
positions, whatever the image width (the ``Wp - Wo`` columns past each row's end are
computed and dropped). For the first layers (C = 1 or 3), whose receptive fields are too
short to fill the tiled kernels' vectors, and for grouped and dilated convolutions at
stride 1 (a filter of group ``g`` reads the planes ``g * C/groups`` onwards), all groups in
one launch.

Kernels
-------
- :func:`flat_forward`: the forward pass (and, on dy padded by ``d * (K - 1) - p`` with the
  rotated kernel, the input gradient of a grouped or dilated convolution); four taps and
  two filters of one group share each pass.
- :func:`flat_weight_grad`: per-thread partial weight gradients, the mirror of the
  forward pass (dy copied at the padded pitch). Needs a finite input.
- :func:`flat_bias_grad`: the bias gradient, each ``(n, f)`` plane summed as one run.

Inline helper: :func:`_tap_run`.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


@njit(**SERIAL_JIT, inline="always")
def _tap_run(planes, base, t, KHW, KW, pitch, L):
    """The run of ``L`` positions tap ``t = (c * KH + i) * KW + j`` reads: plane ``base + c``
    shifted by ``i * pitch[0] + j * pitch[1]`` (``pitch = (dh * Wp, dw)``)."""
    c = t // KHW
    r = t - c * KHW
    i = r // KW
    o = i * pitch[0] + (r - i * KW) * pitch[1]
    return planes[base + c, o:o + L]


@njit(**PARALLEL_JIT)
def flat_forward(xq, w, b, dilation, groups, relu, out):
    """Stride-1 cross-correlation (grouped, dilated or dense), vectorised along whole images.

    ``out[n, f] = b[f] + sum_{c, i, j} w[f, c, i, j] * xq[n, g*Cg + c, oh + i*dh, ow + j*dw]``
    with ``g = f // (F / groups)``, ``Cg = C / groups``. With each plane read as one flat
    vector, tap ``(c, i, j)`` adds ``w[f, c, i, j] * plane[p + i*dh*Wp + j*dw]`` to output
    position ``p = oh*Wp + ow`` of an accumulator laid out like the padded image: one long
    contiguous loop per tap, whatever the image width (the ``Wp - Wo`` columns past each
    row's end are computed and dropped). Four taps and two filters share each pass, so
    every accumulator load and store serves eight multiply-adds.

    See ``benchmarks/NOTES.md``.

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    w : (F, C / groups, KH, KW) array
        Filters (C-contiguous).
    b : (F,) array
        Bias.
    dilation : (int, int)
    groups : int
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output as it is written.
    out : (N, F, Ho, Wo) array
        Output, fully overwritten; ``Ho = Hp - dh*(KH - 1)``, ``Wo = Wp - dw*(KW - 1)``.
    """
    N, C, Hp, Wp = xq.shape
    F, Cg, KH, KW = w.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    L = (Ho - 1) * Wp + Wo
    KHW = KH * KW
    T = Cg * KHW
    T4 = T - T % 4
    Fg = F // groups
    pairs = (Fg + 1) // 2
    pitch = (dilation[0] * Wp, dilation[1])
    planes = xq.reshape(N * C, Hp * Wp)
    wf = w.reshape(F, T)
    # The ReLU as a floor: -inf (no change) or 0, one select either way (no branch on ``relu``
    # in the loop: LLVM would compile the loop twice).
    floor = np.full(1, 0 if relu else -np.inf, dtype=out.dtype)[0]
    for job in prange(N * groups * pairs):
        n = job // (groups * pairs)
        g = (job - n * groups * pairs) // pairs
        f = g * Fg + 2 * (job - n * groups * pairs - g * pairs)
        h = min(f + 1, g * Fg + Fg - 1)  # odd Fg: the last pair computes its filter twice
        base = n * C + g * Cg
        acc = np.empty((2, L), dtype=out.dtype)
        a0 = acc[0]
        a1 = acc[1]
        a0[:] = b[f]
        a1[:] = b[h]
        wa = wf[f]
        wb = wf[h]
        for t0 in range(0, T4, 4):
            s0 = _tap_run(planes, base, t0, KHW, KW, pitch, L)
            s1 = _tap_run(planes, base, t0 + 1, KHW, KW, pitch, L)
            s2 = _tap_run(planes, base, t0 + 2, KHW, KW, pitch, L)
            s3 = _tap_run(planes, base, t0 + 3, KHW, KW, pitch, L)
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
            s0 = _tap_run(planes, base, t, KHW, KW, pitch, L)
            v0 = wa[t]
            u0 = wb[t]
            for p in range(L):
                x0 = s0[p]
                a0[p] += v0 * x0
                a1[p] += u0 * x0
        for k in range(h - f + 1):
            plane = out[n, f + k]
            a = acc[k]
            for oh in range(Ho):
                row = plane[oh]
                src = a[oh * Wp:oh * Wp + Wo]
                for ow in range(Wo):
                    v = src[ow]
                    row[ow] = floor if v <= floor else v


@njit(**PARALLEL_JIT)
def flat_weight_grad(xq, dy, dilation, groups, partial):
    """Per-thread partial weight gradients at stride 1 (grouped, dilated or dense).

    The mirror of :func:`flat_forward`: with ``dy``'s rows copied at the padded input's row
    pitch ``Wp`` (zeros in the ``Wp - Wo`` gaps), the gradient of tap ``(c, i, j)`` of filter
    ``f`` (group ``g``) is one dot product of that flat ``dy`` plane with the input plane
    ``g*Cg + c`` shifted by ``i*dh*Wp + j*dw``: long contiguous loops whatever the image
    width. Four taps and two filters share each pass (8 accumulators). The gaps multiply
    real inputs by zero, so ``xq`` must be finite (the plan checks; with an infinity,
    ``0 * inf`` would add a NaN).

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    dy : (N, F, Ho, Wo) array
    dilation : (int, int)
    groups : int
    partial : (T, F, C / groups, KH, KW) array
        Fully overwritten: ``partial[t]`` sums the ``t``-th contiguous chunk of the batch.
    """
    N, C, Hp, Wp = xq.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    T, _, Cg, KH, KW = partial.shape
    L = (Ho - 1) * Wp + Wo
    KHW = KH * KW
    R = Cg * KHW
    R4 = R - R % 4
    Fg = F // groups
    pitch = (dilation[0] * Wp, dilation[1])
    planes = xq.reshape(N * C, Hp * Wp)
    zero = np.zeros(1, dtype=partial.dtype)[0]
    for t in prange(T):
        part = partial[t].reshape(F, R)
        part[:, :] = 0
        dyw = np.zeros((F, L), dtype=dy.dtype)
        for n in range((N * t) // T, (N * (t + 1)) // T):
            for f in range(F):
                for oh in range(Ho):
                    dyw[f, oh * Wp:oh * Wp + Wo] = dy[n, f, oh]
            for pair in range(groups * ((Fg + 1) // 2)):
                g = pair // ((Fg + 1) // 2)
                f = g * Fg + 2 * (pair - g * ((Fg + 1) // 2))
                h = min(f + 1, g * Fg + Fg - 1)  # an odd Fg: the last pair of a group is one filter, added once
                da = dyw[f]
                db = dyw[h]
                pa = part[f]
                pb = part[h]
                base = n * C + g * Cg
                for r0 in range(0, R, 4):
                    m = min(4, R - r0)
                    s0 = _tap_run(planes, base, r0, KHW, KW, pitch, L)
                    s1 = _tap_run(planes, base, r0 + min(1, m - 1), KHW, KW, pitch, L)
                    s2 = _tap_run(planes, base, r0 + min(2, m - 1), KHW, KW, pitch, L)
                    s3 = _tap_run(planes, base, r0 + min(3, m - 1), KHW, KW, pitch, L)
                    a0 = a1 = a2 = a3 = zero
                    b0 = b1 = b2 = b3 = zero
                    for p in range(L):
                        u = da[p]
                        v = db[p]
                        a0 += u * s0[p]
                        a1 += u * s1[p]
                        a2 += u * s2[p]
                        a3 += u * s3[p]
                        b0 += v * s0[p]
                        b1 += v * s1[p]
                        b2 += v * s2[p]
                        b3 += v * s3[p]
                    sums = (a0, a1, a2, a3, b0, b1, b2, b3)
                    for k in range(m):
                        pa[r0 + k] += sums[k]
                        if h != f:
                            pb[r0 + k] += sums[4 + k]


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
