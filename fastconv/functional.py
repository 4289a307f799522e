"""The public functional API: 2-D convolution, max-pooling and their gradients.

Every function here validates its arguments, repacks the operands into the layouts the
compiled kernels want (see :mod:`fastconv.kernels.conv`), allocates the outputs and calls
one or more kernels. Nothing here loops over the data in Python.

Conventions (the same as PyTorch's ``torch.nn.functional`` and cs231n's layers):

- Arrays are NumPy ``ndarray`` in NCHW order; weights are ``(F, C, KH, KW)``.
  Any memory layout is accepted (views, Fortran order, negative strides, read-only);
  inputs are never modified, outputs are new C-contiguous arrays.
- The operation is a cross-correlation (the kernel is not flipped).
- ``stride``, ``padding`` and ``kernel_size`` are an int or an ``(h, w)`` pair.
- Output size: ``Ho = (H + 2*ph - KH) // sh + 1`` (likewise ``Wo``); rows or columns
  left over by the stride are dropped.
- float32 and float64 are supported; all float arguments of one call must share a dtype,
  which is the dtype of the results. Other dtypes raise ``TypeError``.
- NaN and infinities propagate as in IEEE arithmetic (and as in PyTorch).
- Results are bitwise reproducible for the same inputs and number of threads.
"""

import os
from collections import namedtuple

import numba
import numpy as np

from . import _validation as V
from . import config
from .kernels import conv as _conv
from .kernels import dense as _dense
from .kernels import pool as _pool
from ._runtime import launch

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
    "get_num_threads",
]

_X = "(N, C, H, W)"
_W = "(F, C, KH, KW)"
_DY = "(N, F, Ho, Wo)"

_ConvGeometry = namedtuple("_ConvGeometry", "N C H W F KH KW sh sw ph pw Ho Wo")


def _conv_geometry(func, x_shape, w_shape, stride, padding, x_name="x", w_name="w"):
    """Check that an input of ``x_shape`` and a weight of ``w_shape`` form a valid convolution."""
    sh, sw = V.as_pair(stride, "stride", func, minimum=1)
    ph, pw = V.as_pair(padding, "padding", func, minimum=0)
    N, C, H, W = x_shape
    F, Cw, KH, KW = w_shape
    if Cw != C:
        raise ValueError(
            f"{func}: {w_name} has {Cw} input channels but {x_name} has {C} "
            f"({x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)})"
        )
    V.check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), _X)
    V.check_nonempty(func, w_name, tuple(w_shape), (0, 2, 3), _W)
    if KH > H + 2 * ph or KW > W + 2 * pw:
        raise ValueError(
            f"{func}: kernel ({KH}, {KW}) is larger than the padded input ({H + 2 * ph}, {W + 2 * pw}) "
            f"({x_name}.shape={tuple(x_shape)}, {w_name}.shape={tuple(w_shape)}, padding={(ph, pw)})"
        )
    Ho = (H + 2 * ph - KH) // sh + 1
    Wo = (W + 2 * pw - KW) // sw + 1
    return _ConvGeometry(N, C, H, W, F, KH, KW, sh, sw, ph, pw, Ho, Wo)


def _check_dy(func, dy, g):
    expected = (g.N, g.F, g.Ho, g.Wo)
    if dy.shape != expected:
        raise ValueError(
            f"{func}: dy must have shape {expected} (N, F, Ho, Wo) for this convolution; got {dy.shape}"
        )


def _contiguous(a, dtype=None):
    """``a`` as a C-contiguous, aligned, writeable-typed array: a view when it already is one.

    Read-only inputs are copied: Numba types read-only arrays separately, and passing
    one would compile (and cache) a second version of every kernel.
    """
    return np.require(a, dtype=dtype, requirements=["C", "A", "W"])


def _nhwc(a, ph=0, pw=0):
    """Copy an NCHW array into a new zero-padded NHWC array (one parallel pass)."""
    N, C, H, W = a.shape
    out = np.empty((N, H + 2 * ph, W + 2 * pw, C), dtype=a.dtype)
    launch(_conv.pack_nhwc_padded, _contiguous(a), ph, pw, out, work=out.size)
    return out


def _nchw_padded(a, ph, pw):
    """Copy an NCHW array into a new zero-padded NCHW array (one parallel pass)."""
    N, C, H, W = a.shape
    out = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=a.dtype)
    launch(_conv.pack_nchw_padded, _contiguous(a), ph, pw, out, work=out.size)
    return out


#: Receptive fields (KH * KW * C) shorter than this do not fill the tiled kernels'
#: vectors; they use ``conv2d_forward_flat`` (stride 1) or ``conv2d_forward_few_channels``.
_SHORT_REDUCTION = 32


#: ``x`` zero-padded and repacked for a kernel: ``layout`` is "nhwc" (N, Hp, Wp, C) or
#: "nchw" (N, C, Hp, Wp). The forward pass returns it so that a layer can hand it to the
#: weight gradient, which reads the same packing, instead of packing ``x`` again.
_Packed = namedtuple("_Packed", "layout array")


def _forward(x, ph, pw, w, b, sh, sw, out):
    """``out = conv2d(x, w, b)`` with zero padding ``(ph, pw)``: packs ``x`` for the kernel
    suited to ``w``'s receptive field and runs it. Returns the packed ``x`` (a ``_Packed``)."""
    F, C, KH, KW = w.shape
    work = out.size * C * KH * KW
    if _is_pointwise(KH, KW, sh, sw, ph, pw):
        packed = _Packed("nchw", _contiguous(x))  # no padding: NCHW as it is
        N, _, H, W = x.shape
        launch(_dense.matmul, _contiguous(w).reshape(F, C), packed.array.reshape(N, C, H * W), b,
               out.reshape(N, F, H * W), work=work)
    elif KH * KW * C >= _SHORT_REDUCTION:
        packed = _Packed("nhwc", _nhwc(x, ph, pw))
        launch(_TILED_FORWARD, packed.array, _forward_weights(w), KH, b, sh, sw, out, work=work)
    elif sh == sw == 1:
        packed = _Packed("nchw", _nchw_padded(x, ph, pw))
        launch(_conv.conv2d_forward_flat, packed.array, _contiguous(w), b, out, work=work)
    else:
        packed = _Packed("nhwc", _nhwc(x, ph, pw))
        wk = _contiguous(w.transpose(2, 3, 1, 0))
        launch(_conv.conv2d_forward_few_channels, packed.array, wk, b, sh, sw, out, work=work)
    return packed


def _is_pointwise(KH, KW, sh, sw, ph, pw):
    """A 1x1 convolution at stride 1 without padding: per image, a matrix product in NCHW.

    ``y[n] = w @ x[n]`` with ``x[n]`` as a (C, H*W) matrix, ``dx[n] = w.T @ dy[n]`` and
    ``dw = sum_n dy[n] @ x[n].T``: no repacking, and the pixels are the contiguous axis
    (:mod:`fastconv.kernels.dense`). Through the tiled kernels the NHWC repacking cost
    as much as the arithmetic (32x256x14x14 -> 64: 0.5 ms of packing, 0.7 ms of kernel).
    """
    return KH == KW == 1 and sh == sw == 1 and ph == pw == 0


def _tiled_forward_kernel():
    """The register tile that fits this CPU: 4 x 4 with 32 vector registers, else 4 x 3.

    ``FASTCONV_FORWARD_TILE=4x4`` or ``4x3`` overrides the choice (for benchmarks).
    """
    choice = os.environ.get("FASTCONV_FORWARD_TILE", "")
    kernels = {"4x4": _conv.conv2d_forward, "4x3": _conv.conv2d_forward_4x3}
    if choice in kernels:
        return kernels[choice]
    return _conv.conv2d_forward if config.WIDE_REGISTER_FILE else _conv.conv2d_forward_4x3


_TILED_FORWARD = _tiled_forward_kernel()


def _forward_weights(w):
    """(F, C, KH, KW) -> (F, KW * KH * C), ordered (f, j, i, c) as the forward kernel reads the input."""
    F, C, KH, KW = w.shape
    return _contiguous(w.transpose(0, 3, 2, 1)).reshape(F, KW * KH * C)


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation of a batch of images with a bank of filters.

    ``y[n, f, oh, ow] = b[f] + sum_{c, i, j} xpad[n, c, oh*sh + i, ow*sw + j] * w[f, c, i, j]``,
    where ``xpad`` is ``x`` zero-padded by ``padding`` on both sides.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input batch.
    w : ndarray, shape (F, C, KH, KW), same dtype as ``x``
        Filters.
    b : ndarray, shape (F,), optional
        Bias, added to every output position of its filter.
    stride : int or (int, int), default 1
        Step of the window, ``(sh, sw)``; must be positive.
    padding : int or (int, int), default 0
        Zeros added on both sides, ``(ph, pw)``; must be non-negative.

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        ``Ho = (H + 2*ph - KH) // sh + 1``, ``Wo = (W + 2*pw - KW) // sw + 1``.

    Raises
    ------
    TypeError
        Non-array input, a dtype other than float32/float64, mixed dtypes, or a non-integer
        ``stride``/``padding``.
    ValueError
        Wrong number of dimensions, channel mismatch between ``x`` and ``w``, a bias of the
        wrong length, a kernel larger than the padded input, ``stride <= 0``, ``padding < 0``,
        or an empty channel/spatial/filter axis.

    See Also
    --------
    conv2d_backward : all three gradients (derived in ``docs/backprop.md``).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    >>> w = np.ones((1, 1, 2, 2))
    >>> fc.conv2d(x, w)[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
    return _conv2d(x, w, b, stride, padding)[0]


def _conv2d(x, w, b, stride, padding):
    """:func:`conv2d`, also returning the packed input (``None`` for an empty batch)."""
    func = "conv2d"
    V.check_float_array(x, "x", func, 4, _X)
    V.check_float_array(w, "w", func, 4, _W)
    if b is not None:
        V.check_float_array(b, "b", func, 1, "(F,)")
    V.check_same_dtype(func, x=x, w=w, b=b)
    g = _conv_geometry(func, x.shape, w.shape, stride, padding)
    if b is not None and b.shape[0] != g.F:
        raise ValueError(f"{func}: b must have shape ({g.F},) to match w.shape={w.shape}; got {b.shape}")
    out = np.empty((g.N, g.F, g.Ho, g.Wo), dtype=x.dtype)
    if g.N == 0:
        return out, None
    bias = np.zeros(g.F, dtype=x.dtype) if b is None else _contiguous(b)
    return out, _forward(x, g.ph, g.pw, w, bias, g.sh, g.sw, out)


def _input_grad(dy, w, g):
    """dx: the full correlation of dy (dilated by the stride) with the 180-degree-rotated kernel.

    Stride 1: dy padded by ``K-1-p`` correlated with the rotated, channel-transposed
    kernel is exactly a forward convolution (F input channels -> C output channels), so
    the forward kernel computes it.

    Stride > 1: the dilated dy is zero except on every ``s``-th row and column, so each
    tap only ever meets real dy elements at input positions of one residue modulo ``s``.
    Splitting dx into its ``sh * sw`` phases (input positions ``a = rho + s*q``) turns the
    dilated full convolution into one undilated stride-1 full convolution per phase,
    with the sub-kernel of the taps ``i = rho + s*t`` -- the same arithmetic without the
    multiplications by dilation zeros. Each phase is computed in padded coordinates and
    scattered into dx (cropping the padding) by one parallel pass.
    """
    full_h, full_w = g.KH - 1 - g.ph, g.KW - 1 - g.pw
    if _is_pointwise(g.KH, g.KW, g.sh, g.sw, g.ph, g.pw):
        dx = np.empty((g.N, g.C, g.H, g.W), dtype=dy.dtype)
        launch(_dense.matmul, _contiguous(w.reshape(g.F, g.C).T), _contiguous(dy).reshape(g.N, g.F, -1),
               np.zeros(g.C, dtype=dy.dtype), dx.reshape(g.N, g.C, -1), work=dy.size * g.C)
        return dx
    if g.sh == g.sw == 1 and full_h >= 0 and full_w >= 0:
        dx = np.empty((g.N, g.C, g.H, g.W), dtype=dy.dtype)
        _full_correlation(dy, w, full_h, full_w, dx)
        return dx
    # Positions of no phase (a stride larger than the kernel) or past every window stay 0.
    dx = np.zeros((g.N, g.C, g.H, g.W), dtype=dy.dtype)
    # The phases' sub-kernels have at most ``t = ceil(K / s)`` taps per axis. When every
    # phase runs on the tiled kernel, dy is packed once, padded for the largest
    # sub-kernel; a smaller one then computes ``t - th`` surplus rows (columns) on each
    # side, which are skipped.
    tmax_h, tmax_w = -(-g.KH // g.sh), -(-g.KW // g.sw)
    shared = g.F * max(g.KH // g.sh, 1) * max(g.KW // g.sw, 1) >= _SHORT_REDUCTION  # smallest sub-kernel
    if shared:
        dyp = _nhwc(dy, tmax_h - 1, tmax_w - 1)
        zeros = np.zeros(g.C, dtype=dy.dtype)
    for rh in range(min(g.sh, g.KH)):
        for rw in range(min(g.sw, g.KW)):
            sub = w[:, :, rh::g.sh, rw::g.sw]
            th, tw = sub.shape[2], sub.shape[3]
            if shared:
                wrot = _contiguous(sub[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
                phase = np.empty((g.N, g.C, g.Ho + 2 * tmax_h - th - 1, g.Wo + 2 * tmax_w - tw - 1), dtype=dy.dtype)
                launch(_TILED_FORWARD, dyp, _forward_weights(wrot), th, zeros, 1, 1, phase,
                       work=phase.size * g.F * th * tw)
                first_h, first_w = tmax_h - th, tmax_w - tw
            else:
                phase = np.empty((g.N, g.C, g.Ho + th - 1, g.Wo + tw - 1), dtype=dy.dtype)
                _full_correlation(dy, sub, th - 1, tw - 1, phase)
                first_h = first_w = 0
            # Phase element (q_h, q_w) is padded position (rh + sh*q_h, rw + sw*q_w).
            launch(_conv.scatter_phase, phase, first_h, first_w, rh, rw, g.sh, g.sw, g.ph, g.pw, dx,
                   work=phase.size)
    return dx


def _full_correlation(dy, w, pad_h, pad_w, out):
    """out = correlation of dy (padded by pad_h/pad_w) with w rotated by 180 degrees, channels swapped."""
    wrot = _contiguous(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    _forward(dy, pad_h, pad_w, wrot, np.zeros(wrot.shape[0], dtype=dy.dtype), 1, 1, out)


#: The tiled weight gradient splits the filters between the threads, instead of the
#: output rows, for maps this narrow or less, and whenever the per-thread partials would
#: pass ``_BIG_PARTIALS``: each thread's block of the gradient is then swept by every
#: row's updates without partials to allocate and sum. Measured kernel by kernel (min of
#: 3 x 8, benchmarks/NOTES.md): 14x14 maps 1.6-1.8x faster, 7x7 x 512 channels 3.7x;
#: maps of 28 and wider 2-30% slower, so they keep the split by rows.
_SHORT_ROW = 16
_BIG_PARTIALS = 4 << 20


def _weight_grad(x, dy, g, packed=None):
    """dw: the correlation of x (zero-padded) with dy, summed over the batch.

    ``packed``: ``x`` as the forward pass packed it (a ``_Packed``), used when its layout is
    the one this kernel reads; else ``x`` is packed here.
    """
    def pack(layout, pack_fn):
        if packed is not None and packed.layout == layout:
            return packed.array
        return pack_fn(x, g.ph, g.pw)

    threads = numba.get_num_threads()
    dy = _contiguous(dy)
    if _is_pointwise(g.KH, g.KW, g.sh, g.sw, g.ph, g.pw):
        xc = pack("nchw", lambda a, ph, pw: _contiguous(a))
        dw = np.empty((g.F, g.C), dtype=dy.dtype)
        launch(_dense.matmul_nt, dy.reshape(g.N, g.F, -1), xc.reshape(g.N, g.C, -1), dw, work=dy.size * g.C)
        return dw.reshape(g.F, g.C, 1, 1)
    # The flat kernel multiplies dy's zero gaps with real inputs: exact for finite x,
    # but 0 * inf would put a NaN where the reference has none.
    if g.sh == g.sw == 1 and g.C * g.KH * g.KW < _SHORT_REDUCTION and np.isfinite(x).all():
        xq = pack("nchw", _nchw_padded)
        partial = np.empty((max(1, min(threads, g.N)), g.F, g.C * g.KH * g.KW), dtype=dy.dtype)
        launch(_conv.conv2d_backward_weight_flat, xq, dy, g.KH, g.KW, partial, work=dy.size * partial[0, 0].size)
        return partial.sum(axis=0).reshape(g.F, g.C, g.KH, g.KW)  # partials summed in thread order
    R = g.KW * g.KH * g.C
    jobs = max(1, min(threads, g.N * g.Ho))
    work = dy.size * R
    if g.Wo <= _SHORT_ROW or jobs * g.F * R * dy.itemsize > _BIG_PARTIALS:
        # Split the filters between the threads: no partials, and every element is
        # summed over the rows in order, whatever the thread count.
        block = max(4, g.F // threads // 4 * 4)
        dw = np.empty((g.F, R), dtype=dy.dtype)
        launch(_conv.conv2d_backward_weight_by_filters, pack("nhwc", _nhwc), dy, g.KH, g.sh, g.sw, block, dw,
               work=work)
    else:
        partial = np.empty((jobs, g.F, R), dtype=dy.dtype)
        launch(_conv.conv2d_backward_weight, pack("nhwc", _nhwc), dy, g.KH, g.sh, g.sw, partial, work=work)
        dw = partial.sum(axis=0)  # partials summed in thread order
    # (F, KW, KH, C) -> (F, C, KH, KW).
    return _contiguous(dw.reshape(g.F, g.KW, g.KH, g.C).transpose(0, 3, 2, 1))


def _bias_grad(dy):
    db = np.zeros(dy.shape[1], dtype=dy.dtype)
    launch(_conv.conv2d_backward_bias, _contiguous(dy), db, work=dy.size)
    return db


def conv2d_backward_input(dy, w, input_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to its input.

    Computed as the *full* convolution of the output gradient with the kernel rotated by
    180 degrees (and its channel axes swapped): ``dy`` is dilated with ``sh - 1`` /
    ``sw - 1`` zeros between its elements when the stride is larger than one, padded
    with ``KH - 1 - ph`` / ``KW - 1 - pw`` zeros, and correlated with the rotated kernel
    at stride 1. For strides above one the dilation zeros are never multiplied: dx is
    split into its ``sh * sw`` phases, each an undilated full convolution with a sub-kernel.
    See ``docs/backprop.md``, section 2.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    w : ndarray, shape (F, C, KH, KW), same dtype as ``dy``
        Filters of the forward pass.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)``, the shape of the forward input.
    stride, padding : int or (int, int)
        As given to :func:`conv2d`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``
        Input positions that no window covered (left over by the stride) get zero.

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv2d`; also ``ValueError`` when ``dy`` does not have the shape the
        forward pass would produce, or ``input_shape`` disagrees with ``w``.
    """
    func = "conv2d_backward_input"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(w, "w", func, 4, _W)
    V.check_same_dtype(func, dy=dy, w=w)
    shape = V.as_shape(input_shape, "input_shape", func, 4)
    g = _conv_geometry(func, shape, w.shape, stride, padding, x_name="input_shape")
    _check_dy(func, dy, g)
    if g.N == 0:
        return np.zeros(shape, dtype=dy.dtype)
    return _input_grad(dy, w, g)


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0):
    """Gradient of :func:`conv2d` with respect to its filters.

    ``dw[f, c, i, j] = sum_{n, oh, ow} dy[n, f, oh, ow] * xpad[n, c, oh*sh + i, ow*sw + j]``:
    the correlation of the (padded) input with the output gradient. See
    ``docs/backprop.md``, section 1.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    x : ndarray, shape (N, C, H, W), same dtype as ``dy``
        Input of the forward pass.
    weight_shape : tuple of 4 ints
        ``(F, C, KH, KW)``, the shape of the filters.
    stride, padding : int or (int, int)
        As given to :func:`conv2d`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv2d`; also ``ValueError`` when ``dy`` does not have the shape the
        forward pass would produce.
    """
    func = "conv2d_backward_weight"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(x, "x", func, 4, _X)
    V.check_same_dtype(func, dy=dy, x=x)
    shape = V.as_shape(weight_shape, "weight_shape", func, 4)
    g = _conv_geometry(func, x.shape, shape, stride, padding, w_name="weight_shape")
    _check_dy(func, dy, g)
    if g.N == 0:
        return np.zeros(shape, dtype=dy.dtype)
    return _weight_grad(x, dy, g)


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """All three gradients of :func:`conv2d`: ``(dx, dw, db)``.

    Equivalent to ``conv2d_backward_input(dy, w, x.shape, ...)``,
    ``conv2d_backward_weight(dy, x, w.shape, ...)`` and ``dy.sum(axis=(0, 2, 3))``, but
    validates and repacks ``dy`` once. See ``docs/backprop.md``, sections 1 and 2.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    x : ndarray, shape (N, C, H, W)
        Input of the forward pass.
    w : ndarray, shape (F, C, KH, KW)
        Filters of the forward pass.
    stride, padding : int or (int, int)
        As given to :func:`conv2d`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C, KH, KW)
    db : ndarray, shape (F,)
        Returned whether or not the forward pass used a bias.
    """
    return _conv2d_backward(dy, x, w, stride, padding)


def _conv2d_backward(dy, x, w, stride, padding, packed=None, input_grad=True):
    """:func:`conv2d_backward`; ``packed`` is what :func:`_conv2d` returned for this ``x``.

    With ``input_grad=False``, dx is not computed and ``None`` is returned in its place.
    """
    func = "conv2d_backward"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(x, "x", func, 4, _X)
    V.check_float_array(w, "w", func, 4, _W)
    V.check_same_dtype(func, dy=dy, x=x, w=w)
    g = _conv_geometry(func, x.shape, w.shape, stride, padding)
    _check_dy(func, dy, g)
    if g.N == 0:
        dx = np.zeros(x.shape, dtype=x.dtype) if input_grad else None
        return dx, np.zeros(w.shape, dtype=x.dtype), np.zeros(g.F, dtype=x.dtype)
    dy = _contiguous(dy)
    dx = _input_grad(dy, w, g) if input_grad else None
    return dx, _weight_grad(x, dy, g, packed), _bias_grad(dy)


def _pool_geometry(func, x_shape, kernel_size, stride, padding, x_name="x"):
    kh, kw = V.as_pair(kernel_size, "kernel_size", func, minimum=1)
    sh, sw = (kh, kw) if stride is None else V.as_pair(stride, "stride", func, minimum=1)
    ph, pw = V.as_pair(padding, "padding", func, minimum=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{func}: padding {(ph, pw)} must be at most half the kernel_size {(kh, kw)} "
            f"(every window must hold at least one real element)"
        )
    N, C, H, W = x_shape
    V.check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), _X)
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(
            f"{func}: kernel_size {(kh, kw)} is larger than the padded input {(H + 2 * ph, W + 2 * pw)} "
            f"({x_name}.shape={tuple(x_shape)}, padding={(ph, pw)})"
        )
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    return (kh, kw, sh, sw, ph, pw, Ho, Wo)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D max-pooling that also returns the position of each maximum.

    ``y[n, c, oh, ow] = max over the window xpad[n, c, oh*sh : oh*sh+kh, ow*sw : ow*sw+kw]``,
    where ``xpad`` is ``x`` padded with ``-inf``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input batch.
    kernel_size : int or (int, int)
        Window size ``(kh, kw)``.
    stride : int or (int, int), optional
        Window step; defaults to ``kernel_size``. A stride smaller than the window gives
        overlapping windows.
    padding : int or (int, int), default 0
        ``-inf`` padding on both sides; at most half the window (as in PyTorch).

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
        ``Ho = (H + 2*ph - kh) // sh + 1``, likewise ``Wo``.
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Flat index ``h * W + w`` of each window's winner inside its ``(n, c)`` plane of
        ``x`` (PyTorch's ``return_indices=True`` convention). Ties go to the first maximum
        in row-major window order; a NaN in the window wins (value NaN, index of the last
        NaN, as PyTorch's CPU kernel).

    Raises
    ------
    TypeError, ValueError
        Non-float input, non-integer parameters, wrong ndim, ``kernel_size``/``stride``
        not positive, negative padding or padding over half the window, a window larger
        than the padded input, or an empty channel/spatial axis.

    See Also
    --------
    max_pool2d_backward : the gradient. See ``docs/backprop.md``, section 3.
    """
    func = "max_pool2d"
    V.check_float_array(x, "x", func, 4, _X)
    kh, kw, sh, sw, ph, pw, Ho, Wo = _pool_geometry(func, x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    if N == 0:
        return out, indices
    planes = _contiguous(x).reshape(N * C, H, W)
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        launch(_pool.max_pool2d_forward_2x2, planes, out.reshape(N * C, Ho, Wo),
               indices.reshape(N * C, Ho, Wo), work=out.size * 4)
        return out, indices
    launch(
        _pool.max_pool2d_forward,
        planes, kh, kw, sh, sw, ph, pw, out.reshape(N * C, Ho, Wo), indices.reshape(N * C, Ho, Wo),
        work=out.size * kh * kw,
    )
    return out, indices


def max_pool2d_backward(dy, indices, input_shape):
    """Gradient of :func:`max_pool2d`: route each ``dy`` element to its window's winner.

    ``dx[n, c].flat[indices[n, c, oh, ow]] += dy[n, c, oh, ow]``; every other input gets
    zero. Where windows overlap, a winner shared by several windows receives the sum.
    See ``docs/backprop.md``, section 3.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), float32 or float64
        Gradient of the loss with respect to the pooled output.
    indices : ndarray of integers, shape (N, C, Ho, Wo)
        As returned by :func:`max_pool2d`.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)``, the shape of the forward input.

    Returns
    -------
    dx : ndarray, shape ``input_shape``, dtype of ``dy``

    Raises
    ------
    TypeError
        Non-float ``dy`` or non-integer ``indices``.
    ValueError
        Shapes that disagree, or an index outside ``[0, H*W)``.
    """
    func = "max_pool2d_backward"
    V.check_float_array(dy, "dy", func, 4, "(N, C, Ho, Wo)")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{func}: indices must be a numpy.ndarray; got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{func}: indices must have an integer dtype; got {indices.dtype} (shape {indices.shape})")
    if indices.shape != dy.shape:
        raise ValueError(f"{func}: indices must have dy's shape {dy.shape}; got {indices.shape}")
    N, C, H, W = V.as_shape(input_shape, "input_shape", func, 4)
    if (N, C) != dy.shape[:2]:
        raise ValueError(
            f"{func}: input_shape {(N, C, H, W)} must share (N, C) with dy.shape={dy.shape}"
        )
    V.check_nonempty(func, "input_shape", (N, C, H, W), (1, 2, 3), _X)
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    if dy.size == 0:
        dx[...] = 0
        return dx
    P = N * C
    # The kernel checks every index before it writes and counts the bad ones.
    bad = launch(
        _pool.max_pool2d_backward,
        _contiguous(dy).reshape(P, -1),
        _contiguous(indices, np.int64).reshape(P, -1),
        dx.reshape(P, H * W),
        work=dx.size + dy.size,
    )
    if bad:
        lo, hi = int(indices.min()), int(indices.max())
        raise ValueError(
            f"{func}: indices must lie in [0, H*W) = [0, {H * W}) for input_shape {(N, C, H, W)}; "
            f"got values in [{lo}, {hi}] ({bad} out of range)"
        )
    return dx


def set_num_threads(n):
    """Set how many threads fastconv's kernels use (for calls from the current thread).

    Parameters
    ----------
    n : int
        Between 1 and the size of Numba's thread pool, ``numba.config.NUMBA_NUM_THREADS``
        (set it with the ``NUMBA_NUM_THREADS`` environment variable before the first import
        of numba; it defaults to the number of cores).

    Notes
    -----
    This is Numba's ``set_num_threads``: the setting is per calling thread and also applies
    to any other Numba-parallel code in the process. The weight gradient's partial sums are
    split per thread, so results are bitwise reproducible for a fixed thread count.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int; got {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(
            f"set_num_threads: n must be between 1 and {limit} (NUMBA_NUM_THREADS); got {n}"
        )
    numba.set_num_threads(int(n))


def get_num_threads():
    """Number of threads fastconv's kernels use for calls from the current thread."""
    return numba.get_num_threads()
