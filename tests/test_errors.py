"""The bad-input matrix of the functional API: one parametrized test per category.

Every bad call must raise the documented exception type with a message that names the
function, the offending argument and (where there is one) its shape. Valid edge cases
(an empty batch, NumPy integer parameters) must work.
"""

import re
from typing import NamedTuple

import numpy as np
import pytest

import fastconv.functional as fc

# Valid baseline arguments; each case below breaks exactly one thing.
X = np.arange(2 * 4 * 8 * 8, dtype=np.float64).reshape(2, 4, 8, 8) / 100
WT = np.ones((5, 4, 3, 3))
B = np.zeros(5)
DY = np.ones((2, 5, 6, 6))  # conv2d(X, WT) output shape, stride 1, padding 0
PX = X.copy()
PY = np.ones((2, 4, 4, 4))
# max_pool2d(PX, 2)'s indices: PX increases along rows and columns, so each 2x2 window's
# bottom-right element wins (values up to H*W - 1 = 63).
_rows, _cols = np.meshgrid(2 * np.arange(4) + 1, 2 * np.arange(4) + 1, indexing="ij")
PIDX = np.broadcast_to(_rows * 8 + _cols, (2, 4, 4, 4)).astype(np.int64)

BASE = {
    "conv2d": dict(x=X, w=WT, b=B, stride=1, padding=0),
    "conv2d_backward": dict(dy=DY, x=X, w=WT, stride=1, padding=0),
    "conv2d_backward_input": dict(dy=DY, w=WT, input_shape=X.shape, stride=1, padding=0),
    "conv2d_backward_weight": dict(dy=DY, x=X, weight_shape=WT.shape, stride=1, padding=0),
    "max_pool2d": dict(x=PX, kernel_size=2, stride=None, padding=0),
    "max_pool2d_backward": dict(dy=PY, indices=PIDX, input_shape=PX.shape),
}
CONV_OPS = ["conv2d", "conv2d_backward", "conv2d_backward_input", "conv2d_backward_weight"]
ALL_OPS = list(BASE)


def call(op, **changes):
    """Call ``fastconv.functional.<op>`` by keyword with the baseline arguments, changed as given."""
    return getattr(fc, op)(**{**BASE[op], **changes})


class Bad(NamedTuple):
    op: str
    changes: dict
    error: type  # or a tuple of types where the contract allows either
    needles: tuple  # regexes that must all occur in the message (besides the function name)
    label: str

    def __str__(self):
        return f"{self.op}-{self.label}"


def shape_of(s):
    return re.escape(str(tuple(s)))


def name(arg):
    return rf"\b{re.escape(arg)}\b"


def check(case):
    pattern = "(?s)" + "".join(f"(?=.*(?:{n}))" for n in (name(case.op), *case.needles))
    with pytest.raises(case.error, match=pattern):
        call(case.op, **case.changes)


def bad_array(op, arg, value, error=ValueError, label=None, extra=()):
    return Bad(op, {arg: value}, error, (name(arg), shape_of(value.shape), *extra), label or f"{arg}{value.shape}")


# ------------------------------------------------------------------------- wrong ndim
NDIM_CASES = [
    bad_array("conv2d", "x", X[0]),
    bad_array("conv2d", "x", X[None]),
    bad_array("conv2d", "w", WT[0]),
    bad_array("conv2d", "w", WT[None]),
    bad_array("conv2d", "b", B[None]),
    bad_array("conv2d", "b", np.ones(())),  # 0-d array
    bad_array("conv2d_backward", "dy", DY[0]),
    bad_array("conv2d_backward", "x", X[None]),
    bad_array("conv2d_backward", "w", WT[0]),
    bad_array("conv2d_backward_input", "dy", DY[0]),
    bad_array("conv2d_backward_input", "w", WT[None]),
    Bad("conv2d_backward_input", {"input_shape": (4, 8, 8)}, ValueError, (name("input_shape"),), "input_shape-3"),
    Bad("conv2d_backward_input", {"input_shape": (1, 2, 4, 8, 8)}, ValueError, (name("input_shape"),), "input_shape-5"),
    bad_array("conv2d_backward_weight", "dy", DY[None]),
    bad_array("conv2d_backward_weight", "x", X[0]),
    Bad("conv2d_backward_weight", {"weight_shape": (5, 4, 3)}, ValueError, (name("weight_shape"),), "weight_shape-3"),
    bad_array("max_pool2d", "x", PX[0]),
    bad_array("max_pool2d", "x", PX[0, 0]),
    bad_array("max_pool2d", "x", PX[None]),
    bad_array("max_pool2d_backward", "dy", PY[0]),
    bad_array("max_pool2d_backward", "indices", PIDX[None]),
    Bad("max_pool2d_backward", {"input_shape": (4, 8, 8)}, ValueError, (name("input_shape"),), "input_shape-3"),
]


@pytest.mark.parametrize("case", NDIM_CASES, ids=str)
def test_wrong_ndim(case):
    check(case)


# ------------------------------------------------------------------------- channel mismatch
W3 = np.ones((5, 3, 3, 3))
CHANNEL_CASES = [
    Bad("conv2d", {"w": W3}, ValueError, (name("w"), name("x"), shape_of(X.shape), shape_of(W3.shape)), "w-C3"),
    Bad("conv2d", {"x": X[:, :2]}, ValueError, (name("w"), name("x"), shape_of((2, 2, 8, 8)), shape_of(WT.shape)), "x-C2"),
    Bad("conv2d_backward", {"w": W3}, ValueError, (name("w"), name("x"), shape_of(X.shape), shape_of(W3.shape)), "w-C3"),
    Bad("conv2d_backward_input", {"input_shape": (2, 3, 8, 8)}, ValueError,
        (name("input_shape"), name("w"), shape_of((2, 3, 8, 8)), shape_of(WT.shape)), "input_shape-C3"),
    Bad("conv2d_backward_weight", {"weight_shape": (5, 3, 3, 3)}, ValueError,
        (name("weight_shape"), name("x"), shape_of(X.shape), shape_of((5, 3, 3, 3))), "weight_shape-C3"),
    Bad("max_pool2d_backward", {"input_shape": (2, 3, 8, 8)}, ValueError,
        (name("input_shape"), shape_of((2, 3, 8, 8)), shape_of(PY.shape)), "input_shape-C3"),
]  # fmt: skip


@pytest.mark.parametrize("case", CHANNEL_CASES, ids=str)
def test_channel_mismatch(case):
    check(case)


# ------------------------------------------------------------------------- kernel larger than the padded input
def _conv_arguments(op, x_shape, w_shape, y_hw, padding):
    """Keyword arguments of ``op`` for arrays of ones of these shapes (``dy`` of ``y_hw`` pixels)."""
    x, w = np.ones(x_shape), np.ones(w_shape)
    dy = np.ones((x_shape[0], w_shape[0]) + tuple(y_hw))
    return {
        "conv2d": dict(x=x, w=w, b=None, padding=padding),
        "conv2d_backward": dict(dy=dy, x=x, w=w, padding=padding),
        "conv2d_backward_input": dict(dy=dy, w=w, input_shape=x_shape, padding=padding),
        "conv2d_backward_weight": dict(dy=dy, x=x, weight_shape=w_shape, padding=padding),
    }[op]


def _too_small(op, x_shape, w_shape=(5, 4, 3, 3), padding=0, label=""):
    changes = _conv_arguments(op, x_shape, w_shape, (1, 1), padding)  # any dy: the geometry is wrong first
    return Bad(op, changes, ValueError, (shape_of(x_shape), shape_of(w_shape[2:]) + "|" + shape_of(w_shape)), label)


KERNEL_CASES = [
    *(_too_small(op, (2, 4, 2, 8), label="H2-k3") for op in CONV_OPS),
    *(_too_small(op, (2, 4, 8, 2), label="W2-k3") for op in CONV_OPS),
    _too_small("conv2d", (2, 4, 1, 1), padding=(1, 0), label="1x1-p(1,0)"),
    _too_small("conv2d", (2, 4, 6, 6), (5, 4, 7, 2), label="k7x2-on-6x6"),
    _too_small("conv2d_backward_input", (2, 4, 6, 6), (5, 4, 2, 9), padding=1, label="k2x9-on-6x6-p1"),
    Bad("max_pool2d", {"kernel_size": 9}, ValueError, (name("kernel_size"), shape_of(PX.shape)), "k9-on-8x8"),
    Bad("max_pool2d", {"kernel_size": (2, 9), "padding": (0, 0)}, ValueError, (name("kernel_size"), shape_of(PX.shape)), "k2x9"),
    Bad("max_pool2d", {"x": np.ones((2, 4, 3, 3)), "kernel_size": 6, "padding": 1}, ValueError,
        (name("kernel_size"), shape_of((2, 4, 3, 3))), "k6p1-on-3x3"),
]  # fmt: skip


@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
def test_kernel_larger_than_padded_input(case):
    check(case)


# ------------------------------------------------------------------------- parameter values
def _param_cases(values, error, params_of_op):
    return [
        Bad(op, {param: v}, error, (name(param),), f"{param}={v!r}".replace(" ", ""))
        for op, params in params_of_op.items()
        for param in params
        for v in values
    ]


STRIDE_OPS = {op: ["stride"] for op in CONV_OPS} | {"max_pool2d": ["stride", "kernel_size"]}
PADDING_OPS = {op: ["padding"] for op in CONV_OPS + ["max_pool2d"]}
PARAM_OPS = {op: ["stride", "padding"] for op in CONV_OPS} | {"max_pool2d": ["kernel_size", "stride", "padding"]}

NONPOSITIVE_CASES = _param_cases([0, -1, (1, 0), (0, 2), (-2, 1), np.int64(0)], ValueError, STRIDE_OPS)
NEGATIVE_PADDING_CASES = _param_cases([-1, (0, -1), (-2, 0), np.int32(-1)], ValueError, PADDING_OPS)


@pytest.mark.parametrize("case", NONPOSITIVE_CASES, ids=str)
def test_stride_and_kernel_size_must_be_positive(case):
    check(case)


@pytest.mark.parametrize("case", NEGATIVE_PADDING_CASES, ids=str)
def test_padding_must_not_be_negative(case):
    check(case)


POOL_PADDING_CASES = [
    Bad("max_pool2d", {"kernel_size": k, "padding": p}, ValueError, (name("padding"),), f"k{k}-p{p}".replace(" ", ""))
    for k, p in [(2, 2), (3, 2), (1, 1), ((3, 2), (1, 2)), ((2, 4), (2, 1)), (4, 3)]
]


@pytest.mark.parametrize("case", POOL_PADDING_CASES, ids=str)
def test_pool_padding_over_half_the_kernel(case):
    check(case)


BAD_PARAM_TYPES = [True, False, 1.0, 2.5, "1", None, (1, 1.0), (True, 1), np.float64(2.0), np.bool_(True), 1 + 0j]
PARAM_TYPE_CASES = [
    c
    for c in _param_cases(BAD_PARAM_TYPES, TypeError, PARAM_OPS)
    if not (c.op == "max_pool2d" and "stride" in c.changes and c.changes["stride"] is None)  # None = default
    and not (c.op in CONV_OPS and c.changes.get("padding") == "1")  # a conv's padding may be a string (below)
]
# A convolution's padding string other than 'same' and 'valid' (issue 15): a ValueError naming both.
PARAM_TYPE_CASES += _param_cases(["1", "SAME", "full"], ValueError, {op: ["padding"] for op in CONV_OPS})


@pytest.mark.parametrize("case", PARAM_TYPE_CASES, ids=str)
def test_parameters_must_be_ints(case):
    check(case)


PAIR_LENGTH_CASES = _param_cases([(1,), (1, 1, 1), ()], ValueError, PARAM_OPS)


@pytest.mark.parametrize("case", PAIR_LENGTH_CASES, ids=str)
def test_parameter_pairs_must_have_two_entries(case):
    check(case)


# ------------------------------------------------------------------------- dtypes
BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex128, np.complex64, object, np.float16]
FLOAT_ARGS = {
    "conv2d": ["x", "w", "b"],
    "conv2d_backward": ["dy", "x", "w"],
    "conv2d_backward_input": ["dy", "w"],
    "conv2d_backward_weight": ["dy", "x"],
    "max_pool2d": ["x"],
    "max_pool2d_backward": ["dy"],
}
DTYPE_CASES = [
    Bad(op, {arg: BASE[op][arg].astype(dt)}, TypeError, (name(arg),), f"{arg}-{np.dtype(dt).name}")
    for op, args in FLOAT_ARGS.items()
    for arg in args
    for dt in BAD_DTYPES
]


@pytest.mark.parametrize("case", DTYPE_CASES, ids=str)
def test_unsupported_dtypes(case):
    check(case)


def _mixed(op, arg, dtype=np.float32):
    others = [a for a in FLOAT_ARGS[op] if a != arg]
    needles = (name(arg), "float32", "float64")
    return Bad(op, {arg: BASE[op][arg].astype(dtype)}, TypeError, needles, f"{arg}-{np.dtype(dtype).name}-vs-{'+'.join(others)}")


MIXED_DTYPE_CASES = [_mixed(op, arg) for op in CONV_OPS for arg in FLOAT_ARGS[op]] + [
    Bad("conv2d", {"x": X.astype(np.float32), "w": WT.astype(np.float32)}, TypeError,
        (name("b"), "float32", "float64"), "b-float64-vs-x+w-float32"),
]  # fmt: skip


@pytest.mark.parametrize("case", MIXED_DTYPE_CASES, ids=str)
def test_mismatched_dtypes(case):
    check(case)


# ------------------------------------------------------------------------- dy, b, input_shape, weight_shape
WRONG_DY = [(2, 5, 6, 5), (2, 5, 5, 6), (2, 4, 6, 6), (3, 5, 6, 6), (2, 5, 7, 7)]
DY_SHAPE_CASES = [bad_array(op, "dy", np.ones(s)) for op in CONV_OPS[1:] for s in WRONG_DY] + [
    bad_array("conv2d", "b", np.zeros(4)),
    bad_array("conv2d", "b", np.zeros(6)),
]


@pytest.mark.parametrize("case", DY_SHAPE_CASES, ids=str)
def test_dy_or_bias_of_the_wrong_shape(case):
    check(case)


def _shape_arg(op, arg, value, error=ValueError, needles=None):
    return Bad(op, {arg: value}, error, needles or (name(arg) + "|" + name("dy"),), f"{arg}={value!r}".replace(" ", ""))


SHAPE_ARG_CASES = [
    _shape_arg("conv2d_backward_input", "input_shape", (2, 4, 9, 8)),  # would give Ho = 7
    _shape_arg("conv2d_backward_input", "input_shape", (2, 4, 8, 12)),
    _shape_arg("conv2d_backward_input", "input_shape", (3, 4, 8, 8)),
    _shape_arg("conv2d_backward_input", "input_shape", (2, 4, -8, 8), needles=(name("input_shape"),)),
    _shape_arg("conv2d_backward_input", "input_shape", (2, 4, 8.0, 8), (TypeError, ValueError), (name("input_shape"),)),
    _shape_arg("conv2d_backward_input", "input_shape", 8, (TypeError, ValueError), (name("input_shape"),)),
    _shape_arg("conv2d_backward_input", "input_shape", None, (TypeError, ValueError), (name("input_shape"),)),
    _shape_arg("conv2d_backward_weight", "weight_shape", (6, 4, 3, 3)),
    _shape_arg("conv2d_backward_weight", "weight_shape", (5, 4, 5, 3)),
    _shape_arg("conv2d_backward_weight", "weight_shape", (5, 4, 3, 1)),
    _shape_arg("conv2d_backward_weight", "weight_shape", (5, 4, 3, "3"), (TypeError, ValueError), (name("weight_shape"),)),
    _shape_arg("max_pool2d_backward", "input_shape", (3, 4, 8, 8)),
    _shape_arg("max_pool2d_backward", "input_shape", (2, 4, 3, 3), needles=(name("input_shape") + "|" + name("indices"),)),
    _shape_arg("max_pool2d_backward", "input_shape", (2, 4, -8, 8), needles=(name("input_shape"),)),
]  # fmt: skip


@pytest.mark.parametrize("case", SHAPE_ARG_CASES, ids=str)
def test_input_or_weight_shape_inconsistent(case):
    check(case)


# ------------------------------------------------------------------------- indices
def _indices(value, error, label, needles=()):
    return Bad("max_pool2d_backward", {"indices": value}, error, (name("indices"), *needles), label)


def _with(index_value, where=(1, 2, 3, 0)):
    idx = PIDX.copy()
    idx[where] = index_value
    return idx


def _with_unsigned(index_value, where=(1, 2, 3, 0)):
    idx = PIDX.astype(np.uint64)
    idx[where] = index_value
    return idx


INDICES_CASES = [
    _indices(PIDX.astype(np.float64), TypeError, "float64"),
    _indices(PIDX.astype(np.float32), TypeError, "float32"),
    _indices(PIDX.astype(np.bool_), TypeError, "bool"),
    _indices(PIDX.astype(np.complex128), TypeError, "complex128"),
    _indices(PIDX.astype(object), TypeError, "object"),
    _indices(PIDX.tolist(), TypeError, "list"),
    _indices(PIDX[..., :3], ValueError, "shape(2,4,4,3)", (shape_of((2, 4, 4, 3)),)),
    _indices(PIDX[:1], ValueError, "shape(1,4,4,4)", (shape_of((1, 4, 4, 4)),)),
    _indices(_with(-1), ValueError, "-1"),
    _indices(_with(64), ValueError, "H*W", ("64",)),
    _indices(_with(2**40), ValueError, "2**40"),
    _indices(_with(-(2**62)), ValueError, "-2**62"),
    _indices(_with_unsigned(np.iinfo(np.uint64).max), ValueError, "uint64-max"),
]


@pytest.mark.parametrize("case", INDICES_CASES, ids=str)
def test_bad_indices(case):
    check(case)


# ------------------------------------------------------------------------- not an ndarray
NOT_ARRAY_CASES = [
    Bad(op, {arg: value}, TypeError, (name(arg),), f"{arg}-{label}")
    for op, args in FLOAT_ARGS.items()
    for arg in args
    for label, value in [("list", BASE[op][arg].tolist()), ("float", 1.0), ("None", None)]
    if not (op == "conv2d" and arg == "b" and value is None)  # b=None is valid
]


@pytest.mark.parametrize("case", NOT_ARRAY_CASES, ids=str)
def test_inputs_must_be_ndarrays(case):
    check(case)


# ------------------------------------------------------------------------- empty axes
def _empty(op, label, x_shape=(2, 4, 8, 8), w_shape=(5, 4, 3, 3), padding=1):
    changes = _conv_arguments(op, x_shape, w_shape, (8, 8), padding)
    zero_shape = x_shape if 0 in x_shape else w_shape
    return Bad(op, changes, ValueError, (shape_of(zero_shape),), label)


EMPTY_AXIS_CASES = [
    *(_empty(op, "C0", (2, 0, 8, 8), (5, 0, 3, 3)) for op in CONV_OPS),
    *(_empty(op, "H0", (2, 4, 0, 8)) for op in CONV_OPS),
    *(_empty(op, "W0", (2, 4, 8, 0)) for op in CONV_OPS),
    *(_empty(op, "F0", w_shape=(0, 4, 3, 3)) for op in CONV_OPS),
    *(_empty(op, "KH0", w_shape=(5, 4, 0, 3)) for op in CONV_OPS),
    *(_empty(op, "KW0", w_shape=(5, 4, 3, 0)) for op in CONV_OPS),
    Bad("max_pool2d", {"x": np.ones((2, 0, 8, 8))}, ValueError, (name("x"), shape_of((2, 0, 8, 8))), "C0"),
    Bad("max_pool2d", {"x": np.ones((2, 4, 0, 8)), "kernel_size": 1}, ValueError, (name("x"), shape_of((2, 4, 0, 8))), "H0"),
    Bad("max_pool2d", {"x": np.ones((2, 4, 8, 0)), "kernel_size": 1}, ValueError, (name("x"), shape_of((2, 4, 8, 0))), "W0"),
    Bad("max_pool2d_backward", {"dy": np.ones((2, 0, 4, 4)), "indices": np.zeros((2, 0, 4, 4), np.int64),
        "input_shape": (2, 0, 8, 8)}, ValueError, (shape_of((2, 0, 8, 8)),), "C0"),
    Bad("max_pool2d_backward", {"input_shape": (2, 4, 0, 8)}, ValueError, (name("input_shape") + "|" + name("indices"),), "H0"),
]  # fmt: skip


@pytest.mark.parametrize("case", EMPTY_AXIS_CASES, ids=str)
def test_empty_channel_spatial_filter_or_kernel_axes(case):
    check(case)


# ------------------------------------------------------------------------- valid edge cases
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride, padding", [(1, 0), ((2, 1), (1, 2))], ids=["s1p0", "s(2,1)p(1,2)"])
def test_empty_batch_gives_empty_results_of_the_right_shape(stride, padding, dtype):
    x, w, b = np.ones((0, 4, 9, 8), dtype), np.ones((5, 4, 3, 2), dtype), np.ones(5, dtype)
    (sh, sw), (ph, pw) = np.broadcast_to(stride, 2), np.broadcast_to(padding, 2)
    Ho, Wo = (9 + 2 * ph - 3) // sh + 1, (8 + 2 * pw - 2) // sw + 1

    def expect(a, shape, zeros=False):
        assert isinstance(a, np.ndarray) and a.shape == shape and a.dtype == dtype
        if zeros:
            assert np.all(a == 0)

    y = fc.conv2d(x, w, b, stride=stride, padding=padding)
    expect(y, (0, 5, Ho, Wo))
    dy = np.ones((0, 5, Ho, Wo), dtype)
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=stride, padding=padding)
    expect(dx, x.shape)
    expect(dw, w.shape, zeros=True)  # a sum over an empty batch
    expect(db, (5,), zeros=True)
    expect(fc.conv2d_backward_input(dy, w, x.shape, stride=stride, padding=padding), x.shape)
    expect(fc.conv2d_backward_weight(dy, x, w.shape, stride=stride, padding=padding), w.shape, zeros=True)

    yp, idx = fc.max_pool2d(x, 3, stride=stride, padding=1)
    expect(yp, (0, 4, (9 + 2 - 3) // sh + 1, (8 + 2 - 3) // sw + 1))
    assert idx.shape == yp.shape and idx.dtype == np.int64
    expect(fc.max_pool2d_backward(yp, idx, x.shape), x.shape)


@pytest.mark.parametrize(
    "stride, padding",
    [
        (np.int64(2), np.int32(1)),
        ((np.int64(2), 2), (np.uint8(1), 1)),
        ((2, np.int16(2)), (1, np.int64(1))),
    ],
    ids=["numpy-scalars", "pair-with-numpy-h", "pair-with-numpy-w"],
)
def test_numpy_integer_parameters_are_accepted(stride, padding):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y = fc.conv2d(x, w, b, stride=stride, padding=padding)
    np.testing.assert_array_equal(y, fc.conv2d(x, w, b, stride=2, padding=1))
    dy = rng.standard_normal(y.shape)
    for got, want in zip(fc.conv2d_backward(dy, x, w, stride, padding), fc.conv2d_backward(dy, x, w, 2, 1)):
        np.testing.assert_array_equal(got, want)
    yp, idx = fc.max_pool2d(x, np.int64(3), stride=stride, padding=padding)
    yp2, idx2 = fc.max_pool2d(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(yp, yp2)
    np.testing.assert_array_equal(idx, idx2)
