"""MNIST, read from the four standard IDX files, verified, downloaded if needed.

:func:`load_mnist` is the one entry point. It looks for the files in, in order,

1. the ``data_dir`` argument,
2. the directory named by the ``FASTCONV_DATA_DIR`` environment variable,
3. a per-user cache directory (:func:`default_cache_dir`, e.g. ``~/.cache/fastconv/mnist``),

and uses the first directory holding all four files. Each file may be gzipped
(``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``). If no directory
has them and ``download=True``, the missing files are downloaded into the cache
directory from the mirrors torchvision uses, trying the next mirror when one fails.

Every file is verified before use: the IDX header (magic number, element type, number
of dimensions, dimensions) must describe exactly the bytes that follow it, and the
SHA-256 of the uncompressed content must equal the digest of the official file
embedded in this module. A download is written to a temporary file, verified, and only
then moved into place with an atomic rename; a download that fails verification is
deleted and never used.

:func:`preprocess_mnist` turns the raw uint8 images into the standardised float input of
a network (:data:`MNIST_MEAN`, :data:`MNIST_STD`).
"""

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "MNIST_STD",
    "CorruptFileError",
    "DownloadError",
    "default_cache_dir",
    "load_mnist",
    "preprocess_mnist",
    "read_idx",
]

#: File names (without ``.gz``) in the order ``load_mnist`` returns their contents.
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

_DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a mirror counts as failed
_CHUNK = 1 << 16

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


def default_cache_dir():
    """Return the per-user directory where downloaded MNIST files are kept.

    ``$XDG_CACHE_HOME/fastconv/mnist`` if ``XDG_CACHE_HOME`` is set, else
    ``%LOCALAPPDATA%\\fastconv\\mnist`` on Windows, else ``~/.cache/fastconv/mnist``.

    Returns
    -------
    pathlib.Path
        The directory (it may not exist yet).

    Examples
    --------
    >>> default_cache_dir().parts[-2:]
    ('fastconv', 'mnist')
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg)
    elif os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path.home() / ".cache"
    return base / "fastconv" / "mnist"


def _read_bytes(path):
    """Return the uncompressed content of ``path``, gunzipping if it starts with gzip's magic."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            return f.read()
        try:
            with gzip.GzipFile(fileobj=f) as gz:
                return gz.read()
        except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad CRC, bad data
            raise CorruptFileError(
                f"{path}: not a valid gzip file ({type(exc).__name__}: {exc}); "
                "the file is probably truncated or damaged"
            ) from exc


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
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise CorruptFileError(
                f"{path}: SHA-256 of the uncompressed content is {digest}, expected {sha256}; "
                "the file is damaged or is not the official one"
            )
    return _parse_idx(data, str(path))


def _find_file(directory, name):
    """Return the path of ``name`` or ``name.gz`` in ``directory`` (uncompressed first), or None."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _candidate_dirs(data_dir):
    """List ``(label, directory or None)`` in search order."""
    env = os.environ.get("FASTCONV_DATA_DIR")
    return [
        ("data_dir argument", Path(data_dir).expanduser() if data_dir is not None else None),
        ("$FASTCONV_DATA_DIR", Path(env).expanduser() if env else None),
        ("cache directory", default_cache_dir()),
    ]


def _describe_search(candidates):
    lines = []
    for label, directory in candidates:
        if directory is None:
            lines.append(f"  - {label}: not set")
        elif not directory.is_dir():
            lines.append(f"  - {label}: {directory} (does not exist)")
        else:
            missing = [n for n in MNIST_FILES if _find_file(directory, n) is None]
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


def _download(name, cache_dir, mirrors, sha256, progress):
    """Download ``name.gz`` into ``cache_dir``, verified; return its path or raise DownloadError."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / (name + ".gz")
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name + ".gz"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                _download_to(url, f, progress)
                f.flush()
                os.fsync(f.fileno())
            read_idx(tmp, sha256=sha256)  # verify before anything else can see it
            os.replace(tmp, final)
            return final
        except (OSError, ValueError, http.client.HTTPException) as exc:  # ValueError covers CorruptFileError
            failures.append(f"  - {url}: {type(exc).__name__}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)  # a failed or unverified download is never kept
    raise DownloadError(
        f"could not download {name}.gz from any mirror:\n" + "\n".join(failures) + "\n"
        f"Download it yourself (from any of the URLs above) into {cache_dir}, "
        "or into a directory you pass as data_dir / set as $FASTCONV_DATA_DIR."
    )


def _check_checksums(checksums):
    if checksums is None:
        return MNIST_SHA256
    if not hasattr(checksums, "keys"):
        raise TypeError(f"load_mnist: checksums must be a mapping or None, got {type(checksums).__name__}")
    missing = [n for n in MNIST_FILES if n not in checksums]
    if missing:
        raise ValueError(f"load_mnist: checksums has no digest for {', '.join(missing)}")
    for n in MNIST_FILES:
        digest = checksums[n]
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise ValueError(f"load_mnist: checksums[{n!r}] must be a 64-digit hex SHA-256, got {digest!r}")
    return {n: checksums[n] for n in MNIST_FILES}


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
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"load_mnist: data_dir must be a path or None, got {type(data_dir).__name__}")
    if not isinstance(download, (bool, np.bool_)):
        raise TypeError(f"load_mnist: download must be a bool, got {type(download).__name__}")
    if isinstance(mirrors, str):
        raise TypeError("load_mnist: mirrors must be a sequence of base URLs, not a single string")
    digests = _check_checksums(checksums)

    candidates = _candidate_dirs(data_dir)
    paths = None
    for _, directory in candidates:
        if directory is not None and directory.is_dir():
            found = [_find_file(directory, n) for n in MNIST_FILES]
            if all(found):
                paths = found
                break

    if paths is None:
        if not download:
            raise FileNotFoundError(
                "MNIST files not found. Searched, in order:\n" + _describe_search(candidates) + "\n"
                f"Put the four files {', '.join(n + '[.gz]' for n in MNIST_FILES)} (gzipped or not) "
                "in one directory and pass it as data_dir (train_mnist.py: --data-dir) or set "
                f"FASTCONV_DATA_DIR to it, or copy them into {default_cache_dir()}; "
                "or call with download=True to fetch them."
            )
        cache_dir = default_cache_dir()
        paths = []
        for n in MNIST_FILES:
            existing = _find_file(cache_dir, n) if cache_dir.is_dir() else None
            paths.append(existing or _download(n, cache_dir, mirrors, digests[n], progress))

    arrays = {}
    for name, path in zip(MNIST_FILES, paths):
        try:
            array = read_idx(path, sha256=digests[name])
        except CorruptFileError as exc:
            raise CorruptFileError(
                f"{exc}. Delete {path} (download=True then fetches a fresh copy into the cache) "
                "or replace it with a good copy of the official file."
            ) from None
        want_ndim = 3 if "images" in name else 1
        if array.dtype != np.uint8 or array.ndim != want_ndim:
            raise CorruptFileError(
                f"{path}: expected uint8 data with {want_ndim} dimension(s), got {array.dtype} of shape {array.shape}"
            )
        arrays[name] = array

    path_of = dict(zip(MNIST_FILES, paths))
    result = []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.shape[0] != labels.shape[0]:
            raise CorruptFileError(
                f"{path_of[split + '-images-idx3-ubyte']} has {images.shape[0]} images but "
                f"{path_of[split + '-labels-idx1-ubyte']} has {labels.shape[0]} labels; "
                "the files do not belong together"
            )
        if labels.size and labels.max() > 9:
            raise CorruptFileError(
                f"{path_of[split + '-labels-idx1-ubyte']}: label {int(labels.max())} is not a digit 0-9")
        result.append((images, labels))
    return tuple(result)


#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


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
    if not isinstance(images, np.ndarray):
        raise TypeError(f"preprocess_mnist: images must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"preprocess_mnist: images must be uint8 of shape (N, H, W), got {images.dtype} "
                         f"of shape {images.shape}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"preprocess_mnist: dtype must be float32 or float64, got {dtype}")
    out = images.astype(dtype)[:, None]
    out *= dtype.type(1 / (255 * MNIST_STD))
    out -= dtype.type(MNIST_MEAN / MNIST_STD)
    return out
