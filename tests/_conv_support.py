"""What tests/test_conv_transpose.py and tests/test_conv_layers.py share.

- :func:`assert_matches_torch`: a layer against its ``to_torch`` twin (repr, ``state_dict``
  keys, output, dx, dw, db, inputs unchanged), and weights moved from torch into it.
"""

import numpy as np
import pytest



def tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


def assert_matches_torch(layer, x, seed, label):
    """``layer`` and ``fastconv.models.to_torch(layer)`` agree on everything; then torch's own weights move back."""
    torch = pytest.importorskip("torch")
    from fastconv.models import to_torch

    twin = to_torch(layer)
    assert repr(twin) == repr(layer), label
    assert list(twin.state_dict()) == list(layer.state_dict()), label
    for name, value in layer.state_dict().items():
        assert tuple(twin.state_dict()[name].shape) == value.shape, f"{label}: {name}"
    x_before = x.copy()
    y = layer(x)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = twin(tx)
    dout = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    dx = layer.backward(dout)
    ty.backward(torch.from_numpy(dout))
    tol = tolerance(x.dtype)
    np.testing.assert_allclose(y, ty.detach().numpy(), err_msg=f"{label}: output", **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), err_msg=f"{label}: dx", **tol)
    np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), err_msg=f"{label}: dw", **tol)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, twin.bias.grad.numpy(), err_msg=f"{label}: db", **tol)
    np.testing.assert_array_equal(x, x_before, err_msg=f"{label}: the input was modified")
    assert y.dtype == dx.dtype == x.dtype, label
    # torch -> fastconv: a torch layer's own initialisation loaded one for one
    with torch.no_grad():
        for p in twin.parameters():
            p.uniform_(-1, 1)
    layer.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    np.testing.assert_allclose(layer(x), twin(torch.from_numpy(x)).detach().numpy(), err_msg=f"{label}: loaded",
                               **tol)
