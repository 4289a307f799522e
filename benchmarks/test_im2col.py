"""The im2col+BLAS baseline is correct beyond the benchmark cases.

The benchmark table already checks it on every case; these small configurations
add non-square kernels, strides and paddings, both GEMM layouts (``C*k*k`` below and
above ``F``), float32, and max-pool ties and NaN, against the naive reference and
(when installed) PyTorch.
"""

import numpy as np
import pytest

from benchmarks import im2col

reference = pytest.importorskip("fastconv.reference")

CONV_CONFIGS = [
    # (N, C, H, W, F, kernel, stride, padding)
    (2, 1, 9, 8, 16, 3, 1, 1),  # C*k*k < F: one GEMM per image
    (2, 3, 7, 9, 5, 3, 1, 1),  # C*k*k > F: one GEMM for the batch
    (2, 4, 11, 10, 3, 5, 2, 2),
    (1, 2, 8, 8, 30, (3, 2), (2, 1), (1, 0)),
    (3, 2, 6, 7, 4, 1, 3, 0),
]
POOL_CONFIGS = [
    # (N, C, H, W, kernel, stride, padding)
    (2, 3, 8, 8, 2, None, 0),
    (2, 3, 9, 11, 3, 2, 1),
    (2, 2, 7, 7, (3, 2), (1, 2), (1, 1)),
    (1, 2, 6, 6, 3, 1, 1),  # overlapping windows
]


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONV_CONFIGS, ids=str)
def test_conv_matches_reference(config, dtype):
    n, c, h, w, f, k, s, p = config
    kh, kw = im2col._pair(k)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y = im2col.conv2d(x, wt, b, s, p)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.conv2d(x, wt, b, s, p), **_tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = im2col.conv2d_backward(dy, x, wt, s, p)
    rdx, rdw, rdb = reference.conv2d_backward(dy, x, wt, s, p)
    np.testing.assert_allclose(dx, rdx, **_tol(dtype))
    np.testing.assert_allclose(dw, rdw, **_tol(dtype))
    np.testing.assert_allclose(db, rdb, **_tol(dtype))
    np.testing.assert_allclose(im2col.conv2d_backward_input(dy, wt, x.shape, s, p), rdx, **_tol(dtype))
    np.testing.assert_allclose(im2col.conv2d_backward_weight(dy, x, wt.shape, s, p), rdw, **_tol(dtype))


@pytest.mark.parametrize("config", POOL_CONFIGS, ids=str)
def test_pool_matches_reference(config):
    n, c, h, w, k, s, p = config
    rng = np.random.default_rng(1)
    # Few distinct values: many ties inside windows.
    x = rng.integers(0, 3, size=(n, c, h, w)).astype(np.float64)
    x_before = x.copy()
    y, idx = im2col.max_pool2d(x, k, s, p)
    ry, ridx = reference.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        im2col.max_pool2d_backward(dy, idx, x.shape), reference.max_pool2d_backward(dy, ridx, x.shape)
    )
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("config", POOL_CONFIGS, ids=str)
def test_pool_nan_matches_torch(config):
    torch = pytest.importorskip("torch")
    n, c, h, w, k, s, p = config
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, c, h, w))
    x[0, 0, :2, :2] = np.nan  # several NaNs in one window: PyTorch keeps the last
    y, idx = im2col.max_pool2d(x, k, s, p)
    ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, k if s is None else s, p, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
