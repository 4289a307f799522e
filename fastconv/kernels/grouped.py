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

At stride 1 the flat layout of :mod:`fastconv.kernels.flat` is faster (the vector axis is a
whole zero-padded NCHW plane, read as one flat run per tap, shifted by ``i*dh*Wp + j*dw``):

- :func:`grouped_flat_forward`: the forward pass (and, on dy padded by ``d*(K-1) - p`` with
  the rotated kernel, the input gradient); four taps and two filters of one group share
  each pass.
- :func:`grouped_flat_weight_grad`: per-thread partial weight gradients, each tap one dot
  product of flat runs (dy at the padded pitch). Needs a finite input.

Inline helper: :func:`_grouped_tap`.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT


@njit(**SERIAL_JIT, inline="always")
def _grouped_tap(planes, base, t, KHW, KW, pitch, L):
    """The run of ``L`` positions tap ``t = (c * KH + i) * KW + j`` reads: plane ``base + c``
    shifted by ``i * pitch[0] + j * pitch[1]`` (``pitch = (dh * Wp, dw)``)."""
    c = t // KHW
    r = t - c * KHW
    i = r // KW
    o = i * pitch[0] + (r - i * KW) * pitch[1]
    return planes[base + c, o:o + L]


@njit(**PARALLEL_JIT)
def grouped_flat_forward(xq, w, b, dilation, groups, out):
    """Stride-1 grouped (and dilated) cross-correlation along whole flat padded planes.

    ``out[n, f] = b[f] + sum_{c, i, j} w[f, c, i, j] * xq[n, g*Cg + c, oh + i*dh, ow + j*dw]``
    with ``g = f // Fg``: as :func:`fastconv.kernels.flat.flat_forward`, each tap one loop
    over ``L = (Ho - 1) * Wp + Wo`` positions of an accumulator at the padded pitch.

    Parameters
    ----------
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    w : (F, C / groups, KH, KW) array
    b : (F,) array
    dilation : (int, int)
    groups : int
    out : (N, F, Ho, Wo) array
        Fully overwritten.
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
            s0 = _grouped_tap(planes, base, t0, KHW, KW, pitch, L)
            s1 = _grouped_tap(planes, base, t0 + 1, KHW, KW, pitch, L)
            s2 = _grouped_tap(planes, base, t0 + 2, KHW, KW, pitch, L)
            s3 = _grouped_tap(planes, base, t0 + 3, KHW, KW, pitch, L)
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
            s0 = _grouped_tap(planes, base, t, KHW, KW, pitch, L)
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
                plane[oh, :] = a[oh * Wp:oh * Wp + Wo]


@njit(**PARALLEL_JIT)
def grouped_flat_weight_grad(xq, dy, dilation, groups, partial):
    """Per-thread partial weight gradients of a stride-1 grouped (and dilated) convolution.

    The mirror of :func:`grouped_flat_forward`, as :func:`fastconv.kernels.flat.flat_weight_grad`:
    with dy's rows at the padded pitch ``Wp`` (zeros in the gaps), tap ``(c, i, j)`` of
    filter ``f`` is one dot product with plane ``g*Cg + c`` shifted by ``i*dh*Wp + j*dw``.
    The gaps multiply real inputs by zero, so ``xq`` must be finite (the plan checks).

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
                    s0 = _grouped_tap(planes, base, r0, KHW, KW, pitch, L)
                    s1 = _grouped_tap(planes, base, r0 + min(1, m - 1), KHW, KW, pitch, L)
                    s2 = _grouped_tap(planes, base, r0 + min(2, m - 1), KHW, KW, pitch, L)
                    s3 = _grouped_tap(planes, base, r0 + min(3, m - 1), KHW, KW, pitch, L)
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
                        xpix = xrow[ow * sw + j * dw]
                        arow = acc[ow, f0:f0 + Fg]
                        for c in range(Cg):
                            xv = xpix[c0 + c]
                            wrow = wtap[c]
                            for f in range(Fg):
                                arow[f] += xv * wrow[f]
        for f in range(G * Fg):
            orow = out[n, f, oh]
            for ow in range(Wo):
                orow[ow] = acc[ow, f]


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
                        dpix = dyrow[ow, g * Fg:(g + 1) * Fg]
                        arow = acc[ow * sw + off, g * Cg:(g + 1) * Cg]
                        for f in range(Fg):
                            dv = dpix[f]
                            wrow = wtap[f]
                            for c in range(Cg):
                                arow[c] += dv * wrow[c]
        for c in range(G * Cg):
            drow = dx[n, c, h]
            for w in range(W):
                drow[w] = acc[w, c]


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
