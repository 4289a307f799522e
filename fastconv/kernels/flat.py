"""The flat strategy: stride-1 convolutions as vector loops over whole padded planes.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

With the input zero-padded to width ``Wp`` (NCHW) and each plane read as one flat
vector, tap ``(c, i, j)`` of a stride-1 convolution is a shift by ``i * dh * Wp + j * dw``
(dilation ``(dh, dw)``, 1 when dense): output ``p = oh * Wp + ow`` of the flat plane
(``p < P = (Ho - 1) * Wp + Wo``) reads the input at ``p + offset``, whatever the image width
(the ``Wp - Wo`` columns past each row's end are computed and dropped). For the first layers
(C = 1 or 3), whose receptive fields are too short to fill the vector kernels' tiles, and
for grouped and dilated convolutions at stride 1 with few filters per group (a filter of
group ``g`` reads the planes ``g * C/groups`` onwards), all groups in one launch.

Both kernels keep their accumulators in vector registers (:mod:`fastconv.kernels.simd`),
the vector along the flat plane, in register tiles of ``Ft`` filters: 8 with 32 vector
registers (AVX-512), 4 with 16 (AVX2); with 32 registers, groups of at most 4 filters take
tiles of 4 filters and twice the vectors (taps) instead, which the 8-filter tiles would
half waste. The tiles are generated (:mod:`.flat_tiles`, by ``scripts/generate_kernels.py``) and chosen by the
width at compile time.

Kernels
-------
- :func:`flat_forward`: the forward pass (and, on dy padded by ``d * (K - 1) - p`` with the
  rotated kernel, the input gradient of a grouped or dilated convolution). It reads the
  input unpadded: a job is one image and one group, and first copies the group's planes
  zero-padded into a buffer the caches hold (:func:`_pad_planes`; a separate padded copy of
  the whole batch cost grouped32 a third of its time). A tile holds ``Ft`` filters x 3
  vectors of consecutive plane positions (4 x 6) in registers over every tap: per tap 3
  vector loads of the shifted plane and ``3 Ft`` FMAs with the weights broadcast
  (:func:`fastconv.kernels.simd.vfmab`; the bias is the accumulators' start). The tiles
  go into a small buffer laid out like the padded plane, whose rows are written out with
  the gap columns dropped and the ReLU floor applied (masked loads and stores). The last
  1-5 vectors of a plane go one at a time with masked loads
  (:func:`fastconv.kernels.simd.vloadz`): nothing past the plane is read.
- :func:`flat_weight_grad`: per-thread partial weight gradients, the mirror of the
  forward pass, on the zero-padded input: with ``dy`` copied at the padded pitch (zeros in
  the gaps), the gradient of filter ``f`` and tap ``t`` is the dot product of that flat plane
  with the input plane shifted by the tap. A tile holds ``Ft`` filters x 3 taps (4 x 6) as
  vectors over a block of images (per vector position 3 loads of the shifted planes, ``Ft``
  of ``dy``, ``3 Ft`` FMAs, the plane's last vector masked); its sums go into a per-job
  vector buffer, whose vectors are summed across their lanes at the end by :func:`_lane_sums`
  (a fixed pairwise tree of vector shuffles and adds: the serial build a forked child runs
  gives the parallel build's bits). The gaps
  multiply real inputs by zero: the input must be finite (the plan checks; with an
  infinity, ``0 * inf`` would add a NaN).
- :func:`flat_bias_grad`: the bias gradient, each ``(n, f)`` plane summed as one run.

Filter counts that are not a multiple of the tile repeat the group's last filter in the
last tile (computed, not written); tap counts not a multiple of 3 (6) the last tap likewise.
Register tiles (:mod:`.flat_tiles`: 8 x 3, 4 x 6 and 4 x 3, forward and weight gradient, and the masked
tails), reached through :func:`_fwd_tile`, :func:`_fwd_half`, :func:`_fwd_tail`, :func:`_fwd_half_tail`,
:func:`_wg_tile`, :func:`_wg_half`. Helpers: :func:`_pad_planes`, :func:`_tap_offsets`, :func:`_lane_sums`.
See ``benchmarks/NOTES.md`` ("Flat kernels with register accumulators").
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .flat_tiles import _fwd_4x1_masked, _fwd_4x3, _fwd_4x6, _fwd_8x1_masked, _fwd_8x3, _wg_4x3, _wg_4x6, _wg_8x3
from .simd import lanes, vadd, vevens, vload, vloadz, vmax, vodds, vsplat, vstore, vstorez, vzero

#: Plane positions (vectors) per forward tile and taps per weight-gradient tile.
_VECTORS = 3
_TAPS = 3

#: Elements of ``dy`` per weight-gradient job buffer (a block of images of one filter tile), about 32 KiB of float32.
_DY_BLOCK = 8192


def _wide(z):
    return z.count * z.dtype.bitwidth >= 512


def _filter_tile(z):
    """Filters per register tile for vectors like ``z`` (a compile-time constant): 8 on 512-bit, else 4."""


def _has_half(z):
    """Whether the width has tiles of half as many filters (a compile-time constant): 512-bit only."""


def _half_vectors(z):
    """Vectors of plane positions per :func:`_fwd_half` tile (a compile-time constant): 6 on 512-bit, else 3."""


def _half_taps(z):
    """Taps per :func:`_wg_half` tile (a compile-time constant): 6 on 512-bit, else 3."""


def _fwd_tile(z, xf, xb, toff, wgt, dst):
    """The forward tile of the width: ``Ft`` filters x 3 vectors (:func:`_fwd_8x3`, :func:`_fwd_4x3`)."""


def _fwd_half(z, xf, xb, toff, wgt, dst):
    """The forward tile for groups of at most ``Ft / 2`` filters: 4 filters x 6 vectors on 512-bit (the register
    count of 8 x 3), the 4 x 3 tile on 256-bit."""


def _fwd_tail(z, xf, xb, toff, wgt, bits, dst):
    """The forward tile of one masked vector: ``Ft`` filters x 1."""


def _fwd_half_tail(z, xf, xb, toff, wgt, bits, dst):
    """The masked vector of :func:`_fwd_half`: 4 filters x 1."""


def _wg_tile(z, xf, xgeom, dyb, dgeom, toff, vs, vo):
    """The weight-gradient tile of the width: ``Ft`` filters x 3 taps (:func:`_wg_8x3`, :func:`_wg_4x3`)."""


def _wg_half(z, xf, xgeom, dyb, dgeom, toff, vs, vo):
    """The weight-gradient tile for groups of at most ``Ft / 2`` filters: 4 filters x 6 taps on 512-bit, the
    4 x 3 tile on 256-bit."""


def _constant(fn, value):
    """Overload ``fn(z)`` as the compile-time constant ``value(z)``."""

    @overload(fn, inline="always")
    def impl(z):
        v = value(z)
        return lambda z: v


def _by_width(fn, wide, narrow):
    """Overload ``fn`` (a forward tile, a tail or a weight-gradient tile, by its arguments) as a call of the tile
    ``wide`` on 512-bit vectors, ``narrow`` otherwise."""

    def pick(z):
        return wide if _wide(z) else narrow

    if fn in (_fwd_tile, _fwd_half):
        @overload(fn, inline="always")
        def impl(z, xf, xb, toff, wgt, dst):
            tile = pick(z)
            return lambda z, xf, xb, toff, wgt, dst: tile(z, xf, xb, toff, wgt, dst)
    elif fn in (_fwd_tail, _fwd_half_tail):
        @overload(fn, inline="always")
        def impl(z, xf, xb, toff, wgt, bits, dst):
            tile = pick(z)
            return lambda z, xf, xb, toff, wgt, bits, dst: tile(z, xf, xb, toff, wgt, bits, dst)
    else:
        @overload(fn, inline="always")
        def impl(z, xf, xgeom, dyb, dgeom, toff, vs, vo):
            tile = pick(z)
            return lambda z, xf, xgeom, dyb, dgeom, toff, vs, vo: tile(z, xf, xgeom, dyb, dgeom, toff, vs, vo)


_constant(_filter_tile, lambda z: 8 if _wide(z) else 4)
_constant(_has_half, _wide)
_constant(_half_vectors, lambda z: 2 * _VECTORS if _wide(z) else _VECTORS)
_constant(_half_taps, lambda z: 2 * _TAPS if _wide(z) else _TAPS)


@njit(**SERIAL_JIT)
def _tap_offsets(Cg, KH, KW, HW, pitch, count):
    """``toff[t]``: tap ``t = (c * KH + i) * KW + j`` of a group's planes as an offset from its first
    plane's start, ``c * HW + i * pitch[0] + j * pitch[1]``; ``count >= Cg * KH * KW`` entries, the
    ones past the last tap repeating it."""
    T = Cg * KH * KW
    toff = np.empty(count, dtype=np.int64)
    for t in range(count):
        r = min(t, T - 1)
        c = r // (KH * KW)
        i = (r - c * KH * KW) // KW
        toff[t] = c * HW + i * pitch[0] + (r - c * KH * KW - i * KW) * pitch[1]
    return toff


@njit(**SERIAL_JIT)
def _lane_sums(z, vs, V):
    """``vs[i] = sum(vs[i*L:(i+1)*L])`` for ``i < V``: each of the first ``V`` vectors summed across its lanes.

    ``log2(L)`` rounds of a fixed pairwise tree: round by round, vector ``j`` becomes the sums of the adjacent
    lane pairs of vectors ``2j`` and ``2j + 1`` (``vevens + vodds``), so after the last round vector ``j`` holds the
    sums of vectors ``jL`` to ``jL + L - 1`` in order. Vector shuffles and adds in one order whatever the code
    around them (a loop of scalar adds under fast-math is vectorised differently in serial and parallel builds).
    ``vs`` holds at least ``V + 1`` vectors (the last is read, never used)."""
    L = lanes(z)
    n = V
    w = 1
    while w < L:
        n = (n + 1) // 2
        for j in range(n):
            a = vload(z, vs, 2 * j * L)
            b = vload(z, vs, (2 * j + 1) * L)
            vstore(vs, j * L, vadd(vevens(a, b), vodds(a, b)))
        w *= 2


@njit(**SERIAL_JIT, inline="always")
def _pad_planes(x, src, pad, pitch, buf, bo):
    """``buf[bo + c*Hp*Wp + (h + ph)*Wp + pw + w] = x[n, c0 + c, h, w]`` for ``c < cnt`` (``src = (n, c0, cnt)``,
    ``pitch = (Hp, Wp)``): the interior of ``cnt`` zero-padded planes; the rest of the region is left as it was
    (zeros)."""
    n, c0, cnt = src
    ph, pw = pad
    Hp, Wp = pitch
    H, W = x.shape[2], x.shape[3]
    for c in range(cnt):
        for h in range(H):
            o = bo + (c * Hp + h + ph) * Wp + pw
            buf[o:o + W] = x[n, c0 + c, h]


@njit(**PARALLEL_JIT)
def flat_forward(width, x, w, b, geom, groups, relu, out):
    """Stride-1 cross-correlation (grouped, dilated or dense), vectorised along whole images.

    ``out[n, f] = b[f] + sum_{c, i, j} w[f, c, i, j] * xq[n, g*Cg + c, oh + i*dh, ow + j*dw]``
    with ``g = f // (F / groups)``, ``Cg = C / groups``. With each plane read as one flat
    vector, tap ``(c, i, j)`` adds ``w[f, c, i, j] * plane[p + i*dh*Wp + j*dw]`` to output
    position ``p = oh*Wp + ow`` laid out like the padded image (the ``Wp - Wo`` columns past
    each row's end are computed and dropped). Register tiles of ``Ft`` filters x 3 vectors
    of positions (see the module); a job is one image and group, its planes padded in a buffer.

    See ``benchmarks/NOTES.md``.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
        The register width (512 or 256 bits): the lanes and the filter tile.
    x : (N, C, H, W) array
        Input, NCHW, C-contiguous (each job copies its planes zero-padded into a buffer the caches hold).
    w : (F, C / groups, KH, KW) array
        Filters (C-contiguous).
    b : (F,) array
        Bias.
    geom : (int, int, int, int)
        ``(ph, pw, dh, dw)``: the zero padding (``Hp = H + 2 ph``, ``Wp = W + 2 pw``) and the dilation.
    groups : int
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output as it is written.
    out : (N, F, Ho, Wo) array
        Output, fully overwritten; ``Ho = Hp - dh*(KH - 1)``, ``Wo = Wp - dw*(KW - 1)``.
    """
    ph, pw, dh, dw = geom
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    F, Cg, KH, KW = w.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    HW = Hp * Wp
    P = (Ho - 1) * Wp + Wo
    T = Cg * KH * KW
    Fg = F // groups
    wf = w.reshape(F, T)
    z = vzero(width, wf)
    L = lanes(z)
    Ft = _filter_tile(z)
    half = _has_half(z) and Fg <= Ft // 2  # few filters per group: the tile of half as many filters and twice the vectors
    if half:
        Ft = Ft // 2
    V = (_half_vectors(z) if half else _VECTORS) * L
    full = P - P % V  # positions in whole tiles; the rest one masked vector at a time
    Lb = (P + L - 1) // L * L
    tiles = (Fg + Ft - 1) // Ft
    toff = _tap_offsets(Cg, KH, KW, HW, (dh * Wp, dw), T)
    # Each tile's weights tap by tap (wp[u, t, k]) and its bias; a short last tile repeats the group's last filter.
    wp = np.empty((groups * tiles, T, Ft), dtype=out.dtype)
    bp = np.empty((groups * tiles, Ft), dtype=out.dtype)
    for u in range(groups * tiles):
        g = u // tiles
        for k in range(Ft):
            f = g * Fg + min((u - g * tiles) * Ft + k, Fg - 1)
            bp[u, k] = b[f]
            for t in range(T):
                wp[u, t, k] = wf[f, t]
    wpf = wp.reshape(wp.size)
    of = out.reshape(out.size)
    # The ReLU as a floor: -inf (no change) or 0, one vmax either way (NaN kept).
    fl = vsplat(z, np.full(1, 0 if relu else -np.inf, dtype=out.dtype)[0])
    for job in prange(N * groups):
        n = job // groups
        g = job - n * groups
        xf = np.zeros(Cg * HW, dtype=out.dtype)  # the group's planes, zero-padded
        _pad_planes(x, (n, g * Cg, Cg), (ph, pw), (Hp, Wp), xf, 0)
        buf = np.empty(Ft * Lb, dtype=out.dtype)
        for u in range(g * tiles, (g + 1) * tiles):
            f0 = g * Fg + (u - g * tiles) * Ft
            wo = u * T * Ft
            bias = bp[u]
            if half:
                for s in range(0, full, V):
                    _fwd_half(z, xf, s, toff, (wpf, wo, bias), (buf, s, Lb))
                for s in range(full, P, L):
                    _fwd_half_tail(z, xf, s, toff, (wpf, wo, bias), (1 << min(L, P - s)) - 1, (buf, s, Lb))
            else:
                for s in range(0, full, V):
                    _fwd_tile(z, xf, s, toff, (wpf, wo, bias), (buf, s, Lb))
                for s in range(full, P, L):
                    _fwd_tail(z, xf, s, toff, (wpf, wo, bias), (1 << min(L, P - s)) - 1, (buf, s, Lb))
            # The rows out of the buffer, the gap columns dropped: one masked load and store per vector of a row.
            for k in range(min(Ft, g * Fg + Fg - f0)):
                ob = (n * F + f0 + k) * Ho * Wo
                for oh in range(Ho):
                    for c0 in range(0, Wo, L):
                        cnt = min(L, Wo - c0)
                        bits = (1 << cnt) - 1
                        v = vmax(vloadz(z, buf, k * Lb + oh * Wp + c0, bits), fl)
                        if cnt == L:
                            vstore(of, ob + oh * Wo + c0, v)
                        else:
                            vstorez(of, ob + oh * Wo + c0, v, bits)


@njit(**PARALLEL_JIT)
def flat_weight_grad(width, xq, dy, dilation, groups, partial):
    """Per-thread partial weight gradients at stride 1 (grouped, dilated or dense).

    The mirror of :func:`flat_forward`: with ``dy``'s rows copied at the padded input's row
    pitch ``Wp`` (zeros in the ``Wp - Wo`` gaps), the gradient of tap ``(c, i, j)`` of filter
    ``f`` (group ``g``) is one dot product of that flat ``dy`` plane with the input plane
    ``g*Cg + c`` shifted by ``i*dh*Wp + j*dw``. Register tiles of ``Ft`` filters x 3 taps
    (see the module) over blocks of images; each job sums its chunk of the batch in a fixed
    order. The gaps multiply real inputs by zero, so ``xq`` must be finite (the plan checks;
    with an infinity, ``0 * inf`` would add a NaN).

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
        The register width (512 or 256 bits).
    xq : (N, C, Hp, Wp) array
        Zero-padded input, NCHW.
    dy : (N, F, Ho, Wo) array
    dilation : (int, int)
    groups : int
    partial : (T, F, C / groups, KH, KW) array
        Fully overwritten: ``partial[t]`` sums the ``t``-th contiguous chunk of the batch (the caller sums ``t``).
    """
    N, C, Hp, Wp = xq.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    chunks, _, Cg, KH, KW = partial.shape
    HW = Hp * Wp
    P = (Ho - 1) * Wp + Wo
    R = Cg * KH * KW
    Fg = F // groups
    xf = xq.reshape(xq.size)
    z = vzero(width, xf)
    L = lanes(z)
    Ft = _filter_tile(z)
    half = _has_half(z) and Fg <= Ft // 2  # few filters per group: the tile of half as many filters and twice the taps
    if half:
        Ft = Ft // 2
    Tt = _half_taps(z) if half else _TAPS
    Rp = (R + Tt - 1) // Tt * Tt
    S = (P + L - 1) // L
    Pb = S * L
    bits = (1 << (P - (S - 1) * L)) - 1  # the last vector's lanes inside the plane
    tiles = (Fg + Ft - 1) // Ft
    NB = max(1, _DY_BLOCK // (Ft * Pb))
    toff = _tap_offsets(Cg, KH, KW, HW, (dilation[0] * Wp, dilation[1]), Rp)
    for ch in prange(chunks):
        part = partial[ch].reshape(F, R)
        n0 = (N * ch) // chunks
        n1 = (N * (ch + 1)) // chunks
        dyb = np.zeros(NB * Ft * Pb, dtype=dy.dtype)  # the gaps and the tail stay 0
        vs = np.empty((Ft * Rp + 1) * L, dtype=dy.dtype)  # one more vector: :func:`_lane_sums` reads it
        for u in range(groups * tiles):
            g = u // tiles
            f0 = g * Fg + (u - g * tiles) * Ft
            nf = min(Ft, g * Fg + Fg - f0)  # a short last tile: the slots past nf hold stale finite values
            vs[:] = 0
            for m0 in range(n0, n1, NB):
                nb = min(NB, n1 - m0)
                for m in range(nb):
                    for k in range(nf):
                        src = dy[m0 + m, f0 + k]
                        o = (m * Ft + k) * Pb
                        for oh in range(Ho):
                            dyb[o + oh * Wp:o + oh * Wp + Wo] = src[oh]
                xgeom = ((m0 * C + g * Cg) * HW, C * HW, nb)
                for r0 in range(0, Rp, Tt):
                    if half:
                        _wg_half(z, xf, xgeom, dyb, (Pb, S, bits, Rp), toff[r0:r0 + Tt], vs, r0 * L)
                    else:
                        _wg_tile(z, xf, xgeom, dyb, (Pb, S, bits, Rp), toff[r0:r0 + Tt], vs, r0 * L)
            _lane_sums(z, vs, Ft * Rp)
            for k in range(nf):
                part[f0 + k] = vs[k * Rp:k * Rp + R]


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


_by_width(_fwd_tile, _fwd_8x3, _fwd_4x3)
_by_width(_fwd_half, _fwd_4x6, _fwd_4x3)
_by_width(_fwd_tail, _fwd_8x1_masked, _fwd_4x1_masked)
_by_width(_fwd_half_tail, _fwd_4x1_masked, _fwd_4x1_masked)
_by_width(_wg_tile, _wg_8x3, _wg_4x3)
_by_width(_wg_half, _wg_4x6, _wg_4x3)
