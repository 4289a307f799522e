"""Argument checking shared by the public wrappers.

Every message starts with the public function's name and names the offending argument,
with the shapes involved, so that a user can see at once what to fix.
"""

import numbers
import operator
import warnings

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


# ---------------------------------------------------------------------------------------
# Geometry of the operations
# ---------------------------------------------------------------------------------------

X_LAYOUT = "(N, C, H, W)"
W_LAYOUT = "(F, C, KH, KW)"
DY_LAYOUT = "(N, F, Ho, Wo)"


def conv_geometry(func, x_shape, w_shape, stride, padding, x_name="x", w_name="w"):
    """Check that an input of ``x_shape`` and a weight of ``w_shape`` form a valid convolution.

    Returns
    -------
    fastconv.plan.ConvGeometry
    """
    from .plan import ConvGeometry

    sh, sw = as_pair(stride, "stride", func, minimum=1)
    ph, pw = as_pair(padding, "padding", func, minimum=0)
    N, C, H, W = x_shape
    F, Cw, KH, KW = w_shape
    if Cw != C:
        raise ValueError(
            f"{func}: {w_name} has {Cw} input channels but {x_name} has {C} "
            f"({x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)})"
        )
    check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), X_LAYOUT)
    check_nonempty(func, w_name, tuple(w_shape), (0, 2, 3), W_LAYOUT)
    shapes = f"{x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)}"
    Ho, Wo = _output_size(func, "kernel", (H, W), (KH, KW), (sh, sw), (ph, pw), shapes)
    return ConvGeometry(N, C, H, W, F, KH, KW, sh, sw, ph, pw, Ho, Wo)


def _output_size(func, what, hw, window, stride, padding, shapes):
    """``(Ho, Wo)`` of a ``window`` sliding over ``hw`` padded by ``padding``; ValueError if it does not fit."""
    (H, W), (kh, kw), (sh, sw), (ph, pw) = hw, window, stride, padding
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(
            f"{func}: {what} {(kh, kw)} is larger than the padded input {(H + 2 * ph, W + 2 * pw)} "
            f"({shapes}, padding={(ph, pw)})"
        )
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def check_dy(func, dy, g):
    """Raise ``ValueError`` unless ``dy`` has the output shape of convolution ``g``."""
    if dy.shape != g.y_shape:
        raise ValueError(
            f"{func}: dy must have shape {g.y_shape} (N, F, Ho, Wo) for this convolution; got {dy.shape}"
        )


def pool_geometry(func, x_shape, kernel_size, stride, padding, x_name="x"):
    """Check a max-pooling of an input of ``x_shape``; returns a ``fastconv.plan.ConvGeometry`` with ``F == C``."""
    from .plan import ConvGeometry

    kh, kw = as_pair(kernel_size, "kernel_size", func, minimum=1)
    sh, sw = (kh, kw) if stride is None else as_pair(stride, "stride", func, minimum=1)
    ph, pw = as_pair(padding, "padding", func, minimum=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{func}: padding {(ph, pw)} must be at most half the kernel_size {(kh, kw)} "
            f"(every window must hold at least one real element)"
        )
    N, C, H, W = x_shape
    check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), X_LAYOUT)
    Ho, Wo = _output_size(func, "kernel_size", (H, W), (kh, kw), (sh, sw), (ph, pw),
                          f"{x_name}.shape={tuple(x_shape)}")
    return ConvGeometry(N, C, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo)


def float_dtype(dtype, owner):
    """``dtype`` as a float32/float64 ``numpy.dtype``; ``TypeError`` for anything else (None too)."""
    if dtype is None:  # np.dtype(None) would be float64
        raise TypeError(f"{owner}: dtype must be float32 or float64; got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{owner}: dtype must be float32 or float64; got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{owner}: dtype must be float32 or float64; got {dt}")
    return dt


def check_any_float_array(a, name, func):
    """Check that ``a`` is a float32/float64 ndarray of any shape."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{func}: {name} must be a numpy.ndarray; got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{func}: {name} must have dtype float32 or float64; got {a.dtype} (shape {a.shape})")


def check_like(func, name, a, ref_name, ref):
    """Check that ``a`` is an ndarray with the shape and dtype of ``ref``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{func}: {name} must be a numpy.ndarray of shape {ref.shape}; got {type(a).__name__}")
    if a.shape != ref.shape:
        raise ValueError(f"{func}: {name} must have the shape of {ref_name}, {ref.shape}; got {a.shape}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{func}: {name} must have the dtype of {ref_name}, {ref.dtype}; got {a.dtype}")


def softmax_dim(dim, shape, func):
    """The axis ``dim`` (an int in ``[-ndim, ndim)``, or None) of an array of ``shape``, as an index in ``[0, ndim)``.

    ``None`` picks PyTorch's implicit axis (0 for 0-, 1- and 3-D inputs, else 1) with PyTorch's warning.
    A 0-D array has the one axis ``0`` (or ``-1``), as in PyTorch.
    """
    ndim = max(len(shape), 1)
    if dim is None:
        warnings.warn(f"{func}: implicit dimension choice for softmax has been deprecated (as in PyTorch); "
                      f"pass dim", UserWarning, stacklevel=4)
        return 0 if len(shape) in (0, 1, 3) else 1
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{func}: dim must be an int; got {dim!r} of type {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{func}: dim must be in [{-ndim}, {ndim}) for an input of shape {tuple(shape)}; got {dim}")
    return int(dim) % ndim
