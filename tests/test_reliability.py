"""Bad input and memory aliasing for the layers (fastconv.nn) and the cs231n drop-in (fastconv.compat).

The functional API's bad-input matrix is in ``test_errors.py``; this file adds the same
categories one level up, one parametrized row per case, so that a failing row is named:

- every layer rejects non-float dtypes (float16, integers, bool, complex, object), inputs
  of the wrong number of dimensions or channels, non-arrays, and ``dout`` of the wrong
  shape/dtype with a ``TypeError``/``ValueError`` that names the layer, the argument and
  the offending shape or dtype;
- constructors reject bool/float/str parameters, non-positive sizes, negative padding and
  pool padding over half the window;
- an empty batch (N = 0) is a valid input for every layer and gives empty results and zero
  parameter gradients; the cs231n functions follow their documented dtype rule;
- inputs that share memory with each other (``x`` and ``w`` views of one buffer, ``dy``
  that *is* ``x``) give the results of independent copies and are never modified.

The rows complement ``test_nn.py``/``test_compat.py``: their dtype and input rows are left out
here, and a few constructor rows overlap so that every parameter is covered in full.
"""

import re
from typing import Any, NamedTuple

import numpy as np
import pytest

import fastconv.functional as fc
from fastconv import compat, nn

F32, F64 = np.float32, np.float64
BAD_DTYPES = [np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]


def _dtype_name(dt):
    return np.dtype(dt).name


def _message_pattern(*needles):
    """A regex that matches when every needle (a regex) occurs somewhere in the message."""
    return "(?s)" + "".join(f"(?=.*(?:{n}))" for n in needles)


def _shape(s):
    return re.escape(str(tuple(s)))


# ---------------------------------------------------------------------------------------
# Layers: bad input to forward
# ---------------------------------------------------------------------------------------


def _conv(dtype=F32):
    return nn.Conv2d(3, 4, 3, padding=1, dtype=dtype, rng=0)


def _linear(dtype=F32):
    return nn.Linear(5, 2, dtype=dtype, rng=0)


def _dropout():
    return nn.Dropout(0.5, rng=0)


class LayerInput(NamedTuple):
    label: str
    make: Any  # () -> layer
    x: Any  # the (bad) input
    error: type
    needles: tuple  # regexes that must all occur in the message

    def __str__(self):
        return self.label


# Layer name -> (factory, a valid input shape).
LAYERS = {
    "Conv2d": (_conv, (2, 3, 5, 5)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 3, 5, 5)),
    "Linear": (_linear, (2, 5)),
    "ReLU": (nn.ReLU, (2, 3, 5, 5)),
    "Flatten": (nn.Flatten, (2, 3, 5, 5)),
    "Dropout": (_dropout, (2, 3, 5, 5)),
}
# Already in test_nn.py::test_forward_rejects_bad_input.
_EXISTING_DTYPE_ROWS = {("Conv2d", "int64"), ("MaxPool2d", "float16"), ("ReLU", "int32")}

DTYPE_ROWS = [
    LayerInput(f"{layer}-{_dtype_name(dt)}", make, np.zeros(shape, dt), TypeError,
               (rf"\b{layer}\b", r"\binput\b", _dtype_name(dt), _shape(shape)))
    for layer, (make, shape) in LAYERS.items()
    for dt in BAD_DTYPES
    if (layer, _dtype_name(dt)) not in _EXISTING_DTYPE_ROWS
]  # fmt: skip

SHAPE_ROWS = [
    LayerInput("Conv2d-5d", _conv, np.zeros((1, 2, 3, 5, 5), F32), ValueError, ("Conv2d", "4-D", _shape((1, 2, 3, 5, 5)))),
    LayerInput("Conv2d-2d", _conv, np.zeros((3, 5), F32), ValueError, ("Conv2d", "4-D", _shape((3, 5)))),
    LayerInput("Conv2d-0d", _conv, np.zeros((), F32), ValueError, ("Conv2d", "4-D", _shape(()))),
    LayerInput("Conv2d-more-channels", _conv, np.zeros((2, 4, 5, 5), F32), ValueError,
               ("Conv2d", "3 channels", _shape((2, 4, 5, 5)))),
    LayerInput("Conv2d-C0", _conv, np.zeros((2, 0, 5, 5), F32), ValueError, ("Conv2d", "3 channels", _shape((2, 0, 5, 5)))),
    LayerInput("Conv2d-H0", lambda: nn.Conv2d(3, 4, 1, rng=0), np.zeros((2, 3, 0, 5), F32), ValueError,
               ("conv2d|Conv2d", r"H == 0", _shape((2, 3, 0, 5)))),
    LayerInput("Conv2d-kernel-over-padded-input", lambda: nn.Conv2d(3, 4, (2, 5), padding=(0, 1), rng=0),
               np.zeros((1, 3, 4, 2), F32), ValueError, ("conv2d|Conv2d", "larger than", _shape((1, 3, 4, 2)))),
    LayerInput("MaxPool2d-5d", lambda: nn.MaxPool2d(2), np.zeros((1, 2, 3, 4, 4), F32), ValueError,
               ("MaxPool2d", "4-D", _shape((1, 2, 3, 4, 4)))),
    LayerInput("MaxPool2d-2d", lambda: nn.MaxPool2d(2), np.zeros((4, 4), F32), ValueError, ("MaxPool2d", "4-D", _shape((4, 4)))),
    LayerInput("MaxPool2d-C0", lambda: nn.MaxPool2d(2), np.zeros((2, 0, 4, 4), F32), ValueError,
               ("max_pool2d|MaxPool2d", "C == 0", _shape((2, 0, 4, 4)))),
    LayerInput("MaxPool2d-W0", lambda: nn.MaxPool2d(1), np.zeros((2, 3, 4, 0), F32), ValueError,
               ("max_pool2d|MaxPool2d", "W == 0", _shape((2, 3, 4, 0)))),
    LayerInput("MaxPool2d-kernel-over-padded-input", lambda: nn.MaxPool2d(5, padding=1), np.zeros((1, 1, 3, 2), F32),
               ValueError, ("max_pool2d|MaxPool2d", "kernel_size", _shape((1, 1, 3, 2)))),
    LayerInput("Linear-0d", _linear, np.zeros((), F32), ValueError, ("Linear", "in_features=5", _shape(()))),
    LayerInput("Linear-features-0", _linear, np.zeros((3, 0), F32), ValueError, ("Linear", "in_features=5", _shape((3, 0)))),
    LayerInput("Linear-f64-into-f32", _linear, np.zeros((3, 5), F64), TypeError, ("Linear", r"\binput\b", "float64", "float32")),
    LayerInput("Conv2d-f32-into-f64", lambda: _conv(F64), np.zeros((2, 3, 5, 5), F32), TypeError,
               ("Conv2d", r"\binput\b", "float32", "float64")),
    LayerInput("Flatten-1d", nn.Flatten, np.zeros(3, F32), ValueError, ("Flatten", "start_dim", _shape((3,)))),
    LayerInput("Flatten-0d", nn.Flatten, np.zeros((), F32), ValueError, ("Flatten", "start_dim", _shape(()))),
    LayerInput("Flatten-end-before-start", lambda: nn.Flatten(2, 1), np.zeros((2, 3, 4), F32), ValueError,
               ("Flatten", "end_dim", _shape((2, 3, 4)))),
]  # fmt: skip

NOT_ARRAY_ROWS = [
    LayerInput(f"{layer}-{label}", make, value, TypeError, (rf"\b{layer}\b", r"\binput\b", "ndarray"))
    for layer, (make, shape) in LAYERS.items()
    for label, value in [("list", np.zeros(shape).tolist()), ("float", 1.0), ("None", None)]
    if (layer, label) != ("Conv2d", "list")  # in test_nn.py
]


@pytest.mark.parametrize("row", DTYPE_ROWS + SHAPE_ROWS + NOT_ARRAY_ROWS, ids=str)
def test_layer_forward_rejects_bad_input(row):
    layer = row.make()
    before = None if not isinstance(row.x, np.ndarray) else row.x.copy()
    with pytest.raises(row.error, match=_message_pattern(*row.needles)):
        layer(row.x)
    if before is not None:
        np.testing.assert_array_equal(row.x, before)


# ---------------------------------------------------------------------------------------
# Layers: bad dout to backward
# ---------------------------------------------------------------------------------------


class LayerDout(NamedTuple):
    label: str
    make: Any
    x_shape: tuple
    dout: Any  # function of the forward output -> bad dout
    error: type

    def __str__(self):
        return self.label


def _f64(y):
    return y.astype(F64)


def _int(y):
    return y.astype(np.int32)


def _extra_row(y):
    return np.zeros((y.shape[0] + 1,) + y.shape[1:], y.dtype)


def _as_list(y):
    return y.tolist()


DOUT_ROWS = [
    LayerDout("MaxPool2d-f64", lambda: nn.MaxPool2d(2), (1, 2, 4, 4), _f64, TypeError),
    LayerDout("MaxPool2d-int", lambda: nn.MaxPool2d(2), (1, 2, 4, 4), _int, TypeError),
    LayerDout("MaxPool2d-list", lambda: nn.MaxPool2d(2), (1, 2, 4, 4), _as_list, TypeError),
    LayerDout("Conv2d-int", _conv, (1, 3, 4, 4), _int, TypeError),
    LayerDout("Conv2d-list", _conv, (1, 3, 4, 4), _as_list, TypeError),
    LayerDout("Conv2d-extra-sample", _conv, (1, 3, 4, 4), _extra_row, ValueError),
    LayerDout("Linear-f64", _linear, (3, 5), _f64, TypeError),
    LayerDout("Linear-transposed", _linear, (3, 5), lambda y: np.ascontiguousarray(y.T), ValueError),
    LayerDout("ReLU-f64", nn.ReLU, (2, 3), _f64, TypeError),
    LayerDout("Flatten-f64", nn.Flatten, (2, 3, 2), _f64, TypeError),
    LayerDout("Flatten-list", nn.Flatten, (2, 3, 2), _as_list, TypeError),
    LayerDout("Dropout-shape", _dropout, (2, 3), _extra_row, ValueError),
    LayerDout("Dropout-f64", _dropout, (2, 3), _f64, TypeError),
    LayerDout("Dropout-eval-shape", lambda: _dropout().eval(), (2, 3), _extra_row, ValueError),
    LayerDout("Sequential-shape", lambda: nn.Sequential(nn.ReLU(), nn.Flatten()), (2, 3, 2), _extra_row, ValueError),
]


@pytest.mark.parametrize("row", DOUT_ROWS, ids=str)
def test_layer_backward_rejects_bad_dout(row):
    layer = row.make()
    y = layer(np.ones(row.x_shape, F32))
    dout = row.dout(y)
    if isinstance(dout, np.ndarray) and dout.dtype != y.dtype:  # names both dtypes
        needles = (r"\bdout\b", y.dtype.name, dout.dtype.name)
    elif isinstance(dout, np.ndarray):  # names both shapes
        needles = (r"\bdout\b", _shape(y.shape), _shape(dout.shape))
    else:
        needles = (r"\bdout\b", "ndarray", _shape(y.shape))
    with pytest.raises(row.error, match=_message_pattern(*needles)):
        layer.backward(dout)
    assert all(not p.grad.any() for p in layer.parameters())  # nothing was accumulated


@pytest.mark.parametrize(
    "dout, error",
    [(np.ones(1), TypeError), (np.float64(np.nan), None), (1j, TypeError), ("1", TypeError), (True, TypeError),
     (None, TypeError), (np.array(2.0), None)],
    ids=["array-1", "nan-scalar", "complex", "str", "bool", "None", "0d-array"],
)
def test_cross_entropy_backward_dout(dout, error):
    loss_fn = nn.CrossEntropyLoss()
    logits = np.arange(6, dtype=F32).reshape(2, 3)
    loss_fn(logits, np.array([0, 2]))
    if error is not None:
        with pytest.raises(error, match=_message_pattern("CrossEntropyLoss", r"\bdout\b")):
            loss_fn.backward(dout)
        return
    grad = loss_fn.backward(dout)
    unit = loss_fn.backward(1.0)
    assert grad.dtype == F32 and grad.shape == (2, 3)
    np.testing.assert_array_equal(grad, (unit.astype(F64) * float(dout)).astype(F32))


@pytest.mark.parametrize(
    "logits, target, error, needles",
    [
        (np.zeros((2, 3, 1), F32), np.array([0, 1]), ValueError, ("target", _shape((2, 1)), _shape((2, 3, 1)))),
        (np.zeros((2, 3), F32), np.array([0, 1], dtype=object), TypeError, ("target", "object")),
        (np.zeros((2, 3), F32), np.array([0, 2**63], dtype=np.uint64), ValueError, ("target", r"\[0, 3\)")),
        (np.zeros((2, 0), F32), np.array([0, 0]), ValueError, ("one class", _shape((2, 0)))),
        (np.zeros((2, 3), np.float16), np.array([0, 1]), TypeError, ("input", "float16")),
        (np.zeros((2, 3), np.complex64), np.array([0, 1]), TypeError, ("input", "complex64")),
        (np.zeros((2, 3), np.bool_), np.array([0, 1]), TypeError, ("input", "bool")),
    ],
    ids=["3d-logits", "object-labels", "uint64-huge-label", "no-classes", "f16-logits", "complex-logits",
         "bool-logits"],
)
def test_cross_entropy_rejects_bad_input(logits, target, error, needles):
    with pytest.raises(error, match=_message_pattern("CrossEntropyLoss", *needles)):
        nn.CrossEntropyLoss()(logits, target)


# ---------------------------------------------------------------------------------------
# Layers: constructor parameters
# ---------------------------------------------------------------------------------------


def _ctor_rows():
    rows = []
    for value, error in [(True, TypeError), (np.bool_(True), TypeError), (2.0, TypeError), ("3", TypeError),
                         (None, TypeError), ((3, 2.0), TypeError), ((3, True), TypeError), (0, ValueError),
                         (-2, ValueError), ((3,), ValueError), ((3, 3, 3), ValueError)]:
        rows.append((f"Conv2d-kernel_size={value!r}", lambda v=value: nn.Conv2d(1, 2, v), error, "kernel_size"))
        rows.append((f"MaxPool2d-kernel_size={value!r}", lambda v=value: nn.MaxPool2d(v), error, "kernel_size"))
    for value, error in [(True, TypeError), (1.0, TypeError), ("1", TypeError), (0, ValueError), (-1, ValueError),
                         ((1, 0), ValueError), ((1, 1, 1), ValueError)]:
        rows.append((f"Conv2d-stride={value!r}", lambda v=value: nn.Conv2d(1, 2, 3, stride=v), error, "stride"))
        rows.append((f"MaxPool2d-stride={value!r}", lambda v=value: nn.MaxPool2d(2, stride=v), error, "stride"))
    for value, error in [(True, TypeError), (1.0, TypeError), (None, TypeError), (-1, ValueError),
                         ((0, -1), ValueError), ((1,), ValueError)]:
        rows.append((f"Conv2d-padding={value!r}", lambda v=value: nn.Conv2d(1, 2, 3, padding=v), error, "padding"))
        rows.append((f"MaxPool2d-padding={value!r}", lambda v=value: nn.MaxPool2d(2, padding=v), error, "padding"))
    # Pool padding over half the window (PyTorch's rule: every window holds a real element).
    for kernel, padding in [(3, 2), (1, 1), ((3, 2), (1, 2)), ((2, 4), (2, 0)), (4, 3)]:
        rows.append((f"MaxPool2d-k{kernel}-p{padding}", lambda k=kernel, p=padding: nn.MaxPool2d(k, padding=p),
                     ValueError, "half the kernel_size"))
    for name, make in [("in_channels", lambda v: nn.Conv2d(v, 2, 3)), ("out_channels", lambda v: nn.Conv2d(2, v, 3)),
                       ("in_features", lambda v: nn.Linear(v, 2)), ("out_features", lambda v: nn.Linear(2, v))]:
        for value, error in [(True, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError),
                             (-1, ValueError), (0, ValueError)]:
            rows.append((f"{name}={value!r}", lambda m=make, v=value: m(v), error, name))
    for value in [1, 0, "yes", None, 1.0]:
        rows.append((f"Linear-bias={value!r}", lambda v=value: nn.Linear(2, 2, bias=v), TypeError, "bias"))
    for value in [np.int32, np.float16, np.complex128, "int", "junk", [np.float32]]:
        rows.append((f"Linear-dtype={value!r}", lambda v=value: nn.Linear(2, 2, dtype=v), TypeError, "dtype"))
    for value in [1.5, "0", True, [0]]:
        rows.append((f"Conv2d-rng={value!r}", lambda v=value: nn.Conv2d(1, 1, 1, rng=v), TypeError, "rng"))
    for value, error in [(float("nan"), ValueError), (None, TypeError), (-0.0001, ValueError), (1 + 0j, TypeError)]:
        rows.append((f"Dropout-p={value!r}", lambda v=value: nn.Dropout(v), error, r"\bp\b"))
    for value in [1.0, True, "1", None]:
        rows.append((f"Flatten-start_dim={value!r}", lambda v=value: nn.Flatten(v), TypeError, "start_dim"))
        rows.append((f"Flatten-end_dim={value!r}", lambda v=value: nn.Flatten(1, v), TypeError, "end_dim"))
    for value in [None, "Mean", "avg"]:
        rows.append((f"CrossEntropyLoss-reduction={value!r}", lambda v=value: nn.CrossEntropyLoss(reduction=v),
                     ValueError, "reduction"))
    return [pytest.param(make, error, needle, id=label.replace(" ", "")) for label, make, error, needle in rows]


@pytest.mark.parametrize("make, error, needle", _ctor_rows())
def test_layer_constructor_rejects_bad_parameters(make, error, needle):
    with pytest.raises(error, match=needle):
        make()


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Linear(2, 2, dtype=None), lambda: nn.Conv2d(1, 1, 1, dtype=None), lambda: nn.Linear(2, 2).to(None)],
    ids=["Linear", "Conv2d", "Module.to"],
)
def test_dtype_none_is_not_silently_float64(make):
    try:
        layer = make()
    except TypeError:
        return  # rejecting None is fine too
    assert layer.weight.dtype == F32


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Conv2d(np.int64(2), np.uint8(3), np.int32(3), stride=np.int64(1), padding=np.int16(1)),
     lambda: nn.MaxPool2d(np.int64(3), stride=np.int32(2), padding=np.int8(1)),
     lambda: nn.Linear(np.int64(4), np.int32(2), bias=np.bool_(False)),
     lambda: nn.Dropout(np.float32(0.25)),
     lambda: nn.Conv2d(2, 3, [3, 3], padding=[1, 1], dtype="float64")],
    ids=["conv-numpy-ints", "pool-numpy-ints", "linear-numpy-ints", "dropout-float32-p", "conv-list-pairs-dtype-str"],
)
def test_layer_constructor_accepts_numpy_scalars_and_lists(make):
    layer = make()
    assert isinstance(layer, nn.Module)
    repr(layer)


# ---------------------------------------------------------------------------------------
# Layers: empty batches are valid
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "make, x_shape, y_shape",
    [
        (lambda dt: nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=dt, rng=0), (0, 3, 7, 6), (0, 4, 4, 3)),
        (lambda dt: nn.MaxPool2d(3, stride=2, padding=1), (0, 3, 7, 6), (0, 3, 4, 3)),
        (lambda dt: nn.Linear(5, 2, dtype=dt, rng=0), (0, 5), (0, 2)),
        (lambda dt: nn.Linear(5, 2, dtype=dt, rng=0), (0, 4, 5), (0, 4, 2)),
        (lambda dt: nn.ReLU(), (0, 3, 2, 2), (0, 3, 2, 2)),
        (lambda dt: nn.Flatten(), (0, 3, 2, 2), (0, 12)),
        (lambda dt: nn.Dropout(0.5, rng=0), (0, 3), (0, 3)),
    ],
    ids=["Conv2d", "MaxPool2d", "Linear", "Linear-3d", "ReLU", "Flatten", "Dropout"],
)
def test_layer_empty_batch(make, x_shape, y_shape, dtype):
    layer = make(dtype)
    y = layer(np.zeros(x_shape, dtype))
    assert y.shape == y_shape and y.dtype == dtype
    dx = layer.backward(np.zeros(y_shape, dtype))
    assert dx.shape == x_shape and dx.dtype == dtype
    for p in layer.parameters():  # a sum over no samples
        assert p.grad.dtype == dtype and not p.grad.any()


def test_model_on_an_empty_batch():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    before = model.state_dict()
    logits = model(np.zeros((0, 1, 4, 4), F32))
    assert logits.shape == (0, 3) and logits.dtype == F32
    dx = model.backward(np.zeros((0, 3), F32))
    assert dx.shape == (0, 1, 4, 4)
    assert all(not p.grad.any() for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# ---------------------------------------------------------------------------------------
# Layers: any memory layout, inputs untouched, documented aliasing only
# ---------------------------------------------------------------------------------------


def _arranged(a, kind):
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative-strides":
        return a[(slice(None, None, -1),) * a.ndim].copy()[(slice(None, None, -1),) * a.ndim]
    if kind == "strided":
        base = np.full(tuple(2 * n for n in a.shape), np.nan, a.dtype)
        view = base[(slice(None, None, 2),) * a.ndim]
        view[...] = a
        return view
    if kind == "readonly":
        out = a.copy()
        out.flags.writeable = False
        return out
    raise AssertionError(kind)


LAYOUT_LAYERS = {
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=(2, 1), padding=1, dtype=F64, rng=0), (2, 3, 7, 6)),
    "MaxPool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 6)),
    "Linear": (lambda: nn.Linear(6, 4, dtype=F64, rng=0), (3, 5, 6)),
    "ReLU": (nn.ReLU, (2, 3, 4)),
    "Flatten": (nn.Flatten, (2, 3, 4, 5)),
}


@pytest.mark.parametrize("kind", ["fortran", "negative-strides", "strided", "readonly"])
@pytest.mark.parametrize("name", list(LAYOUT_LAYERS))
def test_layer_any_memory_layout(name, kind, rng):
    make, shape = LAYOUT_LAYERS[name]
    x = rng.standard_normal(shape)
    layer = make()
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = [p.grad.copy() for p in layer.parameters()]

    other = make()
    xa, dya = _arranged(x, kind), _arranged(dy, kind)
    ya = other(xa)
    dxa = other.backward(dya)
    np.testing.assert_allclose(ya, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dxa, dx, rtol=1e-13, atol=1e-13)
    for p, g in zip(other.parameters(), grads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(xa, x)  # inputs untouched
    np.testing.assert_array_equal(dya, dy)


@pytest.mark.parametrize("name", ["Conv2d", "MaxPool2d", "Linear", "ReLU"])
def test_layer_outputs_do_not_alias_inputs(name, rng):
    make, shape = LAYOUT_LAYERS[name]
    layer = make()
    x = rng.standard_normal(shape)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    for out in (y, dx):
        assert not np.shares_memory(out, x) and not np.shares_memory(out, dy)
        assert not any(np.shares_memory(out, p.data) for p in layer.parameters())


def test_flatten_and_eval_dropout_return_views_as_documented(rng):
    """The two documented exceptions (as in PyTorch): Flatten reshapes, Dropout in eval is the identity."""
    x = rng.standard_normal((2, 3, 4))
    assert np.shares_memory(nn.Flatten()(x), x)
    assert nn.Dropout(0.5).eval()(x) is x


# ---------------------------------------------------------------------------------------
# Functional API: operands that share memory with each other
# ---------------------------------------------------------------------------------------


def _views_of_one_buffer(rng, dtype, x_shape, w_shape, offset_w, offset_b, F):
    """x, w and b as (overlapping) views of a single buffer; returns (buffer, x, w, b)."""
    nx, nw = int(np.prod(x_shape)), int(np.prod(w_shape))
    buf = rng.standard_normal(max(nx, offset_w + nw, offset_b + F) + 1000).astype(dtype)  # room for dy too
    x = buf[:nx].reshape(x_shape)
    w = buf[offset_w:offset_w + nw].reshape(w_shape)
    b = buf[offset_b:offset_b + F]
    return buf, x, w, b


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "x_shape, w_shape, stride, padding, offset_w, offset_b",
    [
        ((2, 3, 6, 7), (4, 3, 3, 3), 1, 1, 100, 50),  # w overlaps the middle of x, b inside both
        ((2, 4, 5, 5), (4, 4, 3, 3), (2, 1), (1, 0), 1, 1),  # w is x shifted by one element (misaligned rows)
        ((1, 8, 6, 6), (8, 8, 3, 3), 1, 1, 0, 0),  # w starts exactly where x starts
    ],
    ids=["overlap-middle", "shifted-by-one", "same-start"],
)
def test_operands_sharing_one_buffer(x_shape, w_shape, stride, padding, offset_w, offset_b, dtype, rng):
    buf, x, w, b = _views_of_one_buffer(rng, dtype, x_shape, w_shape, offset_w, offset_b, w_shape[0])
    assert np.shares_memory(x, w)
    snapshot = buf.copy()
    xc, wc, bc = x.copy(), w.copy(), b.copy()

    y = fc.conv2d(x, w, b, stride=stride, padding=padding)
    assert y.tobytes() == fc.conv2d(xc, wc, bc, stride=stride, padding=padding).tobytes()
    # dy is another view of the same buffer.
    dy = buf[7:7 + y.size].reshape(y.shape)
    dyc = dy.copy()
    got = fc.conv2d_backward(dy, x, w, stride=stride, padding=padding)
    want = fc.conv2d_backward(dyc, xc, wc, stride=stride, padding=padding)
    for g, e in zip(got, want):
        assert g.tobytes() == e.tobytes()
    assert fc.conv2d_backward_input(dy, w, x.shape, stride, padding).tobytes() == want[0].tobytes()
    assert fc.conv2d_backward_weight(dy, x, w.shape, stride, padding).tobytes() == want[1].tobytes()
    np.testing.assert_array_equal(buf, snapshot)  # nothing written through any view


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_dy_that_is_x(dtype, rng):
    """A same-size convolution (C == F, k3, p1): pass x itself as dy (and as both operands of the weight gradient)."""
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 4, 3, 3)).astype(dtype)
    snapshot = x.copy()
    got = fc.conv2d_backward(x, x, w, padding=1)
    want = fc.conv2d_backward(snapshot.copy(), snapshot, w, padding=1)
    for g, e in zip(got, want):
        assert g.tobytes() == e.tobytes()
    assert fc.conv2d_backward_weight(x, x, w.shape, padding=1).tobytes() == want[1].tobytes()
    assert fc.conv2d_backward_input(x, w, x.shape, padding=1).tobytes() == want[0].tobytes()
    # Max-pool with a 1x1 window keeps the shape: dy may be x too.
    y, idx = fc.max_pool2d(x, 1)
    assert fc.max_pool2d_backward(x, idx, x.shape).tobytes() == fc.max_pool2d_backward(snapshot, idx, x.shape).tobytes()
    np.testing.assert_array_equal(x, snapshot)


def test_indices_and_dy_views_of_one_buffer(rng):
    """The pool gradient reads dy and indices that live in one int64 buffer (dy as its float64 view)."""
    x = rng.standard_normal((2, 3, 6, 6))
    y, idx = fc.max_pool2d(x, 2)
    buf = np.empty(2 * y.size, np.int64)
    buf[: y.size] = idx.ravel()
    dy = buf[y.size:].view(F64).reshape(y.shape)
    dy[...] = rng.standard_normal(y.shape)
    indices = buf[: y.size].reshape(y.shape)
    snapshot = buf.copy()
    got = fc.max_pool2d_backward(dy, indices, x.shape)
    assert got.tobytes() == fc.max_pool2d_backward(dy.copy(), idx, x.shape).tobytes()
    np.testing.assert_array_equal(buf, snapshot)


# ---------------------------------------------------------------------------------------
# cs231n drop-in (fastconv.compat)
# ---------------------------------------------------------------------------------------

CONV_PARAM = {"stride": 1, "pad": 1}
POOL_PARAM = {"pool_height": 2, "pool_width": 2, "stride": 2}


def _compat_args(rng):
    return rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2)


COMPAT_BAD = [
    ("conv-x", lambda x, w, b, dt: compat.conv_forward_fast(x.astype(dt), w, b, CONV_PARAM), r"\bx\b"),
    ("conv-w", lambda x, w, b, dt: compat.conv_forward_fast(x, w.astype(dt), b, CONV_PARAM), r"\bw\b"),
    ("conv-b", lambda x, w, b, dt: compat.conv_forward_fast(x, w, b.astype(dt), CONV_PARAM), r"\bb\b"),
    ("conv-dout", lambda x, w, b, dt: compat.conv_backward_fast(
        np.ones((2, 2, 4, 4), dt), compat.conv_forward_fast(x, w, b, CONV_PARAM)[1]), r"\bdout\b"),
    ("pool-x", lambda x, w, b, dt: compat.max_pool_forward_fast(x.astype(dt), POOL_PARAM), r"\bx\b"),
    ("pool-dout", lambda x, w, b, dt: compat.max_pool_backward_fast(
        np.ones((2, 3, 2, 2), dt), compat.max_pool_forward_fast(x, POOL_PARAM)[1]), r"\bdout\b"),
    ("softmax-x", lambda x, w, b, dt: compat.softmax_loss(np.ones((2, 3), dt), np.array([0, 1])), r"\bx\b"),
    ("svm-x", lambda x, w, b, dt: compat.svm_loss(np.ones((2, 3), dt), np.array([0, 1])), r"\bx\b"),
]


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object], ids=_dtype_name)
@pytest.mark.parametrize("label, call, needle", COMPAT_BAD, ids=[r[0] for r in COMPAT_BAD])
def test_compat_rejects_complex_and_object(label, call, needle, dtype, rng):
    with pytest.raises(TypeError, match=_message_pattern(needle, "real numeric", _dtype_name(dtype))):
        call(*_compat_args(rng), dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.uint8, np.bool_], ids=_dtype_name)
def test_compat_other_real_dtypes_compute_in_float64(dtype, rng):
    """Documented: the common dtype if float32/float64, float64 otherwise (cs231n passes ints in tests)."""
    x, w, b = _compat_args(rng)
    x_odd = (np.abs(x) * 3).astype(dtype)
    x64 = x_odd.astype(F64)
    out, cache = compat.conv_forward_fast(x_odd, w, b, CONV_PARAM)
    assert out.dtype == F64
    assert out.tobytes() == fc.conv2d(x64, w, b, 1, 1).tobytes()
    dout = rng.standard_normal(out.shape)
    for got, want in zip(compat.conv_backward_fast(dout, cache), fc.conv2d_backward(dout, x64, w, 1, 1)):
        assert got.dtype == F64 and got.tobytes() == want.tobytes()
    pooled, pcache = compat.max_pool_forward_fast(x_odd, POOL_PARAM)
    y64, idx64 = fc.max_pool2d(x64, 2)
    assert pooled.dtype == F64 and pooled.tobytes() == y64.tobytes()
    np.testing.assert_array_equal(pcache[2], idx64)


COMPAT_PARAM_ROWS = [
    ({"stride": 0, "pad": 1}, None, ValueError, "stride"),
    ({"stride": -1, "pad": 1}, None, ValueError, "stride"),
    ({"stride": True, "pad": 1}, None, TypeError, "stride"),
    ({"stride": 1.0, "pad": 1}, None, TypeError, "stride"),
    ({"stride": 1, "pad": -1}, None, ValueError, "padding"),
    ({"stride": 1, "pad": 0.5}, None, TypeError, "padding"),
    ({"stride": 1, "pad": "1"}, None, ValueError, "padding"),  # a string other than 'same'/'valid'
    (None, {"pool_height": 0, "pool_width": 2, "stride": 2}, ValueError, "kernel_size"),
    (None, {"pool_height": True, "pool_width": 2, "stride": 2}, TypeError, "kernel_size"),
    (None, {"pool_height": 2, "pool_width": 2.0, "stride": 2}, TypeError, "kernel_size"),
    (None, {"pool_height": 2, "pool_width": 2, "stride": 0}, ValueError, "stride"),
    (None, {"pool_height": 5, "pool_width": 2, "stride": 1}, ValueError, "kernel_size"),
    (None, [2, 2, 2], TypeError, "pool_param"),
]


@pytest.mark.parametrize("conv_param, pool_param, error, needle", COMPAT_PARAM_ROWS,
                         ids=[f"{c or p}".replace(" ", "") for c, p, _, _ in COMPAT_PARAM_ROWS])
def test_compat_bad_parameters(conv_param, pool_param, error, needle, rng):
    x, w, b = _compat_args(rng)
    with pytest.raises(error, match=needle):
        if conv_param is not None:
            compat.conv_forward_fast(x, w, b, conv_param)
        else:
            compat.max_pool_forward_fast(x, pool_param)


def _conv_backward_with(dout):
    return lambda x, w, b: compat.conv_backward_fast(dout, compat.conv_forward_fast(x, w, b, CONV_PARAM)[1])


def _pool_backward_with(dout):
    return lambda x, w, b: compat.max_pool_backward_fast(dout, compat.max_pool_forward_fast(x, POOL_PARAM)[1])


@pytest.mark.parametrize(
    "call, needles",
    [
        (lambda x, w, b: compat.conv_forward_fast(x[0], w, b, CONV_PARAM),
         ("conv2d", r"\bx\b", "4-D", _shape((3, 4, 4)))),
        (lambda x, w, b: compat.conv_forward_fast(x, w[None], b, CONV_PARAM), ("conv2d", r"\bw\b", "4-D")),
        (lambda x, w, b: compat.max_pool_forward_fast(x[0], POOL_PARAM), ("max_pool2d", r"\bx\b", "4-D")),
        (_conv_backward_with(np.ones((2, 2, 3, 3))), ("dy", _shape((2, 2, 4, 4)), _shape((2, 2, 3, 3)))),
        # The message names indices, though dout is the array of the wrong shape.
        (_pool_backward_with(np.ones((2, 3, 3, 3))), ("indices", _shape((2, 3, 3, 3)))),
        (lambda x, w, b: compat.conv_forward_fast(x, w, b[:1], CONV_PARAM), (r"\bb\b", _shape((2,)))),
    ],
    ids=["conv-x-3d", "conv-w-5d", "pool-x-3d", "conv-dout-shape", "pool-dout-shape", "conv-b-length"],
)
def test_compat_bad_shapes(call, needles, rng):
    with pytest.raises(ValueError, match=_message_pattern(*needles)):
        call(*_compat_args(rng))


def test_compat_empty_batch(rng):
    x, w, b = _compat_args(rng)
    out, cache = compat.conv_relu_pool_forward(x[:0], w, b, CONV_PARAM, POOL_PARAM)
    assert out.shape == (0, 2, 2, 2)
    dx, dw, db = compat.conv_relu_pool_backward(out, cache)
    assert dx.shape == (0, 3, 4, 4) and not dw.any() and not db.any()
