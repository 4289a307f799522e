"""cs231n's ``fast_layers.py`` on fastconv's kernels: ``from fastconv.compat.fast_layers import *``.

Exports exactly the names cs231n's ``fast_layers.py`` defines -- ``conv_forward_fast``,
``conv_backward_fast``, ``conv_forward_im2col``, ``conv_backward_im2col``,
``conv_forward_strides``, ``conv_backward_strides``, ``max_pool_forward_fast``,
``max_pool_backward_fast``, ``max_pool_forward_reshape``, ``max_pool_backward_reshape``,
``max_pool_forward_im2col``, ``max_pool_backward_im2col`` -- and never a ``*_naive`` name, so
the notebook's ``from cs231n.fast_layers import *`` does not replace the student's own naive
layers. Every variant runs the same compiled kernels (they are the same functions).

- ``conv_param = {'stride': s, 'pad': p}``: zero padding ``p`` on every side, stride ``s``
  (ints; ``(h, w)`` pairs also work);
- ``pool_param = {'pool_height': ph, 'pool_width': pw, 'stride': s}``;
- forward functions return ``(out, cache)``, backward functions take ``(dout, cache)``.

The computation runs in float64 or float32: the common dtype of the inputs if it is one of
those, float64 otherwise (integer inputs, for example).

Caches: ``conv_forward_*`` keeps ``(x, w, b, conv_param)``, the arguments as given;
``max_pool_forward_*`` keeps ``(x, pool_param, indices)``, with the int64 array (shape of
``out``) of each window's winner as a flat index ``h * W + w`` into its ``(n, c)`` plane.
cs231n's own fast versions cache extra arrays (``x_cols``, or ``('reshape', ...)``); code
that only passes a cache back to the matching backward function, as the assignments do,
does not notice.

Max-pool ties: the whole gradient goes to the *first* maximum of the window, as in
cs231n's naive ``max_pool_backward_naive``, its im2col path, and PyTorch. cs231n's reshape
path (what its ``max_pool_forward_fast`` takes for square, non-overlapping windows that
tile the input) instead splits a tie's gradient equally among the tied maxima; on inputs
without ties (random floats) the two agree.
"""

import numpy as np

from .. import functional as _F
from ._common import _as_float, _get, _named, _unpack

__all__ = [
    "conv_forward_fast",
    "conv_backward_fast",
    "conv_forward_im2col",
    "conv_backward_im2col",
    "conv_forward_strides",
    "conv_backward_strides",
    "max_pool_forward_fast",
    "max_pool_backward_fast",
    "max_pool_forward_reshape",
    "max_pool_backward_reshape",
    "max_pool_forward_im2col",
    "max_pool_backward_im2col",
]


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

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.fast_layers import conv_forward_fast, conv_backward_fast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> out, cache = conv_forward_fast(x, np.ones((2, 1, 3, 3)), np.array([0.0, 100.0]), {"stride": 1, "pad": 0})
    >>> out                                        # each 3x3 window's sum, plus the filter's bias
    array([[[[ 45.,  54.],
             [ 81.,  90.]],
    <BLANKLINE>
            [[145., 154.],
             [181., 190.]]]])
    >>> dx, dw, db = conv_backward_fast(np.ones_like(out), cache)
    >>> dx.shape, dw.shape, db
    ((1, 1, 4, 4), (2, 1, 3, 3), array([4., 4.]))
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

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.fast_layers import max_pool_forward_fast, max_pool_backward_fast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> out, cache = max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    >>> out
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> max_pool_backward_fast(np.ones_like(out), cache)[0, 0]   # to each window's maximum
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
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


# cs231n's alternative implementations: all run the same kernels here.
conv_forward_im2col = conv_forward_fast
conv_backward_im2col = conv_backward_fast
conv_forward_strides = conv_forward_fast
conv_backward_strides = conv_backward_fast
max_pool_forward_reshape = max_pool_forward_fast
max_pool_backward_reshape = max_pool_backward_fast
max_pool_forward_im2col = max_pool_forward_fast
max_pool_backward_im2col = max_pool_backward_fast
