"""fastconv.compat: the cs231n drop-in (fast_layers.py, layer_utils.py, layers.py names).

Every function is compared with the textbook formula written out below with loops
(float64) and its gradients with central finite differences, as cs231n's own
gradient checks do; the caches and dict keys follow cs231n's conventions.
"""

import numpy as np
import pytest

import fastconv.compat as compat
from fastconv.compat import (
    affine_backward,
    affine_forward,
    affine_relu_backward,
    affine_relu_forward,
    conv_backward_fast,
    conv_backward_naive,
    conv_forward_fast,
    conv_forward_naive,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
    max_pool_backward_fast,
    max_pool_backward_naive,
    max_pool_forward_fast,
    max_pool_forward_naive,
    relu_backward,
    relu_forward,
    softmax_loss,
    svm_loss,
)


def rel_error(x, y):
    """cs231n's relative error."""
    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))


def assert_grad_close(analytic, numeric, name=""):
    """Analytic vs finite-difference gradient; the tolerance covers the differencing noise only."""
    assert analytic.shape == numeric.shape, name
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(numeric).max()),
                               err_msg=name)


def num_grad_array(f, x, df, h=1e-5):
    """Numerical gradient of ``sum(f() * df)`` w.r.t. ``x`` (perturbed in place), as cs231n's checker."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = np.sum(f() * df)
        x[ix] = old - h
        neg = np.sum(f() * df)
        x[ix] = old
        grad[ix] = (pos - neg) / (2 * h)
        it.iternext()
    return grad


def conv_formula(x, w, b, stride, pad):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out


def pool_formula(x, ph, pw, stride):
    N, C, H, W = x.shape
    Ho, Wo = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            out[:, :, i, j] = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw].max(axis=(2, 3))
    return out


CONV_CASES = [
    pytest.param((2, 3, 4, 4), (3, 3, 4, 4), 2, 1, id="cs231n-notebook"),
    pytest.param((2, 3, 5, 5), (2, 3, 3, 3), 1, 1, id="3x3-same"),
    pytest.param((1, 2, 7, 6), (3, 2, 3, 2), 2, 0, id="stride2-leftover"),
    pytest.param((2, 1, 4, 5), (2, 1, 1, 1), 1, 0, id="1x1"),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CONV_CASES)
def test_conv_forward_matches_formula_and_keeps_cs231n_cache(x_shape, w_shape, stride, pad, rng):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    conv_param = {"stride": stride, "pad": pad}
    out, cache = conv_forward_fast(x, w, b, conv_param)
    H, W = x_shape[2:]
    assert out.shape == (x_shape[0], w_shape[0], 1 + (H + 2 * pad - w_shape[2]) // stride,
                         1 + (W + 2 * pad - w_shape[3]) // stride)
    assert out.dtype == np.float64
    assert rel_error(out, conv_formula(x, w, b, stride, pad)) < 1e-12
    assert isinstance(cache, tuple) and len(cache) == 4
    assert cache[0] is x and cache[1] is w and cache[2] is b and cache[3] is conv_param


@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CONV_CASES)
def test_conv_backward_matches_finite_differences(x_shape, w_shape, stride, pad, rng):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    conv_param = {"stride": stride, "pad": pad}
    out, cache = conv_forward_naive(x, w, b, conv_param)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv_backward_naive(dout, cache)

    def f():
        return conv_forward_naive(x, w, b, conv_param)[0]

    assert_grad_close(dx, num_grad_array(f, x, dout))
    assert_grad_close(dw, num_grad_array(f, w, dout))
    assert_grad_close(db, num_grad_array(f, b, dout))
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_fast_and_naive_are_the_same_kernels(rng):
    assert conv_forward_naive is conv_forward_fast and conv_backward_naive is conv_backward_fast
    assert max_pool_forward_naive is max_pool_forward_fast and max_pool_backward_naive is max_pool_backward_fast
    for name in ("conv_forward_im2col", "conv_forward_strides"):
        assert getattr(compat, name) is conv_forward_fast
    for name in ("max_pool_forward_reshape", "max_pool_forward_im2col"):
        assert getattr(compat, name) is max_pool_forward_fast


def _distinct(rng, shape):
    """Values 0.1 apart in random order: no ties, and no kink within a finite-difference step."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1


POOL_CASES = [
    pytest.param((2, 3, 4, 4), 2, 2, 2, id="2x2-s2"),
    pytest.param((2, 2, 7, 7), 3, 3, 2, id="3x3-s2-overlap"),
    pytest.param((1, 2, 5, 8), 2, 3, 1, id="2x3-s1"),
    pytest.param((2, 1, 5, 5), 2, 2, 2, id="leftover-row-col"),
]


@pytest.mark.parametrize("x_shape, ph, pw, stride", POOL_CASES)
def test_max_pool_forward_and_cache(x_shape, ph, pw, stride, rng):
    x = _distinct(rng, x_shape)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = max_pool_forward_fast(x, pool_param)
    np.testing.assert_array_equal(out, pool_formula(x, ph, pw, stride))
    assert isinstance(cache, tuple) and len(cache) == 3
    assert cache[0] is x and cache[1] is pool_param
    indices = cache[2]
    assert indices.dtype == np.int64 and indices.shape == out.shape
    W = x_shape[3]
    planes = x.reshape(x_shape[0], x_shape[1], -1)
    np.testing.assert_array_equal(np.take_along_axis(planes, indices.reshape(*out.shape[:2], -1), 2),
                                  out.reshape(*out.shape[:2], -1))
    assert (indices % W < W).all()


@pytest.mark.parametrize("x_shape, ph, pw, stride", POOL_CASES)
def test_max_pool_backward_matches_finite_differences(x_shape, ph, pw, stride, rng):
    x = _distinct(rng, x_shape)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = max_pool_forward_naive(x, pool_param)
    dout = rng.standard_normal(out.shape)
    dx = max_pool_backward_naive(dout, cache)
    expected = num_grad_array(lambda: max_pool_forward_naive(x, pool_param)[0], x, dout)
    assert_grad_close(dx, expected)


def test_max_pool_ties_go_to_the_first_maximum():
    x = np.ones((1, 1, 2, 2))
    out, cache = max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = max_pool_backward_fast(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_relu(rng):
    x = rng.uniform(0.1, 1.0, (3, 4, 5)) * rng.choice([-1.0, 1.0], (3, 4, 5))
    out, cache = relu_forward(x)
    assert cache is x
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0.0))
    dout = rng.standard_normal(x.shape)
    dx = relu_backward(dout, cache)
    assert_grad_close(dx, num_grad_array(lambda: relu_forward(x)[0], x, dout))
    np.testing.assert_array_equal(relu_backward(np.ones(2), np.array([0.0, 1.0])), [0.0, 1.0])  # 0 at x == 0


def test_affine(rng):
    x, w, b = rng.standard_normal((4, 2, 3)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    out, cache = affine_forward(x, w, b)
    np.testing.assert_allclose(out, x.reshape(4, 6) @ w + b, rtol=1e-14)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    dout = rng.standard_normal(out.shape)
    dx, dw, db = affine_backward(dout, cache)

    def f():
        return affine_forward(x, w, b)[0]

    assert dx.shape == x.shape
    assert_grad_close(dx, num_grad_array(f, x, dout))
    assert_grad_close(dw, num_grad_array(f, w, dout))
    assert_grad_close(db, num_grad_array(f, b, dout))


@pytest.mark.parametrize("loss_fn", [softmax_loss, svm_loss], ids=["softmax", "svm"])
def test_losses_match_finite_differences(loss_fn, rng):
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    loss, dx = loss_fn(x, y)
    assert isinstance(loss, float)
    h = 1e-6
    num = np.zeros_like(x)
    for ix in np.ndindex(x.shape):
        old = x[ix]
        x[ix] = old + h
        pos = loss_fn(x, y)[0]
        x[ix] = old - h
        neg = loss_fn(x, y)[0]
        x[ix] = old
        num[ix] = (pos - neg) / (2 * h)
    assert_grad_close(dx, num)


def test_loss_values_match_formulas(rng):
    x = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert softmax_loss(x, y)[0] == pytest.approx(-np.mean(np.log(p[np.arange(5), y])), rel=1e-13)
    margins = np.maximum(0, x - x[np.arange(5), y][:, None] + 1)
    margins[np.arange(5), y] = 0
    assert svm_loss(x, y)[0] == pytest.approx(margins.sum() / 5, rel=1e-13)
    # cs231n's sanity checks: ~log(C) and ~C-1 for tiny scores
    small = 1e-3 * rng.standard_normal((50, 10))
    labels = rng.integers(0, 10, 50)
    assert softmax_loss(small, labels)[0] == pytest.approx(np.log(10), rel=1e-2)
    assert svm_loss(small, labels)[0] == pytest.approx(9, rel=1e-2)
    assert np.isfinite(softmax_loss(1e4 * x, y)[0])  # stable for huge scores


def test_conv_relu_and_conv_relu_pool(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((3, 3, 3, 3)), rng.standard_normal(3)
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}

    out, cache = conv_relu_forward(x, w, b, conv_param)
    conv_out, conv_cache = conv_forward_fast(x, w, b, conv_param)
    np.testing.assert_array_equal(out, np.maximum(conv_out, 0))
    assert len(cache) == 2 and cache[0][0] is x and cache[0][3] is conv_param

    out2, cache2 = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    np.testing.assert_array_equal(out2, pool_formula(np.maximum(conv_out, 0), 2, 2, 2))
    assert len(cache2) == 3 and cache2[2][1] is pool_param

    for forward, backward, extra, o in (
        (conv_relu_forward, conv_relu_backward, (), out),
        (conv_relu_pool_forward, conv_relu_pool_backward, (pool_param,), out2),
    ):
        dout = rng.standard_normal(o.shape)
        dx, dw, db = backward(dout, forward(x, w, b, conv_param, *extra)[1])

        def f():
            return forward(x, w, b, conv_param, *extra)[0]

        assert_grad_close(dx, num_grad_array(f, x, dout), forward.__name__)
        assert_grad_close(dw, num_grad_array(f, w, dout), forward.__name__)
        assert_grad_close(db, num_grad_array(f, b, dout), forward.__name__)


def test_affine_relu(rng):
    x, w, b = rng.standard_normal((3, 2, 2)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    out, cache = affine_relu_forward(x, w, b)
    np.testing.assert_allclose(out, np.maximum(x.reshape(3, 4) @ w + b, 0), rtol=1e-14)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = affine_relu_backward(dout, cache)

    def f():
        return affine_relu_forward(x, w, b)[0]

    assert_grad_close(dx, num_grad_array(f, x, dout))
    assert_grad_close(dw, num_grad_array(f, w, dout))
    assert_grad_close(db, num_grad_array(f, b, dout))


def test_three_layer_convnet_gradient_check(rng):
    """cs231n's ThreeLayerConvNet written against the drop-in: every parameter's gradient checks out."""
    N, C, H, W, F, hidden, classes = 2, 1, 6, 6, 2, 5, 3
    params = {
        "W1": 0.5 * rng.standard_normal((F, C, 3, 3)), "b1": 0.1 * rng.standard_normal(F),
        "W2": 0.5 * rng.standard_normal((F * (H // 2) * (W // 2), hidden)), "b2": 0.1 * rng.standard_normal(hidden),
        "W3": 0.5 * rng.standard_normal((hidden, classes)), "b3": 0.1 * rng.standard_normal(classes),
    }
    X = rng.standard_normal((N, C, H, W))
    y = rng.integers(0, classes, N)
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}

    def loss_and_grads():
        h1, c1 = conv_relu_pool_forward(X, params["W1"], params["b1"], conv_param, pool_param)
        h2, c2 = affine_relu_forward(h1, params["W2"], params["b2"])
        scores, c3 = affine_forward(h2, params["W3"], params["b3"])
        loss, dscores = softmax_loss(scores, y)
        grads = {}
        dh2, grads["W3"], grads["b3"] = affine_backward(dscores, c3)
        dh1, grads["W2"], grads["b2"] = affine_relu_backward(dh2, c2)
        _, grads["W1"], grads["b1"] = conv_relu_pool_backward(dh1, c1)
        return loss, grads

    _, grads = loss_and_grads()
    for name, value in params.items():
        num = num_grad_array(lambda: np.array(loss_and_grads()[0]), value, np.array(1.0), h=1e-6)
        assert_grad_close(grads[name], num, name)


def test_dtypes(rng):
    conv_param = {"stride": 1, "pad": 1}
    x32 = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w32 = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    b32 = np.zeros(2, np.float32)
    out, cache = conv_forward_fast(x32, w32, b32, conv_param)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv_backward_fast(np.ones_like(out), cache))
    # mixed float32/float64 and integer inputs are computed in float64
    assert conv_forward_fast(x32, w32.astype(np.float64), b32, conv_param)[0].dtype == np.float64
    xi = np.arange(32).reshape(1, 2, 4, 4)
    out_i, _ = conv_forward_fast(xi, w32.astype(np.float64), np.zeros(2), conv_param)
    assert out_i.dtype == np.float64
    np.testing.assert_allclose(out_i, conv_formula(xi.astype(float), w32.astype(float), np.zeros(2), 1, 1),
                               rtol=1e-12)
    pooled, pcache = max_pool_forward_fast(x32, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert pooled.dtype == np.float32 and max_pool_backward_fast(np.ones_like(pooled), pcache).dtype == np.float32


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x, w, b: conv_forward_fast(x, w, b, {"stride": 1}), KeyError, "pad"),
        (lambda x, w, b: conv_forward_fast(x, w, b, (1, 1)), TypeError, "conv_param"),
        (lambda x, w, b: max_pool_forward_fast(x, {"pool_height": 2, "stride": 2}), KeyError, "pool_width"),
        (lambda x, w, b: conv_backward_fast(np.zeros((1, 2, 4, 4)), (x, w, b)), TypeError, "cache"),
        (lambda x, w, b: max_pool_backward_fast(np.zeros((1, 2, 2, 2)), (x, {})), TypeError, "cache"),
        (lambda x, w, b: conv_forward_fast(x, w[:, :1], b, {"stride": 1, "pad": 1}), ValueError, "channels"),
        (lambda x, w, b: affine_forward(x, np.zeros((5, 3)), np.zeros(3)), ValueError, "D ="),
        (lambda x, w, b: softmax_loss(np.zeros((2, 3)), np.array([0, 3])), ValueError, r"\[0, 3\)"),
        (lambda x, w, b: softmax_loss(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, "integer"),
    ],
    ids=["conv-no-pad", "conv-param-tuple", "pool-no-width", "conv-bad-cache", "pool-bad-cache",
         "conv-channels", "affine-shapes", "label-range", "float-labels"],
)
def test_errors(call, exc, match, rng):
    x, w, b = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 3, 3)), np.zeros(2)
    with pytest.raises(exc, match=match):
        call(x, w, b)


def test_star_import_provides_the_cs231n_names():
    namespace = {}
    exec("from fastconv.compat import *", namespace)
    for name in ["conv_forward_fast", "conv_backward_fast", "conv_forward_naive", "conv_backward_naive",
                 "max_pool_forward_fast", "max_pool_backward_fast", "max_pool_forward_naive",
                 "max_pool_backward_naive", "conv_relu_forward", "conv_relu_backward", "conv_relu_pool_forward",
                 "conv_relu_pool_backward", "relu_forward", "relu_backward", "affine_forward", "affine_backward",
                 "affine_relu_forward", "affine_relu_backward", "softmax_loss", "svm_loss"]:
        assert callable(namespace[name]), name


def test_inputs_not_modified(rng):
    x, w, b = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    copies = [a.copy() for a in (x, w, b)]
    out, cache = conv_relu_pool_forward(x, w, b, {"stride": 1, "pad": 1},
                                        {"pool_height": 2, "pool_width": 2, "stride": 2})
    dout = rng.standard_normal(out.shape)
    dout_copy = dout.copy()
    conv_relu_pool_backward(dout, cache)
    for a, c in zip((x, w, b, dout), copies + [dout_copy]):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------------------------
# The package layout: one module per cs231n file
# ---------------------------------------------------------------------------------------

CS231N_FAST_LAYERS = {
    "conv_forward_fast", "conv_backward_fast", "conv_forward_im2col", "conv_backward_im2col",
    "conv_forward_strides", "conv_backward_strides", "max_pool_forward_fast", "max_pool_backward_fast",
    "max_pool_forward_reshape", "max_pool_backward_reshape", "max_pool_forward_im2col", "max_pool_backward_im2col",
}


def _star(module):
    namespace = {}
    exec(f"from {module} import *", namespace)
    namespace.pop("__builtins__")
    return namespace


def test_fast_layers_star_import_is_exactly_cs231ns_names():
    names = set(_star("fastconv.compat.fast_layers"))
    assert names == CS231N_FAST_LAYERS
    assert not any(n.endswith("_naive") for n in names)


def test_layers_and_layer_utils_star_imports():
    layers = _star("fastconv.compat.layers")
    for name in ["affine_forward", "affine_backward", "relu_forward", "relu_backward", "batchnorm_forward",
                 "batchnorm_backward", "batchnorm_backward_alt", "layernorm_forward", "layernorm_backward",
                 "dropout_forward", "dropout_backward", "conv_forward_naive", "conv_backward_naive",
                 "max_pool_forward_naive", "max_pool_backward_naive", "spatial_batchnorm_forward",
                 "spatial_batchnorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward",
                 "svm_loss", "softmax_loss"]:
        assert callable(layers.pop(name)), name
    assert not layers, f"layers exports more than cs231n's layers.py: {sorted(layers)}"
    utils = set(_star("fastconv.compat.layer_utils"))
    assert {"conv_bn_relu_forward", "conv_bn_relu_backward", "affine_bn_relu_forward", "affine_ln_relu_backward",
            "conv_relu_pool_forward", "affine_relu_forward"} <= utils
    # only sandwiches: a student's own layers.py functions are never replaced by layer_utils' star import
    assert not utils & set(_star("fastconv.compat.layers")) and not utils & CS231N_FAST_LAYERS
    top = _star("fastconv.compat")
    assert "conv_bn_relu_forward" in top and "spatial_batchnorm_forward" in top and "conv_forward_naive" in top


def test_the_tie_rule_is_documented_as_cs231ns_naive_code():
    import fastconv.compat.fast_layers as fl

    assert "splits a tie's gradient" in " ".join(fl.__doc__.split())
    assert "as cs231n's fast version" not in fl.__doc__


# ---------------------------------------------------------------------------------------
# Normalisation and dropout (cs231n assignment 2, BatchNormalization / LayerNormalization /
# Dropout / ConvolutionalNetworks notebooks)
# ---------------------------------------------------------------------------------------

from fastconv import reference as ref  # noqa: E402
from fastconv.compat.layer_utils import (  # noqa: E402
    affine_bn_relu_backward,
    affine_bn_relu_forward,
    affine_ln_relu_backward,
    affine_ln_relu_forward,
    conv_bn_relu_backward,
    conv_bn_relu_forward,
)
from fastconv.compat.layers import (  # noqa: E402
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)


def _check_grads(forward, args, dout, grads, names):
    """cs231n's eval_numerical_gradient_array on every listed argument of ``forward``."""
    for name, g in zip(names, grads):
        arr = args[name]
        num = num_grad_array(lambda: forward(**args)[0], arr, dout)
        assert g.shape == arr.shape, name
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8, err_msg=name)


def test_batchnorm_forward_train_and_test_like_the_notebook(rng):
    N, D1, D2, D3 = 200, 50, 60, 3
    X = rng.standard_normal((N, D1))
    W1, W2 = rng.standard_normal((D1, D2)), rng.standard_normal((D2, D3))
    a = np.maximum(0, X.dot(W1)).dot(W2)
    gamma, beta = np.asarray([1.0, 2.0, 3.0]), np.asarray([11.0, 12.0, 13.0])
    out, _ = batchnorm_forward(a, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-6)
    want = ref.batch_norm(a, None, None, gamma, beta, training=True)[0]
    assert rel_error(out, want) < 1e-10

    bn_param = {"mode": "train"}
    running_mean, running_var = np.zeros(D3), np.zeros(D3)
    for _ in range(50):
        a = np.maximum(0, rng.standard_normal((N, D1)).dot(W1)).dot(W2)
        batchnorm_forward(a, gamma, beta, bn_param)
        running_mean = 0.9 * running_mean + 0.1 * a.mean(axis=0)
        running_var = 0.9 * running_var + 0.1 * a.var(axis=0)  # cs231n: the uncorrected variance
    np.testing.assert_allclose(bn_param["running_mean"], running_mean, rtol=1e-12)
    np.testing.assert_allclose(bn_param["running_var"], running_var, rtol=1e-12)
    bn_param["mode"] = "test"
    a = np.maximum(0, rng.standard_normal((N, D1)).dot(W1)).dot(W2)
    out, _ = batchnorm_forward(a, gamma, beta, bn_param)
    np.testing.assert_allclose(out, (a - running_mean) / np.sqrt(running_var + 1e-5) * gamma + beta, rtol=1e-12)
    np.testing.assert_allclose(out.mean(axis=0), beta, rtol=0.2)  # the notebook's "means close to beta"


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_alt], ids=["backward", "alt"])
def test_batchnorm_backward_matches_numeric_gradients(backward, mode, rng):
    N, D = 4, 5
    x = 5 * rng.standard_normal((N, D)) + 12
    gamma, beta = rng.standard_normal(D), rng.standard_normal(D)
    dout = rng.standard_normal((N, D))
    stats = {"running_mean": rng.standard_normal(D), "running_var": rng.uniform(1, 2, D)}

    def forward(x, gamma, beta):
        return batchnorm_forward(x, gamma, beta, {"mode": mode, **{k: v.copy() for k, v in stats.items()}})

    _, cache = forward(x, gamma, beta)
    dx, dgamma, dbeta = backward(dout, cache)
    _check_grads(forward, {"x": x, "gamma": gamma, "beta": beta}, dout, (dx, dgamma, dbeta), ["x", "gamma", "beta"])


def test_spatial_batchnorm_like_the_notebook(rng):
    N, C, H, W = 10, 4, 11, 12
    x = 4 * rng.standard_normal((N, C, H, W)) + 10
    gamma, beta = np.asarray([3.0, 4.0, 5.0, 6.0]), np.asarray([6.0, 7.0, 8.0, 9.0])
    out, _ = spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-6)
    assert rel_error(out, ref.batch_norm(x, None, None, gamma, beta, training=True)[0]) < 1e-10


def test_spatial_batchnorm_backward_matches_numeric_gradients(rng):
    """The ConvolutionalNetworks notebook's gradient check (N, C, H, W = 2, 3, 4, 5)."""
    N, C, H, W = 2, 3, 4, 5
    x = 5 * rng.standard_normal((N, C, H, W)) + 12
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    dout = rng.standard_normal((N, C, H, W))

    def forward(x, gamma, beta):
        return spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})

    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, forward(x, gamma, beta)[1])
    _check_grads(forward, {"x": x, "gamma": gamma, "beta": beta}, dout, (dx, dgamma, dbeta), ["x", "gamma", "beta"])


def test_spatial_groupnorm_matches_reference_and_numeric_gradients(rng):
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * rng.standard_normal((N, C, H, W)) + 12
    gamma, beta = rng.standard_normal((1, C, 1, 1)), rng.standard_normal((1, C, 1, 1))
    dout = rng.standard_normal((N, C, H, W))
    out, cache = spatial_groupnorm_forward(x, gamma, beta, G, {})
    assert rel_error(out, ref.group_norm(x, G, gamma.ravel(), beta.ravel())) < 1e-10

    def forward(x, gamma, beta):
        return spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-5})

    dx, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
    wdx, wdg, wdb = ref.group_norm_backward(dout, x, G, gamma.ravel())
    assert rel_error(dx, wdx) < 1e-9
    assert rel_error(dgamma.ravel(), wdg) < 1e-12 and rel_error(dbeta.ravel(), wdb) < 1e-12
    _check_grads(forward, {"x": x, "gamma": gamma, "beta": beta}, dout, (dx, dgamma, dbeta), ["x", "gamma", "beta"])


def test_layernorm_matches_reference_and_numeric_gradients(rng):
    N, D = 4, 5
    x = 5 * rng.standard_normal((N, D)) + 12
    gamma, beta = rng.standard_normal(D), rng.standard_normal(D)
    dout = rng.standard_normal((N, D))
    out, cache = layernorm_forward(x, gamma, beta, {"eps": 1e-5})
    np.testing.assert_allclose(out, ref.group_norm(x, 1, gamma, beta), rtol=1e-12, atol=1e-12)
    xhat = (out - beta) / gamma
    np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(xhat.std(axis=1), 1, rtol=1e-5)

    def forward(x, gamma, beta):
        return layernorm_forward(x, gamma, beta, {})

    dx, dgamma, dbeta = layernorm_backward(dout, cache)
    _check_grads(forward, {"x": x, "gamma": gamma, "beta": beta}, dout, (dx, dgamma, dbeta), ["x", "gamma", "beta"])


def test_norms_are_sound_for_a_large_mean_in_float32(rng):
    x = (1000 + rng.standard_normal((64, 8, 6, 6))).astype(np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    x64 = x.astype(np.float64)
    out, _ = spatial_batchnorm_forward(x, g, b, {"mode": "train"})
    assert out.dtype == np.float32 and np.abs(out - ref.batch_norm(x64, None, None, training=True)[0]).max() < 1e-4
    out, _ = spatial_groupnorm_forward(x, g.reshape(1, 8, 1, 1), b.reshape(1, 8, 1, 1), 4, {})
    assert np.abs(out - ref.group_norm(x64, 4)).max() < 1e-4
    flat = x.reshape(64, -1)
    out, _ = layernorm_forward(flat, np.ones(flat.shape[1], np.float32), np.zeros(flat.shape[1], np.float32), {})
    assert np.abs(out - ref.group_norm(flat.astype(np.float64), 1)).max() < 1e-4


def test_dropout_like_the_notebook(rng):
    x = rng.standard_normal((500, 500)) + 10
    for p in [0.25, 0.4, 0.7]:
        out, _ = dropout_forward(x, {"mode": "train", "p": p})
        out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
        assert abs(x.mean() - out.mean()) < 0.1
        np.testing.assert_array_equal(out_test, x)
        assert abs((out == 0).mean() - (1 - p)) < 0.01
    x = rng.standard_normal((10, 10)) + 10
    dout = rng.standard_normal(x.shape)
    param = {"mode": "train", "p": 0.2, "seed": 123}
    out, cache = dropout_forward(x, param)
    dx = dropout_backward(dout, cache)
    assert_grad_close(dx, num_grad_array(lambda: dropout_forward(x, param)[0], x, dout))
    np.testing.assert_array_equal(dropout_backward(dout, dropout_forward(x, {"mode": "test", "p": 0.2})[1]), dout)


def test_conv_bn_relu_and_affine_norm_relu_sandwiches(rng):
    x, w, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    conv_param = {"stride": 1, "pad": 1}

    def conv_bn_relu(x, w, b, gamma, beta):
        return conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, {"mode": "train"})

    out, cache = conv_bn_relu(x, w, b, gamma, beta)
    conv_out = conv_formula(x, w, b, 1, 1)
    np.testing.assert_allclose(out, np.maximum(ref.batch_norm(conv_out, None, None, gamma, beta, True)[0], 0),
                               rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    _check_grads(conv_bn_relu, {"x": x, "w": w, "b": b, "gamma": gamma, "beta": beta}, dout,
                 conv_bn_relu_backward(dout, cache), ["x", "w", "b", "gamma", "beta"])

    xa, wa, ba = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    ga, be = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    for forward, backward, param in ((affine_bn_relu_forward, affine_bn_relu_backward, {"mode": "train"}),
                                     (affine_ln_relu_forward, affine_ln_relu_backward, {})):
        def f(x, w, b, gamma, beta):
            return forward(x, w, b, gamma, beta, dict(param))

        out, cache = f(xa, wa, ba, ga, be)
        dout = rng.standard_normal(out.shape)
        _check_grads(f, {"x": xa, "w": wa, "b": ba, "gamma": ga, "beta": be}, dout, backward(dout, cache),
                     ["x", "w", "b", "gamma", "beta"])


def test_norm_inputs_not_modified_and_dtypes(rng):
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    copies = [a.copy() for a in (x, g, b)]
    rm = np.zeros(4, np.float32)
    bn_param = {"mode": "train", "running_mean": rm}
    out, cache = spatial_batchnorm_forward(x, g, b, bn_param)
    dx, dg, db = spatial_batchnorm_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dg.dtype == np.float32 and bn_param["running_mean"].dtype == np.float32
    np.testing.assert_array_equal(rm, 0)  # the dict gets a new array, as cs231n's code does
    out, cache = spatial_groupnorm_forward(x, g.reshape(1, 4, 1, 1), b.reshape(1, 4, 1, 1), 2, {})
    assert out.dtype == np.float32 and spatial_groupnorm_backward(np.ones_like(out), cache)[1].shape == (1, 4, 1, 1)
    for a, c in zip((x, g, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x: batchnorm_forward(x, np.ones(3), np.zeros(3), {}), KeyError, "mode"),
        (lambda x: batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "eval"}), ValueError, "'train' or 'test'"),
        (lambda x: batchnorm_forward(x, np.ones(4), np.zeros(3), {"mode": "train"}), ValueError, r"gamma.*\(4,\)"),
        (lambda x: batchnorm_forward(x[None], np.ones(3), np.zeros(3), {"mode": "train"}), ValueError, r"\(N, D\)"),
        (lambda x: spatial_groupnorm_forward(np.ones((2, 6, 2, 2)), np.ones(6), np.ones(6), 4, {}), ValueError,
         "G must be a positive int dividing C = 6"),
        (lambda x: dropout_forward(x, {"mode": "train", "p": 0.0}), ValueError, "keep probability"),
        (lambda x: batchnorm_backward(np.ones((2, 2)), batchnorm_forward(x, np.ones(3), np.zeros(3),
                                                                          {"mode": "train"})[1]),
         ValueError, "dout must have the shape of x"),
        # Found by tests/test_fuzz.py's entries for these functions: every error names the function.
        (lambda x: batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "eps": None}), TypeError,
         r"batchnorm_forward: bn_param\['eps'\] must be a real number"),
        (lambda x: spatial_batchnorm_forward(x[:, :, None, None], np.ones(3), np.zeros(3),
                                             {"mode": "test", "momentum": "0.9"}), TypeError,
         r"spatial_batchnorm_forward: bn_param\['momentum'\] must be a real number"),
        (lambda x: layernorm_forward(x, np.ones(3), np.zeros(3), {"eps": -1.0}), ValueError,
         r"layernorm_forward: ln_param\['eps'\] must be >= 0"),
        (lambda x: batchnorm_forward(x, np.ones((1, 3)), np.zeros(3), {"mode": "train"}), ValueError,
         r"batchnorm_forward: gamma must have shape \(C,\) with C = 3; got \(1, 3\)"),
        (lambda x: batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "test", "running_var": np.ones(3, complex)}),
         TypeError, r"batchnorm_forward: bn_param\['running_var'\] must be a real numeric array"),
        (lambda x: layernorm_backward(np.ones((4, 3), complex), layernorm_forward(x, np.ones(3), np.zeros(3), {})[1]),
         TypeError, "layernorm_backward: dout must be a real numeric array; got dtype complex128"),
        (lambda x: dropout_forward(x.astype(complex), {"mode": "train", "p": 0.5}), TypeError,
         "dropout_forward: x must be a real numeric array"),
        (lambda x: dropout_forward(1.5, {"mode": "train", "p": 0.5}), TypeError, "dropout_forward: x must be an array"),
        (lambda x: dropout_forward(x, {"mode": "train", "p": 0.5, "seed": -1}), ValueError, "dropout_forward: "),
    ],
    ids=["no-mode", "bad-mode", "gamma-shape", "bn-ndim", "groups", "dropout-p", "dout-shape", "eps-none",
         "momentum-str", "eps-negative", "gamma-1xD", "running-complex", "dout-complex", "dropout-complex",
         "dropout-scalar", "dropout-seed"],
)
def test_norm_errors(call, exc, match, rng):
    with pytest.raises(exc, match=match):
        call(rng.standard_normal((4, 3)))


def test_dropout_converts_integer_arrays_to_float(rng):
    """An integer dout (or x) is converted to float64 as the drop-in's other functions do, not truncated."""
    x = np.arange(1, 9).reshape(2, 4)
    param = {"mode": "train", "p": 0.5, "seed": 0}
    out, cache = dropout_forward(x, param)
    np.random.seed(0)
    mask = (np.random.rand(2, 4) < 0.5) / 0.5
    assert out.dtype == np.float64 and mask.any() and not mask.all()
    np.testing.assert_array_equal(out, x * mask)
    np.testing.assert_array_equal(dropout_backward(np.full((2, 4), 3), cache), 3 * mask)
