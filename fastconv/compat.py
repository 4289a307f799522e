"""Drop-in replacements for the cs231n assignment's layer functions, on fastconv's kernels.

``from fastconv.compat import *`` provides the names of cs231n's ``fast_layers.py``,
``layer_utils.py`` and the parts of ``layers.py`` a CNN needs, with the same arguments,
return values and conventions:

- ``conv_param = {'stride': s, 'pad': p}``: zero padding ``p`` on every side, stride ``s``
  (ints; ``(h, w)`` pairs also work);
- ``pool_param = {'pool_height': ph, 'pool_width': pw, 'stride': s}``;
- forward functions return ``(out, cache)`` and backward functions take ``(dout, cache)``.

Both the ``_fast`` and the ``_naive`` names (and cs231n's ``_im2col``, ``_strides`` and
``_reshape`` variants) run fastconv's compiled kernels: they are the same functions. The
computation runs in float64 or float32: the common dtype of the inputs if it is one of
those, float64 otherwise (integer inputs, for example). cs231n's gradient checks use
float64, which works.

Caches
------
=========================  ================================================================
function                   cache
=========================  ================================================================
conv_forward_*             ``(x, w, b, conv_param)``: the arguments, as given
max_pool_forward_*         ``(x, pool_param, indices)``: the arguments, plus the int64
                           array (shape of ``out``) of each window's winner as a flat
                           index ``h * W + w`` into its ``(n, c)`` plane of ``x``
relu_forward               ``x``
affine_forward             ``(x, w, b)``
conv_relu_forward          ``(conv_cache, relu_cache)``
conv_relu_pool_forward     ``(conv_cache, relu_cache, pool_cache)``
affine_relu_forward        ``(fc_cache, relu_cache)``
=========================  ================================================================

cs231n's own fast versions cache extra arrays (``x_cols``, or ``('reshape', ...)`` for
pooling); code that only passes caches back to the matching backward function, as the
assignments do, does not notice. Max-pool ties go to the first maximum of the window (as
cs231n's fast version and PyTorch).
"""

import functools
from collections.abc import Mapping

import numpy as np

from . import functional as _F

__all__ = [
    "conv_forward_fast",
    "conv_backward_fast",
    "conv_forward_naive",
    "conv_backward_naive",
    "conv_forward_im2col",
    "conv_backward_im2col",
    "conv_forward_strides",
    "conv_backward_strides",
    "max_pool_forward_fast",
    "max_pool_backward_fast",
    "max_pool_forward_naive",
    "max_pool_backward_naive",
    "max_pool_forward_reshape",
    "max_pool_backward_reshape",
    "max_pool_forward_im2col",
    "max_pool_backward_im2col",
    "relu_forward",
    "relu_backward",
    "affine_forward",
    "affine_backward",
    "affine_relu_forward",
    "affine_relu_backward",
    "conv_relu_forward",
    "conv_relu_backward",
    "conv_relu_pool_forward",
    "conv_relu_pool_backward",
    "softmax_loss",
    "svm_loss",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _named(fn):
    """Make the errors of ``fn`` name it: a TypeError/ValueError/MemoryError from the functional API below
    (``"conv2d: stride must be positive"``) gets the cs231n function's name in front, keeping its type."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MemoryError, TypeError, ValueError) as exc:
            if name in str(exc):
                raise
            base = next(t for t in (MemoryError, TypeError, ValueError) if isinstance(exc, t))
            raise base(f"{name}: {exc}") from exc

    return wrapper


def _as_float(func, **arrays):
    """Convert the named arrays to one float dtype (their common float32/float64, else float64)."""
    converted = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{func}: {name} must be a real numeric array; got dtype {a.dtype}")
        converted[name] = a
    dtype = np.result_type(*converted.values())
    if dtype not in _FLOATS:
        dtype = np.dtype(np.float64)
    return [a.astype(dtype, copy=False) for a in converted.values()]


def _get(param, keys, name, func):
    if not isinstance(param, Mapping):
        raise TypeError(f"{func}: {name} must be a dict with keys {keys}; got {type(param).__name__}")
    missing = [k for k in keys if k not in param]
    if missing:
        raise KeyError(f"{func}: {name} is missing key(s) {missing} (it needs {keys})")
    return [param[k] for k in keys]


def _unpack(cache, n, layout, func):
    if not isinstance(cache, tuple) or len(cache) != n:
        raise TypeError(f"{func}: cache must be the tuple {layout} returned by the forward function")
    return cache


# ---------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------


@_named
def conv_forward_fast(x, w, b, conv_param):
    """Forward pass of a convolutional layer (cross-correlation, as cs231n).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input.
    w : ndarray, shape (F, C, HH, WW)
        Filters.
    b : ndarray, shape (F,), or None
        Biases.
    conv_param : dict
        ``'stride'``: step between receptive fields; ``'pad'``: zeros added on every side.

    Returns
    -------
    out : ndarray, shape (N, F, H', W')
        ``H' = 1 + (H + 2*pad - HH) // stride``, ``W' = 1 + (W + 2*pad - WW) // stride``.
    cache : tuple
        ``(x, w, b, conv_param)``, the arguments as given.
    """
    func = "conv_forward_fast"
    stride, pad = _get(conv_param, ["stride", "pad"], "conv_param", func)
    if b is None:
        (xf, wf), bf = _as_float(func, x=x, w=w), None
    else:
        xf, wf, bf = _as_float(func, x=x, w=w, b=b)
    out = _F.conv2d(xf, wf, bf, stride=stride, padding=pad)
    return out, (x, w, b, conv_param)


@_named
def conv_backward_fast(dout, cache):
    """Backward pass of a convolutional layer.

    Parameters
    ----------
    dout : ndarray, shape (N, F, H', W')
        Upstream gradient.
    cache : tuple
        ``(x, w, b, conv_param)`` from :func:`conv_forward_fast`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C, HH, WW)
    db : ndarray, shape (F,)
    """
    func = "conv_backward_fast"
    x, w, b, conv_param = _unpack(cache, 4, "(x, w, b, conv_param)", func)
    stride, pad = _get(conv_param, ["stride", "pad"], "conv_param", func)
    extra = {} if b is None else {"b": b}
    xf, wf, df = _as_float(func, x=x, w=w, dout=dout, **extra)[:3]
    return _F.conv2d_backward(df, xf, wf, stride=stride, padding=pad)


# ---------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------


@_named
def max_pool_forward_fast(x, pool_param):
    """Forward pass of a max-pooling layer.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    pool_param : dict
        ``'pool_height'``, ``'pool_width'``: window size; ``'stride'``: step. No padding.

    Returns
    -------
    out : ndarray, shape (N, C, H', W')
        ``H' = 1 + (H - pool_height) // stride``, ``W' = 1 + (W - pool_width) // stride``.
    cache : tuple
        ``(x, pool_param, indices)``: the arguments as given, and ``indices`` (int64,
        shape of ``out``), the flat position ``h * W + w`` of each window's maximum within
        its ``(n, c)`` plane of ``x`` (first maximum on ties).
    """
    func = "max_pool_forward_fast"
    ph, pw, stride = _get(pool_param, ["pool_height", "pool_width", "stride"], "pool_param", func)
    (xf,) = _as_float(func, x=x)
    out, indices = _F.max_pool2d(xf, (ph, pw), stride=stride)
    return out, (x, pool_param, indices)


@_named
def max_pool_backward_fast(dout, cache):
    """Backward pass of a max-pooling layer: each ``dout`` goes to its window's maximum.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H', W')
    cache : tuple
        ``(x, pool_param, indices)`` from :func:`max_pool_forward_fast`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        Overlapping windows (stride < window) add their gradients.
    """
    func = "max_pool_backward_fast"
    x, _, indices = _unpack(cache, 3, "(x, pool_param, indices)", func)
    _, df = _as_float(func, x=x, dout=dout)
    return _F.max_pool2d_backward(df, indices, np.shape(x))


# cs231n's slow and alternative implementations: all run the same kernels here.
conv_forward_naive = conv_forward_fast
conv_backward_naive = conv_backward_fast
conv_forward_im2col = conv_forward_fast
conv_backward_im2col = conv_backward_fast
conv_forward_strides = conv_forward_fast
conv_backward_strides = conv_backward_fast
max_pool_forward_naive = max_pool_forward_fast
max_pool_backward_naive = max_pool_backward_fast
max_pool_forward_reshape = max_pool_forward_fast
max_pool_backward_reshape = max_pool_backward_fast
max_pool_forward_im2col = max_pool_forward_fast
max_pool_backward_im2col = max_pool_backward_fast


# ---------------------------------------------------------------------------------------
# Elementwise, affine and losses (NumPy)
# ---------------------------------------------------------------------------------------


@_named
def relu_forward(x):
    """ReLU forward: ``out = max(x, 0)``, any shape.

    Returns
    -------
    out : ndarray, same shape as ``x``
    cache : ndarray
        ``x``.
    """
    x_arr = np.asarray(x)
    return np.maximum(x_arr, x_arr.dtype.type(0)), x


@_named
def relu_backward(dout, cache):
    """ReLU backward: ``dx = dout`` where ``x > 0``, else 0.

    Parameters
    ----------
    dout : ndarray, same shape as ``x``
    cache : ndarray
        ``x`` from :func:`relu_forward`.

    Returns
    -------
    dx : ndarray
    """
    x = np.asarray(cache)
    dout = np.asarray(dout)
    if dout.shape != x.shape:
        raise ValueError(f"relu_backward: dout has shape {dout.shape} but the cached x has shape {x.shape}")
    return np.where(x > 0, dout, dout.dtype.type(0))


@_named
def affine_forward(x, w, b):
    """Fully connected layer forward: ``out = x.reshape(N, D) @ w + b``.

    Parameters
    ----------
    x : ndarray, shape (N, d_1, ..., d_k)
        Each example is flattened to ``D = d_1 * ... * d_k`` values.
    w : ndarray, shape (D, M)
    b : ndarray, shape (M,)

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        ``(x, w, b)``.
    """
    x_arr, w_arr, b_arr = np.asarray(x), np.asarray(w), np.asarray(b)
    N = x_arr.shape[0] if x_arr.ndim else 0
    D = int(np.prod(x_arr.shape[1:]))
    if x_arr.ndim < 1 or w_arr.ndim != 2 or w_arr.shape[0] != D or b_arr.shape != (w_arr.shape[1],):
        raise ValueError(
            f"affine_forward: need x (N, d_1, ..., d_k), w (D, M) with D = d_1*...*d_k and b (M,); "
            f"got x.shape={x_arr.shape}, w.shape={w_arr.shape}, b.shape={b_arr.shape}"
        )
    out = _matmul(x_arr.reshape(N, D), w_arr) + b_arr
    return out, (x, w, b)


@_named
def affine_backward(dout, cache):
    """Fully connected layer backward.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
    cache : tuple
        ``(x, w, b)`` from :func:`affine_forward`.

    Returns
    -------
    dx : ndarray, shape of ``x`` (N, d_1, ..., d_k)
    dw : ndarray, shape (D, M)
    db : ndarray, shape (M,)
    """
    x, w, _ = _unpack(cache, 3, "(x, w, b)", "affine_backward")
    x, w, dout = np.asarray(x), np.asarray(w), np.asarray(dout)
    N = x.shape[0]
    if dout.shape != (N, w.shape[1]):
        raise ValueError(f"affine_backward: dout must have shape {(N, w.shape[1])}; got {dout.shape}")
    x2 = x.reshape(N, -1) if N else x.reshape(0, w.shape[0])
    dx = _matmul(dout, w.T).reshape(x.shape)
    dw = _matmul(x2.T, dout)
    db = dout.sum(axis=0)
    return dx, dw, db


def _matmul(a, b):
    """``a @ b``: on fastconv's threads for float32/float64 operands of one dtype, else NumPy's.

    NumPy's BLAS threads keep spinning after a product and take the cores from the next
    fastconv kernel; a cs231n ``Solver`` loop over these layers ran at half speed.
    """
    if a.dtype == b.dtype and a.dtype in _FLOATS and a.size and b.size:
        return _F.matmul(a, b)
    return a @ b


def _check_scores(x, y, func):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{func}: x must be 2-D scores (N, C) with N >= 1; got shape {x.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{func}: y must hold integer labels; got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{func}: y must have shape ({x.shape[0]},) to match x.shape={x.shape}; got {y.shape}")
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"{func}: labels must lie in [0, {x.shape[1]}); got values in [{y.min()}, {y.max()}]")
    (xf,) = _as_float(func, x=x)
    return xf, y


@_named
def softmax_loss(x, y):
    """Softmax (cross-entropy) loss and its gradient, averaged over the batch.

    Parameters
    ----------
    x : ndarray, shape (N, C)
        Class scores.
    y : ndarray of int, shape (N,)
        Labels, ``0 <= y[i] < C``.

    Returns
    -------
    loss : float
    dx : ndarray, shape (N, C)
        ``(softmax(x) - onehot(y)) / N``.
    """
    xf, y = _check_scores(x, y, "softmax_loss")
    N = xf.shape[0]
    z = xf.astype(np.float64) - xf.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_probs = z - log_norm
    rows = np.arange(N)
    loss = -float(log_probs[rows, y].sum()) / N
    dx = np.exp(log_probs)
    dx[rows, y] -= 1.0
    dx /= N
    return loss, dx.astype(xf.dtype, copy=False)


@_named
def svm_loss(x, y):
    """Multiclass SVM (hinge) loss with margin 1 and its gradient, averaged over the batch.

    Parameters
    ----------
    x : ndarray, shape (N, C)
    y : ndarray of int, shape (N,)

    Returns
    -------
    loss : float
    dx : ndarray, shape (N, C)
    """
    xf, y = _check_scores(x, y, "svm_loss")
    N = xf.shape[0]
    rows = np.arange(N)
    margins = np.maximum(0, xf - xf[rows, y][:, None] + 1)
    margins[rows, y] = 0
    loss = float(margins.sum()) / N
    positive = (margins > 0).astype(xf.dtype)
    positive[rows, y] -= positive.sum(axis=1)
    return loss, positive / xf.dtype.type(N)


# ---------------------------------------------------------------------------------------
# Sandwich layers (layer_utils.py)
# ---------------------------------------------------------------------------------------


@_named
def affine_relu_forward(x, w, b):
    """Affine followed by ReLU. Returns ``(out, (fc_cache, relu_cache))``."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


@_named
def affine_relu_backward(dout, cache):
    """Backward of :func:`affine_relu_forward`; returns ``(dx, dw, db)``."""
    fc_cache, relu_cache = _unpack(cache, 2, "(fc_cache, relu_cache)", "affine_relu_backward")
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


@_named
def conv_relu_forward(x, w, b, conv_param):
    """Convolution followed by ReLU. Returns ``(out, (conv_cache, relu_cache))``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


@_named
def conv_relu_backward(dout, cache):
    """Backward of :func:`conv_relu_forward`; returns ``(dx, dw, db)``."""
    conv_cache, relu_cache = _unpack(cache, 2, "(conv_cache, relu_cache)", "conv_relu_backward")
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


@_named
def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """Convolution, ReLU, max-pool. Returns ``(out, (conv_cache, relu_cache, pool_cache))``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


@_named
def conv_relu_pool_backward(dout, cache):
    """Backward of :func:`conv_relu_pool_forward`; returns ``(dx, dw, db)``."""
    conv_cache, relu_cache, pool_cache = _unpack(
        cache, 3, "(conv_cache, relu_cache, pool_cache)", "conv_relu_pool_backward"
    )
    ds = max_pool_backward_fast(dout, pool_cache)
    da = relu_backward(ds, relu_cache)
    return conv_backward_fast(da, conv_cache)
