"""fastconv.nn: layers, containers, initialisation, state_dict and the loss.

Every layer's forward and backward is checked against float64 finite differences and
against the same layer in PyTorch (same weights, same input, same upstream gradient).
A small CNN's full training step is compared with PyTorch's too.
"""

from collections import OrderedDict
from typing import Callable, NamedTuple

import numpy as np
import pytest

from benchmarks import cases
from fastconv import nn
from fastconv import optim
from fastconv.models import reference_cnn, to_torch

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _tdtype(torch, dtype):
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


# ---------------------------------------------------------------------------------------
# Layer cases: one table drives the finite-difference and the PyTorch comparisons
# ---------------------------------------------------------------------------------------


class LayerCase(NamedTuple):
    name: str
    make: Callable  # dtype -> fastconv layer (seeded)
    x_shape: tuple
    make_torch: Callable  # (torch, layer, dtype) -> torch module with the same parameters
    inputs: str = "normal"  # "normal", "distinct" (no ties for max-pool), "away_from_zero" (ReLU)

    def __str__(self):
        return self.name


def _torch_conv(torch, layer, dtype):
    m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        bias=layer.bias is not None, dtype=_tdtype(torch, dtype))
    _copy_params(torch, layer, m)
    return m


def _torch_linear(torch, layer, dtype):
    m = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=_tdtype(torch, dtype))
    _copy_params(torch, layer, m)
    return m


def _copy_params(torch, ours, theirs):
    with torch.no_grad():
        for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            assert name == tname
            tp.copy_(torch.from_numpy(p.data.copy()))


def _conv_layer(row, rng, bias=True):
    """The nn.Conv2d of a case-table row (:data:`benchmarks.cases.CONV_LAYERS`)."""
    def make(dt):
        return nn.Conv2d(row.c, row.f, row.k, stride=row.stride, padding=row.pad, bias=bias, dtype=dt, rng=rng)
    return LayerCase(row.name + ("" if bias else "-nobias"), make, row.x_shape, _torch_conv)


def _pool_layer(row):
    """The nn.MaxPool2d of a case-table row (:data:`benchmarks.cases.POOL_LAYERS`), on inputs without ties."""
    return LayerCase(row.name, lambda dt: nn.MaxPool2d(row.k, stride=row.stride, padding=row.pad), row.x_shape,
                     lambda torch, layer, dt: torch.nn.MaxPool2d(row.k, stride=row.stride, padding=row.pad),
                     "distinct")


_conv_k3_p1, _conv_k3_s2, _conv_k2x3, _conv_k1 = cases.CONV_LAYERS
LAYER_CASES = [
    _conv_layer(_conv_k3_p1, rng=1),
    _conv_layer(_conv_k3_s2, rng=2),
    _conv_layer(_conv_k2x3, rng=3, bias=False),
    _conv_layer(_conv_k1, rng=4),
    *(_pool_layer(row) for row in cases.POOL_LAYERS),
    LayerCase("relu-4d", lambda dt: nn.ReLU(), (2, 3, 4, 5),
              lambda torch, layer, dt: torch.nn.ReLU(), "away_from_zero"),
    LayerCase("relu-2d", lambda dt: nn.ReLU(), (5, 7), lambda torch, layer, dt: torch.nn.ReLU(), "away_from_zero"),
    LayerCase("flatten", lambda dt: nn.Flatten(), (2, 3, 4, 5), lambda torch, layer, dt: torch.nn.Flatten()),
    LayerCase("flatten-2-3", lambda dt: nn.Flatten(2, 3), (2, 3, 4, 5),
              lambda torch, layer, dt: torch.nn.Flatten(2, 3)),
    LayerCase("linear", lambda dt: nn.Linear(6, 4, dtype=dt, rng=5), (3, 6), _torch_linear),
    LayerCase("linear-3d-nobias", lambda dt: nn.Linear(5, 3, bias=False, dtype=dt, rng=6), (2, 4, 5), _torch_linear),
    LayerCase("dropout-eval", lambda dt: nn.Dropout(0.5, rng=7).eval(), (3, 4),
              lambda torch, layer, dt: torch.nn.Dropout(0.5).eval()),
]


def _input(case, dtype, rng):
    shape = case.x_shape
    if case.inputs == "distinct":  # spacing 0.1 >> finite-difference step: no ties, no kinks
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0
    elif case.inputs == "away_from_zero":
        x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        x = rng.standard_normal(shape)
    return x.astype(dtype)


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layer_gradients_match_finite_differences(case, rng, numgrad):
    layer = case.make(np.float64)
    x = _input(case, np.float64, rng)
    out = layer(x)
    dout = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx = layer.backward(dout)

    def objective():
        return float(np.sum(layer(x) * dout))

    np.testing.assert_allclose(dx, numgrad(objective, x), rtol=1e-6, atol=1e-8)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, numgrad(objective, p.data), rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layer_matches_torch(case, dtype, rng, torch, tol):
    layer = case.make(dtype)
    tlayer = case.make_torch(torch, layer, dtype)
    x = _input(case, dtype, rng)
    x_before = x.copy()
    out = layer(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)

    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tout = tlayer(tx)
    tout.backward(torch.from_numpy(dout.copy()))

    t = tol(dtype, 64)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(out, tout.detach().numpy(), **t)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **t)
    for (name, p), (_, tp) in zip(layer.named_parameters(), tlayer.named_parameters(), strict=True):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), **t, err_msg=name)
    np.testing.assert_array_equal(x, x_before)  # input not modified


# The Linear layer's compiled matrix products, against NumPy: shapes that leave remainders
# of the 4 x 4 tiles (rows, columns), reductions longer than one chunk (matmul_nt cuts the
# reduction axis at 1024) and of odd lengths, and a single element.
MATMUL_SHAPES = [(1, 1, 1), (3, 5, 2), (4, 16, 4), (7, 13, 9), (64, 3136, 128), (5, 2049, 6), (9, 1024, 13)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("transposed", [False, True], ids=["a@b", "a@b.T"])
def test_linear_matmul_kernels_match_numpy(shape, transposed, dtype, rng):
    """``linear`` is ``a @ b.T`` (matmul_nt); its input gradient ``dy @ weight`` is ``a @ b`` (matmul_nn)."""
    import fastconv.functional as F

    R, Q, K = shape
    a = rng.standard_normal((R, Q)).astype(dtype)
    b = rng.standard_normal((K, Q) if transposed else (Q, K)).astype(dtype)
    a_before, b_before = a.copy(), b.copy()
    got = F.linear(a, b) if transposed else F.linear_backward(a, np.zeros((R, K), dtype), b)[0]
    expected = a.astype(np.float64) @ (b.T if transposed else b).astype(np.float64)
    assert got.dtype == dtype and got.shape == (R, K)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.sqrt(Q))
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


def test_relu_nan_follows_torch(torch):
    x = np.array([[-1.0, 0.0, np.nan, 2.0]])
    layer = nn.ReLU()
    out = layer(x)
    dx = layer.backward(np.ones_like(x))
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).backward(torch.ones(1, 4, dtype=torch.float64))
    np.testing.assert_array_equal(out, torch.relu(tx).detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


# ---------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["normal", "huge-logits"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_torch(dtype, scale, reduction, rng, torch):
    logits = (rng.standard_normal((7, 5)) * scale).astype(dtype)
    labels = rng.integers(0, 5, 7)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    loss = loss_fn(logits, labels)
    grad = loss_fn.backward()
    tlogits = torch.from_numpy(logits.copy()).requires_grad_(True)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels), reduction=reduction)
    tloss.backward()
    assert isinstance(loss, float) and np.isfinite(loss)
    assert grad.dtype == dtype and grad.shape == logits.shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, tloss.item(), rtol=rtol)
    np.testing.assert_allclose(grad, tlogits.grad.numpy(), rtol=rtol, atol=rtol)


def test_cross_entropy_gradient_matches_finite_differences(rng, numgrad):
    logits = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2], dtype=np.uint8)  # uint8, as MNIST labels
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(logits, labels)
    grad = loss_fn.backward(2.5)
    np.testing.assert_allclose(grad, 2.5 * numgrad(lambda: loss_fn(logits, labels), logits), rtol=1e-6, atol=1e-9)


def test_cross_entropy_formula(rng):
    logits = rng.standard_normal((3, 4))
    labels = np.array([3, 0, 1])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(3), labels]))
    assert nn.CrossEntropyLoss()(logits, labels) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize(
    "logits, labels, exc, match",
    [
        (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, "integer"),
        (np.zeros((3, 4)), np.array([True, False, True]), TypeError, "integer"),
        (np.zeros((3, 4)), np.zeros((3, 1), dtype=int), ValueError, r"shape \(3,\)"),
        (np.zeros((3, 4)), np.array([0, 1]), ValueError, r"shape \(3,\)"),
        (np.zeros((3, 4)), np.array([0, 4, 1]), ValueError, r"\[0, 4\)"),
        (np.zeros((3, 4)), np.array([0, -1, 1]), ValueError, r"\[0, 4\)"),
        (np.zeros(4), np.array([0]), ValueError, r"target must have shape \(\)"),
        (np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]), TypeError, "float32 or float64"),
        (np.zeros((0, 4)), np.zeros(0, dtype=int), ValueError, "at least one"),
        ([[0.0, 1.0]], np.array([0]), TypeError, "ndarray"),
    ],
    ids=["float-labels", "bool-labels", "2d-labels", "wrong-N", "label-too-big", "label-negative",
         "1d-logits", "int-logits", "empty-batch", "list-logits"],
)
def test_cross_entropy_rejects_bad_input(logits, labels, exc, match):
    with pytest.raises(exc, match=match):
        nn.CrossEntropyLoss()(logits, labels)


# ---------------------------------------------------------------------------------------
# A whole training step against PyTorch
# ---------------------------------------------------------------------------------------


def _small_net(dtype, seed):
    """The reference CNN's architecture, small: 8x8 images, 4 and 6 channels, 16 hidden units, 5 classes."""
    return reference_cnn(dtype, rng=seed, image_size=8, channels=(4, 6), hidden=16, num_classes=5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_steps_match_torch(dtype, optimizer, rng, torch):
    model = _small_net(dtype, seed=0)
    tmodel = to_torch(model)
    loss_fn = nn.CrossEntropyLoss()
    if optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = optim.Adam(model.parameters(), lr=1e-2)
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rtol = 2e-4 if dtype == np.float32 else 1e-10
    for step in range(3):
        x = rng.standard_normal((6, 1, 8, 8)).astype(dtype)
        y = rng.integers(0, 5, 6)
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        tx = torch.from_numpy(x)
        tloss = torch.nn.functional.cross_entropy(tmodel(tx), torch.from_numpy(y))
        tloss.backward()
        np.testing.assert_allclose(loss, tloss.item(), rtol=rtol, err_msg=f"step {step}")
        for (name, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters(), strict=True):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=rtol, atol=rtol * 1e-1,
                                       err_msg=f"step {step}: grad of {name}")
        opt.step()
        opt.zero_grad()
        topt.step()
        topt.zero_grad()
        for (name, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters(), strict=True):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=rtol * 1e-1,
                                       err_msg=f"step {step}: {name} after the update")
            assert not p.grad.any()


def test_reference_cnn_structure_matches_torch(torch):
    """The issue's MNIST network: same repr, same state_dict keys and shapes, same parameter order."""
    model = reference_cnn(dropout=0.25)
    tmodel = to_torch(model)
    assert repr(model) == repr(tmodel)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in tmodel.state_dict().items()]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert model(x).shape == (2, 10)
    assert model.backward(np.ones((2, 10), np.float32)).shape == x.shape


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: nn.Conv2d(3, 8, (3, 5), stride=2, bias=False),
         lambda t: t.nn.Conv2d(3, 8, (3, 5), stride=2, bias=False)),
        (lambda: nn.Conv2d(3, 8, 3, padding=(0, 1)), lambda t: t.nn.Conv2d(3, 8, 3, padding=(0, 1))),
        (lambda: nn.MaxPool2d(3, 1, 1), lambda t: t.nn.MaxPool2d(3, 1, 1)),
        (lambda: nn.Linear(4, 2, bias=False), lambda t: t.nn.Linear(4, 2, bias=False)),
        (lambda: nn.Flatten(0, 2), lambda t: t.nn.Flatten(0, 2)),
        (lambda: nn.CrossEntropyLoss(), lambda t: t.nn.CrossEntropyLoss()),
    ],
    ids=["conv-nobias", "conv-pad-pair", "maxpool", "linear-nobias", "flatten", "loss"],
)
def test_repr_matches_torch(ours, theirs, torch):
    assert repr(ours()) == repr(theirs(torch))


# ---------------------------------------------------------------------------------------
# Initialisation and seeding
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, fan_in",
    [(lambda: nn.Conv2d(16, 32, 3, rng=0), 16 * 9), (lambda: nn.Linear(300, 200, rng=0), 300)],
    ids=["conv", "linear"],
)
def test_default_init_is_pytorch_uniform(make, fan_in, torch):
    layer = make()
    bound = 1 / np.sqrt(fan_in)
    for name, p in layer.named_parameters():
        w = p.data.astype(np.float64)
        assert np.abs(w).max() <= bound, name
        assert np.abs(w).max() > 0.9 * bound, name
    w = layer.weight.data.astype(np.float64)
    # U(-k, k): mean 0, std k/sqrt(3) (5-sigma bounds for the sample mean; 5% for the std)
    assert abs(w.mean()) < 5 * bound / np.sqrt(3) / np.sqrt(w.size)
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    # PyTorch's own default init has the same support.
    tlayer = torch.nn.Conv2d(16, 32, 3) if isinstance(layer, nn.Conv2d) else torch.nn.Linear(300, 200)
    tmax = tlayer.weight.detach().abs().max().item()
    assert 0.9 * bound < tmax <= bound


def test_manual_seed_fixes_the_draw_order():
    nn.manual_seed(123)
    layer = nn.Linear(5, 3, dtype=np.float64)
    expected_rng = np.random.default_rng(123)
    k = 1 / np.sqrt(5)
    np.testing.assert_array_equal(layer.weight.data, expected_rng.uniform(-k, k, (3, 5)))
    np.testing.assert_array_equal(layer.bias.data, expected_rng.uniform(-k, k, 3))


def test_seeding_reproduces_models():
    a = _small_net(np.float32, seed=7).state_dict()
    b = _small_net(np.float32, seed=7).state_dict()
    c = _small_net(np.float32, seed=8).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_rng_argument_int_and_generator():
    np.testing.assert_array_equal(nn.Conv2d(2, 3, 3, rng=5).weight.data, nn.Conv2d(2, 3, 3, rng=5).weight.data)
    gen = np.random.default_rng(9)
    first, second = nn.Linear(4, 4, rng=gen), nn.Linear(4, 4, rng=gen)
    assert not np.array_equal(first.weight.data, second.weight.data)  # the shared stream advanced
    gen2 = np.random.default_rng(9)
    np.testing.assert_array_equal(nn.Linear(4, 4, rng=gen2).weight.data, first.weight.data)
    np.testing.assert_array_equal(nn.Linear(4, 4, rng=gen2).weight.data, second.weight.data)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(4, 4, rng="seed")


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameter_dtype(dtype):
    for layer in (nn.Conv2d(2, 3, 3, dtype=dtype), nn.Linear(3, 2, dtype=dtype)):
        for p in layer.parameters():
            assert p.data.dtype == dtype and p.grad.dtype == dtype and not p.grad.any()


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------


def test_dropout_training_mask_and_scale(rng):
    p = 0.3
    x = rng.uniform(1.0, 2.0, (200, 50))
    layer = nn.Dropout(p, rng=11)
    out = layer(x)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-15)
    n = x.size
    assert abs((~kept).sum() - p * n) < 5 * np.sqrt(n * p * (1 - p))  # binomial, 5 sigma
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dout), np.where(kept, dout / (1 - p), 0.0), rtol=1e-15)


def test_dropout_gradient_matches_finite_differences(rng, numgrad):
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    layer = nn.Dropout(0.5, rng=3)
    layer(x)
    dx = layer.backward(dout)
    # a fresh layer with the same seed draws the same mask at every evaluation
    np.testing.assert_allclose(dx, numgrad(lambda: float(np.sum(nn.Dropout(0.5, rng=3)(x) * dout)), x),
                               rtol=1e-7, atol=1e-9)


def test_dropout_modes_and_extremes(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(nn.Dropout(0.5).eval()(x), x)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    d1 = nn.Dropout(1.0)
    assert not d1(x).any() and d1(x).dtype == np.float32
    assert not d1.backward(np.ones_like(x)).any()
    nn.manual_seed(5)
    a = nn.Dropout(0.5)(x)
    nn.manual_seed(5)
    b = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


@pytest.mark.parametrize("p, exc", [(-0.1, ValueError), (1.5, ValueError), ("0.5", TypeError), (True, TypeError)])
def test_dropout_rejects_bad_p(p, exc):
    with pytest.raises(exc, match="p"):
        nn.Dropout(p)


# ---------------------------------------------------------------------------------------
# Module behaviour
# ---------------------------------------------------------------------------------------


def test_backward_accumulates_and_zero_grad_resets(rng):
    layer = nn.Conv2d(2, 3, 3, dtype=np.float64, rng=0)
    x = rng.standard_normal((2, 2, 5, 5))
    dout = rng.standard_normal(layer(x).shape)
    layer.backward(dout)
    once = [p.grad.copy() for p in layer.parameters()]
    layer.backward(dout)
    for g, p in zip(once, layer.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-14)
    layer.zero_grad()
    assert all(not p.grad.any() for p in layer.parameters())


@pytest.mark.parametrize("first", ["conv", "relu"])
def test_sequential_backward_without_input_grad(first, rng):
    """input_grad=False returns None and leaves every parameter gradient bit-identical."""
    def build():
        head = [nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0)] if first == "conv" else [nn.ReLU()]
        rest = [nn.Conv2d(2 if first == "relu" else 3, 4, 3, dtype=np.float64, rng=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(4 * 3 * 3, 5, dtype=np.float64, rng=2)]
        return nn.Sequential(*head, *rest)
    x = rng.standard_normal((2, 2, 5, 5))
    a, b = build(), build()
    dout = rng.standard_normal(a(x).shape)
    b(x)
    dx = a.backward(dout)
    assert dx.shape == x.shape
    assert b.backward(dout, input_grad=False) is None
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=name)


class _CountingReLU(nn.ReLU):
    """A user's ReLU with its own forward: Sequential must call it, not fuse it away."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def _conv_net(dtype, relu=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, dtype=dtype, rng=0), relu(), nn.MaxPool2d(2),   # flat + ReLU
        nn.Conv2d(16, 32, 3, padding=1, dtype=dtype, rng=1), relu(), nn.MaxPool2d(3, 2, 1),  # vector
        nn.Conv2d(32, 8, 1, dtype=dtype, rng=2), relu(),  # pointwise + ReLU, no pool after
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5, dtype=dtype, rng=3))


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_fusions_give_the_layer_by_layer_result(dtype, nan, rng):
    """Conv2d+ReLU forward and ReLU+MaxPool2d backward, fused by Sequential, change no bit."""
    x = rng.standard_normal((3, 1, 15, 15)).astype(dtype)
    if nan:
        x[0, 0, 3, 4] = np.nan
    fused, alone = _conv_net(dtype), _conv_net(dtype)
    y = fused(x)
    h = x
    for m in alone:  # each layer called on its own: nothing fused
        h = m(h)
    np.testing.assert_array_equal(y, h)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = fused.backward(dout)
    d = dout
    for m in reversed(list(alone)):
        d = m.backward(d)
    np.testing.assert_array_equal(dx, d)
    for (name, pa), (_, pb) in zip(fused.named_parameters(), alone.named_parameters()):
        np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=name)
    assert np.isnan(fused[0].weight.grad).any() == nan


def test_sequential_does_not_fuse_overridden_layers_or_foreign_inputs(rng):
    x = rng.standard_normal((2, 1, 8, 8))
    _CountingReLU.calls = 0
    model = _conv_net(np.float64, relu=_CountingReLU)
    model(rng.standard_normal((2, 1, 15, 15)))
    assert _CountingReLU.calls == 3
    # The pool ran last on another array than the ReLU's output: its backward is not fused.
    relu, pool = nn.ReLU(), nn.MaxPool2d(2)
    seq = nn.Sequential(relu, pool)
    seq(x)
    other = rng.standard_normal((2, 1, 8, 8))
    dy = rng.standard_normal((2, 1, 4, 4))
    pool(other)
    want = relu.backward(pool.backward(dy))
    np.testing.assert_array_equal(seq.backward(dy), want)


@pytest.mark.parametrize(
    "layer, dout",
    [
        (nn.Conv2d(1, 1, 1), np.zeros((1, 1, 1, 1), np.float32)),
        (nn.MaxPool2d(2), np.zeros((1, 1, 1, 1), np.float32)),
        (nn.ReLU(), np.zeros(3, np.float32)),
        (nn.Flatten(), np.zeros((1, 3), np.float32)),
        (nn.Linear(2, 2), np.zeros((1, 2), np.float32)),
        (nn.Dropout(), np.zeros(3, np.float32)),
        (nn.Sequential(nn.ReLU()), np.zeros(3, np.float32)),
        (nn.CrossEntropyLoss(), 1.0),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_backward_before_forward_raises(layer, dout):
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(dout)


def test_no_grad_skips_the_cache(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, dtype=np.float64), nn.ReLU(), nn.Flatten())
    x = rng.standard_normal((2, 1, 5, 5))
    expected = model(x)
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        with nn.no_grad():
            pass
        assert not nn.is_grad_enabled()
        out = model(x)
    assert nn.is_grad_enabled()
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))

    @nn.no_grad()
    def predict(inp):
        return nn.is_grad_enabled()

    assert predict(x) is False and nn.is_grad_enabled()


def test_no_grad_is_per_thread():
    import threading

    seen = []
    with nn.no_grad():
        t = threading.Thread(target=lambda: seen.append(nn.is_grad_enabled()))
        t.start()
        t.join()
        assert not nn.is_grad_enabled()
    assert seen == [True]


@pytest.mark.parametrize(
    "layer, x, exc, match",
    [
        (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 5), np.float32), ValueError, "4-D"),
        (nn.Conv2d(3, 4, 3), np.zeros((2, 2, 5, 5), np.float32), ValueError, "3 channels"),
        (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 5, 5), np.float64), TypeError, "float32"),
        (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 5, 5), np.int64), TypeError, "float32 or float64"),
        (nn.Conv2d(3, 4, 3), [[0.0]], TypeError, "ndarray"),
        (nn.Conv2d(3, 4, 5), np.zeros((1, 3, 3, 3), np.float32), ValueError, "larger than"),
        (nn.MaxPool2d(2), np.zeros((3, 4, 4), np.float32), ValueError, "4-D"),
        (nn.MaxPool2d(2), np.zeros((1, 3, 4, 4), np.float16), TypeError, "float32 or float64"),
        (nn.Linear(4, 2), np.zeros((3, 5), np.float32), ValueError, "in_features=4"),
        (nn.Linear(4, 2, dtype=np.float64), np.zeros((3, 4), np.float32), TypeError, "float64"),
        (nn.ReLU(), np.zeros(3, np.int32), TypeError, "float32 or float64"),
        (nn.Flatten(2), np.zeros((3, 4), np.float32), ValueError, "start_dim"),
    ],
    ids=["conv-ndim", "conv-channels", "conv-dtype", "conv-int", "conv-list", "conv-too-small",
         "pool-ndim", "pool-f16", "linear-features", "linear-dtype", "relu-int", "flatten-dims"],
)
def test_forward_rejects_bad_input(layer, x, exc, match):
    with pytest.raises(exc, match=match):
        layer(x)


@pytest.mark.parametrize(
    "layer, x, dout, exc",
    [
        (nn.Conv2d(1, 2, 3), np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 3, 2), np.float32), ValueError),
        (nn.Conv2d(1, 2, 3), np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 2, 2), np.float64), TypeError),
        (nn.Linear(3, 2), np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32), ValueError),
        (nn.MaxPool2d(2), np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 4, 4), np.float32), ValueError),
        (nn.ReLU(), np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), ValueError),
        (nn.Flatten(), np.zeros((2, 3, 2), np.float32), np.zeros((2, 3, 2), np.float32), ValueError),
        (nn.ReLU(), np.zeros((2, 3), np.float32), [[0.0] * 3] * 2, TypeError),
    ],
    ids=["conv-shape", "conv-dtype", "linear-shape", "pool-shape", "relu-shape", "flatten-shape", "relu-list"],
)
def test_backward_rejects_bad_dout(layer, x, dout, exc):
    layer(x)
    with pytest.raises(exc, match="dout"):
        layer.backward(dout)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: nn.Conv2d(0, 2, 3), ValueError, "in_channels"),
        (lambda: nn.Conv2d(2.0, 2, 3), TypeError, "in_channels"),
        (lambda: nn.Conv2d(1, 2, 0), ValueError, "kernel_size"),
        (lambda: nn.Conv2d(1, 2, 3, stride=0), ValueError, "stride"),
        (lambda: nn.Conv2d(1, 2, 3, padding=-1), ValueError, "padding"),
        (lambda: nn.Conv2d(1, 2, (3, 3, 3)), ValueError, "kernel_size"),
        (lambda: nn.Conv2d(1, 2, 3, bias="yes"), TypeError, "bias"),
        (lambda: nn.Conv2d(1, 2, 3, dtype=np.float16), TypeError, "dtype"),
        (lambda: nn.Linear(3, 0), ValueError, "out_features"),
        (lambda: nn.Linear(3, 2, dtype=np.int32), TypeError, "dtype"),
        (lambda: nn.MaxPool2d(2, padding=2), ValueError, "padding"),
        (lambda: nn.MaxPool2d(2, stride=0), ValueError, "stride"),
        (lambda: nn.CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "Module"),
    ],
    ids=["conv-in0", "conv-float-channels", "conv-k0", "conv-stride0", "conv-pad-neg", "conv-k-triple",
         "conv-bias-str", "conv-f16", "linear-out0", "linear-int", "pool-pad", "pool-stride0", "loss-reduction",
         "sequential-non-module"],
)
def test_constructors_validate_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, rng=0)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4, rng=1))
        self.scale = 2.0  # plain attribute, not registered


def test_custom_module_registration():
    m = TwoLayer()
    assert [n for n, _ in m.named_parameters()] == ["conv.weight", "conv.bias", "head.1.weight", "head.1.bias"]
    assert list(m.state_dict()) == ["conv.weight", "conv.bias", "head.1.weight", "head.1.bias"]
    assert m.parameters()[0] is m.conv.weight
    assert [type(c).__name__ for c in m.children()] == ["Conv2d", "Sequential"]
    assert len(m.modules()) == 5
    assert m.scale == 2.0
    assert repr(m).startswith(
        "TwoLayer(\n  (conv): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))\n  (head): Sequential("
    )
    with pytest.raises(NotImplementedError, match="TwoLayer"):
        m.backward(np.zeros(1))
    m.conv = nn.Conv2d(1, 2, 3, bias=False)  # re-assignment replaces the registration
    assert [n for n, _ in m.named_parameters()][:1] == ["conv.weight"] and len(m.parameters()) == 3
    del m.head
    assert len(m.parameters()) == 1


def test_assigning_parameters_before_init_fails():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="__init__"):
        Broken()


def test_train_eval_recurse():
    m = TwoLayer()
    assert m.eval() is m
    assert all(not sub.training for sub in m.modules())
    m.train()
    assert all(sub.training for sub in m.modules())
    with pytest.raises(TypeError, match="mode"):
        m.train("no")


def test_sequential_container():
    layers = [nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and list(sub.state_dict()) == ["2.weight", "2.bias"]
    with pytest.raises(IndexError):
        seq[3]
    seq.append(nn.ReLU())
    assert len(seq) == 4
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("to", [np.float64, np.float32])
def test_to_dtype(to, rng):
    model = _small_net(np.float32 if to == np.float64 else np.float64, seed=1)
    params = model.parameters()
    assert model.to(to) is model
    assert all(p.data.dtype == to and p.grad.dtype == to for p in model.parameters())
    assert all(a is b for a, b in zip(params, model.parameters()))  # same Parameter objects
    assert model(rng.standard_normal((2, 1, 8, 8)).astype(to)).dtype == to


# ---------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------


def test_state_dict_round_trip(rng):
    src = _small_net(np.float32, seed=1)
    dst = _small_net(np.float32, seed=2)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    state = src.state_dict()
    params_before = dst.parameters()
    data_before = [p.data for p in params_before]
    result = dst.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(dst(x), src(x))
    # loaded in place: the same Parameter objects and arrays (optimizers keep working)
    assert all(a is b.data for a, b in zip(data_before, dst.parameters()))
    # the state is a copy: training src afterwards does not change it
    src.parameters()[0].data += 1
    assert not np.array_equal(state["0.weight"], src.parameters()[0].data)


def _corrupt(state, how):
    state = OrderedDict(state)
    if how == "missing":
        del state["3.bias"]
    elif how == "unexpected":
        state["99.weight"] = np.zeros(3, np.float32)
    elif how == "shape":
        state["0.weight"] = np.zeros((4, 1, 2, 2), np.float32)
    elif how == "dtype":
        state["7.bias"] = state["7.bias"].astype(np.float64)
    return state


@pytest.mark.parametrize(
    "how, match",
    [("missing", "missing key.*'3.bias'"), ("unexpected", "unexpected key.*'99.weight'"),
     ("shape", r"'0.weight': shape \(4, 1, 2, 2\)"), ("dtype", "'7.bias': dtype float64")],
)
def test_load_state_dict_strict_errors_leave_model_unchanged(how, match):
    model = _small_net(np.float32, seed=3)
    before = model.state_dict()
    bad = _corrupt(_small_net(np.float32, seed=4).state_dict(), how)
    with pytest.raises(ValueError, match=match):
        model.load_state_dict(bad)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_load_state_dict_non_strict():
    model = _small_net(np.float32, seed=3)
    state = _corrupt(_corrupt(_small_net(np.float32, seed=4).state_dict(), "missing"), "unexpected")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["3.bias"] and unexpected == ["99.weight"]
    np.testing.assert_array_equal(model.state_dict()["0.weight"], state["0.weight"])
    with pytest.raises(ValueError, match="shape"):  # shapes are checked even when not strict
        model.load_state_dict(_corrupt(state, "shape"), strict=False)


def test_load_state_dict_type_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([("weight", np.zeros((2, 2)))])
    with pytest.raises(TypeError, match="ndarray"):
        model.load_state_dict({"weight": [[0.0, 0.0], [0.0, 0.0]], "bias": np.zeros(2, np.float32)})
