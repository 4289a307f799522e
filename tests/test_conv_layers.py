"""nn.Conv2d's whole PyTorch signature: dilation, groups, 'same'/'valid', padding modes.

Against torch.nn.Conv2d over hypothesis combinations (outputs, dx, dw, db, ``to_torch`` and
``state_dict`` both ways, repr), the explicit padding and its adjoint against torch's ``F.pad``,
and the errors raised when a layer is built; the dilated, grouped and depthwise combinations run
on their own plans.
"""

import numpy as np
import pytest
from _conv_support import assert_matches_torch

from fastconv import nn
from fastconv import reference as R

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# torch's notice that an even 'same' kernel pads a copy of the input (fastconv does the same)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
MODES = ["zeros", "reflect", "replicate", "circular"]


def _pads(padding, kernel, dilation):
    """(top, bottom, left, right) as PyTorch pads them, written out independently of the layer."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        out = []
        for k, d in zip(R._pair(kernel), R._pair(dilation)):
            out += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
        return tuple(out)
    ph, pw = R._pair(padding)
    return ph, ph, pw, pw


def _smallest_side(before, after, span, mode):
    """The smallest input side this padding mode and dilated kernel accept (PyTorch's F.pad and conv rules)."""
    need = max(1, span - before - after)
    if mode == "reflect":
        need = max(need, max(before, after) + 1)
    if mode == "circular":
        need = max(need, max(before, after))
    return need


@st.composite
def conv_layers(draw, general):
    groups = draw(st.sampled_from([1, 2, 3] if general else [1]))
    per_group = draw(st.integers(1, 2))  # groups == C_in: depthwise
    cin, cout = groups * per_group, groups * draw(st.integers(1, 2))
    kernel = draw(st.sampled_from([1, 2, 3, (3, 2), (2, 4)]))
    padding = draw(st.sampled_from([0, 1, (2, 1), "valid", "same"]))
    stride = 1 if padding == "same" else draw(st.sampled_from([1, 2, (1, 2), 3]))
    dilation = draw(st.sampled_from([1, 2, (2, 1)] if general else [1]))
    mode = draw(st.sampled_from(MODES))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layer = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=draw(st.booleans()),
                      padding_mode=mode, dtype=dtype, rng=draw(st.integers(0, 2**16)))
    top, bottom, left, right = _pads(padding, kernel, dilation)
    (kh, kw), (dh, dw) = R._pair(kernel), R._pair(dilation)
    H = _smallest_side(top, bottom, dh * (kh - 1) + 1, mode) + draw(st.integers(0, 3))
    W = _smallest_side(left, right, dw * (kw - 1) + 1, mode) + draw(st.integers(0, 3))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((2, cin, H, W)).astype(dtype)
    return layer, x


@settings(max_examples=30, deadline=None)
@given(conv_layers(general=False), st.integers(0, 2**16))
def test_layer_matches_torch(case, seed):
    layer, x = case
    assert_matches_torch(layer, x, seed, repr(layer))


@settings(max_examples=30, deadline=None)
@given(conv_layers(general=True), st.integers(0, 2**16))
def test_layer_matches_torch_with_groups_and_dilation(case, seed):
    layer, x = case
    assert_matches_torch(layer, x, seed, repr(layer))


@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_torch_depthwise(mode):
    for cin, mult, stride in [(4, 1, 1), (3, 2, 2)]:
        layer = nn.Conv2d(cin, cin * mult, 3, stride, 1, groups=cin, padding_mode=mode, dtype=np.float64, rng=0)
        assert_matches_torch(layer, np.random.default_rng(0).standard_normal((2, cin, 6, 5)), 1, repr(layer))


SETTINGS = [
    dict(),
    dict(padding=1),
    dict(padding="same", dilation=2, groups=2, padding_mode="reflect"),
    dict(padding="valid", bias=False),
    dict(padding=(1, 0), stride=(2, 1), padding_mode="circular"),
    dict(groups=4, padding_mode="replicate"),
    dict(dilation=(1, 3), padding=0),
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=str)
def test_repr_shapes_and_init_are_torchs(kwargs):
    """Built only (no forward): holds whatever the plans support."""
    torch = pytest.importorskip("torch")
    layer, twin = nn.Conv2d(4, 8, 3, rng=0, **kwargs), torch.nn.Conv2d(4, 8, 3, **kwargs)
    assert repr(layer) == repr(twin)
    assert list(layer.state_dict()) == list(twin.state_dict())
    assert layer.weight.shape == tuple(twin.weight.shape)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(twin.weight)  # kaiming_uniform_(a=sqrt(5))
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(layer.weight.data).max() <= bound
    if layer.bias is not None:
        assert np.abs(layer.bias.data).max() <= bound
    big = nn.Conv2d(64, 64, 3, groups=kwargs.get("groups", 1), rng=1)  # enough draws to reach the bound
    assert 0.99 * np.abs(big.weight.data).max() < 1 / np.sqrt(big.weight.shape[1] * 9) < 1.01 * np.abs(
        big.weight.data).max()


BUILD_ERRORS = [
    (dict(groups=3), "groups=3"),
    (dict(groups=0), "groups"),
    (dict(padding="same", stride=2), "same"),
    (dict(padding="full"), "padding"),
    (dict(padding_mode="mirror"), "padding_mode"),
    (dict(padding_mode=None), "padding_mode"),
    (dict(dilation=0), "dilation"),
    (dict(dilation=(1, -1)), "dilation"),
    (dict(padding=-1), "padding"),
]


@pytest.mark.parametrize("kwargs, word", BUILD_ERRORS, ids=[str(e[0]) for e in BUILD_ERRORS])
def test_wrong_arguments_raise_when_built(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=f"Conv2d: .*{word}"):
        nn.Conv2d(4, 6, 3, **kwargs)


def test_input_dependent_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode='reflect' .*\(H, W\)=\(2, 5\).*\(1, 1, 2, 5\)"):
        nn.Conv2d(1, 1, 3, padding=2, padding_mode="reflect")(np.zeros((1, 1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode='circular'"):
        nn.Conv2d(1, 1, 3, padding=3, padding_mode="circular")(np.zeros((1, 1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: dilated kernel \(5, 5\) is larger than the padded input"):
        nn.Conv2d(1, 1, 3, dilation=2)(np.zeros((1, 1, 4, 4), np.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 1, 0), (3, 1, 2, 4)], ids=str)
def test_padding_and_its_gradient_match_torch_pad(mode, pads):
    """The explicit padding (one gather) and its adjoint (the border rows folded back) against F.pad."""
    torch = pytest.importorskip("torch")
    from fastconv.nn import _pad2d, _unpad2d

    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    top, bottom, left, right = pads
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.nn.functional.pad(tx, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    np.testing.assert_array_equal(_pad2d(x, pads, mode), ty.detach().numpy())
    d = np.random.default_rng(1).standard_normal(ty.shape)
    ty.backward(torch.from_numpy(d))
    np.testing.assert_allclose(_unpad2d(d, pads, mode, x.shape[2:]), tx.grad.numpy(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_sequential_fuses_conv_relu_with_any_padding_mode(mode):
    layer = nn.Conv2d(2, 3, 4, padding="same", padding_mode=mode, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 6))
    fused = nn.Sequential(layer, nn.ReLU())(x)
    np.testing.assert_array_equal(fused, np.maximum(layer(x), 0))
    y = layer(x)
    assert y.shape == (2, 3, 5, 6)  # 'same': an even kernel pads one more on the bottom/right
