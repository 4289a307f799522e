"""Packing kernels: copy operands into the layouts the compute kernels read, and back.

Only ``@njit`` code: :mod:`fastconv.plan` decides which layout a strategy needs.

- :func:`pack_nhwc_padded`: NCHW -> zero-padded NHWC ``(N, H+2ph, W+2pw, C)``, read by
  the tiled and filter-vector kernels.
- :func:`pack_nchw_padded`: NCHW -> zero-padded NCHW ``(N, C, H+2ph, W+2pw)``, read by
  the flat kernels.
- :func:`pack_scatter_phase`: one stride phase of an input gradient, computed in padded
  coordinates, written into ``dx`` with the padding cropped.
- :func:`pack_vector_weights`: ``(F, C/G, KH, KW)`` weights into the vector kernels' blocks
  of ``L`` filters of each group.

Helper of :func:`pack_nhwc_padded`: :func:`_tile`, a tile of ``L`` channels x ``L`` pixels transposed (one of
the generated :mod:`.pack_tiles`, by the lanes).
"""

from numba import njit, prange
from numba.core.errors import TypingError
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .pack_tiles import _tile4, _tile8, _tile16
from .simd import lanes, vstorez, vzero


def _tile(v, src, dst):
    """:func:`_tile16`, :func:`_tile8` or :func:`_tile4` by the lanes of ``v`` (only that one is compiled)."""


@overload(_tile, jit_options=SERIAL_JIT)
def _tile_for_lanes(v, src, dst):
    tile = {16: _tile16, 8: _tile8, 4: _tile4}.get(v.count)
    if tile is None:
        raise TypingError(f"pack_nhwc_padded has tiles of 16, 8 and 4 lanes, not {v.count}")

    def impl(v, src, dst):
        tile(v, src, dst)

    return impl


@njit(**PARALLEL_JIT)
def pack_nhwc_padded(width, x, ph, pw, out):
    """Copy ``x`` (N, C, H, W) into the interior of ``out`` (N, H+2ph, W+2pw, C), vectors of register ``width``.

    The border of ``out`` is zeroed here, so ``out`` may come from ``np.empty``. ``out`` may be
    larger than that: everything past ``x`` is zeroed (the stride phases pad each side as far as
    they read, :mod:`fastconv.kernels.phases`).
    Each job copies a block of ``L`` channels (a vector's lanes) of one image, row by row: it reads ``L``
    sequential streams and fills whole cache lines of ``out``. One job per output row
    (reading all C channel rows, a plane apart) ran up to 4x slower when the plane size
    was a multiple of 4 KiB (32 x 32 and 64 x 64 float32 planes): every load then
    aliased the stores before it. See ``benchmarks/NOTES.md``.
    A row is moved in tiles of ``L`` channels x ``L`` pixels: ``L`` (masked) loads, ``log2(L)`` rounds of
    interleaving shuffles (:func:`_tile16` and its 8- and 4-lane twins, :func:`_tile`), one (masked) store per pixel; the scalar
    strided stores it replaces cost ten times a plain copy (``benchmarks/NOTES.md``).
    """
    N, C, H, W = x.shape
    Hp = out.shape[1]
    Wp = out.shape[2]
    v = vzero(width, x)
    L = lanes(v)
    blocks = (C + L - 1) // L
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for job in prange(N * blocks):
        n = job // blocks
        c0 = (job - n * blocks) * L
        c1 = min(C, c0 + L)
        nc = c1 - c0
        cbits = (1 << nc) - 1
        for hp in range(Hp):
            h = hp - ph
            base = (n * Hp + hp) * Wp * C + c0
            if h < 0 or h >= H:
                for wp in range(Wp):
                    vstorez(of, base + wp * C, v, cbits)
                continue
            for wp in range(pw):
                vstorez(of, base + wp * C, v, cbits)
            for wp in range(pw + W, Wp):
                vstorez(of, base + wp * C, v, cbits)
            src = ((n * C + c0) * H + h) * W
            dst = ((n * Hp + hp) * Wp + pw) * C + c0
            for w0 in range(0, W, L):
                nw = min(L, W - w0)
                _tile(v, (xf, src + w0, H * W, nc, (1 << nw) - 1), (of, dst + w0 * C, C, nw, cbits))


@njit(**PARALLEL_JIT)
def pack_nchw_padded(x, ph, pw, out):
    """Copy ``x`` (N, C, H, W) into the interior of ``out`` (N, C, H+2ph, W+2pw); zero the border."""
    N, C, H, W = x.shape
    Hp = out.shape[2]
    for job in prange(N * C):
        n = job // C
        c = job - n * C
        plane = out[n, c]
        for hp in range(Hp):
            row = plane[hp]
            h = hp - ph
            if h < 0 or h >= H:
                row[:] = 0
                continue
            row[:pw] = 0
            row[pw + W:] = 0
            src = x[n, c, h]
            for w in range(W):
                row[pw + w] = src[w]



@njit(**PARALLEL_JIT)
def pack_scatter_phase(phase, first, residue, stride, padding, dx):
    """Write one stride phase of the input gradient into ``dx``, cropping the padding.

    ``dx[n, c, rh + sh*qh - ph, rw + sw*qw - pw] = phase[n, c, first_h + qh, first_w + qw]``
    for every ``qh, qw >= 0`` that lands inside ``dx`` and inside ``phase``; nothing else
    is written. The phases of a strided convolution's input gradient write disjoint
    positions. One job per ``(n, c)`` plane.

    Parameters
    ----------
    phase : (N, C, Ph, Pw) array
        The phase, computed in padded coordinates; rows (columns) before ``first_h``
        (``first_w``) are surplus and skipped.
    first : (int, int)
        ``(first_h, first_w)``: offsets into ``phase``.
    residue : (int, int)
        ``(rh, rw)``: the phase's residues modulo the stride.
    stride, padding : (int, int)
        The convolution's ``(sh, sw)`` and ``(ph, pw)``.
    dx : (N, C, H, W) array
    """
    first_h, first_w = first
    rh, rw = residue
    sh, sw = stride
    ph, pw = padding
    N, C, H, W = dx.shape
    qh_lo = max(0, (ph - rh + sh - 1) // sh)
    qh_hi = min(phase.shape[2] - first_h, (H + ph - rh + sh - 1) // sh)
    qw_lo = max(0, (pw - rw + sw - 1) // sw)
    qw_hi = min(phase.shape[3] - first_w, (W + pw - rw + sw - 1) // sw)
    for job in prange(N * C):
        n = job // C
        c = job - n * C
        for qh in range(qh_lo, qh_hi):
            src = phase[n, c, first_h + qh]
            dst = dx[n, c, rh + sh * qh - ph]
            for qw in range(qw_lo, qw_hi):
                dst[rw + sw * qw - pw] = src[first_w + qw]



@njit(**PARALLEL_JIT)
def pack_vector_weights(w, rotate, wv):
    """``wv[g, blk, i, j, c, l] = k[g*Fg + blk*L + l, c, i, j]``, zero for the padded filters ``blk*L + l >= Fg``.

    The weight layout of :func:`fastconv.kernels.vector.vector_forward`: each of the ``G``
    groups' ``Fg`` filters in blocks of ``L``, the taps of one kernel row contiguous. ``k`` is
    ``w`` itself, or with ``rotate`` the input gradient's kernel -- ``w`` rotated by 180
    degrees with its channel axes swapped within each group, ``k[g*Fg + f, c, i, j] =
    w[g*Cg + c, f, KH-1-i, KW-1-j]`` -- read in place, without a rotated copy. One pass, one
    job per (group, block, kernel row).

    Parameters
    ----------
    w : (G*Fg, Cg, KH, KW) array, or (G*Cg, Fg, KH, KW) with ``rotate``
    rotate : bool
    wv : (G, blocks, KH, KW, Cg, L) array
        Fully overwritten; ``blocks * L >= Fg``.
    """
    G, blocks, KH, KW, Cg, L = wv.shape
    Fg = w.shape[1] if rotate else w.shape[0] // G
    for job in prange(G * blocks * KH):
        g = job // (blocks * KH)
        blk = (job - g * blocks * KH) // KH
        i = job - (g * blocks + blk) * KH
        dst = wv[g, blk, i]
        for j in range(KW):
            for c in range(Cg):
                row = dst[j, c]
                for k in range(L):
                    f = blk * L + k
                    if f >= Fg:
                        row[k] = 0
                    elif rotate:
                        row[k] = w[g * Cg + c, f, KH - 1 - i, KW - 1 - j]
                    else:
                        row[k] = w[g * Fg + f, c, i, j]
