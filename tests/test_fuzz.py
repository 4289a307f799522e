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
    "reduction": ["NONE", "MEAN", None, 1, "avg", "elementwise_mean"],
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
    "reduction": ["sum", "mean", "none"],
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
    lenient : bool
        The call takes anything, as PyTorch's does (``Identity``): what other calls must refuse
        may be accepted, and then the reference result is expected.
    empty_ok : bool
        An empty batch must give the reference result (else it may also be refused: a class loss).
    also_named : tuple of str
        Other names an error may give instead (a container's: the module inside that refused the input).
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
    lenient: bool = False
    empty_ok: bool = True
    also_named: tuple = ()


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




def _same_pads(padding, kernel, dilation):
    """``((top, bottom), (left, right))`` of a conv padding, strings resolved as PyTorch does."""
    return R.conv_padding(padding, tuple(kernel), dilation)


def _conv15_geometry(draw, n):
    """A convolution with issue 15's parameters: dilation, groups and padding 'same'/'valid' (or numeric)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    C = groups * draw(st.integers(1, 2))
    F_ = groups * draw(st.integers(1, 2))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dilation = draw(st.sampled_from([1, 2, (1, 2), (3, 1)]))
    padding = draw(st.sampled_from([0, 1, (0, 2), "valid", "same"]))
    stride = 1 if padding == "same" else draw(st.sampled_from([1, 2, (1, 3)]))
    (t, b), (le, r) = _same_pads(padding, (KH, KW), dilation)
    (dh, dw), (sh, sw) = R._pair(dilation), R._pair(stride)
    H = max(dh * (KH - 1) + 1 - t - b, 1) + draw(st.integers(0, 3))
    W = max(dw * (KW - 1) + 1 - le - r, 1) + draw(st.integers(0, 3))
    Ho, Wo = (H + t + b - dh * (KH - 1) - 1) // sh + 1, (W + le + r - dw * (KW - 1) - 1) // sw + 1
    return dict(x_shape=(n, C, H, W), w_shape=(F_, C // groups, KH, KW), stride=stride, padding=padding,
                dilation=dilation, groups=groups, y_shape=(n, F_, Ho, Wo))


def _conv15_opts(g):
    return {k: g[k] for k in ("stride", "padding", "dilation", "groups")}


def make_conv2d_issue15(draw, dtype, n):
    g = _conv15_geometry(draw, n)
    b = draw(st.sampled_from([None, "bias"]))
    return dict(x=_arr(draw, g["x_shape"], dtype), w=_arr(draw, g["w_shape"], dtype),
                b=None if b is None else _arr(draw, g["w_shape"][:1], dtype), **_conv15_opts(g))


def make_conv_backward_input_issue15(draw, dtype, n):
    g = _conv15_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), w=_arr(draw, g["w_shape"], dtype), input_shape=g["x_shape"],
                **_conv15_opts(g))


def make_conv_backward_weight_issue15(draw, dtype, n):
    g = _conv15_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype), weight_shape=g["w_shape"],
                **_conv15_opts(g))


def make_conv_backward_issue15(draw, dtype, n):
    g = _conv15_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype),
                w=_arr(draw, g["w_shape"], dtype), **_conv15_opts(g))


def make_conv_plan_issue15(draw, dtype, n):
    g = _conv15_geometry(draw, n)
    return dict(x_shape=g["x_shape"], w_shape=g["w_shape"], dtype=dtype, **_conv15_opts(g))


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


def _loss_dtype(a, loss):
    """The reference's losses are float64; PyTorch's ``reduction='none'`` array is in the input's dtype."""
    return loss.astype(a["input"].dtype) if a["reduction"] == "none" else loss


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


CONV_PARAMS = {"stride": "positive", "padding": "nonneg"}
BAD["conv_padding"] = BAD["nonneg"] + ["SAME", "full", "", "same ", b"same"]
ODD["conv_padding"] = ODD["nonneg"] + ["same", "valid"]  # 'same' at a stride above 1: a named error
BAD["groups"] = NOT_INTS + [0, -1, 2**61, 2**64, (1, 2), [2]]
ODD["groups"] = [np.int64(1), np.int32(1), 1, 2**40]
CONV15_PARAMS = {"stride": "positive", "padding": "conv_padding", "dilation": "positive", "groups": "groups"}


def _padded15(a, x, w_shape):
    """``x`` zero-padded as ``a``'s padding asks (asymmetric for an odd 'same'), and the pads."""
    pads = _same_pads(a["padding"], tuple(w_shape)[2:], a["dilation"])
    return np.pad(x, ((0, 0), (0, 0), *pads)), pads


def _conv15_ref_y(a, got):
    xp, _ = _padded15(a, a["x"], a["w"].shape)
    return R.conv2d(xp, a["w"], a["b"], a["stride"], 0, a["dilation"], a["groups"])


def _conv15_ref_dx(a, dy, w, input_shape):
    N, C, H, W = (int(v) for v in input_shape)
    (t, b), (le, r) = _same_pads(a["padding"], tuple(w.shape)[2:], a["dilation"])
    dxp = R.conv2d_backward_input(dy, w, (N, C, H + t + b, W + le + r), a["stride"], 0, a["dilation"], a["groups"])
    return dxp[:, :, t:t + H, le:le + W]


def _conv15_ref_dw(a, dy, x, weight_shape):
    xp, _ = _padded15(a, x, weight_shape)
    return R.conv2d_backward_weight(dy, xp, tuple(int(v) for v in weight_shape), a["stride"], 0, a["dilation"],
                                    a["groups"])


def _conv15_ref_backward(a, got):
    return (_conv15_ref_dx(a, a["dy"], a["w"], a["x"].shape), _conv15_ref_dw(a, a["dy"], a["x"], a["w"].shape),
            a["dy"].sum(axis=(0, 2, 3)))


def _conv15_plan_ref(a, got):
    N, C, H, W = (int(v) for v in a["x_shape"])
    F_, Cg, KH, KW = (int(v) for v in a["w_shape"])
    groups = int(a["groups"])
    assert groups >= 1 and Cg * groups == C and F_ % groups == 0, "channels and groups do not match"
    (t, b), (le, r) = _same_pads(a["padding"], (KH, KW), a["dilation"])
    (dh, dw), (sh, sw) = R._pair(a["dilation"]), R._pair(a["stride"])
    span_h, span_w = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    assert min(KH, KW, sh, sw, dh, dw, C, H, W) >= 1 and min(t, le, N) >= 0, "invalid geometry"
    assert span_h <= H + t + b and span_w <= W + le + r, "window larger than the padded input"
    return N, F_, (H + t + b - span_h) // sh + 1, (W + le + r - span_w) // sw + 1
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
    # Issue 15: the same five calls with dilation, groups and padding 'same'/'valid'.
    Entry("conv2d", make_conv2d_issue15, lambda a: F.conv2d(**a), _conv15_ref_y, CONV15_PARAMS, ("x", "w", "b"),
          optional=("b",)),
    Entry("conv2d_backward_input", make_conv_backward_input_issue15, lambda a: F.conv2d_backward_input(**a),
          lambda a, got: _conv15_ref_dx(a, a["dy"], a["w"], a["input_shape"]),
          {**CONV15_PARAMS, "input_shape": "shape4"}, ("dy", "w")),
    Entry("conv2d_backward_weight", make_conv_backward_weight_issue15, lambda a: F.conv2d_backward_weight(**a),
          lambda a, got: _conv15_ref_dw(a, a["dy"], a["x"], a["weight_shape"]),
          {**CONV15_PARAMS, "weight_shape": "shape4"}, ("dy", "x")),
    Entry("conv2d_backward", make_conv_backward_issue15, lambda a: F.conv2d_backward(**a), _conv15_ref_backward,
          CONV15_PARAMS, ("dy", "x", "w")),
    Entry("conv2d_plan", make_conv_plan_issue15, lambda a: _plan_y_shape(F.conv2d_plan(**a)), _conv15_plan_ref,
          {**CONV15_PARAMS, "x_shape": "shape4", "w_shape": "shape4", "dtype": "dtype"}),
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
          lambda a, got: _loss_dtype(a, R.cross_entropy(a["input"], a["target"], reduction=a["reduction"])),
          {"reduction": "reduction"},
          ("input",), int_arrays=("target",), empty_ok=False),
]


# --------------------------------------------------------------------------- transposed convolution; Conv2d's
# padding modes


BAD["padding_mode"] = ["Zeros", "reflection", "zeros ", "", None, 1, True, ("zeros",)]
ODD["padding_mode"] = ["zeros", "reflect", "replicate", "circular"]
#: The transposed entries' groups and dilation.
GENERAL_PARAMS = {"groups": "positive", "dilation": "positive"}


def _transpose_geometry(draw, n):
    cin, cout, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    stride, padding = draw(st.sampled_from([(sh, sw), sh])), draw(st.sampled_from([(ph, pw), ph]))
    op = tuple(draw(st.integers(0, s - 1)) for s in R._pair(stride))
    output_padding = draw(st.sampled_from([op, min(op)]))
    w_shape = (cin, cout, kh, kw)
    try:
        y_shape = R.conv_transpose2d_output_shape((n, cin, H, W), w_shape, stride, padding, output_padding)
    except ValueError:  # the padding crops the whole output
        padding = 0
        y_shape = R.conv_transpose2d_output_shape((n, cin, H, W), w_shape, stride, padding, output_padding)
    return dict(x_shape=(n, cin, H, W), w_shape=w_shape, y_shape=y_shape,
                params=dict(stride=stride, padding=padding, output_padding=output_padding))


def make_conv_transpose(draw, dtype, n):
    g = _transpose_geometry(draw, n)
    b = draw(st.sampled_from([None, "bias"]))
    return dict(x=_arr(draw, g["x_shape"], dtype), w=_arr(draw, g["w_shape"], dtype),
                b=None if b is None else _arr(draw, g["y_shape"][1:2], dtype), **g["params"])


def make_conv_transpose_backward_input(draw, dtype, n):
    g = _transpose_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), w=_arr(draw, g["w_shape"], dtype), input_shape=g["x_shape"],
                **g["params"])


def make_conv_transpose_backward_weight(draw, dtype, n):
    g = _transpose_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype), weight_shape=g["w_shape"],
                **g["params"])


def make_conv_transpose_backward(draw, dtype, n):
    g = _transpose_geometry(draw, n)
    return dict(dy=_arr(draw, g["y_shape"], dtype), x=_arr(draw, g["x_shape"], dtype),
                w=_arr(draw, g["w_shape"], dtype), **g["params"])


def make_conv_transpose_layer(draw, dtype, n):
    g = _transpose_geometry(draw, n)
    cin, cout, kh, kw = g["w_shape"]
    return dict(in_channels=cin, out_channels=cout, kernel_size=(kh, kw), bias=draw(st.booleans()), dtype=dtype,
                x=_arr(draw, g["x_shape"], dtype), dout=_arr(draw, g["y_shape"], dtype), **g["params"])


_TRANSPOSE_ARGS = ("stride", "padding", "output_padding", "groups", "dilation")


def _transpose_kw(a):
    return {k: a[k] for k in _TRANSPOSE_ARGS if k in a}


def _conv_transpose_layer_call(a):
    layer = nn.ConvTranspose2d(a["in_channels"], a["out_channels"], a["kernel_size"], bias=a["bias"],
                               dtype=a["dtype"], rng=0, **_transpose_kw(a))
    y = layer(a["x"])
    dx = layer.backward(a["dout"])
    return y, dx, layer.weight.grad, layer.weight.data, None if layer.bias is None else layer.bias.data


def _conv_transpose_layer_ref(a, got):
    w, b = got[3], got[4]
    dx, dw, _ = R.conv_transpose2d_backward(a["dout"], a["x"], w, **_transpose_kw(a))
    return R.conv_transpose2d(a["x"], w, b, **_transpose_kw(a)), dx, dw, w, b


def make_conv_layer_padded(draw, dtype, n):
    """:func:`make_conv_layer` with a padding mode (replicate where the input is too small to reflect or wrap)."""
    a = make_conv_layer(draw, dtype, n)
    mode = draw(st.sampled_from(ODD["padding_mode"]))
    (ph, pw), (H, W) = R._pair(a["padding"]), a["x"].shape[2:]
    fits = {"reflect": ph < H and pw < W, "circular": ph <= H and pw <= W}.get(mode, True)  # PyTorch's F.pad
    a["padding_mode"] = mode if fits else "replicate"
    return a


def _conv_layer_padded_call(a):
    layer = nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"],
                      bias=a["bias"], padding_mode=a["padding_mode"], dtype=a["dtype"], rng=0)
    y = layer(a["x"])
    dx = layer.backward(a["dout"])
    return y, dx, layer.weight.grad, layer.weight.data, None if layer.bias is None else layer.bias.data


_NUMPY_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv_layer_padded_ref(a, got):
    """NumPy's np.pad, the reference convolution without padding, and the pad's adjoint by np.add.at on an index map."""
    w, b = got[3], got[4]
    ph, pw = R._pair(a["padding"])
    x, mode = a["x"], _NUMPY_PAD[a["padding_mode"]]
    N, C, H, W = x.shape
    widths = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    dxp, dw, _ = R.conv2d_backward(a["dout"], np.pad(x, widths, mode), w, a["stride"], 0)
    source = np.pad(np.arange(H * W).reshape(H, W), widths[2:], mode,
                    **({"constant_values": -1} if mode == "constant" else {}))  # -1: a zero of the padding
    dx = np.zeros((N, C, H * W), dtype=dxp.dtype)
    keep = source.ravel() >= 0
    np.add.at(dx, (slice(None), slice(None), source.ravel()[keep]), dxp.reshape(N, C, source.size)[:, :, keep])
    return R.conv2d(np.pad(x, widths, mode), w, b, a["stride"], 0), dx.reshape(x.shape), dw, w, b


TRANSPOSE_PARAMS = {"stride": "positive", "padding": "nonneg", "output_padding": "nonneg", **GENERAL_PARAMS}
TABLE += [
    Entry("conv_transpose2d", make_conv_transpose, lambda a: F.conv_transpose2d(**a),
          lambda a, got: R.conv_transpose2d(a["x"], a["w"], a["b"], **_transpose_kw(a)), TRANSPOSE_PARAMS,
          ("x", "w", "b"), optional=("b",)),
    Entry("conv_transpose2d_backward_input", make_conv_transpose_backward_input,
          lambda a: F.conv_transpose2d_backward_input(**a),
          lambda a, got: R.conv_transpose2d_backward_input(a["dy"], a["w"], a["input_shape"], **_transpose_kw(a)),
          {**TRANSPOSE_PARAMS, "input_shape": "shape4"}, ("dy", "w")),
    Entry("conv_transpose2d_backward_weight", make_conv_transpose_backward_weight,
          lambda a: F.conv_transpose2d_backward_weight(**a),
          lambda a, got: R.conv_transpose2d_backward_weight(a["dy"], a["x"], a["weight_shape"], **_transpose_kw(a)),
          {**TRANSPOSE_PARAMS, "weight_shape": "shape4"}, ("dy", "x")),
    Entry("conv_transpose2d_backward", make_conv_transpose_backward, lambda a: F.conv_transpose2d_backward(**a),
          lambda a, got: R.conv_transpose2d_backward(a["dy"], a["x"], a["w"], **_transpose_kw(a)), TRANSPOSE_PARAMS,
          ("dy", "x", "w")),
    Entry("ConvTranspose2d", make_conv_transpose_layer, _conv_transpose_layer_call, _conv_transpose_layer_ref,
          {**TRANSPOSE_PARAMS, "in_channels": "positive", "out_channels": "positive", "kernel_size": "positive",
           "bias": "bool", "dtype": "dtype"}, ("x", "dout")),
    Entry("Conv2d", make_conv_layer_padded, _conv_layer_padded_call, _conv_layer_padded_ref,
          {**CONV_PARAMS, "padding_mode": "padding_mode"}, ("x", "dout")),
]


# --------------------------------------------------------------------------- pooling variants, batch norm,
# activations, losses (and their layers)

BAD["real"] = ["0.1", None, object(), [0.1], 1 + 0j, (0.1,)]
ODD["real"] = [0.0, -0.5, 2, np.float32(0.2), np.int64(1), NAN, INF, 1e300]
BAD["nonneg_real"] = BAD["real"] + [-1.0, -1e-9, -INF]
ODD["nonneg_real"] = [0.0, 1e-3, 1, np.float32(0.1), INF]
BAD["approximate"] = ["TANH", "tanh ", "None", None, 1, True]
ODD["approximate"] = ["tanh", "none"]
BAD["dim_or_none"] = [v for v in BAD["dim"] if v is not None]
ODD["dim_or_none"] = ODD["dim"] + [None]
BAD["nonzero_or_none"] = [v for v in NOT_INTS if v is not None] + [0, 2**64, (1, 2), [2]]  # PyTorch: any int but 0
ODD["nonzero_or_none"] = [np.int64(2), 1, -1, -3, None, 2**40]
BAD["int"] = [v for v in NOT_INTS if v is not None] + [2**64, -(2**64)]
ODD["int"] = [np.int64(0), -1, 0, 1, 2**40, -(2**40)]
BAD["output_size"] = [-1, 1.5, "2", True, (1, 2, 3), (1,), (2, -1), (1.5, 1), object(), NAN]
ODD["output_size"] = [0, np.int64(2), [2, 1], (None, 2), (2, None), None, (0, 1), 2**40, 1, 5]
BAD["module"] = [None, 1, "relu", object(), nn.ReLU, np.zeros(2)]
ODD["module"] = []
BAD["module_or_none"] = [1, "relu", object(), nn.ReLU, np.zeros(2)]
ODD["module_or_none"] = [None, nn.Identity(), nn.ReLU()]


def _pool_variant_geometry(draw, n, dilation):
    """:func:`_pool_geometry` plus ``ceil_mode`` (and a ``dilation`` for max-pooling), refit so the window fits."""
    g = _pool_geometry(draw, n)
    g["ceil_mode"] = draw(st.booleans())
    if dilation:
        g["dilation"] = draw(st.sampled_from([1, 2, (1, 2)]))
    try:
        _pool_out(g["x_shape"], g["kernel_size"], g["stride"], g["padding"], g.get("dilation", 1), g["ceil_mode"])
    except ValueError:
        g["dilation"] = 1 if dilation else None
        g.pop("dilation") if g["dilation"] is None else None
    return g


def _pool_out(x_shape, kernel, stride, padding, dilation=1, ceil_mode=False):
    k2, p2, d2 = R._pair(kernel), R._pair(padding), R._pair(dilation)
    s2 = k2 if stride is None else R._pair(stride)
    return tuple(R._pool_output_size(int(x_shape[2 + i]), k2[i], s2[i], p2[i], d2[i], ceil_mode) for i in range(2))


def make_max_pool_variant(draw, dtype, n):
    g = _pool_variant_geometry(draw, n, True)
    return dict(x=_arr(draw, g.pop("x_shape"), dtype), **g)


def make_max_pool_variant_backward(draw, dtype, n):
    g = make_max_pool_variant(draw, dtype, n)
    y, idx = R.max_pool2d(**g)
    return dict(dy=_arr(draw, y.shape, dtype), indices=idx, input_shape=g["x"].shape)


def make_max_pool_variant_plan(draw, dtype, n):
    g = _pool_variant_geometry(draw, n, True)
    return dict(dtype=dtype, **g)


def _avg_geometry(draw, n):
    g = _pool_variant_geometry(draw, n, False)
    g["count_include_pad"] = draw(st.booleans())
    g["divisor_override"] = draw(st.sampled_from([None, None, 1, 3]))
    return g


def make_avg_pool(draw, dtype, n):
    g = _avg_geometry(draw, n)
    return dict(x=_arr(draw, g.pop("x_shape"), dtype), **g)


def make_avg_pool_backward(draw, dtype, n):
    g = _avg_geometry(draw, n)
    x_shape = g.pop("x_shape")
    y_shape = x_shape[:2] + _pool_out(x_shape, g["kernel_size"], g["stride"], g["padding"], 1, g["ceil_mode"])
    return dict(dy=_arr(draw, y_shape, dtype), input_shape=x_shape, **g)


def make_avg_pool_plan(draw, dtype, n):
    g = _avg_geometry(draw, n)
    return dict(dtype=dtype, **g)


def _pool_plan_y_shape(plan):
    g = plan.geometry
    return g.N, g.C, g.Ho, g.Wo


def _pool_variant_plan_ref(a, got):
    N, C = (int(v) for v in a["x_shape"][:2])
    assert N >= 0 and C >= 1, "invalid shape"
    k2, p2 = R._pair(a["kernel_size"]), R._pair(a["padding"])
    assert p2[0] <= k2[0] // 2 and p2[1] <= k2[1] // 2, "pool padding"
    if a.get("divisor_override") is not None:
        assert int(a["divisor_override"]) != 0
    return (N, C) + _pool_out(a["x_shape"], a["kernel_size"], a["stride"], a["padding"], a.get("dilation", 1),
                              a["ceil_mode"])


def _adaptive_size(draw):
    ho, wo = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return draw(st.sampled_from([(ho, wo), ho, (ho, None), (None, wo)]))


def make_adaptive(draw, dtype, n):
    shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return dict(x=_arr(draw, shape, dtype), output_size=_adaptive_size(draw))


def make_adaptive_max(draw, dtype, n):
    return dict(make_adaptive(draw, dtype, n), return_indices=draw(st.booleans()))


def make_adaptive_avg_backward(draw, dtype, n):
    g = make_adaptive(draw, dtype, n)
    y_shape = g["x"].shape[:2] + R._output_pair(g["output_size"], g["x"].shape)
    return dict(dy=_arr(draw, y_shape, dtype), input_shape=g["x"].shape)


def make_adaptive_max_backward(draw, dtype, n):
    g = make_adaptive(draw, dtype, n)
    y, idx = R.adaptive_max_pool2d(g["x"], g["output_size"])
    return dict(dy=_arr(draw, y.shape, dtype), indices=idx, input_shape=g["x"].shape)


def _adaptive_max_ref(a, got):
    y, idx = R.adaptive_max_pool2d(a["x"], a["output_size"])
    return (y, idx) if a["return_indices"] else y


def _bn_shape(draw, n):
    return (n, draw(st.integers(1, 3))) + tuple(draw(st.lists(st.integers(1, 3), max_size=2)))


def make_batch_norm(draw, dtype, n):
    shape = _bn_shape(draw, n)
    C = shape[1]
    training = draw(st.booleans()) and n * math.prod(shape[2:]) > 1
    affine = draw(st.booleans())
    stats = not training or draw(st.booleans())
    return dict(x=_arr(draw, shape, dtype), running_mean=_arr(draw, (C,), dtype) if stats else None,
                running_var=np.abs(_arr(draw, (C,), dtype)) if stats else None,
                weight=_arr(draw, (C,), dtype) if affine else None, bias=_arr(draw, (C,), dtype) if affine else None,
                training=training, momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.5])),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])))


def _batch_norm_call(a):
    a = dict(a)
    if a["training"] is True or a["training"] is np.True_:  # updated in place: the caller's copies are compared
        for k in ("running_mean", "running_var"):
            if isinstance(a[k], np.ndarray):
                a[k] = a[k].copy()
    y = F.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], training=a["training"],
                     momentum=a["momentum"], eps=a["eps"])
    return y, a["running_mean"], a["running_var"]


def _batch_norm_ref(a, got):
    y, rm, rv = R.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], bool(a["training"]),
                             float(a["momentum"]), float(a["eps"]))
    if a["x"].size == 0 or not a["training"]:  # an empty batch leaves the running statistics unchanged
        rm, rv = a["running_mean"], a["running_var"]
    return y, rm, rv


def make_batch_norm_backward(draw, dtype, n):
    shape = _bn_shape(draw, n)
    C = shape[1]
    training = draw(st.booleans()) and n * math.prod(shape[2:]) > 1
    x = _arr(draw, shape, dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    eps = 1e-5
    if training:
        mean, var = x.astype(np.float64).mean(axis=axes), x.astype(np.float64).var(axis=axes)
    else:
        mean, var = _arr(draw, (C,), np.float64), np.abs(_arr(draw, (C,), np.float64))
    return dict(dy=_arr(draw, shape, dtype), x=x, mean=mean, invstd=1 / np.sqrt(var + eps), var=var,
                weight=_arr(draw, (C,), dtype) if draw(st.booleans()) else None, training=training)


def _batch_norm_backward_ref(a, got):
    if a["training"] and not np.isfinite(a["x"]).all():
        # The reference recomputes the batch's statistics from x (NaN with an infinite x); the call uses the
        # statistics it is given, as PyTorch's native_batch_norm_backward does: that is the arbiter here
        # (without torch there is none, and the call's result stands).
        if torch is None:
            return got
        t = {k: torch.from_numpy(np.array(a[k], order="C")) for k in ("dy", "x")}
        w = None if a["weight"] is None else torch.from_numpy(np.array(a["weight"]))
        out = torch.ops.aten.native_batch_norm_backward(
            t["dy"], t["x"], w, None, None, torch.from_numpy(a["mean"]).to(t["x"].dtype),
            torch.from_numpy(a["invstd"]).to(t["x"].dtype), True, 1e-5, [True, True, True])
        return tuple(o.numpy() for o in out)
    return R.batch_norm_backward(a["dy"], a["x"], a["weight"], a["mean"], a["var"], bool(a["training"]))


def make_unary(draw, dtype, n, **params):
    return dict(x=_arr(draw, _any_shape(draw, n), dtype), **{k: draw(v) for k, v in params.items()})


def make_unary_backward(draw, dtype, n, **params):
    shape = _any_shape(draw, n)
    return dict(dy=_arr(draw, shape, dtype), x=_arr(draw, shape, dtype), **{k: draw(v) for k, v in params.items()})


SLOPE = st.sampled_from([0.01, 0.2, -0.5, 1.0, 0.0])
APPROX = st.sampled_from(["none", "tanh"])
ACTIVATIONS = [  # name, layer, its parameter (or None), the parameter's kind and values
    ("leaky_relu", "LeakyReLU", "negative_slope", "real", SLOPE),
    ("elu", "ELU", "alpha", "real", SLOPE),
    ("gelu", "GELU", "approximate", "approximate", APPROX),
    ("silu", "SiLU", None, None, None),
    ("sigmoid", "Sigmoid", None, None, None),
    ("tanh", "Tanh", None, None, None),
]


def _activation_entries(name, layer, param, kind, values):
    extra = {} if param is None else {param: values}
    params = {} if param is None else {param: kind}
    fwd, bwd = getattr(R, name), getattr(R, name + "_backward")
    p = () if param is None else (param,)

    def layer_call(a):
        m = getattr(nn, layer)(*(a[k] for k in p))
        y = m(a["x"])
        return y, m.backward(a["dy"])

    return [
        Entry(name, lambda draw, dtype, n: make_unary(draw, dtype, n, **extra), lambda a: getattr(F, name)(**a),
              _ref(fwd, "x", *p), params, ("x",), fixed_ndim=False),
        Entry(name + "_backward", lambda draw, dtype, n: make_unary_backward(draw, dtype, n, **extra),
              lambda a: getattr(F, name + "_backward")(**a), _ref(bwd, "dy", "x", *p), params, ("dy", "x"),
              fixed_ndim=False),
        Entry(layer, lambda draw, dtype, n: make_unary_backward(draw, dtype, n, **extra), layer_call,
              lambda a, got: (fwd(a["x"], *(a[k] for k in p)), bwd(a["dy"], a["x"], *(a[k] for k in p))), params,
              ("x", "dy"), fixed_ndim=False),
    ]


def _softmax_dim(x, dim):
    """PyTorch's implicit softmax dimension (``_get_softmax_dim``) when ``dim`` is None."""
    return (0 if x.ndim in (0, 1, 3) else 1) if dim is None else dim


def _make_softmax(with_dy, allow_none):
    def make(draw, dtype, n):
        g = (make_unary_backward if with_dy else make_unary)(draw, dtype, n)
        nd = g["x"].ndim
        g["dim"] = draw(st.sampled_from(list(range(-nd, nd)) + ([None] if allow_none else [])))
        return g
    return make


def _softmax_entries(name, layer):
    fwd, bwd = getattr(R, name), getattr(R, name + "_backward")

    def layer_call(a):
        m = getattr(nn, layer)(a["dim"])
        y = m(a["x"])
        return y, m.backward(a["dy"])

    return [
        Entry(name, _make_softmax(False, True), lambda a: getattr(F, name)(**a),
              lambda a, got: fwd(a["x"], _softmax_dim(a["x"], a["dim"])), {"dim": "dim_or_none"}, ("x",),
              fixed_ndim=False),
        Entry(name + "_backward", _make_softmax(True, False), lambda a: getattr(F, name + "_backward")(**a),
              _ref(bwd, "dy", "x", "dim"), {"dim": "dim"}, ("dy", "x"), fixed_ndim=False),
        Entry(layer, _make_softmax(True, True), layer_call,
              lambda a, got: (fwd(a["x"], _softmax_dim(a["x"], a["dim"])),
                              bwd(a["dy"], a["x"], _softmax_dim(a["x"], a["dim"]))),
              {"dim": "dim_or_none"}, ("x", "dy"), fixed_ndim=False),
    ]


try:
    import torch
except ImportError:  # the loss gradients' reference is PyTorch's autograd: without it they are not fuzzed
    torch = None

REDUCTION = st.sampled_from(["mean", "sum", "none"])


def _loss_grad_ref(torch_name, a, **kw):
    """PyTorch's autograd gradient of ``torch.nn.functional.<torch_name>`` times ``dout`` (the reference for the
    loss gradients, which :mod:`fastconv.reference` does not write out)."""
    t = {k: (torch.from_numpy(np.array(v, order="C")) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    inp = torch.from_numpy(np.array(a["input"], order="C")).requires_grad_(True)
    target = np.array(a["target"], order="C")
    target = target.astype(np.int64) if target.dtype.kind in "iu" else target  # PyTorch's class index: int64
    loss = getattr(torch.nn.functional, torch_name)(inp, torch.from_numpy(target),
                                                    reduction=a["reduction"], **t)
    dout = a["dout"]
    loss.backward(torch.as_tensor(np.array(dout, order="C"), dtype=loss.dtype).expand_as(loss))
    return inp.grad.numpy()


def _dout(draw, dtype, reduction, shape):
    return _arr(draw, shape, dtype) if reduction == "none" else draw(st.sampled_from([1.0, -0.5, 2.0]))


def make_regression(draw, dtype, n, backward=False):
    shape = _any_shape(draw, n)
    a = dict(input=_arr(draw, shape, dtype), target=_arr(draw, shape, dtype), reduction=draw(REDUCTION))
    return dict(a, dout=_dout(draw, dtype, a["reduction"], shape)) if backward else a


def _classes(draw, dtype, n):
    C = draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    target = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, C, (n,) + spatial)
    ignore = draw(st.sampled_from([-100, 0, 1]))
    weight = np.abs(_arr(draw, (C,), dtype)) if draw(st.booleans()) else None
    return dict(input=_arr(draw, (n, C) + spatial, dtype), target=target, weight=weight, ignore_index=ignore,
                reduction=draw(REDUCTION))


def make_nll(draw, dtype, n, backward=False, smoothing=False):
    a = _classes(draw, dtype, n)
    if smoothing:
        a["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    return dict(a, dout=_dout(draw, dtype, a["reduction"], a["target"].shape)) if backward else a


def make_bce(draw, dtype, n, backward=False):
    shape = (n, draw(st.integers(1, 4)))
    a = dict(input=_arr(draw, shape, dtype), target=np.random.default_rng(draw(st.integers(0, 9))).random(shape)
             .astype(dtype), reduction=draw(REDUCTION),
             weight=draw(st.sampled_from([None, shape[1:], shape])), pos_weight=draw(st.sampled_from([None, shape[1:]])))
    for k in ("weight", "pos_weight"):
        a[k] = None if a[k] is None else np.abs(_arr(draw, a[k], dtype))
    return dict(a, dout=_dout(draw, dtype, a["reduction"], shape)) if backward else a


LOSS_PARAMS = {"reduction": "reduction"}
CLASS_PARAMS = {"reduction": "reduction", "ignore_index": "int"}
LOSSES = [  # functional name, layer, make, arrays, int arrays, params, optional arrays, torch's name
    ("mse_loss", "MSELoss", make_regression, ("input", "target"), (), LOSS_PARAMS, (), "mse_loss"),
    ("l1_loss", "L1Loss", make_regression, ("input", "target"), (), LOSS_PARAMS, (), "l1_loss"),
    ("nll_loss", "NLLLoss", make_nll, ("input", "weight"), ("target",), CLASS_PARAMS, ("weight",), "nll_loss"),
    ("cross_entropy", None, lambda draw, dtype, n, backward=False: make_nll(draw, dtype, n, backward, True),
     ("input", "weight"), ("target",), {**CLASS_PARAMS, "label_smoothing": "probability"}, ("weight",),
     "cross_entropy"),
    ("binary_cross_entropy_with_logits", "BCEWithLogitsLoss", make_bce, ("input", "target", "weight", "pos_weight"),
     (), LOSS_PARAMS, ("weight", "pos_weight"), "binary_cross_entropy_with_logits"),
]


def _loss_entries(name, layer, make, arrays, int_arrays, params, optional, torch_name):
    fwd = getattr(R, name)
    extra = [k for k in ("weight", "ignore_index", "label_smoothing", "pos_weight") if k in params or k in optional]

    def ref(a, got):
        return _loss_dtype(a, fwd(a["input"], a["target"], reduction=a["reduction"], **{k: a[k] for k in extra}))

    def grad_ref(a, got):
        return _loss_grad_ref(torch_name, a, **{k: a[k] for k in extra})

    def layer_call(a):
        m = getattr(nn, layer)(reduction=a["reduction"], **{k: a[k] for k in extra})
        loss = m(a["input"], a["target"])
        return loss, m.backward(a["dout"])

    common = dict(fixed_ndim=False, optional=optional, int_arrays=int_arrays, empty_ok=not int_arrays)
    entries = [Entry(name, make, lambda a: getattr(F, name)(**a), ref, params, arrays, **common)]
    if torch is None:
        return entries
    back = lambda draw, dtype, n: make(draw, dtype, n, backward=True)  # noqa: E731
    entries.append(Entry(name + "_backward", back, lambda a: getattr(F, name + "_backward")(**a), grad_ref, params,
                         arrays + ("dout",), **common))
    if layer is not None:
        entries.append(Entry(layer, back, layer_call, lambda a, got: (ref(a, got), grad_ref(a, got)), params,
                             arrays + ("dout",), **common))
    return entries


def _pool_layer_call(cls, ctor):
    def call(a):
        m = getattr(nn, cls)(*(a[k] for k in ctor))
        y = m(a["x"])
        return y, m.backward(a["dy"])
    return call


def _with_dy(make, ref_fwd):
    def wrapped(draw, dtype, n):
        a = make(draw, dtype, n)
        return dict(a, dy=_arr(draw, ref_fwd(a).shape, dtype))
    return wrapped


AVG_KEYS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
AVG_PARAMS = {**POOL_PARAMS, "ceil_mode": "bool", "count_include_pad": "bool", "divisor_override": "nonzero_or_none"}
MAXV_KEYS = ("kernel_size", "stride", "padding", "dilation")
MAXV_PARAMS = {**POOL_PARAMS, "dilation": "positive", "ceil_mode": "bool"}
_avg_fwd = lambda a: R.avg_pool2d(a["x"], *(a[k] for k in AVG_KEYS))  # noqa: E731
_adaptive_max_fwd = lambda a: R.adaptive_max_pool2d(a["x"], a["output_size"])  # noqa: E731


def _bn_layer_make(ndims):
    def make(draw, dtype, n):
        C = draw(st.integers(1, 3))
        shape = (max(n, 2), C) + tuple(draw(st.integers(1, 3)) for _ in range(draw(st.sampled_from(ndims)) - 2))
        return dict(num_features=C, eps=draw(st.sampled_from([1e-5, 0.1])), momentum=draw(st.sampled_from([0.1, 1.0])),
                    affine=draw(st.booleans()), track_running_stats=draw(st.booleans()), dtype=dtype,
                    x=_arr(draw, shape, dtype), dout=_arr(draw, shape, dtype))
    return make


def _bn_layer_call(cls):
    def call(a):
        m = getattr(nn, cls)(a["num_features"], a["eps"], a["momentum"], a["affine"], a["track_running_stats"],
                             a["dtype"])
        y = m(a["x"])
        return y, m.backward(a["dout"]), m.running_mean, m.running_var
    return call


def _bn_layer_ref(a, got):
    dt = np.dtype(a["dtype"])
    C = int(a["num_features"])
    rm, rv = (np.zeros(C, dt), np.ones(C, dt)) if a["track_running_stats"] else (None, None)
    y, rm, rv = R.batch_norm(a["x"], rm, rv, None, None, True, float(a["momentum"]), float(a["eps"]))
    dx = R.batch_norm_backward(a["dout"], a["x"], None, None, None, True, float(a["eps"]))[0]
    return y, dx, rm, rv


def _residual_make(draw, dtype, n):
    a = make_unary_backward(draw, dtype, n)
    return dict(a, body=nn.ReLU(), shortcut=draw(st.sampled_from([None, "identity"])))


def _residual_call(a):
    shortcut = nn.Identity() if isinstance(a["shortcut"], str) and a["shortcut"] == "identity" else a["shortcut"]
    m = nn.Residual(a["body"], shortcut)
    y = m(a["x"])
    return y, m.backward(a["dy"])


def _residual_ref(a, got):
    assert isinstance(a["body"], (nn.ReLU, nn.Identity)), "body"
    body = (R.relu, R.relu_backward) if isinstance(a["body"], nn.ReLU) else (lambda x: x, lambda dy, x: dy)
    if isinstance(a["shortcut"], nn.ReLU):
        return body[0](a["x"]) + R.relu(a["x"]), body[1](a["dy"], a["x"]) + R.relu_backward(a["dy"], a["x"])
    return body[0](a["x"]) + a["x"], body[1](a["dy"], a["x"]) + a["dy"]


def _identity_call(a):
    m = nn.Identity(*a["ignored"])
    y = m(a["x"])
    return y, m.backward(a["dy"])


ODD["module"] = [nn.Identity()]
ODD["ignored"] = [(), (1, "a"), (None,)]
BAD["ignored"] = [1, "a", None]  # Identity ignores its arguments (lenient): any of them is fine
BAD["flag"], ODD["flag"] = BAD["bool"], []  # a flag the drawn arrays depend on: only refused values

TABLE += [
    Entry("max_pool2d", make_max_pool_variant, lambda a: F.max_pool2d(**a),
          _ref(R.max_pool2d, "x", *MAXV_KEYS, "ceil_mode"), MAXV_PARAMS, ("x",)),
    Entry("max_pool2d_backward", make_max_pool_variant_backward,
          lambda a: F.max_pool2d_backward(**a), _ref(R.max_pool2d_backward, "dy", "indices", "input_shape"),
          {"input_shape": "shape4"}, ("dy",), int_arrays=("indices",)),
    Entry("max_pool2d_plan", make_max_pool_variant_plan,
          lambda a: _plan_y_shape(F.max_pool2d_plan(**a)), _pool_variant_plan_ref,
          {**MAXV_PARAMS, "x_shape": "shape4", "dtype": "dtype"}),
    Entry("MaxPool2d", _with_dy(make_max_pool_variant, lambda a: R.max_pool2d(**a)[0]),
          lambda a: _pool_layer_call("MaxPool2d", MAXV_KEYS + ("return_indices", "ceil_mode"))(
              dict(a, return_indices=False)),
          lambda a, got: (lambda y, i: (y, R.max_pool2d_backward(a["dy"], i, a["x"].shape)))(
              *R.max_pool2d(a["x"], *(a[k] for k in MAXV_KEYS), a["ceil_mode"])), MAXV_PARAMS, ("x", "dy")),
    Entry("avg_pool2d", make_avg_pool, lambda a: F.avg_pool2d(**a), lambda a, got: _avg_fwd(a), AVG_PARAMS, ("x",)),
    Entry("avg_pool2d_backward", make_avg_pool_backward, lambda a: F.avg_pool2d_backward(**a),
          _ref(R.avg_pool2d_backward, "dy", "input_shape", *AVG_KEYS), {**AVG_PARAMS, "input_shape": "shape4"},
          ("dy",)),
    Entry("avg_pool2d_plan", make_avg_pool_plan, lambda a: _pool_plan_y_shape(F.avg_pool2d_plan(**a)),
          _pool_variant_plan_ref, {**AVG_PARAMS, "x_shape": "shape4", "dtype": "dtype"}),
    Entry("AvgPool2d", _with_dy(make_avg_pool, _avg_fwd), _pool_layer_call("AvgPool2d", AVG_KEYS),
          lambda a, got: (_avg_fwd(a), R.avg_pool2d_backward(a["dy"], a["x"].shape, *(a[k] for k in AVG_KEYS))),
          AVG_PARAMS, ("x", "dy")),
    Entry("adaptive_avg_pool2d", make_adaptive, lambda a: F.adaptive_avg_pool2d(**a),
          _ref(R.adaptive_avg_pool2d, "x", "output_size"), {"output_size": "output_size"}, ("x",)),
    Entry("adaptive_avg_pool2d_backward", make_adaptive_avg_backward, lambda a: F.adaptive_avg_pool2d_backward(**a),
          _ref(R.adaptive_avg_pool2d_backward, "dy", "input_shape"), {"input_shape": "shape4"}, ("dy",)),
    Entry("AdaptiveAvgPool2d", _with_dy(make_adaptive, lambda a: R.adaptive_avg_pool2d(a["x"], a["output_size"])),
          _pool_layer_call("AdaptiveAvgPool2d", ("output_size",)),
          lambda a, got: (R.adaptive_avg_pool2d(a["x"], a["output_size"]),
                          R.adaptive_avg_pool2d_backward(a["dy"], a["x"].shape)), {"output_size": "output_size"},
          ("x", "dy")),
    Entry("adaptive_max_pool2d", make_adaptive_max, lambda a: F.adaptive_max_pool2d(**a), _adaptive_max_ref,
          {"output_size": "output_size", "return_indices": "bool"}, ("x",)),
    Entry("adaptive_max_pool2d_backward", make_adaptive_max_backward, lambda a: F.adaptive_max_pool2d_backward(**a),
          _ref(R.max_pool2d_backward, "dy", "indices", "input_shape"), {"input_shape": "shape4"}, ("dy",),
          int_arrays=("indices",)),
    Entry("AdaptiveMaxPool2d", _with_dy(make_adaptive, lambda a: _adaptive_max_fwd(a)[0]),
          _pool_layer_call("AdaptiveMaxPool2d", ("output_size",)),
          lambda a, got: (lambda y, i: (y, R.max_pool2d_backward(a["dy"], i, a["x"].shape)))(*_adaptive_max_fwd(a)),
          {"output_size": "output_size"}, ("x", "dy")),
    Entry("batch_norm", make_batch_norm, _batch_norm_call, _batch_norm_ref,
          {"training": "bool", "momentum": "real", "eps": "nonneg_real"},
          ("x", "running_mean", "running_var", "weight", "bias"), fixed_ndim=False,
          optional=("running_mean", "running_var", "weight", "bias")),
    Entry("batch_norm_backward", make_batch_norm_backward,
          lambda a: F.batch_norm_backward(a["dy"], a["x"], a["mean"], a["invstd"], a["weight"], a["training"]),
          _batch_norm_backward_ref, {"training": "flag"}, ("dy", "x", "weight"), fixed_ndim=False,
          optional=("weight",)),
    Entry("BatchNorm1d", _bn_layer_make((2, 3)), _bn_layer_call("BatchNorm1d"), _bn_layer_ref,
          {"num_features": "positive", "eps": "nonneg_real", "affine": "bool", "track_running_stats": "bool",
           "dtype": "dtype"}, ("x", "dout")),
    Entry("BatchNorm2d", _bn_layer_make((4,)), _bn_layer_call("BatchNorm2d"), _bn_layer_ref,
          {"num_features": "positive", "eps": "nonneg_real", "affine": "bool", "track_running_stats": "bool",
           "dtype": "dtype"}, ("x", "dout")),
    Entry("Residual", _residual_make, _residual_call, _residual_ref,
          {"body": "module", "shortcut": "module_or_none"}, ("x", "dy"), fixed_ndim=False, also_named=("ReLU", "Identity")),
    Entry("Identity", lambda draw, dtype, n: dict(make_unary_backward(draw, dtype, n), ignored=()), _identity_call,
          lambda a, got: (a["x"], a["dy"]), {"ignored": "ignored"}, ("x", "dy"), fixed_ndim=False, lenient=True),
]
for _spec in ACTIVATIONS:
    TABLE += _activation_entries(*_spec)
for _name, _layer in (("softmax", "Softmax"), ("log_softmax", "LogSoftmax")):
    TABLE += _softmax_entries(_name, _layer)
for _spec in LOSSES:
    TABLE += _loss_entries(*_spec)


# --------------------------------------------------------------------------- the cs231n drop-in's normalisation
# and dropout (cs231n's rules: momentum weighs the old running value, the running variance is biased; dropout's
# p is the keep probability, its mask np.random's after seeding)

BAD["mode"], ODD["mode"] = ["TRAIN", "eval", "", None, 1, True], ["train", "test"]


def _cs_real(*arrays):
    """The drop-in's conversion of arrays it does not take as data (running statistics, dout): real numbers only."""
    given = [None if a is None else np.asarray(a) for a in arrays]
    assert all(a is None or a.dtype.kind in "biuf" for a in given), "not a real numeric array"
    return [None if a is None else a.astype(np.float64) for a in given]


def _cs_bn_make(spatial):
    def make(draw, dtype, n):
        C = draw(st.integers(1, 3))
        shape = (n, C) + ((draw(st.integers(1, 3)), draw(st.integers(1, 3))) if spatial else ())
        mode = draw(st.sampled_from(["train", "test"]))
        stats = mode == "test" or draw(st.booleans())
        return dict(x=_arr(draw, shape, dtype), gamma=_arr(draw, (C,), dtype), beta=_arr(draw, (C,), dtype),
                    mode=mode, eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                    momentum=draw(st.sampled_from([0.9, 0.0, 1.0, 0.5])),
                    running_mean=_arr(draw, (C,), dtype) if stats else None,
                    running_var=np.abs(_arr(draw, (C,), dtype)) if stats else None, dout=_arr(draw, shape, dtype))
    return make


def _cs_bn_forward(func):
    def call(a):
        bn_param = {"mode": a["mode"], "eps": a["eps"], "momentum": a["momentum"]}
        bn_param.update({k: a[k] for k in ("running_mean", "running_var") if a[k] is not None})
        out, cache = getattr(C, func)(a["x"], a["gamma"], a["beta"], bn_param)
        return out, bn_param["running_mean"], bn_param["running_var"], cache
    return call


def _cs_bn_ref(a, got):
    x, g, b = _cs231n_floats(a["x"], a["gamma"], a["beta"])
    C_ = x.shape[1]
    rm, rv = _cs_real(a["running_mean"], a["running_var"])
    rm, rv = (np.zeros(C_) if r is None else r for r in (rm, rv))
    train, eps, momentum = a["mode"] == "train", float(a["eps"]), float(a["momentum"])
    x64 = x.astype(np.float64)
    y = R.batch_norm(x64, rm, rv, g.astype(np.float64), b.astype(np.float64), train, eps=eps)[0]
    if train:
        axes = (0,) + tuple(range(2, x.ndim))
        rm = (momentum * rm + (1 - momentum) * x64.mean(axis=axes)).astype(x.dtype)
        rv = (momentum * rv + (1 - momentum) * x64.var(axis=axes)).astype(x.dtype)
    else:  # the given statistics are kept as they are (zeros of x's dtype where missing)
        rm, rv = (np.zeros(C_, x.dtype) if a[k] is None else np.asarray(a[k])
                  for k in ("running_mean", "running_var"))
    return y.astype(x.dtype), rm, rv


def _cs_bn_backward(forward, backward):
    def call(a):
        cache = _cs_bn_forward(forward)(a)[3]
        return getattr(C, backward)(a["dout"], cache)
    return call


def _cs_bn_backward_ref(a, got):
    x, g, _ = _cs231n_floats(a["x"], a["gamma"], a["beta"])
    (dout,) = _cs_real(a["dout"])
    rm, rv = _cs_real(a["running_mean"], a["running_var"])
    rm, rv = (np.zeros(x.shape[1]) if r is None else r for r in (rm, rv))
    grads = R.batch_norm_backward(dout, x.astype(np.float64), g.astype(np.float64), rm, rv, a["mode"] == "train",
                                  float(a["eps"]))
    return tuple(v.astype(x.dtype) for v in grads)


def _cs_gn_make(spatial):
    def make(draw, dtype, n):
        G = draw(st.integers(1, 2)) if spatial else 1
        C_ = G * draw(st.integers(1, 2)) if spatial else draw(st.integers(1, 4))
        shape = (n, C_) + ((draw(st.integers(1, 3)), draw(st.integers(1, 3))) if spatial else ())
        vshape = draw(st.sampled_from([(C_,), (1, C_, 1, 1)])) if spatial else (C_,)
        # eps >= 1e-3: dx cancels to 0 for a group of one value, and float32's rounding of terms ~ |dout| / sqrt(eps)
        # (a uint8 dout reaches 255: 1e4 with eps=1e-5, an error of 5e-4, relative 5e-8) exceeds the absolute 2e-4.
        return dict(x=_arr(draw, shape, dtype), gamma=_arr(draw, vshape, dtype), beta=_arr(draw, vshape, dtype),
                    G=G, eps=draw(st.sampled_from([1e-3, 0.1])), dout=_arr(draw, shape, dtype))
    return make


def _cs_gn_forward(func):
    def call(a):
        args = (a["G"],) if func == "spatial_groupnorm_forward" else ()
        return getattr(C, func)(a["x"], a["gamma"], a["beta"], *args, {"eps": a["eps"]})
    return call


def _cs_gn_parts(a):
    x, g, b = _cs231n_floats(a["x"], a["gamma"], a["beta"])
    assert isinstance(a["G"], (int, np.integer)) and not isinstance(a["G"], (bool, np.bool_)), "G"
    C_ = x.shape[1]
    assert x.shape[0] >= 1 and C_ % a["G"] == 0 and g.size == b.size == C_, "shapes"
    return x, g, b, int(a["G"]), float(a["eps"])


def _cs_gn_ref(a, got):
    x, g, b, G, eps = _cs_gn_parts(a)
    C_ = x.shape[1]
    y = R.group_norm(x.astype(np.float64), G, g.reshape(C_).astype(np.float64), b.reshape(C_).astype(np.float64), eps)
    return y.astype(x.dtype)


def _cs_gn_backward(forward, backward):
    def call(a):
        return getattr(C, backward)(a["dout"], _cs_gn_forward(forward)(a)[1])
    return call


def _cs_gn_backward_ref(a, got):
    x, g, b, G, eps = _cs_gn_parts(a)
    (dout,) = _cs_real(a["dout"])
    dx, dg, db = R.group_norm_backward(dout, x.astype(np.float64), G, g.reshape(x.shape[1]).astype(np.float64), eps)
    return dx.astype(x.dtype), dg.reshape(g.shape).astype(x.dtype), db.reshape(g.shape).astype(x.dtype)


def _cs_dropout_make(draw, dtype, n):
    shape = _any_shape(draw, n)
    return dict(x=_arr(draw, shape, dtype), p=draw(st.sampled_from([0.25, 0.5, 1.0])),
                mode=draw(st.sampled_from(["train", "test"])), seed=draw(st.integers(0, 2**32 - 1)),
                dout=_arr(draw, shape, dtype))


def _cs_dropout_forward(a):
    return C.dropout_forward(a["x"], {"p": a["p"], "mode": a["mode"], "seed": a["seed"]})


def _cs_dropout_mask(a, shape):
    """cs231n's mask: ``np.random`` seeded with the given seed, units kept with probability p, scaled by 1 / p."""
    p = float(a["p"])
    assert 0 < p <= 1 and a["mode"] in ("train", "test"), "p or mode"
    if a["mode"] == "test":
        return None
    np.random.seed(a["seed"])
    return (np.random.rand(*shape) < p) / p


def _cs_dropout_ref(a, got):
    (x,) = _cs231n_floats(a["x"])
    mask = _cs_dropout_mask(a, x.shape)
    return x if mask is None else (x * mask).astype(x.dtype)


def _cs_dropout_backward_ref(a, got):
    (x,) = _cs231n_floats(a["x"])
    (dout,) = _cs231n_floats(a["dout"])
    mask = _cs_dropout_mask(a, x.shape)
    if mask is None:  # test mode: the identity's gradient, dout as it is (the cache, cs231n's, keeps no shape)
        return dout
    assert dout.shape == x.shape, "dout's shape"
    return (dout * mask).astype(dout.dtype)


_CS_BN = {"mode": "mode", "eps": "nonneg_real", "momentum": "real"}
_CS_BN_ARRAYS = ("x", "gamma", "beta", "running_mean", "running_var")
_CS = dict(converts=True, empty_ok=False)
for _fwd, _spatial in (("batchnorm_forward", False), ("spatial_batchnorm_forward", True)):
    TABLE.append(Entry(_fwd, _cs_bn_make(_spatial), lambda a, f=_fwd: _cs_bn_forward(f)(a)[:3], _cs_bn_ref, _CS_BN,
                       _CS_BN_ARRAYS, optional=("running_mean", "running_var"), **_CS))
    for _bwd in (_fwd.replace("forward", "backward"),) + (("batchnorm_backward_alt",) if not _spatial else ()):
        TABLE.append(Entry(_bwd, _cs_bn_make(_spatial), _cs_bn_backward(_fwd, _bwd), _cs_bn_backward_ref, _CS_BN,
                           _CS_BN_ARRAYS + ("dout",), optional=("running_mean", "running_var"), also_named=(_fwd,),
                           **_CS))
for _fwd, _spatial in (("layernorm_forward", False), ("spatial_groupnorm_forward", True)):
    _params = {"eps": "nonneg_real", **({"G": "positive"} if _spatial else {})}
    TABLE.append(Entry(_fwd, _cs_gn_make(_spatial), lambda a, f=_fwd: _cs_gn_forward(f)(a)[0], _cs_gn_ref, _params,
                       ("x", "gamma", "beta"), **_CS))
    _bwd = _fwd.replace("forward", "backward")
    TABLE.append(Entry(_bwd, _cs_gn_make(_spatial), _cs_gn_backward(_fwd, _bwd), _cs_gn_backward_ref, _params,
                       ("x", "gamma", "beta", "dout"), also_named=(_fwd,), **_CS))
TABLE += [
    Entry("dropout_forward", _cs_dropout_make, lambda a: _cs_dropout_forward(a)[0], _cs_dropout_ref,
          {"p": "probability", "mode": "mode"}, ("x",), fixed_ndim=False, converts=True),
    Entry("dropout_backward", _cs_dropout_make, lambda a: C.dropout_backward(a["dout"], _cs_dropout_forward(a)[1]),
          _cs_dropout_backward_ref, {"p": "probability", "mode": "mode"}, ("x", "dout"), fixed_ndim=False,
          converts=True, also_named=("dropout_forward",)),
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
    """:func:`distorted_cases`, with every "raise" an "either" for a lenient entry."""
    args, outcome, label = draw(distorted_cases(entry))
    return args, "either" if entry.lenient and outcome == "raise" else outcome, label


@st.composite
def distorted_cases(draw, entry):
    """``(args, outcome, label)``: outcome "ok" (the reference result), "raise", or "either"."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(DISTORTIONS))
    n = 0 if kind == "empty batch" else draw(st.integers(1, 3))
    args = entry.make(draw, dtype, n)
    arrays = _present(args, entry.arrays)
    label = kind
    if kind == "empty batch":
        return args, "ok" if entry.empty_ok else "either", label
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
        if name == "dout" and np.dtype(bad).kind in "iu":  # a loss's upstream gradient: documented as a real
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
        # An upstream gradient ``dout`` of another float dtype may be cast (PyTorch's autograd does).
        mixed = ((len([a for a in arrays if a != "dout"]) > 1 or "dtype" in entry.params) and not entry.converts
                 and name != "dout")
        return args, "raise" if mixed else "either", f"{name} as {np.dtype(other)}"
    if kind == "not an array":
        name = draw(st.sampled_from(arrays + _present(args, entry.int_arrays)))
        value = draw(st.sampled_from([args[name].tolist(), 1.0, "array"]))
        # Labels given as a list (as in NumPy code) may be accepted; float data never.
        lenient = (name in entry.int_arrays or entry.converts) and isinstance(value, list)
        lenient |= name == "dout" and isinstance(value, float)  # a loss's dout may be a scalar, even for 'none'
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
    if not pool and kind_of != "shape4":
        return args, "ok", "valid"
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
        assert any(n in str(exc) for n in (entry.name,) + entry.also_named), f"{entry.name}'s {type(exc).__name__} does not name it ({label}): {exc}"
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
               "conv_relu_backward", "conv_relu_pool_forward", "conv_relu_pool_backward", "softmax_loss", "svm_loss",
               # the sandwiches around the fuzzed batch norm and layer norm wrappers
               "affine_bn_relu_forward", "affine_bn_relu_backward", "affine_ln_relu_forward",
               "affine_ln_relu_backward", "conv_bn_relu_forward", "conv_bn_relu_backward"}
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
