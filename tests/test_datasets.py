"""Tests for fastconv.datasets: the IDX parser, verification, search order, downloads and preprocessing.

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
