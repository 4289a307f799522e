"""Helpers shared by the cs231n drop-in modules: dtype conversion, parameter dicts, caches."""

import functools
from collections.abc import Mapping

import numpy as np

from .. import functional as _F

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _named(fn):
    """Make the errors of ``fn`` name it: a TypeError/ValueError/MemoryError from the functional API below
    (``"conv2d: stride must be positive"``) gets the cs231n function's name in front, keeping its type."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MemoryError, TypeError, ValueError) as exc:
            if name in str(exc):
                raise
            base = next(t for t in (MemoryError, TypeError, ValueError) if isinstance(exc, t))
            raise base(f"{name}: {exc}") from exc

    return wrapper


def _as_float(func, **arrays):
    """Convert the named arrays to one float dtype (their common float32/float64, else float64)."""
    converted = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{func}: {name} must be a real numeric array; got dtype {a.dtype}")
        converted[name] = a
    dtype = np.result_type(*converted.values())
    if dtype not in _FLOATS:
        dtype = np.dtype(np.float64)
    return [a.astype(dtype, copy=False) for a in converted.values()]


def _get(param, keys, name, func):
    if not isinstance(param, Mapping):
        raise TypeError(f"{func}: {name} must be a dict with keys {keys}; got {type(param).__name__}")
    missing = [k for k in keys if k not in param]
    if missing:
        raise KeyError(f"{func}: {name} is missing key(s) {missing} (it needs {keys})")
    return [param[k] for k in keys]


def _unpack(cache, n, layout, func):
    if not isinstance(cache, tuple) or len(cache) != n:
        raise TypeError(f"{func}: cache must be the tuple {layout} returned by the forward function")
    return cache


def _matmul(a, b):
    """``a @ b``: on fastconv's threads for float32/float64 operands of one dtype, else NumPy's.

    NumPy's BLAS threads keep spinning after a product and take the cores from the next
    fastconv kernel; a cs231n ``Solver`` loop over these layers ran at half speed.
    """
    if a.dtype == b.dtype and a.dtype in _FLOATS and a.size and b.size:
        return _F.matmul(a, b)
    return a @ b
