"""Tests for fastconv.models: the reference CNN (one definition, its variants), the ResNet and to_torch.

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
    "resnet-8": (lambda dt: models.resnet(8, 3, in_channels=2, num_classes=4, dtype=dt, rng=0), (2, 2, 9, 9)),
    "single-residual": (
        lambda dt: nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, dtype=dt, rng=5), nn.ReLU())), (2, 2, 4, 4)),
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
        expected = {np.float32: torch.float32, np.float64: torch.float64, np.int64: torch.int64}[value.dtype.type]
        assert theirs[key].dtype == expected and (expected == torch.int64) == key.endswith("num_batches_tracked"), key
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


# --------------------------------------------------------------------------- resnet


def resnet_parameter_count(depth, width, in_channels, num_classes):
    """He et al.'s count, worked out by hand: 3x3 convolutions without bias, BN (weight, bias), option B."""
    n, total, c_in = (depth - 2) // 6, 9 * in_channels * width + 2 * width, width
    for stage in range(3):
        c = width << stage
        for block in range(n):
            total += 9 * c_in * c + 9 * c * c + 4 * c
            if c_in != c:
                total += c_in * c + 2 * c  # the projection shortcut
            c_in = c
    return total + 4 * width * num_classes + num_classes


def small_resnet(dt, depth=8, width=4, in_channels=1, num_classes=10):
    return models.resnet(depth, width, in_channels=in_channels, num_classes=num_classes, dtype=dt, rng=0)


@pytest.mark.parametrize(
    "depth, width, in_channels, num_classes, x_shape, out_side",
    [(8, 4, 1, 10, (2, 1, 28, 28), 7), (14, 3, 3, 10, (2, 3, 32, 32), 8), (8, 2, 2, 7, (3, 2, 9, 5), 3),
     (8, 2, 1, 4, (2, 1, 1, 1), 1)],
    ids=["mnist-28", "cifar-32", "odd-9x5", "one-pixel"],
)
def test_resnet_architecture(depth, width, in_channels, num_classes, x_shape, out_side):
    model = models.resnet(depth, width, in_channels=in_channels, num_classes=num_classes, rng=0)
    x = np.random.default_rng(1).standard_normal(x_shape, dtype=np.float32)
    assert model(x).shape == (x_shape[0], num_classes) and model.training
    assert model[:6](x).shape == (x_shape[0], 4 * width, out_side, (x_shape[3] + 3) // 4)
    assert sum(p.size for p in model.parameters()) == resnet_parameter_count(depth, width, in_channels, num_classes)
    n = (depth - 2) // 6
    for stage in (model[3], model[4], model[5]):
        assert [type(m) for m in stage] == [nn.Residual, nn.ReLU] * n
    shortcuts = [key.split(".shortcut.")[0] for key in model.state_dict() if ".shortcut.0.weight" in key]
    assert shortcuts == ["4.0", "5.0"]  # projections only where the shape changes (option B)
    assert model[4][0].shortcut[0].stride == (2, 2) and model[4][0].body[0].stride == (2, 2)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_resnet_20_has_the_papers_size():
    assert resnet_parameter_count(20, 16, 3, 10) == 272474  # 0.27M in He et al.'s table 6
    assert sum(p.size for p in models.resnet(20, rng=0).parameters()) == 272474


def test_resnet_weights_come_from_rng():
    a, b, c = small_resnet(np.float32), small_resnet(np.float32), models.resnet(8, 4, in_channels=1, rng=1)
    assert state_dict_digest(a) == state_dict_digest(b) != state_dict_digest(c)
    conv, bn = a[0], a[1]
    bound = 1 / np.sqrt(9)  # PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.8 * bound
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    assert small_resnet(np.float64)[0].weight.dtype == np.float64


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"depth": 10}, ValueError, r"resnet: depth must be 6 \* n \+ 2.*got 10"),
     ({"depth": 2}, ValueError, r"depth must be 6 \* n \+ 2"), ({"depth": 0}, ValueError, r"depth must be positive"),
     ({"depth": "20"}, TypeError, r"resnet: depth must be an int"), ({"depth": 20.0}, TypeError, r"depth must be an int"),
     ({"width": 0}, ValueError, r"resnet: width must be positive"), ({"width": True}, TypeError, r"width must be an int"),
     ({"in_channels": -1}, ValueError, r"in_channels must be positive"),
     ({"num_classes": 0}, ValueError, r"num_classes must be positive"),
     ({"rng": "seed"}, TypeError, r"resnet: rng must be None, an int seed"),
     ({"dtype": np.int32}, TypeError, r"dtype")],
    ids=["depth-10", "depth-2", "depth-0", "depth-str", "depth-float", "width-0", "width-bool", "in-channels",
         "classes", "rng", "dtype"],
)
def test_resnet_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        models.resnet(**{"width": 2, **kwargs})


def test_resnet_rejects_an_input_of_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"Conv2d.*\(2, 3, 8, 8\)"):
        small_resnet(np.float32)(np.zeros((2, 3, 8, 8), np.float32))


@pytest.mark.parametrize("name", ["reference_cnn", "resnet"])
def test_model_from_checkpoint(name):
    arch = {"depth": 8, "width": 2, "in_channels": 1, "num_classes": 3} if name == "resnet" else {
        "image_size": 8, "channels": [2], "hidden": 4}
    trained = models.ARCHITECTURES[name](dtype=np.float64, rng=5, **arch)
    trained(np.random.default_rng(0).standard_normal((4, 1, 8, 8)))  # moves the batch norms' running statistics
    ckpt = {"config": {"dtype": "float64", "model": name, "architecture": arch}, "model": trained.state_dict()}
    model = models.model_from_checkpoint(ckpt)
    assert not model.training and state_dict_digest(model) == state_dict_digest(trained)
    with pytest.raises(ValueError, match="shape"):
        models.model_from_checkpoint({**ckpt, "config": {"dtype": "float64", "model": name}})  # default network
    with pytest.raises(ValueError, match=r"network 'vgg' is not one of \['reference_cnn', 'resnet'\]"):
        models.model_from_checkpoint({**ckpt, "config": {"dtype": "float64", "model": "vgg"}})


def test_model_from_checkpoint_of_an_earlier_version_is_the_reference_cnn():
    trained = reference_cnn(np.float32, rng=5)
    model = models.model_from_checkpoint({"config": {"dtype": "float32"}, "model": trained.state_dict()})
    assert state_dict_digest(model) == state_dict_digest(trained)


def resnet_pair(torch, dtype, train):
    model = small_resnet(dtype).train(train)
    if not train:  # running statistics away from their initial 0 and 1, so that eval mode uses them
        model.train()(np.random.default_rng(2).standard_normal((6, 1, 11, 11)).astype(dtype) * 3 + 1)
        model.eval()
    return model, to_torch(model)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_to_torch_gives_the_same_logits(dtype, train, torch):
    model, twin = resnet_pair(torch, dtype, train)
    assert repr(twin) == repr(model) and list(twin.state_dict()) == list(model.state_dict())
    assert type(twin[3][0]) is models.torch_residual_class(torch) and twin[3][0].shortcut is None
    assert [m.training for m in twin.modules()] == [train] * len(list(twin.modules()))
    x = np.random.default_rng(0).standard_normal((5, 1, 11, 11)).astype(dtype)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(model(x), expected, rtol=tol, atol=tol)
    for key, value in twin.state_dict().items():  # training mode: the same running statistics after the batch
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=tol, atol=tol, err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_sgd_steps_equal_torchs(dtype, torch):
    """Two SGD steps (Nesterov momentum, weight decay) from the same weights on the same batches."""
    from fastconv import optim
    model, twin = resnet_pair(torch, dtype, True)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn, gen = nn.CrossEntropyLoss(), np.random.default_rng(3)
    for _ in range(2):
        x, y = gen.standard_normal((6, 1, 10, 10)).astype(dtype), gen.integers(0, 10, 6)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        tol = 1e-4 if dtype == np.float32 else 1e-10
        assert float(loss) == pytest.approx(tloss.item(), rel=tol)
        for key, value in twin.state_dict().items():
            np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=tol, atol=tol, err_msg=key)


def test_guide_resnet_example_runs():
    """The example of docs/guide.md's ResNet section is a doctest."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    start = text.index("## Training a ResNet")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block and ">>>" in block.group(1), "the guide's ResNet section lost its python example"
    test = doctest.DocTestParser().get_doctest(block.group(1), {}, "guide-resnet", "docs/guide.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted >= 3 and failed == 0
