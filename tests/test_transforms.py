"""fastconv.transforms: random crop with padding, horizontal flip, normalisation and Compose.

Every crop is checked against an independent reference: the image padded by ``np.pad`` (and by
``torch.nn.functional.pad`` when PyTorch is installed), of which the crop must be one window; every
offset and both flip outcomes must be reachable; the same seed must give the same sequence; inputs
are never modified; bad arguments raise errors that name the class and the argument. The guide's
example (docs/guide.md, "Data sets") runs as a doctest here.
"""

import doctest
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import transforms as T

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide.md"
SECTION = "### Fashion-MNIST, CIFAR-10 and augmentation"
NUMPY_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect", "symmetric": "symmetric"}


def reference_pad(x, pads, mode, fill=0):
    """``x`` padded by ``(left, top, right, bottom)`` with np.pad (constant: ``fill`` per channel or scalar)."""
    left, top, right, bottom = pads
    widths = ((0, 0), (top, bottom), (left, right))
    fill = np.broadcast_to(np.asarray(fill), (x.shape[1],))
    return np.stack([np.stack([np.pad(image[c], widths[1:], mode=NUMPY_MODES[mode], **(
        {"constant_values": fill[c]} if mode == "constant" else {})) for c in range(x.shape[1])]) for image in x])


def window_offsets(crop, padded):
    """All ``(i, j)`` at which ``crop`` (C, h, w) equals a window of ``padded`` (C, H, W)."""
    h, w = crop.shape[1:]
    return [(i, j) for i in range(padded.shape[1] - h + 1) for j in range(padded.shape[2] - w + 1)
            if np.array_equal(padded[:, i:i + h, j:j + w], crop)]


def distinct_batch(shape, dtype=np.float64, seed=0):
    """A batch whose values are all distinct, so that a window identifies its offset."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) + 1
    return values.reshape(shape).astype(dtype)


def as_pads(padding):
    padding = (padding,) if isinstance(padding, int) else tuple(padding)
    return padding * 4 if len(padding) == 1 else padding * 2 if len(padding) == 2 else padding


# --------------------------------------------------------------------------- RandomCrop


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       padding=st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                         st.tuples(*[st.integers(0, 3)] * 4)),
       mode=st.sampled_from(sorted(NUMPY_MODES)), data=st.data())
def test_crop_is_a_window_of_the_padded_image(n, c, h, w, padding, mode, data):
    left, top, right, bottom = as_pads(padding)
    size = (data.draw(st.integers(1, h + top + bottom), label="crop h"),
            data.draw(st.integers(1, w + left + right), label="crop w"))
    fill = data.draw(st.integers(-5, 5), label="fill")
    x = distinct_batch((n, c, h, w))
    before = x.copy()
    out = T.RandomCrop(size, padding=padding, fill=fill, padding_mode=mode, rng=data.draw(st.integers(0, 99)))(x)
    assert out.shape == (n, c, *size) and out.dtype == x.dtype and out.flags.c_contiguous
    padded = reference_pad(x, (left, top, right, bottom), mode, fill)
    for k in range(n):
        assert window_offsets(out[k], padded[k]), f"image {k} is no {size} window of the {mode}-padded image"
    np.testing.assert_array_equal(x, before)


def test_every_crop_offset_is_reachable():
    x = np.repeat(distinct_batch((1, 2, 4, 5)), 300, axis=0)
    out = T.RandomCrop((4, 5), padding=(1, 2), rng=1)(x)  # padded to 8x7: offsets i in 0..4, j in 0..2
    padded = reference_pad(x[:1], (1, 2, 1, 2), "constant")[0]
    seen = [window_offsets(image, padded) for image in out]
    assert all(len(s) == 1 for s in seen)
    counts = np.zeros((5, 3), int)
    for (i, j), in seen:
        counts[i, j] += 1
    assert (counts > 0).all(), f"offsets never drawn:\n{counts}"
    assert counts.max() < 3 * counts.min() + 10  # roughly uniform (300 draws over 15 offsets)


def test_each_image_gets_its_own_offset():
    x = np.repeat(distinct_batch((1, 1, 6, 6)), 64, axis=0)
    out = T.RandomCrop(4, rng=0)(x)
    assert len({image.tobytes() for image in out}) > 1


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_padding_matches_torch(mode):
    torch = pytest.importorskip("torch")
    x = distinct_batch((3, 2, 5, 4), np.float32)
    pads = (2, 1, 3, 0)  # left, top, right, bottom
    torch_mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[mode]
    kwargs = {"value": 7.0} if mode == "constant" else {}
    padded = torch.nn.functional.pad(torch.from_numpy(x), pads[0:1] + pads[2:3] + pads[1:2] + pads[3:4],
                                     mode=torch_mode, **kwargs).numpy()
    out = T.RandomCrop((4, 5), padding=pads, fill=7, padding_mode=mode, rng=3)(x)
    for k in range(len(x)):
        assert window_offsets(out[k], padded[k]), f"image {k}: no window of torch's {torch_mode} padding"


def test_per_channel_fill():
    x = np.zeros((2, 3, 2, 2), np.uint8)
    out = T.RandomCrop(6, padding=2, fill=(10, 20, 30), rng=0)(x)  # the crop is the whole padded image
    np.testing.assert_array_equal(out[:, :, 0, 0], [[10, 20, 30]] * 2)
    np.testing.assert_array_equal(out[:, :, 2:4, 2:4], 0)


def test_pad_if_needed_pads_like_torchvision():
    """torchvision pads the width by the deficit on both sides, then the height, each with the padding mode."""
    x = distinct_batch((4, 1, 2, 3))
    out = T.RandomCrop((5, 4), padding=0, pad_if_needed=True, padding_mode="reflect", rng=0)(x)
    padded = reference_pad(reference_pad(x, (1, 0, 1, 0), "reflect"), (0, 3, 0, 3), "reflect")  # 8x5
    assert out.shape == (4, 1, 5, 4)
    for k in range(len(x)):
        assert window_offsets(out[k], padded[k])
    with pytest.raises(ValueError, match=r"crop size \(5, 4\) is larger than the padded image size \(2, 3\)"):
        T.RandomCrop((5, 4))(x)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_],
                         ids=lambda d: np.dtype(d).name)
def test_any_dtype_kept_and_input_unchanged(dtype):
    x = (np.random.default_rng(0).integers(0, 2 if dtype == np.bool_ else 100, (3, 2, 5, 5))).astype(dtype)
    before = x.copy()
    for transform in (T.RandomCrop(5, padding=2, padding_mode="symmetric", rng=0), T.RandomCrop(3, rng=0),
                      T.RandomHorizontalFlip(rng=0), T.RandomHorizontalFlip(p=0.0),
                      T.Compose([T.RandomCrop(5, padding=1, rng=0), T.RandomHorizontalFlip(rng=0)]), T.Compose([])):
        out = transform(x)
        assert out.dtype == x.dtype, transform
        assert not np.shares_memory(out, x), f"{transform!r} returned a view of its input"
        np.testing.assert_array_equal(x, before)


def test_non_contiguous_input():
    base = distinct_batch((2, 3, 8, 10))
    x = base[:, ::-1, ::2, 1::2]
    out = T.RandomCrop(3, padding=1, rng=0)(x)
    padded = reference_pad(np.ascontiguousarray(x), (1, 1, 1, 1), "constant")
    assert all(window_offsets(out[k], padded[k]) for k in range(2))
    flipped = T.RandomHorizontalFlip(p=1.0)(x)
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.uint8)
    assert T.RandomCrop(6, padding=1, rng=0)(x).shape == (0, 3, 6, 6)
    assert T.RandomHorizontalFlip(rng=0)(x).shape == (0, 3, 8, 8)
    assert T.Normalize(0.5, 0.5)(x.astype(np.float32)).shape == (0, 3, 8, 8)


# --------------------------------------------------------------------------- RandomHorizontalFlip


def test_flip_both_outcomes_reachable_and_independent():
    x = distinct_batch((400, 2, 3, 4))
    out = T.RandomHorizontalFlip(rng=5)(x)
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (flipped ^ kept).all()  # every image is either itself or its mirror image
    assert 150 < flipped.sum() < 250  # p = 0.5 (binomial(400, 0.5): 5 standard deviations)
    rare = T.RandomHorizontalFlip(p=0.1, rng=5)(x)
    n_rare = sum(not np.array_equal(o, i) for o, i in zip(rare, x))
    assert 15 < n_rare < 70


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip_certain(p):
    x = distinct_batch((5, 3, 2, 4))
    expected = x[..., ::-1] if p else x
    np.testing.assert_array_equal(T.RandomHorizontalFlip(p=p, rng=0)(x), expected)


# --------------------------------------------------------------------------- reproducibility


def _pipeline(seed):
    rng = np.random.default_rng(seed)
    return T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect", rng=rng), T.RandomHorizontalFlip(rng=rng)])


def test_reproducible_from_a_seed():
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    a, b, c = _pipeline(7), _pipeline(7), _pipeline(8)
    runs_a = [a(x) for _ in range(3)]
    runs_b = [b(x) for _ in range(3)]
    for ra, rb in zip(runs_a, runs_b):
        np.testing.assert_array_equal(ra, rb)
    assert not np.array_equal(runs_a[0], runs_a[1])  # the sequence moves on from call to call
    assert not np.array_equal(runs_a[0], c(x))  # another seed, other crops
    # An int seed per transform is just as reproducible.
    crops = [T.RandomCrop(28, padding=2, rng=3)(x) for _ in range(2)]
    np.testing.assert_array_equal(*crops)
    flips = [T.RandomHorizontalFlip(rng=np.random.default_rng(3))(x) for _ in range(2)]
    np.testing.assert_array_equal(*flips)


def test_fashion_mnist_shaped_batch():
    """Single-channel 28x28 images (Fashion-MNIST after x[:, None]) go through the same pipeline."""
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)[:, None]
    out = T.Compose([T.RandomCrop(28, padding=2, rng=0), T.RandomHorizontalFlip(rng=0)])(x)
    assert out.shape == (8, 1, 28, 28) and out.dtype == np.uint8


# --------------------------------------------------------------------------- Normalize and Compose


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean, std", [((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), (0.5, 0.25),
                                       ([0.1], [2.0])], ids=["per channel", "scalar", "one value"])
def test_normalize_against_numpy(dtype, mean, std):
    x = np.random.default_rng(0).random((4, 3, 5, 6)).astype(dtype)
    before = x.copy()
    out = T.Normalize(mean, std)(x)
    m = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (3,))[:, None, None]
    s = np.broadcast_to(np.asarray(std, np.float64).reshape(-1), (3,))[:, None, None]
    assert out.dtype == dtype and out.shape == x.shape
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-13, "atol": 1e-14}
    np.testing.assert_allclose(out, (x.astype(np.float64) - m) / s, **tol)
    np.testing.assert_array_equal(x, before)


def test_normalize_matches_preprocess_cifar10():
    from fastconv.datasets import CIFAR10_MEAN, CIFAR10_STD, preprocess_cifar10

    x = np.random.default_rng(1).integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    scaled = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)(x / 255.0)
    np.testing.assert_allclose(scaled, preprocess_cifar10(x, np.float64), rtol=1e-12, atol=1e-12)


def test_compose_applies_in_order():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    double, shift = (lambda a: a * 2), (lambda a: a + 1)
    np.testing.assert_array_equal(T.Compose([double, shift])(x), x * 2 + 1)
    np.testing.assert_array_equal(T.Compose((shift, double))(x), (x + 1) * 2)
    empty = T.Compose([])(x)
    np.testing.assert_array_equal(empty, x)
    assert empty is not x


def test_reprs():
    assert repr(T.RandomCrop((28, 30), padding=(1, 2), fill=3)) == \
        "RandomCrop(size=(28, 30), padding=(1, 2, 1, 2), fill=3)"
    assert repr(T.RandomHorizontalFlip(0.25)) == "RandomHorizontalFlip(p=0.25)"
    assert repr(T.Normalize(0.5, (0.2, 0.3))) == "Normalize(mean=[0.5], std=[0.2, 0.3])"
    assert repr(T.Compose([T.RandomHorizontalFlip()])) == "Compose(\n    RandomHorizontalFlip(p=0.5)\n)"


def test_exported_from_the_package():
    assert fastconv.transforms is T and "transforms" in fastconv.__all__
    assert T.__all__ == ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]


# --------------------------------------------------------------------------- errors

X = np.zeros((2, 3, 8, 8), np.uint8)

CONSTRUCTION_ERRORS = [
    (lambda: T.RandomCrop(0), ValueError, "RandomCrop: size"),
    (lambda: T.RandomCrop((1, 2, 3)), ValueError, "RandomCrop: size"),
    (lambda: T.RandomCrop(2.5), ValueError, "RandomCrop: size"),
    (lambda: T.RandomCrop("32"), ValueError, "RandomCrop: size"),
    (lambda: T.RandomCrop(4, padding=-1), ValueError, "RandomCrop: padding"),
    (lambda: T.RandomCrop(4, padding=(1, 2, 3)), ValueError, "RandomCrop: padding"),
    (lambda: T.RandomCrop(4, padding=1.5), ValueError, "RandomCrop: padding"),
    (lambda: T.RandomCrop(4, padding_mode="wrap"), ValueError, "RandomCrop: padding_mode"),
    (lambda: T.RandomCrop(4, fill="black"), ValueError, "RandomCrop: fill"),
    (lambda: T.RandomCrop(4, fill=[[1, 2]]), ValueError, "RandomCrop: fill"),
    (lambda: T.RandomCrop(4, pad_if_needed="yes"), TypeError, "RandomCrop: pad_if_needed"),
    (lambda: T.RandomCrop(4, rng="seed"), TypeError, "RandomCrop: rng"),
    (lambda: T.RandomCrop(4, rng=1.5), TypeError, "RandomCrop: rng"),
    (lambda: T.RandomCrop(4, rng=-1), ValueError, "RandomCrop: rng seed"),
    (lambda: T.RandomHorizontalFlip(1.5), ValueError, "RandomHorizontalFlip: p"),
    (lambda: T.RandomHorizontalFlip(-0.1), ValueError, "RandomHorizontalFlip: p"),
    (lambda: T.RandomHorizontalFlip("half"), ValueError, "RandomHorizontalFlip: p"),
    (lambda: T.RandomHorizontalFlip(True), ValueError, "RandomHorizontalFlip: p"),
    (lambda: T.RandomHorizontalFlip(rng=True), TypeError, "RandomHorizontalFlip: rng"),
    (lambda: T.Normalize((0.5, 0.5), (0.2, 0.0)), ValueError, "Normalize: std must be non-zero"),
    (lambda: T.Normalize((), (1.0,)), ValueError, "Normalize: mean"),
    (lambda: T.Normalize(0.5, float("nan")), ValueError, "Normalize: std"),
    (lambda: T.Normalize("0.5", 1.0), ValueError, "Normalize: mean"),
    (lambda: T.Compose(T.RandomHorizontalFlip()), TypeError, "Compose: transforms must be a list"),
    (lambda: T.Compose([T.RandomHorizontalFlip(), 3]), TypeError, r"Compose: transforms\[1\] is not callable"),
]


@pytest.mark.parametrize("make, error, match", CONSTRUCTION_ERRORS, ids=[m for _, _, m in CONSTRUCTION_ERRORS])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


CALL_ERRORS = [
    ("list input", T.RandomCrop(4), X.tolist(), TypeError, "RandomCrop: x must be a numpy.ndarray"),
    ("single image", T.RandomHorizontalFlip(), X[0], ValueError, r"\(3, 8, 8\); for a single image .* x\[None\]"),
    ("2-d", T.Normalize(0.5, 0.5), np.zeros((8, 8)), ValueError, r"Normalize: x must be a batch .* \(8, 8\)"),
    ("edge padding of empty images", T.RandomCrop(1, padding=1, padding_mode="edge"), X[:, :, :0], ValueError,
     r"padding_mode 'edge' needs images of at least 1x1, got x of shape \(2, 3, 0, 8\)"),
    ("crop too large", T.RandomCrop(9), X, ValueError, r"crop size \(9, 9\) is larger .*\(8, 8\).*\(2, 3, 8, 8\)"),
    ("fill out of range", T.RandomCrop(8, padding=1, fill=300), X, ValueError, "fill 300 cannot be represented.*uint8"),
    ("fractional fill", T.RandomCrop(8, padding=1, fill=0.5), X, ValueError, "fill 0.5 cannot be represented"),
    ("fill per channel", T.RandomCrop(8, padding=1, fill=(1, 2)), X, ValueError, r"fill has 2 values .* 3 channels"),
    ("normalize uint8", T.Normalize(0.5, 0.5), X, TypeError, "Normalize: x must be a floating-point array, got uint8"),
    ("normalize channels", T.Normalize((0.5, 0.5), (1.0, 1.0)), X.astype(np.float32), ValueError,
     r"Normalize: mean has 2 values but x has 3 channels \(x of shape \(2, 3, 8, 8\)\)"),
]


@pytest.mark.parametrize("case, transform, x, error, match", CALL_ERRORS, ids=[c[0] for c in CALL_ERRORS])
def test_bad_input(case, transform, x, error, match):
    with pytest.raises(error, match=match):
        transform(x)


# --------------------------------------------------------------------------- the guide's example


def test_guide_example_runs():
    text = GUIDE.read_text()
    start = text.index(SECTION)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block and ">>>" in block.group(1), "the guide's section lost its python example"
    line = text[:start].count("\n") + text[start:start + block.start()].count("\n") + 1
    test = doctest.DocTestParser().get_doctest(block.group(1), {}, "guide-augmentation", str(GUIDE), line)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted >= 5 and failed == 0, f"{failed} of {attempted} examples of the guide's section failed"
