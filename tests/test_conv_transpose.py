"""The transposed convolution: reference against PyTorch, functional against the reference and float64 finite
differences, nn.ConvTranspose2d against torch.nn.ConvTranspose2d, errors.
"""

import numpy as np
import pytest
from _conv_support import assert_matches_torch, tolerance

import fastconv as fc
from fastconv import nn
from fastconv import reference as R

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# (x_shape, C_out / groups, kernel, stride, padding, output_padding, groups, dilation)
DENSE = [
    ((2, 3, 4, 5), 2, 3, 1, 0, 0, 1, 1),
    ((1, 2, 3, 3), 3, 4, 2, 1, 0, 1, 1),  # the U-Net / DCGAN upsampling: 4x4, stride 2, padding 1
    ((2, 3, 3, 4), 2, (3, 2), 2, 1, 1, 1, 1),
    ((1, 2, 2, 3), 2, (2, 3), (2, 3), (0, 1), (1, 2), 1, 1),
    ((1, 1, 1, 1), 1, 1, 3, 0, 2, 1, 1),
]
GROUPED = [
    ((2, 4, 3, 4), 3, 3, 2, 1, 1, 2, 1),
    ((1, 2, 4, 3), 2, 3, 1, 1, 0, 1, 2),  # dilation 2
    ((1, 3, 3, 3), 2, (2, 3), 2, 0, 2, 1, 3),  # output_padding >= stride (allowed by the dilation)
    ((1, 6, 3, 3), 2, 3, (1, 2), (2, 0), (0, 1), 3, (2, 1)),
]
DEPTHWISE_CASES = [((2, 4, 3, 3), 1, 3, 2, 1, 1, 4, 1), ((1, 3, 4, 4), 1, 3, 1, 1, 0, 3, 2)]  # groups == C_out


def _case_id(case):
    x_shape, cg, k, s, p, op, g, d = case
    return f"x{x_shape}-cout{cg * g}-k{k}-s{s}-p{p}-op{op}-g{g}-d{d}"


def _operands(case, dtype, seed=0):
    x_shape, cg, k, s, p, op, g, d = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((x_shape[1], cg, kh, kw)).astype(dtype)
    b = rng.standard_normal(cg * g).astype(dtype)
    return x, w, b, dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)


ALL = DENSE + GROUPED + DEPTHWISE_CASES


@pytest.mark.parametrize("case", ALL, ids=_case_id)
def test_reference_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, w, b, kw = _operands(case, np.float64)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kw)
    y = R.conv_transpose2d(x, w, b, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    dx, dw, db = R.conv_transpose2d_backward(dy, x, w, **kw)
    for name, ours, theirs in [("y", y, ty), ("dx", dx, tx.grad), ("dw", dw, tw.grad), ("db", db, tb.grad)]:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ALL, ids=_case_id)
def test_functional_matches_the_reference(case, dtype):
    x, w, b, kw = _operands(case, dtype)
    x.flags.writeable = False  # read-only inputs are fine, and are never modified
    before = [a.copy() for a in (x, w, b)]
    y = fc.conv_transpose2d(x, w, b, **kw)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, R.conv_transpose2d(x64, w64, b64, **kw), **tol)
    assert y.dtype == dtype and y.flags.c_contiguous
    dy = np.asfortranarray(np.random.default_rng(2).standard_normal(y.shape).astype(dtype))  # any layout
    dx, dw, db = fc.conv_transpose2d_backward(dy, x, w, **kw)
    rdx, rdw, rdb = R.conv_transpose2d_backward(dy.astype(np.float64), x64, w64, **kw)
    np.testing.assert_allclose(dx, rdx, **tol, err_msg="dx")
    np.testing.assert_allclose(dw, rdw, **tol, err_msg="dw")
    np.testing.assert_allclose(db, rdb, **tol, err_msg="db")
    np.testing.assert_array_equal(fc.conv_transpose2d_backward_input(dy, w, x.shape, **kw), dx)
    np.testing.assert_array_equal(fc.conv_transpose2d_backward_weight(dy, x, w.shape, **kw), dw)
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("case", [DENSE[1], DENSE[3], GROUPED[2]], ids=_case_id)
def test_gradients_match_float64_finite_differences(case):
    """The three gradients of ``sum(conv_transpose2d(x, w, b) * dy)``, by central differences (which are exact
    for this bilinear function up to rounding)."""
    x, w, b, kw = _operands(case, np.float64, seed=3)
    dy = np.random.default_rng(4).standard_normal(fc.conv_transpose2d(x, w, b, **kw).shape)
    dx, dw, db = fc.conv_transpose2d_backward(dy, x, w, **kw)

    arrays = {"x": x, "w": w, "b": b}

    def loss_with(name, idx, delta):
        moved = arrays[name].copy()
        moved[idx] += delta
        return float(np.sum(fc.conv_transpose2d(**{**arrays, name: moved}, **kw) * dy))

    for name, grad in [("x", dx), ("w", dw), ("b", db)]:
        size = arrays[name].size
        for flat in np.random.default_rng(5).choice(size, size=min(size, 6), replace=False):
            idx = np.unravel_index(flat, grad.shape)
            numeric = (loss_with(name, idx, 1e-6) - loss_with(name, idx, -1e-6)) / 2e-6
            assert abs(numeric - grad[idx]) < 1e-6 * (1 + abs(numeric)), f"d{name}{idx}: {grad[idx]} vs {numeric}"


# --------------------------------------------------------------------------- errors

X, W = np.zeros((1, 4, 3, 3)), np.zeros((4, 2, 3, 3))
ERRORS = [
    ("output_padding", dict(output_padding=1), ValueError, ["output_padding", "stride", "dilation"]),
    ("output_padding-pair", dict(stride=2, output_padding=(1, 2)), ValueError, ["output_padding", "(1, 2)"]),
    ("groups-not-dividing", dict(groups=3), ValueError, ["groups=3", "(1, 4, 3, 3)"]),
    ("groups-zero", dict(groups=0), ValueError, ["groups"]),
    ("negative-padding", dict(padding=-1), ValueError, ["padding"]),
    ("zero-stride", dict(stride=0), ValueError, ["stride"]),
    ("zero-dilation", dict(dilation=0), ValueError, ["dilation"]),
    ("float-stride", dict(stride=1.5), TypeError, ["stride"]),
    ("output-too-small", dict(padding=3), ValueError, ["output size", "padding=(3, 3)", "(1, 4, 3, 3)"]),
    ("channels", dict(w=np.zeros((3, 2, 3, 3))), ValueError, ["w", "4 input channels", "(3, 2, 3, 3)"]),
    ("bias-length", dict(b=np.zeros(3)), ValueError, ["b", "(2,)"]),
    ("dtype", dict(x=X.astype(np.float32)), TypeError, ["dtype"]),
    ("ndim", dict(x=X[0]), ValueError, ["x", "4-D"]),
]


@pytest.mark.parametrize("kwargs, exc, words", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_functional_errors_name_the_argument_and_the_shapes(kwargs, exc, words):
    args = {"x": X, "w": W, **kwargs}
    with pytest.raises(exc) as info:
        fc.conv_transpose2d(**args)
    message = str(info.value)
    assert message.startswith("conv_transpose2d:"), message
    for word in words:
        assert word in message, (word, message)


def test_backward_functions_check_dy_and_the_shapes():
    dy = np.zeros((1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv_transpose2d_backward: dy must have shape \(1, 2, 5, 5\)"):
        fc.conv_transpose2d_backward(np.zeros((1, 2, 4, 5)), X, W)
    with pytest.raises(ValueError, match="conv_transpose2d_backward_input: .*input_shape"):
        fc.conv_transpose2d_backward_input(dy, W, (1, 3, 3, 3))
    with pytest.raises(ValueError, match="conv_transpose2d_backward_weight: .*weight_shape"):
        fc.conv_transpose2d_backward_weight(dy, X, (3, 2, 3, 3))


@pytest.mark.parametrize("s, d, op", [(2, 1, 2), (1, 1, 1), (1, 2, 1), (2, 3, 2), (1, 3, 2), ((2, 1), (1, 2), 1)],
                         ids=str)
def test_output_padding_rule_is_pytorchs(s, d, op):
    """Smaller than the stride *or* the dilation, on each axis: the same calls torch accepts and refuses."""
    torch = pytest.importorskip("torch")
    try:
        torch.nn.functional.conv_transpose2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), stride=s,
                                             dilation=d, output_padding=op)
        torch_ok = True
    except RuntimeError:
        torch_ok = False
    try:
        nn.ConvTranspose2d(1, 1, 3, stride=s, output_padding=op, dilation=d)
        ours_ok = True
    except ValueError as exc:
        assert "output_padding" in str(exc)
        ours_ok = False
    assert ours_ok == torch_ok


# --------------------------------------------------------------------------- the layer

def test_layer_parameters_init_and_repr_are_torchs():
    torch = pytest.importorskip("torch")
    layer = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2, bias=False,
                               dilation=2, rng=0)
    twin = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2, bias=False,
                                    dilation=2)
    assert repr(layer) == repr(twin)
    assert layer.weight.shape == tuple(twin.weight.shape) == (4, 3, 3, 2)
    assert list(layer.state_dict()) == list(twin.state_dict())
    # kaiming_uniform_(a=sqrt(5)) with torch's fan_in = weight.size(1) * KH * KW = 3 * 6
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(twin.weight)
    big = nn.ConvTranspose2d(2, 8, 3, rng=1)
    bound = 1 / np.sqrt(torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(big.weight.shape))[0])
    assert fan_in == 18 and np.abs(big.weight.data).max() <= bound < 1.1 * np.abs(big.weight.data).max()
    assert np.abs(big.bias.data).max() <= bound
    assert repr(nn.ConvTranspose2d(2, 3, 1)) == repr(torch.nn.ConvTranspose2d(2, 3, 1))


LAYER_ERRORS = [
    (dict(groups=3), "groups=3"), (dict(output_padding=1), "output_padding"), (dict(dilation=0), "dilation"),
    (dict(padding_mode="reflect"), "padding_mode"), (dict(padding="same"), "padding"), (dict(stride=0), "stride"),
]


@pytest.mark.parametrize("kwargs, word", LAYER_ERRORS, ids=[str(e[0]) for e in LAYER_ERRORS])
def test_layer_refuses_wrong_arguments_when_built(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=f"ConvTranspose2d: .*{word}"):
        nn.ConvTranspose2d(4, 6, 3, **kwargs)


@st.composite
def transpose_layers(draw, general):
    groups = draw(st.sampled_from([1, 2, 3] if general else [1]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = draw(st.sampled_from([1, 2, 3, (3, 2), (1, 4)]))
    stride = draw(st.sampled_from([1, 2, 3, (2, 1)]))
    dilation = draw(st.sampled_from([1, 2, (1, 3)] if general else [1]))
    s2, d2 = R._pair(stride), R._pair(dilation)
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(s2, d2))
    padding = draw(st.sampled_from([0, 1, (2, 0)]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layer = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, op, groups, bias=draw(st.booleans()),
                               dilation=dilation, dtype=dtype, rng=draw(st.integers(0, 2**16)))
    H, W = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    try:
        R.conv_transpose2d_output_shape((1, cin, H, W), layer.weight.shape, stride, padding, op, groups, dilation)
    except ValueError:
        hypothesis.assume(False)  # padding crops everything: an error case, tested above
    x = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((2, cin, H, W)).astype(dtype)
    return layer, x


@settings(max_examples=25, deadline=None)
@given(transpose_layers(general=False), st.integers(0, 2**16))
def test_layer_matches_torch(case, seed):
    layer, x = case
    assert_matches_torch(layer, x, seed, repr(layer))


@settings(max_examples=25, deadline=None)
@given(transpose_layers(general=True), st.integers(0, 2**16))
def test_layer_matches_torch_with_groups_and_dilation(case, seed):
    layer, x = case
    assert_matches_torch(layer, x, seed, repr(layer))


def test_layer_matches_torch_depthwise():
    for groups, mult in [(4, 1), (3, 2)]:
        layer = nn.ConvTranspose2d(groups, groups * mult, 3, stride=2, padding=1, output_padding=1, groups=groups,
                                   dtype=np.float64, rng=0)
        assert_matches_torch(layer, np.random.default_rng(0).standard_normal((2, groups, 4, 5)), 1, repr(layer))


@pytest.mark.parametrize("output_size", [(7, 9), [8, 10], (2, 4, 8, 9)], ids=str)
def test_output_size_picks_the_output_padding_as_torch(output_size):
    torch = pytest.importorskip("torch")
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=0)
    from fastconv.models import to_torch

    twin = to_torch(layer)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    y = layer(x, output_size=output_size)
    ty = twin(tx, output_size=list(output_size))
    assert y.shape[2:] == tuple(output_size)[-2:]
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert layer(x).shape == (2, 4, 7, 9)  # the next call without output_size: the layer's output_padding again


@pytest.mark.parametrize("output_size, exc, words", [((9, 9), ValueError, ["valid sizes", "7 to 8"]),
                                                     ((7,), ValueError, ["output_size"]),
                                                     (7, TypeError, ["output_size"])], ids=str)
def test_output_size_errors(output_size, exc, words):
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    with pytest.raises(exc) as info:
        layer(np.zeros((1, 3, 4, 5), np.float32), output_size=output_size)
    assert str(info.value).startswith("ConvTranspose2d:") and all(w in str(info.value) for w in words)


def test_threads_calling_at_once_get_the_serial_results():
    """8 threads on shared (read-only) inputs: the transposed convolution's three gradients, and a reflect-padded
    Conv2d layer per thread, bitwise equal to serial calls."""
    import concurrent.futures

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 6, 5, 4)).astype(np.float32), rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    for a in (x, w):
        a.flags.writeable = False
    kw = dict(stride=2, padding=1, output_padding=1)
    dy = rng.standard_normal(fc.conv_transpose2d(x, w, **kw).shape).astype(np.float32)

    def work(_):
        layer = nn.Conv2d(6, 3, 3, padding="same", padding_mode="reflect", rng=1)
        y = layer(x)
        return (fc.conv_transpose2d(x, w, **kw), *fc.conv_transpose2d_backward(dy, x, w, **kw), y,
                layer.backward(y))

    serial = work(0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for got in pool.map(work, range(16)):
            for g, s in zip(got, serial, strict=True):
                np.testing.assert_array_equal(g, s)
