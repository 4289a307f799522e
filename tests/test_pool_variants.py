"""Issue 16's pooling: max_pool2d's dilation and ceil_mode, avg_pool2d, adaptive average and max pooling, the layers.

- Every average and adaptive row of the case table (:data:`benchmarks.cases.AVG_POOL_ROWS`,
  :data:`~benchmarks.cases.ADAPTIVE_POOL_ROWS`) against the pure-NumPy reference, forward and
  backward, float32 and float64 (the dilation/ceil_mode max-pool rows, ``POOL_VARIANTS``, are
  in ``POOL_ROWS`` and run by ``test_pool.py``); the reference itself against hand-derived values.
- Average gradients against float64 finite differences; max-pool winners checked as routes
  (each index is a tap of its window holding the window's maximum).
- PyTorch parity on every row and on hypothesis-drawn parameters (every combination of
  kernel, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override).
- Strategy choice, errors, inputs never modified, any memory layout, the ``nn`` layers.
"""

import doctest

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from _layouts import LAYOUTS, relayout

import fastconv.functional as fc
from benchmarks import cases
from fastconv import nn
from fastconv import reference as ref

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def avg(case, x):
    return fc.avg_pool2d(x, case.k, case.stride, case.pad, **case.options)


def avg_backward(case, dy, shape):
    return fc.avg_pool2d_backward(dy, shape, case.k, case.stride, case.pad, **case.options)


def _data(shape, dtype, rng):
    # Drawn in float32 and widened: one float64 reference serves both dtypes.
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


# ------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.AVG_POOL_ROWS, ids=str)
def test_avg_pool2d_matches_reference(case, dtype, rng):
    x = _data(case.x_shape, dtype, rng)
    y = avg(case, x)
    assert y.shape == case.y_shape and y.dtype == dtype
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, ref.avg_pool2d(x64, case.k, case.stride, case.pad, **case.options),
                               **TOL[np.dtype(dtype)])
    dy = _data(y.shape, dtype, rng)
    dx = avg_backward(case, dy, x.shape)
    assert dx.shape == x.shape and dx.dtype == dtype
    want = ref.avg_pool2d_backward(dy.astype(np.float64), x.shape, case.k, case.stride, case.pad, **case.options)
    np.testing.assert_allclose(dx, want, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.ADAPTIVE_POOL_ROWS, ids=str)
def test_adaptive_pools_match_reference(case, dtype, rng):
    x = _data(case.x_shape, dtype, rng)
    x[..., 0, 0] = x[..., -1, -1]  # a tie in the corner windows
    x64 = x.astype(np.float64)
    y = fc.adaptive_avg_pool2d(x, case.output_size)
    assert y.shape == case.y_shape
    np.testing.assert_allclose(y, ref.adaptive_avg_pool2d(x64, case.output_size), **TOL[np.dtype(dtype)])
    dy = _data(y.shape, dtype, rng)
    np.testing.assert_allclose(fc.adaptive_avg_pool2d_backward(dy, x.shape),
                               ref.adaptive_avg_pool2d_backward(dy.astype(np.float64), x.shape), **TOL[np.dtype(dtype)])

    ym, idx = fc.adaptive_max_pool2d(x, case.output_size, return_indices=True)
    ym_ref, idx_ref = ref.adaptive_max_pool2d(x, case.output_size)
    np.testing.assert_array_equal(ym, ym_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(fc.adaptive_max_pool2d(x, case.output_size), ym)
    np.testing.assert_allclose(fc.adaptive_max_pool2d_backward(dy, idx, x.shape),
                               ref.max_pool2d_backward(dy, idx_ref, x.shape), **TOL[np.dtype(dtype)])


def test_reference_by_hand():
    """The reference's rules on values worked out by hand (PyTorch gives the same: test_torch_by_hand)."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    # ceil_mode: windows [0,2), [2,4), [4,5): the last one clipped.
    y, idx = ref.max_pool2d(x, 2, ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    np.testing.assert_array_equal(idx[0, 0], y[0, 0])
    # dilation 3: taps {0, 3} and {1, 4}.
    np.testing.assert_array_equal(ref.max_pool2d(x, 2, 1, dilation=3)[0][0, 0], [[18, 19], [23, 24]])
    # 3x3 / 2, padding 1, ceil: the corner window covers x[0:2, 0:2] = 0+1+5+6 over 9 (padding counted) or 4.
    assert ref.avg_pool2d(x, 3, 2, 1)[0, 0, 0, 0] == 12 / 9
    assert ref.avg_pool2d(x, 3, 2, 1, count_include_pad=False)[0, 0, 0, 0] == 3.0
    assert ref.avg_pool2d(x, 3, 2, 1, divisor_override=2)[0, 0, 0, 0] == 6.0
    # ceil_mode past the padded input: 2x2 input, 3x3/2 window -> one window of 4 elements, divisor 4.
    assert ref.avg_pool2d(np.arange(4.0).reshape(1, 1, 2, 2), 3, 2, ceil_mode=True)[0, 0, 0, 0] == 1.5
    # adaptive 5 -> 3: windows [0,2), [1,4), [3,5).
    row = np.arange(5.0).reshape(1, 1, 1, 5)
    np.testing.assert_allclose(ref.adaptive_avg_pool2d(row, (1, 3))[0, 0, 0], [0.5, 2.0, 3.5])


@pytest.mark.torch
def test_torch_by_hand():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = torch.arange(25.0, dtype=torch.float64).reshape(1, 1, 5, 5)
    assert F.avg_pool2d(t, 3, 2, 1)[0, 0, 0, 0].item() == 12 / 9
    assert F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)[0, 0, 0, 0].item() == 3.0
    assert F.avg_pool2d(torch.arange(4.0).reshape(1, 1, 2, 2), 3, 2, ceil_mode=True).item() == 1.5
    row = torch.arange(5.0, dtype=torch.float64).reshape(1, 1, 1, 5)
    assert F.adaptive_avg_pool2d(row, (1, 3))[0, 0, 0].tolist() == [0.5, 2.0, 3.5]


# ------------------------------------------------------------------------- finite differences, routes
FD_AVG = [c for c in cases.AVG_POOL_ROWS if np.prod(c.x_shape) <= 400]


@pytest.mark.parametrize("case", FD_AVG, ids=str)
def test_avg_pool2d_gradient_matches_finite_differences(case, rng, numgrad, one_thread):
    x = rng.standard_normal(case.x_shape)
    dy = rng.standard_normal(case.y_shape)
    dx = avg_backward(case, dy, x.shape)
    np.testing.assert_allclose(dx, numgrad(lambda: np.sum(avg(case, x) * dy), x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", [c for c in cases.ADAPTIVE_POOL_ROWS if np.prod(c.x_shape) <= 200], ids=str)
def test_adaptive_avg_gradient_matches_finite_differences(case, rng, numgrad, one_thread):
    x = rng.standard_normal(case.x_shape)
    dy = rng.standard_normal(case.y_shape)
    dx = fc.adaptive_avg_pool2d_backward(dy, x.shape)
    want = numgrad(lambda: np.sum(fc.adaptive_avg_pool2d(x, case.output_size) * dy), x)
    np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", cases.POOL_VARIANTS, ids=str)
def test_dilated_and_ceil_winners_are_taps_of_their_window(case, rng):
    """Each index is a real tap of its window (dilation spacing, clipped past the end) holding the window's maximum."""
    x = rng.integers(-3, 3, case.x_shape).astype(np.float64)  # many ties
    y, idx = fc.max_pool2d(x, case.k, case.stride, case.pad, **case.options)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel_hw, case.stride_hw, case.pad_hw, case.dilation_hw
    for n, c, oh, ow in np.ndindex(y.shape):
        hs = [h for h in range(oh * sh - ph, oh * sh - ph + kh * dh, dh) if 0 <= h < case.h]
        ws = [w for w in range(ow * sw - pw, ow * sw - pw + kw * dw, dw) if 0 <= w < case.w]
        h, w = divmod(int(idx[n, c, oh, ow]), case.w)
        assert h in hs and w in ws, (n, c, oh, ow)
        window = x[n, c][np.ix_(hs, ws)]
        assert y[n, c, oh, ow] == x[n, c, h, w] == window.max()
        first = np.argmax(window)  # ties: the first maximum in row-major order
        assert (hs[first // len(ws)], ws[first % len(ws)]) == (h, w)
    dy = rng.standard_normal(y.shape)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_allclose(dx.sum(axis=(2, 3)), dy.sum(axis=(2, 3)), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- PyTorch
def _torch_avg(torch, case, x, dy):
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, case.kernel_hw, case.stride_hw, case.pad_hw, **case.options)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.AVG_POOL_ROWS, ids=str)
def test_avg_pool2d_matches_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    x = _data(case.x_shape, dtype, rng)
    dy = _data(case.y_shape, dtype, rng)
    ty, tdx = _torch_avg(torch, case, x, dy)
    np.testing.assert_allclose(avg(case, x), ty, **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(avg_backward(case, dy, x.shape), tdx, **TOL[np.dtype(dtype)])


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.ADAPTIVE_POOL_ROWS, ids=str)
def test_adaptive_pools_match_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _data(case.x_shape, dtype, rng)
    dy = _data(case.y_shape, dtype, rng)
    tx = torch.tensor(x, requires_grad=True)
    F.adaptive_avg_pool2d(tx, case.output_size).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(fc.adaptive_avg_pool2d(x, case.output_size),
                               F.adaptive_avg_pool2d(torch.from_numpy(x), case.output_size).numpy(),
                               **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(fc.adaptive_avg_pool2d_backward(dy, x.shape), tx.grad.numpy(), **TOL[np.dtype(dtype)])

    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = F.adaptive_max_pool2d(tx, case.output_size, return_indices=True)
    ty.backward(torch.from_numpy(dy))
    y, idx = fc.adaptive_max_pool2d(x, case.output_size, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_allclose(fc.adaptive_max_pool2d_backward(dy, idx, x.shape), tx.grad.numpy(),
                               **TOL[np.dtype(dtype)])


@st.composite
def pool_parameters(draw):
    """Kernel, stride, padding, dilation, ceil_mode and an input they fit (PyTorch's rules)."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ceil_mode = draw(st.booleans())
    span = [(k[i] - 1) * d[i] + 1 for i in (0, 1)]
    hw = [draw(st.integers(max(1, span[i] - 2 * p[i]), 11)) for i in (0, 1)]
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *hw), k, s, p, d, ceil_mode


def _dilated_window_is_empty(shape, k, s, p, d):
    """A window starting in the padding whose dilated taps all miss the input (fastconv refuses it)."""
    for size, ki, si, pi, di in zip(shape[2:], k, s, p, d):
        for o in range(-(-pi // si)):
            start = o * si - pi
            if not any(0 <= start + t * di < size for t in range(ki)):
                return True
    return False


@pytest.mark.torch
@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(params=pool_parameters(), dtype=st.sampled_from([np.float32, np.float64]),
                  ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_max_pool2d_matches_torch(params, dtype, ties, seed):
    torch = pytest.importorskip("torch")
    shape, k, s, p, d, ceil_mode = params
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 2, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    if _dilated_window_is_empty(shape, k, s, p, d):
        with pytest.raises(ValueError, match="max_pool2d: with dilation .* holds no input element"):
            fc.max_pool2d(x, k, s, p, d, ceil_mode)
        return
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode, return_indices=True)
    y, idx = fc.max_pool2d(x, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(fc.max_pool2d_backward(dy, idx, x.shape), tx.grad.numpy(), **TOL[np.dtype(dtype)])


@pytest.mark.torch
@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(params=pool_parameters(), count_include_pad=st.booleans(),
                  divisor_override=st.one_of(st.none(), st.integers(-4, 7).filter(bool)),
                  dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_avg_pool2d_matches_torch(params, count_include_pad, divisor_override, dtype, seed):
    torch = pytest.importorskip("torch")
    shape, k, s, p, _, ceil_mode = params  # avg_pool2d has no dilation
    rng = np.random.default_rng(seed)
    shape = shape[:2] + tuple(max(n, ki - 2 * pi) for n, ki, pi in zip(shape[2:], k, p))
    x = rng.standard_normal(shape).astype(dtype)
    options = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad, divisor_override=divisor_override)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, **options)
    np.testing.assert_allclose(fc.avg_pool2d(x, k, s, p, **options), ty.detach().numpy(), **TOL[np.dtype(dtype)])
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(fc.avg_pool2d_backward(dy, x.shape, k, s, p, **options), tx.grad.numpy(),
                               **TOL[np.dtype(dtype)])


@pytest.mark.torch
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 12), st.integers(1, 12)),
                  out=st.tuples(st.one_of(st.none(), st.integers(1, 9)), st.one_of(st.none(), st.integers(1, 9))),
                  seed=st.integers(0, 2**32 - 1))
def test_hypothesis_adaptive_pools_match_torch(shape, out, seed):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(seed).standard_normal(shape)
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(fc.adaptive_avg_pool2d(x, out),
                               torch.nn.functional.adaptive_avg_pool2d(tx, out).numpy(), **TOL[np.dtype(np.float64)])
    y, idx = fc.adaptive_max_pool2d(x, out, return_indices=True)
    ty, tidx = torch.nn.functional.adaptive_max_pool2d(tx, out, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())


# ------------------------------------------------------------------------- strategies
def test_strategy_choice():
    assert fc.max_pool2d_plan((2, 3, 8, 8), 2, ceil_mode=True).forward.name == "window_2x2"  # nothing added
    assert fc.max_pool2d_plan((2, 3, 7, 8), 2, ceil_mode=True).forward.name == "window_columns"  # one more row
    assert fc.max_pool2d_plan((2, 3, 8, 8), 2, 1).forward.name == "window_columns"
    assert fc.max_pool2d_plan((2, 3, 8, 8), 2, dilation=2).forward.name == "window_columns"
    assert fc.max_pool2d_plan((2, 3, 8, 40), 3, 2, ceil_mode=True).forward.name == "window_columns"  # Wo 20 < 32
    assert fc.max_pool2d_plan((2, 3, 8, 40), 3, 1, dilation=2).forward.name == "window_any"  # Wo 36, stride 1
    assert fc.max_pool2d_plan((2, 3, 8, 67), 3, 2, ceil_mode=True).forward.name == "window_any"  # Wo 33
    assert fc.avg_pool2d_plan((2, 3, 7, 6), (7, 6)).forward.name == "global"
    assert fc.avg_pool2d_plan((2, 3, 7, 6), (7, 6), divisor_override=3).forward.name == "ranges"
    assert fc.avg_pool2d_plan((2, 3, 7, 6), 3, 2, 1).backward.name == "ranges"
    from fastconv import plan as P

    f32 = np.dtype(np.float32)
    assert P.plan_adaptive_avg_pool2d((2, 3, 7, 6), (1, 1), f32).forward.name == "global"
    assert P.plan_adaptive_avg_pool2d((2, 3, 7, 6), (1, 2), f32).forward.name == "ranges"
    assert P.plan_adaptive_max_pool2d((2, 3, 7, 6), (1, 1), f32).forward.name == "ranges"
    text = str(fc.avg_pool2d_plan((2, 3, 7, 6), 3, 2, 1))
    assert "avg_pool2d" in text and "ranges" in text
    assert "dilation (2, 2) ceil_mode" in str(fc.max_pool2d_plan((2, 3, 9, 9), 2, dilation=2, ceil_mode=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_average_pool_is_the_plane_mean(dtype, rng):
    x = rng.standard_normal((3, 70, 9, 11)).astype(dtype)  # planes over one job of the global kernel
    y = fc.adaptive_avg_pool2d(x, 1)
    np.testing.assert_allclose(y[..., 0, 0], x.astype(np.float64).mean(axis=(2, 3)), **TOL[np.dtype(dtype)])
    np.testing.assert_array_equal(fc.avg_pool2d(x, (9, 11)), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fc.adaptive_avg_pool2d_backward(dy, x.shape)
    np.testing.assert_allclose(dx, np.broadcast_to(dy / 99, x.shape), **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_and_empty_output(dtype):
    x = np.ones((0, 3, 6, 6), dtype)
    assert fc.avg_pool2d(x, 3, 2, 1).shape == (0, 3, 3, 3)
    assert fc.avg_pool2d_backward(np.ones((0, 3, 3, 3), dtype), x.shape, 3, 2, 1).shape == x.shape
    assert fc.adaptive_avg_pool2d(x, 1).shape == (0, 3, 1, 1)
    assert fc.max_pool2d(x, 3, 2, ceil_mode=True)[0].shape == (0, 3, 3, 3)
    # PyTorch allows an output size of 0: an empty result, and a zero gradient.
    x = np.ones((2, 3, 6, 6), dtype)
    assert fc.adaptive_avg_pool2d(x, (0, 2)).shape == (2, 3, 0, 2)
    np.testing.assert_array_equal(fc.adaptive_avg_pool2d_backward(np.ones((2, 3, 0, 2), dtype), x.shape), 0)
    y, idx = fc.adaptive_max_pool2d(x, 0, return_indices=True)
    assert y.shape == idx.shape == (2, 3, 0, 0)
    np.testing.assert_array_equal(fc.adaptive_max_pool2d_backward(y, idx, x.shape), 0)


# ------------------------------------------------------------------------- errors
X = np.zeros((2, 3, 8, 8))


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: fc.max_pool2d(X, 2, dilation=0), ValueError, r"max_pool2d: dilation must be positive"),
        (lambda: fc.max_pool2d(X, 2, dilation=1.5), TypeError, r"max_pool2d: dilation must be an int"),
        (lambda: fc.max_pool2d(X, 2, ceil_mode=1), TypeError, r"max_pool2d: ceil_mode must be a bool"),
        (lambda: fc.max_pool2d(X, 2, padding=2), ValueError, r"max_pool2d: padding \(2, 2\) must be at most half"),
        (lambda: fc.max_pool2d(X, 3, dilation=4), ValueError,
         r"max_pool2d: kernel_size \(3, 3\) with dilation \(4, 4\) spans \(9, 9\) is larger than the padded input "
         r"\(8, 8\) \(x.shape=\(2, 3, 8, 8\)"),
        (lambda: fc.max_pool2d(X[..., :1], (1, 2), 1, (0, 1), dilation=(1, 2)), ValueError,
         r"max_pool2d: with dilation 2 and padding 1, window 0 of the columns holds no input element "
         r"\(x.shape=\(2, 3, 8, 1\)\)"),
        (lambda: fc.max_pool2d(X, 9, 1, ceil_mode=True), ValueError,
         r"max_pool2d: kernel_size \(9, 9\) is larger .*\(2, 3, 8, 8\).*ceil_mode=True"),
        (lambda: fc.avg_pool2d(X, 2, padding=(0, 2)), ValueError, r"avg_pool2d: padding \(0, 2\)"),
        (lambda: fc.avg_pool2d(X, 9), ValueError, r"avg_pool2d: kernel_size \(9, 9\) is larger .*\(2, 3, 8, 8\)"),
        (lambda: fc.avg_pool2d(X, 2, divisor_override=0), ValueError, r"avg_pool2d: divisor_override must not be zero"),
        (lambda: fc.avg_pool2d(X, 2, divisor_override=2.0), TypeError, r"avg_pool2d: divisor_override must be an int"),
        (lambda: fc.avg_pool2d(X, 2, count_include_pad=None), TypeError, r"avg_pool2d: count_include_pad must be"),
        (lambda: fc.avg_pool2d(X.astype(np.int64), 2), TypeError, r"avg_pool2d: x must have dtype float32"),
        (lambda: fc.avg_pool2d(X[0], 2), ValueError, r"avg_pool2d: x must be 4-D .*\(3, 8, 8\)"),
        (lambda: fc.avg_pool2d_backward(np.zeros((2, 3, 3, 4)), X.shape, 2), ValueError,
         r"avg_pool2d_backward: dy must have shape \(2, 3, 4, 4\) .*got \(2, 3, 3, 4\)"),
        (lambda: fc.avg_pool2d_backward(np.zeros((2, 3, 4, 4)), (2, 3, 8), 2), ValueError,
         r"avg_pool2d_backward: input_shape must have 4 entries"),
        (lambda: fc.adaptive_avg_pool2d(X, -1), ValueError, r"adaptive_avg_pool2d: output_size must be non-negative"),
        (lambda: fc.adaptive_avg_pool2d(X, (1, 2, 3)), ValueError, r"adaptive_avg_pool2d: output_size must be an int"),
        (lambda: fc.adaptive_avg_pool2d(X, 2.0), TypeError, r"adaptive_avg_pool2d: output_size must be an int"),
        (lambda: fc.adaptive_avg_pool2d(X, None), TypeError, r"adaptive_avg_pool2d: output_size"),
        (lambda: fc.adaptive_avg_pool2d(X[:, :0], 2), ValueError, r"adaptive_avg_pool2d: x has C == 0 .*\(2, 0, 8, 8\)"),
        (lambda: fc.adaptive_avg_pool2d_backward(np.zeros((2, 4, 2, 2)), X.shape), ValueError,
         r"adaptive_avg_pool2d_backward: input_shape \(2, 3, 8, 8\) must share \(N, C\) with dy.shape=\(2, 4, 2, 2\)"),
        (lambda: fc.adaptive_max_pool2d(X, 2, return_indices=1), TypeError,
         r"adaptive_max_pool2d: return_indices must be a bool"),
        (lambda: fc.adaptive_max_pool2d_backward(np.zeros((2, 3, 2, 2)), np.full((2, 3, 2, 2), 64), X.shape),
         ValueError, r"adaptive_max_pool2d_backward: indices must lie in \[0, H\*W\)"),
        (lambda: fc.avg_pool2d_plan((2, 3, 8, 8), 2, dtype=np.float16), TypeError, r"avg_pool2d_plan: dtype"),
    ],
    ids=["dilation-0", "dilation-float", "ceil-int", "padding", "dilated-too-large", "dilated-empty-window",
         "ceil-too-large", "avg-padding", "avg-too-large", "divisor-0", "divisor-float", "count_include_pad-None",
         "avg-int-dtype", "avg-3d", "avg-dy-shape", "avg-input_shape", "adaptive-negative", "adaptive-triple",
         "adaptive-float", "adaptive-None", "adaptive-C0", "adaptive-backward-channels", "return_indices-int",
         "adaptive-max-bad-index", "plan-dtype"],
)
def test_bad_arguments_are_refused_by_name(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------- purity, layouts
LAYOUT_AVG = cases.AvgPoolCase("layout", 2, 3, 9, 10, 3, 2, 1, ceil_mode=True, count_include_pad=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_gives_the_same_result(layout, dtype, rng):
    x = _data(LAYOUT_AVG.x_shape, dtype, rng)
    dy = _data(LAYOUT_AVG.y_shape, dtype, rng)
    want = [avg(LAYOUT_AVG, x), avg_backward(LAYOUT_AVG, dy, x.shape), fc.adaptive_avg_pool2d(x, (4, 3)),
            fc.adaptive_max_pool2d(x, 3, True)[1], fc.max_pool2d(x, 3, 2, 1, 2, True)[1]]
    xl, dyl = relayout(x, layout), relayout(dy, layout)
    got = [avg(LAYOUT_AVG, xl), avg_backward(LAYOUT_AVG, dyl, x.shape), fc.adaptive_avg_pool2d(xl, (4, 3)),
           fc.adaptive_max_pool2d(xl, 3, True)[1], fc.max_pool2d(xl, 3, 2, 1, 2, True)[1]]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(xl, x)
    np.testing.assert_array_equal(dyl, dy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_not_modified_and_outputs_are_fresh(dtype, rng):
    x = _data((2, 3, 9, 10), dtype, rng)
    x[0, 0, 0, 0] = np.nan
    x_before = x.copy()
    outputs = [fc.avg_pool2d(x, 3, 2, 1, True, False, None), fc.adaptive_avg_pool2d(x, 1),
               fc.adaptive_avg_pool2d(x, (3, 4)), *fc.adaptive_max_pool2d(x, 2, True), *fc.max_pool2d(x, 3, 2, 1, 2, True)]
    np.testing.assert_array_equal(x, x_before)
    assert not any(np.shares_memory(o, x) for o in outputs)
    dy = _data(outputs[0].shape, dtype, rng)
    dy_before = dy.copy()
    dx = fc.avg_pool2d_backward(dy, x.shape, 3, 2, 1, True, False)
    dxa = fc.adaptive_avg_pool2d_backward(dy, x.shape)  # to an output of dy's size, 5 x 6
    np.testing.assert_array_equal(dy, dy_before)
    assert not np.shares_memory(dx, dy) and not np.shares_memory(dxa, dy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_torch(dtype):
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 36, dtype=dtype).reshape(1, 2, 6, 6)
    x[0, 0, 1, 1], x[0, 1, 4, 4], x[0, 1, 0, 5] = np.nan, np.inf, -np.inf
    tx = torch.from_numpy(x)
    F = torch.nn.functional
    np.testing.assert_array_equal(fc.avg_pool2d(x, 3, 2, 1, True), F.avg_pool2d(tx, 3, 2, 1, True).numpy())
    np.testing.assert_array_equal(fc.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(tx, 1).numpy())
    np.testing.assert_array_equal(fc.adaptive_avg_pool2d(x, 4), F.adaptive_avg_pool2d(tx, 4).numpy())
    y, idx = fc.max_pool2d(x, 2, 2, 0, 2, True)
    ty, tidx = F.max_pool2d(tx, 2, 2, 0, 2, True, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())


# ------------------------------------------------------------------------- layers
LAYERS = [
    (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda t: t.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    (lambda: nn.MaxPool2d(2, 1, 0, 2), lambda t: t.nn.MaxPool2d(2, 1, 0, 2)),
    (lambda: nn.MaxPool2d((2, 3), None, (1, 0), (2, 1), False, True),
     lambda t: t.nn.MaxPool2d((2, 3), None, (1, 0), (2, 1), False, True)),
    (lambda: nn.AvgPool2d(3, 2, 1), lambda t: t.nn.AvgPool2d(3, 2, 1)),
    (lambda: nn.AvgPool2d(3, 2, 1, True, False), lambda t: t.nn.AvgPool2d(3, 2, 1, True, False)),
    (lambda: nn.AvgPool2d(2, divisor_override=3), lambda t: t.nn.AvgPool2d(2, divisor_override=3)),
    (lambda: nn.AdaptiveAvgPool2d(1), lambda t: t.nn.AdaptiveAvgPool2d(1)),
    (lambda: nn.AdaptiveAvgPool2d((3, None)), lambda t: t.nn.AdaptiveAvgPool2d((3, None))),
    (lambda: nn.AdaptiveMaxPool2d((4, 3)), lambda t: t.nn.AdaptiveMaxPool2d((4, 3))),
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, make_torch", LAYERS, ids=lambda f: repr(f()) if f.__code__.co_argcount == 0 else "")
def test_layers_match_torch_and_print_like_it(make, make_torch, dtype, rng):
    torch = pytest.importorskip("torch")
    layer, tlayer = make(), make_torch(torch)
    assert repr(layer) == repr(tlayer)
    assert layer.state_dict() == {} and list(layer.parameters()) == []
    x = _data((2, 3, 9, 10), dtype, rng)
    tx = torch.tensor(x, requires_grad=True)
    ty = tlayer(tx)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[np.dtype(dtype)])
    dy = _data(y.shape, dtype, rng)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), **TOL[np.dtype(dtype)])
    assert layer.backward(dy, input_grad=False) is None
    with nn.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        layer.backward(dy)


def test_layers_return_indices_and_check_their_input(rng):
    x = rng.standard_normal((2, 3, 9, 10))
    y, idx = nn.MaxPool2d(3, 2, return_indices=True, ceil_mode=True)(x)
    np.testing.assert_array_equal(idx, fc.max_pool2d(x, 3, 2, ceil_mode=True)[1])
    y, idx = nn.AdaptiveMaxPool2d(2, return_indices=True)(x)
    np.testing.assert_array_equal(idx, fc.adaptive_max_pool2d(x, 2, True)[1])
    layer = nn.AvgPool2d(3)
    with pytest.raises(ValueError, match=r"AvgPool2d: input must be 4-D"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"AvgPool2d: kernel_size \(3, 3\) is larger"):
        layer(x[:, :, :2])
    layer(x)
    with pytest.raises(ValueError, match=r"AvgPool2d.backward: dout must have the forward output's shape"):
        layer.backward(np.zeros((2, 3, 1, 1)))


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (lambda: nn.MaxPool2d(2, dilation=0), ValueError, "MaxPool2d: dilation"),
        (lambda: nn.MaxPool2d(2, ceil_mode="yes"), TypeError, "MaxPool2d: ceil_mode"),
        (lambda: nn.MaxPool2d(2, padding=2), ValueError, "MaxPool2d: padding"),
        (lambda: nn.AvgPool2d(2, padding=2), ValueError, "AvgPool2d: padding"),
        (lambda: nn.AvgPool2d(2, divisor_override=0), ValueError, "AvgPool2d: divisor_override"),
        (lambda: nn.AvgPool2d(2, count_include_pad=0), TypeError, "AvgPool2d: count_include_pad"),
        (lambda: nn.AdaptiveAvgPool2d(-2), ValueError, "AdaptiveAvgPool2d: output_size"),
        (lambda: nn.AdaptiveMaxPool2d((2, 2.5)), TypeError, "AdaptiveMaxPool2d: output_size"),
    ],
    ids=["dilation", "ceil_mode", "max-padding", "avg-padding", "divisor", "count_include_pad", "adaptive-negative",
         "adaptive-float"],
)
def test_layer_arguments_are_checked_at_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


@pytest.mark.torch
def test_to_torch_converts_the_pooling_layers(rng):
    pytest.importorskip("torch")
    from fastconv.models import to_torch

    model = nn.Sequential(nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(2, 1, dilation=2, ceil_mode=True),
                          nn.AdaptiveMaxPool2d(3), nn.AdaptiveAvgPool2d(1))
    x = rng.standard_normal((2, 3, 11, 12)).astype(np.float32)
    import torch

    np.testing.assert_allclose(model(x), to_torch(model)(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_docstring_examples_run():
    for name in ("max_pool2d", "max_pool2d_plan", "avg_pool2d", "avg_pool2d_backward", "avg_pool2d_plan",
                 "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
                 "adaptive_max_pool2d_backward"):
        tests = doctest.DocTestFinder().find(getattr(fc, name), name, globs={})
        assert tests and tests[0].examples, f"{name} has no example"
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for t in tests:
            runner.run(t)
        assert runner.failures == 0, f"{name}'s example fails"
    for layer in (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for t in doctest.DocTestFinder().find(layer, layer.__name__, globs={}):
            runner.run(t)
        assert runner.tries and runner.failures == 0, layer.__name__
