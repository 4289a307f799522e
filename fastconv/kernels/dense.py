"""Compiled matrix product for the dense (``Linear``) layer.

``nn.Linear`` used NumPy's ``@``, which calls a multithreaded BLAS. Between two
fastconv kernels that is costly on a small machine: OpenBLAS's worker threads keep
spinning for a while after each product and take the cores the next Numba kernel
needs. On the MNIST network this doubled the training step (batch 64 on 2 cores:
62-87 ms with NumPy's default BLAS threads, 31 ms with ``OPENBLAS_NUM_THREADS=1``).
One Numba kernel keeps every layer on one thread pool.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT

#: Columns of C per parallel job: a few KiB of each row of B, which stays in L1 while
#: four rows of C are updated.
_COLS = 256


@njit(**PARALLEL_JIT)
def matmul(A, B, C):
    """``C = A @ B`` for C-contiguous ``A`` (R, Q), ``B`` (Q, K) and ``C`` (R, K).

    Each job owns a block of up to 4 rows and ``_COLS`` columns of ``C`` and sweeps the
    reduction axis 4 rows of ``B`` at a time: per column, 4 loads of ``B`` feed 16
    multiply-adds into the 4 rows of ``C``. Jobs write disjoint blocks, and each element
    is summed in the same order whatever the thread count.
    """
    R, Q = A.shape
    K = B.shape[1]
    row_blocks = (R + 3) // 4
    col_blocks = (K + _COLS - 1) // _COLS
    Q4 = Q - Q % 4
    for job in prange(row_blocks * col_blocks):
        rb = job // col_blocks
        k0 = (job - rb * col_blocks) * _COLS
        k1 = min(K, k0 + _COLS)
        r0 = rb * 4
        if r0 + 4 <= R:
            c0 = C[r0, k0:k1]
            c1 = C[r0 + 1, k0:k1]
            c2 = C[r0 + 2, k0:k1]
            c3 = C[r0 + 3, k0:k1]
            c0[:] = 0
            c1[:] = 0
            c2[:] = 0
            c3[:] = 0
            a0 = A[r0]
            a1 = A[r0 + 1]
            a2 = A[r0 + 2]
            a3 = A[r0 + 3]
            for q in range(0, Q4, 4):
                b0 = B[q, k0:k1]
                b1 = B[q + 1, k0:k1]
                b2 = B[q + 2, k0:k1]
                b3 = B[q + 3, k0:k1]
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
                b0 = B[q, k0:k1]
                a00, a10, a20, a30 = a0[q], a1[q], a2[q], a3[q]
                for k in range(k1 - k0):
                    v0 = b0[k]
                    c0[k] += a00 * v0
                    c1[k] += a10 * v0
                    c2[k] += a20 * v0
                    c3[k] += a30 * v0
        else:
            for r in range(r0, R):
                c0 = C[r, k0:k1]
                c0[:] = 0
                a0 = A[r]
                for q in range(Q):
                    b0 = B[q, k0:k1]
                    a00 = a0[q]
                    for k in range(k1 - k0):
                        c0[k] += a00 * b0[k]
