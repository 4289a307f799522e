"""The stride phases of a strided convolution's input gradient, all in one launch on the vector tiles.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run (strategy ``phases_vector``).

The input gradient of a convolution at stride ``(sh, sw)`` (and so the forward pass of a
transposed convolution) splits by the residues ``(rh, rw)`` of dx's padded coordinates
``(h + ph, w + pw)`` modulo the stride: the phase ``dx[rh + sh*qh - ph, rw + sw*qw - pw]`` is
a stride-1 correlation of ``dy`` with the sub-kernel of the taps ``(rh + sh*a, rw + sw*b)``,
rotated by 180 degrees. Here every phase runs in one parallel launch on the register tiles of
:mod:`fastconv.kernels.vector` (``dy``'s channels are the reduction, dx's channels the
vector axis), and each job writes its rows of dx straight from its row buffer: no phase
arrays, no scatter pass, no zero fill (except where the stride passes the kernel).

Layouts
-------
Input: ``dy`` zero-padded NHWC ``dyp[n, qh + Ph, qw + Pw, f]`` (``pack.pack_nhwc_padded``), padded only as far
as some tap of some phase row (column) that lands in dx reads: the padding on each side can differ.
A job owns up to ``rows`` consecutive rows ``qh`` of one row phase ``rh`` of one image. Its
output pixels run flat over ``o = qh * Wp + qw`` (``Wp`` the padded width): consecutive
pixels read inputs ``F`` elements apart across row ends too, so the 7-pixel tiles run over
whole blocks of rows (the few pixels of the padding columns are computed and dropped)
instead of rounding each short row up to whole tiles. The row buffer holds the rows in
dx's own column order, ``obuf[(k * Wp * sw + w + pw) * Cp + c]``: pixel ``qw`` of the column
phase ``rw`` is slot ``rw + sw * qw`` (the tiles' pixel step is ``sw`` slots), so the column
phases interleave in place.

Weights: ``wv`` rows ``off(rh, rw) + (blk * th + i) * tw * F + j * F + f``, lanes ``l``:
``w[f, blk*L + l, rh + sh*(th-1-i), rw + sw*(tw-1-j)]`` (zero for ``blk*L + l >= C``), the phases
in order ``rh * sw + rw``, each ``blocks * th * tw * F`` rows (:func:`_phase_offset`).

Kernels
-------
- :func:`phases_weights`: the rotated sub-kernels of every phase in the tiles' layout, one pass.
- :func:`phases_input_grad`: dx (plus a bias), every phase in one launch.

Inline helpers: :func:`_taps` (the taps of a residue), :func:`_phase_offset`, :func:`_phase_run`
(the tiles over one flat run of pixels), :func:`_phase_store` (the row buffer to dx, NCHW).
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import lanes, vzero
from .vector import _full_tile, _tile_pixels
from .vector_tiles import _tile_1


@njit(**SERIAL_JIT, inline="always")
def _taps(k, r, s):
    """The taps ``i < k`` with ``i % s == r``."""
    return max(0, (k - r + s - 1) // s)


@njit(**SERIAL_JIT, inline="always")
def _phase_offset(kernel, stride, rh, rw):
    """``sum th * tw`` over the phases before ``(rh, rw)`` (in order ``rh * sw + rw``)."""
    KH, KW = kernel
    sh, sw = stride
    total = 0
    for p in range(rh * sw + rw):
        total += _taps(KH, p // sw, sh) * _taps(KW, p % sw, sw)
    return total


@njit(**PARALLEL_JIT)
def phases_weights(w, stride, wv):
    """The rotated sub-kernels of every stride phase, in blocks of ``L`` of dx's channels.

    Parameters
    ----------
    w : (F, C, KH, KW) array
        The convolution's weights (``F`` is dy's channels, ``C`` dx's).
    stride : (int, int)
    wv : (blocks * KH * KW * F, L) array
        Fully overwritten (see the module for the layout); ``blocks = ceil(C / L)``.
    """
    sh, sw = stride
    F, C, KH, KW = w.shape
    L = wv.shape[1]
    blocks = (C + L - 1) // L
    for job in prange(sh * sw * blocks):
        p = job // blocks
        blk = job - p * blocks
        rh = p // sw
        rw = p - rh * sw
        th = _taps(KH, rh, sh)
        tw = _taps(KW, rw, sw)
        base = _phase_offset((KH, KW), stride, rh, rw) * blocks * F + blk * th * tw * F
        for i in range(th):
            for j in range(tw):
                for f in range(F):
                    row = wv[base + (i * tw + j) * F + f]
                    for lane in range(L):
                        c = blk * L + lane
                        row[lane] = w[f, c, rh + sh * (th - 1 - i), rw + sw * (tw - 1 - j)] if c < C else 0


@njit(**SERIAL_JIT, inline="always")
def _phase_run(z, xf, wf, at, shape, run, obuf):
    """The tiles of one column phase over the flat pixels ``o0 <= o < o1`` of a job.

    ``at = (xo, wo, oo)``: the input of pixel 0, the phase's weights, the buffer slot of pixel
    ``obase`` (``run = (o0, o1, obase)``); ``shape = (F, Wp, th, tw, blocks, sw, Cp)``.
    """
    xo, wo, oo = at
    o0, o1, obase = run
    F, Wp, th, tw, blocks, sw, Cp = shape
    L = lanes(z)
    P = _tile_pixels(z)
    bstep = th * tw * F * L
    pairs = (F, Wp * F, 0, 1, tw * F, th, bstep, sw * Cp, 2)  # one contiguous run of taps per kernel row
    last = (F, Wp * F, 0, 1, tw * F, th, bstep, sw * Cp, 2 - blocks % 2)
    count = o1 - o0
    for g in range((blocks + 1) // 2):
        steps = pairs if 2 * g + 2 <= blocks else last
        wg = wo + 2 * g * bstep
        og = oo + 2 * g * L
        if count >= P:
            for t in range((count + P - 1) // P):
                o = o0 + min(t * P, count - P)  # the last tile overlaps the one before it
                _full_tile(z, xf, xo + o * F, wf, wg, steps, obuf, og + (o - obase) * sw * Cp)
        else:
            for o in range(o0, o1):
                _tile_1(z, xf, xo + o * F, wf, wg, steps, obuf, og + (o - obase) * sw * Cp)


@njit(**SERIAL_JIT, inline="always")
def _phase_store(obuf, b, rows, layout, dx):
    """``dx[n, c, h0 + sh*k, w] = b[c] + obuf[(k * slots + w + pw) * Cp + c]``, ``k < count``;
    ``rows = (n, h0, sh, count)``, ``layout = (slots, pw, Cp)``."""
    n, h0, sh, count = rows
    slots, pw, Cp = layout
    C, W = dx.shape[1], dx.shape[3]
    for k in range(count):
        base = (k * slots + pw) * Cp
        for c in range(C):
            drow = dx[n, c, h0 + sh * k]
            bias = b[c]
            for q in range(W):
                drow[q] = obuf[base + q * Cp + c] + bias


@njit(**PARALLEL_JIT)
def phases_input_grad(width, dyp, wv, b, geometry, rows, dx):
    """``dx = b + conv2d_backward_input(dy, w)`` of a strided convolution, every phase in one launch.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    dyp : (N, Hp, Wp, F) array
        ``dy`` zero-padded NHWC, ``Ph`` rows on top and ``Pw`` columns on the left: ``Ph >= th - 1 - qh_lo`` and
        ``Hp - Ph - Ho >= qh_hi - Ho`` for every row phase with taps (its ``th`` taps, its rows ``qh_lo <= qh <
        qh_hi`` that land in dx), and so for the columns.
    wv : (blocks * KH * KW * F, L) array
        :func:`phases_weights` of ``w``.
    b : (C,) array
        Added to dx (zeros for a plain input gradient).
    geometry : (KH, KW, sh, sw, ph, pw, Ph, Pw)
        The kernel, stride and padding of the convolution; ``dyp``'s top and left padding.
    rows : int
        Phase rows per job.
    dx : (N, C, H, W) array
        Fully overwritten.
    """
    KH, KW, sh, sw, ph, pw, Ph, Pw = geometry
    N, Hp, Wp, F = dyp.shape
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    xf = dyp.reshape(dyp.size)
    wf = wv.reshape(wv.size)
    z = vzero(width, wf)
    L = lanes(z)
    blocks = (C + L - 1) // L
    slots = Wp * sw
    chunks = ((H + sh - 1) // sh + rows - 1) // rows
    for job in prange(N * sh * chunks):
        n = job // (sh * chunks)
        rh = job // chunks - n * sh
        qa = max(0, (ph - rh + sh - 1) // sh) + (job % chunks) * rows
        qb = min((H + ph - rh + sh - 1) // sh, qa + rows)
        if qa >= qb:
            continue
        th = _taps(KH, rh, sh)
        size = (qb - qa) * slots * blocks * L
        obuf = np.zeros(size, dtype=dx.dtype) if th == 0 or KW < sw else np.empty(size, dtype=dx.dtype)
        for rw in range(min(sw, KW) if th > 0 else 0):
            tw = _taps(KW, rw, sw)
            lo = max(0, (pw - rw + sw - 1) // sw)
            hi = (W + pw - rw + sw - 1) // sw
            at = (((n * Hp + Ph + 1 - th) * Wp + Pw + 1 - tw) * F,
                  _phase_offset((KH, KW), (sh, sw), rh, rw) * blocks * F * L, rw * blocks * L)
            _phase_run(z, xf, wf, at, (F, Wp, th, tw, blocks, sw, blocks * L),
                       (qa * Wp + lo, (qb - 1) * Wp + hi, qa * Wp), obuf)
        _phase_store(obuf, b, (n, rh + sh * qa - ph, sh, qb - qa), (slots, pw, blocks * L), dx)
