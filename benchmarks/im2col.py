"""NumPy im2col + BLAS: the fair "fast NumPy" baseline of the benchmarks.

This is the usual way to make convolution fast in pure NumPy (the cs231n
``fast_layers`` idea, written for arbitrary stride and padding): gather the input
windows into a column matrix (a strided ``sliding_window_view`` and one copy), then
let BLAS do the arithmetic in one big matrix product. The backward passes are the
same GEMM transposed; the input gradient scatters the columns back with ``k*k``
strided slice additions (col2im). Max-pool uses the same strided windows with a
running maximum (``k*k`` vectorised passes), and its backward one ``np.bincount``.

It is written as a best effort, not a straw man: each choice below was measured
against its obvious alternatives on the benchmark cases (explicit ``k*k`` slice
copies for im2col, ``np.tensordot`` or a stacked ``np.matmul`` plus a sum for the
weight gradient, one GEMM per image versus one GEMM per batch, ``np.argmax`` over
a copied window axis, ``np.add.at``) and the fastest kept; where the best layout
depends on the layer shape, both are here (see :func:`_use_per_image_gemm`). Only
NumPy is used; the matrix products run in the BLAS NumPy was built with
(OpenBLAS for the PyPI wheels), with its own thread pool.

All functions follow the signatures of :mod:`fastconv.functional` (NCHW arrays,
weights ``(F, C, KH, KW)``, cross-correlation, zero padding for conv and ``-inf``
padding for max-pool, PyTorch's ``return_indices`` convention) but do no input
validation beyond what the benchmarks need: they are a baseline, not an API.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "max_pool2d",
    "max_pool2d_backward",
]


def _pair(value):
    """Return ``(value, value)`` for an int, or the pair itself as ints."""
    if isinstance(value, (tuple, list)):
        h, w = value
        return int(h), int(w)
    return int(value), int(value)


def _out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def _pad_input(x, ph, pw, fill):
    """Copy ``x`` (N, C, H, W) into a (N, C, H + 2ph, W + 2pw) array filled with ``fill``."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def _windows(x, kh, kw, sh, sw, ph, pw):
    """Strided view of the convolution windows of zero-padded ``x``.

    Returns
    -------
    windows : ndarray view, shape (N, C, Ho, Wo, kh, kw)
        ``windows[n, c, oh, ow, i, j] == xpad[n, c, oh*sh + i, ow*sw + j]``.
    """
    xp = _pad_input(x, ph, pw, 0)
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _use_per_image_gemm(c, kh, kw, f):
    """Which GEMM layout is faster (measured on the benchmark cases).

    With few column rows (``C*kh*kw < F``, first layers such as C = 1 or 3) the
    output is the biggest array: one GEMM per image writes it directly in NCHW
    order. Otherwise one GEMM over the whole batch (the layout
    ``(C*kh*kw, N*Ho*Wo)``) is faster, even though its output must be
    transposed back to NCHW. The weight gradient uses the same test to choose
    its operand order.
    """
    return c * kh * kw < f


def _im2col_per_image(x, kh, kw, sh, sw, ph, pw):
    """Columns as (N, C*kh*kw, Ho*Wo): ``w.reshape(F, -1) @ cols[n]`` is image n's output."""
    n, c = x.shape[:2]
    win = _windows(x, kh, kw, sh, sw, ph, pw)
    ho, wo = win.shape[2:4]
    # The reshape of the transposed view is the one copy that gathers the windows.
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)


def _im2col_batch(x, kh, kw, sh, sw, ph, pw):
    """Columns as (C*kh*kw, N*Ho*Wo): ``w.reshape(F, -1) @ cols`` is the whole batch's output."""
    n, c = x.shape[:2]
    win = _windows(x, kh, kw, sh, sw, ph, pw)
    ho, wo = win.shape[2:4]
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * ho * wo)


def _col2im(dcols, x_shape, kh, kw, sh, sw, ph, pw, per_image):
    """Adjoint of the im2col gathers: add the columns back onto the input.

    Parameters
    ----------
    dcols : ndarray
        Shape (N, C*kh*kw, Ho*Wo) if ``per_image`` else (C*kh*kw, N*Ho*Wo).
    x_shape : tuple of int
        ``(N, C, H, W)``.
    kh, kw, sh, sw, ph, pw : int
    per_image : bool

    Returns
    -------
    dx : ndarray, shape x_shape, C-contiguous
    """
    n, c, h, w = x_shape
    ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    if per_image:
        dcols = dcols.reshape(n, c, kh, kw, ho, wo)
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    else:
        # Accumulate in (C, N, ...) order so each slice addition reads dcols contiguously.
        dcols = dcols.reshape(c, kh, kw, n, ho, wo).transpose(3, 0, 1, 2, 4, 5)
        dxp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype).transpose(1, 0, 2, 3)
    # k*k strided slice additions, each over the whole batch at once.
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += dcols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w])


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation by im2col and GEMM.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (F, C, KH, KW)
    b : ndarray, shape (F,), optional
    stride, padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        ``Ho = (H + 2*ph - KH) // sh + 1``, likewise ``Wo``.
    """
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, _, h, wd = x.shape
    f, c, kh, kw = w.shape
    ho, wo = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    w2 = w.reshape(f, c * kh * kw)
    if _use_per_image_gemm(c, kh, kw, f):
        # (F, CKK) @ (N, CKK, HoWo) -> (N, F, HoWo): already NCHW.
        y = np.matmul(w2, _im2col_per_image(x, kh, kw, sh, sw, ph, pw))
        if b is not None:
            y += b.reshape(1, f, 1)
        return y.reshape(n, f, ho, wo)
    y = w2 @ _im2col_batch(x, kh, kw, sh, sw, ph, pw)  # (F, N*HoWo)
    if b is not None:
        y += b.reshape(f, 1)
    return np.ascontiguousarray(y.reshape(f, n, ho, wo).transpose(1, 0, 2, 3))


def conv2d_backward_input(dy, w, input_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to its input (GEMM, then col2im).

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
    w : ndarray, shape (F, C, KH, KW)
    input_shape : tuple of int
        ``(N, C, H, W)``.
    stride, padding : int or (int, int)

    Returns
    -------
    dx : ndarray, shape input_shape
    """
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, f, ho, wo = dy.shape
    _, c, kh, kw = w.shape
    w2t = w.reshape(f, c * kh * kw).T
    per_image = _use_per_image_gemm(c, kh, kw, f)
    if per_image:
        dcols = np.matmul(w2t, dy.reshape(n, f, ho * wo))  # (N, CKK, HoWo)
    else:
        dcols = w2t @ dy.transpose(1, 0, 2, 3).reshape(f, n * ho * wo)  # (CKK, N*HoWo)
    return _col2im(dcols, tuple(input_shape), kh, kw, sh, sw, ph, pw, per_image)


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to its weight (im2col, then one GEMM).

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
    x : ndarray, shape (N, C, H, W)
    weight_shape : tuple of int
        ``(F, C, KH, KW)``.
    stride, padding : int or (int, int)

    Returns
    -------
    dw : ndarray, shape weight_shape
    """
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    f, c, kh, kw = weight_shape
    cols = _im2col_batch(x, kh, kw, sh, sw, ph, pw)  # (CKK, N*HoWo)
    dy2 = dy.transpose(1, 0, 2, 3).reshape(f, -1)  # (F, N*HoWo)
    # One GEMM with the batch sum folded into its long reduction. OpenBLAS is several
    # times faster (measured) with the larger of F and C*kh*kw as the row dimension.
    if _use_per_image_gemm(c, kh, kw, f):
        dw = dy2 @ cols.T
    else:
        dw = np.ascontiguousarray((cols @ dy2.T).T)
    return dw.reshape(tuple(weight_shape))


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """All three gradients of :func:`conv2d`.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (F, C, KH, KW)
    stride, padding : int or (int, int)

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C, KH, KW)
    db : ndarray, shape (F,)
    """
    dx = conv2d_backward_input(dy, w, x.shape, stride, padding)
    dw = conv2d_backward_weight(dy, x, w.shape, stride, padding)
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max-pool with winner indices, by a running maximum over the window offsets.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        ``-inf`` padding, at most half the kernel.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Flat index ``h*W + w`` of each winner in its (n, c) input plane. Ties go
        to the first maximum in row-major window order; a NaN wins, and among
        NaNs the last one (PyTorch CPU's rule).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    n, c, h, wd = x.shape
    ho, wo = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    xp = _pad_input(x, ph, pw, -np.inf)
    # Window-origin flat index (in the unpadded plane) of each output position.
    origin = (np.arange(ho) * sh - ph)[:, None] * wd + (np.arange(wo) * sw - pw)[None, :]

    def window(i, j):
        return xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]

    y = window(0, 0).copy()
    idx = np.broadcast_to(origin, y.shape).astype(np.int64)
    wins = np.empty(y.shape, dtype=bool)
    nan = np.empty(y.shape, dtype=bool)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                continue
            v = window(i, j)
            np.greater(v, y, out=wins)  # strict: ties keep the first maximum
            np.isnan(v, out=nan)
            wins |= nan  # a NaN always wins, so the last NaN is kept
            np.copyto(y, v, where=wins)
            np.copyto(idx, origin + (i * wd + j), where=wins)
    return y, idx


def max_pool2d_backward(dy, indices, input_shape):
    """Route each output gradient to its winner, summing where windows overlap.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo)
    indices : ndarray of int, shape (N, C, Ho, Wo)
        As returned by :func:`max_pool2d`.
    input_shape : tuple of int
        ``(N, C, H, W)``.

    Returns
    -------
    dx : ndarray, shape input_shape, dtype of ``dy``
    """
    n, c, h, w = input_shape
    plane = h * w
    # One scatter-add over all planes: offset each plane's indices into the
    # flattened (N*C*H*W) input. bincount sums duplicates (overlapping windows)
    # and is far faster than np.add.at; it accumulates in float64.
    offsets = (np.arange(n * c, dtype=np.int64) * plane).reshape(n, c, 1, 1)
    flat = (indices + offsets).ravel()
    dx = np.bincount(flat, weights=dy.ravel(), minlength=n * c * plane)
    return dx.astype(dy.dtype, copy=False).reshape(input_shape)
