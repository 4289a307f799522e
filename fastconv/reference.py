"""Pure-NumPy reference implementations of every fastconv operation.

These are deliberately slow, textbook loop nests (no Numba, no im2col, no
``einsum``): each output element is computed exactly as the definition reads, so
that they are easy to check by eye. The test suite compares the compiled kernels
against them, and the benchmarks time them as the "naive NumPy" baseline.

The functions mirror :mod:`fastconv.functional`: same names, signatures and
conventions (NCHW arrays, weights of shape ``(F, C, KH, KW)``, cross-correlation,
zero padding for convolution, ``-inf`` padding for max-pooling, ``stride`` and
``padding`` given as an int or an ``(h, w)`` pair). Every computation is done in
the dtype of the inputs. Validation is minimal: pass valid arguments.

Output size, for convolution and pooling alike::

    Ho = (H + 2 * ph - KH) // sh + 1
    Wo = (W + 2 * pw - KW) // sw + 1

Rows and columns left over at the bottom/right are dropped, as in PyTorch.
"""

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "linear",
    "linear_backward",
    "matmul",
    "cross_entropy",
]


def _pair(value):
    """Return ``value`` as a tuple ``(h, w)`` of Python ints."""
    if np.ndim(value) == 0:
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def _output_size(size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"kernel of size {kernel} does not fit the input of size {size} with padding {padding}"
        )
    return out


def _zero_pad(x, ph, pw):
    """Zero-pad the two trailing (spatial) axes of an NCHW array."""
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation (what deep-learning libraries call convolution).

    ``y[n, f, i, j] = sum(xp[n, :, i*sh : i*sh+KH, j*sw : j*sw+KW] * w[f]) + b[f]``
    where ``xp`` is ``x`` zero-padded by ``(ph, pw)`` on both sides.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input.
    w : ndarray, shape (F, C, KH, KW)
        Filters.
    b : ndarray, shape (F,), optional
        Bias, added to every output position of its filter.
    stride : int or (int, int)
        Step ``(sh, sw)`` between neighbouring windows.
    padding : int or (int, int)
        Zeros ``(ph, pw)`` added on each side of the height and width.

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        Output, in the dtype of ``x``.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho = _output_size(H, KH, sh, ph)
    Wo = _output_size(W, KW, sw, pw)
    xp = _zero_pad(x, ph, pw)
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * sh : i * sh + KH, j * sw : j * sw + KW]
                    y[n, f, i, j] = np.sum(window * w[f])
                    if b is not None:
                        y[n, f, i, j] += b[f]
    return y


def conv2d_backward_input(dy, w, input_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to its input ``x``.

    Each output gradient ``dy[n, f, i, j]`` is scattered back, weighted by
    ``w[f]``, onto the padded input window it was computed from; the padding is
    then cropped away. (The compiled kernels use the equivalent "full
    convolution with the flipped kernel" form; this one is independent of it.)

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`conv2d`.
    w : ndarray, shape (F, C, KH, KW)
        Filters used in the forward pass.
    input_shape : tuple of int, (N, C, H, W)
        Shape of the forward input ``x``.
    stride, padding : int or (int, int)
        As in the forward pass.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        In the dtype of ``dy``.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, C, H, W = (int(s) for s in input_shape)
    F, _, KH, KW = w.shape
    _, _, Ho, Wo = dy.shape
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    dxp[n, :, i * sh : i * sh + KH, j * sw : j * sw + KW] += dy[n, f, i, j] * w[f]
    return dxp[:, :, ph : ph + H, pw : pw + W].copy()


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to the filters ``w``.

    ``dw[f] = sum over n, i, j of dy[n, f, i, j] * xp[n, :, window(i, j)]``.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the output.
    x : ndarray, shape (N, C, H, W)
        Input of the forward pass.
    weight_shape : tuple of int, (F, C, KH, KW)
        Shape of the filters.
    stride, padding : int or (int, int)
        As in the forward pass.

    Returns
    -------
    dw : ndarray, shape (F, C, KH, KW)
        In the dtype of ``dy``.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    F, C, KH, KW = (int(s) for s in weight_shape)
    N, _, Ho, Wo = dy.shape
    xp = _zero_pad(x, ph, pw)
    dw = np.zeros((F, C, KH, KW), dtype=dy.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    dw[f] += dy[n, f, i, j] * xp[n, :, i * sh : i * sh + KH, j * sw : j * sw + KW]
    return dw


def conv2d_backward_bias(dy):
    """Gradient of :func:`conv2d` with respect to the bias ``b``.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)

    Returns
    -------
    db : ndarray, shape (F,)
        ``dy`` summed over the batch and spatial axes, in the dtype of ``dy``.
    """
    F = dy.shape[1]
    db = np.zeros(F, dtype=dy.dtype)
    for f in range(F):
        db[f] = np.sum(dy[:, f])
    return db


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
    db = conv2d_backward_bias(dy)
    return dx, dw, db


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D max-pooling that also returns where each maximum came from.

    Windows are laid out as for :func:`conv2d` over ``x`` padded with ``-inf``.
    Only real (unpadded) elements are scanned, in row-major order, keeping the
    first strict maximum, so ties go to the first maximum; a NaN always takes
    over, so a window holding NaN yields NaN with the index of its last NaN. A
    window whose real elements are all ``-inf`` yields ``-inf`` with the index of
    its first real element. This is exactly PyTorch's CPU rule.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
        Window size ``(KH, KW)``.
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        ``-inf`` padding on each side; at most half the kernel size.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
        Window maxima, in the dtype of ``x``.
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Flat index ``h * W + w`` of each maximum within its ``(n, c)`` plane.
    """
    KH, KW = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    if ph > KH // 2 or pw > KW // 2:
        raise ValueError(f"padding {(ph, pw)} exceeds half the kernel size {(KH, KW)}")
    N, C, H, W = x.shape
    Ho = _output_size(H, KH, sh, ph)
    Wo = _output_size(W, KW, sw, pw)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    # The window in unpadded coordinates, clipped to the real input.
                    h0, w0 = i * sh - ph, j * sw - pw
                    h1, w1 = min(h0 + KH, H), min(w0 + KW, W)
                    h0, w0 = max(h0, 0), max(w0, 0)
                    window = x[n, c, h0:h1, w0:w1]
                    nan_positions = np.flatnonzero(np.isnan(window))
                    if nan_positions.size:
                        k = nan_positions[-1]
                    else:
                        k = np.argmax(window)  # first occurrence of the maximum
                    r, s = divmod(int(k), w1 - w0)
                    y[n, c, i, j] = window[r, s]
                    indices[n, c, i, j] = (h0 + r) * W + (w0 + s)
    return y, indices


def max_pool2d_backward(dy, indices, input_shape):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Each ``dy[n, c, i, j]`` is added to the input element that won its window;
    an element that won several (overlapping) windows receives the sum.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo)
    indices : ndarray of int, shape (N, C, Ho, Wo)
        As returned by :func:`max_pool2d`.
    input_shape : tuple of int, (N, C, H, W)

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        In the dtype of ``dy``.
    """
    N, C, H, W = (int(s) for s in input_shape)
    _, _, Ho, Wo = dy.shape
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    h, w = divmod(int(indices[n, c, i, j]), W)
                    dx[n, c, h, w] += dy[n, c, i, j]
    return dx


def relu(x):
    """``max(x, 0)`` elementwise; NaN stays NaN (as in PyTorch)."""
    y = np.empty_like(x)
    for i in np.ndindex(x.shape):
        y[i] = x[i] if (x[i] > 0 or x[i] != x[i]) else 0
    return y


def relu_backward(dy, x):
    """Gradient of :func:`relu`: ``dy`` where ``x > 0`` or ``x`` is NaN, else 0."""
    dx = np.empty_like(x)
    for i in np.ndindex(x.shape):
        dx[i] = dy[i] if (x[i] > 0 or x[i] != x[i]) else 0
    return dx


def matmul(a, b):
    """``a @ b`` of 2-D arrays: each element the sum over ``k`` of ``a[i, k] * b[k, j]``, in order."""
    M, K = a.shape
    N = b.shape[1]
    out = np.zeros((M, N), dtype=a.dtype)
    for i in range(M):
        for j in range(N):
            acc = a.dtype.type(0)
            for k in range(K):
                acc += a[i, k] * b[k, j]
            out[i, j] = acc
    return out


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` over the last axis of ``x`` (any leading axes)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = matmul(x2, np.ascontiguousarray(weight.T))
    if bias is not None:
        out = out + bias
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def linear_backward(dy, x, weight):
    """``(dx, dweight, dbias)`` of :func:`linear`."""
    d2 = dy.reshape(-1, weight.shape[0])
    x2 = x.reshape(-1, weight.shape[1])
    dx = matmul(d2, weight).reshape(x.shape)
    dw = matmul(np.ascontiguousarray(d2.T), x2)
    db = np.zeros(weight.shape[0], dtype=dy.dtype)
    for n in range(d2.shape[0]):
        db += d2[n]
    return dx, dw, db


def cross_entropy(logits, target, reduction="mean"):
    """``-log_softmax(logits[n])[target[n]]``, averaged (or summed) over ``n``, computed in float64."""
    total = 0.0
    for n in range(logits.shape[0]):
        row = logits[n].astype(np.float64)
        m = row.max()
        total += -(row[int(target[n])] - m - np.log(np.sum(np.exp(row - m))))
    return total / logits.shape[0] if reduction == "mean" else total
