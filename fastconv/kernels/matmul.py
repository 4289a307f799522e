"""The matmul strategy: matrix products for the dense (``Linear``) layer and 1x1 convolutions.

``nn.Linear`` used NumPy's ``@``, which calls a multithreaded BLAS. Between two
fastconv kernels that is costly on a small machine: OpenBLAS's worker threads keep
spinning for a while after each product and take the cores the next Numba kernel
needs. On the MNIST network this doubled the training step (batch 64 on 2 cores:
62-87 ms with NumPy's default BLAS threads, 31 ms with ``OPENBLAS_NUM_THREADS=1``).
One Numba kernel keeps every layer on one thread pool.

Kernels
-------
- :func:`matmul_nn`: ``C[n] = init + A @ B[n]``, register tiles of 8 (AVX2: 4) rows x 3 vectors
  (``vector_tiles._mm_tile_8``).
- :func:`matmul_nt`: ``C = sum_n A[n] @ B[n].T``.

Helpers: :func:`_mm_rows` and :func:`_mm_rows_full` (the tile of the register file's height, masked or for
3 whole vectors; overloads made by :func:`_rows_overload`), :func:`_mm_tile_height`.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import lanes, vzero
from .vector_tiles import _mm_tile_1, _mm_tile_4, _mm_tile_4_full, _mm_tile_8, _mm_tile_8_full

#: Row blocks per parallel job at most: a job's rows of A (this many tiles' heights x the reduction axis) stay in
#: L2 while it walks its strips of 3 vectors of B's columns, each strip (Q x 3 vectors) reused from L1 by all of
#: the job's row blocks.
_GROUP = 8
#: Jobs wanted at least (for the load balance): a product of few row groups splits its columns into this many.
_JOBS = 16


def _mm_rows(z, src, dst):
    """The matmul tile of as many rows as ``z``'s register file holds (8 with 32 vector registers, 4 with 16)."""


def _mm_rows_full(z, src, dst):
    """:func:`_mm_rows` for 3 vectors of columns all within ``K`` (plain loads and stores)."""


def _rows_overload(tile8, tile4):
    def typer(z, src, dst):
        tile = tile8 if z.count * z.dtype.bitwidth == 512 else tile4

        def impl(z, src, dst):
            tile(z, src, dst)

        return impl

    return typer


overload(_mm_rows, jit_options=SERIAL_JIT)(_rows_overload(_mm_tile_8, _mm_tile_4))
overload(_mm_rows_full, jit_options=SERIAL_JIT)(_rows_overload(_mm_tile_8_full, _mm_tile_4_full))


def _mm_tile_height(z):
    """Rows of :func:`_mm_rows`'s tile."""


@overload(_mm_tile_height, jit_options=SERIAL_JIT)
def _mm_tile_height_for_lanes(z):
    rows = 8 if z.count * z.dtype.bitwidth == 512 else 4
    return lambda z: rows


@njit(**PARALLEL_JIT)
def matmul_nn(width, A, B, init, C):
    """``C[n] = init[:, None] + A @ B[n]`` for C-contiguous ``A`` (R, Q), ``B`` (N, Q, K),
    ``init`` (R,) and ``C`` (N, R, K), with vectors of register ``width``.

    The dense layer's products (``N = 1``, ``init`` zero) and, per image, a 1x1
    convolution in NCHW (``W @ x[n]`` plus the bias; its input gradient ``W.T @ dy[n]``).

    Each job owns a group of row blocks (a tile's height each: 8 with 32 vector registers, 4 with 16) of one
    image (and a range of its columns when there are fewer than ``_JOBS`` groups): for each strip of 3 vectors of
    columns of ``B`` it runs the tile of every row block, which keeps its
    rows x 3 vectors in registers over the whole reduction axis (three loads of ``B`` and one broadcast of ``A``
    per row each step; ``vector_tiles._mm_tile_8``), masked past ``K``; the rows a tile leaves go one at a time.
    So ``B`` is read once per group (jobs of one row block and a few columns read it once per row block: 32
    times for the 128 rows of the MNIST network's dense layer). Jobs write disjoint rows, and each element is
    summed in the same order whatever the thread count.
    """
    R, Q = A.shape
    N = B.shape[0]
    K = B.shape[2]
    z = vzero(width, C)
    L = lanes(z)
    RT = _mm_tile_height(z)
    full = (1 << L) - 1
    row_blocks = (R + RT - 1) // RT
    group = min(_GROUP, row_blocks)
    groups = (row_blocks + group - 1) // group
    strips = (K + 3 * L - 1) // (3 * L)
    chunks = min(strips, max(1, -(-_JOBS // (N * groups))))  # split the columns too when there are few row groups
    af = A.reshape(A.size)
    bf = B.reshape(B.size)
    cf = C.reshape(C.size)
    for job in prange(N * groups * chunks):
        n = job // (groups * chunks)
        g = (job - n * groups * chunks) // chunks
        ch = job - (n * groups + g) * chunks
        rb0 = g * group
        for k0 in range(strips * ch // chunks * 3 * L, strips * (ch + 1) // chunks * 3 * L, 3 * L):
            left = K - k0
            masks = (full if left >= L else (1 << left) - 1,
                     full if left >= 2 * L else (1 << min(L, max(0, left - L))) - 1,
                     full if left >= 3 * L else (1 << min(L, max(0, left - 2 * L))) - 1)
            bo = n * Q * K + k0
            for rb in range(rb0, min(row_blocks, rb0 + group)):
                r0 = rb * RT
                if r0 + RT <= R and left >= 3 * L:
                    _mm_rows_full(z, (af, r0 * Q, Q, bf, bo, K, masks), (cf, (n * R + r0) * K + k0, init, r0))
                elif r0 + RT <= R:
                    _mm_rows(z, (af, r0 * Q, Q, bf, bo, K, masks), (cf, (n * R + r0) * K + k0, init, r0))
                else:
                    for r in range(r0, R):
                        _mm_tile_1(z, (af, r * Q, Q, bf, bo, K, masks), (cf, (n * R + r) * K + k0, init, r))


#: Reduction-axis chunk of :func:`matmul_nt`: 4 rows of A and 4 rows of B of this
#: length (2 x 16 KiB in float32) stay in L1 while every tile of one row block is done.
_CHUNK = 1024


@njit(**PARALLEL_JIT)
def matmul_nt(A, B, C):
    """``C = sum_n A[n] @ B[n].T`` for C-contiguous ``A`` (N, R, Q), ``B`` (N, K, Q) and ``C`` (R, K).

    The dense layer's forward pass ``x @ weight.T`` (``N = 1``) and a 1x1 convolution's
    weight gradient ``sum_n dy[n] @ x[n].T`` in NCHW: both operands are contiguous along
    the reduction axis, so each element of ``C`` is a sum of dot products of contiguous
    rows.
    Tiles of 4 x 4 dot products share their loads (8 vector loads per 16 vector
    multiply-adds); the reduction axis is cut into chunks of ``_CHUNK`` so a tile's rows
    stay in L1, and each chunk's 16 sums are added into ``C`` (images in order). With
    ``matmul_nn(A, B.T)`` the dense layer needed a transposed copy of the weights on every
    call. Each job owns 4 rows of ``C``; the sums run in the same order whatever the
    thread count.
    """
    N, R, Q = A.shape
    K = B.shape[1]
    K4 = K - K % 4
    zero = np.zeros(1, dtype=C.dtype)[0]
    for rb in prange((R + 3) // 4):
        r0 = rb * 4
        r1 = min(R, r0 + 4)
        C[r0:r1, :] = 0
        for n in range(N):
            An = A[n]
            Bn = B[n]
            for q0 in range(0, Q, _CHUNK):
                q1 = min(Q, q0 + _CHUNK)
                if r1 - r0 == 4:
                    a0 = An[r0, q0:q1]
                    a1 = An[r0 + 1, q0:q1]
                    a2 = An[r0 + 2, q0:q1]
                    a3 = An[r0 + 3, q0:q1]
                    for k0 in range(0, K4, 4):
                        b0 = Bn[k0, q0:q1]
                        b1 = Bn[k0 + 1, q0:q1]
                        b2 = Bn[k0 + 2, q0:q1]
                        b3 = Bn[k0 + 3, q0:q1]
                        s00 = s01 = s02 = s03 = zero
                        s10 = s11 = s12 = s13 = zero
                        s20 = s21 = s22 = s23 = zero
                        s30 = s31 = s32 = s33 = zero
                        for q in range(q1 - q0):
                            u0 = a0[q]
                            u1 = a1[q]
                            u2 = a2[q]
                            u3 = a3[q]
                            v0 = b0[q]
                            v1 = b1[q]
                            v2 = b2[q]
                            v3 = b3[q]
                            s00 += u0 * v0
                            s01 += u0 * v1
                            s02 += u0 * v2
                            s03 += u0 * v3
                            s10 += u1 * v0
                            s11 += u1 * v1
                            s12 += u1 * v2
                            s13 += u1 * v3
                            s20 += u2 * v0
                            s21 += u2 * v1
                            s22 += u2 * v2
                            s23 += u2 * v3
                            s30 += u3 * v0
                            s31 += u3 * v1
                            s32 += u3 * v2
                            s33 += u3 * v3
                        C[r0, k0] += s00
                        C[r0, k0 + 1] += s01
                        C[r0, k0 + 2] += s02
                        C[r0, k0 + 3] += s03
                        C[r0 + 1, k0] += s10
                        C[r0 + 1, k0 + 1] += s11
                        C[r0 + 1, k0 + 2] += s12
                        C[r0 + 1, k0 + 3] += s13
                        C[r0 + 2, k0] += s20
                        C[r0 + 2, k0 + 1] += s21
                        C[r0 + 2, k0 + 2] += s22
                        C[r0 + 2, k0 + 3] += s23
                        C[r0 + 3, k0] += s30
                        C[r0 + 3, k0 + 1] += s31
                        C[r0 + 3, k0 + 2] += s32
                        C[r0 + 3, k0 + 3] += s33
                    k_lo = K4
                else:
                    k_lo = 0
                # What the 4 x 4 tiles left (the last columns; every column of a last
                # block of fewer than 4 rows): one dot product at a time.
                for r in range(r0, r1):
                    a0 = An[r, q0:q1]
                    for k in range(k_lo, K):
                        b0 = Bn[k, q0:q1]
                        s = zero
                        for q in range(q1 - q0):
                            s += a0[q] * b0[q]
                        C[r, k] += s
