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

Rows and columns left over at the bottom/right are dropped, as in PyTorch. Pooling's
``dilation`` and ``ceil_mode`` follow PyTorch's rule (:func:`_pool_output_size`);
adaptive pooling PyTorch's windows ``[floor(i*H/Ho), ceil((i+1)*H/Ho))``.
"""

import math

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv_transpose2d_backward_input",
    "conv_transpose2d_backward_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d",
    "relu",
    "relu_backward",
    "linear",
    "linear_backward",
    "matmul",
    "cross_entropy",
    "leaky_relu",
    "leaky_relu_backward",
    "elu",
    "elu_backward",
    "gelu",
    "gelu_backward",
    "silu",
    "silu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    "mse_loss",
    "l1_loss",
    "nll_loss",
    "binary_cross_entropy_with_logits",
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


def _windows(shape, w_shape, stride, padding, dilation, groups):
    """The receptive fields of a convolution: yields ``(n, f, i, j, window)``.

    ``window`` indexes the zero-padded input: the ``C / groups`` channels of filter
    ``f``'s group and the taps ``i*sh + kh*dh``, ``j*sw + kw*dw`` (``kh < KH``, ``kw < KW``).
    """
    C = int(shape[1])
    F, Cg = int(w_shape[0]), int(w_shape[1])
    if C % groups or F % groups or Cg * groups != C:
        raise ValueError(f"groups={groups} does not split x's {C} channels into w's {Cg} per group and {F} filters")
    N, _, Ho, Wo = _output_shape(shape, w_shape, stride, padding, dilation)
    per_group = F // groups
    for n in range(N):
        for f in range(F):
            g = f // per_group
            for i in range(Ho):
                for j in range(Wo):
                    yield n, f, i, j, (n, slice(g * Cg, (g + 1) * Cg)) + _taps(i, j, w_shape, stride, dilation)


def _taps(i, j, w_shape, stride, dilation):
    """The rows and columns ``(i*sh + kh*dh, j*sw + kw*dw)`` of a padded plane that window ``(i, j)`` covers."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    KH, KW = int(w_shape[2]), int(w_shape[3])
    return slice(i * sh, i * sh + dh * (KH - 1) + 1, dh), slice(j * sw, j * sw + dw * (KW - 1) + 1, dw)


def _output_shape(shape, w_shape, stride, padding, dilation):
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    ph, pw = _pair(padding)
    KH, KW = int(w_shape[2]), int(w_shape[3])
    Ho = _output_size(int(shape[2]), dh * (KH - 1) + 1, sh, ph)
    Wo = _output_size(int(shape[3]), dw * (KW - 1) + 1, sw, pw)
    return int(shape[0]), int(w_shape[0]), Ho, Wo


def conv_padding(padding, kernel_size, dilation=1):
    """``((top, bottom), (left, right))``: the zeros a convolution's ``padding`` adds, as PyTorch resolves it.

    An int or ``(ph, pw)`` pads both sides alike; ``'valid'`` pads nothing; ``'same'`` pads
    ``d * (k - 1)`` per axis in total, ``total // 2`` on the top (left) and the rest on the
    bottom (right). (The functions here take numeric padding; the tests pad explicitly.)
    """
    if isinstance(padding, str):
        totals = [0, 0] if padding == "valid" else [d * (k - 1) for d, k in zip(_pair(dilation), _pair(kernel_size))]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in _pair(padding))


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation (what deep-learning libraries call convolution).

    ``y[n, f, i, j] = b[f] + sum_{c, kh, kw} xp[n, g*Cg + c, i*sh + kh*dh, j*sw + kw*dw] * w[f, c, kh, kw]``
    where ``xp`` is ``x`` zero-padded by ``(ph, pw)`` on both sides, ``Cg = C / groups``
    and ``g = f // (F / groups)`` is filter ``f``'s group.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input.
    w : ndarray, shape (F, C / groups, KH, KW)
        Filters.
    b : ndarray, shape (F,), optional
        Bias, added to every output position of its filter.
    stride : int or (int, int)
        Step ``(sh, sw)`` between neighbouring windows.
    padding : int or (int, int)
        Zeros ``(ph, pw)`` added on each side of the height and width.
    dilation : int or (int, int)
        Spacing ``(dh, dw)`` between the taps of the kernel.
    groups : int
        Channels and filters split into this many groups; a filter sees its group's channels only.

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        ``Ho = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1``, likewise ``Wo``; in the dtype of ``x``.
    """
    ph, pw = _pair(padding)
    xp = _zero_pad(x, ph, pw)
    y = np.zeros(_output_shape(x.shape, w.shape, stride, padding, dilation), dtype=x.dtype)
    for n, f, i, j, window in _windows(x.shape, w.shape, stride, padding, dilation, groups):
        y[n, f, i, j] = np.sum(xp[window] * w[f])
        if b is not None:
            y[n, f, i, j] += b[f]
    return y


def conv2d_backward_input(dy, w, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`conv2d` with respect to its input ``x``.

    Each output gradient ``dy[n, f, i, j]`` is scattered back, weighted by
    ``w[f]``, onto the padded input window it was computed from; the padding is
    then cropped away. (The compiled kernels use the equivalent "full
    convolution with the flipped kernel" form; this one is independent of it.)

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`conv2d`.
    w : ndarray, shape (F, C / groups, KH, KW)
        Filters used in the forward pass.
    input_shape : tuple of int, (N, C, H, W)
        Shape of the forward input ``x``.
    stride, padding, dilation, groups
        As in the forward pass.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        In the dtype of ``dy``.
    """
    ph, pw = _pair(padding)
    N, C, H, W = (int(s) for s in input_shape)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for n, f, i, j, window in _windows(input_shape, w.shape, stride, padding, dilation, groups):
        dxp[window] += dy[n, f, i, j] * w[f]
    return dxp[:, :, ph : ph + H, pw : pw + W].copy()


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`conv2d` with respect to the filters ``w``.

    ``dw[f] = sum over n, i, j of dy[n, f, i, j] * xp[window(n, f, i, j)]``.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the output.
    x : ndarray, shape (N, C, H, W)
        Input of the forward pass.
    weight_shape : tuple of int, (F, C / groups, KH, KW)
        Shape of the filters.
    stride, padding, dilation, groups
        As in the forward pass.

    Returns
    -------
    dw : ndarray, shape (F, C / groups, KH, KW)
        In the dtype of ``dy``.
    """
    ph, pw = _pair(padding)
    xp = _zero_pad(x, ph, pw)
    dw = np.zeros(tuple(int(s) for s in weight_shape), dtype=dy.dtype)
    for n, f, i, j, window in _windows(x.shape, weight_shape, stride, padding, dilation, groups):
        dw[f] += dy[n, f, i, j] * xp[window]
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


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """All three gradients of :func:`conv2d`.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (F, C / groups, KH, KW)
    stride, padding, dilation, groups
        As in the forward pass.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C / groups, KH, KW)
    db : ndarray, shape (F,)
    """
    dx = conv2d_backward_input(dy, w, x.shape, stride, padding, dilation, groups)
    dw = conv2d_backward_weight(dy, x, w.shape, stride, padding, dilation, groups)
    db = conv2d_backward_bias(dy)
    return dx, dw, db


def conv_transpose2d_output_shape(x_shape, w_shape, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """``(N, C_out, Ho, Wo)`` of :func:`conv_transpose2d`: ``Ho = (H-1)*sh - 2*ph + dh*(KH-1) + oph + 1``."""
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = (_pair(v) for v in (stride, padding, output_padding, dilation))
    N, C, H, W = (int(s) for s in x_shape)
    Cin, Cg, KH, KW = (int(s) for s in w_shape)
    if Cin != C or C % groups:
        raise ValueError(f"w's {Cin} input channels and groups={groups} do not fit x's {C} channels")
    Ho = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oh + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (KW - 1) + ow + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"output size {(Ho, Wo)} is too small")
    return N, Cg * groups, Ho, Wo


def _scatter_windows(x_shape, w_shape, stride, dilation, groups):
    """The output windows of a transposed convolution: yields ``(n, c, i, j, window)``.

    Input pixel ``x[n, c, i, j]`` (channel ``c`` of group ``g``) adds ``x * w[c]`` to the
    output channels of group ``g`` at the rows ``i*sh + kh*dh`` and columns ``j*sw + kw*dw``
    of the output *before* its ``padding`` is cropped.
    """
    N, C, H, W = (int(s) for s in x_shape)
    Cg = int(w_shape[1])
    per_group = C // groups
    for n in range(N):
        for c in range(C):
            g = c // per_group
            for i in range(H):
                for j in range(W):
                    yield n, c, i, j, (n, slice(g * Cg, (g + 1) * Cg)) + _taps(i, j, w_shape, stride, dilation)


def _uncropped(out_shape, padding, dtype):
    """A zero buffer for the output before the padding is cropped: ``(H-1)*s + d*(K-1) + op + 1`` rows hold every window."""
    ph, pw = _pair(padding)
    N, C, Ho, Wo = out_shape
    return np.zeros((N, C, Ho + 2 * ph, Wo + 2 * pw), dtype=dtype)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution, written as a scatter.

    Every input pixel ``x[n, c, i, j]`` adds ``x[n, c, i, j] * w[c]`` (a ``C_out / groups x
    KH x KW`` block) onto the output channels of its group, at rows ``i*sh + kh*dh - ph`` and
    columns ``j*sw + kw*dw - pw``; the ``output_padding`` extra rows/columns at the
    bottom/right receive what falls there (often only the bias).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_in, C_out / groups, KH, KW)
    b : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int)
    groups : int

    Returns
    -------
    y : ndarray, shape (N, C_out, Ho, Wo)
        ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + oph + 1``, likewise ``Wo``.
    """
    ph, pw = _pair(padding)
    shape = conv_transpose2d_output_shape(x.shape, w.shape, stride, padding, output_padding, groups, dilation)
    N, C, Ho, Wo = shape
    yp = _uncropped(shape, padding, x.dtype)
    for n, c, i, j, window in _scatter_windows(x.shape, w.shape, stride, dilation, groups):
        yp[window] += x[n, c, i, j] * w[c]
    y = yp[:, :, ph : ph + Ho, pw : pw + Wo].copy()
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_transpose2d_backward_input(dy, w, input_shape, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of :func:`conv_transpose2d` with respect to ``x``: each input pixel's window of ``dy`` times ``w``.

    ``dx[n, c, i, j] = sum over the window of (dy_padded[window] * w[c])``, where ``dy_padded``
    is ``dy`` zero-padded by ``padding`` (the rows the forward pass cropped get no gradient).
    """
    ph, pw = _pair(padding)
    N, C, H, W = (int(s) for s in input_shape)
    dyp = _uncropped(dy.shape, padding, dy.dtype)
    dyp[:, :, ph : ph + dy.shape[2], pw : pw + dy.shape[3]] = dy
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    for n, c, i, j, window in _scatter_windows(input_shape, w.shape, stride, dilation, groups):
        dx[n, c, i, j] = np.sum(dyp[window] * w[c])
    return dx


def conv_transpose2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1):
    """Gradient of :func:`conv_transpose2d` with respect to ``w``: ``dw[c] = sum of x[n, c, i, j] * dy_padded[window]``."""
    ph, pw = _pair(padding)
    dyp = _uncropped(dy.shape, padding, dy.dtype)
    dyp[:, :, ph : ph + dy.shape[2], pw : pw + dy.shape[3]] = dy
    dw = np.zeros(tuple(int(s) for s in weight_shape), dtype=dy.dtype)
    for n, c, i, j, window in _scatter_windows(x.shape, weight_shape, stride, dilation, groups):
        dw[c] += x[n, c, i, j] * dyp[window]
    return dw


def conv_transpose2d_backward(dy, x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """All three gradients of :func:`conv_transpose2d`: ``(dx, dw, db)``."""
    args = (stride, padding, output_padding, groups, dilation)
    dx = conv_transpose2d_backward_input(dy, w, x.shape, *args)
    dw = conv_transpose2d_backward_weight(dy, x, w.shape, *args)
    return dx, dw, conv2d_backward_bias(dy)


def _pool_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """PyTorch's pooling output size (``pooling_output_shape`` in ATen), written out."""
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * padding - span
    if ceil_mode:
        out = -(-numerator // stride) + 1  # rounded up
        if (out - 1) * stride >= size + padding:  # the last window must start inside input or left padding
            out -= 1
    else:
        out = numerator // stride + 1
    if out < 1:
        raise ValueError(f"window spanning {span} does not fit the input of size {size} with padding {padding}")
    return out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max-pooling that also returns where each maximum came from.

    Window ``(i, j)`` holds the taps ``(i*sh - ph + a*dh, j*sw - pw + b*dw)`` for
    ``a < KH, b < KW``, over ``x`` padded with ``-inf``. Only real (unpadded) taps are
    scanned, in row-major order, keeping the first strict maximum, so ties go to the
    first maximum; a NaN always takes over, so a window holding NaN yields NaN with the
    index of its last NaN. A window whose real elements are all ``-inf`` yields ``-inf``
    with the index of its first real element. This is exactly PyTorch's CPU rule.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
        Window size ``(KH, KW)``.
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        ``-inf`` padding on each side; at most half the kernel size.
    dilation : int or (int, int)
        Spacing of the taps.
    ceil_mode : bool
        PyTorch's rounded-up output size (windows past the end are clipped).

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
    dh, dw = _pair(dilation)
    if ph > KH // 2 or pw > KW // 2:
        raise ValueError(f"padding {(ph, pw)} exceeds half the kernel size {(KH, KW)}")
    N, C, H, W = x.shape
    Ho = _pool_output_size(H, KH, sh, ph, dh, ceil_mode)
    Wo = _pool_output_size(W, KW, sw, pw, dw, ceil_mode)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    # The real taps of the window, in row-major order.
                    hs = [h for h in range(i * sh - ph, i * sh - ph + KH * dh, dh) if 0 <= h < H]
                    ws = [w for w in range(j * sw - pw, j * sw - pw + KW * dw, dw) if 0 <= w < W]
                    window = x[n, c][np.ix_(hs, ws)]
                    nan_positions = np.flatnonzero(np.isnan(window))
                    if nan_positions.size:
                        k = nan_positions[-1]
                    else:
                        k = np.argmax(window)  # first occurrence of the maximum
                    r, s = divmod(int(k), len(ws))
                    y[n, c, i, j] = window[r, s]
                    indices[n, c, i, j] = hs[r] * W + ws[s]
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


def _channel_values(x, c):
    """Every value of channel ``c`` of an (N, C, ...) array, as a flat array."""
    return x[:, c].reshape(-1)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation of an (N, C, ...) array over every axis but the channel axis 1.

    Returns ``(y, new_running_mean, new_running_var)`` (the running statistics are not
    modified: new arrays, or None when not given). In training, channel ``c`` is
    normalised with the mean and the biased variance of its ``M = N * prod(spatial)``
    values, and the running statistics move by ``momentum`` towards the mean and the
    unbiased variance ``var * M / (M - 1)``; otherwise the running statistics are used.
    """
    C = x.shape[1]
    y = np.empty_like(x)
    new_mean = None if running_mean is None else np.array(running_mean, copy=True)
    new_var = None if running_var is None else np.array(running_var, copy=True)
    for c in range(C):
        values = _channel_values(x, c)
        if training:
            mean = values.mean()
            var = ((values - mean) ** 2).mean()
            if new_mean is not None:
                M = values.size
                new_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
                new_var[c] = (1 - momentum) * running_var[c] + momentum * var * M / (M - 1)
        else:
            mean, var = running_mean[c], running_var[c]
        g = 1 if weight is None else weight[c]
        b = 0 if bias is None else bias[c]
        y[:, c] = (x[:, c] - mean) / np.sqrt(var + eps) * g + b
    return y, new_mean, new_var


def batch_norm_backward(dy, x, weight=None, running_mean=None, running_var=None, training=True, eps=1e-5):
    """``(dx, dweight, dbias)`` of :func:`batch_norm`, from the chain rule written out per channel.

    With ``training`` the statistics are the batch's: ``xhat = (x - mean) / std``,
    ``dxhat = dy * weight`` and
    ``dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std``, computed as
    ``weight * (dy - mean(dy) - xhat * mean(dy * xhat)) / std``. Otherwise the
    running statistics are constants and ``dx = dy * weight / sqrt(running_var + eps)``.
    """
    C = x.shape[1]
    dx = np.empty_like(x)
    dweight = np.empty(C, dtype=x.dtype)
    dbias = np.empty(C, dtype=x.dtype)
    for c in range(C):
        values = _channel_values(x, c)
        if training:
            mean = values.mean()
            std = np.sqrt(((values - mean) ** 2).mean() + eps)
        else:
            mean, std = running_mean[c], np.sqrt(running_var[c] + eps)
        g = 1 if weight is None else weight[c]
        xhat = (x[:, c] - mean) / std
        dweight[c] = (dy[:, c] * xhat).sum()
        dbias[c] = dy[:, c].sum()
        d = dy[:, c]
        if training:  # the weight multiplies last (an infinite weight gives +-inf, as PyTorch)
            dx[:, c] = g * ((d - d.mean() - xhat * (d * xhat).mean()) / std)
        else:
            dx[:, c] = d * g / std
    return dx, dweight, dbias


def group_norm(x, groups, weight=None, bias=None, eps=1e-5):
    """Group normalisation of an (N, C, ...) array: each sample's channels split into ``groups``
    consecutive groups, each normalised by its own mean and biased variance, then
    ``* weight[c] + bias[c]``. ``groups = 1`` over an (N, D) array is layer normalisation."""
    N, C = x.shape[:2]
    size = C // groups
    y = np.empty_like(x)
    for n in range(N):
        for g in range(groups):
            part = x[n, g * size:(g + 1) * size]
            mean = part.mean()
            var = ((part - mean) ** 2).mean()
            y[n, g * size:(g + 1) * size] = (part - mean) / np.sqrt(var + eps)
    shape = (1, C) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def group_norm_backward(dy, x, groups, weight=None, eps=1e-5):
    """``(dx, dweight, dbias)`` of :func:`group_norm` (the batch-norm formula within each group)."""
    N, C = x.shape[:2]
    size = C // groups
    shape = (1, C) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    xhat = group_norm(x, groups, eps=eps)
    dweight = (dy * xhat).sum(axis=axes)
    dbias = dy.sum(axis=axes)
    dxhat = dy if weight is None else dy * weight.reshape(shape)
    dx = np.empty_like(x)
    for n in range(N):
        for g in range(groups):
            sl = (n, slice(g * size, (g + 1) * size))
            part = x[sl]
            std = np.sqrt(((part - part.mean()) ** 2).mean() + eps)
            d, h = dxhat[sl], xhat[sl]
            dx[sl] = (d - d.mean() - h * (d * h).mean()) / std
    return dx, dweight, dbias
def _avg_window(i, size, kernel, stride, padding, count_include_pad):
    """Output ``i``'s window on one axis, clipped to the input, and its share of the divisor (PyTorch's rule)."""
    start = i * stride - padding
    end = min(start + kernel, size + padding)  # the padded input's end; ceil_mode's overhang is not counted
    lo, hi = max(start, 0), min(end, size)
    return lo, hi, (end - start) if count_include_pad else (hi - lo)


def _avg_windows(hw, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Yield ``(i, j, rows, cols, divisor)`` for every output of an average pooling of an ``hw`` input."""
    (H, W), (KH, KW), (ph, pw) = hw, _pair(kernel_size), _pair(padding)
    sh, sw = _pair(kernel_size if stride is None else stride)
    for i in range(_pool_output_size(H, KH, sh, ph, 1, ceil_mode)):
        h0, h1, dh = _avg_window(i, H, KH, sh, ph, count_include_pad)
        for j in range(_pool_output_size(W, KW, sw, pw, 1, ceil_mode)):
            w0, w1, dw = _avg_window(j, W, KW, sw, pw, count_include_pad)
            yield i, j, slice(h0, h1), slice(w0, w1), dh * dw if divisor_override is None else divisor_override


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, PyTorch's ``avg_pool2d``: each window's sum over its divisor.

    The divisor is ``divisor_override`` when given; else the window's size counting the
    zero padding it covers (``count_include_pad``) or only its input elements. A window
    that ``ceil_mode`` lets hang past the padded input is clipped, and the part past it
    is never counted.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As :func:`fastconv.functional.avg_pool2d`.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    """
    N, C, H, W = x.shape
    windows = list(_avg_windows((H, W), kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override))
    y = np.empty((N, C, windows[-1][0] + 1, windows[-1][1] + 1), dtype=x.dtype)
    for i, j, rows, cols, divisor in windows:
        for n in range(N):
            for c in range(C):
                y[n, c, i, j] = np.sum(x[n, c, rows, cols]) / divisor
    return y


def avg_pool2d_backward(dy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each ``dy[n, c, i, j] / divisor`` added to every element of its window."""
    N, C, H, W = (int(s) for s in input_shape)
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    for i, j, rows, cols, divisor in _avg_windows((H, W), kernel_size, stride, padding, ceil_mode,
                                                  count_include_pad, divisor_override):
        dx[:, :, rows, cols] += (dy[:, :, i, j] / divisor)[:, :, None, None]
    return dx


def _adaptive_window(i, size, out):
    """PyTorch's adaptive window of output ``i``: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return (i * size) // out, -((-(i + 1) * size) // out)


def _output_pair(output_size, x_shape):
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    return tuple(x_shape[2 + k] if v is None else int(v) for k, v in enumerate(pair))


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling: output ``(i, j)`` averages the adaptive windows of rows and columns."""
    N, C, H, W = x.shape
    Ho, Wo = _output_pair(output_size, x.shape)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for i in range(Ho):
        h0, h1 = _adaptive_window(i, H, Ho)
        for j in range(Wo):
            w0, w1 = _adaptive_window(j, W, Wo)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return y


def adaptive_avg_pool2d_backward(dy, input_shape):
    """Gradient of :func:`adaptive_avg_pool2d` (the output size is ``dy``'s)."""
    N, C, H, W = (int(s) for s in input_shape)
    _, _, Ho, Wo = dy.shape
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    for i in range(Ho):
        h0, h1 = _adaptive_window(i, H, Ho)
        for j in range(Wo):
            w0, w1 = _adaptive_window(j, W, Wo)
            dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / ((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx


def adaptive_max_pool2d(x, output_size):
    """Adaptive max-pooling with the winner rule of :func:`max_pool2d`: ``(y, indices)``."""
    N, C, H, W = x.shape
    Ho, Wo = _output_pair(output_size, x.shape)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                h0, h1 = _adaptive_window(i, H, Ho)
                for j in range(Wo):
                    w0, w1 = _adaptive_window(j, W, Wo)
                    window = x[n, c, h0:h1, w0:w1]
                    nan_positions = np.flatnonzero(np.isnan(window))
                    k = nan_positions[-1] if nan_positions.size else np.argmax(window)
                    r, s = divmod(int(k), w1 - w0)
                    y[n, c, i, j] = window[r, s]
                    indices[n, c, i, j] = (h0 + r) * W + (w0 + s)
    return y, indices
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


# ---------------------------------------------------------------------------------------
# Activations: the definitions element by element (``math`` functions in a loop) and their
# derivatives as calculus gives them. Gradients take the forward input ``x``.
# ---------------------------------------------------------------------------------------


def _elementwise(f, *arrays):
    """``f`` applied to the Python floats of ``arrays`` (one shape) one element at a time, in their dtype."""
    out = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
    flat = [a.reshape(-1) for a in arrays]
    for i in range(out.size):
        out.flat[i] = f(*(float(a[i]) for a in flat))
    return out


def _logistic(v):
    """``1 / (1 + e^-v)`` written for either sign, so that the reference itself does not overflow."""
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def leaky_relu(x, negative_slope=0.01):
    negative_slope = float(negative_slope)  # a Python float, as PyTorch's (np.float32 would round in float32)
    return _elementwise(lambda v: v if v > 0 else negative_slope * v, x)


def leaky_relu_backward(dy, x, negative_slope=0.01):
    negative_slope = float(negative_slope)
    return _elementwise(lambda g, v: g if v > 0 else negative_slope * g, dy, x)


def elu(x, alpha=1.0):
    alpha = float(alpha)
    return _elementwise(lambda v: v if v > 0 else alpha * (math.exp(v) - 1.0), x)


def elu_backward(dy, x, alpha=1.0):
    alpha = float(alpha)
    return _elementwise(lambda g, v: g if v > 0 else g * alpha * math.exp(v), dy, x)


_TANH_K = math.sqrt(2.0 / math.pi)


def gelu(x, approximate="none"):
    """``x * Phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, or the tanh approximation."""
    if approximate == "tanh":
        return _elementwise(lambda v: 0.5 * v * (1.0 + math.tanh(_TANH_K * (v + 0.044715 * v**3))), x)
    return _elementwise(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))), x)


def gelu_backward(dy, x, approximate="none"):
    def exact(g, v):
        return g * (0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi))

    def tanh_form(g, v):
        t = math.tanh(_TANH_K * (v + 0.044715 * v**3))
        return g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _TANH_K * (1.0 + 3 * 0.044715 * v * v))

    return _elementwise(tanh_form if approximate == "tanh" else exact, dy, x)


def silu(x):
    return _elementwise(lambda v: v * _logistic(v), x)


def silu_backward(dy, x):
    return _elementwise(lambda g, v: g * (_logistic(v) + v * _logistic(v) * (1.0 - _logistic(v))), dy, x)


def sigmoid(x):
    return _elementwise(_logistic, x)


def sigmoid_backward(dy, x):
    return _elementwise(lambda g, v: g * _logistic(v) * (1.0 - _logistic(v)), dy, x)


def tanh(x):
    return _elementwise(math.tanh, x)


def tanh_backward(dy, x):
    return _elementwise(lambda g, v: g * (1.0 - math.tanh(v) ** 2), dy, x)


def _slices(shape, dim):
    """Index tuples of every 1-D slice of an array of ``shape`` along axis ``dim`` (none when it is empty)."""
    if shape[dim] == 0:
        return
    rest = [range(n) for i, n in enumerate(shape) if i != dim]
    for idx in np.ndindex(*[len(r) for r in rest]):
        yield idx[:dim] + (slice(None),) + idx[dim:]


def softmax(x, dim):
    """``exp(x_i - max) / sum_j exp(x_j - max)`` along ``dim``, one slice at a time."""
    dim %= x.ndim
    out = np.empty_like(x)
    for s in _slices(x.shape, dim):
        e = np.exp(x[s] - x[s].max())
        out[s] = e / e.sum()
    return out


def log_softmax(x, dim):
    """``x_i - max - log sum_j exp(x_j - max)`` along ``dim``."""
    dim %= x.ndim
    out = np.empty_like(x)
    for s in _slices(x.shape, dim):
        z = x[s] - x[s].max()
        out[s] = z - np.log(np.exp(z).sum())
    return out


def softmax_backward(dy, x, dim):
    """The Jacobian ``diag(y) - y y^T`` of each slice applied to its ``dy``.

    A slice of ``dy`` with NaN or inf takes PyTorch's factored ``y * (dy - sum(y * dy))`` instead, which
    decides which elements are NaN (the matrix product would give inf where PyTorch gives NaN).
    """
    dim %= x.ndim
    y = softmax(x, dim)
    dx = np.empty_like(x)
    for s in _slices(x.shape, dim):
        if np.isfinite(dy[s]).all():
            dx[s] = (np.diag(y[s]) - np.outer(y[s], y[s])) @ dy[s]
        else:
            dx[s] = y[s] * (dy[s] - (y[s] * dy[s]).sum())
    return dx


def log_softmax_backward(dy, x, dim):
    """The Jacobian ``I - 1 y^T`` (rows: outputs) of each slice, transposed, applied to its ``dy``.

    A slice of ``dy`` with NaN or inf takes PyTorch's factored ``dy - y * sum(dy)`` (see :func:`softmax_backward`).
    """
    dim %= x.ndim
    y = softmax(x, dim)
    dx = np.empty_like(x)
    for s in _slices(x.shape, dim):
        if np.isfinite(dy[s]).all():
            dx[s] = (np.eye(y[s].size) - np.outer(np.ones(y[s].size), y[s])).T @ dy[s]
        else:
            dx[s] = dy[s] - y[s] * dy[s].sum()
    return dx


# ---------------------------------------------------------------------------------------
# Losses, from their definitions, in float64; a float for 'mean'/'sum', an array for 'none'.
# ---------------------------------------------------------------------------------------


def _reduce(losses, reduction, denominator=None):
    losses = np.asarray(losses, dtype=np.float64)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return float(losses.sum())
    return float(losses.sum() / (losses.size if denominator is None else denominator))


def mse_loss(input, target, reduction="mean"):
    return _reduce((input.astype(np.float64) - target) ** 2, reduction)


def l1_loss(input, target, reduction="mean"):
    return _reduce(np.abs(input.astype(np.float64) - target), reduction)


def _log_sigmoid(v):
    if math.isnan(v):
        return v
    return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """``-w (p t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))``, element by element; ``log sigmoid`` written
    as ``-log1p(exp(-x))`` (``x - log1p(exp(x))`` for negative ``x``) so that large and infinite logits work."""
    x = input.astype(np.float64)
    t = np.broadcast_to(target, x.shape)
    w = np.broadcast_to(1.0 if weight is None else weight, x.shape)
    p = np.broadcast_to(1.0 if pos_weight is None else pos_weight, x.shape)
    losses = np.empty(x.shape)
    for i in np.ndindex(*x.shape):
        if math.isinf(x[i]) or math.isinf(t[i]):  # PyTorch's form decides (inf - inf is NaN where a limit is not)
            lw = 1.0 if pos_weight is None else 1.0 + (p[i] - 1.0) * t[i]
            losses[i] = w[i] * ((1.0 - t[i]) * x[i] + lw * (math.log1p(math.exp(-abs(x[i]))) + max(-x[i], 0.0)))
        else:
            losses[i] = -w[i] * (p[i] * t[i] * _log_sigmoid(x[i]) + (1.0 - t[i]) * _log_sigmoid(-x[i]))
    return _reduce(losses, reduction)


def _per_sample(input, target):
    """``(rows, targets, sample_shape)``: each sample's class vector (float64) and its target."""
    if input.ndim == 1:
        return [input.astype(np.float64)], [target[()]], ()
    rows, targets = [], []
    for idx in np.ndindex(input.shape[0], *input.shape[2:]):
        rows.append(input[(idx[0], slice(None)) + idx[1:]].astype(np.float64))
        targets.append(target[idx])
    return rows, targets, (input.shape[0],) + input.shape[2:]


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``-weight[t] * input[t]`` per sample; ignored samples add 0; the mean divides by the summed weights."""
    C = input.shape[min(1, input.ndim - 1)]
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    rows, targets, shape = _per_sample(input, target)
    losses, den = [], 0.0
    for row, t in zip(rows, targets):
        if t == ignore_index:
            losses.append(0.0)
            continue
        losses.append(-w[t] * row[t])
        den += w[t]
    return _reduce(np.array(losses).reshape(shape), reduction, den)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross-entropy with the smoothed target ``q = (1 - e) onehot(t) + e / C``: ``-sum_c weight[c] q_c log p_c``.

    Class indices (integer ``target``) or class probabilities (a float ``target`` of input's shape).
    The mean divides by the summed ``weight[t]`` of the counted samples (by the sample count for
    probabilities), as PyTorch.
    """
    C = input.shape[min(1, input.ndim - 1)]
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    eps = label_smoothing
    probabilities = target.dtype.kind == "f"
    rows, targets, shape = _per_sample(input, np.moveaxis(target, 1, -1) if probabilities and target.ndim > 1
                                       else target)
    losses, den = [], 0.0
    for row, t in zip(rows, targets):
        logp = row - row.max() - math.log(np.exp(row - row.max()).sum())
        if probabilities:
            q = np.asarray(t, dtype=np.float64) * (1 - eps) + eps / C
            losses.append(-(w * q * logp).sum())
            den += 1.0
            continue
        if t == ignore_index:
            losses.append(0.0)
            continue
        smooth = eps / C * (w * logp).sum() if eps else 0.0  # (no 0 * -inf when there is no smoothing)
        losses.append(-(1 - eps) * w[t] * logp[t] - smooth)
        den += w[t]
    return _reduce(np.array(losses).reshape(shape), reduction, den)
