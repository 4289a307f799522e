"""Ready-made networks, and their PyTorch twins.

:func:`reference_cnn` is the one definition of the reference CNN that
``scripts/train_mnist.py`` trains, the benchmarks time and the tests check against
PyTorch; its keyword arguments also build smaller variants of it.
:func:`to_torch` turns any fastconv network made of the layers :mod:`fastconv.nn` has
into the equivalent ``torch.nn`` network with the same weights, e.g. to compare the two
engines on the same model. :func:`reference_cnn_from_checkpoint` rebuilds a trained
reference CNN from a checkpoint of :func:`fastconv.training.save_checkpoint`.
:func:`resnet` builds He et al.'s CIFAR-style residual network, and
:func:`model_from_checkpoint` rebuilds whichever of the two networks a checkpoint records.
"""

import functools
import numbers
from collections import OrderedDict

import numpy as np

from . import nn

__all__ = ["reference_cnn", "reference_cnn_from_checkpoint", "resnet", "model_from_checkpoint", "to_torch"]


def _positive_int(value, name, owner="reference_cnn"):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int; got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be positive; got {value!r}")
    return int(value)


def _generator_of(rng, owner):
    """One generator shared by every layer: an int seeds a new one; None stays None (nn's default)."""
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(int(rng))  # one stream for every layer (a layer given an int seeds its own)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"{owner}: rng must be None, an int seed or a numpy.random.Generator; got {rng!r}")
    return rng


def reference_cnn(dtype=np.float32, rng=None, *, in_channels=1, image_size=28, channels=(32, 64), hidden=128,
                  num_classes=10, dropout=0.0):
    """Build the reference CNN: convolution blocks, then a two-layer classifier.

    With the defaults, the MNIST network (421,642 parameters)::

        conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1, ReLU, maxpool 2,
        flatten, linear 3136->128, ReLU, linear 128->10

    In general, one block ``conv c_in->c 3x3 pad 1, ReLU, maxpool 2`` per entry ``c``
    of ``channels`` (each block halves the image side, rounding down), then ``flatten,
    linear -> hidden, ReLU, [dropout,] linear hidden -> num_classes``.

    Parameters
    ----------
    dtype : {numpy.float32, numpy.float64}
        Parameter dtype; inputs must have the same dtype.
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's default initialisation), drawn layer
        after layer, weight before bias. An int seeds one new generator shared by all
        the layers; ``None`` draws from fastconv.nn's default generator (see
        :func:`fastconv.nn.manual_seed`), as a layer built with ``rng=None`` does.
    in_channels : int, default 1
        Channels of the input images.
    image_size : int, default 28
        Height and width of the input images.
    channels : sequence of int, default (32, 64)
        Output channels of each convolution block (at least one block).
    hidden : int, default 128
        Width of the hidden linear layer.
    num_classes : int, default 10
        Number of logits.
    dropout : float, default 0.0
        Probability of a :class:`fastconv.nn.Dropout` layer before the last linear layer;
        0 puts no layer there. Its masks come from fastconv.nn's default generator, not
        from ``rng``.

    Returns
    -------
    fastconv.nn.Sequential
        Maps ``(N, in_channels, image_size, image_size)`` images to ``(N, num_classes)``
        logits; in training mode. Its ``state_dict`` keys are those of the same
        ``torch.nn.Sequential`` (``"0.weight"``, ``"0.bias"``, ``"3.weight"``, ...).

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or value, e.g. an image too small for the
        number of blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.models import reference_cnn
    >>> model = reference_cnn(rng=0)
    >>> sum(p.size for p in model.parameters())
    421642
    >>> model(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 10)

    A small variant of the same architecture, e.g. for fast tests:

    >>> small = reference_cnn(rng=0, image_size=8, channels=(4, 6), hidden=16, num_classes=5)
    >>> print(small[3]); print(small[7])
    Conv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    Linear(in_features=24, out_features=16, bias=True)
    """
    rng = _generator_of(rng, "reference_cnn")
    in_channels = _positive_int(in_channels, "in_channels")
    side = _positive_int(image_size, "image_size")
    hidden, num_classes = _positive_int(hidden, "hidden"), _positive_int(num_classes, "num_classes")
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__len__") or len(channels) == 0:
        raise TypeError(f"reference_cnn: channels must be a non-empty sequence of ints; got {channels!r}")
    channels = [_positive_int(c, "every entry of channels") for c in channels]
    if side >> len(channels) == 0:
        raise ValueError(f"reference_cnn: image_size {side} is too small for {len(channels)} blocks, each of "
                         f"which halves it; it must be at least {2 ** len(channels)}")
    if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"reference_cnn: dropout must be a number in [0, 1]; got {dropout!r}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"reference_cnn: dropout must be in [0, 1]; got {dropout!r}")

    kw = dict(dtype=dtype, rng=rng)
    layers = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, side = c, side // 2
    layers += [nn.Flatten(), nn.Linear(in_channels * side * side, hidden, **kw), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes, **kw))
    return nn.Sequential(*layers)


def reference_cnn_from_checkpoint(ckpt, **architecture):
    """Rebuild the reference CNN of a training checkpoint, with its trained weights.

    Parameters
    ----------
    ckpt : dict
        As returned by :func:`fastconv.training.load_checkpoint`, e.g. for a file written
        by ``scripts/train_mnist.py --checkpoint``; ``ckpt["config"]["dtype"]`` gives the
        dtype and ``ckpt["model"]`` the weights.
    **architecture
        Keyword arguments of :func:`reference_cnn` (``channels``, ``hidden``, ...) when
        the checkpoint holds a variant; none for the default network.

    Returns
    -------
    fastconv.nn.Sequential
        In evaluation mode, with the checkpoint's dtype.

    Raises
    ------
    ValueError
        If the checkpoint's weights do not fit that architecture (the message lists every
        mismatched key and shape).
    """
    model = reference_cnn(np.dtype(ckpt["config"]["dtype"]), rng=np.random.default_rng(0), **architecture)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _basic_block(c_in, c_out, stride, kw):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the identity or a 1x1 projection (option B), then ReLU."""
    body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, **kw),
                         nn.BatchNorm2d(c_out, dtype=kw["dtype"]), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False, **kw),
                         nn.BatchNorm2d(c_out, dtype=kw["dtype"]))
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False, **kw),
                                 nn.BatchNorm2d(c_out, dtype=kw["dtype"]))
    return [nn.Residual(body, shortcut), nn.ReLU()]


def resnet(depth=20, width=16, *, in_channels=3, num_classes=10, dtype=np.float32, rng=None):
    """Build He et al.'s CIFAR-style residual network (ResNet-20/32/44/56/110 and narrower or wider ones).

    The network of section 4.2 of K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual
    Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385), with ``n = (depth - 2) / 6``
    basic blocks per stage::

        conv 3x3 in_channels->width (no bias), BN, ReLU,
        stage 1: n blocks at width,     stride 1
        stage 2: n blocks at 2 * width, the first at stride 2
        stage 3: n blocks at 4 * width, the first at stride 2
        global average pooling, flatten, linear 4 * width -> num_classes

    A basic block is ``conv 3x3 (stride), BN, ReLU, conv 3x3, BN`` plus its shortcut,
    then a ReLU after the sum. Where a block changes the shape (the first block of
    stages 2 and 3), the shortcut is a projection, ``conv 1x1 stride 2`` (no bias) and
    BN: the paper's option B. (The paper's CIFAR networks use option A, an identity with
    zero-padded extra channels, which has no parameters; option B is what torchvision's
    and most later implementations do, costs ``2 * width**2 * 5`` weights plus two batch
    norms, and is no worse in accuracy.) Every other shortcut is the identity.

    Works for any image size (each stride-2 stage halves the side, rounding up: 28 ->
    14 -> 7, 32 -> 16 -> 8) and any channel count; the global pooling makes the
    classifier independent of the size.

    Parameters
    ----------
    depth : int, default 20
        Number of weighted layers, ``6 * n + 2`` for ``n >= 1``: 8, 14, 20, 32, 44, 56, 110, ...
    width : int, default 16
        Channels of the first stage (the paper's 16); the others have twice and four times as many.
    in_channels : int, default 3
        Channels of the input images (3 for CIFAR-10, 1 for MNIST).
    num_classes : int, default 10
        Number of logits.
    dtype : {numpy.float32, numpy.float64}
        Parameter dtype; inputs must have the same dtype.
    rng : None, int or numpy.random.Generator
        Source of the initial weights, drawn layer after layer in the order of
        ``state_dict``: PyTorch's default initialisation of each layer, as for
        :func:`reference_cnn` (convolutions and the linear layer ``U(-k, k)`` with
        ``k = 1 / sqrt(fan_in)``; batch norms weight 1, bias 0). The paper's He
        initialisation matters little under batch norm; PyTorch's default keeps the
        network equal to ``torch.nn`` layers built with their defaults. An int seeds one
        new generator shared by all the layers; ``None`` draws from fastconv.nn's default
        generator (see :func:`fastconv.nn.manual_seed`).

    Returns
    -------
    fastconv.nn.Sequential
        In training mode; maps ``(N, in_channels, H, W)`` images to ``(N, num_classes)``
        logits. Its top level is ``0`` conv, ``1`` BN, ``2`` ReLU, ``3``-``5`` the stages,
        ``6`` :class:`~fastconv.nn.AdaptiveAvgPool2d`, ``7`` flatten, ``8`` linear; a stage is
        a :class:`~fastconv.nn.Sequential` of ``Residual, ReLU`` pairs, so the
        ``state_dict`` keys read ``"0.weight"``, ``"3.0.body.0.weight"`` (the first
        convolution of the first block), ``"4.0.shortcut.0.weight"`` (a projection),
        ``"8.weight"``, ... :func:`to_torch` gives the same network in PyTorch, with the
        same keys.

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or value, e.g. a depth that is not ``6 * n + 2``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.models import resnet
    >>> model = resnet(20, rng=0)  # ResNet-20 for CIFAR-10
    >>> sum(p.size for p in model.parameters())
    272474
    >>> model(np.zeros((2, 3, 32, 32), np.float32)).shape
    (2, 10)
    >>> print(model[4][0].shortcut)
    Sequential(
      (0): Conv2d(16, 32, kernel_size=(1, 1), stride=(2, 2), bias=False)
      (1): BatchNorm2d(32, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    )

    A small one for MNIST's 1x28x28 digits:

    >>> small = resnet(8, 8, in_channels=1, rng=0)
    >>> small(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 10)
    """
    owner = "resnet"
    rng = _generator_of(rng, owner)
    depth = _positive_int(depth, "depth", owner)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6 * n + 2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); "
                         f"got {depth}")
    width = _positive_int(width, "width", owner)
    in_channels = _positive_int(in_channels, "in_channels", owner)
    num_classes = _positive_int(num_classes, "num_classes", owner)
    kw = dict(dtype=dtype, rng=rng)
    stem = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(width, dtype=dtype),
            nn.ReLU()]
    stages, c_in = [], width
    for i in range(3):
        c_out, blocks = width << i, []
        for b in range((depth - 2) // 6):
            blocks += _basic_block(c_in, c_out, 2 if i > 0 and b == 0 else 1, kw)
            c_in = c_out
        stages.append(nn.Sequential(*blocks))
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes, **kw)]
    return nn.Sequential(*stem, *stages, *head)


#: The networks a training checkpoint can name in ``config["model"]``, and their builders.
ARCHITECTURES = {"reference_cnn": reference_cnn, "resnet": resnet}


def model_from_checkpoint(ckpt):
    """Rebuild the network of a training checkpoint, with its trained weights.

    Parameters
    ----------
    ckpt : dict
        As returned by :func:`fastconv.training.load_checkpoint`, e.g. for a file written
        by ``scripts/train_mnist.py --checkpoint``. ``ckpt["config"]["model"]`` names the
        builder (``"reference_cnn"``, the default for older checkpoints, or ``"resnet"``),
        ``ckpt["config"]["architecture"]`` its keyword arguments (none: the defaults),
        ``ckpt["config"]["dtype"]`` the dtype and ``ckpt["model"]`` the weights.

    Returns
    -------
    fastconv.nn.Sequential
        In evaluation mode, with the checkpoint's dtype.

    Raises
    ------
    ValueError
        If the checkpoint names an unknown network, or its weights do not fit the
        architecture (the message lists every mismatched key and shape).
    """
    config = ckpt["config"]
    name = config.get("model", "reference_cnn")
    if name not in ARCHITECTURES:
        raise ValueError(f"model_from_checkpoint: the checkpoint's network {name!r} is not one of "
                         f"{sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[name](dtype=np.dtype(config["dtype"]), rng=np.random.default_rng(0),
                                **config.get("architecture", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ---------------------------------------------------------------------------------------
# PyTorch twin
# ---------------------------------------------------------------------------------------


def _torch_dtype(torch, layer):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[layer.weight.data.dtype]


def _converters(torch):
    """Type of a fastconv layer -> function building the torch layer of the same settings."""
    tnn = torch.nn
    return {
        nn.Conv2d: lambda m: tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                        m.dilation, m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                                        dtype=_torch_dtype(torch, m)),
        nn.ConvTranspose2d: lambda m: tnn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                                          m.padding, m.output_padding, m.groups,
                                                          bias=m.bias is not None, dilation=m.dilation,
                                                          dtype=_torch_dtype(torch, m)),
        nn.Linear: lambda m: tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                        dtype=_torch_dtype(torch, m)),
        nn.MaxPool2d: lambda m: tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                              m.ceil_mode),
        nn.AvgPool2d: lambda m: tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                              m.divisor_override),
        nn.AdaptiveAvgPool2d: lambda m: tnn.AdaptiveAvgPool2d(m.output_size),
        nn.AdaptiveMaxPool2d: lambda m: tnn.AdaptiveMaxPool2d(m.output_size, m.return_indices),
        nn.ReLU: lambda m: tnn.ReLU(),
        nn.Flatten: lambda m: tnn.Flatten(m.start_dim, m.end_dim),
        nn.Dropout: lambda m: tnn.Dropout(m.p),
        nn.BatchNorm1d: lambda m: _torch_batch_norm(torch, tnn.BatchNorm1d, m),
        nn.BatchNorm2d: lambda m: _torch_batch_norm(torch, tnn.BatchNorm2d, m),
        nn.Identity: lambda m: tnn.Identity(),
        nn.LeakyReLU: lambda m: tnn.LeakyReLU(m.negative_slope, m.inplace),
        nn.ELU: lambda m: tnn.ELU(m.alpha, m.inplace),
        nn.GELU: lambda m: tnn.GELU(m.approximate),
        nn.SiLU: lambda m: tnn.SiLU(m.inplace),
        nn.Sigmoid: lambda m: tnn.Sigmoid(),
        nn.Tanh: lambda m: tnn.Tanh(),
        nn.Softmax: lambda m: tnn.Softmax(m.dim),
        nn.LogSoftmax: lambda m: tnn.LogSoftmax(m.dim),
    }


def _torch_batch_norm(torch, cls, m):
    arrays = [a for a in (None if m.weight is None else m.weight.data, m.running_mean) if a is not None]
    dtype = torch.float64 if arrays and arrays[0].dtype == np.float64 else torch.float32
    extra = {"bias": False} if m.affine and m.bias is None else {}  # the keyword exists from torch 2.6 on
    return cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, dtype=dtype, **extra)


@functools.lru_cache(maxsize=None)
def torch_residual_class(torch):
    """The ``torch.nn.Module`` class that :func:`to_torch` makes of a :class:`fastconv.nn.Residual`.

    Built on first use (fastconv does not import torch otherwise): ``Residual(body,
    shortcut=None)`` computes ``body(x) + x``, or ``body(x) + shortcut(x)``, as the
    fastconv layer does, with the branches as submodules ``body`` and ``shortcut``.
    """

    class Residual(torch.nn.Module):
        """``body(x) + x``, or ``body(x) + shortcut(x)``: fastconv.nn.Residual in PyTorch."""

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body = body
            self.shortcut = shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    Residual.__module__ = __name__
    return Residual


def _convert(torch, converters, module, where):
    def child(name):
        sub = getattr(module, name) if type(module) is nn.Residual else module._modules[name]
        return None if sub is None else _convert(torch, converters, sub, f"{where}.{name}" if where else name)

    if type(module) is nn.Sequential:
        twin = torch.nn.Sequential(OrderedDict((name, child(name)) for name, _ in module.named_children()))
    elif type(module) is nn.Residual:
        twin = torch_residual_class(torch)(child("body"), child("shortcut"))
    elif type(module) in converters:
        twin = converters[type(module)](module)
    else:
        supported = ", ".join(t.__name__ for t in (nn.Sequential, nn.Residual, *converters))
        at = f" (at {where!r})" if where else ""
        raise TypeError(f"to_torch: cannot convert a {type(module).__name__}{at}; it converts only the "
                        f"fastconv.nn layers {supported}")
    twin.training = module.training
    return twin


def to_torch(model):
    """The same network in PyTorch: a ``torch.nn`` module with the same layers and weights.

    Parameters
    ----------
    model : fastconv.nn.Module
        A :class:`fastconv.nn.Sequential` (nested ones included) or :class:`fastconv.nn.Residual`
        (its twin is a :func:`torch_residual_class` module) of
        :class:`~fastconv.nn.Conv2d`, :class:`~fastconv.nn.ConvTranspose2d`, :class:`~fastconv.nn.ReLU`,
        :class:`~fastconv.nn.MaxPool2d`, :class:`~fastconv.nn.AvgPool2d`,
        :class:`~fastconv.nn.AdaptiveAvgPool2d`, :class:`~fastconv.nn.AdaptiveMaxPool2d`,
        :class:`~fastconv.nn.Flatten`, :class:`~fastconv.nn.Linear`, :class:`~fastconv.nn.Dropout`,
        :class:`~fastconv.nn.BatchNorm1d`, :class:`~fastconv.nn.BatchNorm2d`, :class:`~fastconv.nn.Identity`
        and the activation layers (``LeakyReLU``, ``ELU``, ``GELU``, ``SiLU``, ``Sigmoid``, ``Tanh``,
        ``Softmax``, ``LogSoftmax``), or one such layer. Subclasses are refused: their forward may differ.

    Returns
    -------
    torch.nn.Module
        A ``torch.nn.Sequential`` (or the one layer) with the same repr, the same module
        names and ``state_dict`` keys, a copy of ``model``'s weights in the same dtype
        (float32 or float64, layer by layer) and the same training/evaluation mode.
        It maps the same ``(N, C, H, W)`` float tensors to the same outputs, up to
        rounding. Its weights do not share memory with ``model``'s.

    Raises
    ------
    ImportError
        If PyTorch is not installed (it is not a dependency of fastconv).
    TypeError
        If ``model`` holds a module of another type; the message names it and where it is.

    Notes
    -----
    Building the torch layers does not advance torch's global random generator. A layer
    or parameter that appears twice in ``model`` becomes two independent copies.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from fastconv.models import reference_cnn, to_torch
    >>> model = reference_cnn(rng=0)
    >>> twin = to_torch(model)
    >>> x = np.random.default_rng(1).standard_normal((2, 1, 28, 28), dtype=np.float32)
    >>> twin  # doctest: +ELLIPSIS
    Sequential(
      (0): Conv2d(1, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    ...
      (9): Linear(in_features=128, out_features=10, bias=True)
    )
    >>> bool(np.allclose(twin(torch.from_numpy(x)).detach().numpy(), model(x), atol=1e-5))
    True
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError("fastconv.models.to_torch needs PyTorch, which is not installed (pip install torch); "
                          "fastconv itself does not depend on it") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_torch: model must be a fastconv.nn.Module; got {type(model).__name__}")
    with torch.random.fork_rng(devices=[]):  # the torch layers' own initialisation is overwritten below
        twin = _convert(torch, _converters(torch), model, "")
    twin.load_state_dict(OrderedDict((k, torch.from_numpy(v)) for k, v in model.state_dict().items()))
    return twin
