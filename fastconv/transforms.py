"""Data augmentation for batches of images: NumPy transforms that compose and are reproducible from a seed.

- :class:`RandomCrop`: pad the images, then cut a random window out of each (random crop with padding);
- :class:`RandomHorizontalFlip`: mirror each image left-right with probability ``p``;
- :class:`Normalize`: subtract a per-channel mean and divide by a per-channel standard deviation;
- :class:`Compose`: apply a list of transforms (or any callables, e.g.
  :func:`fastconv.datasets.preprocess_cifar10`) one after the other.

They keep torchvision's names, arguments and semantics (``torchvision.transforms``), with these
differences:

- **Batch-wise.** Each transform is called on a NumPy batch ``x`` of shape ``(N, C, H, W)`` (channels
  first, as fastconv's layers take it) and returns a new array; ``x`` itself is never modified. Each
  image of the batch gets its own random crop offset and its own flip decision, exactly as if
  torchvision's transform were applied to the images one by one. A single image ``(C, H, W)`` is
  ``x[None]``.
- **Any dtype.** Cropping and flipping work on any dtype (uint8 images straight from
  :func:`fastconv.datasets.load_cifar10`, floats, ...) and keep it. :class:`Normalize` needs
  floating-point input, as torchvision's does.
- **Explicit randomness.** Each random transform takes ``rng``: ``None`` (fresh, unpredictable
  entropy), an ``int`` seed, or a :class:`numpy.random.Generator`. It is fixed when the transform is
  made, so two pipelines built with the same seeds produce the same sequence of crops and flips, call
  after call; passing one ``Generator`` to several transforms makes a whole pipeline reproducible
  from a single seed. (torchvision draws from PyTorch's global generator instead.)
- ``Normalize`` has no ``inplace`` option (inputs are never modified).

Examples
--------
>>> import numpy as np
>>> from fastconv import transforms as T
>>> x = np.arange(2 * 1 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)
>>> rng = np.random.default_rng(0)
>>> augment = T.Compose([T.RandomCrop(3, padding=1, rng=rng), T.RandomHorizontalFlip(rng=rng)])
>>> y = augment(x)
>>> y.shape, y.dtype
((2, 1, 3, 3), dtype('uint8'))
"""

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]

PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


def _generator(rng, owner):
    """``rng`` (None, an int seed or a Generator) as a :class:`numpy.random.Generator`."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"{owner}: rng seed must be non-negative, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{owner}: rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _check_batch(x, owner):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{owner}: x must be a numpy.ndarray of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        hint = "; for a single image (C, H, W) pass x[None]" if x.ndim == 3 else ""
        raise ValueError(f"{owner}: x must be a batch of shape (N, C, H, W), got shape {x.shape}{hint}")


def _pair(value, owner, name, minimum):
    """An int or a sequence of one or two ints as ``(h, w)``, each at least ``minimum``."""
    items = (value,) if isinstance(value, numbers.Integral) else tuple(value) if _is_sequence(value) else None
    if items is None or len(items) not in (1, 2) or not all(_is_int(v) and v >= minimum for v in items):
        raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a sequence (h, w) of them, got {value!r}")
    return (int(items[0]), int(items[-1]))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_sequence(value):
    return isinstance(value, (tuple, list, np.ndarray)) and np.ndim(value) == 1


def _padding(padding, owner):
    """torchvision's padding argument as ``(left, top, right, bottom)``."""
    if padding is None:
        return (0, 0, 0, 0)
    items = (padding,) if _is_int(padding) else tuple(padding) if _is_sequence(padding) else None
    if items is None or len(items) not in (1, 2, 4) or not all(_is_int(v) and v >= 0 for v in items):
        raise ValueError(f"{owner}: padding must be an int >= 0 or a sequence of 1, 2 (left/right, top/bottom) or "
                         f"4 (left, top, right, bottom) of them, got {padding!r}")
    items = tuple(int(v) for v in items)
    return items * 4 if len(items) == 1 else items * 2 if len(items) == 2 else items


def _pad(x, pads, mode, fill):
    """Pad the last two axes of ``x`` by ``(left, top, right, bottom)``; a new array (or ``x`` if no padding)."""
    left, top, right, bottom = pads
    if not any(pads):
        return x
    if mode != "constant":
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode)
    n, c, h, w = x.shape
    out = np.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    out[...] = fill
    out[:, :, top:top + h, left:left + w] = x
    return out


def _fill_value(fill, x, owner):
    """``fill`` as an array of ``x``'s dtype broadcasting over (C, 1, 1); ValueError if it cannot be represented."""
    if fill.ndim == 1 and fill.shape[0] != x.shape[1]:
        raise ValueError(f"{owner}: fill has {fill.shape[0]} values but x has {x.shape[1]} channels "
                         f"(x of shape {x.shape})")
    with np.errstate(invalid="ignore", over="ignore"):
        cast = fill.astype(x.dtype)
        same = np.array_equal(cast, fill, equal_nan=cast.dtype.kind in "fc")
    if not same:
        raise ValueError(f"{owner}: fill {fill.tolist()!r} cannot be represented in the dtype of x ({x.dtype})")
    return cast.reshape(-1, 1, 1) if cast.ndim else cast


class RandomCrop:
    """Crop a random ``size`` window out of every image of a batch, after optional padding.

    ``torchvision.transforms.RandomCrop`` for batches: each image is padded by ``padding``, then a
    window of ``size`` is cut at an offset drawn uniformly, independently for each image, from every
    offset at which it fits (``0 <= i <= H' - h``, ``0 <= j <= W' - w`` for the padded size
    ``(H', W')``). ``RandomCrop(32, padding=4)`` is the standard CIFAR-10 augmentation.

    Parameters
    ----------
    size : int or sequence of int
        Output size ``(h, w)``; an int ``s`` means ``(s, s)``.
    padding : int or sequence of int, default 0
        Padding of every image before cropping: an int for all four borders, ``(left/right,
        top/bottom)``, or ``(left, top, right, bottom)``. ``None`` means 0 (torchvision's default).
    pad_if_needed : bool, default False
        If the (padded) image is smaller than ``size``, pad it further, as torchvision does: the width
        by ``w - W'`` on both the left and the right, then the height by ``h - H'`` at the top and bottom.
    fill : number or sequence of numbers, default 0
        Value of the padded pixels for ``padding_mode="constant"``; one per channel for a sequence. It
        must be representable in the batch's dtype (e.g. 0-255 for uint8).
    padding_mode : {"constant", "edge", "reflect", "symmetric"}, default "constant"
        torchvision's modes (NumPy's ``np.pad`` modes of the same names): a constant ``fill``; the
        edge pixel repeated; the image mirrored without repeating the edge (``[3 2 | 1 2 3 | 2 1]``);
        the image mirrored with the edge repeated (``[2 1 | 1 2 3 | 3 2]``). Padding wider than the
        image is allowed (``np.pad`` repeats the mirroring; torchvision refuses it for tensors).
    rng : None, int or numpy.random.Generator, optional
        Source of the crop offsets, fixed here: the same seed gives the same offsets, call after call.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    >>> crop = RandomCrop(2, rng=0)
    >>> y = crop(x)
    >>> y.shape
    (1, 1, 2, 2)
    >>> any(np.array_equal(y[0, 0], x[0, 0, i:i + 2, j:j + 2]) for i in range(3) for j in range(3))
    True
    >>> RandomCrop(32, padding=4, padding_mode="reflect")
    RandomCrop(size=(32, 32), padding=(4, 4, 4, 4), padding_mode='reflect')
    """

    def __init__(self, size, padding=0, pad_if_needed=False, fill=0, padding_mode="constant", rng=None):
        owner = type(self).__name__
        self.size = _pair(size, owner, "size", 1)
        self.padding = _padding(padding, owner)
        if not isinstance(pad_if_needed, (bool, np.bool_)):
            raise TypeError(f"{owner}: pad_if_needed must be a bool, got {type(pad_if_needed).__name__}")
        self.pad_if_needed = bool(pad_if_needed)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{owner}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        fill_array = np.asarray(fill)
        if fill_array.ndim > 1 or fill_array.dtype.kind not in "biuf" or fill_array.size == 0:
            raise ValueError(f"{owner}: fill must be a number or a sequence of numbers (one per channel), "
                             f"got {fill!r}")
        self.fill = fill_array
        self.rng = _generator(rng, owner)

    def _padded(self, x):
        owner = type(self).__name__
        fill = _fill_value(self.fill, x, owner) if self.padding_mode == "constant" else None
        if self.padding_mode != "constant" and 0 in x.shape[2:]:
            raise ValueError(f"{owner}: padding_mode {self.padding_mode!r} needs images of at least 1x1, "
                             f"got x of shape {x.shape}")
        x = _pad(x, self.padding, self.padding_mode, fill)
        (h, w), (height, width) = self.size, x.shape[2:]
        if self.pad_if_needed and width < w:
            x = _pad(x, (w - width, 0, w - width, 0), self.padding_mode, fill)
        if self.pad_if_needed and height < h:
            x = _pad(x, (0, h - height, 0, h - height), self.padding_mode, fill)
        return x

    def __call__(self, x):
        """Return the random crops of the batch ``x`` ``(N, C, H, W)``: a new array ``(N, C, h, w)``, x's dtype."""
        owner = type(self).__name__
        _check_batch(x, owner)
        padded = self._padded(x)
        (h, w), (height, width) = self.size, padded.shape[2:]
        if height < h or width < w:
            raise ValueError(f"{owner}: crop size {(h, w)} is larger than the padded image size {(height, width)} "
                             f"(x of shape {x.shape}, padding (left, top, right, bottom) {self.padding}); "
                             "pass pad_if_needed=True to pad small images")
        n = x.shape[0]
        top = self.rng.integers(0, height - h + 1, size=n)
        left = self.rng.integers(0, width - w + 1, size=n)
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, H'-h+1, W'-w+1, h, w), a view
        return windows[np.arange(n), :, top, left]  # (N, C, h, w): one window per image, copied

    def __repr__(self):
        args = [f"size={self.size}"]
        if any(self.padding):
            args.append(f"padding={self.padding}")
        if self.pad_if_needed:
            args.append("pad_if_needed=True")
        if self.padding_mode == "constant" and self.fill.any():
            args.append(f"fill={self.fill.tolist()!r}")
        if self.padding_mode != "constant":
            args.append(f"padding_mode={self.padding_mode!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class RandomHorizontalFlip:
    """Mirror each image of a batch left-right with probability ``p``.

    ``torchvision.transforms.RandomHorizontalFlip`` for batches: every image is flipped (its last,
    width axis reversed) or not, independently, with probability ``p``.

    Parameters
    ----------
    p : float, default 0.5
        Probability that an image is flipped, in [0, 1].
    rng : None, int or numpy.random.Generator, optional
        Source of the flip decisions, fixed here: the same seed gives the same decisions, call after call.

    Examples
    --------
    >>> x = np.array([[[[1, 2, 3]]], [[[4, 5, 6]]]])
    >>> RandomHorizontalFlip(p=1.0)(x).tolist()
    [[[[3, 2, 1]]], [[[6, 5, 4]]]]
    >>> RandomHorizontalFlip(p=0.0)(x).tolist()
    [[[[1, 2, 3]]], [[[4, 5, 6]]]]
    """

    def __init__(self, p=0.5, rng=None):
        owner = type(self).__name__
        if not isinstance(p, numbers.Real) or isinstance(p, (bool, np.bool_)) or not 0 <= p <= 1:
            raise ValueError(f"{owner}: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = _generator(rng, owner)

    def __call__(self, x):
        """Return the batch ``x`` ``(N, C, H, W)`` with each image flipped or not: a new array, x's dtype."""
        _check_batch(x, type(self).__name__)
        flip = self.rng.random(x.shape[0]) < self.p
        out = np.array(x, order="C", copy=True)
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p})"


class Normalize:
    """Standardise each channel of a batch: ``(x[:, c] - mean[c]) / std[c]``.

    ``torchvision.transforms.Normalize`` for batches. The input must be floating point (scale
    integer images to [0, 1] first, e.g. ``x / np.float32(255)``, or use
    :func:`fastconv.datasets.preprocess_cifar10`, which scales and normalises uint8 CIFAR-10 images in
    one step); the result has the input's dtype.

    Parameters
    ----------
    mean : float or sequence of float
        Per-channel means (one value for all channels, or one per channel), e.g.
        :data:`fastconv.datasets.CIFAR10_MEAN`.
    std : float or sequence of float
        Per-channel standard deviations, all non-zero, e.g. :data:`fastconv.datasets.CIFAR10_STD`.

    Examples
    --------
    >>> x = np.array([[[[0.0, 1.0]], [[0.5, 0.5]]]])          # N=1, C=2, H=1, W=2
    >>> Normalize(mean=(0.5, 0.0), std=(0.5, 2.0))(x).tolist()
    [[[[-1.0, 1.0]], [[0.25, 0.25]]]]
    """

    def __init__(self, mean, std):
        owner = type(self).__name__
        arrays = []
        for name, value in (("mean", mean), ("std", std)):
            array = np.asarray(value)
            if array.ndim > 1 or array.size == 0 or array.dtype.kind not in "biuf" or not np.isfinite(array).all():
                raise ValueError(f"{owner}: {name} must be a finite number or a sequence of finite numbers "
                                 f"(one per channel), got {value!r}")
            arrays.append(array.astype(np.float64).reshape(-1))
        self.mean, self.std = arrays
        if (self.std == 0).any():
            raise ValueError(f"{owner}: std must be non-zero (division by zero), got {std!r}")

    def __call__(self, x):
        """Return the normalised batch ``x`` ``(N, C, H, W)``: a new array of x's floating dtype."""
        owner = type(self).__name__
        _check_batch(x, owner)
        if x.dtype.kind != "f":
            raise TypeError(f"{owner}: x must be a floating-point array, got {x.dtype}; scale integer images first "
                            "(e.g. x / np.float32(255), or fastconv.datasets.preprocess_cifar10 for uint8 CIFAR-10)")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values.size not in (1, x.shape[1]):
                raise ValueError(f"{owner}: {name} has {values.size} values but x has {x.shape[1]} channels "
                                 f"(x of shape {x.shape})")
        mean = self.mean.astype(x.dtype)[:, None, None]
        std = self.std.astype(x.dtype)[:, None, None]
        return (x - mean) / std

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """Apply transforms one after the other: ``Compose([a, b])(x)`` is ``b(a(x))``.

    Parameters
    ----------
    transforms : sequence of callables
        The steps: fastconv transforms or any function of a batch (for example
        :func:`fastconv.datasets.preprocess_cifar10`, to end a uint8 pipeline with float input).

    Examples
    --------
    >>> from fastconv.datasets import preprocess_cifar10
    >>> x = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    >>> rng = np.random.default_rng(0)
    >>> train_transform = Compose([RandomCrop(32, padding=4, rng=rng), RandomHorizontalFlip(rng=rng),
    ...                            preprocess_cifar10])
    >>> train_transform(x).shape, train_transform(x).dtype
    ((4, 3, 32, 32), dtype('float32'))
    >>> Compose([RandomCrop(28, padding=2), RandomHorizontalFlip()])
    Compose(
        RandomCrop(size=(28, 28), padding=(2, 2, 2, 2))
        RandomHorizontalFlip(p=0.5)
    )
    """

    def __init__(self, transforms):
        if callable(transforms) or not isinstance(transforms, (list, tuple)):
            raise TypeError("Compose: transforms must be a list or tuple of callables, "
                            f"got {type(transforms).__name__}")
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"Compose: transforms[{i}] is not callable ({type(t).__name__})")
        self.transforms = list(transforms)

    def __call__(self, x):
        """Return the result of every transform applied in order to ``x`` (a copy of ``x`` for no transforms)."""
        if not self.transforms:
            return np.array(x, copy=True)
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        return "Compose(\n" + "".join(f"    {t!r}\n" for t in self.transforms) + ")"
