"""Activations: LeakyReLU, ELU, GELU (both forms), SiLU, sigmoid, tanh, softmax and log-softmax.

Each is compared, functional and layer, forward and backward, with the textbook reference
(:mod:`fastconv.reference`), with float64 finite differences and with PyTorch (float32 and
float64, extreme values and NaN included); softmax over every axis of 1- to 4-D inputs,
through both of its kernels (the axis last, and the axis followed by more than one block of
columns). Also: errors, inputs never modified, any memory layout.
"""

import warnings
from typing import NamedTuple

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn
from fastconv import reference as ref

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


class Act(NamedTuple):
    name: str
    kwargs: dict  # the functional's keyword arguments (and the layer's)
    layer: type
    torch_name: str  # torch.nn.functional.<name>


ACTS = [
    Act("leaky_relu", {}, nn.LeakyReLU, "leaky_relu"),
    Act("leaky_relu", {"negative_slope": 0.2}, nn.LeakyReLU, "leaky_relu"),
    Act("elu", {}, nn.ELU, "elu"),
    Act("elu", {"alpha": 0.7}, nn.ELU, "elu"),
    Act("gelu", {}, nn.GELU, "gelu"),
    Act("gelu", {"approximate": "tanh"}, nn.GELU, "gelu"),
    Act("silu", {}, nn.SiLU, "silu"),
    Act("sigmoid", {}, nn.Sigmoid, "sigmoid"),
    Act("tanh", {}, nn.Tanh, "tanh"),
]
ACT_PARAMS = [pytest.param(a, id=a.name + "".join(f"-{k}={v}" for k, v in a.kwargs.items())) for a in ACTS]


def _forward(a, x):
    return getattr(fc, a.name)(x, **a.kwargs)


def _backward(a, dy, x):
    return getattr(fc, a.name + "_backward")(dy, x, **a.kwargs)


def _torch_act(torch, a, tx):
    return getattr(torch.nn.functional, a.torch_name)(tx, **a.kwargs)


def _tol(dtype):
    return (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)


def assert_close_ieee(ours, theirs, dtype, what):
    """Same NaN and infinity positions; finite values within the dtype's tolerance."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    for label, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(test(ours), test(theirs), err_msg=f"{what}: {label} positions")
    rtol, atol = _tol(dtype)
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACT_PARAMS)
def test_activation_matches_reference(act, dtype, rng):
    x = (rng.standard_normal((3, 4, 5)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, dx = _forward(act, x), _backward(act, dy, x)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == x.shape
    ry = getattr(ref, act.name)(x.astype(np.float64), **act.kwargs)
    rdx = getattr(ref, act.name + "_backward")(dy.astype(np.float64), x.astype(np.float64), **act.kwargs)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ry, rtol=rtol, atol=rtol, err_msg="forward")
    np.testing.assert_allclose(dx, rdx, rtol=rtol, atol=rtol, err_msg="backward")


@pytest.mark.parametrize("act", ACT_PARAMS)
def test_activation_gradient_matches_finite_differences(act, rng, numgrad, one_thread):
    x = rng.standard_normal((2, 7)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # away from LeakyReLU's and ELU's kink
    dy = rng.standard_normal(x.shape)
    expected = numgrad(lambda: float((_forward(act, x) * dy).sum()), x)
    np.testing.assert_allclose(_backward(act, dy, x), expected, rtol=1e-7, atol=1e-8)


def _special_values(dtype, rng):
    """200 values: extremes and NaN in the first 48 (where PyTorch's vector loop runs), then normal ones."""
    x = (rng.standard_normal(200) * 4).astype(dtype)
    x[:16] = [1000, -1000, 1e4, -1e4, 88, -88, 30, -30, 1e-30, -1e-30, 0, -0.0, np.nan, np.inf, -np.inf, 5]
    x[16:48] = rng.uniform(-20, 20, 32)
    x[[20, 33, 41]] = np.nan
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACT_PARAMS)
def test_activation_matches_torch_with_extremes_and_nan(act, dtype, rng):
    torch = pytest.importorskip("torch")
    x = _special_values(dtype, rng).reshape(2, 100)
    dy = rng.standard_normal(x.shape).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings
        y, dx = _forward(act, x), _backward(act, dy, x)
    tx = torch.tensor(x, requires_grad=True)
    ty = _torch_act(torch, act, tx)
    ty.backward(torch.from_numpy(dy))
    # At +-inf PyTorch's vector loops disagree with its own scalar ones (GELU(+inf) is NaN in
    # one, inf in the other): infinities are checked against the limits below instead.
    keep = ~np.isinf(x)
    assert_close_ieee(y[keep], ty.detach().numpy()[keep], dtype, "forward")
    assert_close_ieee(dx[keep], tx.grad.numpy()[keep], dtype, "backward")
    assert np.isnan(y[np.isnan(x)]).all() and np.isnan(dx[np.isnan(x)]).sum() >= (act.name != "leaky_relu")


@pytest.mark.parametrize(
    "name, at_minus_inf, at_plus_inf",
    [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0), ("elu", -1.0, np.inf), ("leaky_relu", -np.inf, np.inf),
     ("gelu", np.nan, np.inf), ("silu", np.nan, np.inf)],
)
def test_activation_at_infinities(name, at_minus_inf, at_plus_inf):
    """The limits where they need no ``0 * inf``; GELU and SiLU at -inf are that product (NaN, as IEEE)."""
    np.testing.assert_array_equal(getattr(fc, name)(np.array([-np.inf, np.inf])), [at_minus_inf, at_plus_inf])


def test_sigmoid_family_is_exact_in_its_tails():
    x = np.array([-1000.0, -100.0, 100.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(fc.sigmoid(x), [0.0, np.exp(-100.0), 1.0, 1.0], rtol=4e-16, atol=0)
        np.testing.assert_allclose(fc.sigmoid(np.array([-50.0, 50.0], np.float32)), [np.exp(-50.0), 1.0], rtol=1e-6)
        np.testing.assert_allclose(fc.silu(x), [-0.0, -100 * np.exp(-100.0), 100.0, 1000.0], rtol=4e-16, atol=0)
        np.testing.assert_array_equal(fc.elu(x), [-1.0, -1.0, 100.0, 1000.0])
        assert fc.gelu(np.array([-10.0]))[0] < 0  # x * Phi(x) without the cancellation of 1 + erf


@pytest.mark.parametrize("act", ACT_PARAMS)
def test_activation_layer_matches_functional_and_torch_repr(act, rng):
    torch = pytest.importorskip("torch")
    layer = act.layer(**act.kwargs)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer(x), _forward(act, x))
    np.testing.assert_array_equal(layer.backward(dy), _backward(act, dy, x))
    assert layer.backward(dy, input_grad=False) is None
    tlayer = {"leaky_relu": "LeakyReLU", "elu": "ELU", "gelu": "GELU", "silu": "SiLU", "sigmoid": "Sigmoid",
              "tanh": "Tanh"}[act.name]
    assert repr(layer) == repr(getattr(torch.nn, tlayer)(**act.kwargs))
    assert layer.state_dict() == {}


@pytest.mark.parametrize("act", ACT_PARAMS)
def test_activation_leaves_inputs_alone_and_takes_any_layout(act, rng):
    base = rng.standard_normal((6, 8))
    x = base[::2, ::-3].T  # strided, negative step, transposed
    x.flags.writeable = False
    dy = rng.standard_normal(x.shape).T.copy().T  # Fortran order
    before = (x.copy(), dy.copy())
    y, dx = _forward(act, x), _backward(act, dy, x)
    np.testing.assert_array_equal(y, _forward(act, np.ascontiguousarray(x)))
    np.testing.assert_array_equal(dx, _backward(act, np.ascontiguousarray(dy), np.ascontiguousarray(x)))
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(dy, before[1])
    assert y.flags.c_contiguous and dx.flags.c_contiguous


@pytest.mark.parametrize(
    "call, error, needles",
    [
        (lambda: fc.sigmoid(np.zeros(3, np.int64)), TypeError, ("sigmoid", "x", "float32 or float64")),
        (lambda: fc.tanh([0.0]), TypeError, ("tanh", "x", "ndarray")),
        (lambda: fc.elu_backward(np.zeros(2), np.zeros(3)), ValueError, ("elu_backward", "dy", r"\(3,\)", r"\(2,\)")),
        (lambda: fc.silu_backward(np.zeros(3, np.float32), np.zeros(3)), TypeError, ("silu_backward", "dy", "float32")),
        (lambda: fc.leaky_relu(np.zeros(3), "0.1"), TypeError, ("leaky_relu", "negative_slope")),
        (lambda: fc.elu(np.zeros(3), alpha=True), TypeError, ("elu", "alpha")),
        (lambda: fc.gelu(np.zeros(3), approximate="erf"), ValueError, ("gelu", "approximate", "'erf'")),
        (lambda: nn.GELU("fast"), ValueError, ("GELU", "approximate")),
        (lambda: nn.LeakyReLU(None), TypeError, ("LeakyReLU", "negative_slope")),
        (lambda: nn.ELU(1.0, inplace=1), TypeError, ("ELU", "inplace")),
        (lambda: nn.Sigmoid()(np.zeros(2, np.float16)), TypeError, ("Sigmoid", "float16")),
    ],
    ids=["int-x", "list-x", "dy-shape", "dy-dtype", "slope-str", "alpha-bool", "approximate", "layer-approximate",
         "layer-slope-none", "layer-inplace-int", "layer-f16"],
)
def test_activation_errors_name_the_argument(call, error, needles):
    pattern = "(?s)" + "".join(f"(?=.*{n})" for n in needles)
    with pytest.raises(error, match=pattern):
        call()


def test_activation_layers_check_dout_and_the_cache(rng):
    layer = nn.SiLU()
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros(3))
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"SiLU.*dout.*\(2, 3\)"):
        layer.backward(np.zeros(3))
    with nn.no_grad():
        nn.Tanh()(np.zeros(2))
        sm = nn.Softmax(dim=0)
        sm(np.zeros(2))
    with pytest.raises(RuntimeError, match="no_grad"):
        sm.backward(np.zeros(2))


def test_inplace_is_accepted_and_never_modifies_the_input():
    x = np.array([-1.0, 2.0])
    layer = nn.LeakyReLU(0.5, inplace=True)
    np.testing.assert_array_equal(layer(x), [-0.5, 2.0])
    np.testing.assert_array_equal(x, [-1.0, 2.0])
    assert repr(layer) == "LeakyReLU(negative_slope=0.5, inplace=True)"


# ---------------------------------------------------------------------------------------
# Softmax and log-softmax
# ---------------------------------------------------------------------------------------

# Shapes and axes reaching both kernels: the axis last ("rows"), the axis followed by a few
# columns, and by more than one 256-column block ("columns", with a partial last block).
SOFTMAX_CASES = [((7,), 0), ((5, 9), 1), ((5, 9), 0), ((5, 9), -2), ((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -1),
                 ((2, 3, 2, 5), 2), ((2, 3, 2, 5), 1), ((2, 4, 300), 1), ((3, 1000), 1), ((1, 1), 0)]
SOFTMAX_PARAMS = [pytest.param(s, d, id=f"{'x'.join(map(str, s))}-dim{d}") for s, d in SOFTMAX_CASES]
LOG = [pytest.param(False, id="softmax"), pytest.param(True, id="log_softmax")]


def _sm(log):
    return (fc.log_softmax, fc.log_softmax_backward) if log else (fc.softmax, fc.softmax_backward)


@pytest.mark.parametrize("log", LOG)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SOFTMAX_PARAMS)
def test_softmax_matches_reference_and_torch(shape, dim, dtype, log, rng):
    fwd, bwd = _sm(log)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, dx = fwd(x, dim), bwd(dy, x, dim)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    name = "log_softmax" if log else "softmax"
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, getattr(ref, name)(x64, dim), rtol=rtol, atol=rtol, err_msg="forward")
    np.testing.assert_allclose(dx, getattr(ref, name + "_backward")(dy64, x64, dim), rtol=rtol, atol=rtol,
                               err_msg="backward")
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, name)(tx, dim)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol, err_msg="forward vs torch")
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=rtol, err_msg="backward vs torch")


@pytest.mark.parametrize("log", LOG)
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_softmax_gradient_matches_finite_differences(dim, log, rng, numgrad, one_thread):
    fwd, bwd = _sm(log)
    x = rng.standard_normal((2, 3, 4))
    dy = rng.standard_normal(x.shape)
    expected = numgrad(lambda: float((fwd(x, dim) * dy).sum()), x)
    np.testing.assert_allclose(bwd(dy, x, dim), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("log", LOG)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1], ids=["columns", "rows"])
def test_softmax_extremes_and_nan_match_torch(dim, dtype, log, rng):
    torch = pytest.importorskip("torch")
    rows = [[1e4, -1e4, 0.0, 5.0], [1000.0, 1000.0, -1000.0, 1000.0], [0.0, -1e30, 1.0, 2.0],
            [np.nan, 1.0, 2.0, 3.0], [np.inf, 1.0, 2.0, 3.0], [-np.inf, 1.0, 2.0, 3.0], [-np.inf] * 4]
    x = np.array(rows, dtype=dtype)
    x = x if dim == 1 else np.ascontiguousarray(x.T)
    dy = rng.standard_normal(x.shape).astype(dtype)
    fwd, bwd = _sm(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, dx = fwd(x, dim), bwd(dy, x, dim)
    name = "log_softmax" if log else "softmax"
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, name)(tx, dim)
    ty.backward(torch.from_numpy(dy))
    assert_close_ieee(y, ty.detach().numpy(), dtype, "forward")
    assert_close_ieee(dx, tx.grad.numpy(), dtype, "backward")
    first = y[0] if dim == 1 else y[:, 0]
    assert np.isfinite(first).all()  # huge finite logits stay finite


def test_log_softmax_of_extreme_logits_is_finite():
    y = fc.log_softmax(np.array([0.0, -1e30, 1e30]), dim=0)
    np.testing.assert_array_equal(y, [-1e30, -2e30, 0.0])


@pytest.mark.parametrize("log", LOG)
def test_softmax_layers_match_functional_and_torch(log, rng):
    torch = pytest.importorskip("torch")
    layer = (nn.LogSoftmax if log else nn.Softmax)(dim=-2)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    fwd, bwd = _sm(log)
    np.testing.assert_array_equal(layer(x), fwd(x, -2))
    np.testing.assert_allclose(layer.backward(dy), bwd(dy, x, -2), rtol=1e-6, atol=1e-7)
    assert repr(layer) == repr((torch.nn.LogSoftmax if log else torch.nn.Softmax)(dim=-2))


def test_softmax_implicit_dim_follows_torch(rng):
    torch = pytest.importorskip("torch")
    for shape in [(4,), (3, 4), (2, 3, 4), (2, 3, 4, 5)]:
        x = rng.standard_normal(shape)
        with pytest.warns(UserWarning, match="implicit dimension"):
            ours = fc.softmax(x)
        with pytest.warns(UserWarning):
            expected = torch.nn.functional.softmax(torch.from_numpy(x), dim=None).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-12, err_msg=str(shape))


def test_softmax_of_a_scalar_and_of_an_empty_axis():
    np.testing.assert_array_equal(fc.softmax(np.array(3.0), dim=0), np.array(1.0))
    np.testing.assert_array_equal(fc.log_softmax(np.array(3.0), dim=-1), np.array(0.0))
    assert fc.softmax(np.zeros((0, 3)), dim=1).shape == (0, 3)
    assert fc.softmax_backward(np.zeros((2, 0)), np.zeros((2, 0)), dim=1).shape == (2, 0)


@pytest.mark.parametrize(
    "call, error, needles",
    [
        (lambda: fc.softmax(np.zeros((2, 3)), dim=2), ValueError, ("softmax", "dim", r"\[-2, 2\)", r"\(2, 3\)")),
        (lambda: fc.log_softmax(np.zeros((2, 3)), dim=-3), ValueError, ("log_softmax", "dim", r"\(2, 3\)")),
        (lambda: fc.softmax(np.zeros(3), dim=1.0), TypeError, ("softmax", "dim")),
        (lambda: fc.softmax(np.zeros(3), dim=True), TypeError, ("softmax", "dim")),
        (lambda: fc.softmax_backward(np.zeros((3, 2)), np.zeros((2, 3)), 1), ValueError, ("softmax_backward", "dy")),
        (lambda: nn.Softmax(dim=3)(np.zeros((2, 3))), ValueError, ("Softmax", "dim", r"\(2, 3\)")),
        (lambda: nn.LogSoftmax(dim="1"), TypeError, ("LogSoftmax", "dim")),
    ],
    ids=["dim-too-big", "dim-too-small", "dim-float", "dim-bool", "dy-shape", "layer-dim", "layer-dim-str"],
)
def test_softmax_errors_name_the_argument(call, error, needles):
    pattern = "(?s)" + "".join(f"(?=.*{n})" for n in needles)
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("log", LOG)
def test_softmax_leaves_inputs_alone_and_takes_any_layout(log, rng):
    fwd, bwd = _sm(log)
    x = rng.standard_normal((4, 6, 5))[:, ::-2].transpose(2, 0, 1)
    x.flags.writeable = False
    dy = np.asfortranarray(rng.standard_normal(x.shape))
    before = (x.copy(), dy.copy())
    for dim in range(3):
        np.testing.assert_array_equal(fwd(x, dim), fwd(np.ascontiguousarray(x), dim))
        np.testing.assert_array_equal(bwd(dy, x, dim), bwd(np.ascontiguousarray(dy), np.ascontiguousarray(x), dim))
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(dy, before[1])


def _ulp_error(name, dtype, x):
    """The largest error, in ulp of the float64 result rounded to ``dtype``, of kernel helper ``name`` over ``x``."""
    from numba import njit

    from fastconv.kernels import activation

    helper = getattr(activation, name)

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = helper(x[i])

    out = np.empty_like(x)
    run(x, out)
    with np.errstate(over="ignore", invalid="ignore"):  # the specials' rows: only ``out`` is looked at
        expected = {"_exp": np.exp, "_expm1": np.expm1, "_tanh_abs": np.tanh}[name](x.astype(np.float64))
        ulp = np.spacing(np.abs(expected).astype(dtype)).astype(np.float64)
        return out, float((np.abs(out - expected) / ulp).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, bound", [("_exp", 2), ("_expm1", 3), ("_tanh_abs", 4)])
def test_the_kernels_transcendentals_are_within_a_few_ulp_of_numpys(name, bound, dtype, rng):
    """The vectorisable ``exp``, ``expm1`` and ``tanh`` inside the kernels, over their whole range."""
    lo, hi = (-86.5, 88.72) if dtype == np.float32 else (-708.0, 709.78)
    if name == "_tanh_abs":
        lo, hi = -30.0, 30.0
    x = np.concatenate([rng.uniform(lo, hi, 20000), rng.uniform(-1, 1, 4000), rng.uniform(-1e-3, 1e-3, 1000),
                        [0.0, lo, hi, 0.4999, 0.5, -0.5, 1e-30]]).astype(dtype)
    assert _ulp_error(name, dtype, x)[1] <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_exp_keeps_nan_and_infinities_and_flushes_its_tail(dtype):
    lo = -86.5 if dtype == np.float32 else -708.0
    specials = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, lo - 1], dtype)
    out, _ = _ulp_error("_exp", dtype, specials)
    np.testing.assert_array_equal(out, [np.nan, np.inf, 0.0, np.inf, 0.0, 0.0])
    out, _ = _ulp_error("_tanh_abs", dtype, np.array([np.nan, np.inf, -np.inf], dtype))
    np.testing.assert_array_equal(out, [np.nan, 1.0, -1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_are_accurate_to_a_few_ulp_through_the_kernels(dtype, rng):
    """The helpers as the kernels compile them (with the kernels' fast-math flags), over wide ranges."""
    lo = -80.0 if dtype == np.float32 else -700.0
    x = rng.uniform(lo, 0.0, 20000).astype(dtype)
    e = np.exp(x.astype(np.float64))
    for name, expected in [("sigmoid", e / (1 + e)), ("elu", np.expm1(x.astype(np.float64))),
                           ("tanh", np.tanh(x.astype(np.float64)))]:
        ulp = np.spacing(np.abs(expected).astype(dtype)).astype(np.float64)
        err = np.abs(getattr(fc, name)(x) - expected) / ulp
        assert err.max() <= 4, (name, float(err.max()))
    logits = rng.uniform(-80, 80, (200, 50))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(fc.softmax(logits, 1), z / z.sum(axis=1, keepdims=True), rtol=1e-14, atol=0)


def test_a_network_with_every_activation_matches_torch_through_to_torch(rng):
    torch = pytest.importorskip("torch")
    from fastconv.models import to_torch

    model = nn.Sequential(nn.Linear(6, 8, dtype=np.float64, rng=0), nn.LeakyReLU(0.2), nn.Linear(8, 8, dtype=np.float64,
                          rng=1), nn.ELU(0.5), nn.GELU(), nn.SiLU(), nn.GELU("tanh"), nn.Tanh(), nn.Sigmoid(),
                          nn.LogSoftmax(dim=1))
    twin = to_torch(model)
    assert repr(model) == repr(twin)
    x = rng.standard_normal((5, 6))
    dy = rng.standard_normal((5, 8))
    y = model(x)
    dx = model.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-11, atol=1e-12)
    for (name, p), (_, tp) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-11, atol=1e-12, err_msg=name)
