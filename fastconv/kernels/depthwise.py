"""The depthwise strategies: one input channel per group; the vector over channels (NHWC) or along rows (NCHW).

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run (the rows kernels on
maps whose rows fill the vectors, the NHWC ones on narrow maps such as 7 x 7).

A depthwise convolution (``groups == C``, weights ``(C*m, 1, KH, KW)`` for a channel
multiplier ``m``; output channel ``f = c*m + k`` reads input channel ``c``) has no
reduction over channels: each output is ``KH * KW`` products. As in XNNPACK's dwconv
micro-kernels and oneDNN, the vector axis is the channel axis of an NHWC layout: one
vector of ``L`` channels (16 float32 in a 512-bit register, 8 in a 256-bit one) of one
pixel accumulates every tap in a register (:func:`fastconv.kernels.simd.vfma`), with one
vector load of input and one of weights per tap.

Layouts
-------
Activations: NHWC, zero-padded in space and with the channels zero-padded to ``Cp``, a
whole number of vectors (:func:`depthwise_pack`); ``dy`` packed the same way has its
channels split by multiplier, ``dyt[n, oh, ow, k*Cp + c] = dy[n, c*m + k, oh, ow]``.
Weights: ``wk[k, i, j, c] = w[c*m + k, 0, i, j]``, zero for ``c >= C``. The padded
lanes compute zeros that are never written out. The public API stays NCHW: each job
computes one row into a small NHWC buffer and writes it transposed into the NCHW result
(with the bias and the ReLU of the forward pass), so the only packing pass is the input's.

Kernels
-------
- :func:`depthwise_pack`: NCHW -> zero-padded NHWC with channels split by multiplier and
  padded to whole vectors (the input, and ``dy`` for the input gradient).
- :func:`depthwise_forward`: the forward pass, one job per output row.
- :func:`depthwise_input_grad`: the input gradient as a gather, one job per input row:
  each ``dx`` pixel sums the taps that reach it (an index test per tap: strides, padding
  and dilation; no atomics, and a weight never meets a padding zero, so non-finite
  weights give the reference's answer).
- :func:`depthwise_weight_grad`: the weight gradient, per-job partials over contiguous
  chunks of the output rows (``dy`` transposed row by row inside the job); the caller sums
  them in chunk order, so the result is bitwise reproducible for a given thread count.

NCHW rows
---------
On wide maps the transposes to and from NHWC cost more than the convolution (an NHWC
pack of 8 x 144 x 56 x 56 float32 takes 4.5 ms on one thread, a plain copy 0.6 ms). The
rows kernels keep NCHW: a job owns one image's plane (or the ``m`` planes of a group)
and copies it into a buffer the caches hold, zero-padded and split by column phase
(:func:`_fill_phases`: ``buf[(r*sw + p)*Qs + q] = xpad[r, q*sw + p]``), so that for any
stride and dilation the tap ``(i, j)`` of ``L`` consecutive outputs is one contiguous
vector load; the weights are scalars broadcast into the FMA
(:func:`fastconv.kernels.simd.vfmab`). ``x`` is read from memory once and ``y`` written once.

- :func:`depthwise_rows_forward`: the forward pass, in register tiles of 4 vectors
  (:func:`_rows_tile_4`: 4 FMA chains, along a row or across rows on narrow maps); with ``dy``, the rotated kernel and
  padding ``(K-1)*d - p`` also the stride-1 input gradient (``m`` input planes summed
  into one output plane).
- :func:`depthwise_rows_input_grad`: the input gradient at any stride as a gather: per
  ``dx`` row and column phase the taps reaching it are fixed, each a contiguous run of
  ``dy``; the phase's row is written into every ``sw``-th column (:func:`_interleave_row`: at stride
  2 both phases at once, interleaved in registers).
- :func:`depthwise_rows_weight_grad`: one dot product per tap and filter of ``dy``'s rows
  with the padded plane, per ``(n, c)`` job; per-image partials, summed by the caller in
  image order (the same result for any thread count).

Flat planes
-----------
On narrow maps (14 x 14, 7 x 7) the rows kernels pay per plane (the copy, vectors of 7 or 14
lanes out of 16, a scalar write-back): 3.5 GB/s. At stride 1 with ``Wo == W`` (``'same'``
padding) output ``p = oh*W + ow`` of the flattened plane reads tap ``(i, j)`` at
``p + (i*dh - ph)*W + j*dw - pw`` of the flattened input plane, a constant offset, so the
vector runs along the whole plane (a 7 x 7 plane is 4 vectors) and each tap is one masked
load (:func:`fastconv.kernels.simd.vloadz`) whose lanes in the padding are left out, never
read (:func:`_flat_taps` tabulates them); no copy of the plane.

- :func:`depthwise_flat_forward`: the forward pass and, with ``dy`` and the rotated kernel,
  the stride-1 input gradient; tiles of 4 vectors, :func:`_flat_store` at the plane's end.
- :func:`depthwise_flat_weight_grad`: per filter and tap one dot product of ``dy``'s flat
  planes with ``x``'s shifted by the tap, every image summed in registers: no partials.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import (lanes, vadd, vevens, vfma, vfmab, vload, vloadz, vmask, vmax, vodds, vstore, vstorez, vziphi, vziplo,
                   vzero)

#: Jobs of the rows kernels: each takes a contiguous range of planes and allocates its buffers once.
_JOBS = 64

#: Channels per job of :func:`depthwise_pack` (as :func:`fastconv.kernels.pack.pack_nhwc_padded`:
#: 16 sequential read streams, whole cache lines written).
_PACK_CHANNELS = 16


@njit(**PARALLEL_JIT)
def depthwise_pack(a, ph, pw, m, out):
    """``out[n, h+ph, w+pw, k*Cp + c] = a[n, c*m + k, h, w]``; zeros in the border and the padded lanes.

    Parameters
    ----------
    a : (N, C*m, H, W) array
        NCHW.
    ph, pw : int
        Zero padding of the height and width.
    m : int
        Channel multiplier: channel ``c*m + k`` goes to lane ``c`` of block ``k``.
    out : (N, H+2ph, W+2pw, m*Cp) array
        Fully overwritten (may come from ``np.empty``); ``Cp >= C``.
    """
    N, F, H, W = a.shape
    Hp, Wp, MC = out.shape[1], out.shape[2], out.shape[3]
    Cp = MC // m
    C = F // m
    blocks = (F + _PACK_CHANNELS - 1) // _PACK_CHANNELS
    for job in prange(N * blocks):
        n = job // blocks
        f0 = (job - n * blocks) * _PACK_CHANNELS
        f1 = min(F, f0 + _PACK_CHANNELS)
        img = out[n]
        for hp in range(Hp):
            h = hp - ph
            row = img[hp]
            inside = h >= 0 and h < H
            for wp in range(Wp):
                if not (inside and wp >= pw and wp < pw + W):
                    for f in range(f0, f1):
                        c = f // m
                        row[wp, (f - c * m) * Cp + c] = 0
                if f1 == F:  # the last block's job zeroes the padded lanes
                    for k in range(m):
                        row[wp, k * Cp + C:(k + 1) * Cp] = 0
            if inside:
                for f in range(f0, f1):
                    c = f // m
                    lane = (f - c * m) * Cp + c
                    src = a[n, f, h]
                    for w in range(W):
                        row[pw + w, lane] = src[w]


@njit(**PARALLEL_JIT)
def depthwise_forward(width, xp, wk, b, geom, relu, out):
    """``out[n, c*m + k, oh, ow] = b[c*m + k] + sum_ij xp[n, oh*sh + i*dh, ow*sw + j*dw, c] * wk[k, i, j, c]``.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
        The register width: ``L`` lanes; ``Cp`` is a multiple of ``L``.
    xp : (N, Hp, Wp, Cp) array
        The input from :func:`depthwise_pack` (``m = 1``).
    wk : (m, KH, KW, Cp) array
        Weights (see the module).
    b : (C*m,) array
        Bias.
    geom : (int, int, int, int)
        ``(sh, sw, dh, dw)``: stride and dilation.
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output.
    out : (N, C*m, Ho, Wo) array
        NCHW, fully overwritten.
    """
    sh, sw, dh, dw = geom
    N, Hp, Wp, Cp = xp.shape
    m, KH, KW = wk.shape[0], wk.shape[1], wk.shape[2]
    F, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    C = F // m
    T = KH * KW
    xf = xp.reshape(xp.size)
    wf = wk.reshape(wk.size)
    z = vzero(width, xf)
    L = lanes(z)
    xoff = np.empty(T, dtype=np.int64)  # tap t = (i, j) of a pixel, relative to its first
    for t in range(T):
        xoff[t] = ((t // KW) * dh * Wp + (t % KW) * dw) * Cp
    zero = np.zeros(1, dtype=out.dtype)[0]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        buf = np.empty(Wo * Cp, dtype=out.dtype)
        row = (n * Hp + oh * sh) * Wp * Cp
        for k in range(m):
            wo = k * T * Cp
            for ow in range(Wo):
                base = row + ow * sw * Cp
                for c0 in range(0, Cp, L):
                    acc = z
                    for t in range(T):
                        acc = vfma(acc, vload(z, xf, base + xoff[t] + c0), vload(z, wf, wo + t * Cp + c0))
                    vstore(buf, ow * Cp + c0, acc)
            for c in range(C):
                f = c * m + k
                orow = out[n, f, oh]
                bias = b[f]
                for q in range(Wo):
                    v = buf[q * Cp + c] + bias
                    orow[q] = zero if relu and v <= zero else v


@njit(**PARALLEL_JIT)
def depthwise_input_grad(width, dyt, wk, geom, pad, dx):
    """``dx[n, c, h, w] = sum dy[n, c*m + k, oh, ow] * w[c*m + k, 0, i, j]`` over the taps with
    ``oh*sh + i*dh - ph == h`` and ``ow*sw + j*dw - pw == w`` inside the output.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    dyt : (N, Ho, Wo, m*Cp) array
        ``dy`` from :func:`depthwise_pack` (no padding, multiplier ``m``).
    wk : (m, KH, KW, Cp) array
        Weights (see the module).
    geom : (int, int, int, int)
        ``(sh, sw, dh, dw)``.
    pad : (int, int)
        ``(ph, pw)``.
    dx : (N, C, H, W) array
        NCHW, fully overwritten.
    """
    sh, sw, dh, dw = geom
    ph, pw = pad
    N, Ho, Wo, MC = dyt.shape
    m, KH, KW, Cp = wk.shape
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    T = KH * KW
    df = dyt.reshape(dyt.size)
    wf = wk.reshape(wk.size)
    z = vzero(width, df)
    L = lanes(z)
    for job in prange(N * H):
        n = job // H
        h = job - n * H
        buf = np.empty(W * Cp, dtype=dx.dtype)
        src = np.empty(m * T, dtype=np.int64)  # the taps reaching one pixel: offsets into dyt and wk
        wsrc = np.empty(m * T, dtype=np.int64)
        for w in range(W):
            count = 0
            for t in range(T):
                i = t // KW
                u = h + ph - i * dh
                v = w + pw - (t - i * KW) * dw
                if u < 0 or v < 0 or u % sh != 0 or v % sw != 0 or u // sh >= Ho or v // sw >= Wo:
                    continue
                for k in range(m):
                    src[count] = ((n * Ho + u // sh) * Wo + v // sw) * MC + k * Cp
                    wsrc[count] = (k * T + t) * Cp
                    count += 1
            for c0 in range(0, Cp, L):
                acc = z
                for e in range(count):
                    acc = vfma(acc, vload(z, df, src[e] + c0), vload(z, wf, wsrc[e] + c0))
                vstore(buf, w * Cp + c0, acc)
        for c in range(C):
            drow = dx[n, c, h]
            for q in range(W):
                drow[q] = buf[q * Cp + c]


@njit(**PARALLEL_JIT)
def depthwise_weight_grad(width, xp, dy, geom, part):
    """``part[t, k, i, j, c] = sum dy[n, c*m + k, oh, ow] * xp[n, oh*sh + i*dh, ow*sw + j*dw, c]`` over
    the ``t``-th contiguous chunk of the ``N * Ho`` output rows (one job per chunk).

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    xp : (N, Hp, Wp, Cp) array
        The input from :func:`depthwise_pack` (``m = 1``).
    dy : (N, C*m, Ho, Wo) array
        Output gradient, NCHW.
    geom : (int, int, int, int)
        ``(sh, sw, dh, dw)``.
    part : (chunks, m, KH, KW, Cp) array
        Fully overwritten; the lanes ``c >= C`` get zeros.
    """
    sh, sw, dh, dw = geom
    N, Hp, Wp, Cp = xp.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    chunks, m, KH, KW = part.shape[0], part.shape[1], part.shape[2], part.shape[3]
    T = KH * KW
    xf = xp.reshape(xp.size)
    z = vzero(width, xf)
    L = lanes(z)
    rows = N * Ho
    for ch in prange(chunks):
        pf = part[ch].reshape(m * T * Cp)
        pf[:] = 0
        dyt = np.zeros(Wo * m * Cp, dtype=xp.dtype)  # one row of dy, NHWC; the padded lanes stay 0
        for r in range(rows * ch // chunks, rows * (ch + 1) // chunks):
            n = r // Ho
            oh = r - n * Ho
            for f in range(F):
                c = f // m
                lane = (f - c * m) * Cp + c
                srow = dy[n, f, oh]
                for ow in range(Wo):
                    dyt[ow * m * Cp + lane] = srow[ow]
            for t in range(T):
                i = t // KW
                xb = ((n * Hp + oh * sh + i * dh) * Wp + (t - i * KW) * dw) * Cp
                for k in range(m):
                    po = (k * T + t) * Cp
                    for c0 in range(0, Cp, L):
                        a0 = vload(z, pf, po + c0)
                        a1 = z  # two chains: the FMA latency is not on the critical path
                        for ow in range(0, Wo - 1, 2):
                            a0 = vfma(a0, vload(z, dyt, (ow * m + k) * Cp + c0), vload(z, xf, xb + ow * sw * Cp + c0))
                            a1 = vfma(a1, vload(z, dyt, ((ow + 1) * m + k) * Cp + c0),
                                      vload(z, xf, xb + (ow + 1) * sw * Cp + c0))
                        if Wo % 2 == 1:
                            a0 = vfma(a0, vload(z, dyt, ((Wo - 1) * m + k) * Cp + c0),
                                      vload(z, xf, xb + (Wo - 1) * sw * Cp + c0))
                        vstore(pf, po + c0, vadd(a0, a1))


@njit(**SERIAL_JIT, inline="always")
def _fill_phases(z, x, src, geom, Qs, buf, bo):
    """Copy plane ``x[n, plane]`` (``src = (n, plane)``) into ``buf[bo:]`` zero-padded by ``(ph, pw)`` and split
    by column phase (``geom = (ph, pw, sw)``): ``buf[bo + (r*sw + p)*Qs + q] = xpad[r, q*sw + p]``; the rest of
    the region is left as it was (zeros). At stride 2 two masked loads of a row give both phases
    (:func:`fastconv.kernels.simd.vevens`, :func:`fastconv.kernels.simd.vodds`; a scalar gather of every
    other element cost 1 ns each)."""
    n, plane = src
    ph, pw, sw = geom
    H, W = x.shape[2], x.shape[3]
    L = lanes(z)
    xf = x.reshape(x.size)
    if sw == 2:  # source column k goes to phase (k + pw) % 2, column (k + pw) // 2
        for h in range(H):
            first = ((n * x.shape[1] + plane) * H + h) * W
            row = bo + (h + ph) * 2 * Qs
            e0 = row + (pw % 2) * Qs + pw // 2
            o0 = row + ((pw + 1) % 2) * Qs + (1 + pw) // 2
            whole = W - W % (2 * L)
            for k in range(0, whole, 2 * L):  # whole pairs of vectors: plain loads and stores
                u = vload(z, xf, first + k)
                v = vload(z, xf, first + k + L)
                vstore(buf, e0 + k // 2, vevens(u, v))
                vstore(buf, o0 + k // 2, vodds(u, v))
            if whole < W:  # the row's end: masked (a masked store is microcoded on AMD's AVX2 cores)
                cnt = W - whole
                u = vloadz(z, xf, first + whole, (1 << min(L, cnt)) - 1)
                v = vloadz(z, xf, first + whole + L, (1 << max(0, cnt - L)) - 1)
                vstorez(buf, e0 + whole // 2, vevens(u, v), (1 << ((cnt + 1) // 2)) - 1)
                vstorez(buf, o0 + whole // 2, vodds(u, v), (1 << (cnt // 2)) - 1)
        return
    for p in range(sw):
        q0 = max(0, -(-(pw - p) // sw))  # the first q with q*sw + p - pw >= 0
        q1 = (W - 1 + pw - p) // sw + 1 if W - 1 + pw - p >= 0 else 0
        for h in range(H):
            row = bo + ((h + ph) * sw + p) * Qs
            if sw == 1:
                buf[row + pw:row + pw + W] = x[n, plane, h]
            else:
                srow = x[n, plane, h]
                for q in range(q0, q1):
                    buf[row + q] = srow[q * sw + p - pw]


@njit(**SERIAL_JIT)
def _rows_tile_4(z, buf, src, toff, wf, wo, init, dst):
    """Four vectors of outputs (four independent FMA chains): for ``v < 4``,
    ``out[oo[v] + l] = init[0] + sum_{ii, t} buf[xo[v] + ii*plane + toff[t] + l] * wf[wo + ii*T + t]``
    with ``(xo, plane, mi) = src`` and ``(out, oo) = dst``; ``max(., 0)`` when ``init[1]``."""
    xo, plane, mi = src
    out, oo = dst
    bias, relu = init
    T = toff.size
    a0 = a1 = a2 = a3 = bias
    for ii in range(mi):
        for t in range(T):
            o = ii * plane + toff[t]
            wi = wo + ii * T + t
            a0 = vfmab(a0, vload(z, buf, xo[0] + o), wf, wi)
            a1 = vfmab(a1, vload(z, buf, xo[1] + o), wf, wi)
            a2 = vfmab(a2, vload(z, buf, xo[2] + o), wf, wi)
            a3 = vfmab(a3, vload(z, buf, xo[3] + o), wf, wi)
    if relu:
        a0, a1, a2, a3 = vmax(a0, z), vmax(a1, z), vmax(a2, z), vmax(a3, z)
    vstore(out, oo[0], a0)
    vstore(out, oo[1], a1)
    vstore(out, oo[2], a2)
    vstore(out, oo[3], a3)


@njit(**PARALLEL_JIT)
def depthwise_rows_forward(width, x, wt, b, geom, relu, out):
    """NCHW depthwise correlation, the vector axis along the output row; one job per group of planes.

    Group ``g`` has ``mi`` input planes and ``mo`` output planes (the forward pass: ``mi = 1``,
    ``mo = m``; the stride-1 input gradient: ``mi = m``, ``mo = 1``):
    ``out[n, g*mo + o] = b[g*mo + o] + sum_ii corr(xpad[n, g*mi + ii], wt[(g*mo + o)*mi + ii])``.
    The job copies its ``mi`` planes zero-padded and split by column phase (:func:`_fill_phases`)
    into a buffer the caches hold, so every tap of ``L`` consecutive outputs is one contiguous load;
    register tiles of 4 vectors (:func:`_rows_tile_4`) along the rows, or across rows on narrow maps.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    x : (N, G*mi, H, W) array
        NCHW, C-contiguous.
    wt : (G*mo*mi, KH, KW) array
    b : (G*mo,) array
    geom : (int, int, int, int, int, int)
        ``(sh, sw, dh, dw, ph, pw)``.
    relu : bool
        ``max(y, 0)`` (NaN kept).
    out : (N, G*mo, Ho, Wo) array
        NCHW, C-contiguous, fully overwritten.
    """
    sh, sw, dh, dw, ph, pw = geom
    N, CI, H, W = x.shape
    CO, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    KH, KW = wt.shape[1], wt.shape[2]
    T = KH * KW
    mi = wt.shape[0] // CO
    mo = CO * mi // CI
    wf = wt.reshape(wt.size)
    of = out.reshape(out.size)
    z = vzero(width, wf)
    L = lanes(z)
    Wv = (Wo + L - 1) // L * L
    Qs = max(Wv + ((KW - 1) * dw) // sw, (W + 2 * pw + sw - 1) // sw)
    Hp = max(H + 2 * ph, (Ho - 1) * sh + (KH - 1) * dh + 1)
    toff = np.empty(T, dtype=np.int64)
    for t in range(T):
        toff[t] = (((t // KW) * dh) * sw + ((t % KW) * dw) % sw) * Qs + ((t % KW) * dw) // sw
    one = vload(z, np.ones(L, dtype=wf.dtype), 0)
    # Vector slots: (oh, v) in row-major order, taken 4 at a time (the last tile repeats the last
    # slot: its stores are idempotent); slot s reads buf at xs[s] and writes the plane at oofs[s].
    nvec = (Wo + L - 1) // L
    S = Ho * nvec
    xs = np.empty(S, dtype=np.int64)
    oofs = np.empty(S, dtype=np.int64)
    for s in range(S):
        ow0 = min((s % nvec) * L, max(Wo - L, 0))  # the row's last vector overlaps the one before it
        xs[s] = (s // nvec) * sh * sw * Qs + ow0
        oofs[s] = (s // nvec) * Wo + ow0
    groups = N * (CI // mi)
    jobs = min(groups, _JOBS)
    for job in prange(jobs):
        # A job's buffer is zeroed once: each plane's copy overwrites the same interior, the border stays 0.
        buf = np.zeros(mi * Hp * sw * Qs, dtype=wf.dtype)
        narrow = np.empty(4 * L, dtype=wf.dtype)  # rows narrower than a vector go through here
        plane = Hp * sw * Qs
        for gj in range(groups * job // jobs, groups * (job + 1) // jobs):
            n = gj // (CI // mi)
            g = gj - n * (CI // mi)
            for ii in range(mi):
                _fill_phases(z, x, (n, g * mi + ii), (ph, pw, sw), Qs, buf, ii * plane)
            for o in range(mo):
                f = g * mo + o
                init = (vfmab(z, one, b, f), relu)
                ob = (n * CO + f) * Ho * Wo
                for s0 in range(0, S, 4):
                    s1, s2, s3 = min(s0 + 1, S - 1), min(s0 + 2, S - 1), min(s0 + 3, S - 1)
                    xo = (xs[s0], xs[s1], xs[s2], xs[s3])
                    if Wo >= L:
                        oo = (ob + oofs[s0], ob + oofs[s1], ob + oofs[s2], ob + oofs[s3])
                        _rows_tile_4(z, buf, (xo, plane, mi), toff, wf, f * mi * T, init, (of, oo))
                        continue
                    oo = (0, L, 2 * L, 3 * L)
                    _rows_tile_4(z, buf, (xo, plane, mi), toff, wf, f * mi * T, init, (narrow, oo))
                    for v in range(min(4, S - s0)):
                        for q in range(Wo):
                            of[ob + oofs[s0 + v] + q] = narrow[v * L + q]


@njit(**PARALLEL_JIT)
def depthwise_rows_weight_grad(width, x, dy, geom, KH, part):
    """``part[n, f, i*KW + j] = sum_{oh, ow} dy[n, f, oh, ow] * xpad[n, f // m, oh*sh + i*dh, ow*sw + j*dw]``,
    one job per ``(n, c)`` (its ``m`` filters), the vector axis along the rows of ``dy``.

    The job copies ``dy[n, f]`` into rows zero-padded to whole vectors; the lanes past the
    row's end take ``x`` through :func:`fastconv.kernels.simd.vmask` (0, so an infinity
    there adds nothing). Three taps per pass over ``dy`` (one load of ``dy`` for three FMA chains).

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    x : (N, C, H, W) array
        NCHW, C-contiguous.
    dy : (N, C*m, Ho, Wo) array
        NCHW, C-contiguous.
    geom : (int, int, int, int, int, int)
        ``(sh, sw, dh, dw, ph, pw)``.
    KH : int
        Kernel height.
    part : (N, C*m, KH*KW) array
        Fully overwritten; the caller sums it over ``n`` (a fixed order for any thread count).
    """
    sh, sw, dh, dw, ph, pw = geom
    N, C, H, W = x.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    T = part.shape[2]
    KW = T // KH
    m = F // C
    z = vzero(width, part.reshape(part.size))
    L = lanes(z)
    nv = (Wo + L - 1) // L
    Wv = nv * L
    Qs = max(Wv + ((KW - 1) * dw) // sw, (W + 2 * pw + sw - 1) // sw)
    Hp = max(H + 2 * ph, (Ho - 1) * sh + (KH - 1) * dh + 1)
    masks = np.zeros(Wv, dtype=part.dtype)
    masks[:Wo] = 1
    toff = np.empty(T, dtype=np.int64)  # tap t's offset in the buffer
    for t in range(T):
        toff[t] = (((t // KW) * dh) * sw + ((t % KW) * dw) % sw) * Qs + ((t % KW) * dw) // sw
    jobs = min(N * C, _JOBS)
    for job in prange(jobs):
        buf = np.zeros(Hp * sw * Qs, dtype=part.dtype)  # zeroed once, as in depthwise_rows_forward
        dyb = np.zeros(Ho * Wv, dtype=part.dtype)
        lanesum = np.empty(3 * L, dtype=part.dtype)
        for nc in range(N * C * job // jobs, N * C * (job + 1) // jobs):
            n = nc // C
            c = nc - n * C
            _fill_phases(z, x, (n, c), (ph, pw, sw), Qs, buf, 0)
            for k in range(m):
                f = c * m + k
                for oh in range(Ho):
                    dyb[oh * Wv:oh * Wv + Wo] = dy[n, f, oh]
                for t0 in range(0, T, 3):  # three taps per pass (the last ones again past T: the same sums)
                    t1, t2 = min(t0 + 1, T - 1), min(t0 + 2, T - 1)
                    a0 = a1 = a2 = z
                    for oh in range(Ho):
                        x0 = oh * sh * sw * Qs
                        for v in range(nv):
                            mk = vload(z, masks, v * L)
                            d = vload(z, dyb, oh * Wv + v * L)
                            a0 = vfma(a0, d, vmask(vload(z, buf, x0 + toff[t0] + v * L), mk))
                            a1 = vfma(a1, d, vmask(vload(z, buf, x0 + toff[t1] + v * L), mk))
                            a2 = vfma(a2, d, vmask(vload(z, buf, x0 + toff[t2] + v * L), mk))
                    vstore(lanesum, 0, a0)
                    vstore(lanesum, L, a1)
                    vstore(lanesum, 2 * L, a2)
                    part[n, f, t2] = lanesum[2 * L:].sum()
                    part[n, f, t1] = lanesum[L:2 * L].sum()
                    part[n, f, t0] = lanesum[:L].sum()


@njit(**SERIAL_JIT, inline="always")
def _interleave_row(z, acc, sw, W, out, o):
    """``out[o + rw + sw*u] = acc[rw*Uv + u]`` for the ``W`` columns of a row held phase by phase
    (``Uv = acc.size // sw``, whole vectors); at stride 2 two :func:`fastconv.kernels.simd.vziplo` /
    :func:`fastconv.kernels.simd.vziphi` stores per vector of each phase instead of a scalar scatter."""
    L = lanes(z)
    Uv = acc.size // sw
    if sw == 2 and W > 1:
        for u0 in range(0, min(Uv, (W + 1) // 2), L):
            a0, a1 = vload(z, acc, u0), vload(z, acc, Uv + u0)
            k = W - 2 * u0  # columns left from 2*u0 on
            _flat_store(out, o + 2 * u0, vziplo(a0, a1), (1 << min(L, k)) - 1)
            _flat_store(out, o + 2 * u0 + L, vziphi(a0, a1), (1 << max(0, min(L, k - L))) - 1)
        return
    for rw in range(min(sw, W)):
        for u in range((W - rw + sw - 1) // sw):
            out[o + rw + sw * u] = acc[rw * Uv + u]


@njit(**PARALLEL_JIT)
def depthwise_rows_input_grad(width, dy, wt, geom, KH, dx):
    """``dx[n, c, h, w] = sum dy[n, c*m + k, oh, ow] * w[c*m + k, 0, i, j]`` over the taps with
    ``oh*sh + i*dh - ph == h`` and ``ow*sw + j*dw - pw == w``, one job per ``(n, c)``, NCHW.

    The job copies its ``m`` planes of ``dy`` into a zero-padded buffer. For a row ``h`` of
    ``dx`` and a column phase ``rw`` (the columns ``w = rw + sw*u``) the taps that reach it are
    fixed, and tap ``(i, j)`` reads ``dy`` at ``ow = u + const``: one contiguous vector load per
    tap for ``L`` values of ``u``. The phase's row goes through a small buffer into every
    ``sw``-th column of ``dx``. A padding zero meets every tap: the caller passes finite weights.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    dy : (N, C*m, Ho, Wo) array
        NCHW, C-contiguous.
    wt : (C*m, KH*KW) array
        The weights ``w[f, 0, i, j]`` at ``[f, i*KW + j]``.
    geom : (int, int, int, int, int, int)
        ``(sh, sw, dh, dw, ph, pw)``.
    KH : int
        Kernel height.
    dx : (N, C, H, W) array
        NCHW, fully overwritten.
    """
    sh, sw, dh, dw, ph, pw = geom
    N, F, Ho, Wo = dy.shape
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    T = wt.shape[1]
    KW = T // KH
    m = F // C
    wf = wt.reshape(wt.size)
    z = vzero(width, wf)
    L = lanes(z)
    PT = max(0, -(-((KH - 1) * dh - ph) // sh))  # dy rows above the first (ow likewise: PL columns)
    PL = max(0, -(-((KW - 1) * dw - pw) // sw))
    Uv = ((W + sw - 1) // sw + L - 1) // L * L  # the columns of one phase, whole vectors
    R = PL + Uv + (sw - 1 + pw) // sw + 1
    Hb = PT + max(Ho, (H - 1 + ph) // sh + 1)
    plane = Hb * R
    # The taps reaching a dx row of phase (h + ph) % sh in column phase rw, for every such pair:
    # offsets into buf relative to the row's base, and the weight index relative to c*m*T.
    P = sh * sw
    count = np.zeros(P, dtype=np.int64)
    toff = np.empty((P, m * T), dtype=np.int64)
    tw = np.empty((P, m * T), dtype=np.int64)
    for r in range(P):
        rh = r // sw
        rw = r - rh * sw
        for t in range(T):
            a = rh - (t // KW) * dh
            b = rw + pw - (t % KW) * dw
            if a % sh == 0 and b % sw == 0:
                for k in range(m):  # a // sh >= -PT and b // sw >= -PL by the padding
                    toff[r, count[r]] = k * plane + (a // sh) * R + PL + b // sw
                    tw[r, count[r]] = k * T + t
                    count[r] += 1
    dxf = dx.reshape(dx.size)
    jobs = min(N * C, _JOBS)
    for job in prange(jobs):
        buf = np.zeros(m * plane, dtype=wf.dtype)  # zeroed once: the border is never written
        acc = np.empty(sw * Uv, dtype=wf.dtype)  # the row, phase by phase
        for nc in range(N * C * job // jobs, N * C * (job + 1) // jobs):
            n = nc // C
            c = nc - n * C
            for k in range(m):
                for oh in range(Ho):
                    o = k * plane + (PT + oh) * R + PL
                    buf[o:o + Wo] = dy[n, c * m + k, oh]
            for h in range(H):
                qh = (h + ph) // sh
                for rw in range(min(sw, W)):
                    r = (h + ph - qh * sh) * sw + rw
                    base = (PT + qh) * R
                    for u0 in range(0, Uv, L):
                        v = z
                        for e in range(count[r]):
                            v = vfmab(v, vload(z, buf, base + toff[r, e] + u0), wf, c * m * T + tw[r, e])
                        vstore(acc, rw * Uv + u0, v)
                _interleave_row(z, acc, sw, W, dxf, ((n * C + c) * H + h) * W)


@njit(**SERIAL_JIT)
def _flat_taps(geom, shape, L, S):
    """Offsets and lane masks of the flat-plane kernels: output ``p = oh*W + ow`` (``ow < W``) of a plane
    ``(H, W)`` reads tap ``t = (i, j)`` at ``p + toff[t]``, valid in the lanes set in ``bits[s, t]`` of the
    vector ``s`` (outputs ``s*L .. s*L + L - 1``); ``bits[s, T]``: the lanes inside the ``Ho * W`` outputs.

    ``geom = (dh, dw, ph, pw, KH, KW)``, ``shape = (H, W, Ho)``; ``S`` vectors (the ones past the
    plane get no lane)."""
    dh, dw, ph, pw, KH, KW = geom
    H, W, Ho = shape
    T = KH * KW
    toff = np.empty(T, dtype=np.int64)
    for t in range(T):
        toff[t] = ((t // KW) * dh - ph) * W + (t % KW) * dw - pw
    bits = np.zeros((S, T + 1), dtype=np.int64)
    for p in range(min(S * L, Ho * W)):
        s = p // L
        bits[s, T] |= 1 << (p - s * L)
        for t in range(T):
            u = p // W + (t // KW) * dh - ph
            v = p % W + (t % KW) * dw - pw
            if u >= 0 and u < H and v >= 0 and v < W:
                bits[s, t] |= 1 << (p - s * L)
    return toff, bits


@njit(**SERIAL_JIT, inline="always")
def _flat_store(a, i, v, bits):
    """``a[i + l] = v[l]`` for the lanes set in ``bits``: a plain store when all are (a masked store costs
    more), nothing when none is."""
    if bits == (1 << lanes(v)) - 1:
        vstore(a, i, v)
    elif bits != 0:
        vstorez(a, i, v, bits)


@njit(**PARALLEL_JIT)
def depthwise_flat_forward(width, x, wt, b, geom, relu, out):
    """NCHW depthwise correlation at stride 1 with ``Wo == W``, the vector along the flattened plane.

    Output ``p = oh*W + ow`` reads tap ``(i, j)`` at ``p + (i*dh - ph)*W + j*dw - pw`` of the same
    flat plane: one masked load per tap and vector (:func:`_flat_taps`, the padding is the lanes
    left out, never read), no copy of the plane, whole vectors across its rows (a 7 x 7 plane is 4
    vectors, not 7 of 7 lanes each), masked stores at the plane's end. Groups as in
    :func:`depthwise_rows_forward` (``mi`` input and ``mo`` output planes: the forward pass and the
    stride-1 input gradient); register tiles of 4 vectors.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    x : (N, G*mi, H, W) array
        NCHW, C-contiguous.
    wt : (G*mo*mi, KH, KW) array
    b : (G*mo,) array
    geom : (int, int, int, int)
        ``(dh, dw, ph, pw)``: dilation and padding (``Wo == W``: ``2*pw == (KW-1)*dw``).
    relu : bool
        ``max(y, 0)`` (NaN kept).
    out : (N, G*mo, Ho, W) array
        NCHW, C-contiguous, fully overwritten.
    """
    N, CI, H, W = x.shape
    CO, Ho = out.shape[1], out.shape[2]
    KH, KW = wt.shape[1], wt.shape[2]
    T = KH * KW
    mi = wt.shape[0] // CO
    mo = CO * mi // CI
    wf = wt.reshape(wt.size)
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    z = vzero(width, wf)
    L = lanes(z)
    P = Ho * W
    S = (P + L - 1) // L
    toff, bits = _flat_taps(geom + (KH, KW), (H, W, Ho), L, S)
    one = vload(z, np.ones(L, dtype=wf.dtype), 0)
    G = CI // mi
    jobs = min(N * G, _JOBS)
    for job in prange(jobs):
        for gj in range(N * G * job // jobs, N * G * (job + 1) // jobs):
            n = gj // G
            g = gj - n * G
            for o in range(mo):
                f = g * mo + o
                bias = vfmab(z, one, b, f)
                for s in range(0, S - S % 4, 4):
                    a0 = a1 = a2 = a3 = bias
                    for ii in range(mi):
                        xb = ((n * CI + g * mi + ii) * H * W) + s * L
                        for t in range(T):
                            xo = xb + toff[t]
                            wi = (f * mi + ii) * T + t
                            a0 = vfmab(a0, vloadz(z, xf, xo, bits[s, t]), wf, wi)
                            a1 = vfmab(a1, vloadz(z, xf, xo + L, bits[s + 1, t]), wf, wi)
                            a2 = vfmab(a2, vloadz(z, xf, xo + 2 * L, bits[s + 2, t]), wf, wi)
                            a3 = vfmab(a3, vloadz(z, xf, xo + 3 * L, bits[s + 3, t]), wf, wi)
                    if relu:
                        a0, a1, a2, a3 = vmax(a0, z), vmax(a1, z), vmax(a2, z), vmax(a3, z)
                    ob = (n * CO + f) * P + s * L
                    _flat_store(of, ob, a0, bits[s, T])
                    _flat_store(of, ob + L, a1, bits[s + 1, T])
                    _flat_store(of, ob + 2 * L, a2, bits[s + 2, T])
                    _flat_store(of, ob + 3 * L, a3, bits[s + 3, T])
                for s in range(S - S % 4, S):  # the last 1-3 vectors one by one
                    a0 = bias
                    for ii in range(mi):
                        for t in range(T):
                            a0 = vfmab(a0, vloadz(z, xf, (n * CI + g * mi + ii) * H * W + s * L + toff[t], bits[s, t]),
                                       wf, (f * mi + ii) * T + t)
                    _flat_store(of, (n * CO + f) * P + s * L, vmax(a0, z) if relu else a0, bits[s, T])


@njit(**PARALLEL_JIT)
def depthwise_flat_weight_grad(width, x, dy, geom, KH, dwt):
    """``dwt[f, t] = sum_{n, p} dy[n, f, p] * x[n, f // m, p + toff[t]]`` over the flat planes (stride 1,
    ``Wo == W``; :func:`_flat_taps`: a tap's lanes in the padding are 0 and not read), one job per range
    of filters, every image summed in registers (three taps per pass over ``dy``: one load of ``dy``
    for three FMA chains) and one horizontal sum per tap: no partials, the same result for any
    thread count.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    x : (N, C, H, W) array
        NCHW, C-contiguous.
    dy : (N, C*m, Ho, W) array
        NCHW, C-contiguous.
    geom : (int, int, int, int)
        ``(dh, dw, ph, pw)``.
    KH : int
        Kernel height.
    dwt : (C*m, KH*KW) array
        Fully overwritten.
    """
    N, C, H, W = x.shape
    F, Ho = dy.shape[1], dy.shape[2]
    T = dwt.shape[1]
    m = F // C
    xf = x.reshape(x.size)
    df = dy.reshape(dy.size)
    z = vzero(width, xf)
    L = lanes(z)
    P = Ho * W
    S = (P + L - 1) // L
    toff, bits = _flat_taps(geom + (KH, T // KH), (H, W, Ho), L, S)
    jobs = min(F, _JOBS)
    for job in prange(jobs):
        lanesum = np.empty(3 * L, dtype=dwt.dtype)
        for f in range(F * job // jobs, F * (job + 1) // jobs):
            for t0 in range(0, T, 3):  # three taps per pass (the last ones again past T: the same sums)
                t1, t2 = min(t0 + 1, T - 1), min(t0 + 2, T - 1)
                a0 = a1 = a2 = z
                for n in range(N):
                    xo = (n * C + f // m) * H * W
                    do = (n * F + f) * P
                    for s in range(S):
                        d = vloadz(z, df, do + s * L, bits[s, T])
                        o = xo + s * L
                        a0 = vfma(a0, d, vloadz(z, xf, o + toff[t0], bits[s, t0]))
                        a1 = vfma(a1, d, vloadz(z, xf, o + toff[t1], bits[s, t1]))
                        a2 = vfma(a2, d, vloadz(z, xf, o + toff[t2], bits[s, t2]))
                vstore(lanesum, 0, a0)
                vstore(lanesum, L, a1)
                vstore(lanesum, 2 * L, a2)
                dwt[f, t2] = lanesum[2 * L:].sum()
                dwt[f, t1] = lanesum[L:2 * L].sum()
                dwt[f, t0] = lanesum[:L].sum()
