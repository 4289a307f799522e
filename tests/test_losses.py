"""Losses: MSE, L1, NLL, cross-entropy and BCE-with-logits, functional and layer.

Every loss, each reduction, with and without class weights, ``ignore_index``,
``label_smoothing``, ``pos_weight`` and class-probability targets, against the textbook
reference (:mod:`fastconv.reference`), float64 finite differences and PyTorch (values and
input gradients, float32 and float64); class-index losses on ``(N, C)``, ``(N, C, d1, d2)``
and ``(C,)`` inputs. Also extreme logits, NaN, errors, inputs never modified, any layout.
"""

import warnings
from typing import Callable, NamedTuple

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn
from fastconv import reference as ref

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
REDUCTIONS = ["mean", "sum", "none"]


class Case(NamedTuple):
    name: str  # fastconv.functional.<name> and <name>_backward; torch.nn.functional.<name>
    layer: Callable  # kwargs -> the nn layer
    make: Callable  # (rng, dtype) -> (input, target, kwargs)
    ref_kwargs: Callable = lambda kw: kw  # the reference's arguments


def _regression(rng, dtype):
    return rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype), {}


def _classes(shape, weighted=False, ignore=False, smoothing=0.0, log_probs=False):
    def make(rng, dtype):
        C = shape[0] if len(shape) == 1 else shape[1]
        x = (rng.standard_normal(shape) * 2).astype(dtype)
        if log_probs:
            x = ref.log_softmax(x, 0 if len(shape) == 1 else 1)
        sample = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = rng.integers(0, C, sample)
        kwargs = {}
        if ignore:
            kwargs["ignore_index"] = 1  # a real class, ignored
            t.reshape(-1)[::3] = 1
        if weighted:
            kwargs["weight"] = rng.uniform(0.5, 2.0, C).astype(dtype)
        if smoothing:
            kwargs["label_smoothing"] = smoothing
        return x, t, kwargs
    return make


def _probabilities(shape, smoothing=0.0, weighted=False):
    def make(rng, dtype):
        x = rng.standard_normal(shape).astype(dtype)
        t = ref.softmax(rng.standard_normal(shape) * 2, 1).astype(dtype)
        kwargs = {"label_smoothing": smoothing} if smoothing else {}
        if weighted:
            kwargs["weight"] = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
        return x, t, kwargs
    return make


def _bce(weighted=False, pos_weighted=False):
    def make(rng, dtype):
        x = (rng.standard_normal((4, 3)) * 3).astype(dtype)
        t = rng.uniform(0, 1, (4, 3)).astype(dtype)
        kwargs = {}
        if weighted:
            kwargs["weight"] = rng.uniform(0.5, 2.0, (4, 1)).astype(dtype)
        if pos_weighted:
            kwargs["pos_weight"] = rng.uniform(0.5, 3.0, 3).astype(dtype)
        return x, t, kwargs
    return make


CASES = {
    "mse": Case("mse_loss", nn.MSELoss, _regression),
    "l1": Case("l1_loss", nn.L1Loss, _regression),
    "nll": Case("nll_loss", nn.NLLLoss, _classes((5, 4), log_probs=True)),
    "nll-weight-ignore-4d": Case("nll_loss", nn.NLLLoss, _classes((2, 3, 2, 3), True, True, log_probs=True)),
    "nll-1d": Case("nll_loss", nn.NLLLoss, _classes((4,), True, log_probs=True)),
    "ce": Case("cross_entropy", nn.CrossEntropyLoss, _classes((5, 4))),
    "ce-weight": Case("cross_entropy", nn.CrossEntropyLoss, _classes((6, 3), weighted=True)),
    "ce-ignore": Case("cross_entropy", nn.CrossEntropyLoss, _classes((6, 3), ignore=True)),
    "ce-smoothing": Case("cross_entropy", nn.CrossEntropyLoss, _classes((5, 4), smoothing=0.2)),
    "ce-all-4d": Case("cross_entropy", nn.CrossEntropyLoss, _classes((2, 3, 2, 3), True, True, 0.1)),
    "ce-1d-smoothing": Case("cross_entropy", nn.CrossEntropyLoss, _classes((4,), smoothing=0.3)),
    "ce-probabilities": Case("cross_entropy", nn.CrossEntropyLoss, _probabilities((4, 3), 0.1, True)),
    "ce-probabilities-3d": Case("cross_entropy", nn.CrossEntropyLoss, _probabilities((2, 3, 4))),
    "bce": Case("binary_cross_entropy_with_logits", nn.BCEWithLogitsLoss, _bce()),
    "bce-weight-pos_weight": Case("binary_cross_entropy_with_logits", nn.BCEWithLogitsLoss, _bce(True, True)),
}
CASE_PARAMS = [pytest.param(c, id=k) for k, c in CASES.items()]


def _loss(case, x, t, kwargs, reduction):
    return getattr(fc, case.name)(x, t, reduction=reduction, **kwargs)


def _grad(case, dout, x, t, kwargs, reduction):
    return getattr(fc, case.name + "_backward")(dout, x, t, reduction=reduction, **kwargs)


def _dout(rng, reduction, loss):
    return 1.7 if reduction != "none" else rng.standard_normal(np.shape(loss))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_loss_matches_reference_and_torch(case, dtype, reduction, rng):
    x, t, kwargs = case.make(rng, dtype)
    loss = _loss(case, x, t, kwargs, reduction)
    expected = getattr(ref, case.name)(x, t, reduction=reduction, **kwargs)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.dtype == dtype
    else:
        assert isinstance(loss, float)
    np.testing.assert_allclose(loss, expected, rtol=rtol, atol=rtol, err_msg="vs reference")
    dout = _dout(rng, reduction, loss)
    grad = _grad(case, dout, x, t, kwargs, reduction)
    assert grad.dtype == dtype and grad.shape == x.shape
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tkw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    tloss = getattr(torch.nn.functional, case.name)(tx, torch.from_numpy(t), reduction=reduction, **tkw)
    tloss.backward(torch.as_tensor(dout, dtype=tx.dtype).expand_as(tloss) if reduction == "none"
                   else torch.tensor(dout, dtype=tx.dtype))
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=rtol, atol=rtol, err_msg="loss vs torch")
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=rtol, atol=rtol, err_msg="gradient vs torch")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_loss_gradient_matches_finite_differences(case, reduction, rng, numgrad):
    x, t, kwargs = case.make(rng, np.float64)
    dout = _dout(rng, reduction, _loss(case, x, t, kwargs, reduction))
    expected = numgrad(lambda: float(np.sum(_loss(case, x, t, kwargs, reduction) * dout)), x)
    np.testing.assert_allclose(_grad(case, dout, x, t, kwargs, reduction), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_loss_layer_matches_functional(case, reduction, rng):
    x, t, kwargs = case.make(rng, np.float32)
    layer = case.layer(reduction=reduction, **kwargs)
    loss = layer(x, t)
    np.testing.assert_array_equal(loss, _loss(case, x, t, kwargs, reduction))
    dout = _dout(rng, reduction, loss)
    np.testing.assert_array_equal(layer.backward(dout), _grad(case, dout, x, t, kwargs, reduction))
    np.testing.assert_array_equal(layer.backward(), _grad(case, 1.0, x, t, kwargs, reduction))  # dout: 1.0
    assert layer.backward(dout, input_grad=False) is None
    assert layer.state_dict() == {}


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_loss_leaves_inputs_alone_and_takes_any_layout(case, rng):
    x, t, kwargs = case.make(rng, np.float64)
    xs = np.asfortranarray(x)  # another layout, same values
    xs.flags.writeable = False
    ts = t.T.copy().T if t.ndim > 1 else t[::-1].copy()[::-1] if t.ndim else t.copy()
    for a in (kwargs.get("weight"), kwargs.get("pos_weight")):
        if a is not None:
            a.flags.writeable = False
    before = [a.copy() for a in (xs, ts, *kwargs.values()) if isinstance(a, np.ndarray)]
    for reduction in REDUCTIONS:  # equal up to the order of the sums
        np.testing.assert_allclose(_loss(case, xs, ts, kwargs, reduction), _loss(case, x, t, kwargs, reduction),
                                   rtol=1e-14)
        np.testing.assert_allclose(_grad(case, 1.0, xs, ts, kwargs, reduction),
                                   _grad(case, 1.0, x, t, kwargs, reduction), rtol=1e-14)
    after = [a for a in (xs, ts, *kwargs.values()) if isinstance(a, np.ndarray)]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_is_exact_for_huge_logits(dtype):
    torch = pytest.importorskip("torch")
    x = np.array([1e4, -1e4, 1e4, -1e4, 100.0, -100.0, 0.0, 40.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0], dtype)
    pw = np.array([3.0], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = fc.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=pw)
        grad = fc.binary_cross_entropy_with_logits_backward(1.0, x, t, reduction="sum", pos_weight=pw)
    np.testing.assert_allclose(loss[:4], [0.0, 0.0, 1e4, 3e4], rtol=1e-12)
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.from_numpy(t), reduction="none",
                                                              pos_weight=torch.from_numpy(pw))
    tl.sum().backward()
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=rtol)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_huge_logits_and_smoothing_is_finite(dtype):
    torch = pytest.importorskip("torch")
    x = np.array([[1e4, -1e4, 0.0], [0.0, 3e4, -3e4]], dtype)
    t = np.array([0, 2])
    loss = fc.cross_entropy(x, t, label_smoothing=0.1, reduction="none")
    grad = fc.cross_entropy_backward(1.0, x, t, label_smoothing=0.1)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(t), label_smoothing=0.1, reduction="none")
    tl.mean().backward()
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "binary_cross_entropy_with_logits", "cross_entropy",
                                  "nll_loss"])
def test_nan_propagates_like_torch(name, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3))
    x[1, 2] = np.nan
    t = rng.integers(0, 3, 4) if name in ("cross_entropy", "nll_loss") else rng.uniform(0, 1, (4, 3))
    for reduction in REDUCTIONS:
        loss = getattr(fc, name)(x, t, reduction=reduction)
        grad = getattr(fc, name + "_backward")(1.0, x, t, reduction=reduction)
        tx = torch.tensor(x, requires_grad=True)
        tl = getattr(torch.nn.functional, name)(tx, torch.from_numpy(t), reduction=reduction)
        tl.sum().backward()
        np.testing.assert_array_equal(np.isnan(loss), np.isnan(tl.detach().numpy()), err_msg=reduction)
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(tx.grad.numpy()), err_msg=reduction)
        finite = ~np.isnan(grad)
        np.testing.assert_allclose(grad[finite], tx.grad.numpy()[finite], rtol=1e-12, atol=1e-15)


def test_all_targets_ignored_gives_nan_mean_like_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((2, 3))
    t = np.array([-100, -100])
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(t))
    tl.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(fc.cross_entropy(x, t)) and np.isnan(tl.item())
        assert fc.cross_entropy(x, t, reduction="sum") == 0.0
        np.testing.assert_array_equal(np.isnan(fc.cross_entropy_backward(1.0, x, t)), np.isnan(tx.grad.numpy()))


def test_ignore_index_may_lie_outside_the_classes():
    x = np.log(np.full((3, 2), 0.5))
    t = np.array([0, 7, 1])
    assert fc.nll_loss(x, t, ignore_index=7) == pytest.approx(np.log(2.0))
    np.testing.assert_array_equal(fc.nll_loss(x, t, ignore_index=7, reduction="none"), [np.log(2.0), 0.0, np.log(2.0)])


def test_deprecated_size_average_and_reduce_map_to_reduction(rng):
    x, t = rng.standard_normal(4), rng.standard_normal(4)
    with pytest.warns(UserWarning, match="deprecated"):
        layer = nn.MSELoss(size_average=False)
    assert layer.reduction == "sum"
    with pytest.warns(UserWarning, match="deprecated"):
        assert isinstance(fc.l1_loss(x, t, reduce=False), np.ndarray)


def test_cross_entropy_loss_keeps_pytorch_argument_order():
    w = np.ones(3)
    layer = nn.CrossEntropyLoss(w, None, 2, None, "sum", 0.25)
    assert (layer.ignore_index, layer.reduction, layer.label_smoothing) == (2, "sum", 0.25)
    assert layer.weight is not w and np.array_equal(layer.weight, w)
    assert nn.NLLLoss(None, None, 5).ignore_index == 5
    assert nn.BCEWithLogitsLoss(None, None, None, "none", w).pos_weight is not None


def _pattern(*needles):
    return "(?s)" + "".join(f"(?=.*(?:{n}))" for n in needles)


def _layer_backward(layer, dout):
    """``layer.backward(dout)`` after a forward pass on three zeros."""
    layer(np.zeros(3), np.zeros(3))
    return layer.backward(dout)


@pytest.mark.parametrize(
    "call, error, needles",
    [
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.array([0, 3])), ValueError,
         ("cross_entropy", "target", r"\[0, 3\)", r"\(2, 3\)", r"\(2,\)", r"\[0, 3\]")),
        (lambda: fc.nll_loss(np.zeros((2, 3, 4)), np.full((2, 4), -1)), ValueError,
         ("nll_loss", "target", r"\[0, 3\)", r"\(2, 3, 4\)", r"\(2, 4\)", "ignore_index=-100")),
        (lambda: nn.CrossEntropyLoss(ignore_index=0)(np.zeros((2, 3)), np.array([0, -1])), ValueError,
         ("CrossEntropyLoss", "target", r"\[-1, -1\]")),
        (lambda: fc.cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3), int)), ValueError,
         ("cross_entropy", "target", r"\(2, 4\)", r"\(2, 3\)")),
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.zeros(2)), TypeError, ("cross_entropy", "target", "integer")),
        (lambda: fc.nll_loss(np.zeros((2, 3)), np.zeros((2, 3))), TypeError, ("nll_loss", "target", "integer")),
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), weight=np.ones(2)), ValueError,
         ("cross_entropy", "weight", r"\(3,\)", r"\(2,\)")),
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), weight=np.ones(3, np.float32)), TypeError,
         ("cross_entropy", "weight", "float64")),
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), label_smoothing=1.5), ValueError,
         ("cross_entropy", "label_smoothing")),
        (lambda: fc.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), ignore_index=1.0), TypeError,
         ("cross_entropy", "ignore_index")),
        (lambda: fc.cross_entropy(np.zeros(()), np.zeros((), int)), ValueError, ("cross_entropy", "input")),
        (lambda: fc.mse_loss(np.zeros(3), np.zeros(4)), ValueError, ("mse_loss", "target", r"\(3,\)", r"\(4,\)")),
        (lambda: fc.l1_loss(np.zeros(3), np.zeros(3, np.float32)), TypeError, ("l1_loss", "target", "float32")),
        (lambda: fc.mse_loss(np.zeros(3, int), np.zeros(3)), TypeError, ("mse_loss", "input")),
        (lambda: fc.mse_loss(np.zeros(3), np.zeros(3), reduction="avg"), ValueError, ("mse_loss", "reduction")),
        (lambda: nn.L1Loss(reduction=None), ValueError, ("L1Loss", "reduction")),
        (lambda: fc.binary_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((2, 3)), pos_weight=np.ones(2)),
         ValueError, ("binary_cross_entropy_with_logits", "pos_weight", r"\(2,\)", r"\(2, 3\)")),
        (lambda: fc.mse_loss_backward(np.ones(2), np.zeros(3), np.zeros(3)), TypeError, ("mse_loss_backward", "dout")),
        (lambda: fc.mse_loss_backward(np.ones(2), np.zeros(3), np.zeros(3), reduction="none"), ValueError,
         ("mse_loss_backward", "dout", r"\(3,\)", r"\(2,\)")),
        (lambda: fc.nll_loss_backward("1", np.zeros((2, 3)), np.zeros(2, int)), TypeError, ("nll_loss_backward", "dout")),
        (lambda: nn.NLLLoss(ignore_index=True), TypeError, ("NLLLoss", "ignore_index")),
        (lambda: nn.CrossEntropyLoss(weight=[1.0, 2.0]), TypeError, ("CrossEntropyLoss", "weight")),
        # Found by tests/test_fuzz.py: a float16 dout array was accepted by every loss gradient.
        (lambda: fc.binary_cross_entropy_with_logits_backward(np.ones((2, 3), np.float16), np.zeros((2, 3)),
                                                              np.zeros((2, 3)), reduction="none"), TypeError,
         ("binary_cross_entropy_with_logits_backward", "dout", "float16")),
        (lambda: fc.mse_loss_backward(np.ones((), np.float16), np.zeros(3), np.zeros(3)), TypeError,
         ("mse_loss_backward", "dout", "float16")),
        (lambda: _layer_backward(nn.BCEWithLogitsLoss(reduction="none"), np.ones(3, np.complex128)), TypeError,
         ("BCEWithLogitsLoss", "dout", "complex128")),
    ],
    ids=["ce-target-too-big", "nll-target-negative-4d", "ce-ignored-class-0", "ce-target-shape", "ce-float-target",
         "nll-float-target", "weight-shape", "weight-dtype", "smoothing-range", "ignore-float", "ce-0d-input",
         "mse-shape", "l1-dtype", "mse-int", "reduction", "layer-reduction", "pos_weight-shape", "dout-array",
         "dout-none-shape", "dout-str", "layer-ignore-bool", "layer-weight-list", "bce-dout-float16",
         "mse-dout-0d-float16", "layer-dout-complex"],
)
def test_loss_errors_name_the_argument_and_shapes(call, error, needles):
    with pytest.raises(error, match=_pattern(*needles)):
        call()


def test_loss_layers_need_a_forward_first():
    for layer in (nn.MSELoss(), nn.L1Loss(), nn.NLLLoss(), nn.BCEWithLogitsLoss(), nn.CrossEntropyLoss()):
        with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.*forward"):
            layer.backward()
    with nn.no_grad():
        layer = nn.MSELoss()
        layer(np.zeros(2), np.zeros(2))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward()
