"""fastconv.functional convolution and its gradients.

Checked against the pure-NumPy reference (fastconv.reference), float64 finite
differences, the adjoint identities, and PyTorch when it is installed.

The layers are the rows of the case table, :data:`benchmarks.cases.CONV_ROWS`, which
also drives the benchmarks: a row added there is tested here (against the reference
and PyTorch, in float32 and float64) and, with a ``bench_batch``, benchmarked.

Test data are float32-representable float64 values (:func:`benchmarks.cases.make_inputs`),
so one float64 reference result (:func:`benchmarks.cases.oracle`, computed once per case
and shared with the benchmarks' checks) serves both the float32 and float64 runs: the
float32 result is then compared with the exact answer, not with another rounded one.
"""

import functools
from typing import NamedTuple

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from _layouts import LAYOUTS, relayout
import _strategies as walk

import fastconv.functional as fc
from benchmarks import cases
from benchmarks.cases import ConvCase
from fastconv import reference as ref
from fastconv import _validation, plan

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


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
    inputs = cases.make_inputs(case, np.float64)
    (y,) = cases.oracle("conv2d", case)
    dx, dw, db = cases.oracle("conv2d_backward", case)
    data = ConvData(inputs["x"], inputs["w"], inputs["b"], inputs["dy"], y, dx, dw, db)
    for a in data:
        a.flags.writeable = False
    return data


def cast(data, dtype):
    """The inputs (x, w, b, dy) of ``data`` as fresh writeable arrays of ``dtype``."""
    return tuple(np.array(a, dtype=dtype) for a in data[:4])


def summands(case):
    """How many products are summed into each element of y, dx, dw and db (for the tolerances)."""
    ho, wo = case.out_hw
    kh, kw = case.kernel_hw
    return {"y": case.c * kh * kw, "dx": case.f * kh * kw, "dw": case.n * ho * wo, "db": case.n * ho * wo}


# ------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_ROWS, ids=str)
def test_conv2d_matches_reference(case, dtype, tol):
    d = conv_data(case)
    x, w, b, _ = cast(d, dtype)
    y = fc.conv2d(x, w, b, stride=case.stride, padding=case.pad, **case.options)
    assert y.dtype == dtype and y.shape == case.y_shape
    np.testing.assert_allclose(y, d.y, **tol(dtype, summands(case)["y"]))

    y_no_bias = fc.conv2d(x, w, stride=case.stride, padding=case.pad, **case.options)
    assert y_no_bias.dtype == dtype and y_no_bias.shape == case.y_shape
    expected = d.y - d.b[None, :, None, None]
    np.testing.assert_allclose(y_no_bias, expected, **tol(dtype, summands(case)["y"]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_ROWS, ids=str)
def test_conv2d_backward_input_matches_reference(case, dtype, tol):
    d = conv_data(case)
    _, w, _, dy = cast(d, dtype)
    dx = fc.conv2d_backward_input(dy, w, case.x_shape, stride=case.stride, padding=case.pad, **case.options)
    assert dx.dtype == dtype and dx.shape == case.x_shape
    np.testing.assert_allclose(dx, d.dx, **tol(dtype, summands(case)["dx"]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_ROWS, ids=str)
def test_conv2d_backward_weight_matches_reference(case, dtype, tol):
    d = conv_data(case)
    x, _, _, dy = cast(d, dtype)
    dw = fc.conv2d_backward_weight(dy, x, case.w_shape, stride=case.stride, padding=case.pad, **case.options)
    assert dw.dtype == dtype and dw.shape == case.w_shape
    np.testing.assert_allclose(dw, d.dw, **tol(dtype, summands(case)["dw"]))


#: The two vector widths the plan chooses kernels for (7 x 2 vector tiles in 512 bits, 6 x 2 in 256).
CPUS = {f"{8 * cpu.vector_bytes}bit": cpu for cpu in walk.CPUS}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_GRID + cases.CONV_KERNELS + cases.CONV_SHAPES, ids=str)
@pytest.mark.parametrize("cpu", list(CPUS))
def test_every_register_tile_matches_reference(cpu, case, dtype, tol):
    """The plans for both register files (the host's is chosen at import) give the reference forward and dx."""
    g = _validation.conv_geometry("test", case.x_shape, case.w_shape, case.stride, case.pad)
    p = plan.plan_conv2d(g, dtype, CPUS[cpu])
    d = conv_data(case)
    x, w, b, dy = cast(d, dtype)
    np.testing.assert_allclose(p.run_forward(x, w, b)[0], d.y, **tol(dtype, summands(case)["y"]))
    np.testing.assert_allclose(p.run_input_grad(dy, w), d.dx, **tol(dtype, summands(case)["dx"]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_ROWS, ids=str)
def test_conv2d_backward_equals_separate_calls(case, dtype, tol):
    d = conv_data(case)
    x, w, _, dy = cast(d, dtype)
    s, p, o = case.stride, case.pad, case.options
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=s, padding=p, **o)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert (dx.shape, dw.shape, db.shape) == (case.x_shape, case.w_shape, (case.f,))
    np.testing.assert_array_equal(dx, fc.conv2d_backward_input(dy, w, x.shape, stride=s, padding=p, **o))
    np.testing.assert_array_equal(dw, fc.conv2d_backward_weight(dy, x, w.shape, stride=s, padding=p, **o))
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), **tol(dtype, summands(case)["db"]))
    np.testing.assert_allclose(db, d.db, **tol(dtype, summands(case)["db"]))


def test_backward_input_leaves_uncovered_rows_at_zero(rng):
    """Rows/columns dropped by the output-size floor get exactly zero gradient."""
    x_shape, w = (2, 3, 10, 11), rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 3, 3))  # stride 3: windows cover rows/cols 0..8 only
    dx = fc.conv2d_backward_input(dy, w, x_shape, stride=3)
    assert np.all(dx[:, :, 9:, :] == 0) and np.all(dx[:, :, :, 9:] == 0)
    assert np.all(dx[:, :, :9, :9] != 0)


# ------------------------------------------------------------------------- finite differences
# Tiny: two loss evaluations per input and weight element.
FD_CASES = [
    ConvCase("fd", 2, 2, 6, 5, 3, 3, 1, 1),
    ConvCase("fd", 2, 2, 7, 6, 3, (3, 2), (2, 1), (1, 0)),
    ConvCase("fd", 1, 3, 7, 7, 2, (2, 4), 3, (0, 2)),
    ConvCase("fd", 2, 1, 5, 6, 4, 1, 2, 2),
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_conv2d_gradients_match_finite_differences(case, rng, numgrad, one_thread):
    x = rng.standard_normal(case.x_shape)
    w = rng.standard_normal(case.w_shape)
    b = rng.standard_normal(case.f)
    dy = rng.standard_normal(case.y_shape)
    s, p = case.stride, case.pad

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


@pytest.mark.parametrize("case", cases.CONV_GRID + cases.CONV_KERNELS + cases.CONV_SHAPES, ids=str)
def test_adjoint_identities(case, rng):
    x = rng.standard_normal(case.x_shape)
    w = rng.standard_normal(case.w_shape)
    dy = rng.standard_normal(case.y_shape)
    assert_adjoint(x, w, dy, case.stride, case.pad)


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
    return ConvCase(
        "hypothesis", draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W, draw(st.integers(1, 6)),
        (KH, KW), stride, padding,
    )  # fmt: skip


@hypothesis.given(case=conv_cases(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_conv_matches_reference(case, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b, dy = (f32_representable(rng, s) for s in (case.x_shape, case.w_shape, case.f, case.y_shape))
    s, p = case.stride, case.pad
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
    assert_adjoint(x, w, dy, case.stride, case.pad)


# ------------------------------------------------------------------------- PyTorch
#: The outputs of each op, named as :func:`summands` names them.
OUTPUTS = {
    "conv2d": ("y",),
    "conv2d_backward_input": ("dx",),
    "conv2d_backward_weight": ("dw",),
    "conv2d_backward": ("dx", "dw", "db"),
}


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases.CONV_ROWS, ids=str)
def test_conv2d_matches_torch(case, dtype, tol):
    """Every op agrees with the benchmarks' PyTorch (F.conv2d, aten.convolution_backward)."""
    torch_impl, ours = cases.IMPLEMENTATIONS["torch"], cases.IMPLEMENTATIONS["fastconv"]
    if torch_impl.unavailable_reason():
        pytest.skip(torch_impl.unavailable_reason())
    inputs = cases.make_inputs(case, dtype)
    # Both sides round, so float32 gets twice the tolerance.
    k = 2 if dtype == np.float32 else 1
    for op, names in OUTPUTS.items():
        got = ours.to_numpy(ours.thunk(op, case, inputs)())
        want = torch_impl.to_numpy(torch_impl.thunk(op, case, inputs)())
        assert len(got) == len(want) == len(names), op
        for name, g, t in zip(names, got, want):
            assert g.dtype == dtype and g.shape == t.shape, (op, name)
            np.testing.assert_allclose(g, t, **tol(dtype, k * k * summands(case)[name]), err_msg=f"{op}: {name}")


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
LAYOUT_CASE = ConvCase("layout", 2, 3, 9, 8, 5, (3, 2), (2, 1), (1, 1))




def _conv_calls():
    """(name, function of (x, w, b, dy)) for every conv op, using LAYOUT_CASE."""
    s, p = LAYOUT_CASE.stride, LAYOUT_CASE.pad
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
    arranged = [relayout(a, layout) for a in inputs]
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


DETERMINISM_CASE = ConvCase("determinism", 4, 8, 16, 16, 12, 3, 1, 1)


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
