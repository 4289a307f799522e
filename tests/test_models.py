"""Tests for fastconv.models: the reference CNN (one definition, its variants) and to_torch.

The reference CNN must stay the network that ``scripts/train_mnist.py`` has always
trained: same layers and the same initial weights for the same seed, so that runs and
checkpoints stay comparable across versions. ``to_torch`` must give PyTorch's version of
any network of fastconv's layers: same repr, same state_dict, same outputs.
"""

import doctest
import hashlib
import sys
from collections import OrderedDict

import numpy as np
import pytest

from fastconv import models, nn
from fastconv.models import reference_cnn, reference_cnn_from_checkpoint, to_torch

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# What PyTorch prints for the hand-written torch.nn.Sequential of the MNIST network.
REFERENCE_REPR = """\
Sequential(
  (0): Conv2d(1, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (1): ReLU()
  (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (3): Conv2d(32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (4): ReLU()
  (5): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (6): Flatten(start_dim=1, end_dim=-1)
  (7): Linear(in_features=3136, out_features=128, bias=True)
  (8): ReLU()
  (9): Linear(in_features=128, out_features=10, bias=True)
)"""

# SHA-256 of reference_cnn(dtype, rng=np.random.default_rng(0)).state_dict(), hashed by
# state_dict_digest below. Obtained from the definition in fastconv/training.py before it
# moved here (commit 0a3a0d2, `git show 0a3a0d2:fastconv/training.py`), so a seed gives the
# weights it always gave.
REFERENCE_DIGEST = {
    np.dtype(np.float32): "56897246390903d2a424c05ee85ec47590c0e3f22282ec83c8b184a2c9cc288c",
    np.dtype(np.float64): "356225ecebb8a9134fea71fbdf308a9bcc3e0eb7ec5666f8688c568aa4c091d0",
}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def state_dict_digest(model):
    """SHA-256 over every state_dict entry in order: its key, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- reference_cnn


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_cnn_architecture(dtype):
    model = reference_cnn(dtype, rng=0)
    assert repr(model) == REFERENCE_REPR
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 3136), (128,), (10, 128), (10,)]
    assert sum(p.size for p in model.parameters()) == 421_642
    assert all(p.data.dtype == dtype for p in model.parameters()) and model.training
    out = model(np.zeros((3, 1, 28, 28), dtype))
    assert out.shape == (3, 10) and out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_cnn_weights_are_those_it_always_had(dtype):
    assert state_dict_digest(reference_cnn(dtype, rng=np.random.default_rng(0))) == REFERENCE_DIGEST[np.dtype(dtype)]


def test_rng_argument():
    digest = state_dict_digest(reference_cnn(rng=np.random.default_rng(3)))
    assert state_dict_digest(reference_cnn(rng=3)) == digest  # an int seeds one stream for all layers
    nn.manual_seed(3)
    assert state_dict_digest(reference_cnn()) == digest  # None: fastconv.nn's default generator
    assert state_dict_digest(reference_cnn()) != digest  # ... which has advanced
    gen = np.random.default_rng(3)
    reference_cnn(rng=gen)
    assert state_dict_digest(reference_cnn(rng=gen)) != digest  # a Generator is used as is
    with pytest.raises(TypeError, match="reference_cnn: rng"):
        reference_cnn(rng="3")


def test_variants():
    small = reference_cnn(np.float64, rng=0, in_channels=3, image_size=9, channels=(4, 6, 5), hidden=7,
                          num_classes=2, dropout=0.25)
    assert [type(m).__name__ for m in small] == ["Conv2d", "ReLU", "MaxPool2d"] * 3 + [
        "Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert small[0].in_channels == 3 and small[-4].in_features == 5 * 1 * 1  # 9 -> 4 -> 2 -> 1
    assert small[-2].p == 0.25
    assert small(np.zeros((2, 3, 9, 9))).shape == (2, 2)
    one_block = reference_cnn(rng=0, image_size=6, channels=[8], hidden=3, num_classes=4)
    assert one_block[4].in_features == 8 * 3 * 3 and len(one_block) == 7


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"channels": ()}, TypeError, "channels"), ({"channels": 32}, TypeError, "channels"),
     ({"channels": (32, 0)}, ValueError, "channels"), ({"hidden": 2.0}, TypeError, "hidden"),
     ({"num_classes": 0}, ValueError, "num_classes"), ({"in_channels": True}, TypeError, "in_channels"),
     ({"image_size": 3}, ValueError, "too small"), ({"dropout": 1.5}, ValueError, "dropout"),
     ({"dropout": "0.5"}, TypeError, "dropout"), ({"dtype": np.int32}, TypeError, "dtype")],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_reference_cnn_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        reference_cnn(rng=0, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_cnn_from_checkpoint(dtype):
    trained = reference_cnn(dtype, rng=5, image_size=8, channels=(2,), hidden=4)
    ckpt = {"config": {"dtype": np.dtype(dtype).name}, "model": trained.state_dict()}
    model = reference_cnn_from_checkpoint(ckpt, image_size=8, channels=(2,), hidden=4)
    assert not model.training and state_dict_digest(model) == state_dict_digest(trained)
    with pytest.raises(ValueError, match="shape"):
        reference_cnn_from_checkpoint(ckpt)  # the default architecture does not fit these weights


# --------------------------------------------------------------------------- to_torch


def every_layer(dtype):
    """A nested Sequential of every convertible layer, with non-default settings and names."""
    return nn.Sequential(OrderedDict([
        ("features", nn.Sequential(
            nn.Conv2d(3, 4, (2, 3), stride=(2, 1), padding=(1, 0), bias=False, dtype=dtype, rng=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.MaxPool2d((2, 1), stride=(1, 1)))),  # (N, 4, 9, 8) -> (N, 4, 5, 6) -> (N, 4, 3, 3) -> (N, 4, 2, 3)
        ("flat", nn.Flatten(2, 3)),
        ("mix", nn.Linear(6, 5, bias=False, dtype=dtype, rng=2)),
        ("drop", nn.Dropout(0.5)),
        ("flat_all", nn.Flatten()),
        ("head", nn.Linear(20, 2, dtype=dtype, rng=3)),
    ]))


MODELS = {
    "reference-cnn": (lambda dt: reference_cnn(dt, rng=0), (2, 1, 28, 28)),
    "small-reference-cnn-with-dropout": (
        lambda dt: reference_cnn(dt, rng=0, image_size=8, channels=(4, 6), hidden=16, num_classes=5, dropout=0.5),
        (3, 1, 8, 8)),
    "every-layer-nested": (every_layer, (2, 3, 9, 8)),
    "single-conv": (lambda dt: nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=dt, rng=4), (2, 2, 7, 6)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_to_torch_is_the_same_network(name, dtype, torch):
    make, x_shape = MODELS[name]
    model = make(dtype).eval()
    twin = to_torch(model)
    assert repr(twin) == repr(model)
    ours, theirs = model.state_dict(), twin.state_dict()
    assert list(theirs) == list(ours)
    for key, value in ours.items():
        assert theirs[key].dtype == (torch.float32 if dtype == np.float32 else torch.float64), key
        np.testing.assert_array_equal(theirs[key].numpy(), value, err_msg=key)
    assert [m.training for m in twin.modules()] == [False] * len(list(twin.modules()))
    x = np.random.default_rng(0).standard_normal(x_shape).astype(dtype)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    rtol, atol = (1e-4, 1e-5) if dtype == np.float32 else (1e-11, 1e-12)
    np.testing.assert_allclose(model(x), expected, rtol=rtol, atol=atol)


def test_to_torch_keeps_the_mode_and_copies_the_weights(torch):
    model = reference_cnn(rng=0, image_size=8, channels=(2,), hidden=4, dropout=0.5)
    model[-2].eval()  # only the dropout layer in evaluation mode
    twin = to_torch(model)
    assert [m.training for m in twin] == [m.training for m in model] and twin.training
    with torch.no_grad():
        twin[0].weight.zero_()
    assert model[0].weight.data.any()  # no shared memory


def test_to_torch_leaves_torchs_random_generator_alone(torch):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    to_torch(reference_cnn(rng=0))
    assert torch.equal(torch.rand(3), expected)


class Scale(nn.Module):
    def forward(self, x):
        return 2 * x


class MyLinear(nn.Linear):
    pass


@pytest.mark.parametrize(
    "model, match",
    [(nn.CrossEntropyLoss(), r"cannot convert a CrossEntropyLoss"),
     (nn.Sequential(nn.ReLU(), nn.Sequential(nn.Flatten(), Scale())), r"cannot convert a Scale \(at '1\.1'\)"),
     (nn.Sequential(MyLinear(2, 2)), r"cannot convert a MyLinear \(at '0'\)"),
     ("not a module", r"must be a fastconv\.nn\.Module; got str")],
    ids=["loss", "custom-module-nested", "subclass", "not-a-module"],
)
def test_to_torch_refuses_what_it_cannot_convert(model, match, torch):
    with pytest.raises(TypeError, match=match):
        to_torch(model)


def test_to_torch_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r"to_torch needs PyTorch.*pip install torch"):
        to_torch(nn.ReLU())


# --------------------------------------------------------------------------- documentation


def test_docstring_examples_run():
    """The examples in fastconv.models run; to_torch's only where PyTorch is installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        skip = {"fastconv.models.to_torch"}
    else:
        skip = set()
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(models) if t.examples and t.name not in skip]
    assert {t.name for t in tests} >= {"fastconv.models.reference_cnn"}
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
