"""fastconv.functional convolution and its gradients.

Checked against the pure-NumPy reference (fastconv.reference), float64 finite
differences, the adjoint identities, and PyTorch when it is installed.

Test data are float32-representable float64 values, so one float64 reference result
(computed once per case and cached) serves both the float32 and float64 runs: the
float32 result is then compared with the exact answer, not with another rounded one.
"""

import functools
import zlib
from typing import NamedTuple

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

import fastconv.functional as fc
from fastconv import reference as ref
from fastconv.kernels import conv as conv_kernels

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def _pair(v):
    return (v, v) if np.ndim(v) == 0 else tuple(v)


class Case(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    stride: object = 1
    padding: object = 0
    name: str = ""

    def __str__(self):
        s = f"N{self.N}-C{self.C}-{self.H}x{self.W}-F{self.F}-k{self.KH}x{self.KW}-s{self.stride}-p{self.padding}"
        s = s.replace(" ", "")
        return f"{self.name}:{s}" if self.name else s

    @property
    def out_hw(self):
        (sh, sw), (ph, pw) = _pair(self.stride), _pair(self.padding)
        return (self.H + 2 * ph - self.KH) // sh + 1, (self.W + 2 * pw - self.KW) // sw + 1

    @property
    def x_shape(self):
        return self.N, self.C, self.H, self.W

    @property
    def w_shape(self):
        return self.F, self.C, self.KH, self.KW

    @property
    def y_shape(self):
        return (self.N, self.F, *self.out_hw)


STRIDES = [1, 2, 3, (1, 2)]
PADDINGS = [0, 1, 2, (0, 2)]
GRID_CASES = [Case(2, 3, 9, 11, 5, 3, 3, s, p) for s in STRIDES for p in PADDINGS]

KERNELS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 3), (3, 1), (5, 2), (2, 7)]
KERNEL_CASES = [Case(2, 2, 9, 10, 5, kh, kw, 1, (kh // 2, kw // 2)) for kh, kw in KERNELS] + [
    Case(2, 2, 9, 10, 5, kh, kw, 2, 0) for kh, kw in KERNELS
]

SHAPE_CASES = [
    Case(1, 3, 8, 8, 4, 3, 3, 1, 1, "batch1"),
    Case(3, 1, 10, 10, 6, 3, 3, 1, 0, "C1"),
    Case(2, 3, 7, 7, 17, 3, 3, 1, 1, "F17"),
    Case(2, 3, 6, 6, 1, 3, 3, 1, 1, "F1"),
    Case(2, 20, 6, 5, 33, 3, 3, 1, 1, "C20-F33"),
    Case(2, 2, 13, 7, 3, 3, 3, 1, 1, "odd"),
    Case(1, 2, 15, 4, 3, 3, 3, (2, 1), (1, 0), "tall"),
    Case(1, 2, 5, 40, 3, 3, 3, 1, 1, "wide"),
    Case(2, 2, 9, 9, 3, 3, 3, 2, 0, "exact-fit"),
    Case(2, 2, 10, 10, 3, 3, 3, 2, 0, "leftover"),
    Case(2, 2, 11, 11, 3, 3, 3, 4, 0, "leftover-s4"),
    Case(2, 3, 5, 4, 2, 5, 4, 1, 0, "kernel-is-input"),
    Case(2, 3, 1, 1, 4, 3, 3, 1, 1, "1x1-input-pad1"),
    Case(1, 2, 3, 3, 2, 1, 1, 1, 2, "1x1-kernel-pad2"),
    Case(2, 2, 4, 5, 3, 3, 3, 1, 3, "padding-over-kernel"),
    # F >= 32 with stride > 1: the input gradient packs dy once for all its phases
    Case(2, 3, 11, 9, 32, 3, 3, 2, 1, "F32-s2"),
    Case(1, 2, 13, 12, 33, 4, 5, (2, 3), (2, 1), "F33-s2x3-k4x5"),
    Case(1, 2, 9, 10, 40, 2, 2, 3, 0, "F40-s3-k2"),
    Case(1, 2, 17, 16, 36, 7, 7, 2, 3, "F36-stem7"),
    # Many channels: receptive fields of 2304 (forward and input gradient); the weight
    # gradient's per-thread partials would pass 4 MiB, so the filters are split instead.
    Case(2, 256, 5, 6, 256, 3, 3, 1, 1, "many-channels"),
    # Rows narrower than the 4-pixel tile (pixel by pixel), and 5-7 wide (the last tile
    # overlaps the one before it), on the tiled kernels (receptive field >= 32).
    Case(2, 8, 4, 3, 9, 3, 3, 1, 1, "tiled-W3"),
    Case(2, 8, 5, 2, 9, 3, 3, 1, 1, "tiled-W2"),
    Case(2, 8, 3, 7, 9, 3, 3, 1, 1, "tiled-W7"),
    # 1x1 at stride 1 without padding: matrix products in NCHW (fastconv.kernels.dense),
    # with 4 x 4 tile remainders in filters (9) and channels (41) and an odd plane (5 x 7).
    Case(3, 41, 5, 7, 9, 1, 1, 1, 0, "pointwise"),
    Case(1, 2, 1, 1, 1, 1, 1, 1, 0, "pointwise-tiny"),
]

# issue 5's benchmark shapes (N, C, H, W, F, k, stride, pad), at a reduced batch.
BENCH_CASES = [
    Case(2, 1, 28, 28, 32, 3, 3, 1, 1, "mnist_conv1"),
    Case(1, 32, 14, 14, 64, 3, 3, 1, 1, "mnist_conv2"),
    Case(1, 3, 32, 32, 64, 3, 3, 1, 1, "cifar_conv"),
    Case(1, 64, 56, 56, 64, 3, 3, 1, 1, "resnet_conv"),
    Case(1, 64, 56, 56, 128, 3, 3, 2, 1, "strided"),
    Case(1, 32, 14, 14, 64, 5, 5, 1, 2, "k5"),
]

ALL_CASES = GRID_CASES + KERNEL_CASES + SHAPE_CASES + BENCH_CASES


def _seed(case):
    return zlib.crc32(str(case).encode())


def f32_representable(rng, shape):
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


class ConvData(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    dy: np.ndarray
    y: np.ndarray  # reference conv2d(x, w, b)
    dx: np.ndarray
    dw: np.ndarray
    db: np.ndarray


@functools.lru_cache(maxsize=None)
def conv_data(case):
    """Inputs and float64 reference results for ``case`` (computed once, read-only)."""
    rng = np.random.default_rng(_seed(case))
    x = f32_representable(rng, case.x_shape)
    w = f32_representable(rng, case.w_shape)
    b = f32_representable(rng, case.F)
    dy = f32_representable(rng, case.y_shape)
    s, p = case.stride, case.padding
    y = ref.conv2d(x, w, b, s, p)
    dx, dw, db = ref.conv2d_backward(dy, x, w, s, p)
    data = ConvData(x, w, b, dy, y, dx, dw, db)
    for a in data:
        a.flags.writeable = False
    return data


def cast(data, dtype):
    """The inputs (x, w, b, dy) of ``data`` as fresh writeable arrays of ``dtype``."""
    return tuple(np.array(a, dtype=dtype) for a in data[:4])


# ------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_conv2d_matches_reference(case, dtype, tol):
    d = conv_data(case)
    x, w, b, _ = cast(d, dtype)
    y = fc.conv2d(x, w, b, stride=case.stride, padding=case.padding)
    assert y.dtype == dtype and y.shape == case.y_shape
    np.testing.assert_allclose(y, d.y, **tol(dtype, case.C * case.KH * case.KW))

    y_no_bias = fc.conv2d(x, w, stride=case.stride, padding=case.padding)
    assert y_no_bias.dtype == dtype and y_no_bias.shape == case.y_shape
    expected = d.y - d.b[None, :, None, None]
    np.testing.assert_allclose(y_no_bias, expected, **tol(dtype, case.C * case.KH * case.KW))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_conv2d_backward_input_matches_reference(case, dtype, tol):
    d = conv_data(case)
    _, w, _, dy = cast(d, dtype)
    dx = fc.conv2d_backward_input(dy, w, case.x_shape, stride=case.stride, padding=case.padding)
    assert dx.dtype == dtype and dx.shape == case.x_shape
    np.testing.assert_allclose(dx, d.dx, **tol(dtype, case.F * case.KH * case.KW))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_conv2d_backward_weight_matches_reference(case, dtype, tol):
    d = conv_data(case)
    x, _, _, dy = cast(d, dtype)
    dw = fc.conv2d_backward_weight(dy, x, case.w_shape, stride=case.stride, padding=case.padding)
    assert dw.dtype == dtype and dw.shape == case.w_shape
    Ho, Wo = case.out_hw
    np.testing.assert_allclose(dw, d.dw, **tol(dtype, case.N * Ho * Wo))


TILES = {"4x4": conv_kernels.conv2d_forward, "4x3": conv_kernels.conv2d_forward_4x3}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRID_CASES + KERNEL_CASES + SHAPE_CASES, ids=str)
@pytest.mark.parametrize("tile", list(TILES))
def test_every_register_tile_matches_reference(tile, case, dtype, tol, monkeypatch):
    """Both forward tiles (the CPU picks one at import) give the reference forward and input gradient."""
    monkeypatch.setattr(fc, "_TILED_FORWARD", TILES[tile])
    d = conv_data(case)
    x, w, b, dy = cast(d, dtype)
    y = fc.conv2d(x, w, b, stride=case.stride, padding=case.padding)
    np.testing.assert_allclose(y, d.y, **tol(dtype, case.C * case.KH * case.KW))
    dx = fc.conv2d_backward_input(dy, w, case.x_shape, stride=case.stride, padding=case.padding)
    np.testing.assert_allclose(dx, d.dx, **tol(dtype, case.F * case.KH * case.KW))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRID_CASES + KERNEL_CASES[:4] + SHAPE_CASES + BENCH_CASES[:2], ids=str)
def test_conv2d_backward_equals_separate_calls(case, dtype, tol):
    d = conv_data(case)
    x, w, _, dy = cast(d, dtype)
    s, p = case.stride, case.padding
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=s, padding=p)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert (dx.shape, dw.shape, db.shape) == (case.x_shape, case.w_shape, (case.F,))
    np.testing.assert_array_equal(dx, fc.conv2d_backward_input(dy, w, x.shape, stride=s, padding=p))
    np.testing.assert_array_equal(dw, fc.conv2d_backward_weight(dy, x, w.shape, stride=s, padding=p))
    Ho, Wo = case.out_hw
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), **tol(dtype, case.N * Ho * Wo))
    np.testing.assert_allclose(db, d.db, **tol(dtype, case.N * Ho * Wo))


def test_backward_input_leaves_uncovered_rows_at_zero(rng):
    """Rows/columns dropped by the output-size floor get exactly zero gradient."""
    x_shape, w = (2, 3, 10, 11), rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 3, 3))  # stride 3: windows cover rows/cols 0..8 only
    dx = fc.conv2d_backward_input(dy, w, x_shape, stride=3)
    assert np.all(dx[:, :, 9:, :] == 0) and np.all(dx[:, :, :, 9:] == 0)
    assert np.all(dx[:, :, :9, :9] != 0)


# ------------------------------------------------------------------------- finite differences
FD_CASES = [
    Case(2, 2, 6, 5, 3, 3, 3, 1, 1),
    Case(2, 2, 7, 6, 3, 3, 2, (2, 1), (1, 0)),
    Case(1, 3, 7, 7, 2, 2, 4, 3, (0, 2)),
    Case(2, 1, 5, 6, 4, 1, 1, 2, 2),
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_conv2d_gradients_match_finite_differences(case, rng, numgrad, one_thread):
    x = rng.standard_normal(case.x_shape)
    w = rng.standard_normal(case.w_shape)
    b = rng.standard_normal(case.F)
    dy = rng.standard_normal(case.y_shape)
    s, p = case.stride, case.padding

    def loss():
        return np.sum(fc.conv2d(x, w, b, stride=s, padding=p) * dy)

    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=s, padding=p)
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numgrad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numgrad(loss, b), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- adjoint identities
def assert_adjoint(x, w, dy, stride, padding):
    """<conv(x, w), dy> == <x, dL/dx> == <w, dL/dw> (the conv is bilinear in x and w)."""
    lhs = np.vdot(fc.conv2d(x, w, stride=stride, padding=padding), dy)
    via_x = np.vdot(x, fc.conv2d_backward_input(dy, w, x.shape, stride=stride, padding=padding))
    via_w = np.vdot(w, fc.conv2d_backward_weight(dy, x, w.shape, stride=stride, padding=padding))
    # Bound on the magnitude of the summed terms, for a relative tolerance.
    scale = np.abs(x).sum() * np.abs(w).max() * np.abs(dy).max() * w[:, 0].size + 1.0
    assert abs(lhs - via_x) <= 1e-12 * scale, (lhs, via_x)
    assert abs(lhs - via_w) <= 1e-12 * scale, (lhs, via_w)


@pytest.mark.parametrize("case", GRID_CASES + KERNEL_CASES + SHAPE_CASES, ids=str)
def test_adjoint_identities(case, rng):
    x = rng.standard_normal(case.x_shape)
    w = rng.standard_normal(case.w_shape)
    dy = rng.standard_normal(case.y_shape)
    assert_adjoint(x, w, dy, case.stride, case.padding)


# ------------------------------------------------------------------------- hypothesis
@st.composite
def conv_cases(draw):
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    H = draw(st.integers(max(1, KH - 2 * ph), 12))
    W = draw(st.integers(max(1, KW - 2 * pw), 12))
    stride = sh if draw(st.booleans()) else (sh, sw)
    padding = ph if draw(st.booleans()) else (ph, pw)
    if np.ndim(padding) == 0:  # keep the kernel inside the padded input
        H, W = max(H, KH - 2 * ph), max(W, KW - 2 * ph)
    return Case(
        draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W, draw(st.integers(1, 6)),
        KH, KW, stride, padding,
    )  # fmt: skip


@hypothesis.given(case=conv_cases(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_conv_matches_reference(case, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b, dy = (f32_representable(rng, s) for s in (case.x_shape, case.w_shape, case.F, case.y_shape))
    s, p = case.stride, case.padding
    t = 1e-4 if dtype == np.float32 else 1e-10
    xd, wd, bd, dyd = (a.astype(dtype) for a in (x, w, b, dy))
    y = fc.conv2d(xd, wd, bd, stride=s, padding=p)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, s, p), rtol=t, atol=t)
    dx, dw, db = fc.conv2d_backward(dyd, xd, wd, stride=s, padding=p)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, s, p)
    np.testing.assert_allclose(dx, rdx, rtol=t, atol=t)
    np.testing.assert_allclose(dw, rdw, rtol=t, atol=t)
    np.testing.assert_allclose(db, rdb, rtol=t, atol=t)


@hypothesis.given(case=conv_cases(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_adjoint_identities(case, seed):
    rng = np.random.default_rng(seed)
    x, w, dy = (rng.standard_normal(s) for s in (case.x_shape, case.w_shape, case.y_shape))
    assert_adjoint(x, w, dy, case.stride, case.padding)


# ------------------------------------------------------------------------- PyTorch
def _random_torch_cases(n, seed=7):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        KH, KW = (int(k) for k in rng.integers(1, 8, 2))
        sh, sw = (int(s) for s in rng.integers(1, 4, 2))
        ph, pw = (int(p) for p in rng.integers(0, 4, 2))
        H = int(rng.integers(max(1, KH - 2 * ph), 20))
        W = int(rng.integers(max(1, KW - 2 * pw), 20))
        stride = sh if rng.random() < 0.3 else (sh, sw)
        padding = (ph, pw) if rng.random() < 0.7 else ph
        if np.ndim(padding) == 0:
            H, W = max(H, KH - 2 * ph), max(W, KW - 2 * ph)
        N, C, F = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 21))
        cases.append(Case(N, C, H, W, F, KH, KW, stride, padding))
    return cases


TORCH_CASES = _random_torch_cases(24)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_conv2d_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(_seed(case))
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (case.x_shape, case.w_shape, case.F))
    dy = rng.standard_normal(case.y_shape).astype(dtype)
    s, p = case.stride, case.padding

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    ty.backward(torch.from_numpy(dy))

    Ho, Wo = case.out_hw
    y = fc.conv2d(x, w, b, stride=s, padding=p)
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=s, padding=p)
    # Both sides round, so float32 gets twice the tolerance.
    k = 2 if dtype == np.float32 else 1
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol(dtype, k * k * case.C * case.KH * case.KW))
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype, k * k * case.F * case.KH * case.KW))
    np.testing.assert_allclose(dw, tw.grad.numpy(), **tol(dtype, k * k * case.N * Ho * Wo))
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol(dtype, k * k * case.N * Ho * Wo))


# ------------------------------------------------------------------------- NaN / Inf
def test_nan_and_inf_propagate_like_the_reference(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 5, 5] = np.inf
    x[1, 2, 0, 0] = -np.inf
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 7, 7))
    dy[1, 3, 4, 4] = np.nan
    y = fc.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, ref.conv2d(x, w, None, 1, 1), rtol=1e-10, atol=1e-10)
    assert np.isnan(y[0]).any() and not np.isnan(y[0, :, 5:, :]).any()  # NaN stays local
    dx, dw, _ = fc.conv2d_backward(dy, x, w, padding=1)
    rdx, rdw, _ = ref.conv2d_backward(dy, x, w, 1, 1)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, rdw, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------- layouts, purity, determinism
LAYOUT_CASE = Case(2, 3, 9, 8, 5, 3, 2, (2, 1), (1, 1))


def _layout(a, kind):
    """``a`` (C-contiguous) rearranged in memory but with the same values."""
    everything = (slice(None),) * a.ndim
    reverse = (slice(None, None, -1),) * a.ndim
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "sliced":
        base = np.full(tuple(2 * n + 1 for n in a.shape), np.nan, dtype=a.dtype)
        view = base[(slice(1, None, 2),) * a.ndim]
        view[everything] = a
        return view
    if kind == "channels-last-view" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if kind == "channels-last-view":
        return a.copy()
    if kind == "negative-strides":
        return a[reverse].copy()[reverse]
    if kind == "readonly":
        out = a.copy()
        out.flags.writeable = False
        return out
    raise AssertionError(kind)


LAYOUTS = ["fortran", "sliced", "channels-last-view", "negative-strides", "readonly"]


def _conv_calls():
    """(name, function of (x, w, b, dy)) for every conv op, using LAYOUT_CASE."""
    s, p = LAYOUT_CASE.stride, LAYOUT_CASE.padding
    return {
        "conv2d": lambda x, w, b, dy: [fc.conv2d(x, w, b, stride=s, padding=p)],
        "conv2d_backward": lambda x, w, b, dy: list(fc.conv2d_backward(dy, x, w, stride=s, padding=p)),
        "conv2d_backward_input": lambda x, w, b, dy: [
            fc.conv2d_backward_input(dy, w, x.shape, stride=s, padding=p)
        ],
        "conv2d_backward_weight": lambda x, w, b, dy: [
            fc.conv2d_backward_weight(dy, x, w.shape, stride=s, padding=p)
        ],
    }


OPS = list(_conv_calls())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_any_memory_layout_gives_the_same_result(op, layout, dtype):
    call = _conv_calls()[op]
    d = conv_data(LAYOUT_CASE)
    inputs = cast(d, dtype)
    expected = call(*inputs)
    arranged = [_layout(a, layout) for a in inputs]
    for a, b in zip(arranged, inputs):
        np.testing.assert_array_equal(a, b)
    results = call(*arranged)
    for got, want in zip(results, expected):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    for a, b in zip(arranged, inputs):  # not modified either
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_inputs_are_not_modified(op, dtype):
    call = _conv_calls()[op]
    inputs = cast(conv_data(LAYOUT_CASE), dtype)
    before = [a.copy() for a in inputs]
    results = call(*inputs)
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b)
    for r in results:  # outputs are fresh arrays, not views of an input
        assert not any(np.shares_memory(r, a) for a in inputs)


DETERMINISM_CASE = Case(4, 8, 16, 16, 12, 3, 3, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"])
def test_repeated_calls_are_bitwise_identical(op, dtype):
    inputs = cast(conv_data(DETERMINISM_CASE), dtype)
    x, w, b, dy = inputs
    calls = {
        "conv2d": lambda: [fc.conv2d(x, w, b, stride=1, padding=1)],
        "conv2d_backward_input": lambda: [fc.conv2d_backward_input(dy, w, x.shape, stride=1, padding=1)],
        "conv2d_backward_weight": lambda: [fc.conv2d_backward_weight(dy, x, w.shape, stride=1, padding=1)],
        "conv2d_backward": lambda: list(fc.conv2d_backward(dy, x, w, stride=1, padding=1)),
    }
    first, second = calls[op](), calls[op]()
    for a, b_ in zip(first, second):
        assert a.tobytes() == b_.tobytes()
