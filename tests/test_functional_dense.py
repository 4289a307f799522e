"""The functional ReLU, dense layer and matmul against NumPy references; their errors; inputs untouched.

(The layers built on them are compared with PyTorch in ``test_nn.py``.)
"""

import numpy as np
import pytest

import fastconv.functional as F

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (1, 1, 1, 70000)]


def _with_specials(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[:4] = [np.nan, -0.0, 0.0, np.inf][: flat.size]
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_and_its_gradient_match_numpy(shape, dtype, rng):
    x = _with_specials(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x0, dy0 = x.copy(), dy.copy()
    y = F.relu(x)
    np.testing.assert_array_equal(y, np.where(np.isnan(x) | (x > 0), x, 0))
    np.testing.assert_array_equal(F.relu_backward(dy, x), np.where(~(x <= 0), dy, 0))  # NaN lets it through
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)], ids=str)
def test_linear_and_its_gradients_match_numpy(lead, dtype, rng):
    x = rng.standard_normal(lead + (6,)).astype(dtype)
    w = rng.standard_normal((3, 6)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(lead + (3,)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    np.testing.assert_allclose(F.linear(x, w, b), x64 @ w64.T + b, **tol)
    np.testing.assert_allclose(F.linear(x, w), x64 @ w64.T, **tol)
    dx, dw, db = F.linear_backward(dy, x, w)
    d2, x2 = dy64.reshape(-1, 3), x64.reshape(-1, 6)
    np.testing.assert_allclose(dx, (d2 @ w64).reshape(x.shape), **tol)
    np.testing.assert_allclose(dw, d2.T @ x2, **tol)
    np.testing.assert_allclose(db, d2.sum(axis=0), **tol)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: F.relu([1.0]), TypeError, "relu: x must be a numpy.ndarray"),
        (lambda: F.relu(np.zeros(3, np.int64)), TypeError, "relu: x must have dtype float32 or float64"),
        (lambda: F.relu_backward(np.zeros(2), np.zeros(3)), ValueError, "relu_backward: dy must have the shape"),
        (lambda: F.relu_backward(np.zeros(3, np.float32), np.zeros(3)), TypeError, "relu_backward: dy must have the dtype"),
        (lambda: F.linear(np.zeros((2, 5)), np.zeros((3, 6))), ValueError, r"linear: x must have shape \(\*, 6\)"),
        (lambda: F.linear(np.zeros((2, 6)), np.zeros(6)), ValueError, "linear: weight must be 2-D"),
        (lambda: F.linear(np.zeros((2, 6)), np.zeros((3, 6)), np.zeros(4)), ValueError, "linear: bias must have shape"),
        (lambda: F.linear(np.zeros((2, 6), np.float32), np.zeros((3, 6))), TypeError, "linear: arrays must share"),
        (lambda: F.linear_backward(np.zeros((2, 4)), np.zeros((2, 6)), np.zeros((3, 6))), ValueError,
         r"linear_backward: dy must have shape \(2, 3\)"),
        (lambda: F.matmul(np.zeros((2, 3)), np.zeros((4, 5))), ValueError, "matmul: a.shape"),
        (lambda: F.matmul(np.zeros(3), np.zeros((3, 5))), ValueError, "matmul: a must be 2-D"),
    ],
    ids=["relu-list", "relu-int", "relu_backward-shape", "relu_backward-dtype", "linear-features",
         "linear-weight-1d", "linear-bias", "linear-dtypes", "linear_backward-dy", "matmul-chain", "matmul-1d"],
)
def test_bad_input_is_refused_with_the_function_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
