"""Argument checking shared by the public wrappers.

Every message starts with the public function's name and names the offending argument,
with the shapes involved, so that a user can see at once what to fix.
"""

import functools
import math
import numbers
import operator
import os
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


def conv_geometry(func, x_shape, w_shape, stride, padding, x_name="x", w_name="w", dilation=1, groups=1):
    """Check that an input of ``x_shape`` and a weight of ``w_shape`` form a valid convolution.

    ``padding`` is numeric here (an int or a pair); ``'same'`` and ``'valid'`` are resolved
    by the caller. ``w_shape`` is ``(F, C / groups, KH, KW)``.

    Returns
    -------
    fastconv.plan.ConvGeometry
    """
    from .plan import ConvGeometry

    sh, sw = as_pair(stride, "stride", func, minimum=1)
    ph, pw = as_pair(padding, "padding", func, minimum=0)
    dh, dw = as_pair(dilation, "dilation", func, minimum=1)
    groups = as_int(groups, "groups", func)
    N, C, H, W = x_shape
    F, Cw, KH, KW = w_shape
    shapes = f"{x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)}"
    if groups < 1:
        raise ValueError(f"{func}: groups must be positive; got {groups}")
    if C % groups or F % groups:
        raise ValueError(f"{func}: groups={groups} must divide both the input channels ({C}) and the filters "
                         f"({F}) ({shapes})")
    if Cw * groups != C:
        per_group = f" ({C} / groups={groups})" if groups > 1 else ""
        raise ValueError(
            f"{func}: {w_name} has {Cw} input channels but {x_name} has {C}{per_group} "
            f"({x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)})"
        )
    check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), X_LAYOUT)
    check_nonempty(func, w_name, tuple(w_shape), (0, 2, 3), W_LAYOUT)
    if (dh, dw) != (1, 1):
        shapes += f", dilation={(dh, dw)}"
    span = (dh * (KH - 1) + 1, dw * (KW - 1) + 1)
    what = "kernel" if (dh, dw) == (1, 1) else "dilated kernel"
    Ho, Wo = _output_size(func, what, (H, W), span, (sh, sw), (ph, pw), shapes)
    return ConvGeometry(N, C, H, W, F, KH, KW, sh, sw, ph, pw, Ho, Wo, (dh, dw), groups)


def conv_padding(func, padding, stride, kernel_hw, dilation):
    """PyTorch's ``padding`` of a convolution as ``((ph, pw), (eh, ew))``: zeros on both sides, and extra ones.

    ``padding`` is an int, an ``(h, w)`` pair, ``'valid'`` (no padding) or ``'same'``
    (stride 1 only: a total of ``d * (k - 1)`` per axis, ``total // 2`` on the top/left and
    the rest, ``eh``/``ew`` one more, on the bottom/right, as PyTorch does). Numeric padding
    is checked by :func:`conv_geometry`; ``(eh, ew)`` is ``(0, 0)`` except for ``'same'``
    with an even total.
    """
    if not isinstance(padding, str):
        return padding, (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"{func}: padding must be an int, a pair (h, w), 'same' or 'valid'; got {padding!r}")
    sh, sw = as_pair(stride, "stride", func, minimum=1)
    if (sh, sw) != (1, 1):
        raise ValueError(f"{func}: padding='same' needs stride 1 (as in PyTorch); got stride={(sh, sw)}")
    dh, dw = as_pair(dilation, "dilation", func, minimum=1)
    th, tw = dh * max(kernel_hw[0] - 1, 0), dw * max(kernel_hw[1] - 1, 0)
    return (th // 2, tw // 2), (th % 2, tw % 2)


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


def pool_geometry(func, x_shape, kernel_size, stride, padding, x_name="x", dilation=1, ceil_mode=False):
    """Check a pooling of an input of ``x_shape``; returns a ``fastconv.plan.PoolGeometry``.

    PyTorch's rules: positive ``kernel_size``, ``stride`` and ``dilation``; ``padding`` at
    most half the kernel; the output size of :func:`pool_output_size`, at least 1.
    """
    from .plan import PoolGeometry

    kh, kw = as_pair(kernel_size, "kernel_size", func, minimum=1)
    sh, sw = (kh, kw) if stride is None else as_pair(stride, "stride", func, minimum=1)
    ph, pw = as_pair(padding, "padding", func, minimum=0)
    dh, dw = as_pair(dilation, "dilation", func, minimum=1)
    check_bool(ceil_mode, "ceil_mode", func)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{func}: padding {(ph, pw)} must be at most half the kernel_size {(kh, kw)} "
            f"(every window must hold at least one real element)"
        )
    N, C, H, W = x_shape
    check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), X_LAYOUT)
    shapes = f"{x_name}.shape={tuple(x_shape)}"
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    Ho = pool_output_size(H, ekh, sh, ph, ceil_mode)
    Wo = pool_output_size(W, ekw, sw, pw, ceil_mode)
    if Ho < 1 or Wo < 1:
        what = "kernel_size" if (dh, dw) == (1, 1) else f"kernel_size {(kh, kw)} with dilation {(dh, dw)} spans"
        raise ValueError(
            f"{func}: {what} {(ekh, ekw)} is larger than the padded input {(H + 2 * ph, W + 2 * pw)} "
            f"({shapes}, padding={(ph, pw)}, ceil_mode={ceil_mode}): output size {(Ho, Wo)}"
        )
    for axis, size, k, s, p, d, out in (("rows", H, kh, sh, ph, dh, Ho), ("columns", W, kw, sw, pw, dw, Wo)):
        _check_dilated_windows(func, axis, size, (k, s, p, d), out, shapes)
    return PoolGeometry(N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, bool(ceil_mode))


def pool_output_size(size, span, stride, pad, ceil_mode):
    """PyTorch's pooling output size for a window spanning ``span`` inputs (``(k - 1) * dilation + 1``).

    ``(size + 2*pad - span) // stride + 1``, rounded up instead with ``ceil_mode``, where
    the last window must still start inside the input or the leading padding.
    """
    top = size + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = top // stride + 1
    if ceil_mode and out > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check_dilated_windows(func, axis, size, window, out, shapes):
    """A dilated window that starts in the padding may skip every input element: refuse it.

    (PyTorch returns ``-inf`` there with an index outside the plane, which its backward
    pass would write through.) Only windows starting in the leading padding can be empty.
    """
    k, s, p, d = window
    for o in range(min(-(-p // s), out)):
        start = o * s - p
        first = start + (-start + d - 1) // d * d
        if first >= size or first > start + (k - 1) * d:
            raise ValueError(
                f"{func}: with dilation {d} and padding {p}, window {o} of the {axis} holds no input element "
                f"({shapes}); use less padding or dilation"
            )


def as_int(value, name, func):
    """``value`` as a Python int; ``TypeError`` naming ``name`` for anything that is not an integer."""
    return _as_int(value, name, func)


def adaptive_output_size(func, output_size, x_shape):
    """``(Ho, Wo)`` from PyTorch's ``output_size``: an int, or a pair whose None entries keep the input's size."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"{func}: output_size must be an int or a pair (h, w); got {output_size!r}")
        pair = tuple(x_shape[2 + i] if v is None else _as_int(v, "output_size", func)
                     for i, v in enumerate(output_size))
    elif output_size is None:
        raise TypeError(f"{func}: output_size must be an int or a pair of ints (or None entries); got None")
    else:
        pair = (_as_int(output_size, "output_size", func),) * 2
    if min(pair) < 0 or max(pair) > MAX_PARAMETER:
        raise ValueError(f"{func}: output_size must be non-negative (and at most 2**60); got {output_size!r}")
    return pair


def check_bool(value, name, func):
    """Raise ``TypeError`` unless ``value`` is a bool (or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be a bool; got {value!r} of type {type(value).__name__}")


@functools.lru_cache(maxsize=1)
def memory_limit():
    """Bytes of physical memory of this machine (2**63 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**63


def check_allocation(func, what, shape, itemsize, detail=""):
    """Raise ``MemoryError`` naming ``func`` if an array of ``shape`` would exceed the machine's memory.

    Refusing it here, before anything is allocated, gives a clear error instead of NumPy's
    anonymous one -- or, with memory overcommit, an allocation that succeeds and a process
    killed when it is written.
    """
    nbytes = math.prod(shape) * itemsize
    limit = memory_limit()
    if nbytes > limit:
        raise MemoryError(f"{func}: cannot allocate the {what} of shape {tuple(shape)}: {nbytes:,} bytes, more than "
                          f"this machine's {limit:,} bytes of memory{detail}")


def check_buffers(func, g, itemsize):
    """:func:`check_allocation` of the buffers of the sliding window ``g``.

    They are the output ``(N, F, Ho, Wo)`` and the zero-padded input ``(N, C, H + 2*ph, W + 2*pw)``.
    """
    detail = f" (stride {(g.sh, g.sw)}, padding {(g.ph, g.pw)})"
    check_allocation(func, "output", (g.N, g.F, g.Ho, g.Wo), itemsize, detail)
    check_allocation(func, "padded input", (g.N, g.C, g.H + 2 * g.ph, g.W + 2 * g.pw), itemsize, detail)


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


def check_real(func, name, value, minimum=None):
    """``value`` (a real number, not a bool) as a float; ``minimum``: ValueError below it (and for NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} must be a real number; got {value!r}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}; got {value!r}")
    return float(value)


def check_batch_size(func, shape):
    """PyTorch's check of a training batch norm: ValueError unless there is more than one value per channel."""
    if shape[0] * int(np.prod(shape[2:], dtype=np.int64)) == 1:
        raise ValueError(f"{func}: Expected more than 1 value per channel when training, got input size {tuple(shape)}")


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


# ---------------------------------------------------------------------------------------
# Transposed convolution
# ---------------------------------------------------------------------------------------

WT_LAYOUT = "(C_in, C_out/groups, KH, KW)"


def check_output_padding(func, output_padding, stride, dilation):
    """``output_padding`` as a pair; PyTorch's rule: each side smaller than its stride or its dilation."""
    op = as_pair(output_padding, "output_padding", func, minimum=0)
    for axis, o, s, d in zip(("height", "width"), op, stride, dilation):
        if o >= s and o >= d:
            raise ValueError(f"{func}: output_padding must be smaller than either stride or dilation; got "
                             f"output_padding={op} with stride={tuple(stride)}, dilation={tuple(dilation)} "
                             f"(the {axis} fails)")
    return op


def conv_transpose_geometry(func, x_shape, w_shape, stride, padding, output_padding, groups, dilation,
                            x_name="x", w_name="w"):
    """Check a transposed convolution; returns the :class:`fastconv.plan.ConvGeometry` it is the input gradient of.

    The transposed convolution of an ``x`` of ``(N, C_in, H, W)`` with a weight of
    ``(C_in, C_out / groups, KH, KW)`` is the input gradient of the convolution of an input
    of ``(N, C_out, Ho, Wo)`` with that same weight (``C_in`` filters), ``Ho = (H - 1)*sh -
    2*ph + dh*(KH - 1) + oph + 1``. That convolution's output (``geometry.Ho``) is ``H``,
    or a few rows more when ``output_padding >= stride`` (allowed by a larger dilation): the
    extra rows of its output gradient are zeros.
    """
    sh, sw = as_pair(stride, "stride", func, minimum=1)
    ph, pw = as_pair(padding, "padding", func, minimum=0)
    dh, dw = as_pair(dilation, "dilation", func, minimum=1)
    groups = as_int(groups, "groups", func)
    oph, opw = check_output_padding(func, output_padding, (sh, sw), (dh, dw))
    N, C, H, W = x_shape
    Cin, Cg, KH, KW = w_shape
    shapes = f"{x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)}"
    if groups < 1:
        raise ValueError(f"{func}: groups must be positive; got {groups}")
    if Cin != C:
        raise ValueError(f"{func}: {w_name} must have {x_name}'s {C} input channels on its axis 0 "
                         f"{WT_LAYOUT}; got {Cin} ({shapes})")
    if C % groups:
        raise ValueError(f"{func}: groups={groups} must divide the input channels ({C}) ({shapes})")
    check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), X_LAYOUT)
    check_nonempty(func, w_name, tuple(w_shape), (1, 2, 3), WT_LAYOUT)
    Ho = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{func}: the output size {(Ho, Wo)} is not positive: padding={(ph, pw)} crops more than "
                         f"the {(Ho + 2 * ph, Wo + 2 * pw)} the windows span ({shapes}, stride={(sh, sw)}, "
                         f"dilation={(dh, dw)}, output_padding={(oph, opw)})")
    return conv_geometry(func, (N, Cg * groups, Ho, Wo), w_shape, (sh, sw), (ph, pw), x_name="output",
                         w_name=w_name, dilation=(dh, dw), groups=groups)
