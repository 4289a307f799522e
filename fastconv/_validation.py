"""Argument checking shared by the public wrappers.

Every message starts with the public function's name and names the offending argument,
with the shapes involved, so that a user can see at once what to fix.
"""

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: Largest stride, padding or kernel size accepted: the kernels index with int64, and
#: sizes derived from these (H + 2*padding, ...) must not overflow it.
MAX_PARAMETER = 2**60


def as_pair(value, name, func, minimum):
    """Return ``value`` (an int or a pair of ints) as a tuple ``(h, w)`` of Python ints.

    Raises ``TypeError`` for anything that is not an integer (bool, float, str, ...) and
    ``ValueError`` for a pair of the wrong length or an element below ``minimum``.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{func}: {name} must be an int or a pair (h, w); got {value!r} of length {len(value)}")
        pair = tuple(_as_int(v, name, func) for v in value)
    else:
        v = _as_int(value, name, func)
        pair = (v, v)
    if pair[0] < minimum or pair[1] < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{func}: {name} must be {bound}; got {value!r}")
    if pair[0] > MAX_PARAMETER or pair[1] > MAX_PARAMETER:
        raise ValueError(f"{func}: {name} must be at most 2**60; got {value!r}")
    return pair


def _as_int(value, name, func):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {name} must be an int or a pair of ints; got {value!r} of type {type(value).__name__}")
    return operator.index(value)


def as_shape(shape, name, func, length):
    """Return ``shape`` (a sequence of ``length`` non-negative ints) as a tuple of ints."""
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"{func}: {name} must be a tuple of {length} ints; got {shape!r}") from None
    if len(items) != length:
        raise ValueError(f"{func}: {name} must have {length} entries; got {shape!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{func}: {name} must hold non-negative ints; got {shape!r}")
        out.append(operator.index(v))
    return tuple(out)


def check_float_array(a, name, func, ndim, layout):
    """Check that ``a`` is a float32/float64 ndarray with ``ndim`` dimensions.

    ``layout`` is a human description of the expected axes, e.g. ``"(N, C, H, W)"``.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{func}: {name} must be a numpy.ndarray of shape {layout}; got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{func}: {name} must have dtype float32 or float64; got {a.dtype} (shape {a.shape})")
    if a.ndim != ndim:
        raise ValueError(f"{func}: {name} must be {ndim}-D with shape {layout}; got shape {a.shape}")


def check_same_dtype(func, **arrays):
    """Raise ``TypeError`` unless every non-None array has the same dtype."""
    given = {k: v for k, v in arrays.items() if v is not None}
    dtypes = {v.dtype for v in given.values()}
    if len(dtypes) > 1:
        desc = ", ".join(f"{k}.dtype={v.dtype}" for k, v in given.items())
        raise TypeError(f"{func}: arrays must share one dtype (float32 or float64); got {desc}")


def check_nonempty(func, name, shape, axes, layout):
    """Raise ``ValueError`` if any of the named ``axes`` of ``shape`` is zero."""
    for axis in axes:
        if shape[axis] == 0:
            label = layout.strip("()").split(", ")[axis]
            raise ValueError(f"{func}: {name} has {label} == 0 (shape {shape}); only the batch axis may be empty")
