"""nn.Identity, nn.Residual and the guide's hand-written bottleneck block.

Residual blocks are checked with float64 finite differences (input and parameter
gradients) and against PyTorch (a ResNet basic block with a strided projection shortcut:
outputs, input gradient, every parameter gradient, running statistics, state_dict names).
The guide's example (docs/guide.md) is run as a doctest here, and its class compared with
PyTorch.
"""

import doctest
import pathlib
import re

import numpy as np
import pytest

from fastconv import nn

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide.md"
SECTION = "## Batch norm, residual blocks and writing your own layer"


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _f64_block(rng_seed=0, shortcut=False):
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2 if shortcut else 1, padding=1, dtype=np.float64, rng=rng_seed),
                         nn.BatchNorm2d(4, dtype=np.float64), nn.ReLU(),
                         nn.Conv2d(4, 4 if shortcut else 3, 3, padding=1, dtype=np.float64, rng=rng_seed + 1))
    sc = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, dtype=np.float64, rng=rng_seed + 2),
                       nn.BatchNorm2d(4, dtype=np.float64)) if shortcut else None
    return nn.Residual(body, sc)


def test_identity():
    x = np.arange(6.0).reshape(2, 3)
    ident = nn.Identity(54, unused="argument")
    assert ident(x) is x
    d = np.ones_like(x)
    assert ident.backward(d) is d and ident.backward(d, input_grad=False) is None
    with pytest.raises(ValueError, match=r"Identity.backward: dout must have the forward output's shape \(2, 3\)"):
        ident.backward(np.ones(3))
    assert repr(ident) == "Identity()"


@pytest.mark.parametrize("shortcut", [False, True], ids=["identity-skip", "projection-shortcut"])
def test_residual_gradients_match_finite_differences(shortcut, rng, numgrad):
    block = _f64_block(shortcut=shortcut)
    x = rng.standard_normal((2, 3, 4, 4))
    y = block(x)
    dout = rng.standard_normal(y.shape)
    block.zero_grad()
    dx = block.backward(dout)

    def loss():
        return float((block(x) * dout).sum())

    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-7, err_msg="dx")
    for name, p in block.named_parameters():
        np.testing.assert_allclose(p.grad, numgrad(loss, p.data), rtol=1e-6, atol=1e-7, err_msg=name)


def test_residual_output_is_the_sum_of_the_branches(rng):
    block = _f64_block(shortcut=True)
    x = rng.standard_normal((2, 3, 4, 4))
    block.eval()
    np.testing.assert_array_equal(block(x), block.body(x) + block.shortcut(x))
    plain = _f64_block()
    plain.eval()
    np.testing.assert_array_equal(plain(x), plain.body(x) + x)


def test_residual_gradients_accumulate_and_input_grad_false(rng):
    block = _f64_block(shortcut=True)
    x = rng.standard_normal((2, 3, 4, 4))
    dout = rng.standard_normal(block(x).shape)
    block.zero_grad()
    block.backward(dout)
    once = [p.grad.copy() for p in block.parameters()]
    assert block.backward(dout, input_grad=False) is None
    for p, g in zip(block.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)


def test_residual_state_dict_names_and_errors(rng):
    block = _f64_block(shortcut=True)
    keys = list(block.state_dict())
    assert keys[:3] == ["body.0.weight", "body.0.bias", "body.1.weight"]
    assert "shortcut.0.weight" in keys and "shortcut.1.running_var" in keys
    assert list(_f64_block().state_dict())[-1] == "body.3.bias"
    with pytest.raises(ValueError, match=r"Residual: body\(x\) and x must have the same shape; got \(2, 4, 2, 2\)"):
        nn.Residual(nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64))(rng.standard_normal((2, 3, 4, 4)))
    with pytest.raises(TypeError, match="Residual: body must be a Module"):
        nn.Residual(lambda x: x)
    with pytest.raises(TypeError, match="Residual: shortcut must be a Module or None"):
        nn.Residual(nn.Identity(), shortcut="conv")


def _torch_basic_block(torch, ours, dtype):
    """A PyTorch module with the same structure, names and parameters as ``ours``."""
    tdt = torch.float32 if dtype == np.float32 else torch.float64

    def convert(m):
        if isinstance(m, nn.Sequential):
            return torch.nn.Sequential(*[convert(c) for c in m])
        if isinstance(m, nn.Conv2d):
            return torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                   bias=m.bias is not None, dtype=tdt)
        if isinstance(m, nn.BatchNorm2d):
            return torch.nn.BatchNorm2d(m.num_features, dtype=tdt)
        return torch.nn.ReLU()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = convert(ours.body)
            self.shortcut = convert(ours.shortcut)

        def forward(self, x):
            return self.body(x) + self.shortcut(x)

    block = Block()
    block.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    return block


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_resnet_basic_block_matches_torch(torch, dtype, rng):
    body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False, dtype=dtype, rng=0),
                         nn.BatchNorm2d(6, dtype=dtype), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, bias=False, dtype=dtype, rng=1), nn.BatchNorm2d(6, dtype=dtype))
    shortcut = nn.Sequential(nn.Conv2d(3, 6, 1, stride=2, bias=False, dtype=dtype, rng=2),
                             nn.BatchNorm2d(6, dtype=dtype))
    ours = nn.Residual(body, shortcut)
    theirs = _torch_basic_block(torch, ours, dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for step in range(3):
        x = rng.standard_normal((4, 3, 8, 8)).astype(dtype)
        dout = rng.standard_normal((4, 6, 4, 4)).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = theirs(tx)
        ty.backward(torch.from_numpy(dout))
        np.testing.assert_allclose(ours(x), ty.detach().numpy(), err_msg=f"step {step}: y", **tol)
        np.testing.assert_allclose(ours.backward(dout), tx.grad.numpy(), err_msg=f"step {step}: dx", **tol)
    for name, tp in theirs.named_parameters():
        ours_p = dict(ours.named_parameters())[name]
        np.testing.assert_allclose(ours_p.grad, tp.grad.numpy(), err_msg=name, **tol)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), err_msg=key, **tol)


# ---------------------------------------------------------------------------------------
# The guide's example
# ---------------------------------------------------------------------------------------


def _guide_example():
    text = GUIDE.read_text()
    start = text.index(SECTION)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block and ">>>" in block.group(1), "the guide's section lost its python example"
    return block.group(1), text[:start].count("\n") + text[start:start + block.start()].count("\n") + 1


@pytest.fixture(scope="module")
def guide_namespace():
    source, line = _guide_example()
    test = doctest.DocTestParser().get_doctest(source, {}, "guide-bottleneck", str(GUIDE), line)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=False)
    return runner.summarize(verbose=False), test.globs


def test_guide_bottleneck_example_runs(guide_namespace):
    (failed, attempted), _ = guide_namespace
    assert attempted > 10 and failed == 0, f"{failed} of {attempted} examples of docs/guide.md failed (see output)"


def test_guide_bottleneck_matches_torch(torch, guide_namespace, rng):
    """The guide's Bottleneck is a real ResNet bottleneck: same outputs and gradients as PyTorch's."""
    Bottleneck = guide_namespace[1]["Bottleneck"]
    ours = Bottleneck(8, 4, dtype=np.float64, rng=3)
    t = torch.nn

    class TorchBottleneck(t.Module):
        def __init__(self):
            super().__init__()
            d = torch.float64
            self.conv1, self.bn1 = t.Conv2d(8, 4, 1, bias=False, dtype=d), t.BatchNorm2d(4, dtype=d)
            self.conv2, self.bn2 = t.Conv2d(4, 4, 3, padding=1, bias=False, dtype=d), t.BatchNorm2d(4, dtype=d)
            self.conv3, self.bn3 = t.Conv2d(4, 8, 1, bias=False, dtype=d), t.BatchNorm2d(8, dtype=d)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = torch.relu(self.bn2(self.conv2(h)))
            return torch.relu(self.bn3(self.conv3(h)) + x)

    theirs = TorchBottleneck()
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((2, 8, 6, 6))
    dout = rng.standard_normal(x.shape)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(ours(x), ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.backward(dout), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    for name, tp in theirs.named_parameters():
        np.testing.assert_allclose(dict(ours.named_parameters())[name].grad, tp.grad.numpy(), rtol=1e-9, atol=1e-10,
                                   err_msg=name)
