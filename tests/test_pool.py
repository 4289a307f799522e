"""fastconv.functional.max_pool2d and max_pool2d_backward.

Checked against the pure-NumPy reference, hand-derived expectations (ties, NaN,
-inf, global pooling, overlapping windows), float64 finite differences and PyTorch.
The layers are the rows of the case table, :data:`benchmarks.cases.POOL_ROWS`, which
also drives the benchmarks (its rows with a ``bench_batch``).
Maxima are exact, so values and indices must match bit for bit; only the backward
pass, which sums where windows overlap, is compared with a tolerance.
"""

import zlib

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from _layouts import LAYOUTS, relayout

import fastconv.functional as fc
from benchmarks import cases
from benchmarks.cases import PoolCase
from fastconv import reference as ref

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def pool(case, x):
    return fc.max_pool2d(x, case.k, stride=case.stride, padding=case.pad, **case.options)


def ref_pool(case, x):
    return ref.max_pool2d(x, case.k, case.stride, case.pad, **case.options)


def params(case):
    """(kh, kw, sh, sw, ph, pw)"""
    return case.kernel_hw + case.stride_hw + case.pad_hw


VALUE_KINDS = ["normal", "ties", "nan", "-inf", "+inf"]


def make_input(shape, kind, rng, dtype=np.float64):
    """Input data of one kind: distinct normals, many ties, NaNs among ties, mostly -inf, some +inf."""
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ties":
        x = rng.integers(0, 3, shape).astype(np.float64)
    elif kind == "nan":
        x = rng.integers(0, 3, shape).astype(np.float64)
        x[rng.random(shape) < 0.2] = np.nan
    elif kind == "-inf":
        x = np.where(rng.random(shape) < 0.8, -np.inf, rng.integers(-1, 1, shape)).astype(np.float64)
    elif kind == "+inf":
        x = np.where(rng.random(shape) < 0.2, np.inf, rng.standard_normal(shape))
    else:
        raise AssertionError(kind)
    return x.astype(dtype)


def _seed(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())


def assert_same_pool(y, idx, y_ref, idx_ref):
    assert y.shape == y_ref.shape and idx.shape == idx_ref.shape
    assert y.dtype == y_ref.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)  # NaN == NaN here
    np.testing.assert_array_equal(idx, idx_ref)


# ------------------------------------------------------------------------- against the reference
# Every row with every kind of values; the large benchmark rows with two kinds only, to save time.
ROW_PARAMS = [
    pytest.param(case, kind, id=f"{case}-{kind}")
    for case in cases.POOL_ROWS
    for kind in VALUE_KINDS
    if case.bench_batch is None or kind in ("normal", "nan")
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "kind"), ROW_PARAMS)
def test_max_pool2d_matches_reference(case, kind, dtype, tol):
    rng = np.random.default_rng(_seed(case, kind))
    x = make_input(case.x_shape, kind, rng, dtype)
    y, idx = pool(case, x)
    assert y.shape == case.y_shape
    y_ref, idx_ref = ref_pool(case, x)
    assert_same_pool(y, idx, y_ref, idx_ref)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    assert dx.dtype == dtype and dx.shape == x.shape
    kh, kw, sh, sw, _, _ = params(case)
    overlaps = -(-kh // sh) * -(-kw // sw)  # most windows one input can win
    np.testing.assert_allclose(dx, ref.max_pool2d_backward(dy, idx_ref, x.shape), **tol(dtype, overlaps))


# ------------------------------------------------------------------------- the ReLU fused into the routing
FUSED_PARAMS = [pytest.param(case, kind, id=f"{case}-{kind}") for case in cases.POOL_ROWS
                if case.bench_batch is None for kind in ("normal", "ties", "nan")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "kind"), FUSED_PARAMS)
def test_backward_with_the_relu_fused_equals_the_two_passes(case, kind, dtype):
    """``run_backward(..., relu_output=y)`` on a ReLU's output = the route, then the ReLU's backward."""
    rng = np.random.default_rng(_seed(case, kind, "relu"))
    r = np.maximum(make_input(case.x_shape, kind, rng, dtype) - dtype(0.5), dtype(0))  # NaN stays NaN
    plan = fc.max_pool2d_plan(case.x_shape, case.k, case.stride, case.pad, dtype=dtype, **case.options)
    y, idx = plan.run_forward(r)
    dy = rng.standard_normal(y.shape).astype(dtype)
    fused = plan.run_backward(dy, idx, relu_output=y)
    np.testing.assert_array_equal(fused, fc.relu_backward(plan.run_backward(dy, idx), r))
    want = np.where(r <= 0, 0, ref.max_pool2d_backward(dy.astype(np.float64), idx, r.shape))
    np.testing.assert_allclose(fused, want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)


# ------------------------------------------------------------------------- semantics, derived by hand
def _first_real_element(case):
    """Flat index of the first unpadded element of every window (what ties resolve to)."""
    kh, kw, sh, sw, ph, pw = params(case)
    _, _, Ho, Wo = case.y_shape
    rows = np.maximum(np.arange(Ho) * sh - ph, 0)
    cols = np.maximum(np.arange(Wo) * sw - pw, 0)
    return rows[:, None] * case.w + cols[None, :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.POOL_SHAPES, ids=str)
def test_ties_go_to_the_first_maximum(case, dtype):
    x = np.full(case.x_shape, 1.5, dtype=dtype)
    y, idx = pool(case, x)
    assert np.all(y == 1.5)
    np.testing.assert_array_equal(idx, np.broadcast_to(_first_real_element(case), idx.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.POOL_SHAPES, ids=str)
def test_all_minus_inf_windows_point_at_their_first_real_element(case, dtype):
    """As PyTorch does; never into the padding."""
    x = np.full(case.x_shape, -np.inf, dtype=dtype)
    y, idx = pool(case, x)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx, np.broadcast_to(_first_real_element(case), idx.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_wins_with_the_index_of_the_last_nan(dtype):
    x = np.zeros((1, 1, 4, 6), dtype=dtype)
    x[0, 0, 0, 0] = 5.0
    x[0, 0, 0, 1] = np.nan  # window (0, 0): one NaN after a larger value
    x[0, 0, 0, 2] = np.nan  # window (0, 1): two NaNs and an inf
    x[0, 0, 1, 3] = np.nan
    x[0, 0, 1, 2] = np.inf
    x[0, 0, 2, 4] = np.inf  # window (1, 2): +inf, no NaN
    y, idx = fc.max_pool2d(x, 2)
    expected_y = np.array([[np.nan, np.nan, 0.0], [0.0, 0.0, np.inf]], dtype=dtype)
    np.testing.assert_array_equal(y[0, 0], expected_y)
    np.testing.assert_array_equal(idx[0, 0], [[1, 9, 4], [12, 14, 16]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_with_padding_and_overlap(dtype):
    x = np.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 2, 2] = np.nan
    y, idx = fc.max_pool2d(x, 3, stride=1, padding=1)
    y_ref, idx_ref = ref.max_pool2d(x, 3, 1, 1)
    assert_same_pool(y, idx, y_ref, idx_ref)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 0
    assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 12  # both NaNs in the window: the last


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in cases.POOL_ROWS if c.name.startswith("global")], ids=str)
def test_global_pooling_is_the_plane_maximum(case, dtype, rng):
    x = rng.standard_normal(case.x_shape).astype(dtype)
    y, idx = pool(case, x)
    assert y.shape == (case.n, case.c, 1, 1)
    flat = x.reshape(case.n, case.c, -1)
    np.testing.assert_array_equal(y[..., 0, 0], flat.max(axis=2))
    np.testing.assert_array_equal(idx[..., 0, 0], flat.argmax(axis=2))


def test_default_stride_is_the_kernel_size(rng):
    x = rng.standard_normal((2, 3, 11, 10))
    for k in (2, 3, (2, 3)):
        y, idx = fc.max_pool2d(x, k)
        y_s, idx_s = fc.max_pool2d(x, k, stride=k)
        y_n, idx_n = fc.max_pool2d(x, k, None, 0)
        assert_same_pool(y, idx, y_s, idx_s)
        assert_same_pool(y, idx, y_n, idx_n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_overlapping_windows_accumulate_gradient(dtype, rng):
    x = rng.uniform(-1, 0, (2, 3, 5, 5)).astype(dtype)
    x[:, :, 2, 2] = 10.0  # wins every one of the nine 3x3 windows
    y, idx = fc.max_pool2d(x, 3, stride=1)
    assert np.all(idx == 12)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    expected = np.zeros_like(x)
    expected[:, :, 2, 2] = dy.sum(axis=(2, 3))
    np.testing.assert_allclose(dx, expected, rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("case", cases.POOL_SHAPES, ids=str)
def test_backward_conserves_the_gradient_sum(case, rng):
    """Every dy element lands on exactly one input: sum(dx) == sum(dy) per plane."""
    x = make_input(case.x_shape, "ties", rng)
    y, idx = pool(case, x)
    dy = rng.standard_normal(y.shape)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_allclose(dx.sum(axis=(2, 3)), dy.sum(axis=(2, 3)), rtol=1e-12, atol=1e-12)
    planes_dx, planes_idx = dx.reshape(case.n * case.c, -1), idx.reshape(case.n * case.c, -1)
    for plane_dx, plane_idx in zip(planes_dx, planes_idx):  # only winners receive gradient
        assert set(np.flatnonzero(plane_dx)) <= set(plane_idx.tolist())


@pytest.mark.parametrize("where", [(0, 0, 0, 0), (7, 15, 13, 13), (3, 9, 6, 2)], ids=str)
@pytest.mark.parametrize("bad", [-1, 28 * 28])
def test_backward_refuses_a_bad_index_in_a_parallel_launch(where, bad, rng):
    """The kernel range-checks every index (one bad one among 25,088 on both threads)."""
    x = rng.standard_normal((8, 16, 28, 28)).astype(np.float32)
    y, idx = fc.max_pool2d(x, 2)
    idx[where] = bad
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\).*1 out of range"):
        fc.max_pool2d_backward(np.ones_like(y), idx, x.shape)


def test_backward_accepts_any_integer_index_dtype(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    y, idx = fc.max_pool2d(x, 3, 1, 1)
    dy = rng.standard_normal(y.shape)
    expected = fc.max_pool2d_backward(dy, idx, x.shape)
    for dt in (np.int32, np.int16, np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(fc.max_pool2d_backward(dy, idx.astype(dt), x.shape), expected)


def test_backward_with_input_rows_in_no_window(rng):
    """Stride over the kernel: inputs in no window, and leftovers, get zero gradient."""
    x = rng.standard_normal((1, 2, 11, 11))
    y, idx = fc.max_pool2d(x, 2, stride=3)
    dx = fc.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert y.shape == (1, 2, 4, 4)  # windows start at 0, 3, 6, 9 and span two rows/cols
    in_a_window = np.isin(np.arange(11), [0, 1, 3, 4, 6, 7, 9, 10])
    covered = in_a_window[:, None] & in_a_window[None, :]
    assert np.all(dx[:, :, ~covered] == 0)
    assert dx.sum() == y.size


# ------------------------------------------------------------------------- finite differences
def distinct_values(shape, rng):
    """Values at least 0.01 apart, so a perturbation of 1e-6 never changes a winner."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 + rng.uniform(0, 1e-3, n)).reshape(shape) - n * 0.005


FD_CASES = [
    PoolCase("fd", 2, 2, 6, 6, 2),
    PoolCase("fd", 1, 2, 7, 6, 3, 1, 1),
    PoolCase("fd", 2, 1, 7, 8, (2, 3), (3, 1), (1, 1)),
    PoolCase("fd", 1, 2, 5, 4, (5, 4)),
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_max_pool2d_gradient_matches_finite_differences(case, rng, numgrad, one_thread):
    x = distinct_values(case.x_shape, rng)
    y, idx = pool(case, x)
    dy = rng.standard_normal(y.shape)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_allclose(dx, numgrad(lambda: np.sum(pool(case, x)[0] * dy), x), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- hypothesis
@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    square = draw(st.booleans())
    if square:
        kw = kh
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = ph if square and draw(st.booleans()) else (ph, pw)
    ph, pw = (padding, padding) if np.ndim(padding) == 0 else padding
    H = draw(st.integers(max(1, kh - 2 * ph), 12))
    W = draw(st.integers(max(1, kw - 2 * pw), 12))
    kernel = kh if square else (kh, kw)
    return PoolCase("hypothesis", draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W, kernel, stride, padding)


@hypothesis.given(
    case=pool_cases(),
    kind=st.sampled_from(VALUE_KINDS),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_max_pool2d_matches_reference(case, kind, dtype, seed):
    rng = np.random.default_rng(seed)
    x = make_input(case.x_shape, kind, rng, dtype)
    y, idx = pool(case, x)
    y_ref, idx_ref = ref_pool(case, x)
    assert_same_pool(y, idx, y_ref, idx_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(
        fc.max_pool2d_backward(dy, idx, x.shape),
        ref.max_pool2d_backward(dy, idx_ref, x.shape),
        rtol=1e-5 if dtype == np.float32 else 1e-12,
        atol=1e-5 if dtype == np.float32 else 1e-12,
    )


# ------------------------------------------------------------------------- PyTorch
@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "kind"), ROW_PARAMS)
def test_max_pool2d_matches_torch(case, kind, dtype, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(_seed(case, kind, "torch"))
    x = make_input(case.x_shape, kind, rng, dtype)
    kh, kw, sh, sw, ph, pw = params(case)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, (kh, kw), (sh, sw), (ph, pw), case.dilation_hw, case.ceil_mode,
                                              return_indices=True)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.from_numpy(dy))

    y, idx = pool(case, x)
    assert_same_pool(y, idx, ty.detach().numpy(), tidx.numpy())
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype, 4 * kh * kw))


# ------------------------------------------------------------------------- layouts, purity, determinism
LAYOUT_CASE = PoolCase("layout", 2, 3, 9, 10, (3, 2), (2, 1), (1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_gives_the_same_result(layout, dtype):
    rng = np.random.default_rng(_seed(layout, "layout"))
    x = make_input(LAYOUT_CASE.x_shape, "ties", rng, dtype)
    y, idx = pool(LAYOUT_CASE, x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)

    xl, dyl, idxl = (relayout(a, layout) for a in (x, dy, idx))
    y2, idx2 = pool(LAYOUT_CASE, xl)
    assert_same_pool(y2, idx2, y, idx)
    np.testing.assert_array_equal(fc.max_pool2d_backward(dyl, idxl, x.shape), dx)
    for arranged, original in ((xl, x), (dyl, dy), (idxl, idx)):
        np.testing.assert_array_equal(arranged, original)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_not_modified_and_outputs_are_fresh(dtype, rng):
    x = make_input(LAYOUT_CASE.x_shape, "nan", rng, dtype)
    x_before = x.copy()
    y, idx = pool(LAYOUT_CASE, x)
    np.testing.assert_array_equal(x, x_before)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_before, idx_before = dy.copy(), idx.copy()
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_array_equal(idx, idx_before)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy) and not np.shares_memory(dx, idx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_calls_are_bitwise_identical(dtype, rng):
    x = make_input((4, 16, 24, 24), "ties", rng, dtype)
    (y1, i1), (y2, i2) = fc.max_pool2d(x, 3, 1, 1), fc.max_pool2d(x, 3, 1, 1)
    assert y1.tobytes() == y2.tobytes() and i1.tobytes() == i2.tobytes()
    dy = rng.standard_normal(y1.shape).astype(dtype)
    assert fc.max_pool2d_backward(dy, i1, x.shape).tobytes() == fc.max_pool2d_backward(dy, i1, x.shape).tobytes()
