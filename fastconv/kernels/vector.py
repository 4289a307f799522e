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
= ``w[blk*L + l, c, i, j]``, with the filters zero-padded to an even number of blocks.
Each job computes one output row ``(n, oh)`` into a small NHWC buffer, then adds the bias
(and applies a ReLU when asked) while transposing it to the NCHW output.

Kernels
-------
- :func:`vector_forward`: the forward pass (and, through the plan, the input gradient,
  which is a forward pass of ``dy`` with the rotated kernel).

Inline helpers: :func:`_full_tile` (the register tile of the width), :func:`_tile_pixels`.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..config import PARALLEL_JIT
from .simd import lanes, vzero
from .vector_tiles import _tile_1x2, _tile_6x2, _tile_7x2


def _tile_pixels(z):
    """Pixels of the register tile for vectors like ``z`` (a compile-time constant)."""


def _full_tile(z, xf, xo, wf, wo, steps, obuf, oo):
    """The register tile for vectors like ``z``: 7 x 2 in 512-bit registers, else 6 x 2."""


def _wide(z):
    return z.count * z.dtype.bitwidth >= 512


@overload(_tile_pixels, inline="always")
def _tile_pixels_impl(z):
    pixels = 7 if _wide(z) else 6
    return lambda z: pixels


@overload(_full_tile, inline="always")
def _full_tile_impl(z, xf, xo, wf, wo, steps, obuf, oo):
    tile = _tile_7x2 if _wide(z) else _tile_6x2

    def impl(z, xf, xo, wf, wo, steps, obuf, oo):
        tile(z, xf, xo, wf, wo, steps, obuf, oo)

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
        Weights in blocks of ``L`` filters (an even number of blocks; see the module).
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
    steps = (sw * C, Wp * C, RW, KH, KH * RW * L, Fp)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        obuf = np.empty(Wo * Fp, dtype=out.dtype)
        xrow = (n * Hp + oh * sh) * Wp * C
        for g in range(blocks // 2):
            wo = 2 * g * KH * RW * L
            for t in range(tiles):
                ow = min(t * P, Wo - P)  # the last tile overlaps the one before it
                _full_tile(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * Fp + 2 * g * L)
            for ow in range(narrow):
                _tile_1x2(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * Fp + 2 * g * L)
        for f in range(F):
            orow = out[n, f, oh]
            bias = b[f]
            for q in range(Wo):
                v = obuf[q * Fp + f] + bias
                orow[q] = zero if relu and v <= zero else v
