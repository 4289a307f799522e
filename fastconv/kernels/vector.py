"""The vector strategy: outer-product register tiles with explicit vector accumulators.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

Where the tiled strategy computes dot products (and pays a horizontal reduction per
output), here a tile of ``P`` output pixels x 2 blocks of ``L`` filters keeps ``2P``
vector accumulators (:mod:`fastconv.kernels.simd`) in registers for the whole receptive
field: per input element, 2 vector loads of weights and ``P`` broadcasts of inputs feed
``2P`` fused multiply-adds, with no reduction at the end (oneDNN's direct-convolution
scheme). ``P = 7`` with 32 vector registers (AVX-512), 6 with 16 (AVX2, which also needs
a register for each broadcast); the tiles are generated (:mod:`.vector_tiles`).

Layouts
-------
Input: zero-padded NHWC ``xp[n, h, w, c]``. For one kernel row ``i`` the taps ``(j, c)``
of an output pixel are ``KW * C`` contiguous elements. Weights: ``wv[blk, i, j*C + c, l]``
= ``w[blk*L + l, c, i, j]``, with the filters zero-padded to whole blocks. Blocks go in
pairs (2 vectors of filters per tile); an odd last block gets a tile of 1 block.
Each job computes one output row ``(n, oh)`` into a small NHWC buffer, then adds the bias
(and applies a ReLU when asked) while transposing it to the NCHW output.

Kernels
-------
- :func:`vector_forward`: the forward pass (and, through the plan, the input gradient,
  which is a forward pass of ``dy`` with the rotated kernel).
- :func:`vector_weight_grad`: the weight gradient, the same tile with the roles swapped:
  7 consecutive entries ``j*C + c`` of a kernel row x 2 blocks of filters, accumulated
  over a block of output rows of ``dy`` transposed to ``(Wo, F)`` (:func:`_transpose_rows`).

Inline helpers: :func:`_full_tile` and :func:`_full_dw_tile` (the register tiles of the
width), :func:`_tile_pixels`, :func:`_transpose_rows`.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import lanes, vzero
from .vector_tiles import _dw_tile_1, _dw_tile_6, _dw_tile_7, _tile_1, _tile_6, _tile_7

#: Output rows per block of the weight gradient: each tile's accumulators are loaded from
#: and stored to the partial once per block.
_ROW_BLOCK = 16


def _tile_pixels(z):
    """Pixels of the register tile for vectors like ``z`` (a compile-time constant)."""


def _full_tile(z, xf, xo, wf, wo, steps, obuf, oo):
    """The register tile for vectors like ``z``: 7 pixels in 512-bit registers, else 6; x ``steps[-1]``
    (2, or 1 for the last block of an odd number) blocks of filters."""


def _full_dw_tile(z, xf, xbase, dyt, steps, part, po):
    """The weight gradient's register tile: 7 entries (512-bit) or 6, x ``steps[-1]`` blocks."""


def _wide(z):
    return z.count * z.dtype.bitwidth >= 512


@overload(_tile_pixels, inline="always")
def _tile_pixels_impl(z):
    pixels = 7 if _wide(z) else 6
    return lambda z: pixels


@overload(_full_tile, inline="always")
def _full_tile_impl(z, xf, xo, wf, wo, steps, obuf, oo):
    tile = _tile_7 if _wide(z) else _tile_6

    def impl(z, xf, xo, wf, wo, steps, obuf, oo):
        tile(z, xf, xo, wf, wo, steps, obuf, oo)

    return impl


@overload(_full_dw_tile, inline="always")
def _full_dw_tile_impl(z, xf, xbase, dyt, steps, part, po):
    tile = _dw_tile_7 if _wide(z) else _dw_tile_6

    def impl(z, xf, xbase, dyt, steps, part, po):
        tile(z, xf, xbase, dyt, steps, part, po)

    return impl


@njit(**PARALLEL_JIT)
def vector_forward(width, xp, wv, b, stride, relu, out):
    """Direct cross-correlation with vector accumulators: ``out = b + sum xp[...] * w[...]``.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
        The register width (512 or 256 bits): chooses the lanes ``L`` and the tile.
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wv : (blocks, KH, KW * C, L) array
        Weights in blocks of ``L`` filters (see the module).
    b : (F,) array
        Bias.
    stride : (int, int)
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    sh, sw = stride
    N, Hp, Wp, C = xp.shape
    blocks, KH, RW, _ = wv.shape
    F, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    xf = xp.reshape(N * Hp * Wp * C)
    wf = wv.reshape(wv.size)
    z = vzero(width, wf)
    L = lanes(z)
    Fp = blocks * L
    P = _tile_pixels(z)
    tiles = (Wo + P - 1) // P if Wo >= P else 0
    narrow = 0 if Wo >= P else Wo
    pairs = (sw * C, Wp * C, RW, KH, KH * RW * L, Fp, 2)
    last = (sw * C, Wp * C, RW, KH, KH * RW * L, Fp, 2 - blocks % 2)  # an odd last block: 1
    zero = np.zeros(1, dtype=out.dtype)[0]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        obuf = np.empty(Wo * Fp, dtype=out.dtype)
        xrow = (n * Hp + oh * sh) * Wp * C
        for g in range((blocks + 1) // 2):
            wo = 2 * g * KH * RW * L
            steps = pairs if 2 * g + 2 <= blocks else last
            for t in range(tiles):
                ow = min(t * P, Wo - P)  # the last tile overlaps the one before it
                _full_tile(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * Fp + 2 * g * L)
            for ow in range(narrow):
                _tile_1(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * Fp + 2 * g * L)
        for f in range(F):
            orow = out[n, f, oh]
            bias = b[f]
            for q in range(Wo):
                v = obuf[q * Fp + f] + bias
                orow[q] = zero if relu and v <= zero else v


@njit(**SERIAL_JIT, inline="always")
def _transpose_rows(dy, r0, nb, Fp, dyt):
    """``dyt[k, ow, f] = dy[n, f, oh, ow]`` for the output rows ``r0 + k = n * Ho + oh``, ``k < nb``."""
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    for k in range(nb):
        n = (r0 + k) // Ho
        oh = r0 + k - n * Ho
        base = k * Wo * Fp
        for f in range(F):
            src = dy[n, f, oh]
            for ow in range(Wo):
                dyt[base + ow * Fp + f] = src[ow]


@njit(**PARALLEL_JIT)
def vector_weight_grad(width, xp, dy, KH, stride, split, part):
    """Partial weight gradients with vector accumulators: the correlation of ``xp`` with ``dy``.

    ``part[t, blk, i, j*C + c, l] = sum dy[n, blk*L + l, oh, ow] * xp[n, oh*sh + i, ow*sw + j, c]``
    over the ``t``-th contiguous chunk of the ``N * Ho`` output rows. Jobs are ``chunks x
    group_jobs``: each owns a chunk of rows and a range of filter groups (2 blocks of
    ``L``, or the odd last one), so nothing is written by two threads; the caller sums ``part`` over ``t`` in
    order. A tile holds 7 entries ``j*C + c`` x 2 blocks (6 x 2 with 256-bit registers)
    across a block of rows; the entries left over by the tile go one at a time.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    dy : (N, F, Ho, Wo) array
        Output gradient, NCHW.
    KH : int
        Kernel height.
    stride : (int, int)
    split : (int, int)
        ``(chunks, group_jobs)``.
    part : (chunks, blocks, KH, KW * C, L) array
        Fully overwritten; ``blocks * L >= F`` (padded filters get zeros).
    """
    sh, sw = stride
    chunks, gjobs = split
    N, Hp, Wp, C = xp.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    blocks, RW = part.shape[1], part.shape[3]
    xf = xp.reshape(xp.size)
    z = vzero(width, xf)
    L = lanes(z)
    Fp = blocks * L
    T = _tile_pixels(z)
    full = RW - RW % T
    groups = (blocks + 1) // 2  # pairs of blocks; an odd last block is a group of its own
    bstep = KH * RW * L
    rows = N * Ho
    for job in prange(chunks * gjobs):
        ch = job // gjobs
        gj = job - ch * gjobs
        g_lo = groups * gj // gjobs
        g_hi = groups * (gj + 1) // gjobs
        pf = part[ch].reshape(blocks * bstep)
        pf[2 * g_lo * bstep:min(2 * g_hi, blocks) * bstep] = 0
        dyt = np.zeros(_ROW_BLOCK * Wo * Fp, dtype=xp.dtype)  # the padded filters stay 0
        xbase = np.empty(_ROW_BLOCK, dtype=np.int64)
        r_end = rows * (ch + 1) // chunks
        for r0 in range(rows * ch // chunks, r_end, _ROW_BLOCK):
            nb = min(_ROW_BLOCK, r_end - r0)
            _transpose_rows(dy, r0, nb, Fp, dyt)
            for i in range(KH):
                for k in range(nb):
                    n = (r0 + k) // Ho
                    xbase[k] = ((n * Hp + (r0 + k - n * Ho) * sh + i) * Wp) * C
                for g in range(g_lo, g_hi):
                    po = (2 * g * KH + i) * RW * L
                    nblk = min(2, blocks - 2 * g)  # 1 for an odd last block
                    for e0 in range(0, full, T):
                        _full_dw_tile(z, xf, xbase, dyt, (nb, Wo, sw * C, Fp, 2 * g * L, bstep, e0, nblk), pf,
                                      po + e0 * L)
                    for e0 in range(full, RW):
                        _dw_tile_1(z, xf, xbase, dyt, (nb, Wo, sw * C, Fp, 2 * g * L, bstep, e0, nblk), pf,
                                   po + e0 * L)
