"""The matmul strategy: matrix products for the dense (``Linear``) layer and 1x1 convolutions.

``nn.Linear`` used NumPy's ``@``, which calls a multithreaded BLAS. Between two
fastconv kernels that is costly on a small machine: OpenBLAS's worker threads keep
spinning for a while after each product and take the cores the next Numba kernel
needs. On the MNIST network this doubled the training step (batch 64 on 2 cores:
62-87 ms with NumPy's default BLAS threads, 31 ms with ``OPENBLAS_NUM_THREADS=1``).
One Numba kernel keeps every layer on one thread pool.

Kernels
-------
- :func:`matmul_nn`: ``C[n] = init + A @ B[n]``.
- :func:`matmul_nt`: ``C = sum_n A[n] @ B[n].T``.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT

#: Columns of C per parallel job: a few KiB of each row of B, which stays in L1 while
#: four rows of C are updated.
_COLS = 256


@njit(**PARALLEL_JIT)
def matmul_nn(A, B, init, C):
    """``C[n] = init[:, None] + A @ B[n]`` for C-contiguous ``A`` (R, Q), ``B`` (N, Q, K),
    ``init`` (R,) and ``C`` (N, R, K).

    The dense layer's products (``N = 1``, ``init`` zero) and, per image, a 1x1
    convolution in NCHW (``W @ x[n]`` plus the bias; its input gradient ``W.T @ dy[n]``).

    Each job owns a block of up to 4 rows and ``_COLS`` columns of ``C`` and sweeps the
    reduction axis 4 rows of ``B`` at a time: per column, 4 loads of ``B`` feed 16
    multiply-adds into the 4 rows of ``C``. Jobs write disjoint blocks, and each element
    is summed in the same order whatever the thread count.
    """
    R, Q = A.shape
    N = B.shape[0]
    K = B.shape[2]
    row_blocks = (R + 3) // 4
    col_blocks = (K + _COLS - 1) // _COLS
    Q4 = Q - Q % 4
    for job in prange(N * row_blocks * col_blocks):
        n = job // (row_blocks * col_blocks)
        rest = job - n * row_blocks * col_blocks
        rb = rest // col_blocks
        k0 = (rest - rb * col_blocks) * _COLS
        Bn = B[n]
        Cn = C[n]
        k1 = min(K, k0 + _COLS)
        r0 = rb * 4
        if r0 + 4 <= R:
            c0 = Cn[r0, k0:k1]
            c1 = Cn[r0 + 1, k0:k1]
            c2 = Cn[r0 + 2, k0:k1]
            c3 = Cn[r0 + 3, k0:k1]
            c0[:] = init[r0]
            c1[:] = init[r0 + 1]
            c2[:] = init[r0 + 2]
            c3[:] = init[r0 + 3]
            a0 = A[r0]
            a1 = A[r0 + 1]
            a2 = A[r0 + 2]
            a3 = A[r0 + 3]
            for q in range(0, Q4, 4):
                b0 = Bn[q, k0:k1]
                b1 = Bn[q + 1, k0:k1]
                b2 = Bn[q + 2, k0:k1]
                b3 = Bn[q + 3, k0:k1]
                a00, a01, a02, a03 = a0[q], a0[q + 1], a0[q + 2], a0[q + 3]
                a10, a11, a12, a13 = a1[q], a1[q + 1], a1[q + 2], a1[q + 3]
                a20, a21, a22, a23 = a2[q], a2[q + 1], a2[q + 2], a2[q + 3]
                a30, a31, a32, a33 = a3[q], a3[q + 1], a3[q + 2], a3[q + 3]
                for k in range(k1 - k0):
                    v0 = b0[k]
                    v1 = b1[k]
                    v2 = b2[k]
                    v3 = b3[k]
                    c0[k] += a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
                    c1[k] += a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
                    c2[k] += a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3
                    c3[k] += a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3
            for q in range(Q4, Q):
                b0 = Bn[q, k0:k1]
                a00, a10, a20, a30 = a0[q], a1[q], a2[q], a3[q]
                for k in range(k1 - k0):
                    v0 = b0[k]
                    c0[k] += a00 * v0
                    c1[k] += a10 * v0
                    c2[k] += a20 * v0
                    c3[k] += a30 * v0
        else:
            for r in range(r0, R):
                c0 = Cn[r, k0:k1]
                c0[:] = init[r]
                a0 = A[r]
                for q in range(Q):
                    b0 = Bn[q, k0:k1]
                    a00 = a0[q]
                    for k in range(k1 - k0):
                        c0[k] += a00 * b0[k]


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
