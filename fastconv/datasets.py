"""MNIST, Fashion-MNIST and CIFAR-10, read from their official files, verified, downloaded if needed.

One loader per data set, all on the same machinery:

- :func:`load_mnist`: the four IDX files of MNIST;
- :func:`load_fashion_mnist`: the four IDX files of Fashion-MNIST (same names and layout as MNIST,
  Zalando's 28x28 grey images of clothes, :data:`FASHION_MNIST_CLASSES`);
- :func:`load_cifar10`: the official *binary* archive ``cifar-10-binary.tar.gz`` of CIFAR-10
  (32x32 colour images, :data:`CIFAR10_CLASSES`), read straight from the tarball.

Each loader looks for its files in, in order,

1. the ``data_dir`` argument,
2. the directory named by the data set's environment variable: ``FASTCONV_DATA_DIR`` for MNIST,
   ``FASTCONV_FASHION_MNIST_DIR`` for Fashion-MNIST, ``FASTCONV_CIFAR10_DIR`` for CIFAR-10 (one
   variable per data set, each naming the folder that holds that data set's files),
3. the data set's own per-user cache directory (:func:`default_cache_dir`, e.g.
   ``~/.cache/fastconv/mnist``, ``~/.cache/fastconv/fashion-mnist``, ``~/.cache/fastconv/cifar-10``),

and uses the first directory holding all of them. If none has them and ``download=True``, the
missing files are downloaded into the cache directory from the data set's mirrors (those
torchvision uses for MNIST and Fashion-MNIST; the authors' site for CIFAR-10), trying the next
mirror when one fails, with a progress bar.

Every file is verified before use against a SHA-256 digest of the official file embedded in this
module (``checksums=`` replaces the digests, for tests on synthetic files; it never skips the
check). MNIST's digests are of the uncompressed content, so a file is accepted gzipped or not.
Fashion-MNIST's and CIFAR-10's are the digests published by TensorFlow Datasets, of the files as
distributed (``.gz``, ``.tar.gz``); they are compared with the SHA-256 of the file as stored, so
those data sets are read only from their official compressed files. IDX headers must describe
exactly the bytes that follow them; the CIFAR-10 archive's digest is checked before anything in
it is read, then its members are checked (only regular files inside ``cifar-10-batches-bin/``,
whole 3073-byte records) and read from the archive without extracting it. Nothing is ever
unpickled. A download is written to a temporary file, verified, and only then moved into place
with an atomic rename; a download that fails verification is deleted and never used.

:func:`preprocess_mnist`, :func:`preprocess_fashion_mnist` and :func:`preprocess_cifar10` turn the
raw uint8 images into the standardised float input of a network (``*_MEAN``, ``*_STD``).
"""

import gzip
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILE",
    "CIFAR10_MEAN",
    "CIFAR10_MIRRORS",
    "CIFAR10_SHA256",
    "CIFAR10_STD",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_STD",
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "MNIST_STD",
    "CorruptFileError",
    "DownloadError",
    "default_cache_dir",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "preprocess_cifar10",
    "preprocess_fashion_mnist",
    "preprocess_mnist",
    "read_idx",
]

#: File names (without ``.gz``) in the order ``load_mnist`` and ``load_fashion_mnist`` return
#: their contents (Fashion-MNIST uses the same four names).
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: SHA-256 of the *uncompressed* official files. Hashing the uncompressed content
#: (rather than the ``.gz``) accepts any correct copy, whichever tool gzipped it.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: The mirrors torchvision downloads MNIST from, tried in this order. Each holds
#: ``<name>.gz`` for every name in :data:`MNIST_FILES`.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: SHA-256 of the official *gzipped* Fashion-MNIST files ``<name>.gz``, keyed by the names of
#: :data:`MNIST_FILES`. Source: TensorFlow Datasets, ``tensorflow_datasets/url_checksums/fashion_mnist.txt``
#: (github.com/tensorflow/datasets), which lists URL, size in bytes and SHA-256 of each file:
#: train-images 26421880 B, train-labels 29515 B, t10k-images 4422102 B, t10k-labels 5148 B.
#: (Zalando's README and torchvision publish MD5s of the same .gz files: 8d4fb7e6c68d591d4c3dfef9ec88bf0d,
#: 25c81989df183df01b3e8a0aad5dffbe, bef4ecab320f06d8554ea6380940ec79, bb300cfdad3c16e7a12a480ee83cd310.)
#: The published digests are of the compressed files, so they are compared with the SHA-256 of the
#: ``.gz`` file as stored: Fashion-MNIST is read only from its official ``.gz`` files (every mirror
#: serves the same bytes), and an uncompressed copy, for which no digest is published, is not used.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

#: The mirror torchvision downloads Fashion-MNIST from (Zalando's S3 bucket); it holds ``<name>.gz``
#: for every name in :data:`MNIST_FILES`. Plain HTTP as torchvision uses it: the SHA-256 check makes
#: the transport's integrity irrelevant.
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

#: Fashion-MNIST's class names, indexed by label (Zalando's README; torchvision's ``FashionMNIST.classes``).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: The official binary version of CIFAR-10 (records of 1 label byte and 3072 pixel bytes). The
#: "python version" of the data set is pickled and is deliberately not supported.
CIFAR10_FILE = "cifar-10-binary.tar.gz"

#: SHA-256 of :data:`CIFAR10_FILE` (170052171 bytes). Source: TensorFlow Datasets,
#: ``tensorflow_datasets/url_checksums/cifar10.txt`` (github.com/tensorflow/datasets), which lists
#: https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz with this size and digest. The data set's
#: page (https://www.cs.toronto.edu/~kriz/cifar.html) publishes the MD5 c32a1d4ab5d03f1284b67883e8d87530.
CIFAR10_SHA256 = {CIFAR10_FILE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"}

#: Where CIFAR-10 is downloaded from: the authors' site (torchvision uses the same host).
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

#: CIFAR-10's class names, indexed by label (the archive's ``batches.meta.txt``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = "test_batch.bin"
_CIFAR10_SHAPE = (3, 32, 32)
_CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue pixels (row-major)

_DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a mirror counts as failed
_CHUNK = 1 << 16
_CACHE_NAMES = ("mnist", "fashion-mnist", "cifar-10")

# IDX element type code -> big-endian NumPy dtype (the format's full table).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class CorruptFileError(ValueError):
    """A data file exists but is not what it should be (bad header, length or digest)."""


class DownloadError(OSError):
    """Every mirror failed to deliver a verified copy of a file."""


def default_cache_dir(dataset="mnist"):
    """Return the per-user directory where a data set's downloaded files are kept.

    ``$XDG_CACHE_HOME/fastconv/<dataset>`` if ``XDG_CACHE_HOME`` is set, else
    ``%LOCALAPPDATA%\\fastconv\\<dataset>`` on Windows, else ``~/.cache/fastconv/<dataset>``.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist", "cifar-10"}, default "mnist"
        The data set (each has a folder of its own).

    Returns
    -------
    pathlib.Path
        The directory (it may not exist yet).

    Examples
    --------
    >>> default_cache_dir().parts[-2:]
    ('fastconv', 'mnist')
    >>> default_cache_dir("cifar-10").name
    'cifar-10'
    """
    if dataset not in _CACHE_NAMES:
        raise ValueError(f"default_cache_dir: dataset must be one of {', '.join(map(repr, _CACHE_NAMES))}, "
                         f"got {dataset!r}")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg)
    elif os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path.home() / ".cache"
    return base / "fastconv" / dataset


def _read_bytes(path):
    """Return the uncompressed content of ``path``, gunzipping if it starts with gzip's magic."""
    return _gunzip(Path(path).read_bytes(), path)


def _gunzip(data, path):
    """``data`` (the bytes of file ``path``) uncompressed if it starts with gzip's magic, else ``data`` itself."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad CRC, bad data
        raise CorruptFileError(
            f"{path}: not a valid gzip file ({type(exc).__name__}: {exc}); "
            "the file is probably truncated or damaged"
        ) from exc


def _check_digest(hasher, sha256, path, what):
    """CorruptFileError unless ``hasher`` (a hashlib SHA-256 fed with ``what`` of ``path``) gives ``sha256``."""
    digest = hasher.hexdigest()
    if digest != sha256.lower():
        raise CorruptFileError(
            f"{path}: SHA-256 of {what} is {digest}, expected {sha256}; "
            "the file is damaged or is not the official one"
        )


def _parse_idx(data, name):
    """Parse IDX bytes into a native-endian array, checking that the header matches the length."""
    if len(data) < 4:
        raise CorruptFileError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise CorruptFileError(
            f"{name}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(the first two bytes must be zero); this is not an IDX file"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise CorruptFileError(f"{name}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
                               f"(unknown element type code 0x{code:02x})")
    if ndim == 0:
        raise CorruptFileError(f"{name}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise CorruptFileError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dimensions "
                               f"need {header_len})")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing data"
        raise CorruptFileError(
            f"{name}: {what}: the IDX header declares shape {dims} of {dtype.name}, i.e. {expected} bytes, "
            f"but the content is {len(data)} bytes"
        )
    # A bytearray copy makes the result writable and independent of `data`.
    array = np.frombuffer(bytearray(data[header_len:]), dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path, sha256=None):
    """Read one IDX file (gzipped or not) into a NumPy array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Gzip compression is detected from the content, not the name.
    sha256 : str, optional
        Expected SHA-256 (hex) of the *uncompressed* content. When given, a mismatch
        raises :class:`CorruptFileError`.

    Returns
    -------
    numpy.ndarray
        Array of the shape and element type declared by the header, native byte order,
        writable (e.g. ``uint8`` of shape ``(60000, 28, 28)`` for MNIST training images).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CorruptFileError
        If the gzip stream is damaged, the magic number is wrong, the header does not
        match the length of the data exactly, or the digest differs.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:                # magic (uint8, 1 axis), length 3, the labels
    ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    >>> folder.cleanup()
    """
    data = _read_bytes(path)
    if sha256 is not None:
        _check_digest(hashlib.sha256(data), sha256, path, "the uncompressed content")
    return _parse_idx(data, str(path))


def _check_file_digest(f, sha256, path):
    """Stream-hash the open binary file ``f`` from its start (CorruptFileError on a mismatch), then rewind it."""
    f.seek(0)
    hasher = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        hasher.update(chunk)
    _check_digest(hasher, sha256, path, "the file")
    f.seek(0)


def _read_idx_gz_file(path, sha256):
    """Read an IDX file whose digest is of the file as stored (Fashion-MNIST's published ``.gz`` digests).

    The file is read once: the bytes that are hashed are the bytes that are parsed.
    """
    raw = Path(path).read_bytes()
    _check_digest(hashlib.sha256(raw), sha256, path, "the file")
    return _parse_idx(_gunzip(raw, path), str(path))


class _DataSet(NamedTuple):
    """What a loader needs to know about one data set; the search, download and checks are shared."""

    title: str  # "MNIST", in messages
    func: str  # the public loader's name, in argument errors
    cache: str  # default_cache_dir(cache)
    env: str  # the environment variable naming a folder that holds the files
    files: tuple  # the keys of the digests, in the order the files are read
    sha256: dict  # official digests keyed by `files`
    stored: Callable  # name -> file names accepted in a folder, in order of preference
    download_name: Callable  # name -> the file name on a mirror (and in the cache)
    read: Callable  # (path, digest) -> parsed content; raises CorruptFileError
    what: str  # what to put in a folder, for the offline message
    hint: str  # how to point a script at a folder, for the offline message


def _check_args(ds, data_dir, download, mirrors, checksums):
    """Validate a loader's common arguments; return the digests to check the files against."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"{ds.func}: data_dir must be a path or None, got {type(data_dir).__name__}")
    if not isinstance(download, (bool, np.bool_)):
        raise TypeError(f"{ds.func}: download must be a bool, got {type(download).__name__}")
    if isinstance(mirrors, str):
        raise TypeError(f"{ds.func}: mirrors must be a sequence of base URLs, not a single string")
    if checksums is None:
        return ds.sha256
    if not hasattr(checksums, "keys"):
        raise TypeError(f"{ds.func}: checksums must be a mapping or None, got {type(checksums).__name__}")
    missing = [n for n in ds.files if n not in checksums]
    if missing:
        raise ValueError(f"{ds.func}: checksums has no digest for {', '.join(missing)}")
    for n in ds.files:
        digest = checksums[n]
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise ValueError(f"{ds.func}: checksums[{n!r}] must be a 64-digit hex SHA-256, got {digest!r}")
    return {n: checksums[n] for n in ds.files}


def _find(ds, directory, name):
    """Return the path under which ``directory`` holds file ``name`` of the data set, or None."""
    for candidate in ds.stored(name):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _candidate_dirs(ds, data_dir):
    """List ``(label, directory or None)`` in search order."""
    env = os.environ.get(ds.env)
    return [
        ("data_dir argument", Path(data_dir).expanduser() if data_dir is not None else None),
        (f"${ds.env}", Path(env).expanduser() if env else None),
        ("cache directory", default_cache_dir(ds.cache)),
    ]


def _describe_search(ds, candidates):
    lines = []
    for label, directory in candidates:
        if directory is None:
            lines.append(f"  - {label}: not set")
        elif not directory.is_dir():
            lines.append(f"  - {label}: {directory} (does not exist)")
        else:
            missing = [ds.stored(n)[0] for n in ds.files if _find(ds, directory, n) is None]
            lines.append(f"  - {label}: {directory} (missing: {', '.join(missing)})")
    return "\n".join(lines)


def _format_bytes(n):
    for unit in ("B", "kB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


class _TextProgress:
    """Minimal stand-in for tqdm: one line on stderr, rewritten in place."""

    def __init__(self, total, desc):
        self.total, self.desc, self.n = total, desc, 0
        self._last = 0.0

    def update(self, n):
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.2 or (self.total and self.n >= self.total):
            self._last = now
            if self.total:
                sys.stderr.write(f"\r{self.desc}: {100 * self.n / self.total:5.1f}% "
                                 f"{_format_bytes(self.n)}/{_format_bytes(self.total)}")
            else:
                sys.stderr.write(f"\r{self.desc}: {_format_bytes(self.n)}")
            sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _download_to(url, target, progress):
    """Stream ``url`` into the open binary file ``target``."""
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
        length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
        total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, f"Downloading {url.rsplit('/', 1)[-1]}", progress)
        try:
            received = 0
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                target.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


def _download(ds, name, cache_dir, mirrors, sha256, progress):
    """Download file ``name`` of the data set into ``cache_dir``, verified; return its path or raise DownloadError."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    filename = ds.download_name(name)
    final = cache_dir / filename
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=cache_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                _download_to(url, f, progress)
                f.flush()
                os.fsync(f.fileno())
            ds.read(tmp, sha256)  # verify before anything else can see it
            os.replace(tmp, final)
            return final
        except (OSError, ValueError, http.client.HTTPException) as exc:  # ValueError covers CorruptFileError
            failures.append(f"  - {url}: {type(exc).__name__}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)  # a failed or unverified download is never kept
    raise DownloadError(
        f"could not download {filename} from any mirror:\n" + "\n".join(failures) + "\n"
        f"Download it yourself (from any of the URLs above) into {cache_dir}, "
        f"or into a directory you pass as data_dir / set as ${ds.env}."
    )


def _load(ds, data_dir, download, mirrors, checksums, progress):
    """Find (or download) and read every file of the data set; return ``{name: (path, content)}``."""
    digests = _check_args(ds, data_dir, download, mirrors, checksums)
    candidates = _candidate_dirs(ds, data_dir)
    paths = None
    for _, directory in candidates:
        if directory is not None and directory.is_dir():
            found = [_find(ds, directory, n) for n in ds.files]
            if all(found):
                paths = found
                break

    if paths is None:
        cache_dir = default_cache_dir(ds.cache)
        if not download:
            raise FileNotFoundError(
                f"{ds.title} files not found. Searched, in order:\n" + _describe_search(ds, candidates) + "\n"
                f"Put {ds.what} in one directory and pass it as data_dir{ds.hint} or set "
                f"{ds.env} to it, or copy them into {cache_dir}; "
                "or call with download=True to fetch them."
            )
        paths = [(_find(ds, cache_dir, n) if cache_dir.is_dir() else None)
                 or _download(ds, n, cache_dir, mirrors, digests[n], progress) for n in ds.files]

    contents = {}
    for name, path in zip(ds.files, paths):
        try:
            contents[name] = (path, ds.read(path, digests[name]))
        except CorruptFileError as exc:
            raise CorruptFileError(
                f"{exc}. Delete {path} (download=True then fetches a fresh copy into the cache) "
                "or replace it with a good copy of the official file."
            ) from None
    return contents


def _idx_splits(contents, label_kind):
    """Check the four parsed IDX files of an MNIST-layout data set; return ``((x_train, y_train), (x_test, y_test))``.

    ``contents`` maps each name of :data:`MNIST_FILES` to ``(path, array)``.
    """
    for name, (path, array) in contents.items():
        want_ndim = 3 if "images" in name else 1
        if array.dtype != np.uint8 or array.ndim != want_ndim:
            raise CorruptFileError(
                f"{path}: expected uint8 data with {want_ndim} dimension(s), got {array.dtype} of shape {array.shape}"
            )
    result = []
    for split in ("train", "t10k"):
        image_path, images = contents[f"{split}-images-idx3-ubyte"]
        label_path, labels = contents[f"{split}-labels-idx1-ubyte"]
        if images.shape[0] != labels.shape[0]:
            raise CorruptFileError(
                f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels; "
                "the files do not belong together"
            )
        if labels.size and labels.max() > 9:
            raise CorruptFileError(f"{label_path}: label {int(labels.max())} is not a {label_kind} 0-9")
        result.append((images, labels))
    return tuple(result)


_MNIST = _DataSet(
    title="MNIST", func="load_mnist", cache="mnist", env="FASTCONV_DATA_DIR", files=MNIST_FILES,
    sha256=MNIST_SHA256, stored=lambda n: (n, n + ".gz"), download_name=lambda n: n + ".gz",
    read=lambda path, digest: read_idx(path, sha256=digest),
    what="the four files " + ", ".join(n + "[.gz]" for n in MNIST_FILES) + " (gzipped or not)",
    hint=" (train_mnist.py: --data-dir)",
)

_FASHION_MNIST = _DataSet(
    title="Fashion-MNIST", func="load_fashion_mnist", cache="fashion-mnist", env="FASTCONV_FASHION_MNIST_DIR",
    files=MNIST_FILES, sha256=FASHION_MNIST_SHA256, stored=lambda n: (n + ".gz",),
    download_name=lambda n: n + ".gz", read=_read_idx_gz_file,
    what="the four official gzipped files " + ", ".join(n + ".gz" for n in MNIST_FILES)
         + " (uncompressed copies are not used: the published digests are of the .gz files)",
    hint=" (train_mnist.py: --data-dir)",
)


def _member_kind(member):
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    return "device, FIFO or other special file"


def _parse_cifar10_batch(data, where):
    """Split a batch file's bytes into uint8 images ``(n, 3, 32, 32)`` and labels ``(n,)`` (read-only views)."""
    if not data or len(data) % _CIFAR10_RECORD:
        raise CorruptFileError(
            f"{where}: {len(data)} bytes is not a whole number of {_CIFAR10_RECORD}-byte records "
            "(1 label byte + 3072 pixel bytes); the batch is truncated or damaged"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR10_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise CorruptFileError(f"{where}: label {int(labels.max())} is not a class 0-9")
    return records[:, 1:].reshape(-1, *_CIFAR10_SHAPE), labels


def _cifar10_batches(tar, path):
    """Read the six batch files from an open tar stream, refusing anything but the official layout."""
    wanted = (*_CIFAR10_TRAIN, _CIFAR10_TEST)
    batches = {}
    for member in tar:
        where = f"{path}: member {member.name!r}"
        parts = PurePosixPath(member.name).parts
        if (member.name.startswith("/") or "\\" in member.name or ".." in parts
                or not parts or parts[0] != _CIFAR10_FOLDER):
            raise CorruptFileError(f"{where} is outside {_CIFAR10_FOLDER}/; "
                                   "this is not the official CIFAR-10 binary archive")
        if not (member.isfile() or member.isdir()):
            raise CorruptFileError(f"{where} is a {_member_kind(member)}, not a regular file; "
                                   "this is not the official CIFAR-10 binary archive")
        if member.isdir() or len(parts) != 2 or parts[1] not in wanted:
            continue  # the folder itself, readme.html, batches.meta.txt
        if parts[1] in batches:
            raise CorruptFileError(f"{where} appears twice in the archive")
        try:
            data = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise CorruptFileError(f"{where} is truncated ({type(exc).__name__}: {exc})") from exc
        if len(data) != member.size:
            raise CorruptFileError(f"{where} is truncated: {len(data)} of its {member.size} bytes")
        batches[parts[1]] = _parse_cifar10_batch(data, where)
    missing = [f"{_CIFAR10_FOLDER}/{n}" for n in wanted if n not in batches]
    if missing:
        raise CorruptFileError(f"{path}: the archive has no {', '.join(missing)}")
    return batches


def _read_cifar10_archive(path, sha256):
    """Check the archive's SHA-256, then read its batches from the tar stream (nothing is extracted)."""
    with open(path, "rb") as f:
        _check_file_digest(f, sha256, path)  # before any byte is interpreted
        try:
            with tarfile.open(fileobj=f, mode="r|gz") as tar:
                return _cifar10_batches(tar, path)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise CorruptFileError(f"{path}: not a valid gzipped tar archive ({type(exc).__name__}: {exc}); "
                                   "the file is probably truncated or damaged") from exc


_CIFAR10 = _DataSet(
    title="CIFAR-10", func="load_cifar10", cache="cifar-10", env="FASTCONV_CIFAR10_DIR", files=(CIFAR10_FILE,),
    sha256=CIFAR10_SHA256, stored=lambda n: (n,), download_name=lambda n: n, read=_read_cifar10_archive,
    what=f"the official archive {CIFAR10_FILE} (the binary version, as downloaded; it is read without "
         "extracting it)",
    hint="",
)


def load_mnist(data_dir=None, download=True, *, checksums=None, mirrors=MNIST_MIRRORS, progress=True):
    """Load MNIST as uint8 arrays, downloading the files into the cache if needed.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory to look in first. Then ``$FASTCONV_DATA_DIR``, then
        :func:`default_cache_dir`. The first directory holding all four files
        (:data:`MNIST_FILES`, each gzipped or not) is used.
    download : bool, default True
        If no directory holds all four files, download the missing ones from
        ``mirrors`` into :func:`default_cache_dir`. With ``False``, raise
        :class:`FileNotFoundError` instead.
    checksums : mapping of str to str, optional
        **For tests only.** Replaces the embedded SHA-256 digests of the official
        files (:data:`MNIST_SHA256`) by the given ones, keyed by the names in
        :data:`MNIST_FILES`, so that tests can load small synthetic files. Every file
        is still verified: this changes the expected digest, it never skips the check.
    mirrors : sequence of str, default :data:`MNIST_MIRRORS`
        Base URLs tried in order for each file to download.
    progress : bool, default True
        Show a progress bar while downloading (tqdm if installed, else a text line on
        stderr).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        ``x_train``: uint8 ``(60000, 28, 28)``; ``y_train``: uint8 ``(60000,)``;
        ``x_test``: uint8 ``(10000, 28, 28)``; ``y_test``: uint8 ``(10000,)``.
        Pixels are 0 (background) to 255 (ink); labels are the digits 0-9. The arrays
        are fresh and writable.

    Raises
    ------
    FileNotFoundError
        If the files are found nowhere and ``download=False``; the message lists the
        directories searched and where to put the files.
    DownloadError
        If a file could not be downloaded and verified from any mirror.
    CorruptFileError
        If a file is present but damaged (bad gzip stream, magic number, dimensions,
        length or SHA-256), or the image and label files disagree on the count. The
        message names the file; delete or replace it.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist()
    >>> x_train.shape, x_train.dtype, y_test[:5]
    ((60000, 28, 28), dtype('uint8'), array([7, 2, 1, 0, 4], dtype=uint8))
    """
    return _idx_splits(_load(_MNIST, data_dir, download, mirrors, checksums, progress), "digit")


def load_fashion_mnist(data_dir=None, download=True, *, checksums=None, mirrors=FASHION_MNIST_MIRRORS,
                       progress=True):
    """Load Fashion-MNIST as uint8 arrays, downloading the files into the cache if needed.

    Zalando's Fashion-MNIST: 28x28 grey images of clothes in 10 classes
    (:data:`FASHION_MNIST_CLASSES`: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
    6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot), in the same four IDX files (:data:`MNIST_FILES`) and
    layout as MNIST, so that it is a drop-in replacement for :func:`load_mnist`.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory to look in first. Then ``$FASTCONV_FASHION_MNIST_DIR``, then
        ``default_cache_dir("fashion-mnist")``. The first directory holding all four official
        gzipped files (``train-images-idx3-ubyte.gz`` etc.) is used. Uncompressed copies are not
        used: the published digests (:data:`FASHION_MNIST_SHA256`) are of the ``.gz`` files.
    download : bool, default True
        If no directory holds the four files, download the missing ones from ``mirrors`` into
        ``default_cache_dir("fashion-mnist")``. With ``False``, raise :class:`FileNotFoundError`.
    checksums : mapping of str to str, optional
        **For tests only.** Replaces the digests of the official ``.gz`` files
        (:data:`FASHION_MNIST_SHA256`), keyed by the names in :data:`MNIST_FILES`. Each is compared
        with the SHA-256 of the ``.gz`` file as stored; it never skips the check.
    mirrors : sequence of str, default :data:`FASHION_MNIST_MIRRORS`
        Base URLs tried in order for each file to download.
    progress : bool, default True
        Show a progress bar while downloading (tqdm if installed, else a text line on stderr).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        As :func:`load_mnist`: ``x_train`` uint8 ``(60000, 28, 28)``, ``y_train`` uint8 ``(60000,)``,
        ``x_test`` uint8 ``(10000, 28, 28)``, ``y_test`` uint8 ``(10000,)``; pixels 0 (background)
        to 255, labels the classes 0-9. The arrays are fresh and writable.

    Raises
    ------
    FileNotFoundError
        If the files are found nowhere and ``download=False``; the message lists the directories
        searched and where to put the files.
    DownloadError
        If a file could not be downloaded and verified from any mirror.
    CorruptFileError
        If a file is present but damaged or not the official one (SHA-256, gzip stream, IDX header,
        length), or the image and label files disagree on the count. The message names the file.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    >>> x_train.shape, FASHION_MNIST_CLASSES[y_train[0]]
    ((60000, 28, 28), 'Ankle boot')
    """
    return _idx_splits(_load(_FASHION_MNIST, data_dir, download, mirrors, checksums, progress), "class")


def load_cifar10(data_dir=None, download=True, *, checksums=None, mirrors=CIFAR10_MIRRORS, progress=True):
    """Load CIFAR-10 as uint8 arrays from the official binary archive, downloading it if needed.

    CIFAR-10: 60,000 32x32 colour images in 10 classes (:data:`CIFAR10_CLASSES`: 0 airplane,
    1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck). The archive
    :data:`CIFAR10_FILE` (``cifar-10-binary.tar.gz``, the "binary version") holds, in its folder
    ``cifar-10-batches-bin/``, five training batches ``data_batch_1.bin`` ... ``data_batch_5.bin``
    and ``test_batch.bin``, each a sequence of records of one label byte followed by 3072 pixel
    bytes (the 1024 red, then green, then blue values of the image, row by row).

    The archive's SHA-256 is checked before anything in it is read. Its members are then read
    straight from the compressed stream, with no extraction to disk; an archive with a member
    outside ``cifar-10-batches-bin/``, a link or special file, a truncated batch or a batch that is
    not a whole number of 3073-byte records is refused. Nothing is unpickled: the pickled "python
    version" of the data set is not supported.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory to look in first for :data:`CIFAR10_FILE`. Then ``$FASTCONV_CIFAR10_DIR``, then
        ``default_cache_dir("cifar-10")``. The first directory holding the archive is used.
    download : bool, default True
        If no directory holds the archive, download it from ``mirrors`` into
        ``default_cache_dir("cifar-10")`` (163 MiB). With ``False``, raise :class:`FileNotFoundError`.
    checksums : mapping of str to str, optional
        **For tests only.** Replaces the digest of the official archive (:data:`CIFAR10_SHA256`),
        keyed by :data:`CIFAR10_FILE`. The archive is still verified: this changes the expected
        digest, it never skips the check.
    mirrors : sequence of str, default :data:`CIFAR10_MIRRORS`
        Base URLs tried in order.
    progress : bool, default True
        Show a progress bar while downloading (tqdm if installed, else a text line on stderr).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        ``x_train``: uint8 ``(50000, 3, 32, 32)`` (batches 1 to 5 in order); ``y_train``: uint8
        ``(50000,)``; ``x_test``: uint8 ``(10000, 3, 32, 32)``; ``y_test``: uint8 ``(10000,)``.
        Images are channels-first (NCHW, RGB), pixels 0 to 255; labels are uint8 like
        :func:`load_mnist`'s (``y.astype(np.int64)`` for an index dtype). Fresh, writable arrays.

    Raises
    ------
    FileNotFoundError
        If the archive is found nowhere and ``download=False``; the message lists the directories
        searched and where to put it.
    DownloadError
        If the archive could not be downloaded and verified from any mirror.
    CorruptFileError
        If the archive is present but is not the official one or is damaged; the message names the
        archive and, for a bad member, the member.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_cifar10()
    >>> x_train.shape, x_train.dtype, [CIFAR10_CLASSES[i] for i in y_test[:3]]
    ((50000, 3, 32, 32), dtype('uint8'), ['cat', 'ship', 'ship'])
    """
    _, batches = _load(_CIFAR10, data_dir, download, mirrors, checksums, progress)[CIFAR10_FILE]
    train = [batches[n] for n in _CIFAR10_TRAIN]
    x_test, y_test = batches[_CIFAR10_TEST]
    return ((np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            (x_test.copy(), y_test.copy()))


#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0, 1] (0.28604, 0.35302
#: as commonly published; recomputed from the real files by tests/test_datasets.py when they are present).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: Per-channel (R, G, B) mean and standard deviation of the CIFAR-10 training pixels scaled to [0, 1]
#: (0.49139968, 0.48215841, 0.44653091 and 0.24703223, 0.24348513, 0.26158784 as commonly published;
#: recomputed from the real archive by tests/test_datasets.py when it is present). The standard
#: deviation is over all pixels of a channel, not the (0.2023, 0.1994, 0.2010) some code copies.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _standardise(func, images, layout, mean, std, dtype):
    """``(images / 255 - mean[c]) / std[c]`` of uint8 images, channels-first; a new C-contiguous array.

    ``layout`` is ``"(N, H, W)"`` (a channel axis is added) or ``"(N, C, H, W)"`` with C = ``len(mean)``.
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{func}: images must be a numpy.ndarray, got {type(images).__name__}")
    channels = len(mean)
    ndim = 3 if layout == "(N, H, W)" else 4
    if images.dtype != np.uint8 or images.ndim != ndim or (ndim == 4 and images.shape[1] != channels):
        raise ValueError(f"{func}: images must be uint8 of shape {layout.replace('C', str(channels))}, "
                         f"got {images.dtype} of shape {images.shape}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{func}: dtype must be float32 or float64, got {dtype}")
    out = images.astype(dtype)
    if ndim == 3:
        out = out[:, None]
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    out *= (1 / (255 * std)).astype(dtype)[:, None, None]
    out -= (mean / std).astype(dtype)[:, None, None]
    return out


def preprocess_mnist(images, dtype=np.float32):
    """Scale uint8 images to [0, 1], standardise with the MNIST mean/std and add a channel axis.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (N, H, W)
        Raw pixels as returned by :func:`load_mnist`.
    dtype : {numpy.float32, numpy.float64}
        Output dtype.

    Returns
    -------
    numpy.ndarray, shape (N, 1, H, W)
        ``(images / 255 - MNIST_MEAN) / MNIST_STD``, C-contiguous, a new array.

    Examples
    --------
    >>> x = preprocess_mnist(np.array([[[0, 255]]], dtype=np.uint8))
    >>> x.shape, x.dtype, x.astype(float).round(4).tolist()
    ((1, 1, 1, 2), dtype('float32'), [[[[-0.4242, 2.8215]]]])
    """
    return _standardise("preprocess_mnist", images, "(N, H, W)", (MNIST_MEAN,), (MNIST_STD,), dtype)


def preprocess_fashion_mnist(images, dtype=np.float32):
    """Scale uint8 images to [0, 1], standardise with the Fashion-MNIST mean/std and add a channel axis.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (N, H, W)
        Raw pixels as returned by :func:`load_fashion_mnist`.
    dtype : {numpy.float32, numpy.float64}
        Output dtype.

    Returns
    -------
    numpy.ndarray, shape (N, 1, H, W)
        ``(images / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD``, C-contiguous, a new array.

    Examples
    --------
    >>> x = preprocess_fashion_mnist(np.array([[[0, 255]]], dtype=np.uint8))
    >>> x.shape, x.astype(float).round(4).tolist()
    ((1, 1, 1, 2), [[[[-0.8102, 2.0227]]]])
    """
    return _standardise("preprocess_fashion_mnist", images, "(N, H, W)", (FASHION_MNIST_MEAN,),
                        (FASHION_MNIST_STD,), dtype)


def preprocess_cifar10(images, dtype=np.float32):
    """Scale uint8 colour images to [0, 1] and standardise each channel with the CIFAR-10 mean/std.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (N, 3, H, W)
        Raw pixels as returned by :func:`load_cifar10` (any H and W, e.g. after a crop).
    dtype : {numpy.float32, numpy.float64}
        Output dtype.

    Returns
    -------
    numpy.ndarray, shape (N, 3, H, W)
        ``(images / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]`` for each channel c, C-contiguous,
        a new array.

    Examples
    --------
    >>> white = np.full((1, 3, 1, 1), 255, dtype=np.uint8)
    >>> preprocess_cifar10(white).astype(float).ravel().round(4).tolist()
    [2.0591, 2.1265, 2.1158]
    """
    return _standardise("preprocess_cifar10", images, "(N, C, H, W)", CIFAR10_MEAN, CIFAR10_STD, dtype)
