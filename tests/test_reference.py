"""Checks of the pure-NumPy reference itself (fastconv.reference).

Everything else is tested against the reference, so it is checked here against two
independent sources: float64 central finite differences (for its gradients) and
PyTorch (for everything, when torch is installed).
"""

import numpy as np
import pytest

from fastconv import reference as ref

# (N, C, H, W, F, KH, KW, stride, padding)
CONV_CASES = [
    (2, 3, 7, 6, 4, 3, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 3, 1, 1),
    (1, 2, 9, 8, 3, 3, 2, 2, 1),
    (2, 1, 8, 9, 5, 1, 1, 3, 0),
    (1, 2, 10, 9, 3, 5, 5, (1, 2), (0, 2)),
    (2, 2, 9, 11, 3, 2, 4, (2, 3), (1, 2)),
    (1, 3, 7, 7, 2, 7, 7, 1, 3),
    (1, 2, 6, 11, 17, 5, 2, 2, 2),
    (3, 2, 5, 5, 2, 5, 5, 1, 0),  # kernel covers the whole input: 1x1 output
]


def conv_id(case):
    N, C, H, W, F, KH, KW, s, p = case
    return f"N{N}-C{C}-{H}x{W}-F{F}-k{KH}x{KW}-s{s}-p{p}".replace(" ", "")


def make_conv(case, rng):
    N, C, H, W, F, KH, KW, s, p = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, KH, KW))
    b = rng.standard_normal(F)
    y = ref.conv2d(x, w, b, s, p)
    dy = rng.standard_normal(y.shape)
    return x, w, b, dy


# (N, C, H, W, kernel, stride, padding)
POOL_CASES = [
    (2, 2, 8, 8, 2, None, 0),
    (1, 3, 7, 9, 3, 2, 1),
    (2, 1, 9, 7, 3, 1, 1),  # overlapping windows
    (1, 2, 10, 11, (2, 3), (3, 1), (1, 1)),
    (2, 2, 9, 9, 2, 3, 0),  # stride larger than kernel: some inputs in no window
    (1, 2, 5, 7, (5, 7), None, 0),  # global pooling
    (1, 1, 6, 6, 4, 1, 2),
]


def pool_id(case):
    N, C, H, W, k, s, p = case
    return f"N{N}-C{C}-{H}x{W}-k{k}-s{s}-p{p}".replace(" ", "")


def pool_output_shape(case):
    N, C, H, W, k, s, p = case
    kh, kw = (k, k) if np.ndim(k) == 0 else k
    sh, sw = (kh, kw) if s is None else ((s, s) if np.ndim(s) == 0 else s)
    ph, pw = (p, p) if np.ndim(p) == 0 else p
    return N, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def distinct_values(shape, rng):
    """Values at least 0.01 apart (no ties, so finite differences never switch a max)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 + rng.uniform(0, 1e-3, n)).reshape(shape) - n * 0.005


# ------------------------------------------------------------------------- conv: finite differences
@pytest.mark.parametrize("case", CONV_CASES[:6], ids=conv_id)
def test_conv2d_gradients_match_finite_differences(case, rng, numgrad):
    *_, s, p = case
    x, w, b, dy = make_conv(case, rng)

    def loss():
        return np.sum(ref.conv2d(x, w, b, s, p) * dy)

    dx, dw, db = ref.conv2d_backward(dy, x, w, s, p)
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numgrad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numgrad(loss, b), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- pool: finite differences
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_max_pool2d_gradient_matches_finite_differences(case, rng, numgrad):
    N, C, H, W, k, s, p = case
    x = distinct_values((N, C, H, W), rng)
    y, indices = ref.max_pool2d(x, k, s, p)
    dy = rng.standard_normal(y.shape)

    def loss():
        return np.sum(ref.max_pool2d(x, k, s, p)[0] * dy)

    dx = ref.max_pool2d_backward(dy, indices, x.shape)
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- basic properties
def test_reference_computes_in_the_input_dtype(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    y = ref.conv2d(x, w, b, 1, 1)
    assert y.dtype == np.float32
    dx, dw, db = ref.conv2d_backward(y, x, w, 1, 1)
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    p, idx = ref.max_pool2d(x, 2)
    assert p.dtype == np.float32 and idx.dtype == np.int64
    assert ref.max_pool2d_backward(p, idx, x.shape).dtype == np.float32


def test_conv2d_by_hand():
    """A case small enough to work out on paper."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[i, j] - x[i+1, j+1]
    y = ref.conv2d(x, w, np.array([0.5]), stride=2)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -5.0 + 0.5))
    y = ref.conv2d(x, w, padding=1)  # corners see one real element
    assert y.shape == (1, 1, 5, 5)
    assert y[0, 0, 0, 0] == -x[0, 0, 0, 0] and y[0, 0, 4, 4] == x[0, 0, 3, 3]


def test_max_pool2d_by_hand():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [2.0, np.nan, 5.0, 5.0],
                    [-np.inf, -np.inf, 7.0, np.nan],
                    [-np.inf, -np.inf, np.nan, 1.0]]]])  # fmt: skip
    y, idx = ref.max_pool2d(x, 2)
    np.testing.assert_array_equal(y, [[[[np.nan, 5.0], [-np.inf, np.nan]]]])
    np.testing.assert_array_equal(idx, [[[[5, 6], [8, 14]]]])  # NaN; first tie; first -inf; last NaN
    dx = ref.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert dx.sum() == 4 and dx[0, 0, 1, 1] == 1 and dx[0, 0, 2, 0] == 1


# ------------------------------------------------------------------------- PyTorch
@pytest.mark.torch
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv2d_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    *_, s, p = case
    x, w, b, dy = make_conv(case, rng)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    ty.backward(torch.from_numpy(dy))

    np.testing.assert_allclose(ref.conv2d(x, w, b, s, p), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    dx, dw, db = ref.conv2d_backward(dy, x, w, s, p)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("values", ["distinct", "ties", "nan", "-inf"])
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_max_pool2d_matches_torch(case, values, rng):
    torch = pytest.importorskip("torch")
    N, C, H, W, k, s, p = case
    shape = (N, C, H, W)
    if values == "distinct":
        x = rng.standard_normal(shape)
    elif values == "ties":
        x = rng.integers(0, 3, shape).astype(np.float64)
    elif values == "nan":
        x = rng.integers(0, 3, shape).astype(np.float64)
        x[rng.random(shape) < 0.3] = np.nan
    else:
        x = np.where(rng.random(shape) < 0.7, -np.inf, rng.integers(0, 2, shape)).astype(np.float64)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(dy))

    y, idx = ref.max_pool2d(x, k, s, p)
    assert y.shape == pool_output_shape(case)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    dx = ref.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_reference_dense_ops_and_loss_agree_with_numpy_one_liners(rng):
    """The textbook relu, matmul, linear (and gradients) and cross_entropy against NumPy expressions."""
    x = rng.standard_normal((3, 2, 5))
    x[0, 0, 0] = np.nan
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(ref.relu(x), np.where(np.isnan(x) | (x > 0), x, 0))
    np.testing.assert_array_equal(ref.relu_backward(dy, x), np.where(np.isnan(x) | (x > 0), dy, 0))
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(ref.matmul(a, b), a @ b, rtol=1e-12)
    w, bias, x2 = rng.standard_normal((3, 5)), rng.standard_normal(3), rng.standard_normal((2, 4, 5))
    np.testing.assert_allclose(ref.linear(x2, w, bias), x2 @ w.T + bias, rtol=1e-12)
    d = rng.standard_normal((2, 4, 3))
    dx, dw, db = ref.linear_backward(d, x2, w)
    np.testing.assert_allclose(dx, d @ w, rtol=1e-12)
    np.testing.assert_allclose(dw, d.reshape(-1, 3).T @ x2.reshape(-1, 5), rtol=1e-12)
    np.testing.assert_allclose(db, d.sum(axis=(0, 1)), rtol=1e-12)
    logits, target = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert ref.cross_entropy(logits, target) == pytest.approx(-log_p[np.arange(6), target].mean(), rel=1e-12)
    assert ref.cross_entropy(logits, target, reduction="sum") == pytest.approx(-log_p[np.arange(6), target].sum(), rel=1e-12)
