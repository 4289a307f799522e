#!/usr/bin/env python
"""Generate the register tiles of the kernels from templates: ``fastconv/kernels/vector_tiles.py`` (the vector
kernels and the matmul), ``flat_tiles.py`` (the flat kernels) and ``pack_tiles.py`` (the NHWC pack's transposes).

A tile holds ``P`` output pixels x ``B`` blocks of filters (one vector register of filters
each) in ``P * B`` vector accumulators across a whole receptive field, so each is written out
with its accumulators as named locals (Numba has no register arrays). The tiles differ only
in ``P`` and ``B``; writing each by hand would copy the same code, so this script writes them
(XNNPACK's template approach) and ``tests/test_vector.py`` checks the committed files are what
it generates.

The tiles are ordinary ``@njit`` functions, not ``inline="always"``: inlining them into the
Numba IR of every parallel kernel made each kernel's compile about a second longer (the
parfor passes walk the bigger IR), while LLVM inlines them into the same machine code
anyway (the hot loops' instructions are the same; ``benchmarks/NOTES.md``).

``_tile_PxB(z, xf, xo, wf, wo, steps, obuf, oo)`` accumulates ``P`` output pixels x ``B``
blocks of ``L`` filters (``L`` the vector's lanes) and stores them to the row buffer
``obuf[(ow + p) * Fp + f]``: ``z`` is a zero vector (it gives the type), ``xf`` the flat
zero-padded NHWC input, ``xo`` the input offset of the tile's first pixel, ``wf`` the flat
packed weights ``(blocks, KH, KW * C, L)``, ``wo`` the offset of the tile's first block,
``steps = (sx, rowstep, colstep, KW, CW, KH, bstep, Fp, B)`` the input step between pixels, between
kernel rows and between kernel columns, the kernel's columns and the contiguous taps of one
column (``CW`` channels, ``colstep`` apart; a dense convolution passes ``KW = 1, CW = KW * C``: a
kernel row's taps ``(j, c)`` are then one contiguous run and the hot loop is the plain one), the
kernel height, the weight step between blocks, the row-buffer pitch and the number of blocks
(read by ``_tile_P``, which runs ``_tile_Px2`` or ``_tile_Px1``); ``oo`` is the buffer offset of
the tile's first output. Weights ``wf[wo + b*bstep + ((i*KW + j)*CW + r)*L + l]``.

``_dw_tile_TxB(z, xf, xbase, dyt, steps, part, po)`` is the weight gradient's tile: ``T``
consecutive entries ``e = j*C + c`` of one kernel row x ``B`` blocks of filters, loaded from
the partial ``part[po + b*bstep + t*L]``, accumulated over ``nb`` output rows (input row
offsets ``xbase[k]``) x ``Wo`` pixels of the transposed output gradient ``dyt[k, ow*Fp +
fo + f]``, and stored back; ``steps = (nb, Wo, sx, Fp, fo, bstep, e0, B)``, ``e0`` the
input offset of the first entry from the start of its input row (``j*dw*C + g*Cg + c``; the ``T`` entries are
consecutive in the input) and ``B`` the number of blocks (``_dw_tile_T`` chooses by it).

``_mm_tile_R(z, src, dst)`` is :func:`fastconv.kernels.matmul.matmul_nn`'s tile: ``R`` rows of ``C`` x 3 vectors of
columns, started from ``init``, accumulated over the whole reduction axis (one broadcast of ``A`` per row, three
loads of ``B`` per step) and stored once; ``src = (af, ao, Q, bf, bo, K, masks)`` (row ``r`` of ``A`` at
``af[ao + r*Q]``, row ``q`` of ``B`` at ``bf[bo + q*K]``, ``masks`` the lanes of the three vectors: columns past
``K`` are neither read nor written), ``dst = (cf, co, init, r0)`` (row ``r`` of ``C`` at ``cf[co + r*K]``);
``_mm_tile_R_full`` is the same tile for 3 vectors all within ``K`` (plain loads and stores, ``masks`` unread).

``_fwd_FxV(z, xf, xb, toff, wgt, dst)`` is the flat forward tile (:func:`fastconv.kernels.flat.flat_forward`): ``F``
filters x ``V`` vectors of consecutive positions of the flat padded plane ``xf[xb:]``, accumulated over the taps
``toff`` (plane offsets) from the bias, ``wgt = (wp, wo, bias)`` (filter ``k``'s weight of tap ``t`` at
``wp[wo + t*F + k]``), stored to ``dst = (buf, so, Lb)`` (vector ``v`` of filter ``k`` at ``buf[so + k*Lb + v*L]``);
``_fwd_Fx1_masked(..., bits, dst)`` is one vector whose lanes outside ``bits`` are not read (a plane's tail).
``_wg_FxT(z, xf, xgeom, dyb, dgeom, toff, vs, vo)`` is the flat weight gradient's tile: ``F`` filters x ``T`` taps
over ``nb`` images, ``xgeom = (xb, xstep, nb)`` (image ``m``'s planes at ``xf[xb + m*xstep:]``), ``dgeom = (Pb, S,
bits, Rp)`` (its filter ``k``'s dy at ``dyb[(m*F + k)*Pb:]``, ``S`` vectors, the last masked by ``bits``), tap
``j``'s sum of filter ``k`` added at ``vs[vo + (k*Rp + j)*L]``.

``_tileL(v, src, dst)`` is :func:`fastconv.kernels.pack.pack_nhwc_padded`'s transpose of ``L`` channels x ``L``
pixels: ``src = (xf, i, plane, nc, bits)`` (channel row ``k`` at ``xf[i + k*plane:]``, its lanes in ``bits``, zeros
past the ``nc`` channels), ``dst = (of, o, C, nw, cbits)`` (pixel ``l`` at ``of[o + l*C:]``, the first ``nw``
pixels, the lanes of ``cbits``), in ``log2(L)`` rounds of ``_roundL`` (a perfect shuffle).

Usage::

    python scripts/generate_kernels.py            # rewrite the files
    python scripts/generate_kernels.py --check    # exit 1 if one is out of date
"""

import argparse
import sys
import textwrap
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "fastconv" / "kernels"

#: Weight-gradient entries (and forward pixels) per tile: 7 for 32 vector registers (14 accumulators
#: + 2 weight vectors), 6 for 16 (12 + 2 + the broadcast register AVX2 needs), 1 for rows
#: narrower than a tile. Each comes with 2 filter blocks, and with 1 for the odd last block.
DW_PIXELS = (7, 6, 1)
DW_TILES = tuple((p, b) for b in (2, 1) for p in DW_PIXELS)
#: The forward tiles also have 4 pixels: on 16 registers a row is covered by 6-pixel tiles and
#: one or two 4-pixel ones, so at most one pixel is computed twice (Wo = 7, 14: 8 and 14 pixels, not 12 and 18).
PIXELS = (7, 6, 4, 1)
TILES = tuple((p, b) for b in (2, 1) for p in PIXELS)
#: The flat forward tiles (filters x vectors): 8 x 3 for 32 vector registers, 4 x 6 for groups of at most 4 filters
#: there (the same 24 accumulators), 4 x 3 for 16; each with its masked one-vector tail (filters x 1).
FLAT_FORWARD = ((8, 3), (4, 6), (4, 3))
#: The flat weight-gradient tiles (filters x taps), likewise.
FLAT_WEIGHT_GRAD = ((8, 3), (4, 6), (4, 3))
#: Lanes of the pack's transposes: float32 and float64 on 512 bits, float32 on 256 (16, 8), float64 on 256 (4).
PACK_LANES = (16, 8, 4)
#: Rows per matmul tile (each x 3 vectors of columns): 8 for 32 vector registers (24 accumulators + 3 loads),
#: 4 for 16, 1 for the rows a tile leaves (layer widths are multiples of 8 more often than of 12).
MM_ROWS = (8, 4, 1)

HEADER = '''"""Register tiles of the vector kernels (:mod:`fastconv.kernels.vector`).

GENERATED by ``scripts/generate_kernels.py`` from one template: do not edit by hand. The
generator's docstring describes the arguments.
Tiles: {tiles}; by the number of blocks: {choosers}.
"""

from numba import njit

from ..config import SERIAL_JIT
from .simd import lanes, vfmab, vload, vloadz, vsplat, vstore, vstorez'''


def _plus(*terms):
    """``a + b + ...`` of the terms that are not empty (``"0"`` if none is)."""
    return " + ".join(t for t in terms if t) or "0"


def _mul(k, name):
    """``k * name`` as it reads best: ``""`` for 0, ``name`` for 1."""
    return "" if k == 0 else name if k == 1 else f"{k} * {name}"


def tile(P, B):
    acc = [[f"a{p}_{b}" for b in range(B)] for p in range(P)]
    lines = [
        "",
        "",
        '@njit(**SERIAL_JIT)',
        f"def _tile_{P}x{B}(z, xf, xo, wf, wo, steps, obuf, oo):",
        f'    """{P} pixel{"s" if P > 1 else ""} x {B} filter blocks: {P * B} vector accumulators."""',
        "    sx, rowstep, colstep, KW, CW, KH, bstep, Fp, _ = steps",
        "    L = lanes(z)",
    ]
    lines += [f"    {name} = z" for row in acc for name in row]
    lines += [
        "    for i in range(KH):",
        "        for j in range(KW):",
        "            xi = xo + i * rowstep + j * colstep",
        "            wi = wo + (i * KW + j) * CW * L",
        "            for r in range(CW):",
    ]
    lines += [f"                u{b} = vload(z, wf, {_plus('wi', _mul(b, 'bstep'), 'r * L')})" for b in range(B)]
    for p in range(P):
        x = _plus("xi", _mul(p, "sx"), "r")
        lines += [f"                {acc[p][b]} = vfmab({acc[p][b]}, u{b}, xf, {x})" for b in range(B)]
    for p in range(P):
        for b in range(B):
            where = _plus("oo", _mul(p, "Fp"), _mul(b, "L"))
            lines.append(f"    vstore(obuf, {where}, {acc[p][b]})")
    return lines


def dw_tile(T, B):
    """The weight gradient's tile: ``T`` consecutive entries ``e = j*C + c`` x ``B`` filter blocks."""
    acc = [[f"a{t}_{b}" for b in range(B)] for t in range(T)]
    lines = [
        "",
        "",
        '@njit(**SERIAL_JIT)',
        f"def _dw_tile_{T}x{B}(z, xf, xbase, dyt, steps, part, po):",
        f'    """{T} entr{"ies" if T > 1 else "y"} x {B} filter blocks: {T * B} vector accumulators."""',
        "    nb, Wo, sx, Fp, fo, bstep, e0, _ = steps",
        "    L = lanes(z)",
    ]
    lines += [f"    {acc[t][b]} = vload(z, part, {_plus('po', _mul(b, 'bstep'), _mul(t, 'L'))})"
              for t in range(T) for b in range(B)]
    lines += [
        "    for k in range(nb):",
        "        xb = xbase[k] + e0",
        "        dk = k * Wo * Fp + fo",
        "        for ow in range(Wo):",
        "            xo = xb + ow * sx",
    ]
    lines += [f"            u{b} = vload(z, dyt, {_plus('dk', 'ow * Fp', _mul(b, 'L'))})"
              for b in range(B)]
    for t in range(T):
        x = f"xo + {t}" if t else "xo"
        lines += [f"            {acc[t][b]} = vfmab({acc[t][b]}, u{b}, xf, {x})" for b in range(B)]
    lines += [f"    vstore(part, {_plus('po', _mul(b, 'bstep'), _mul(t, 'L'))}, {acc[t][b]})"
              for t in range(T) for b in range(B)]
    return lines


def mm_tile(R, full=False):
    """The source lines of ``_mm_tile_{R}`` (masked loads and stores) or ``_mm_tile_{R}_full`` (all 3L columns in
    ``K``: plain ones; without AVX-512's mask registers the three masks would take three of the 16 vector registers
    and spill the tile): ``R`` rows x 3 vectors."""
    name = f"_mm_tile_{R}_full" if full else f"_mm_tile_{R}"
    out = ["", "", "@njit(**SERIAL_JIT)", f"def {name}(z, src, dst):",
           f'    """{R} row(s) x 3 {"whole " if full else ""}vectors of the product, accumulators in registers (see '
           'the generator)."""',
           "    af, ao, Q, bf, bo, K, masks = src", "    cf, co, init, r0 = dst"]
    out += ["    L = lanes(z)"] if full else ["    m0, m1, m2 = masks", "    L = lanes(z)"]
    for r in range(R):
        out += [f"    a{r}_0 = vsplat(z, init[r0 + {r}])", f"    a{r}_1 = a{r}_0", f"    a{r}_2 = a{r}_0"]
    out += ["    for q in range(Q):"]
    out += [f"        u{v} = vload(z, bf, {_plus('bo', 'q * K', _mul(v, 'L'))})" if full else
            f"        u{v} = vloadz(z, bf, {_plus('bo', 'q * K', _mul(v, 'L'))}, m{v})" for v in range(3)]
    for r in range(R):
        out += [f"        a{r}_{v} = vfmab(a{r}_{v}, u{v}, af, {_plus('ao', _mul(r, 'Q'), 'q')})" for v in range(3)]
    for r in range(R):
        out += [f"    vstore(cf, {_plus('co', _mul(r, 'K'), _mul(v, 'L'))}, a{r}_{v})" if full else
                f"    vstorez(cf, {_plus('co', _mul(r, 'K'), _mul(v, 'L'))}, a{r}_{v}, m{v})" for v in range(3)]
    return out


def chooser(prefix, P, args):
    """``{prefix}_{P}(z, ...)``: the 2-block tile, or the 1-block one when ``steps[-1]`` is 1."""
    return [
        "",
        "",
        "@njit(**SERIAL_JIT)",
        f"def {prefix}_{P}(z, {args}):",
        f'    """:func:`{prefix}_{P}x2`, or :func:`{prefix}_{P}x1` when ``steps[-1] == 1`` (an odd last block)."""',
        "    if steps[-1] == 2:",
        f"        {prefix}_{P}x2(z, {args})",
        "    else:",
        f"        {prefix}_{P}x1(z, {args})",
    ]


def generate_vector():
    tiles = ", ".join([f":func:`_tile_{p}x{b}`" for p, b in TILES] +
                      [f":func:`_dw_tile_{t}x{b}`" for t, b in DW_TILES])
    tiles += ", " + ", ".join([f":func:`_mm_tile_{r}`" for r in MM_ROWS] +
                              [f":func:`_mm_tile_{r}_full`" for r in MM_ROWS if r > 1])
    choosers = ", ".join([f":func:`_tile_{p}`" for p in PIXELS] + [f":func:`_dw_tile_{p}`" for p in DW_PIXELS])
    out = HEADER.format(tiles=tiles, choosers=choosers).split("\n")
    for p, b in TILES:
        out += tile(p, b)
    for t, b in DW_TILES:
        out += dw_tile(t, b)
    for p in PIXELS:
        out += chooser("_tile", p, "xf, xo, wf, wo, steps, obuf, oo")
    for p in DW_PIXELS:
        out += chooser("_dw_tile", p, "xf, xbase, dyt, steps, part, po")
    for r in MM_ROWS:
        out += mm_tile(r) + (mm_tile(r, full=True) if r > 1 else [])  # (the rows a tile leaves: masked)
    return "\n".join(out).rstrip() + "\n"


FLAT_HEADER = '''"""Register tiles of the flat kernels (:mod:`fastconv.kernels.flat`).

GENERATED by ``scripts/generate_kernels.py`` from one template: do not edit by hand. The
generator's docstring describes the arguments.
{listing}
"""

from numba import njit

from ..config import SERIAL_JIT
from .simd import lanes, vadd, vfma, vfmab, vload, vloadz, vsplat, vstore


@njit(**SERIAL_JIT, inline="always")
def _fma3(d, x, a):
    """``(a[j] + d * x[j] for j < 3)``: one vector of dy against three taps' vectors."""
    return vfma(a[0], d, x[0]), vfma(a[1], d, x[1]), vfma(a[2], d, x[2])


@njit(**SERIAL_JIT, inline="always")
def _vacc3(z, vs, o, a):
    """``vs[o + j*L:o + (j+1)*L] += a[j]`` for ``j < 3``."""
    L = lanes(z)
    vstore(vs, o, vadd(vload(z, vs, o), a[0]))
    vstore(vs, o + L, vadd(vload(z, vs, o + L), a[1]))
    vstore(vs, o + 2 * L, vadd(vload(z, vs, o + 2 * L), a[2]))'''


def flat_fwd(F, V, masked=False):
    """``_fwd_{F}x{V}`` (or ``_fwd_{F}x1_masked``): ``F`` filters x ``V`` vectors of the flat plane."""
    acc = [[f"a{k}_{v}" if V > 1 or not masked else f"a{k}" for v in range(V)] for k in range(F)]
    if masked:
        head = [f"def _fwd_{F}x1_masked(z, xf, xb, toff, wgt, bits, dst):",
                f'    """{F} filters x 1 vector, the lanes not set in ``bits`` (past the plane) not read: the tail of a '
                'plane."""']
    else:
        head = [f"def _fwd_{F}x{V}(z, xf, xb, toff, wgt, dst):",
                f'    """{F} filters x {V} vectors of the flat plane from ``xf[xb:]``: {F * V} accumulators."""']
    out = ["", "", "@njit(**SERIAL_JIT)"] + head + ["    wp, wo, bias = wgt", "    buf, so, Lb = dst"]
    if V > 1:
        out.append("    L = lanes(z)")
    out += [f"    {' = '.join(row)} = vsplat(z, bias[{k}])" for k, row in enumerate(acc)]
    out.append("    for t in range(toff.size):")
    if masked:
        out.append("        x0 = vloadz(z, xf, xb + toff[t], bits)")
    else:
        out.append("        xo = xb + toff[t]")
        out += [f"        x{v} = vload(z, xf, {_plus('xo', _mul(v, 'L'))})" for v in range(V)]
    out.append(f"        wi = wo + t * {F}")
    for k in range(F):
        wi = _plus("wi", str(k) if k else "")
        out += [f"        {acc[k][v]} = vfmab({acc[k][v]}, x{v}, wp, {wi})" for v in range(V)]
    out += [f"    vstore(buf, {_plus('so', _mul(k, 'Lb'), _mul(v, 'L'))}, {acc[k][v]})"
            for k in range(F) for v in range(V)]
    return out


def _wg_step(F, T, load):
    """One vector position of ``_wg_{F}x{T}``: ``T`` loads of the shifted planes, per filter a load of dy and
    ``T`` FMAs."""
    out = [f"x{j} = {load(j)}" for j in range(T)]
    for k in range(F):
        out.append(f"d = vload(z, dyb, {_plus('do', _mul(k, 'Pb'), 'p')})")
        for j0 in range(0, T, 3):
            a = ", ".join(f"a{k}_{j}" for j in range(j0, j0 + 3))
            x = ", ".join(f"x{j}" for j in range(j0, j0 + 3))
            out.append(f"{a} = _fma3(d, ({x}), ({a}))")
    return out


def flat_wg(F, T):
    """``_wg_{F}x{T}``: ``F`` filters x ``T`` taps (a multiple of 3) of the flat weight gradient."""
    out = ["", "", "@njit(**SERIAL_JIT)", f"def _wg_{F}x{T}(z, xf, xgeom, dyb, dgeom, toff, vs, vo):",
           f'    """{F} filters x {T} taps: {F * T} accumulators over ``nb`` images, added into ``vs``."""',
           "    xb, xstep, nb = xgeom", "    Pb, S, bits, Rp = dgeom", "    L = lanes(z)"]
    out += [f"    {' = '.join(f'a{k}_{j}' for j in range(T))} = z" for k in range(F)]
    out += ["    for m in range(nb):", "        xo = xb + m * xstep", f"        do = m * {F} * Pb",
            "        for s in range(S - 1):", "            p = s * L"]
    out += ["            " + line for line in _wg_step(F, T, lambda j: f"vload(z, xf, xo + toff[{j}] + p)")]
    out.append("        p = (S - 1) * L  # the last vector: the lanes past the plane are not read")
    out += ["        " + line for line in _wg_step(F, T, lambda j: f"vloadz(z, xf, xo + toff[{j}] + p, bits)")]
    for k in range(F):
        for j0 in range(0, T, 3):
            a = ", ".join(f"a{k}_{j}" for j in range(j0, j0 + 3))
            out.append(f"    _vacc3(z, vs, {_plus('vo', _mul(k, 'Rp * L'), _mul(j0, 'L'))}, ({a}))")
    return out


def generate_flat():
    fwd = [f":func:`_fwd_{f}x{v}`" for f, v in FLAT_FORWARD]
    fwd += [f":func:`_fwd_{f}x1_masked`" for f in sorted({f for f, _ in FLAT_FORWARD}, reverse=True)]
    wg = ", ".join(f":func:`_wg_{f}x{t}`" for f, t in FLAT_WEIGHT_GRAD)
    listing = (f"Forward tiles: {', '.join(fwd)}; weight-gradient tiles: {wg}. "
               "Inline helpers: :func:`_fma3`, :func:`_vacc3`.")
    out = FLAT_HEADER.format(listing=textwrap.fill(listing, 116)).split("\n")
    for f, v in FLAT_FORWARD:
        out += flat_fwd(f, v)
    for f in sorted({f for f, _ in FLAT_FORWARD}, reverse=True):
        out += flat_fwd(f, 1, masked=True)
    for f, t in FLAT_WEIGHT_GRAD:
        out += flat_wg(f, t)
    return "\n".join(out).rstrip() + "\n"


PACK_HEADER = '''"""The transposes of :func:`fastconv.kernels.pack.pack_nhwc_padded`: tiles of ``L`` channels x ``L`` pixels.

GENERATED by ``scripts/generate_kernels.py`` from one template: do not edit by hand. The
generator's docstring describes the arguments.
{listing}
"""

from numba import njit

from ..config import SERIAL_JIT
from .simd import lanes, vload, vloadz, vstore, vstorez, vziphi, vziplo


@njit(**SERIAL_JIT)
def _row(v, xf, i, k, nc, bits):
    """Channel row ``k`` of a tile (``xf[i:i+L]``, the lanes of ``bits``), or zeros past the ``nc`` channels.

    A plain load when the row is there and ``bits`` has every lane (``vmaskmovps`` is slower on AVX2)."""
    if k < nc and bits == (1 << lanes(v)) - 1:
        return vload(v, xf, i)
    return vloadz(v, xf, i, bits if k < nc else 0)


@njit(**SERIAL_JIT)
def _store(of, o, t, k, nw, nc, cbits):
    """Pixel ``k``'s channels (vector ``t``) at ``of[o]`` if the tile has pixel ``k``; the first ``nc`` lanes only.

    A plain store when the tile has the pixel and all ``L`` channels: AMD's AVX2 cores microcode a masked store."""
    if k < nw and nc >= lanes(t):
        vstore(of, o, t)
    else:
        vstorez(of, o, t, cbits if k < nw else 0)'''


def pack_round(L):
    """``_round{L}``: rows ``2i`` and ``2i + 1`` of the new tile interleave rows ``i`` and ``i + L/2``."""
    h = L // 2
    pairs = [f"vziplo(t[{i}], t[{i + h}]), vziphi(t[{i}], t[{i + h}])" for i in range(h)]
    body = ",\n            ".join(", ".join(pairs[i:i + 2]) for i in range(0, h, 2))
    return ["", "", "@njit(**SERIAL_JIT)", f"def _round{L}(t):",
            f'    """One perfect-shuffle round of a {L} x {L} tile held as {L} vectors: rows ``2i`` and ``2i + 1`` '
            f'interleave\n    rows ``i`` and ``i + {h}``. ``log2({L})`` rounds transpose the tile."""',
            f"    return ({body})"]


def pack_tile(L):
    """``_tile{L}``: load ``L`` channel rows, ``log2(L)`` rounds, store ``L`` pixels."""
    out = ["", "", "@njit(**SERIAL_JIT)", f"def _tile{L}(v, src, dst):",
           f'    """Transpose the tile ``xf[i + k*plane + l]`` ({L} channels ``k`` x {L} pixels ``l``) into '
           '``of[o + l*C + k]``."""',
           "    xf, i, plane, nc, bits = src", "    of, o, C, nw, cbits = dst"]
    rows = [f"_row(v, xf, {_plus('i', _mul(k, 'plane'))}, {k}, nc, bits)" for k in range(L)]
    out.append("    t = (" + ",\n         ".join(rows) + ")")
    out += [f"    t = _round{L}(t)"] * (L.bit_length() - 1)
    out += [f"    _store(of, {_plus('o', _mul(k, 'C'))}, t[{k}], {k}, nw, nc, cbits)" for k in range(L)]
    return out


def generate_pack():
    tiles = ", ".join(f":func:`_tile{L}`" for L in PACK_LANES)
    rounds = ", ".join(f":func:`_round{L}`" for L in PACK_LANES)
    listing = (f"Tiles: {tiles}; their perfect-shuffle rounds: {rounds}; the masked load and store of a tile's rows: "
               ":func:`_row`, :func:`_store` (not inlined in Numba: inlined, the tiles took 24 s to compile instead of "
               "4; LLVM inlines them).")
    out = PACK_HEADER.format(listing=textwrap.fill(listing, 116)).split("\n")
    for L in PACK_LANES:
        out += pack_round(L)
    for L in PACK_LANES:
        out += pack_tile(L)
    return "\n".join(out).rstrip() + "\n"


#: Each generated module and the function that writes it.
TARGETS = {"vector_tiles.py": generate_vector, "flat_tiles.py": generate_flat, "pack_tiles.py": generate_pack}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is out of date")
    args = parser.parse_args(argv)
    stale = 0
    for name, generate in TARGETS.items():
        target, text = KERNELS / name, generate()
        if args.check:
            if (target.read_text() if target.exists() else "") != text:
                print(f"{target} is out of date: run python scripts/generate_kernels.py", file=sys.stderr)
                stale = 1
        else:
            target.write_text(text)
            print(f"wrote {target}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
