"""Ready-made networks, and their PyTorch twins.

:func:`reference_cnn` is the one definition of the reference CNN that
``scripts/train_mnist.py`` trains, the benchmarks time and the tests check against
PyTorch; its keyword arguments also build smaller variants of it.
:func:`to_torch` turns any fastconv network made of the layers :mod:`fastconv.nn` has
into the equivalent ``torch.nn`` network with the same weights, e.g. to compare the two
engines on the same model. :func:`reference_cnn_from_checkpoint` rebuilds a trained
reference CNN from a checkpoint of :func:`fastconv.training.save_checkpoint`.
"""

import numbers
from collections import OrderedDict

import numpy as np

from . import nn

__all__ = ["reference_cnn", "reference_cnn_from_checkpoint", "to_torch"]


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"reference_cnn: {name} must be an int; got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"reference_cnn: {name} must be positive; got {value!r}")
    return int(value)


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
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        rng = np.random.default_rng(int(rng))  # one stream for every layer (a layer given an int seeds its own)
    elif rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"reference_cnn: rng must be None, an int seed or a numpy.random.Generator; got {rng!r}")
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


def _convert(torch, converters, module, where):
    if type(module) is nn.Sequential:
        twin = torch.nn.Sequential(OrderedDict(
            (name, _convert(torch, converters, child, f"{where}.{name}" if where else name))
            for name, child in module.named_children()))
    elif type(module) in converters:
        twin = converters[type(module)](module)
    else:
        supported = ", ".join(t.__name__ for t in (nn.Sequential, *converters))
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
        A :class:`fastconv.nn.Sequential` (nested ones included) of
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
