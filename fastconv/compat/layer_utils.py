"""cs231n's ``layer_utils.py`` on fastconv: ``from fastconv.compat.layer_utils import *``.

The "sandwich" layers: ``affine_relu``, ``affine_bn_relu``, ``affine_ln_relu``,
``conv_relu``, ``conv_bn_relu`` and ``conv_relu_pool``, each a ``*_forward`` returning
``(out, cache)`` and a ``*_backward(dout, cache)`` returning the gradients of the inputs in
order (``dx, dw, db`` and, with a norm, ``dgamma, dbeta``).

``*`` exports only these sandwich functions, not the layers they are made of: a student's
``fc_net.py`` that does ``from .layers import *`` then ``from .layer_utils import *`` keeps
the student's own ``layers.py`` functions. The sandwiches run on
:mod:`fastconv.compat.layers` and :mod:`fastconv.compat.fast_layers`.
"""

from ._common import _named, _unpack
from .fast_layers import conv_backward_fast, conv_forward_fast, max_pool_backward_fast, max_pool_forward_fast
from .layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
    relu_backward,
    relu_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)

__all__ = [
    "affine_relu_forward",
    "affine_relu_backward",
    "affine_bn_relu_forward",
    "affine_bn_relu_backward",
    "affine_ln_relu_forward",
    "affine_ln_relu_backward",
    "conv_relu_forward",
    "conv_relu_backward",
    "conv_bn_relu_forward",
    "conv_bn_relu_backward",
    "conv_relu_pool_forward",
    "conv_relu_pool_backward",
]


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


def _affine_norm_relu_forward(norm_forward, x, w, b, gamma, beta, param):
    a, fc_cache = affine_forward(x, w, b)
    an, norm_cache = norm_forward(a, gamma, beta, param)
    out, relu_cache = relu_forward(an)
    return out, (fc_cache, norm_cache, relu_cache)


def _affine_norm_relu_backward(norm_backward, dout, cache, func):
    fc_cache, norm_cache, relu_cache = _unpack(cache, 3, "(fc_cache, norm_cache, relu_cache)", func)
    da, dgamma, dbeta = norm_backward(relu_backward(dout, relu_cache), norm_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """Affine, batch norm (:func:`~fastconv.compat.layers.batchnorm_forward`), ReLU.

    Returns ``(out, (fc_cache, bn_cache, relu_cache))``.
    """
    return _affine_norm_relu_forward(batchnorm_forward, x, w, b, gamma, beta, bn_param)


def affine_bn_relu_backward(dout, cache):
    """Backward of :func:`affine_bn_relu_forward`; returns ``(dx, dw, db, dgamma, dbeta)``."""
    return _affine_norm_relu_backward(batchnorm_backward, dout, cache, "affine_bn_relu_backward")


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    """Affine, layer norm (:func:`~fastconv.compat.layers.layernorm_forward`), ReLU.

    Returns ``(out, (fc_cache, ln_cache, relu_cache))``.
    """
    return _affine_norm_relu_forward(layernorm_forward, x, w, b, gamma, beta, ln_param)


def affine_ln_relu_backward(dout, cache):
    """Backward of :func:`affine_ln_relu_forward`; returns ``(dx, dw, db, dgamma, dbeta)``."""
    return _affine_norm_relu_backward(layernorm_backward, dout, cache, "affine_ln_relu_backward")


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """Convolution, spatial batch norm, ReLU (cs231n's). Returns ``(out, (conv_cache, bn_cache, relu_cache))``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """Backward of :func:`conv_bn_relu_forward`; returns ``(dx, dw, db, dgamma, dbeta)``."""
    conv_cache, bn_cache, relu_cache = _unpack(cache, 3, "(conv_cache, bn_cache, relu_cache)",
                                               "conv_bn_relu_backward")
    da, dgamma, dbeta = spatial_batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)
    dx, dw, db = conv_backward_fast(da, conv_cache)
    return dx, dw, db, dgamma, dbeta
