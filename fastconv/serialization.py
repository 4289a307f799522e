"""Save and load checkpoints as ``.npz`` files, atomically and without pickle.

:func:`save` stores a nested structure of dicts, lists, tuples, arrays and plain scalars,
for example ``{"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}``, and
:func:`load` gives the same structure back.

File format
-----------
A standard NumPy ``.npz`` (zip) archive, readable with
``numpy.load(path, allow_pickle=False)``:

- one ``.npy`` member per array, named after its place in the structure with ``/`` between
  levels (``model/0.weight``, ``optim/state/0/momentum_buffer``);
- a member ``__fastconv__`` holding UTF-8 JSON: ``{"format": "fastconv-checkpoint",
  "version": 1, "tree": ...}``, where ``tree`` describes the structure. Every node is
  tagged: ``{"t": "dict", "items": [[key, node], ...]}`` (keys are str or int),
  ``"list"``/``"tuple"`` with ``"items"``, ``"array"``/``"scalar"`` (a NumPy scalar) with
  the member name ``"k"``, ``"int"``/``"str"``/``"bool"`` with ``"v"``, ``"float"`` with
  ``"v"`` in :meth:`float.hex` form (exact, NaN and infinities included), and ``"none"``.

Nothing is ever pickled: object arrays and other Python objects are refused at save time,
and loading never runs code from the file.

Atomicity
---------
:func:`save` writes to a temporary file in the target's directory, flushes and
``fsync``-s it, renames it over the target with :func:`os.replace` (atomic on POSIX and
Windows) and ``fsync``-s the directory. At every moment the target name holds either the
complete old file or the complete new one, so a crash or an exception while saving never
destroys the previous checkpoint. If the process is killed, a hidden
``.<name>.<random>.tmp`` file may be left next to the target.

safetensors
-----------
:func:`save_safetensors` and :func:`load_safetensors` write and read the
`safetensors <https://huggingface.co/docs/safetensors>`_ files PyTorch users share weights
in, through the ``safetensors`` package's NumPy API (an optional extra:
``pip install 'fastconv[safetensors]'``; it is imported only when one of them is called).
A ``state_dict`` saved by ``safetensors.torch.save_file(torch_model.state_dict(), path)``
loads into the matching fastconv model with ``model.load_state_dict(load_safetensors(path))``,
and a file from :func:`save_safetensors` into the torch model with
``torch_model.load_state_dict(safetensors.torch.load_file(path))``. Writing is atomic as
above; a corrupt or truncated file raises :class:`CheckpointError` naming it.
"""

import io
import json
import math
import os
import secrets
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

__all__ = ["save", "load", "CheckpointError", "FORMAT", "FORMAT_VERSION",
           "save_safetensors", "load_safetensors", "load_safetensors_metadata"]

#: Value of the ``"format"`` field in the metadata member.
FORMAT = "fastconv-checkpoint"
#: Newest format version this module writes and reads.
FORMAT_VERSION = 1
_META = "__fastconv__"


class CheckpointError(ValueError):
    """A file is not a readable fastconv checkpoint (corrupt, truncated, foreign or too new), or not a
    readable safetensors file."""


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


class _Encoder:
    def __init__(self):
        self.arrays = {}
        self._active = set()

    def _member(self, path):
        base = "/".join(map(str, path)) or "root"
        name, n = base, 1
        while name in self.arrays or name == _META:
            name = f"{base}~{n}"
            n += 1
        return name

    def _array(self, a, path, tag):
        if a.dtype.hasobject:
            raise TypeError(f"save: cannot store an array of dtype {a.dtype} at {_where(path)} (it would need pickle)")
        name = self._member(path)
        self.arrays[name] = a
        return {"t": tag, "k": name}

    def encode(self, obj, path=()):
        if obj is None:
            return {"t": "none"}
        if isinstance(obj, np.ndarray):
            return self._array(obj, path, "array")
        if isinstance(obj, np.generic):
            return self._array(np.asarray(obj), path, "scalar")
        if isinstance(obj, bool):
            return {"t": "bool", "v": obj}
        if isinstance(obj, int):
            return {"t": "int", "v": int(obj)}
        if isinstance(obj, float):
            return {"t": "float", "v": float(obj).hex()}
        if isinstance(obj, str):
            return {"t": "str", "v": obj}
        if isinstance(obj, (Mapping, list, tuple)):
            if id(obj) in self._active:
                raise ValueError(f"save: circular reference at {_where(path)}")
            self._active.add(id(obj))
            try:
                if isinstance(obj, Mapping):
                    items = []
                    for key, value in obj.items():
                        if isinstance(key, bool) or not isinstance(key, (str, int)):
                            raise TypeError(f"save: dict keys must be str or int; got {key!r} at {_where(path)}")
                        items.append([key, self.encode(value, path + (key,))])
                    return {"t": "dict", "items": items}
                tag = "list" if isinstance(obj, list) else "tuple"
                return {"t": tag, "items": [self.encode(v, path + (i,)) for i, v in enumerate(obj)]}
            finally:
                self._active.discard(id(obj))
        raise TypeError(
            f"save: cannot store a {type(obj).__name__} at {_where(path)}; supported: dict, list, tuple, "
            f"numpy arrays and scalars, int, float, str, bool, None"
        )


def _where(path):
    return "the top level" if not path else "[" + "][".join(repr(p) for p in path) + "]"


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _fsync_directory(directory):
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support it; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _write_npz(f, arrays, meta, compress):
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
        zf.writestr(_META, meta)
        for name, a in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def save(obj, path, *, compress=False):
    """Write ``obj`` to ``path`` as an ``.npz`` checkpoint, atomically.

    Parameters
    ----------
    obj : dict, list, tuple, ndarray, numpy scalar, int, float, str, bool or None
        Nested arbitrarily; dict keys must be str or int. ``model.state_dict()`` and
        ``optimizer.state_dict()`` fit as they are.
    path : str or os.PathLike
        Used exactly as given (no extension is added). Its directory must exist.
    compress : bool, default False
        Deflate the members (smaller, slower).

    Raises
    ------
    TypeError
        An unsupported object (the message says where in ``obj``), an object array, or a
        key that is neither str nor int.
    FileNotFoundError
        The directory does not exist.

    Notes
    -----
    The previous file at ``path``, if any, stays intact until the new one is complete;
    see the module docstring.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastconv import serialization
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "run.npz")
    >>> serialization.save({"epoch": 3, "weights": np.arange(4.0), "history": [0.5, 0.25]}, path)
    >>> serialization.load(path)
    {'epoch': 3, 'weights': array([0., 1., 2., 3.]), 'history': [0.5, 0.25]}
    >>> folder.cleanup()
    """
    path = os.fsdecode(os.fspath(path))
    encoder = _Encoder()
    tree = encoder.encode(obj)
    meta = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "tree": tree},
                      allow_nan=False, ensure_ascii=False)
    _atomic_write(path, "save", lambda f: _write_npz(f, encoder.arrays, meta.encode("utf-8"), compress))


def _atomic_write(path, owner, write):
    """Call ``write(f)`` on a new temporary file beside ``path``, ``fsync`` it and rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{owner}: directory {directory!r} does not exist (saving {path!r})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{owner}: {path!r} is a directory")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


class _Decoder:
    def __init__(self, zf, path):
        self.zf = zf
        self.path = path

    def fail(self, reason):
        return CheckpointError(f"{self.path}: not a valid fastconv checkpoint: {reason}")

    def array(self, name):
        member = f"{name}.npy"
        try:
            data = self.zf.read(member)  # verifies the CRC
        except KeyError:
            raise self.fail(f"the array member {member!r} is missing") from None
        # Parse the .npy header ourselves and check the size it claims against the bytes
        # present, so a forged header cannot make NumPy allocate terabytes.
        fmt = np.lib.format
        buf = io.BytesIO(data)
        try:
            version = fmt.read_magic(buf)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran_order, dtype = read_header(buf)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise self.fail(f"the array member {member!r} has a bad header ({exc})") from None
        if dtype.hasobject:
            raise self.fail(f"the array member {member!r} holds Python objects (pickled data is never loaded)")
        count = math.prod(shape)
        offset = buf.tell()
        if count * dtype.itemsize != len(data) - offset:
            raise self.fail(f"the array member {member!r} claims shape {shape} of {dtype} "
                            f"({count * dtype.itemsize} bytes) but holds {len(data) - offset} bytes")
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy()
        return flat.reshape(shape, order="F" if fortran_order else "C")

    def decode(self, node):
        if not isinstance(node, dict) or "t" not in node:
            raise self.fail(f"malformed structure entry {node!r:.80}")
        tag = node["t"]
        if tag == "none":
            return None
        if tag in ("bool", "int", "str"):
            value = node.get("v")
            expected = {"bool": bool, "int": int, "str": str}[tag]
            if type(value) is not expected:
                raise self.fail(f"malformed {tag} entry {node!r:.80}")
            return value
        if tag == "float":
            try:
                return float.fromhex(node["v"])
            except (KeyError, TypeError, ValueError):
                raise self.fail(f"malformed float entry {node!r:.80}") from None
        if tag in ("array", "scalar"):
            if not isinstance(node.get("k"), str):
                raise self.fail(f"malformed array entry {node!r:.80}")
            a = self.array(node["k"])
            if tag == "scalar":
                if a.ndim != 0:
                    raise self.fail(f"scalar member {node['k']!r} has shape {a.shape}")
                return a[()]
            return a
        if tag in ("dict", "list", "tuple"):
            items = node.get("items")
            if not isinstance(items, list):
                raise self.fail(f"malformed {tag} entry")
            if tag == "dict":
                out = {}
                for item in items:
                    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                        raise self.fail("malformed dict item")
                    out[item[0]] = self.decode(item[1])
                return out
            values = [self.decode(v) for v in items]
            return values if tag == "list" else tuple(values)
        raise self.fail(f"unknown entry type {tag!r}")


def load(path):
    """Read a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    object
        The saved structure: dicts (plain ``dict``, in the saved order), lists, tuples,
        ndarrays (writable), NumPy scalars, int, float, str, bool and None, with the saved
        types, shapes and dtypes.

    Raises
    ------
    FileNotFoundError, PermissionError, IsADirectoryError
        From opening the file.
    CheckpointError (a ValueError)
        The file is not a complete fastconv checkpoint: not a zip archive, truncated,
        corrupted (CRC mismatch), a plain ``.npz``/``.npy`` without fastconv metadata, or
        written by a newer format version. The message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastconv import serialization
    >>> folder = tempfile.TemporaryDirectory()
    >>> plain = os.path.join(folder.name, "plain.npz")
    >>> np.savez(plain, w=np.ones(2))                # not written by save()
    >>> serialization.load(plain)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fastconv.serialization.CheckpointError: .../plain.npz: not a valid fastconv checkpoint: it has no ...
    >>> folder.cleanup()
    """
    path_str = os.fsdecode(os.fspath(path))
    with open(path_str, "rb") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                decoder = _Decoder(zf, path_str)
                try:
                    raw = zf.read(_META)
                except KeyError:
                    raise decoder.fail(f"it has no {_META!r} metadata member (a plain .npz file?)") from None
                try:
                    meta = json.loads(raw.decode("utf-8"))
                except ValueError as exc:
                    raise decoder.fail(f"unreadable metadata ({exc})") from None
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise decoder.fail("the metadata does not identify a fastconv checkpoint")
                version = meta.get("version")
                if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                    raise decoder.fail(f"invalid format version {version!r}")
                if version > FORMAT_VERSION:
                    raise CheckpointError(
                        f"{path_str}: written with checkpoint format version {version}, but this fastconv "
                        f"reads versions up to {FORMAT_VERSION}; upgrade fastconv"
                    )
                if "tree" not in meta:
                    raise decoder.fail("the metadata has no 'tree'")
                return decoder.decode(meta["tree"])
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, RecursionError) as exc:
            # BadZipFile: not a zip, truncated, or a CRC mismatch; ValueError: a bad .npy header.
            raise CheckpointError(
                f"{path_str}: not a valid fastconv checkpoint (corrupt or truncated?): {exc}"
            ) from exc



# ---------------------------------------------------------------------------------------
# safetensors: weights shared with PyTorch (and any other safetensors reader)
# ---------------------------------------------------------------------------------------

#: The dtypes a safetensors file can hold that NumPy has (what ``safetensors.numpy`` reads back).
_SAFETENSORS_DTYPES = tuple(np.dtype(t) for t in (
    np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
    np.uint64, np.uint32, np.uint16, np.uint8, np.bool_, np.complex64))


def _safetensors(owner):
    """The ``safetensors`` package (with its NumPy API), or an ImportError naming the extra."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError(f"{owner} needs the safetensors package, which is not installed: "
                          f"pip install 'fastconv[safetensors]' (or pip install safetensors)") from exc
    return safetensors


def _safetensors_arrays(state_dict, owner):
    """``state_dict`` (a mapping, or anything with a ``state_dict()`` method) as ``{name: C-contiguous ndarray}``."""
    from ._tensors import as_array

    if not isinstance(state_dict, Mapping) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{owner}: state_dict must be a mapping of str -> array or a module with a "
                        f"state_dict() method; got {type(state_dict).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise TypeError(f"{owner}: every key must be a str other than '__metadata__'; got {name!r}")
        a = as_array(value, owner, f"state_dict[{name!r}]")
        if a.dtype.newbyteorder("=") not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{owner}: state_dict[{name!r}] has dtype {a.dtype} (shape {a.shape}), which a "
                            f"safetensors file cannot hold; it holds {', '.join(map(str, _SAFETENSORS_DTYPES))}")
        # safetensors.numpy writes an array's memory as it lies: a strided view must be made contiguous.
        arrays[name] = a if a.flags.c_contiguous else a.copy(order="C")
    return arrays


def save_safetensors(state_dict, path, metadata=None):
    """Write a ``state_dict`` to ``path`` as a safetensors file, atomically.

    `safetensors <https://huggingface.co/docs/safetensors>`_ is the weights format PyTorch
    users share (``safetensors.torch.save_file`` / ``load_file``): a JSON header of names,
    dtypes and shapes, then the raw little-endian data; nothing is pickled. Needs the
    optional ``safetensors`` package (``pip install 'fastconv[safetensors]'``).

    Parameters
    ----------
    state_dict : mapping of str -> ndarray, or a module
        ``model.state_dict()``, or the model itself (anything with a ``state_dict()``
        method, a ``torch.nn.Module`` included). Values may be ndarrays or ``torch.Tensor``
        objects (read as :meth:`fastconv.nn.Module.load_state_dict` reads them). Each is
        stored with its own dtype (float32 and float64 parameters, the int64
        ``num_batches_tracked`` buffer, ...) and shape; strided and big-endian arrays are
        written by value.
    path : str or os.PathLike
        Used exactly as given (``.safetensors`` is the usual extension). Its directory must exist.
    metadata : mapping of str -> str, optional
        Free-form text stored in the header (read back by :func:`load_safetensors_metadata`).

    Raises
    ------
    ImportError
        The ``safetensors`` package is not installed.
    TypeError
        ``state_dict`` is neither a mapping nor a module, a key is not a str (or is the
        reserved ``'__metadata__'``), a value is not an array or tensor, or its dtype is one
        safetensors cannot hold (``float128``, ``complex128``, object, str); ``metadata`` is
        not a mapping of str to str. Nothing is written.
    FileNotFoundError, IsADirectoryError
        The directory does not exist; ``path`` is a directory.

    Notes
    -----
    Written like :func:`save`: into a temporary file beside ``path``, ``fsync``-ed, then
    renamed over ``path``, so a failure at any point leaves the previous file intact. The
    file's tensors are ordered by safetensors (by dtype alignment, then name), not in
    ``state_dict``'s order; :meth:`~fastconv.nn.Module.load_state_dict` matches by name.

    Examples
    --------
    >>> import os, tempfile
    >>> from fastconv import nn, serialization
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "bn.safetensors")
    >>> serialization.save_safetensors(nn.BatchNorm2d(3), path, metadata={"epoch": "3"})
    >>> for name, a in serialization.load_safetensors(path).items():
    ...     print(name, a.dtype, a.shape)
    bias float32 (3,)
    num_batches_tracked int64 ()
    running_mean float32 (3,)
    running_var float32 (3,)
    weight float32 (3,)
    >>> serialization.load_safetensors_metadata(path)
    {'epoch': '3'}
    >>> folder.cleanup()
    """
    owner = "save_safetensors"
    safetensors = _safetensors(owner)
    path = os.fsdecode(os.fspath(path))
    arrays = _safetensors_arrays(state_dict, owner)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in metadata.items()):
            raise TypeError(f"{owner}: metadata must be None or a mapping of str -> str; got {metadata!r:.200}")
        metadata = dict(metadata)
    data = safetensors.numpy.save(arrays, metadata=metadata)
    _atomic_write(path, owner, lambda f: f.write(data))


def _open_safetensors(path, owner):
    """``(path_str, safe_open handle)``; a corrupt or truncated file is a CheckpointError naming it."""
    safetensors = _safetensors(owner)
    path_str = os.fsdecode(os.fspath(path))
    if os.path.isdir(path_str):
        raise IsADirectoryError(f"{owner}: {path_str!r} is a directory")
    try:
        return path_str, safetensors.safe_open(path_str, framework="np")
    except safetensors.SafetensorError as exc:
        raise CheckpointError(f"{path_str}: not a valid safetensors file (corrupt or truncated?): {exc}") from None


def load_safetensors(path):
    """Read the tensors of a safetensors file as NumPy arrays.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_safetensors`, ``safetensors.torch.save_file``,
        ``safetensors.numpy.save_file`` or any other safetensors writer.

    Returns
    -------
    collections.OrderedDict of str -> ndarray
        Every tensor, by name in sorted order, as a writable array of its own (not tied to
        the file), with the file's shape and dtype. ``model.load_state_dict(...)`` takes it
        and checks names, shapes and dtypes against the model.

    Raises
    ------
    ImportError
        The ``safetensors`` package is not installed.
    FileNotFoundError, PermissionError, IsADirectoryError
        From opening the file.
    CheckpointError (a ValueError)
        The file is not a complete safetensors file (truncated, a bad header, offsets
        outside the data), or holds a tensor NumPy has no dtype for (``BF16``, the float8
        types: convert them to float32 in PyTorch before saving). The message names the
        file and, for a dtype, the tensor.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastconv import serialization
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "w.safetensors")
    >>> serialization.save_safetensors({"w": np.arange(3.0), "step": np.array(7)}, path)
    >>> dict(serialization.load_safetensors(path))
    {'step': array(7), 'w': array([0., 1., 2.])}
    >>> with open(path, "r+b") as f:
    ...     _ = f.truncate(os.path.getsize(path) - 4)
    >>> serialization.load_safetensors(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fastconv.serialization.CheckpointError: .../w.safetensors: not a valid safetensors file (corrupt or truncated?): ...
    >>> folder.cleanup()
    """
    path_str, handle = _open_safetensors(path, "load_safetensors")
    out = OrderedDict()
    with handle as f:
        for name in f.keys():
            try:
                out[name] = f.get_tensor(name)
            except TypeError:  # "data type 'bfloat16' not understood"
                dtype = f.get_slice(name).get_dtype()
                raise CheckpointError(f"{path_str}: tensor {name!r} has dtype {dtype}, which NumPy cannot hold; "
                                      f"convert it (for example to float32) before saving") from None
    return out


def load_safetensors_metadata(path):
    """The free-form text metadata of a safetensors file's header, as a dict of str -> str.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str -> str
        Empty when the file has none (``safetensors.torch.save_file`` writes none unless asked).

    Raises
    ------
    As :func:`load_safetensors`.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastconv import serialization
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "w.safetensors")
    >>> serialization.save_safetensors({"w": np.zeros(2)}, path, metadata={"format": "np"})
    >>> serialization.load_safetensors_metadata(path)
    {'format': 'np'}
    >>> folder.cleanup()
    """
    _, handle = _open_safetensors(path, "load_safetensors_metadata")
    with handle as f:
        return dict(f.metadata() or {})
