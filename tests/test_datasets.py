"""Tests for fastconv.datasets: the IDX parser, verification, search order, downloads and preprocessing.

MNIST first; then Fashion-MNIST (official-format ``.gz`` IDX files) and CIFAR-10 (a synthetic
``cifar-10-binary.tar.gz`` with small batch files), each with ``checksums=`` overriding the digests.

Nothing here touches the network: every download goes to ``file://`` mirrors in a
temporary directory or to a fake ``urlopen``, and an autouse fixture fails any test that
tries a real URL. The real MNIST files are used when ``FASTCONV_DATA_DIR`` points at them
(CI sets it to ``../shared/data/mnist``); those tests are skipped otherwise.
"""

import gzip
import hashlib
import io
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastconv import datasets
from fastconv.datasets import MNIST_FILES, CorruptFileError, DownloadError, load_mnist, preprocess_mnist, read_idx

REAL_DIR = os.environ.get("FASTCONV_DATA_DIR")
HAVE_REAL = bool(REAL_DIR) and all(
    (Path(REAL_DIR) / n).is_file() or (Path(REAL_DIR) / (n + ".gz")).is_file() for n in MNIST_FILES
)
requires_real = pytest.mark.skipif(not HAVE_REAL, reason="real MNIST files not found via $FASTCONV_DATA_DIR")

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array):
    """Serialise ``array`` in the IDX format (big-endian), independently of the parser under test."""
    array = np.asarray(array)
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz):
    path = Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def sha(data):
    return hashlib.sha256(data).hexdigest()


def synthetic_mnist(n_train=6, n_test=4, seed=0):
    """Small random arrays in MNIST's layout, and their IDX bytes keyed by file name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    return arrays, {n: idx_bytes(a) for n, a in arrays.items()}


def write_set(directory, blobs, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        write(directory / name, data, gz)
    return directory


def checksums_of(blobs):
    return {n: sha(b) for n, b in blobs.items()}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private cache dir, no $FASTCONV_DATA_DIR, and no real network access."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("FASTCONV_DATA_DIR", raising=False)
    monkeypatch.delenv("FASTCONV_FASHION_MNIST_DIR", raising=False)
    monkeypatch.delenv("FASTCONV_CIFAR10_DIR", raising=False)
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        if not str(url).startswith("file://"):
            pytest.fail(f"test tried to open a real URL: {url}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    return tmp_path


def cache_dir():
    return datasets.default_cache_dir()


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", list(_CODES), ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2), (2, 1, 3, 2)], ids=str)
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative and out.shape == shape
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # writable, and owned: re-reading gives the original data
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_checks_digest(tmp_path, gz):
    data = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    path = write(tmp_path / "a", data, gz)
    assert read_idx(path, sha256=sha(data).upper()).shape == (3, 4)
    with pytest.raises(CorruptFileError, match="SHA-256") as info:
        read_idx(path, sha256=sha(data + b"x"))
    assert str(path) in str(info.value)


def _corruptions():
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    return {
        "bad magic (nonzero lead bytes)": (b"\x12\x34" + good[2:], "magic"),
        "bad magic (unknown type code)": (good[:2] + b"\x07" + good[3:], "magic"),
        "zero dimensions": (good[:3] + b"\x00", "0 dimensions"),
        "shorter than a header": (good[:3], "too short"),
        "truncated header": (good[:10], "truncated IDX header"),
        "truncated data": (good[:-1], "truncated"),
        "trailing data": (good + b"\x00", "trailing data"),
        "empty file": (b"", "too short"),
    }


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(_corruptions()))
def test_read_idx_rejects_corrupt_content(tmp_path, gz, case):
    data, message = _corruptions()[case]
    path = write(tmp_path / "bad", data, gz)
    with pytest.raises(CorruptFileError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", ["mid-stream", "no trailer"])
def test_read_idx_rejects_truncated_gzip(tmp_path, cut):
    rng = np.random.default_rng(2)
    blob = gzip.compress(idx_bytes(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)))
    blob = blob[: len(blob) // 2] if cut == "mid-stream" else blob[:-4]
    path = tmp_path / "x.gz"
    path.write_bytes(blob)
    with pytest.raises(CorruptFileError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- load_mnist on synthetic files


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_mnist_synthetic(tmp_path, gz):
    arrays, blobs = synthetic_mnist()
    write_set(tmp_path / "d", blobs, gz=gz)
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path / "d", download=False, checksums=checksums_of(blobs))
    for got, name in zip((xtr, ytr, xte, yte), MNIST_FILES):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[name])


def test_load_mnist_mixed_compression_and_str_path(tmp_path):
    arrays, blobs = synthetic_mnist()
    d = tmp_path / "d"
    d.mkdir()
    for i, (name, data) in enumerate(blobs.items()):
        write(d / name, data, gz=bool(i % 2))
    (xtr, _), _ = load_mnist(str(d), download=False, checksums=checksums_of(blobs))
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])


def test_embedded_digests_apply_by_default(tmp_path):
    """Without checksums=, synthetic files fail the check against the official digests."""
    _, blobs = synthetic_mnist()
    write_set(tmp_path / "d", blobs)
    with pytest.raises(CorruptFileError, match="SHA-256.*official") as info:
        load_mnist(tmp_path / "d", download=False)
    assert str(tmp_path / "d") in str(info.value) and "Delete" in str(info.value)


@pytest.mark.parametrize("victim", MNIST_FILES)
@pytest.mark.parametrize("damage", ["wrong digest", "truncated", "bad magic"])
def test_load_mnist_names_the_corrupt_file(tmp_path, victim, damage):
    _, blobs = synthetic_mnist()
    sums = checksums_of(blobs)
    if damage == "wrong digest":  # a valid IDX file, but not the expected content
        blobs[victim] = blobs[victim][:-1] + bytes([blobs[victim][-1] ^ 1])
    elif damage == "truncated":
        blobs[victim] = blobs[victim][:-7]
    else:
        blobs[victim] = b"\x08\x03" + blobs[victim][2:]
    write_set(tmp_path / "d", blobs)
    with pytest.raises(CorruptFileError) as info:
        load_mnist(tmp_path / "d", download=False, checksums=sums)
    assert victim in str(info.value)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_load_mnist_count_mismatch(tmp_path, split):
    arrays, blobs = synthetic_mnist()
    labels = f"{split}-labels-idx1-ubyte"
    blobs[labels] = idx_bytes(arrays[labels][:-1])
    write_set(tmp_path / "d", blobs)
    with pytest.raises(CorruptFileError, match="images but .* labels") as info:
        load_mnist(tmp_path / "d", download=False, checksums=checksums_of(blobs))
    assert labels in str(info.value) and f"{split}-images-idx3-ubyte" in str(info.value)


@pytest.mark.parametrize("case", ["label out of range", "images not 3-d", "labels not uint8"])
def test_load_mnist_rejects_non_mnist_content(tmp_path, case):
    arrays, blobs = synthetic_mnist()
    if case == "label out of range":
        bad = arrays["train-labels-idx1-ubyte"].copy()
        bad[2] = 10
        blobs["train-labels-idx1-ubyte"] = idx_bytes(bad)
        match = "not a digit"
    elif case == "images not 3-d":
        blobs["train-images-idx3-ubyte"] = idx_bytes(arrays["train-images-idx3-ubyte"].reshape(6, -1))
        match = "3 dimension"
    else:
        blobs["train-labels-idx1-ubyte"] = idx_bytes(arrays["train-labels-idx1-ubyte"].astype(np.int32))
        match = "uint8"
    write_set(tmp_path / "d", blobs)
    with pytest.raises(CorruptFileError, match=match):
        load_mnist(tmp_path / "d", download=False, checksums=checksums_of(blobs))


@pytest.mark.parametrize(
    "checksums, error, match",
    [
        ("abc", TypeError, "mapping"),
        ({}, ValueError, "no digest for train-images"),
        ({n: "0" * 63 for n in MNIST_FILES}, ValueError, "64-digit"),
        ({n: "g" * 64 for n in MNIST_FILES}, ValueError, "64-digit"),
        ({n: None for n in MNIST_FILES}, ValueError, "64-digit"),  # None does not switch the check off
    ],
    ids=["not a mapping", "missing names", "too short", "not hex", "None"],
)
def test_checksums_argument_validated(tmp_path, checksums, error, match):
    with pytest.raises(error, match=match):
        load_mnist(tmp_path, download=False, checksums=checksums)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"data_dir": 3}, "data_dir"), ({"download": "yes"}, "download"), ({"mirrors": "http://x/"}, "mirrors")],
    ids=["data_dir", "download", "mirrors"],
)
def test_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        load_mnist(**kwargs)


# --------------------------------------------------------------------------- search order


def test_search_order(tmp_path, monkeypatch):
    sets = {}
    for where in ("arg", "env", "cache"):
        arrays, blobs = synthetic_mnist(seed=len(sets))
        sets[where] = (arrays, blobs)
    write_set(tmp_path / "arg", sets["arg"][1])
    write_set(tmp_path / "env", sets["env"][1])
    write_set(cache_dir(), sets["cache"][1])
    monkeypatch.setenv("FASTCONV_DATA_DIR", str(tmp_path / "env"))

    def loaded_from(where, data_dir):
        (x, _), _ = load_mnist(data_dir, download=False, checksums=checksums_of(sets[where][1]))
        np.testing.assert_array_equal(x, sets[where][0]["train-images-idx3-ubyte"])

    loaded_from("arg", tmp_path / "arg")
    loaded_from("env", None)
    loaded_from("env", tmp_path / "does-not-exist")
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete directory is skipped
    loaded_from("cache", None)
    monkeypatch.delenv("FASTCONV_DATA_DIR")
    loaded_from("cache", None)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert datasets.default_cache_dir() == tmp_path / "x" / "fastconv" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if os.name != "nt":
        assert datasets.default_cache_dir() == tmp_path / "home" / ".cache" / "fastconv" / "mnist"


def test_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA_DIR", str(tmp_path / "env"))
    partial = tmp_path / "partial"
    write_set(partial, {"train-images-idx3-ubyte": synthetic_mnist()[1]["train-images-idx3-ubyte"]})
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(partial, download=False)
    message = str(info.value)
    for expected in (str(partial), str(tmp_path / "env"), str(cache_dir()), "does not exist",
                     "missing: train-labels-idx1-ubyte", "FASTCONV_DATA_DIR", "--data-dir", "download=True",
                     *MNIST_FILES):
        assert expected in message


# --------------------------------------------------------------------------- downloads (no network)


def make_mirror(directory, blobs):
    """A directory served as a mirror through a file:// URL; returns the base URL."""
    write_set(directory, blobs, gz=True)
    return directory.as_uri() + "/"


def assert_clean_cache(expected_names):
    files = sorted(p.name for p in cache_dir().iterdir()) if cache_dir().exists() else []
    assert files == sorted(n + ".gz" for n in expected_names)  # no .part leftovers either


def test_download_uses_next_mirror_when_one_fails(tmp_path):
    arrays, blobs = synthetic_mnist()
    missing = (tmp_path / "empty-mirror").as_uri() + "/"  # file:// URL that does not exist -> URLError
    good = make_mirror(tmp_path / "good", blobs)
    (xtr, ytr), (xte, yte) = load_mnist(mirrors=[missing, good], checksums=checksums_of(blobs), progress=False)
    np.testing.assert_array_equal(xte, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ytr, arrays["train-labels-idx1-ubyte"])
    assert_clean_cache(MNIST_FILES)
    # Second call: served from the cache, no download.
    (xtr2, _), _ = load_mnist(mirrors=[], checksums=checksums_of(blobs), progress=False)
    np.testing.assert_array_equal(xtr2, xtr)


@pytest.mark.parametrize("damage", ["wrong digest", "truncated gzip", "not gzip at all"])
def test_bad_download_is_deleted_and_next_mirror_used(tmp_path, damage):
    arrays, blobs = synthetic_mnist()
    bad_dir = tmp_path / "bad"
    bad = make_mirror(bad_dir, blobs)
    victim = bad_dir / "train-images-idx3-ubyte.gz"
    if damage == "wrong digest":
        victim.write_bytes(gzip.compress(idx_bytes(arrays["train-images-idx3-ubyte"] ^ 1)))
    elif damage == "truncated gzip":
        victim.write_bytes(victim.read_bytes()[:-10])
    else:
        victim.write_bytes(b"<html>503 Service Unavailable</html>")
    good = make_mirror(tmp_path / "good", blobs)
    (xtr, _), _ = load_mnist(mirrors=[bad, good], checksums=checksums_of(blobs), progress=False)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])
    assert_clean_cache(MNIST_FILES)


def test_all_mirrors_fail(tmp_path):
    arrays, blobs = synthetic_mnist()
    bad_blobs = dict(blobs, **{"train-labels-idx1-ubyte": idx_bytes(arrays["train-labels-idx1-ubyte"][::-1])})
    bad = make_mirror(tmp_path / "bad", bad_blobs)
    missing = (tmp_path / "nothing").as_uri() + "/"
    with pytest.raises(DownloadError) as info:
        load_mnist(mirrors=[bad, missing], checksums=checksums_of(blobs), progress=False)
    message = str(info.value)
    assert "train-labels-idx1-ubyte.gz" in message and "SHA-256" in message and "URLError" in message
    assert str(cache_dir()) in message and "FASTCONV_DATA_DIR" in message
    # The good train-images file was kept (verified); the bad labels file was not.
    assert_clean_cache(["train-images-idx3-ubyte"])


class FakeResponse(io.BytesIO):
    def __init__(self, data, length=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}

    def __exit__(self, *exc):
        self.close()


def test_download_with_fake_opener_checks_length_and_shows_progress(tmp_path, monkeypatch, capsys):
    """A fake urlopen: the first mirror drops the connection early, the second succeeds.

    tqdm is hidden to exercise the text progress bar.
    """
    arrays, blobs = synthetic_mnist()
    gz = {n: gzip.compress(b) for n, b in blobs.items()}
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        name = url.rsplit("/", 1)[-1][: -len(".gz")]
        if url.startswith("https://first.invalid/"):
            return FakeResponse(gz[name][: len(gz[name]) // 2], length=len(gz[name]))  # short read
        return FakeResponse(gz[name])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    (xtr, _), _ = load_mnist(mirrors=["https://first.invalid/", "https://second.invalid"],
                             checksums=checksums_of(blobs))
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])
    assert calls == [f"{m}/{n}.gz" for n in MNIST_FILES for m in ("https://first.invalid",
                                                                  "https://second.invalid")]
    err = capsys.readouterr().err
    assert "Downloading train-images-idx3-ubyte.gz" in err and "100.0%" in err
    assert_clean_cache(MNIST_FILES)


def test_http_error_falls_through(tmp_path, monkeypatch):
    arrays, blobs = synthetic_mnist()
    gz = {n: gzip.compress(b) for n, b in blobs.items()}

    def fake_urlopen(url, timeout=None):
        if "first" in url:
            raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)
        return FakeResponse(gz[url.rsplit("/", 1)[-1][:-3]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    _, (xte, _) = load_mnist(mirrors=["https://first.invalid/", "https://second.invalid/"],
                             checksums=checksums_of(blobs), progress=False)
    np.testing.assert_array_equal(xte, arrays["t10k-images-idx3-ubyte"])


def test_corrupt_file_in_given_directory_is_not_replaced_by_download(tmp_path, monkeypatch):
    _, blobs = synthetic_mnist()
    sums = checksums_of(blobs)
    d = write_set(tmp_path / "d", dict(blobs, **{"t10k-labels-idx1-ubyte": b"junk"}))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(CorruptFileError, match="t10k-labels"):
        load_mnist(d, checksums=sums)


# --------------------------------------------------------------------------- real MNIST


@requires_real
def test_real_mnist():
    (xtr, ytr), (xte, yte) = load_mnist(REAL_DIR, download=False)
    assert (xtr.shape, ytr.shape, xte.shape, yte.shape) == ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    assert all(a.dtype == np.uint8 for a in (xtr, ytr, xte, yte))
    # Facts about the official files, stated independently of the loader.
    np.testing.assert_array_equal(ytr[:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(yte[:5], [7, 2, 1, 0, 4])
    np.testing.assert_array_equal(np.bincount(yte, minlength=10),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    counts = np.bincount(xtr.ravel(), minlength=256)  # pixel histogram: mean/std without a float copy
    values = np.arange(256) / 255
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    assert abs(mean - 0.1307) < 1e-4 and abs(std - 0.3081) < 1e-4  # the constants train_mnist.py normalises with
    assert counts[0] > 0 and counts[255] > 0 and len(counts) == 256


@requires_real
def test_real_mnist_through_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA_DIR", REAL_DIR)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    _, (xte, yte) = load_mnist()
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)


def test_download_progress_with_tqdm(tmp_path, capsys):
    pytest.importorskip("tqdm")
    _, blobs = synthetic_mnist()
    good = make_mirror(tmp_path / "good", blobs)
    load_mnist(mirrors=[good], checksums=checksums_of(blobs))
    assert "Downloading t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err


@requires_real
def test_real_files_through_the_download_path(tmp_path):
    """The official files served from a local file:// mirror pass the embedded digests."""
    (xtr, _), (_, yte) = load_mnist(mirrors=[Path(REAL_DIR).resolve().as_uri()], progress=False)
    assert xtr.shape == (60000, 28, 28) and yte[0] == 7
    assert_clean_cache(MNIST_FILES)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess_mnist(dtype):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    before = images.copy()
    out = preprocess_mnist(images, dtype)
    assert out.shape == (5, 1, 28, 28) and out.dtype == dtype and out.flags.c_contiguous
    expected = (images.astype(np.float64) / 255 - 0.1307) / 0.3081
    assert (datasets.MNIST_MEAN, datasets.MNIST_STD) == (0.1307, 0.3081)
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize(
    "images, dtype, error",
    [([[1]], np.float32, TypeError), (np.zeros((2, 28, 28), np.float32), np.float32, ValueError),
     (np.zeros((28, 28), np.uint8), np.float32, ValueError), (np.zeros((2, 28, 28), np.uint8), np.int32, TypeError)],
    ids=["list", "float input", "2-d", "int dtype"],
)
def test_preprocess_mnist_errors(images, dtype, error):
    with pytest.raises(error, match="preprocess_mnist"):
        preprocess_mnist(images, dtype)


# =========================================================================== Fashion-MNIST

from fastconv.datasets import (  # noqa: E402 - the second half of the file tests the second and third loaders
    CIFAR10_CLASSES,
    CIFAR10_FILE,
    FASHION_MNIST_CLASSES,
    load_cifar10,
    load_fashion_mnist,
    preprocess_cifar10,
    preprocess_fashion_mnist,
)

REAL_FASHION_DIR = os.environ.get("FASTCONV_FASHION_MNIST_DIR")
requires_real_fashion = pytest.mark.skipif(
    not (REAL_FASHION_DIR and all((Path(REAL_FASHION_DIR) / (n + ".gz")).is_file() for n in MNIST_FILES)),
    reason="real Fashion-MNIST .gz files not found via $FASTCONV_FASHION_MNIST_DIR")
REAL_CIFAR_DIR = os.environ.get("FASTCONV_CIFAR10_DIR")
requires_real_cifar = pytest.mark.skipif(
    not (REAL_CIFAR_DIR and (Path(REAL_CIFAR_DIR) / CIFAR10_FILE).is_file()),
    reason="cifar-10-binary.tar.gz not found via $FASTCONV_CIFAR10_DIR")


def gz_set(blobs):
    """The ``.gz`` files of a data set (fixed mtime, so the bytes and their digests are reproducible)."""
    return {n: gzip.compress(b, mtime=0) for n, b in blobs.items()}


def write_gz_set(directory, gz):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in gz.items():
        (directory / (name + ".gz")).write_bytes(data)
    return directory


def synthetic_fashion(seed=0):
    """Fashion-MNIST-format files: arrays, and the .gz bytes with their SHA-256 (what the loader compares)."""
    arrays, blobs = synthetic_mnist(seed=seed + 100)
    gz = gz_set(blobs)
    return arrays, gz, checksums_of(gz)


def download_error_without_network(monkeypatch, loader):
    """The DownloadError message of ``loader()`` when every URL fails as on a machine without network."""

    def no_network(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DownloadError) as info:
        loader(progress=False)
    return str(info.value)


def test_load_fashion_mnist_synthetic(tmp_path):
    arrays, gz, sums = synthetic_fashion()
    write_gz_set(tmp_path / "d", gz)
    got = load_fashion_mnist(tmp_path / "d", download=False, checksums=sums)
    (xtr, ytr), (xte, yte) = got
    for array, name in zip((xtr, ytr, xte, yte), MNIST_FILES):
        assert array.dtype == np.uint8 and array.flags.writeable
        np.testing.assert_array_equal(array, arrays[name])
    # The same structure as load_mnist's result on the same content.
    write_set(tmp_path / "m", {n: gzip.decompress(b) for n, b in gz.items()})
    ref = load_mnist(tmp_path / "m", download=False,
                     checksums={n: sha(gzip.decompress(b)) for n, b in gz.items()})
    assert [[(a.shape, a.dtype) for a in pair] for pair in got] == [[(a.shape, a.dtype) for a in pair] for pair in ref]


def test_fashion_mnist_digest_is_of_the_gz_file(tmp_path):
    """The published digests are of the .gz files: a digest of the uncompressed content does not match."""
    _, gz, _ = synthetic_fashion()
    write_gz_set(tmp_path / "d", gz)
    content_sums = {n: sha(gzip.decompress(b)) for n, b in gz.items()}
    with pytest.raises(CorruptFileError, match="SHA-256 of the file .*official") as info:
        load_fashion_mnist(tmp_path / "d", download=False, checksums=content_sums)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "Delete" in str(info.value)
    with pytest.raises(CorruptFileError, match="SHA-256"):  # and the embedded official digests apply by default
        load_fashion_mnist(tmp_path / "d", download=False)


@pytest.mark.parametrize("victim", MNIST_FILES)
def test_fashion_mnist_names_the_corrupt_file(tmp_path, victim):
    """A file re-gzipped from different content (a valid IDX file) fails its digest; the message names it."""
    arrays, gz, sums = synthetic_fashion()
    gz[victim] = gzip.compress(idx_bytes(arrays[victim] ^ 1), mtime=0)
    write_gz_set(tmp_path / "d", gz)
    with pytest.raises(CorruptFileError, match="SHA-256") as info:
        load_fashion_mnist(tmp_path / "d", download=False, checksums=sums)
    assert victim + ".gz" in str(info.value)


def test_fashion_mnist_checks_the_content_after_the_digest(tmp_path):
    """A file with a matching digest is still parsed and checked (here: a label that is no class)."""
    arrays, gz, _ = synthetic_fashion()
    bad = arrays["t10k-labels-idx1-ubyte"].copy()
    bad[0] = 10
    gz["t10k-labels-idx1-ubyte"] = gzip.compress(idx_bytes(bad), mtime=0)
    write_gz_set(tmp_path / "d", gz)
    with pytest.raises(CorruptFileError, match="label 10 is not a class 0-9") as info:
        load_fashion_mnist(tmp_path / "d", download=False, checksums=checksums_of(gz))
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)


def test_fashion_mnist_ignores_uncompressed_copies(tmp_path):
    arrays, gz, sums = synthetic_fashion()
    raw_only = write_set(tmp_path / "raw", {n: gzip.decompress(b) for n, b in gz.items()}, gz=False)
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(raw_only, download=False, checksums=sums)
    assert "missing: train-images-idx3-ubyte.gz" in str(info.value) and "uncompressed" in str(info.value)
    # Beside the .gz files (torchvision's raw/ folder has both), the .gz files are read.
    both = write_gz_set(tmp_path / "raw", gz)
    (both / "train-images-idx3-ubyte").write_bytes(b"not even IDX")
    (xtr, _), _ = load_fashion_mnist(both, download=False, checksums=sums)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])


def test_fashion_mnist_search_order_and_cache_folder(tmp_path, monkeypatch):
    sets = {where: synthetic_fashion(seed=i) for i, where in enumerate(("arg", "env", "cache", "mnist"))}
    write_gz_set(tmp_path / "arg", sets["arg"][1])
    write_gz_set(tmp_path / "env", sets["env"][1])
    cache = datasets.default_cache_dir("fashion-mnist")
    assert cache == tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist" and cache != datasets.default_cache_dir()
    write_gz_set(cache, sets["cache"][1])
    write_gz_set(tmp_path / "mnist", sets["mnist"][1])
    monkeypatch.setenv("FASTCONV_FASHION_MNIST_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("FASTCONV_DATA_DIR", str(tmp_path / "mnist"))  # MNIST's variable: never Fashion-MNIST's

    def loaded_from(where, data_dir):
        arrays, _, sums = sets[where]
        (x, _), _ = load_fashion_mnist(data_dir, download=False, checksums=sums)
        np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte"])

    loaded_from("arg", tmp_path / "arg")
    loaded_from("env", None)
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete directory is skipped
    loaded_from("cache", None)


def test_fashion_mnist_download_into_its_cache(tmp_path):
    arrays, gz, sums = synthetic_fashion()
    missing = (tmp_path / "empty-mirror").as_uri() + "/"
    mirror = write_gz_set(tmp_path / "mirror", gz).as_uri() + "/"
    _, (xte, yte) = load_fashion_mnist(mirrors=[missing, mirror], checksums=sums, progress=False)
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])
    cache = datasets.default_cache_dir("fashion-mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(n + ".gz" for n in MNIST_FILES)
    assert not datasets.default_cache_dir().exists()  # MNIST's cache untouched
    load_fashion_mnist(mirrors=[], checksums=sums)  # served from the cache


def test_fashion_mnist_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_FASHION_MNIST_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path / "nowhere", download=False)
    message = str(info.value)
    for expected in ("Fashion-MNIST", str(tmp_path / "nowhere"), str(tmp_path / "env"), "FASTCONV_FASHION_MNIST_DIR",
                     str(datasets.default_cache_dir("fashion-mnist")), "download=True",
                     *(n + ".gz" for n in MNIST_FILES)):
        assert expected in message

    message = download_error_without_network(monkeypatch, load_fashion_mnist)
    assert "train-images-idx3-ubyte.gz" in message and "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message
    assert str(datasets.default_cache_dir("fashion-mnist")) in message and "FASTCONV_FASHION_MNIST_DIR" in message


@requires_real_fashion
def test_real_fashion_mnist():
    (xtr, ytr), (xte, yte) = load_fashion_mnist(REAL_FASHION_DIR, download=False)
    assert (xtr.shape, ytr.shape, xte.shape, yte.shape) == ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), [1000] * 10)
    assert FASHION_MNIST_CLASSES[ytr[0]] == "Ankle boot"
    counts = np.bincount(xtr.ravel(), minlength=256)
    values = np.arange(256) / 255
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    assert abs(mean - datasets.FASHION_MNIST_MEAN) < 1e-4 and abs(std - datasets.FASHION_MNIST_STD) < 1e-4


# =========================================================================== CIFAR-10

CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def cifar_records(images, labels):
    """Serialise images ``(n, 3, 32, 32)`` and labels as the binary version's records, independently of the loader."""
    return b"".join(bytes([int(label)]) + image.tobytes() for image, label in zip(images, labels))


def synthetic_cifar(n=(5, 7, 6, 5, 8, 9), seed=0):
    """Small random batches in CIFAR-10's layout: ``{batch file: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (k, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, k, dtype=np.uint8))
            for name, k in zip(CIFAR_BATCHES, n)}


def tar_gz(members):
    """A .tar.gz of ``[(name, data, tar member type)]``: ``data`` is a regular file's content, or a link's target."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode() if data else ""
                tar.addfile(info)
    return buf.getvalue()


def cifar_members(batches, extra=()):
    """The official archive's members: the folder, the batches, readme.html and batches.meta.txt."""
    import tarfile

    folder = "cifar-10-batches-bin"
    members = [(folder, b"", tarfile.DIRTYPE), (f"{folder}/batches.meta.txt", "\n".join(CIFAR10_CLASSES).encode(),
                                                  tarfile.REGTYPE)]
    members += [(f"{folder}/{name}", data if isinstance(data, bytes) else cifar_records(*data), tarfile.REGTYPE)
                for name, data in batches.items()]
    members += [(f"{folder}/readme.html", b"<html></html>", tarfile.REGTYPE), *extra]
    return members


def write_cifar(directory, blob):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CIFAR10_FILE).write_bytes(blob)
    return {CIFAR10_FILE: sha(blob)}


def test_load_cifar10_synthetic(tmp_path):
    batches = synthetic_cifar()
    sums = write_cifar(tmp_path / "d", tar_gz(cifar_members(batches)))
    (xtr, ytr), (xte, yte) = load_cifar10(tmp_path / "d", download=False, checksums=sums)
    train = [batches[n] for n in CIFAR_BATCHES[:5]]
    np.testing.assert_array_equal(xtr, np.concatenate([x for x, _ in train]))
    np.testing.assert_array_equal(ytr, np.concatenate([y for _, y in train]))
    np.testing.assert_array_equal(xte, batches["test_batch.bin"][0])
    np.testing.assert_array_equal(yte, batches["test_batch.bin"][1])
    assert xtr.shape == (31, 3, 32, 32) and xte.shape == (9, 3, 32, 32)
    for a in (xtr, ytr, xte, yte):
        assert a.dtype == np.uint8 and a.flags.writeable and a.flags.c_contiguous
    # The record layout, spelt out: byte 0 the label, then 1024 red, 1024 green, 1024 blue, row by row.
    record = cifar_records(*batches["test_batch.bin"])[3073:2 * 3073]
    assert record[0] == yte[1] and record[1 + 1024 + 32 * 2 + 5] == xte[1, 1, 2, 5]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [CIFAR10_FILE]  # nothing extracted


def test_cifar10_classes():
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                               "truck")
    assert len(datasets.CIFAR10_MEAN) == len(datasets.CIFAR10_STD) == 3


def test_cifar10_digest_checked_before_anything_is_read(tmp_path, monkeypatch):
    import tarfile

    blob = tar_gz(cifar_members(synthetic_cifar()))
    sums = write_cifar(tmp_path / "d", blob)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    with pytest.raises(CorruptFileError, match="SHA-256 of the file .*official") as info:
        load_cifar10(tmp_path / "d", download=False, checksums={CIFAR10_FILE: sha(blob + b"x")})
    assert str(tmp_path / "d" / CIFAR10_FILE) in str(info.value) and opened == []
    with pytest.raises(CorruptFileError, match="SHA-256"):  # the embedded official digest applies by default
        load_cifar10(tmp_path / "d", download=False)
    assert opened == []
    (tmp_path / "d" / CIFAR10_FILE).write_bytes(b"junk, not even gzip")  # a wrong digest wins over a bad format
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_cifar10(tmp_path / "d", download=False, checksums=sums)
    assert opened == []
    write_cifar(tmp_path / "d", blob)
    load_cifar10(tmp_path / "d", download=False, checksums=sums)
    assert opened == [1]


def _bad_archives():
    import tarfile

    good = synthetic_cifar()
    folder = "cifar-10-batches-bin"
    short = cifar_records(*good["data_batch_3.bin"])[:-1]
    return {
        "batch not whole records": (cifar_members(dict(good, **{"data_batch_3.bin": short})),
                                    "data_batch_3.bin.*not a whole number of 3073-byte records"),
        "batch with a trailing byte": (cifar_members(dict(good, **{"test_batch.bin": short + b"\x00\x00"})),
                                      "test_batch.bin.*3073-byte records"),
        "empty batch": (cifar_members(dict(good, **{"data_batch_1.bin": b""})), "data_batch_1.bin.*0 bytes"),
        "label out of range": (cifar_members(dict(good, **{"data_batch_2.bin": b"\x0a" + bytes(3072)})),
                               "data_batch_2.bin.*label 10"),
        "batch missing": (cifar_members({k: v for k, v in good.items() if k != "test_batch.bin"}),
                          f"no {folder}/test_batch.bin"),
        "member outside the folder": (cifar_members(good, [("other/data_batch_1.bin", b"x", tarfile.REGTYPE)]),
                                      "'other/data_batch_1.bin' is outside cifar-10-batches-bin/"),
        "member at the top": (cifar_members(good, [("evil.sh", b"x", tarfile.REGTYPE)]), "'evil.sh' is outside"),
        "dot-dot path": (cifar_members(good, [(f"{folder}/../../etc/passwd", b"x", tarfile.REGTYPE)]),
                         "passwd' is outside"),
        "absolute path": (cifar_members(good, [(f"/{folder}/data_batch_1.bin", b"x", tarfile.REGTYPE)]),
                          "is outside"),
        "symlink": (cifar_members(good, [(f"{folder}/link", b"/etc/passwd", tarfile.SYMTYPE)]),
                    "'cifar-10-batches-bin/link' is a symbolic link"),
        "hard link": (cifar_members(good, [(f"{folder}/hard", f"{folder}/readme.html".encode(), tarfile.LNKTYPE)]),
                      "'cifar-10-batches-bin/hard' is a hard link"),
        "device": (cifar_members(good, [(f"{folder}/dev", b"", tarfile.CHRTYPE)]),
                   "'cifar-10-batches-bin/dev' is a device"),
        "duplicate batch": (cifar_members(good, [(f"{folder}/data_batch_1.bin",
                                                  cifar_records(*good["data_batch_4.bin"]), tarfile.REGTYPE)]),
                            "data_batch_1.bin' appears twice"),
    }


@pytest.mark.parametrize("case", list(_bad_archives()))
def test_cifar10_refuses_bad_archives(tmp_path, case):
    members, message = _bad_archives()[case]
    sums = write_cifar(tmp_path / "d", tar_gz(members))
    with pytest.raises(CorruptFileError, match=message) as info:
        load_cifar10(tmp_path / "d", download=False, checksums=sums)
    assert str(tmp_path / "d" / CIFAR10_FILE) in str(info.value)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [CIFAR10_FILE]  # nothing was written anywhere


@pytest.mark.parametrize("cut", ["tar cut inside a batch", "gzip stream cut", "not gzip"])
def test_cifar10_truncated_archive(tmp_path, cut):
    blob = tar_gz(cifar_members(synthetic_cifar()))
    if cut == "tar cut inside a batch":  # a well-formed gzip of a tar that stops inside data_batch_1.bin
        blob, match = gzip.compress(gzip.decompress(blob)[:512 * 4 + 4000], mtime=0), "data_batch_1.bin' is truncated"
    elif cut == "gzip stream cut":
        blob, match = blob[: len(blob) // 2], "truncated"
    else:
        blob, match = b"PK\x03\x04 a zip file", "not a valid gzipped tar archive"
    sums = write_cifar(tmp_path / "d", blob)
    with pytest.raises(CorruptFileError, match=match) as info:
        load_cifar10(tmp_path / "d", download=False, checksums=sums)
    assert str(tmp_path / "d" / CIFAR10_FILE) in str(info.value)


def test_nothing_is_unpickled():
    """The loaders never unpickle: no pickle-capable module is imported and np.load is not called."""
    import ast

    tree = ast.parse(Path(datasets.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "copyreg"}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not attributes & {"load", "loads", "Unpickler"}  # np.load / pickle.loads / np.load(allow_pickle=...)
    assert "allow_pickle" not in Path(datasets.__file__).read_text()


def test_cifar10_search_order_and_cache_folder(tmp_path, monkeypatch):
    sets = {where: synthetic_cifar(n=(2, 1, 1, 1, 1, 3), seed=i) for i, where in enumerate(("arg", "env", "cache"))}
    blobs = {where: tar_gz(cifar_members(b)) for where, b in sets.items()}
    cache = datasets.default_cache_dir("cifar-10")
    assert cache == tmp_path / "xdg-cache" / "fastconv" / "cifar-10"
    write_cifar(tmp_path / "arg", blobs["arg"])
    write_cifar(tmp_path / "env", blobs["env"])
    write_cifar(cache, blobs["cache"])
    monkeypatch.setenv("FASTCONV_CIFAR10_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("FASTCONV_DATA_DIR", str(tmp_path / "arg"))  # MNIST's variable: never CIFAR-10's

    def loaded_from(where, data_dir):
        _, (xte, _) = load_cifar10(data_dir, download=False, checksums={CIFAR10_FILE: sha(blobs[where])})
        np.testing.assert_array_equal(xte, sets[where]["test_batch.bin"][0])

    loaded_from("arg", tmp_path / "arg")
    loaded_from("env", None)
    loaded_from("env", tmp_path / "does-not-exist")
    monkeypatch.delenv("FASTCONV_CIFAR10_DIR")
    loaded_from("cache", None)


def test_cifar10_download(tmp_path, capsys):
    batches = synthetic_cifar(n=(1, 1, 1, 1, 1, 2))
    blob = tar_gz(cifar_members(batches))
    write_cifar(tmp_path / "bad", blob[:-20])  # served, but damaged
    write_cifar(tmp_path / "good", blob)
    mirrors = [(tmp_path / "bad").as_uri(), (tmp_path / "good").as_uri() + "/"]
    _, (xte, _) = load_cifar10(mirrors=mirrors, checksums={CIFAR10_FILE: sha(blob)})
    np.testing.assert_array_equal(xte, batches["test_batch.bin"][0])
    assert "Downloading cifar-10-binary.tar.gz" in capsys.readouterr().err  # the progress bar (tqdm or text)
    cache = datasets.default_cache_dir("cifar-10")
    assert sorted(p.name for p in cache.iterdir()) == [CIFAR10_FILE]  # the bad copy and .part files are gone
    assert (cache / CIFAR10_FILE).read_bytes() == blob


def test_cifar10_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CIFAR10_DIR", str(tmp_path / "env"))
    (tmp_path / "extracted" / "cifar-10-batches-bin").mkdir(parents=True)  # an extracted copy is not used
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "extracted", download=False)
    message = str(info.value)
    for expected in ("CIFAR-10", str(tmp_path / "extracted"), f"missing: {CIFAR10_FILE}", str(tmp_path / "env"),
                     "does not exist", "FASTCONV_CIFAR10_DIR", str(datasets.default_cache_dir("cifar-10")),
                     "download=True"):
        assert expected in message

    message = download_error_without_network(monkeypatch, load_cifar10)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message and "URLError" in message
    assert str(datasets.default_cache_dir("cifar-10")) in message and "FASTCONV_CIFAR10_DIR" in message
    assert not list(datasets.default_cache_dir("cifar-10").iterdir())  # no partial download left


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist, load_cifar10], ids=lambda f: f.__name__)
def test_loader_arguments_validated(loader):
    name = loader.__name__
    for kwargs, error, match in [({"data_dir": 3}, TypeError, "data_dir"), ({"download": "yes"}, TypeError, "download"),
                                 ({"mirrors": "http://x/"}, TypeError, "mirrors"),
                                 ({"checksums": "abc"}, TypeError, "mapping"),
                                 ({"checksums": {}}, ValueError, "no digest for"),
                                 ({"checksums": {"cifar-10-binary.tar.gz": None, **{n: None for n in MNIST_FILES}}},
                                  ValueError, "64-digit")]:
        with pytest.raises(error, match=f"{name}: .*{match}"):
            loader(**kwargs)


@pytest.mark.parametrize("loader, mirrors", [(load_fashion_mnist, datasets.FASHION_MNIST_MIRRORS),
                                             (load_cifar10, datasets.CIFAR10_MIRRORS)],
                         ids=["fashion_mnist", "cifar10"])
def test_loader_signature(loader, mirrors):
    """The interface other code is written against: load_mnist's signature, with the data set's mirrors."""
    import inspect

    params = inspect.signature(loader).parameters
    assert list(params) == ["data_dir", "download", "checksums", "mirrors", "progress"]
    assert [params[p].default for p in params] == [None, True, None, mirrors, True]
    assert [params[p].kind for p in ("checksums", "mirrors", "progress")] == [inspect.Parameter.KEYWORD_ONLY] * 3


def test_default_cache_dir_names():
    assert [datasets.default_cache_dir(n).name for n in ("mnist", "fashion-mnist", "cifar-10")] == [
        "mnist", "fashion-mnist", "cifar-10"]
    with pytest.raises(ValueError, match="default_cache_dir: dataset must be one of"):
        datasets.default_cache_dir("../etc")


@requires_real_cifar
def test_real_cifar10():
    (xtr, ytr), (xte, yte) = load_cifar10(REAL_CIFAR_DIR, download=False)
    assert (xtr.shape, ytr.shape, xte.shape, yte.shape) == ((50000, 3, 32, 32), (50000,), (10000, 3, 32, 32),
                                                            (10000,))
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), [1000] * 10)
    assert [CIFAR10_CLASSES[i] for i in yte[:5]] == ["cat", "ship", "ship", "airplane", "frog"]
    for c in range(3):
        counts = np.bincount(xtr[:, c].ravel(), minlength=256)
        values = np.arange(256) / 255
        mean = counts @ values / counts.sum()
        std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
        assert abs(mean - datasets.CIFAR10_MEAN[c]) < 1e-4 and abs(std - datasets.CIFAR10_STD[c]) < 1e-4


# --------------------------------------------------------------------------- preprocessing of the new data sets


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess_fashion_mnist_and_cifar10(dtype):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    colour = rng.integers(0, 256, (4, 3, 32, 30), dtype=np.uint8)
    before = gray.copy(), colour.copy()
    tol = {"rtol": 1e-6 if dtype == np.float32 else 1e-12, "atol": 1e-6}
    out = preprocess_fashion_mnist(gray, dtype)
    assert out.shape == (4, 1, 28, 28) and out.dtype == dtype and out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 0], (gray / 255 - 0.2860) / 0.3530, **tol)
    out = preprocess_cifar10(colour, dtype)
    assert out.shape == colour.shape and out.dtype == dtype and out.flags.c_contiguous
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    np.testing.assert_allclose(out, (colour / 255 - mean[:, None, None]) / std[:, None, None], **tol)
    np.testing.assert_array_equal(gray, before[0])
    np.testing.assert_array_equal(colour, before[1])


@pytest.mark.parametrize(
    "func, images, dtype, error",
    [(preprocess_cifar10, [[1]], np.float32, TypeError),
     (preprocess_cifar10, np.zeros((2, 3, 32, 32), np.float32), np.float32, ValueError),
     (preprocess_cifar10, np.zeros((2, 1, 32, 32), np.uint8), np.float32, ValueError),
     (preprocess_cifar10, np.zeros((3, 32, 32), np.uint8), np.float32, ValueError),
     (preprocess_cifar10, np.zeros((2, 3, 32, 32), np.uint8), np.int64, TypeError),
     (preprocess_fashion_mnist, np.zeros((2, 1, 28, 28), np.uint8), np.float32, ValueError)],
    ids=["list", "float input", "1 channel", "3-d", "int dtype", "fashion 4-d"],
)
def test_preprocess_new_errors(func, images, dtype, error):
    with pytest.raises(error, match=func.__name__ + r": .*(images|dtype)") as info:
        func(images, dtype)
    if error is ValueError:
        assert str(np.shape(images)) in str(info.value)
