"""The vector strategy: outer-product register tiles with explicit vector accumulators.

Only ``@njit`` code; :mod:`fastconv.plan` decides when these run.

Where the tiled strategy computes dot products (and pays a horizontal reduction per
output), here a tile of ``P`` output pixels x 2 blocks of ``L`` filters keeps ``2P``
vector accumulators (:mod:`fastconv.kernels.simd`) in registers for the whole receptive
field: per input element, 2 vector loads of weights and ``P`` broadcasts of inputs feed
``2P`` fused multiply-adds, with no reduction at the end (oneDNN's direct-convolution
scheme). ``P = 7`` with 32 vector registers (AVX-512), 6 with 16 (AVX2, which also needs
a register for each broadcast; there 4-pixel tiles take a row's remainder, :func:`_row_tiles`);
the tiles are generated (:mod:`.vector_tiles`).

Layouts
-------
Input: zero-padded NHWC ``xp[n, h, w, c]``. Tap ``(i, j, c)`` of output pixel ``(oh, ow)`` of
group ``g`` reads ``xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c]``: for one kernel row ``i`` the
taps ``(j, c)`` of a dense convolution are ``KW * C`` contiguous elements (one run of the tile's
tap loop), those of a dilated or grouped one ``KW`` runs of ``Cg``, ``dw * C`` apart.
Weights: ``wv[g, blk, i, j, c, l]`` = ``w[g*Fg + blk*L + l, c, i, j]``, each group's ``Fg`` filters
zero-padded to whole blocks. Blocks go in pairs (2 vectors of filters per tile); an odd last
block gets a tile of 1 block.
Each job computes one output row ``(n, oh)`` of one group into a small NHWC buffer, then adds
the bias (and applies a ReLU when asked) while transposing it to the NCHW output; the jobs are
``rows x groups``, all groups in one launch.

Kernels
-------
- :func:`vector_forward`: the forward pass (and, through the plan, the input gradient,
  which is a forward pass of ``dy`` with the rotated kernel).
- :func:`vector_weight_grad`: the weight gradient, the same tile with the roles swapped:
  7 taps ``(j, c)`` of a kernel row consecutive in the input x 2 blocks of one group's filters,
  accumulated over a block of output rows of ``dy`` transposed to ``(Wo, F)`` (:func:`_transpose_rows`).

Inline helpers: :func:`_full_tile`, :func:`_four_tile` and :func:`_full_dw_tile` (the register tiles of the
width), :func:`_tile_pixels`, :func:`_row_tiles`, :func:`_tap_runs`, :func:`_transpose_rows`.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .pack import _tile
from .simd import lanes, vadd, vload, vmax, vstore, vzero
from .vector_tiles import _dw_tile_1, _dw_tile_6, _dw_tile_7, _tile_1, _tile_4, _tile_6, _tile_7

#: Output rows per block of the weight gradient: each tile's accumulators are loaded from
#: and stored to the partial once per block.
_ROW_BLOCK = 16


def _tile_pixels(z):
    """Pixels of the register tile for vectors like ``z`` (a compile-time constant)."""


def _full_tile(z, xf, xo, wf, wo, steps, obuf, oo):
    """The register tile for vectors like ``z``: 7 pixels in 512-bit registers, else 6; x ``steps[-1]``
    (2, or 1 for the last block of an odd number) blocks of filters."""


def _four_tile(z, xf, xo, wf, wo, steps, obuf, oo):
    """The 4-pixel tile x ``steps[-1]`` blocks for 256-bit vectors (nothing for 512: not compiled there)."""


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


@overload(_four_tile, inline="always")
def _four_tile_impl(z, xf, xo, wf, wo, steps, obuf, oo):
    if _wide(z):
        return lambda z, xf, xo, wf, wo, steps, obuf, oo: None

    def impl(z, xf, xo, wf, wo, steps, obuf, oo):
        _tile_4(z, xf, xo, wf, wo, steps, obuf, oo)

    return impl


@overload(_full_dw_tile, inline="always")
def _full_dw_tile_impl(z, xf, xbase, dyt, steps, part, po):
    tile = _dw_tile_7 if _wide(z) else _dw_tile_6

    def impl(z, xf, xbase, dyt, steps, part, po):
        tile(z, xf, xbase, dyt, steps, part, po)

    return impl


@njit(**SERIAL_JIT, inline="always")
def _row_tiles(P, Wo):
    """``(tiles, fours)``: a row of ``Wo`` pixels takes ``tiles`` tiles of ``P`` pixels, then ``fours`` of 4.

    With 32 registers (``P = 7``) only full tiles, the last overlapping the one before it. With 16 (``P = 6``)
    one or two 4-pixel tiles take the remainder, so at most one pixel is computed twice: 7 = 4 + 4, 14 = 6 + 4 + 4,
    56 = 8 x 6 + 4 + 4 (overlapping 6-pixel tiles computed 12, 18 and 60; the 4 x 2 tile runs at the 6 x 2
    tile's FMA rate: ``benchmarks/NOTES.md``); 5 = 4 + 4. Rows narrower than 4 (or than 7 on 32 registers): ``(0, 0)``.
    """
    if P != 6:
        return ((Wo + P - 1) // P if Wo >= P else 0), 0
    if Wo < 4:
        return 0, 0
    six, rest = Wo // 6, Wo % 6
    if Wo == 5:
        return 0, 2
    if rest == 5:
        return six + 1, 0  # the last 6-pixel tile overlaps by one
    if rest == 1 or rest == 2:
        return six - 1, 2  # 7 or 8 pixels left: two 4-pixel tiles
    return six, (rest + 3) // 4  # 0, 3 or 4 pixels left: none or one


@njit(**SERIAL_JIT, inline="always")
def _tap_runs(C, Cg, KW, dw):
    """``(KW', CW)``: the kernel columns and the contiguous taps per column a tile loops over.

    A dense kernel row's taps ``(j, c)`` are one contiguous run of ``KW * C`` (``(1, KW * C)``: the
    plain hot loop); a dilated or grouped one's are ``KW`` runs of ``Cg``, ``dw * C`` apart.
    """
    if Cg == C and dw == 1:
        return 1, KW * C
    return KW, Cg


@njit(**PARALLEL_JIT)
def vector_forward(width, xp, wv, b, stride, dilation, relu, out):
    """Direct cross-correlation with vector accumulators: ``out = b + sum xp[...] * w[...]``.

    Output ``(n, g*Fg + f, oh, ow)`` sums ``xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c] * w[g*Fg + f, c, i, j]``.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
        The register width (512 or 256 bits): chooses the lanes ``L`` and the tile.
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wv : (G, blocks, KH, KW, Cg, L) array
        Weights of each of the ``G`` groups in blocks of ``L`` of its ``Fg = F / G`` filters (see the module).
    b : (F,) array
        Bias.
    stride, dilation : (int, int)
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the output.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    sh, sw = stride
    dh, dw = dilation
    N, Hp, Wp, C = xp.shape
    G, blocks, KH, KW, Cg, _ = wv.shape
    F, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    Fg = F // G
    xf = xp.reshape(N * Hp * Wp * C)
    wf = wv.reshape(wv.size)
    z = vzero(width, wf)
    L = lanes(z)
    P = _tile_pixels(z)
    tiles, fours = _row_tiles(P, Wo)
    narrow = 0 if tiles + fours else Wo
    KWr, CW = _tap_runs(C, Cg, KW, dw)
    bstep = KH * KW * Cg * L
    npairs = (blocks + 1) // 2
    # The row buffer holds one pair of blocks (2L filters) of one output row: pitch 2L.
    pair = (sw * C, dh * Wp * C, dw * C, KWr, CW, KH, bstep, 2 * L, 2)
    last = (sw * C, dh * Wp * C, dw * C, KWr, CW, KH, bstep, 2 * L, 2 - blocks % 2)  # an odd last block: 1
    rows = N * Ho
    # Jobs are (group, pair of filter blocks, chunk of output rows): a job's weights (2L filters x the receptive
    # field, 590 KB for 512 channels x 3 x 3) stay in L2 over its rows. Jobs of whole output rows streamed every
    # filter's weights per row: a 512 x 512 x 3 x 3 layer on 7 x 7 maps read 9.4 MB a row, and two threads then
    # shared the memory bandwidth (benchmarks/NOTES.md). At least 32 jobs, for the load balance.
    chunks = min(rows, max(1, -(-32 // (G * npairs))))
    of = out.reshape(out.size)
    for job in prange(G * npairs * chunks):
        grp = job // (npairs * chunks)
        q = (job - grp * npairs * chunks) // chunks
        ch = job - (grp * npairs + q) * chunks
        wo = (grp * blocks + 2 * q) * bstep
        steps = pair if 2 * q + 2 <= blocks else last
        f_lo = 2 * q * L
        nf2 = min(2 * L, Fg - f_lo)  # the pair's real filters
        obuf = np.empty(Wo * 2 * L, dtype=out.dtype)
        bias = np.zeros(2 * L, dtype=out.dtype)
        bias[:nf2] = b[grp * Fg + f_lo:grp * Fg + f_lo + nf2]
        for row in range(rows * ch // chunks, rows * (ch + 1) // chunks):
            n = row // Ho
            oh = row - n * Ho
            xrow = (n * Hp + oh * sh) * Wp * C + grp * Cg
            for t in range(tiles):
                ow = min(t * P, Wo - P)  # the last tile overlaps the one before it
                _full_tile(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * 2 * L)
            for t in range(fours):
                ow = min(tiles * P + 4 * t, Wo - 4)
                _four_tile(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * 2 * L)
            for ow in range(narrow):
                _tile_1(z, xf, xrow + ow * sw * C, wf, wo, steps, obuf, ow * 2 * L)
            # bias and ReLU on the (Wo, 2L) row buffer, then its tiles of L pixels x L filters transposed into
            # the pair's output planes (a gather Fp apart per element before)
            for ow in range(Wo):
                for f0 in range(0, 2 * L, L):
                    a = vadd(vload(z, obuf, ow * 2 * L + f0), vload(z, bias, f0))
                    vstore(obuf, ow * 2 * L + f0, vmax(a, z) if relu else a)
            for f0 in range(0, nf2, L):
                nf = min(L, nf2 - f0)
                for q0 in range(0, Wo, L):
                    nq = min(L, Wo - q0)
                    _tile(z, (obuf, q0 * 2 * L + f0, 2 * L, nq, (1 << nf) - 1),
                          (of, ((n * F + grp * Fg + f_lo + f0) * Ho + oh) * Wo + q0, Ho * Wo, nf, (1 << nq) - 1))


@njit(**SERIAL_JIT, inline="always")
def _transpose_rows(z, dy, r0, nb, Fp, G, dyt):
    """``dyt[k, ow, g*Fp/G + f] = dy[n, g*Fg + f, oh, ow]`` for the output rows ``r0 + k = n * Ho + oh``, ``k < nb``
    (each of the ``G`` groups' ``Fg`` filters padded to ``Fp / G``), in tiles of ``L`` filters x ``L`` pixels
    transposed in registers (:func:`fastconv.kernels.pack._tile`)."""
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    L = lanes(z)
    Fg = F // G
    gp = Fp // G
    dyf = dy.reshape(dy.size)
    for k in range(nb):
        n = (r0 + k) // Ho
        oh = r0 + k - n * Ho
        for g in range(G):
            for f0 in range(0, Fg, L):
                nc = min(L, Fg - f0)
                src = ((n * F + g * Fg + f0) * Ho + oh) * Wo
                for w0 in range(0, Wo, L):
                    nw = min(L, Wo - w0)
                    _tile(z, (dyf, src + w0, Ho * Wo, nc, (1 << nw) - 1),
                          (dyt, (k * Wo + w0) * Fp + g * gp + f0, Fp, nw, (1 << nc) - 1))


@njit(**PARALLEL_JIT)
def vector_weight_grad(width, xp, dy, stride, dilation, split, part):
    """Partial weight gradients with vector accumulators: the correlation of ``xp`` with ``dy``.

    ``part[t, g, blk, i, j, c, l] = sum dy[n, g*Fg + blk*L + l, oh, ow] * xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c]``
    over the ``t``-th contiguous chunk of the ``N * Ho`` output rows. Jobs are ``chunks x
    unit_jobs``: each owns a chunk of rows and a range of units (2 blocks of ``L`` filters of
    one group, or a group's odd last block), so nothing is written by two threads; the caller
    sums ``part`` over ``t`` in order. A tile holds 7 taps ``(j, c)`` consecutive in the input
    x 2 blocks (6 x 2 with 256-bit registers) across a block of rows; the taps of a kernel row
    (``KW * C`` contiguous ones dense, else ``Cg`` per column) left over by the tile go one at a time.

    Parameters
    ----------
    width : fastconv.kernels.simd.Width
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    dy : (N, F, Ho, Wo) array
        Output gradient, NCHW.
    stride, dilation : (int, int)
    split : (int, int)
        ``(chunks, unit_jobs)``.
    part : (chunks, G, blocks, KH, KW, Cg, L) array
        Fully overwritten; ``blocks * L >= F / G`` (padded filters get zeros).
    """
    sh, sw = stride
    dh, dw = dilation
    chunks, ujobs = split
    N, Hp, Wp, C = xp.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    _, G, blocks, KH, KW, Cg, _ = part.shape
    xf = xp.reshape(xp.size)
    z = vzero(width, xf)
    L = lanes(z)
    Fp = G * blocks * L
    T = _tile_pixels(z)
    KWr, CW = _tap_runs(C, Cg, KW, dw)
    full = CW - CW % T
    pairs = (blocks + 1) // 2  # units per group: pairs of blocks, an odd last block a unit of its own
    units = G * pairs
    bstep = KH * KW * Cg * L
    rows = N * Ho
    for job in prange(chunks * ujobs):
        ch = job // ujobs
        uj = job - ch * ujobs
        u_lo = units * uj // ujobs
        u_hi = units * (uj + 1) // ujobs
        pf = part[ch].reshape(G * blocks * bstep)
        # The units' blocks are contiguous: unit u starts at block (u // pairs) * blocks + 2 * (u % pairs).
        pf[((u_lo // pairs) * blocks + 2 * (u_lo % pairs)) * bstep:((u_hi // pairs) * blocks + 2 * (u_hi % pairs))
           * bstep] = 0
        dyt = np.zeros(_ROW_BLOCK * Wo * Fp, dtype=xp.dtype)  # the padded filters stay 0
        xbase = np.empty(_ROW_BLOCK, dtype=np.int64)
        r_end = rows * (ch + 1) // chunks
        for r0 in range(rows * ch // chunks, r_end, _ROW_BLOCK):
            nb = min(_ROW_BLOCK, r_end - r0)
            _transpose_rows(z, dy, r0, nb, Fp, G, dyt)
            for i in range(KH):
                for k in range(nb):
                    n = (r0 + k) // Ho
                    xbase[k] = ((n * Hp + (r0 + k - n * Ho) * sh + i * dh) * Wp) * C
                for u in range(u_lo, u_hi):
                    grp = u // pairs
                    b0 = grp * blocks + 2 * (u - grp * pairs)
                    nblk = min(2, (grp + 1) * blocks - b0)  # 1 for an odd last block
                    for j in range(KWr):
                        xo = j * dw * C + grp * Cg
                        po = b0 * bstep + (i * KW * Cg + j * CW) * L
                        for e0 in range(0, full, T):
                            _full_dw_tile(z, xf, xbase, dyt, (nb, Wo, sw * C, Fp, b0 * L, bstep, xo + e0, nblk), pf,
                                          po + e0 * L)
                        for e0 in range(full, CW):
                            _dw_tile_1(z, xf, xbase, dyt, (nb, Wo, sw * C, Fp, b0 * L, bstep, xo + e0, nblk), pf,
                                       po + e0 * L)
