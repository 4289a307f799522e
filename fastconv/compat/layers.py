"""cs231n's ``layers.py`` on fastconv: ``from fastconv.compat.layers import *``.

The same names, arguments, parameter dicts, return values and conventions as the
assignment's ``layers.py``:

- affine, ReLU, softmax and SVM losses;
- ``conv_forward_naive``/``conv_backward_naive`` and ``max_pool_forward_naive``/
  ``max_pool_backward_naive`` (here: fastconv's compiled kernels, the functions of
  :mod:`fastconv.compat.fast_layers`);
- batch normalisation (``batchnorm_forward``, ``batchnorm_backward``,
  ``batchnorm_backward_alt``, ``spatial_batchnorm_forward``/``_backward``), layer
  normalisation (``layernorm_forward``/``_backward``), group normalisation
  (``spatial_groupnorm_forward``/``_backward``) and inverted dropout
  (``dropout_forward``/``_backward``).

Batch, layer and group normalisation run on fastconv's compiled normalisation kernels
(:func:`fastconv.functional.batch_norm`'s: statistics in float64, one pass). They follow
cs231n's rules, which are not PyTorch's:

- ``bn_param = {'mode': 'train' | 'test', 'eps': 1e-5, 'momentum': 0.9, 'running_mean',
  'running_var'}``: ``momentum`` is the weight of the *old* running value,
  ``running = momentum * running + (1 - momentum) * batch``, and the running variance is
  the batch's uncorrected (biased) variance. The running statistics live in the dict: they
  start as zeros when missing and every forward call stores the new arrays there;
- ``ln_param = {'eps': 1e-5}`` and ``gn_param = {'eps': 1e-5}``;
- ``dropout_param = {'p': keep probability, 'mode': 'train' | 'test', 'seed': optional}``:
  ``p`` is the probability of *keeping* a unit, masks come from ``np.random`` (seeded by
  ``seed`` when given, as cs231n's), scaled by ``1 / p``.

Caches: forward functions return ``(out, cache)``; pass the cache back to the matching
backward function unchanged (its contents are documented per function).
"""

import numpy as np

from .. import _validation as _V
from .. import plan as _plan
from ._common import _as_float, _get, _matmul, _named, _unpack
from .fast_layers import conv_backward_fast, conv_forward_fast, max_pool_backward_fast, max_pool_forward_fast

__all__ = [
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
    "dropout_forward",
    "dropout_backward",
    "conv_forward_naive",
    "conv_backward_naive",
    "max_pool_forward_naive",
    "max_pool_backward_naive",
    "spatial_batchnorm_forward",
    "spatial_batchnorm_backward",
    "spatial_groupnorm_forward",
    "spatial_groupnorm_backward",
    "svm_loss",
    "softmax_loss",
]

# cs231n's naive convolution and pooling: the same compiled kernels here.
conv_forward_naive = conv_forward_fast
conv_backward_naive = conv_backward_fast
max_pool_forward_naive = max_pool_forward_fast
max_pool_backward_naive = max_pool_backward_fast


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
# Normalisation (fastconv's compiled norm kernels) and dropout
# ---------------------------------------------------------------------------------------


def _mode(param, name, func):
    (mode,) = _get(param, ["mode"], name, func)
    if mode not in ("train", "test"):
        raise ValueError(f"{func}: {name}['mode'] must be 'train' or 'test'; got {mode!r}")
    return mode


def _check_vector(func, name, v, C, shape_text, broadcast_ndim=None):
    """``v`` of shape (C,) (or ``(1, C, 1, ...)`` of ``broadcast_ndim`` dims) as a (C,) array."""
    shapes = [(C,)] + ([] if broadcast_ndim is None else [(1, C) + (1,) * (broadcast_ndim - 2)])
    if v.shape not in shapes:
        raise ValueError(f"{func}: {name} must have shape {shape_text} with C = {C}; got {v.shape}")
    return v.reshape(C)


def _check_dout(func, dout, shape, dtype):
    """``dout`` (real numbers, the forward input's shape) as an array of ``dtype``."""
    (dout,) = _as_float(func, dout=dout)
    if dout.shape != shape:
        raise ValueError(f"{func}: dout must have the shape of x, {shape}; got {dout.shape}")
    return dout.astype(dtype, copy=False)


def _check_stat(func, name, r, C, shape):
    """A running statistic given in ``bn_param``: real numbers of shape (C,)."""
    r = np.asarray(r)
    if r.dtype.kind not in "biuf":
        raise TypeError(f"{func}: bn_param[{name!r}] must be a real numeric array; got dtype {r.dtype}")
    if r.shape != (C,):
        raise ValueError(f"{func}: bn_param[{name!r}] must have shape ({C},) for x.shape={shape}; got {r.shape}")
    return r


def _batchnorm(func, x, gamma, beta, bn_param, layout):
    """cs231n's batch norm of ``x`` (N, C, ...) per channel; returns ``(out, cache)``."""
    if not isinstance(bn_param, dict):
        raise TypeError(f"{func}: bn_param must be a dict with key 'mode'; got {type(bn_param).__name__}")
    mode = _mode(bn_param, "bn_param", func)
    xf, g, b = _as_float(func, x=x, gamma=gamma, beta=beta)
    if xf.ndim != layout.count(",") + 1:
        raise ValueError(f"{func}: x must have shape {layout}; got {xf.shape}")
    C = xf.shape[1]
    g, b = (_check_vector(func, n, v, C, "(C,)") for n, v in (("gamma", g), ("beta", b)))
    eps = _V.check_real(func, "bn_param['eps']", bn_param.get("eps", 1e-5), minimum=0.0)
    momentum = _V.check_real(func, "bn_param['momentum']", bn_param.get("momentum", 0.9))
    running_mean, running_var = (_check_stat(func, name, bn_param.get(name, np.zeros(C, dtype=xf.dtype)), C, xf.shape)
                                 for name in ("running_mean", "running_var"))
    x3 = _plan.channel_view(xf)
    if mode == "train":
        if x3.shape[0] * x3.shape[2] == 0:
            raise ValueError(f"{func}: a training batch needs at least one value per channel; got x.shape={xf.shape}")
        mean, m2 = _plan.norm_moments(x3)
        var = m2 / (x3.shape[0] * x3.shape[2])
        # In float64: a float32 running value times a huge momentum would overflow before the sum (NaN, not -inf).
        running_mean = (momentum * running_mean.astype(np.float64) + (1 - momentum) * mean).astype(xf.dtype)
        running_var = (momentum * running_var.astype(np.float64) + (1 - momentum) * var).astype(xf.dtype)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    invstd = 1.0 / np.sqrt(var + eps)
    out = _plan.norm_affine(x3, mean, invstd * g, b).reshape(xf.shape)
    return out, (x3, g, mean, invstd, mode == "train", xf.shape)


def _batchnorm_backward(func, dout, cache):
    x3, g, mean, invstd, train, shape = _unpack(cache, 6, "(x, gamma, mean, invstd, train, shape)", func)
    dout = _check_dout(func, dout, shape, x3.dtype)
    dx, dgamma, dbeta = _plan.batch_norm_backward(_plan.channel_view(dout), x3, mean, invstd, g, train)
    return dx.reshape(shape), dgamma, dbeta


@_named
def batchnorm_forward(x, gamma, beta, bn_param):
    """Forward pass for batch normalization of ``(N, D)`` features (cs231n's).

    In ``'train'`` mode each feature is normalised by the batch's mean and uncorrected
    variance, and ``bn_param`` gets ``running = momentum * running + (1 - momentum) * batch``;
    in ``'test'`` mode the running statistics are used.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    gamma, beta : ndarray, shape (D,)
        Scale and shift.
    bn_param : dict
        ``'mode'`` (``'train'`` or ``'test'``, required), ``'eps'`` (1e-5), ``'momentum'``
        (0.9), ``'running_mean'`` and ``'running_var'`` (shape (D,), zeros when missing;
        replaced by the updated arrays).

    Returns
    -------
    out : ndarray, shape (N, D)
    cache : tuple
        ``(x, gamma, mean, invstd, train, shape)``: ``x`` as a (N, D, 1) array, the
        statistics used (float64), whether they were the batch's.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.layers import batchnorm_forward
    >>> bn_param = {'mode': 'train'}
    >>> out, cache = batchnorm_forward(np.array([[1.0, 10.0], [3.0, 30.0]]), np.ones(2), np.zeros(2), bn_param)
    >>> out.round(4), bn_param['running_mean']
    (array([[-1., -1.],
           [ 1.,  1.]]), array([0.2, 2. ]))
    """
    return _batchnorm("batchnorm_forward", x, gamma, beta, bn_param, "(N, D)")


@_named
def batchnorm_backward(dout, cache):
    """Backward pass for batch normalization: ``(dx, dgamma, dbeta)``, shapes of ``x``, ``gamma``, ``beta``.

    Two compiled passes (the per-feature sums, then ``dx``). In ``'test'`` mode the running
    statistics are constants: ``dx = dout * gamma / sqrt(running_var + eps)``.
    """
    return _batchnorm_backward("batchnorm_backward", dout, cache)


@_named
def batchnorm_backward_alt(dout, cache):
    """Backward pass for batch normalization, cs231n's "simplified" version: the same result as
    :func:`batchnorm_backward`, which already computes the simplified closed form
    ``dx = gamma * invstd * (dout - mean(dout) - xhat * mean(dout * xhat))``."""
    return _batchnorm_backward("batchnorm_backward_alt", dout, cache)


@_named
def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Forward pass for spatial batch normalization of ``(N, C, H, W)`` (per channel, over N, H, W).

    ``bn_param`` as for :func:`batchnorm_forward`; ``gamma`` and ``beta`` have shape ``(C,)``.
    Returns ``(out, cache)``, ``out`` of shape ``(N, C, H, W)``; the cache is
    :func:`batchnorm_forward`'s with ``x`` as (N, C, H*W).
    """
    return _batchnorm("spatial_batchnorm_forward", x, gamma, beta, bn_param, "(N, C, H, W)")


@_named
def spatial_batchnorm_backward(dout, cache):
    """Backward pass for spatial batch normalization: ``(dx, dgamma, dbeta)``, ``dgamma``/``dbeta`` of shape (C,)."""
    return _batchnorm_backward("spatial_batchnorm_backward", dout, cache)


def _groupnorm(func, x, gamma, beta, G, param, name, layout, shape_text, broadcast_ndim=None):
    if not isinstance(param, dict):
        raise TypeError(f"{func}: {name} must be a dict (keys: 'eps'); got {type(param).__name__}")
    xf, g, b = _as_float(func, x=x, gamma=gamma, beta=beta)
    if xf.ndim != layout.count(",") + 1 or xf.shape[0] == 0:
        raise ValueError(f"{func}: x must have shape {layout} with N >= 1; got {xf.shape}")
    C = xf.shape[1]
    if isinstance(G, (bool, np.bool_)) or not isinstance(G, (int, np.integer)) or G < 1 or C % G:
        raise ValueError(f"{func}: G must be a positive int dividing C = {C} (x.shape={xf.shape}); got {G!r}")
    gv, bv = (_check_vector(func, n, v, C, shape_text, broadcast_ndim) for n, v in (("gamma", g), ("beta", b)))
    eps = _V.check_real(func, f"{name}['eps']", param.get("eps", 1e-5), minimum=0.0)
    out, saved = _plan.group_norm_forward(xf, int(G), gv, bv, eps)
    return out, (xf, int(G), saved, gv, g.shape)


def _groupnorm_backward(func, dout, cache):
    x, G, saved, g, g_shape = _unpack(cache, 5, "(x, G, (mean, invstd, xhat), gamma, gamma_shape)", func)
    dout = _check_dout(func, dout, x.shape, x.dtype)
    dx, dgamma, dbeta = _plan.group_norm_backward(dout, x, G, saved, g)
    return dx, dgamma.reshape(g_shape), dbeta.reshape(g_shape)


@_named
def layernorm_forward(x, gamma, beta, ln_param):
    """Forward pass for layer normalization: each row of ``x`` (N, D) normalised by its own mean and variance.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    gamma, beta : ndarray, shape (D,)
    ln_param : dict
        ``'eps'`` (default 1e-5).

    Returns
    -------
    out : ndarray, shape (N, D)
    cache : tuple
        ``(x, 1, (mean, invstd, xhat), gamma, gamma.shape)``.
    """
    return _groupnorm("layernorm_forward", x, gamma, beta, 1, ln_param, "ln_param", "(N, D)", "(D,)")


@_named
def layernorm_backward(dout, cache):
    """Backward pass for layer normalization: ``(dx, dgamma, dbeta)``."""
    return _groupnorm_backward("layernorm_backward", dout, cache)


@_named
def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Forward pass for spatial group normalization of ``(N, C, H, W)``: ``G`` groups of ``C // G`` channels.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    gamma, beta : ndarray, shape (1, C, 1, 1)
        As in cs231n's notebook (``(C,)`` works too); the gradients come back in this shape.
    G : int
        Number of groups, a divisor of ``C``.
    gn_param : dict
        ``'eps'`` (default 1e-5).

    Returns
    -------
    out : ndarray, shape (N, C, H, W)
    cache : tuple
        ``(x, G, (mean, invstd, xhat), gamma, gamma.shape)``.
    """
    return _groupnorm("spatial_groupnorm_forward", x, gamma, beta, G, gn_param, "gn_param", "(N, C, H, W)",
                      "(1, C, 1, 1) or (C,)", broadcast_ndim=4)


@_named
def spatial_groupnorm_backward(dout, cache):
    """Backward pass for spatial group normalization: ``(dx, dgamma, dbeta)``, gradients in ``gamma``'s shape."""
    return _groupnorm_backward("spatial_groupnorm_backward", dout, cache)


@_named
def dropout_forward(x, dropout_param):
    """Forward pass for inverted dropout (cs231n's): keep each unit with probability ``p``, scale by ``1 / p``.

    Parameters
    ----------
    x : ndarray, any shape
    dropout_param : dict
        ``'p'``: the probability of *keeping* a unit, in (0, 1]; ``'mode'``: ``'train'``
        (mask) or ``'test'`` (identity); ``'seed'`` (optional): seeds ``np.random`` first,
        so that a gradient check sees the same mask on every call (as cs231n's).

    Returns
    -------
    out : ndarray, shape of ``x``
        float32 or float64 as ``x``; another real dtype is converted to float64 first
        (in test mode too, where ``out`` is otherwise ``x`` itself, as cs231n's).
    cache : tuple
        ``(dropout_param, mask)``; ``mask`` is None in test mode.
    """
    func = "dropout_forward"
    p, mode = _get(dropout_param, ["p", "mode"], "dropout_param", func)
    if mode not in ("train", "test"):
        raise ValueError(f"{func}: dropout_param['mode'] must be 'train' or 'test'; got {mode!r}")
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.number)) or not 0 < p <= 1:
        raise ValueError(f"{func}: dropout_param['p'] (the keep probability) must be in (0, 1]; got {p!r}")
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(f"{func}: x must be an array; got {type(x).__name__}")
    (x,) = _as_float(func, x=x)
    if mode == "test":
        return x, (dropout_param, None)
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = (np.random.rand(*x.shape) < p) / p
    out = (x * mask).astype(x.dtype, copy=False)
    return out, (dropout_param, mask)


@_named
def dropout_backward(dout, cache):
    """Backward pass for inverted dropout: ``dout * mask`` in train mode, ``dout`` in test mode."""
    func = "dropout_backward"
    dropout_param, mask = _unpack(cache, 2, "(dropout_param, mask)", func)
    (dout,) = _as_float(func, dout=dout)
    if mask is None:
        return dout
    if dout.shape != mask.shape:
        raise ValueError(f"{func}: dout must have the shape of x, {mask.shape}; got {dout.shape}")
    return (dout * mask).astype(dout.dtype, copy=False)
