"""The filter-vector strategy: the vector axis is the filter axis (short receptive fields).

Only ``@njit`` code; :mod:`fastconv.plan` decides when it runs.

Kernel
------
- :func:`filter_vector_forward`: forward pass for layers whose receptive field
  ``KH * KW * C`` is too short to fill a vector and whose stride is above one (a first
  layer such as a 7x7 stride-2 stem on RGB): each output pixel's ``F`` accumulators form a
  contiguous row, updated by ``x * w[i, j, c, :]`` for every tap.
"""

import numpy as np
from numba import njit, prange

from ..config import PARALLEL_JIT


@njit(**PARALLEL_JIT)
def filter_vector_forward(xp, wk, b, sh, sw, out):
    """Direct cross-correlation for short reductions (few input channels, small kernels).

    Same result as :func:`fastconv.kernels.tiled.tiled_forward_4x4`, for layers whose receptive field
    ``KH * KW * C`` is too short to fill a vector (the first layer of a network: C = 1
    or 3). Here the vector axis is the filter axis instead: each output pixel's ``F``
    accumulators form a contiguous row, updated by ``x * w[i, j, c, :]`` for every tap.

    Parameters
    ----------
    xp : (N, Hp, Wp, C) array
        Zero-padded input, NHWC.
    wk : (KH, KW, C, F) array
        Weights with the filter axis last.
    b : (F,) array
        Bias.
    sh, sw : int
        Strides.
    out : (N, F, Ho, Wo) array
        Output, NCHW, fully overwritten.
    """
    N, Hp, Wp, C = xp.shape
    KH, KW, _, F = wk.shape
    Ho = out.shape[2]
    Wo = out.shape[3]
    for job in prange(N * Ho):
        n = job // Ho
        oh = job - n * Ho
        acc = np.empty((Wo, F), dtype=out.dtype)
        for ow in range(Wo):
            acc[ow, :] = b
        for i in range(KH):
            xrow = xp[n, oh * sh + i]
            for j in range(KW):
                wtap = wk[i, j]
                for ow in range(Wo):
                    xpix = xrow[ow * sw + j]
                    arow = acc[ow]
                    for c in range(C):
                        xv = xpix[c]
                        wrow = wtap[c]
                        for f in range(F):
                            arow[f] += xv * wrow[f]
        for f in range(F):
            orow = out[n, f, oh]
            for ow in range(Wo):
                orow[ow] = acc[ow, f]
