"""One training step of the reference MNIST CNN, in fastconv and in PyTorch.

The network is the one ``scripts/train_mnist.py`` trains (issue 4),
:func:`fastconv.models.reference_cnn`::

    conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1, ReLU, maxpool 2,
    flatten, linear 3136->128, ReLU, linear 128->10; cross-entropy; SGD, momentum 0.9

A step is forward, loss, backward and the optimizer update, on one fixed random
batch (the data pipeline is not part of the benchmark). The PyTorch twin is the
fastconv model converted by :func:`fastconv.models.to_torch`, so it starts from the
same weights and :func:`check_train_step` can compare one step of each exactly.
"""

import numpy as np

TRAIN_BATCHES = (64, 256)
TRAIN_IMPLEMENTATIONS = ("fastconv", "torch")
LR = 0.05
MOMENTUM = 0.9

#: Forward FLOP per image (multiply-add = 2): conv1 + conv2 + fc1 + fc2. A training
#: step costs about 3x this (forward, input gradient, weight gradient).
FORWARD_FLOP_PER_IMAGE = 2 * (32 * 28 * 28 * 1 * 9 + 64 * 14 * 14 * 32 * 9 + 3136 * 128 + 128 * 10)


def make_batch(batch, seed=0, dtype=np.float32):
    """A random, normalised-looking batch: x (batch, 1, 28, 28) and labels (batch,) in [0, 10)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, size=batch)
    return x, y


class FastconvStep:
    """Callable: one SGD-momentum step of the fastconv model on a fixed batch; returns the loss.

    Parameters
    ----------
    batch : int
    seed : int
        Seeds the weights and the batch.
    """

    name = "fastconv"

    def __init__(self, batch, seed=0):
        from fastconv import nn, optim
        from fastconv.models import reference_cnn

        self.model = reference_cnn(rng=np.random.default_rng(seed))
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.x, self.y = make_batch(batch, seed)

    def __call__(self):
        loss = self.loss_fn(self.model(self.x), self.y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.opt.step()
        self.opt.zero_grad()
        return float(loss)

    def parameters(self):
        """Current parameter values, as a dict name -> ndarray (PyTorch's names)."""
        return {k: np.asarray(v) for k, v in self.model.state_dict().items()}


class TorchStep:
    """Callable: the same step in PyTorch, starting from the fastconv model's initial weights."""

    name = "torch"

    def __init__(self, batch, seed=0):
        import torch

        from fastconv.models import to_torch

        twin = FastconvStep(batch, seed)
        self.model = to_torch(twin.model)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.x = torch.from_numpy(twin.x)
        self.y = torch.from_numpy(twin.y)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def parameters(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}


STEPS = {"fastconv": FastconvStep, "torch": TorchStep}


def unavailable_reason(impl):
    """None if the training step of ``impl`` can run, else why not."""
    try:
        if impl == "torch":
            import torch  # noqa: F401
        else:
            import fastconv.nn  # noqa: F401
            import fastconv.optim  # noqa: F401
    except ImportError as exc:
        return f"{impl} training step unavailable: {exc}"
    return None


def check_train_step(batch=8, steps=2, rtol=1e-4):
    """Assert that fastconv's and PyTorch's training steps agree (loss and weights after each step).

    Both start from the same weights and batch; after each of ``steps`` steps the losses
    must agree to ``rtol`` and every parameter to ``rtol`` relative to its largest entry.
    Needs torch.
    """
    fc, th = FastconvStep(batch), TorchStep(batch)
    for step in range(steps):
        loss_fc, loss_th = fc(), th()
        assert abs(loss_fc - loss_th) <= rtol * abs(loss_th), (
            f"training step {step}: fastconv loss {loss_fc!r} != torch loss {loss_th!r}"
        )
        p_fc, p_th = fc.parameters(), th.parameters()
        assert p_fc.keys() == p_th.keys(), f"parameter names differ: {sorted(p_fc)} vs {sorted(p_th)}"
        for name in p_th:
            err = np.max(np.abs(p_fc[name] - p_th[name])) / max(np.max(np.abs(p_th[name])), 1e-30)
            assert err <= rtol, f"training step {step}: parameter {name} differs from torch by {err:.3g} (relative)"


def check_loss_decreases(batch=8, steps=5):
    """Without torch: assert that repeated fastconv steps on one batch lower its loss (a sanity check)."""
    step = FastconvStep(batch)
    losses = [step() for _ in range(steps)]
    assert all(np.isfinite(losses)), f"non-finite training loss: {losses}"
    assert losses[-1] < losses[0], f"training on one fixed batch did not lower the loss: {losses}"
