"""Fuzz the whole public surface: every functional call and every layer, one table entry each.

(Also ``nn.manual_seed`` and the cs231n drop-in's forward convolution and pooling; the coverage test at the end
fails when a public name has no entry and no stated reason.)

For every entry of :data:`TABLE`, hypothesis draws a valid call (shapes, dtype, stride,
padding, ...) and then at most one distortion of it:

- ``valid``, ``empty batch``, a memory ``layout`` (Fortran, sliced with NaN in the gaps,
  channels-last view, negative strides, read-only) or ``non-finite`` values (NaN, +-inf):
  the call must return the reference result (:mod:`fastconv.reference`);
- a wrong ``dtype`` (int, float16, complex, bool, object), ``mixed dtypes``, a ``not an array``
  (a nested list, a scalar), a ``wrong ndim``, or a ``bad parameter`` (zero, negative, beyond
  2**60, NaN, inf, a float, a string, None, a bool, a tuple of the wrong length, an object):
  the call must raise ``TypeError``, ``ValueError`` or ``MemoryError`` naming the function;
- an ``odd parameter`` (a NumPy integer, a list pair, a huge stride or padding, a shape that
  may or may not fit): either a correct result or such an error.

In every case: no crash, no hang (``faulthandler`` aborts a call that takes minutes), no
other exception, and no input modified. A new operation is fuzzed by adding one
:class:`Entry` to the table.

Examples per entry come from the hypothesis profile: ``ci`` (the default, 40) keeps the
file well under a minute; ``HYPOTHESIS_PROFILE=fuzz`` runs 2,000 per entry.
"""

import copy
import faulthandler
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from _layouts import LAYOUTS, relayout  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv.functional as F  # noqa: E402
from fastconv import compat as C  # noqa: E402
from fastconv import nn  # noqa: E402
from fastconv import reference as R  # noqa: E402

ERRORS = (TypeError, ValueError, MemoryError)
# NaN and infinite inputs are drawn on purpose: NumPy's warnings about them are expected.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
HANG_SECONDS = 300

# --------------------------------------------------------------------------- parameter values

NAN, INF = float("nan"), float("inf")
#: Values every int parameter must refuse, whatever its range.
NOT_INTS = [1.5, 2.0, NAN, INF, "2", None, True, False, object(), b"1", 1 + 0j, np.float64(2.0)]
BAD = {
    "positive": NOT_INTS + [0, -1, -(2**63), 2**61, 2**64, (1, 2, 3), (1,), (), (0, 1), (1, -1), (1, 1.5), [1, None]],
    "nonneg": NOT_INTS + [-1, -(2**63), 2**61, 2**64, (0, 0, 0), (-1, 0), (0, 0.5)],
    "shape4": [None, 3, "abcd", 2.5, (1, 2, 3), (1, 2, 3, 4, 5), (-1, 1, 1, 1), (1.5, 1, 1, 1), (True, 1, 1, 1),
               (None, 1, 1, 1)],
    "dtype": [None, "int32", np.int64, np.float16, "complex", object, "nonsense", 3],
    "bool": [None, 1, 0, "True", 1.0],
    "probability": [-0.1, 1.5, NAN, INF, -INF, "0.5", None, True, [0.5]],
    "reduction": ["none", "MEAN", None, 1, "avg"],
    "threads": NOT_INTS + [0, -1, 2**31, 2**64, 10**6],
    "dim": NOT_INTS + [2**61, -(2**63), 100, -100],
    "seed": [-1, -(2**63), 1.5, NAN, "0", True, [1, -2], object(), np.random.default_rng(0)],
    "rng": [-1, 1.5, "0", True, object(), [1, 2]],
}
BAD["stride_or_none"] = [v for v in BAD["positive"] if v is not None]  # None: the kernel size
ODD = {
    "positive": [np.int64(1), np.int32(2), np.uint8(1), (1, 2), [2, 1], (np.int16(1), 2), 2**40],
    "nonneg": [np.int64(0), np.int8(1), (0, 1), [1, 0], 2**40, 2**20],
    "shape4": [],  # filled per entry: the right shape with one dimension changed
    "dtype": [np.float32, np.float64, "float64", "float", np.dtype("float32")],
    "bool": [np.True_, np.False_],
    "probability": [0.0, 1.0, np.float32(0.25), 0, 1],
    "reduction": ["sum", "mean"],
    "threads": [1, np.int64(1)],
    "dim": [np.int64(1), -1, 0, 1, 2, -2],
    "seed": [0, 2**200, np.int64(5), [1, 2], np.random.SeedSequence(3), None],
    "rng": [None, 0, 2**70, np.int8(3), np.random.default_rng(1)],
}
ODD["stride_or_none"] = ODD["positive"] + [None]
BAD_DTYPES = [np.int32, np.int64, np.float16, np.complex128, np.bool_, object, np.uint8]


@dataclass
class Entry:
    """One public call: how to draw valid arguments, call it, and compute the reference.

    Attributes
    ----------
    name : str
        What every error message must contain (the function or layer name).
    make : callable
        ``make(draw, dtype, n)`` -> dict of valid arguments for a batch of ``n``.
    call : callable
        ``call(args)`` -> the result (arrays, tuples of them, or numbers).
    ref : callable
        ``ref(args)`` -> the expected result, from :mod:`fastconv.reference`.
    params : dict
        Argument name -> kind (a key of :data:`BAD`) of the parameters to distort.
    arrays : tuple of str
        The float array arguments (distorted in dtype, layout, values, ndim).
    fixed_ndim : bool
        Whether a wrong ndim must raise (False for shape-agnostic calls: relu, linear).
    optional : tuple of str
        Array arguments for which None is valid.
    int_arrays : tuple of str
        Integer array arguments (indices, labels): distorted in layout and dtype only.
    converts : bool
        The call converts other real dtypes and nested lists to float (the cs231n drop-in):
        those may be accepted (the reference then gets the converted arrays).
    """

    name: str
    make: object
    call: object
    ref: object
    params: dict = field(default_factory=dict)
    arrays: tuple = ()
    fixed_ndim: bool = True
    optional: tuple = ()
    int_arrays: tuple = ()
    converts: bool = False


# --------------------------------------------------------------------------- valid geometries


def _arr(draw, shape, dtype):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _conv_geometry(draw, n):
    C, F_, H, W = (draw(st.integers(1, 3)) for _ in range(4))
    H, W = H + draw(st.integers(0, 4)), W + draw(st.integers(0, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    KH, KW = draw(st.integers(1, min(H + 2 * ph, 4))), draw(st.integers(1, min(W + 2 * pw, 4)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.sampled_from([(sh, sw), sh]))
    padding = draw(st.sampled_from([(ph, pw), ph]))
    s2, p2 = R._pair(stride), R._pair(padding)
    if KH > H + 2 * p2[0] or KW > W + 2 * p2[1]:
        KH, KW = 1, 1
    Ho = (H + 2 * p2[0] - KH) // s2[0] + 1
    Wo = (W + 2 * p2[1] - KW) // s2[1] + 1
    return dict(x_shape=(n, C, H, W), w_shape=(F_, C, KH, KW), stride=stride, padding=padding, y_shape=(n, F_, Ho, Wo))


def _pool_geometry(draw, n):
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, min(H, 3))), draw(st.integers(1, min(W, 3)))
    kernel = draw(st.sampled_from([(kh, kw), kh if kh <= min(H, W) else (kh, kw)]))
    k2 = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = draw(st.sampled_from([None, 1, 2, (1, 2)]))
    padding = draw(st.sampled_from([0, (k2[0] // 2, k2[1] // 2)]))
    return dict(x_shape=(n, C, H, W), kernel_size=kernel, stride=stride, padding=padding)


def make_conv2d(draw, dtype, n):
    g = _conv_geometry(draw, n)
    b = draw(st.sampled_from([None, "bias"]))
    return dict(x=_arr(draw, g["x_shape"], dtype), w=_arr(draw, g["w_shape"], dtype),
                b=None if b is None else _arr(draw, g["w_shape"][:1], dtype), stride=g["stride"], padding=g["padding"])


def make_conv_backward_input(draw, dtype, n):
    g = _conv_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), w=_arr(draw, g["w_shape"], dtype), input_shape=g["x_shape"],
                stride=g["stride"], padding=g["padding"])


def make_conv_backward_weight(draw, dtype, n):
    g = _conv_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype), weight_shape=g["w_shape"],
                stride=g["stride"], padding=g["padding"])


def make_conv_backward(draw, dtype, n):
    g = _conv_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype),
                w=_arr(draw, g["w_shape"], dtype), stride=g["stride"], padding=g["padding"])


def make_conv_plan(draw, dtype, n):
    g = _conv_geometry(draw, n)
    return dict(x_shape=g["x_shape"], w_shape=g["w_shape"], stride=g["stride"], padding=g["padding"], dtype=dtype)


def make_pool(draw, dtype, n):
    g = _pool_geometry(draw, n)
    return dict(x=_arr(draw, g["x_shape"], dtype), kernel_size=g["kernel_size"], stride=g["stride"],
                padding=g["padding"])


def make_pool_backward(draw, dtype, n):
    g = make_pool(draw, dtype, n)
    y, idx = R.max_pool2d(g["x"], g["kernel_size"], g["stride"], g["padding"])
    return dict(dy=_arr(draw, y.shape, dtype), indices=idx, input_shape=g["x"].shape)


def make_pool_plan(draw, dtype, n):
    g = _pool_geometry(draw, n)
    return dict(x_shape=g["x_shape"], kernel_size=g["kernel_size"], stride=g["stride"], padding=g["padding"],
                dtype=dtype)


def _any_shape(draw, n):
    return (n,) + tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))


def make_relu(draw, dtype, n):
    return dict(x=_arr(draw, _any_shape(draw, n), dtype))


def make_relu_backward(draw, dtype, n):
    shape = _any_shape(draw, n)
    return dict(dy=_arr(draw, shape, dtype), x=_arr(draw, shape, dtype))


def _dense_shapes(draw, n):
    lead = (n,) + tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    return lead, draw(st.integers(1, 6)), draw(st.integers(1, 5))


def make_linear(draw, dtype, n):
    lead, fin, fout = _dense_shapes(draw, n)
    b = draw(st.booleans())
    return dict(x=_arr(draw, lead + (fin,), dtype), weight=_arr(draw, (fout, fin), dtype),
                bias=_arr(draw, (fout,), dtype) if b else None)


def make_linear_backward(draw, dtype, n):
    lead, fin, fout = _dense_shapes(draw, n)
    return dict(dy=_arr(draw, lead + (fout,), dtype), x=_arr(draw, lead + (fin,), dtype),
                weight=_arr(draw, (fout, fin), dtype))


def make_matmul(draw, dtype, n):
    k, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return dict(a=_arr(draw, (n, k), dtype), b=_arr(draw, (k, m), dtype))


# Layers: the constructor's arguments are parameters like any other; ``x`` (and ``dout``) the arrays.


def make_conv_layer(draw, dtype, n):
    g = _conv_geometry(draw, n)
    F_, C, KH, KW = g["w_shape"]
    return dict(in_channels=C, out_channels=F_, kernel_size=(KH, KW), stride=g["stride"], padding=g["padding"],
                bias=draw(st.booleans()), dtype=dtype, x=_arr(draw, g["x_shape"], dtype),
                dout=_arr(draw, g["y_shape"], dtype))


def make_pool_layer(draw, dtype, n):
    return make_pool(draw, dtype, n)


def make_linear_layer(draw, dtype, n):
    lead, fin, fout = _dense_shapes(draw, n)
    return dict(in_features=fin, out_features=fout, bias=draw(st.booleans()), dtype=dtype, rng=0,
                x=_arr(draw, lead + (fin,), dtype), dout=_arr(draw, lead + (fout,), dtype))


def make_flatten(draw, dtype, n):
    x = _arr(draw, _any_shape(draw, n) + (2,), dtype)
    start = draw(st.integers(-x.ndim, x.ndim - 1))
    return dict(start_dim=start, end_dim=draw(st.sampled_from([-1, x.ndim - 1])), x=x)


def make_dropout(draw, dtype, n):
    return dict(p=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])), training=draw(st.booleans()),
                x=_arr(draw, _any_shape(draw, n), dtype))


def make_cross_entropy(draw, dtype, n):
    n = max(n, 1) if draw(st.booleans()) else n  # an empty batch is an error here
    classes = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    target = np.random.default_rng(seed).integers(0, classes, n)
    return dict(reduction=draw(st.sampled_from(["mean", "sum"])), input=_arr(draw, (n, classes), dtype),
                target=target)


# --------------------------------------------------------------------------- calls and references


def _conv_layer_call(a):
    layer = nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"],
                      bias=a["bias"], dtype=a["dtype"], rng=0)
    y = layer(a["x"])
    dx = layer.backward(a["dout"])
    return y, dx, layer.weight.grad, layer.weight.data, None if layer.bias is None else layer.bias.data


def _conv_layer_ref(a, got):
    w, b = got[3], got[4]
    dx, dw, _ = R.conv2d_backward(a["dout"], a["x"], w, a["stride"], a["padding"])
    return R.conv2d(a["x"], w, b, a["stride"], a["padding"]), dx, dw, w, b


def _linear_layer_call(a):
    layer = nn.Linear(a["in_features"], a["out_features"], bias=a["bias"], dtype=a["dtype"], rng=a["rng"])
    y = layer(a["x"])
    dx = layer.backward(a["dout"])
    return y, dx, layer.weight.grad, layer.weight.data, None if layer.bias is None else layer.bias.data


def _linear_layer_ref(a, got):
    w, b = got[3], got[4]
    dx, dw, _ = R.linear_backward(a["dout"], a["x"], w)
    return R.linear(a["x"], w, b), dx, dw, w, b


def _relu_layer_call(a):
    layer = nn.ReLU()
    y = layer(a["x"])
    return y, layer.backward(a["dy"])


def _dropout_call(a):
    layer = nn.Dropout(a["p"], rng=0).train(a["training"])
    return layer(a["x"])


def _dropout_ref(a, got):
    x, p = a["x"], float(a["p"])
    if not a["training"] or p == 0:
        return x
    if p == 1:
        return x * x.dtype.type(0)  # as PyTorch: NaN where x is NaN or infinite
    scaled = x * x.dtype.type(1.0 / (1.0 - p))
    kept = got == scaled  # the mask is random: every element is dropped (x * 0, NaN for inf) or kept-and-scaled
    return np.where(kept | (np.isnan(got) & np.isnan(scaled)), scaled, x * x.dtype.type(0))


def _manual_seed_call(a):
    before = nn.default_generator()
    try:
        return nn.manual_seed(a["seed"]).random(3)
    finally:
        nn.manual_seed(0).bit_generator.state = before.bit_generator.state


def _manual_seed_ref(a, got):
    if a["seed"] is None:  # fresh entropy: only the shape and range can be checked
        assert got.shape == (3,) and ((0 <= got) & (got < 1)).all()
        return got
    seed = copy.deepcopy(a["seed"]) if isinstance(a["seed"], np.random.SeedSequence) else a["seed"]
    return np.random.default_rng(seed).random(3)


def _cs231n_floats(*arrays):
    """The drop-in's documented conversion: the arrays' common float32/float64, else float64 (None stays)."""
    given = [np.asarray(a) for a in arrays if a is not None]
    assert all(a.dtype.kind in "biuf" for a in given), "not a real numeric array"
    dtype = np.result_type(*given)
    dtype = dtype if dtype in (np.float32, np.float64) else np.float64
    return [None if a is None else np.asarray(a).astype(dtype) for a in arrays]


def _compat_conv_call(a):
    return C.conv_forward_fast(a["x"], a["w"], a["b"], {"stride": a["stride"], "pad": a["padding"]})[0]


def _compat_conv_ref(a, got):
    x, w, b = _cs231n_floats(a["x"], a["w"], a["b"])
    return R.conv2d(x, w, b, a["stride"], a["padding"])


def make_compat_pool(draw, dtype, n):
    g = make_pool(draw, dtype, n)
    kh, kw = R._pair(g["kernel_size"])
    return dict(x=g["x"], pool_height=kh, pool_width=kw, stride=g["stride"] or kh)


def _compat_pool_call(a):
    out, cache = C.max_pool_forward_fast(a["x"], {k: a[k] for k in ("pool_height", "pool_width", "stride")})
    return out, cache[2]


def _compat_pool_ref(a, got):
    (x,) = _cs231n_floats(a["x"])
    return R.max_pool2d(x, (a["pool_height"], a["pool_width"]), a["stride"])


def _threads_call(a):
    before = F.get_num_threads()
    try:
        F.set_num_threads(a["n"])
        return F.get_num_threads()
    finally:
        F.set_num_threads(before)


def _plan_y_shape(plan):
    g = plan.geometry
    return g.N, g.F, g.Ho, g.Wo


def _window_output(x_shape, window, stride, padding, out_channels):
    """``(N, F, Ho, Wo)`` by the reference's output-size rule (a plan allocates nothing, so huge sizes are fine)."""
    N, C, H, W = (int(v) for v in x_shape)
    (kh, kw), (sh, sw), (ph, pw) = R._pair(window), R._pair(stride), R._pair(padding)
    assert min(kh, kw, sh, sw, C, H, W) >= 1 and min(ph, pw, N) >= 0, "invalid geometry"
    assert kh <= H + 2 * ph and kw <= W + 2 * pw, "window larger than the padded input"
    return N, int(out_channels), R._output_size(H, kh, sh, ph), R._output_size(W, kw, sw, pw)


def _conv_plan_ref(a, got):
    assert tuple(a["w_shape"])[1] == tuple(a["x_shape"])[1], "channel mismatch"
    return _window_output(a["x_shape"], tuple(a["w_shape"])[2:], a["stride"], a["padding"], a["w_shape"][0])


def _pool_plan_ref(a, got):
    k2 = R._pair(a["kernel_size"])
    assert R._pair(a["padding"])[0] <= k2[0] // 2 and R._pair(a["padding"])[1] <= k2[1] // 2, "pool padding"
    stride = a["kernel_size"] if a["stride"] is None else a["stride"]
    return _window_output(a["x_shape"], a["kernel_size"], stride, a["padding"], a["x_shape"][1])


CONV_PARAMS = {"stride": "positive", "padding": "nonneg"}
POOL_PARAMS = {"kernel_size": "positive", "stride": "stride_or_none", "padding": "nonneg"}


def _ref(fn, *names):
    return lambda a, got: fn(*(a[k] for k in names))


TABLE = [
    Entry("conv2d", make_conv2d, lambda a: F.conv2d(**a), _ref(R.conv2d, "x", "w", "b", "stride", "padding"),
          CONV_PARAMS, ("x", "w", "b"), optional=("b",)),
    Entry("conv2d_backward_input", make_conv_backward_input, lambda a: F.conv2d_backward_input(**a),
          _ref(R.conv2d_backward_input, "dy", "w", "input_shape", "stride", "padding"),
          {**CONV_PARAMS, "input_shape": "shape4"}, ("dy", "w")),
    Entry("conv2d_backward_weight", make_conv_backward_weight, lambda a: F.conv2d_backward_weight(**a),
          _ref(R.conv2d_backward_weight, "dy", "x", "weight_shape", "stride", "padding"),
          {**CONV_PARAMS, "weight_shape": "shape4"}, ("dy", "x")),
    Entry("conv2d_backward", make_conv_backward, lambda a: F.conv2d_backward(**a),
          _ref(R.conv2d_backward, "dy", "x", "w", "stride", "padding"), CONV_PARAMS, ("dy", "x", "w")),
    Entry("conv2d_plan", make_conv_plan, lambda a: _plan_y_shape(F.conv2d_plan(**a)), _conv_plan_ref,
          {**CONV_PARAMS, "x_shape": "shape4", "w_shape": "shape4", "dtype": "dtype"}),
    Entry("max_pool2d", make_pool, lambda a: F.max_pool2d(**a),
          _ref(R.max_pool2d, "x", "kernel_size", "stride", "padding"), POOL_PARAMS, ("x",)),
    Entry("max_pool2d_backward", make_pool_backward, lambda a: F.max_pool2d_backward(**a),
          _ref(R.max_pool2d_backward, "dy", "indices", "input_shape"), {"input_shape": "shape4"}, ("dy",),
          int_arrays=("indices",)),
    Entry("max_pool2d_plan", make_pool_plan, lambda a: _plan_y_shape(F.max_pool2d_plan(**a)), _pool_plan_ref,
          {**POOL_PARAMS, "x_shape": "shape4", "dtype": "dtype"}),
    Entry("relu", make_relu, lambda a: F.relu(**a), _ref(R.relu, "x"), {}, ("x",), fixed_ndim=False),
    Entry("relu_backward", make_relu_backward, lambda a: F.relu_backward(**a), _ref(R.relu_backward, "dy", "x"),
          {}, ("dy", "x"), fixed_ndim=False),
    Entry("linear", make_linear, lambda a: F.linear(**a), _ref(R.linear, "x", "weight", "bias"), {},
          ("x", "weight", "bias"), fixed_ndim=False, optional=("bias",)),
    Entry("linear_backward", make_linear_backward, lambda a: F.linear_backward(**a),
          _ref(R.linear_backward, "dy", "x", "weight"), {}, ("dy", "x", "weight"), fixed_ndim=False),
    Entry("matmul", make_matmul, lambda a: F.matmul(**a), _ref(R.matmul, "a", "b"), {}, ("a", "b")),
    Entry("set_num_threads", lambda draw, dtype, n: {"n": 1}, _threads_call, lambda a, got: 1, {"n": "threads"}),
    Entry("conv_forward_fast", make_conv2d, _compat_conv_call, _compat_conv_ref, CONV_PARAMS, ("x", "w", "b"),
          optional=("b",), converts=True),
    Entry("max_pool_forward_fast", make_compat_pool, _compat_pool_call, _compat_pool_ref,
          {"pool_height": "positive", "pool_width": "positive", "stride": "stride_or_none"}, ("x",), converts=True),
    Entry("manual_seed", lambda draw, dtype, n: {"seed": draw(st.integers(0, 2**64))}, _manual_seed_call,
          _manual_seed_ref, {"seed": "seed"}),
    Entry("Conv2d", make_conv_layer, _conv_layer_call, _conv_layer_ref,
          {**CONV_PARAMS, "in_channels": "positive", "out_channels": "positive", "kernel_size": "positive",
           "bias": "bool", "dtype": "dtype"}, ("x", "dout")),
    Entry("MaxPool2d", make_pool_layer, lambda a: nn.MaxPool2d(a["kernel_size"], a["stride"], a["padding"])(a["x"]),
          lambda a, got: R.max_pool2d(a["x"], a["kernel_size"], a["stride"], a["padding"])[0], POOL_PARAMS, ("x",)),
    Entry("ReLU", make_relu_backward, _relu_layer_call,
          lambda a, got: (R.relu(a["x"]), R.relu_backward(a["dy"], a["x"])), {}, ("x", "dy"), fixed_ndim=False),
    Entry("Linear", make_linear_layer, _linear_layer_call, _linear_layer_ref,
          {"in_features": "positive", "out_features": "positive", "bias": "bool", "dtype": "dtype", "rng": "rng"},
          ("x", "dout"),
          fixed_ndim=False),
    Entry("Flatten", make_flatten, lambda a: nn.Flatten(a["start_dim"], a["end_dim"])(a["x"]),
          lambda a, got: torch_like_flatten(a["x"], a["start_dim"], a["end_dim"]),
          {"start_dim": "dim", "end_dim": "dim"}, ("x",), fixed_ndim=False),
    Entry("Dropout", make_dropout, _dropout_call, _dropout_ref, {"p": "probability"}, ("x",), fixed_ndim=False),
    Entry("CrossEntropyLoss", make_cross_entropy,
          lambda a: nn.CrossEntropyLoss(reduction=a["reduction"])(a["input"], a["target"]),
          lambda a, got: R.cross_entropy(a["input"], a["target"], reduction=a["reduction"]), {"reduction": "reduction"},
          ("input",), int_arrays=("target",)),
]


def torch_like_flatten(x, start, end):
    """PyTorch's flatten rule, written out: dims ``start..end`` (negative from the end) merged into one."""
    s, e = start % x.ndim, end % x.ndim
    if s > e:
        raise ValueError("start_dim after end_dim")
    return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


# --------------------------------------------------------------------------- distortions

DISTORTIONS = ["valid", "empty batch", "layout", "non-finite", "dtype", "mixed dtypes", "not an array",
               "wrong ndim", "bad parameter", "odd parameter"]


def _present(args, names):
    return [k for k in names if k in args and isinstance(args[k], np.ndarray)]


@st.composite
def cases(draw, entry):
    """``(args, outcome, label)``: outcome "ok" (the reference result), "raise", or "either"."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(DISTORTIONS))
    n = 0 if kind == "empty batch" else draw(st.integers(1, 3))
    args = entry.make(draw, dtype, n)
    arrays = _present(args, entry.arrays)
    label = kind
    if kind == "empty batch":
        return args, "either" if entry.name == "CrossEntropyLoss" else "ok", label
    if kind in ("valid",) or (kind in ("layout", "non-finite", "dtype", "mixed dtypes", "not an array", "wrong ndim")
                              and not arrays + _present(args, entry.int_arrays)):
        return args, "ok", "valid"
    if kind == "layout":
        name = draw(st.sampled_from(arrays + _present(args, entry.int_arrays)))
        layout = draw(st.sampled_from(LAYOUTS))
        args[name] = relayout(args[name], layout)
        return args, "ok", f"{name} {layout}"
    if kind == "non-finite":
        name = draw(st.sampled_from(arrays))
        a = args[name]
        if a.size:
            flat = a.reshape(-1)
            for _ in range(draw(st.integers(1, 3))):
                flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return args, "ok", f"{name} non-finite"
    if kind == "dtype":
        name = draw(st.sampled_from(arrays + _present(args, entry.int_arrays)))
        bad = draw(st.sampled_from(BAD_DTYPES))
        if entry.converts:
            args[name] = args[name].astype(bad)
            return args, "either", f"{name} as {np.dtype(bad)}"
        if name in entry.int_arrays:
            if np.dtype(bad).kind in "iu":  # another integer type may be fine
                args[name] = args[name].astype(bad)
                return args, "either", f"{name} as {np.dtype(bad)}"
            bad = draw(st.sampled_from([np.float32, np.float64, np.complex128, object]))
        args[name] = args[name].astype(bad)
        return args, "raise", f"{name} as {np.dtype(bad)}"
    if kind == "mixed dtypes":
        name = draw(st.sampled_from(arrays))
        other = np.float64 if args[name].dtype == np.float32 else np.float32
        args[name] = args[name].astype(other)
        # With two or more float arrays, or a layer with typed parameters, a mix is an error.
        mixed = (len(arrays) > 1 or "dtype" in entry.params) and not entry.converts
        return args, "raise" if mixed else "either", f"{name} as {np.dtype(other)}"
    if kind == "not an array":
        name = draw(st.sampled_from(arrays + _present(args, entry.int_arrays)))
        value = draw(st.sampled_from([args[name].tolist(), 1.0, "array"]))
        # Labels given as a list (as in NumPy code) may be accepted; float data never.
        lenient = (name in entry.int_arrays or entry.converts) and isinstance(value, list)
        args[name] = value
        return args, "either" if lenient else "raise", f"{name} not an array ({type(value).__name__})"
    if kind == "wrong ndim":
        name = draw(st.sampled_from(arrays))
        a = args[name]
        args[name] = a[None] if draw(st.booleans()) or a.ndim == 1 else a[0]
        return args, "raise" if entry.fixed_ndim else "either", f"{name} ndim {args[name].ndim}"
    if not entry.params:
        return args, "ok", "valid"
    name = draw(st.sampled_from(sorted(entry.params)))
    kind_of = entry.params[name]
    if kind == "bad parameter":
        args[name] = draw(st.sampled_from(BAD[kind_of]))
        return args, "raise", f"{name}={args[name]!r}"
    pool = list(ODD[kind_of])
    if kind_of == "shape4":
        good = tuple(args[name])
        pool = [good[:i] + (good[i] + d,) + good[i + 1:] for i in range(4) for d in (1, -1) if good[i] + d >= 0]
        pool += [list(good), np.array(good), tuple(np.int64(v) for v in good), good[:2] + (2**40, 2**40)]
    args[name] = draw(st.sampled_from(pool))
    return args, "either", f"{name}={args[name]!r}"


# --------------------------------------------------------------------------- the check


def _snapshot(args):
    return {k: (v.copy(), v.flags.writeable) for k, v in args.items() if isinstance(v, np.ndarray)}


def _assert_unchanged(args, snap, label):
    for k, (before, writeable) in snap.items():
        assert args[k].flags.writeable == writeable, f"{k}'s writeable flag changed ({label})"
        np.testing.assert_array_equal(args[k], before, err_msg=f"input {k} was modified ({label})")


def _assert_same(got, expected, label, rtol):
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected), f"{label}: got {type(got)}"
        for g, e in zip(got, expected):
            _assert_same(g, e, label, rtol)
        return
    if expected is None:
        assert got is None, label
        return
    if isinstance(expected, (int, float, np.number)) and not isinstance(expected, (bool, np.bool_)):
        assert np.isscalar(got) or np.ndim(got) == 0, f"{label}: expected a scalar, got {got!r}"
        np.testing.assert_allclose(float(got), float(expected), rtol=rtol, atol=rtol, equal_nan=True, err_msg=label)
        return
    got_a, exp_a = np.asarray(got), np.asarray(expected)
    assert got_a.shape == exp_a.shape, f"{label}: shape {got_a.shape}, expected {exp_a.shape}"
    if exp_a.dtype.kind == "f":
        assert got_a.dtype == exp_a.dtype, f"{label}: dtype {got_a.dtype}, expected {exp_a.dtype}"
        np.testing.assert_allclose(got_a, exp_a, rtol=rtol, atol=rtol, equal_nan=True, err_msg=label)
    else:
        np.testing.assert_array_equal(got_a, exp_a, err_msg=label)


def check(entry, args, outcome, label):
    call_args = copy.copy(args)
    snap = _snapshot(args)
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)  # a hang kills the run with a traceback
    try:
        got = entry.call(call_args)
    except ERRORS as exc:
        assert outcome != "ok", f"{entry.name} raised for a valid call ({label}): {exc!r}"
        assert entry.name in str(exc), f"{entry.name}'s {type(exc).__name__} does not name it ({label}): {exc}"
        _assert_unchanged(args, snap, label)
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    _assert_unchanged(args, snap, label)
    assert outcome != "raise", f"{entry.name} accepted an invalid call ({label}) and returned {got!r:.200}"
    dtypes = [v.dtype for v in args.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    rtol = 1e-10 if dtypes and all(d == np.float64 for d in dtypes) else 2e-4
    try:
        expected = entry.ref(args, got)
    except Exception as exc:  # the reference cannot compute it: fastconv should not have accepted it
        raise AssertionError(f"{entry.name} accepted ({label}) what the reference rejects: {exc!r}") from exc
    _assert_same(got, expected, f"{entry.name} ({label})", rtol)


@pytest.mark.parametrize("entry", TABLE, ids=[e.name for e in TABLE])
def test_every_public_call_returns_the_reference_or_a_named_error(entry):
    @given(cases(entry))
    def run(case):
        check(entry, *case)

    run()


def test_the_table_covers_the_public_surface():
    """Every name of fastconv.functional.__all__ and every nn layer has an entry (or a stated reason not to)."""
    covered = {e.name for e in TABLE}
    no_arguments = {"get_num_threads"}
    missing = set(F.__all__) - covered - no_arguments
    assert not missing, f"public functions without a fuzz entry: {sorted(missing)}"
    layers = {name for name in nn.__all__ if isinstance(getattr(nn, name), type)
              and issubclass(getattr(nn, name), nn.Module) and name not in ("Module", "Sequential")}
    assert not layers - covered, f"layers without a fuzz entry: {sorted(layers - covered)}"
    # The cs231n drop-in: its forward convolution and pooling are fuzzed (the names below are aliases of
    # them); the rest delegate to fuzzed calls through the same error-naming wrapper but have no entry yet.
    aliases = {n for n in C.__all__ if getattr(C, n) in (C.conv_forward_fast, C.conv_backward_fast,
                                                         C.max_pool_forward_fast, C.max_pool_backward_fast)}
    not_yet = {"conv_backward_fast", "max_pool_backward_fast", "relu_forward", "relu_backward", "affine_forward",
               "affine_backward", "affine_relu_forward", "affine_relu_backward", "conv_relu_forward",
               "conv_relu_backward", "conv_relu_pool_forward", "conv_relu_pool_backward", "softmax_loss", "svm_loss"}
    missing = set(C.__all__) - covered - aliases - not_yet
    assert not missing, f"fastconv.compat functions without a fuzz entry: {sorted(missing)}"
    assert F.get_num_threads() >= 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (2, 1), ((2, 3), (0, 2))], ids=str)
def test_a_nonfinite_weight_reaches_only_the_inputs_it_touches(bad, stride, padding):
    """Found by this fuzzer: a NaN/inf weight spread NaN over the whole input gradient (the zero padding of dy
    times the weight); PyTorch and the reference keep it to the inputs that tap reads."""
    rng = np.random.default_rng(0)
    dy_shape = R.conv2d(np.zeros((2, 2, 6, 7)), np.zeros((3, 2, 3, 2)), None, stride, padding).shape
    dy, w = rng.standard_normal(dy_shape), rng.standard_normal((3, 2, 3, 2))
    w[1, 0, 2, 1] = bad
    expected = R.conv2d_backward_input(dy, w, (2, 2, 6, 7), stride, padding)
    assert np.isfinite(expected).any() and not np.isfinite(expected).all()
    _assert_same(F.conv2d_backward_input(dy, w, (2, 2, 6, 7), stride, padding), expected, "conv2d_backward_input",
                 1e-12)
    layer = nn.Conv2d(2, 3, (3, 2), stride, padding, dtype=np.float64)
    layer.weight.data[...] = w
    layer(np.zeros((2, 2, 6, 7)))
    _assert_same(layer.backward(dy), expected, "Conv2d.backward", 1e-12)
