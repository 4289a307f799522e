"""The public functional API: convolution, max-pooling, ReLU, the dense layer and their gradients.

Every function here validates its arguments once, asks the plan layer
(:mod:`fastconv.plan`) which strategy runs, and runs it: nothing here loops over the data
in Python, and no kernel is chosen here. ``conv2d_plan`` and ``max_pool2d_plan`` return
the plan itself, for a user or a test that wants to know which strategy a call takes, or
for a layer that runs the same geometry many times (:mod:`fastconv.nn` does).

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

import numbers

import numba
import numpy as np

from . import _loss
from . import _validation as V
from . import plan as _plan

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_plan",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_plan",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool2d_plan",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward",
    "relu",
    "relu_backward",
    "linear",
    "linear_backward",
    "matmul",
    "batch_norm",
    "batch_norm_backward",
    "set_num_threads",
    "get_num_threads",
    # activations
    "leaky_relu",
    "leaky_relu_backward",
    "elu",
    "elu_backward",
    "gelu",
    "gelu_backward",
    "silu",
    "silu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    # losses
    "mse_loss",
    "mse_loss_backward",
    "l1_loss",
    "l1_loss_backward",
    "nll_loss",
    "nll_loss_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    # transposed convolution
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv_transpose2d_backward_input",
    "conv_transpose2d_backward_weight",
]

_X, _W, _DY = V.X_LAYOUT, V.W_LAYOUT, V.DY_LAYOUT


def _conv_geometry(func, x_shape, w_shape, stride, padding, dilation, groups, x_name="x", w_name="w"):
    """``(geometry, extra)`` of a convolution, ``padding`` resolved (``'same'``, ``'valid'``, numeric).

    ``extra = (eh, ew)`` are the zero rows/columns ``'same'`` adds on the bottom/right only
    (an odd total padding); the geometry is then that of the input so extended, padded
    symmetrically by the rest. It is ``(0, 0)`` otherwise, and costs nothing.
    """
    pad, extra = V.conv_padding(func, padding, stride, tuple(w_shape)[2:], dilation)
    # Checked on the input as given, padded by the larger side (every message names the user's shapes).
    g = V.conv_geometry(func, x_shape, w_shape, stride, (pad[0] + extra[0], pad[1] + extra[1]) if extra != (0, 0)
                        else pad, x_name, w_name, dilation, groups)
    if extra != (0, 0):
        N, C, H, W = x_shape
        g = V.conv_geometry(func, (N, C, H + extra[0], W + extra[1]), w_shape, stride, pad, x_name, w_name,
                            dilation, groups)
    return g, extra


def _extend(x, extra):
    """``x`` with ``extra = (eh, ew)`` zero rows/columns on the bottom/right (``x`` itself when none)."""
    if extra == (0, 0):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))


def _crop(dx, extra):
    """The input gradient of the extended input, cropped to the input's shape."""
    if extra == (0, 0):
        return dx
    return np.ascontiguousarray(dx[:, :, :dx.shape[2] - extra[0], :dx.shape[3] - extra[1]])


def conv2d_plan(x_shape, w_shape, stride=1, padding=0, dtype=np.float32, *, dilation=1, groups=1):
    """The plan of a convolution: which strategy each pass takes, on this CPU and thread count.

    Parameters
    ----------
    x_shape : tuple of 4 ints
        ``(N, C, H, W)``.
    w_shape : tuple of 4 ints
        ``(F, C / groups, KH, KW)``.
    stride, padding, dilation, groups
        As for :func:`conv2d`.
    dtype : float32 or float64

    Returns
    -------
    fastconv.plan.ConvPlan
        ``.forward``, ``.input_grad``, ``.weight_grad``, ``.bias_grad`` are the strategies
        (``.name``, ``.kernels``); ``print(plan)`` explains them; ``plan.run_forward(x, w,
        b)`` and the other ``run_*`` methods run them on arrays of exactly these shapes.
        With ``padding='same'`` and an odd total padding ``dilation * (K - 1)``, the
        plan is that of the input with one more zero row (column) on the bottom (right),
        padded by the rest on both sides: its ``geometry.x_shape`` says so.

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv2d`, for the shapes and parameters alone.

    Examples
    --------
    >>> import fastconv as fc
    >>> p = fc.conv2d_plan((8, 1, 28, 28), (32, 1, 3, 3), padding=1)
    >>> p.forward.name, p.input_grad.name, p.weight_grad.name
    ('flat', 'full_correlation', 'flat')
    >>> fc.conv2d_plan((8, 64, 28, 28), (64, 2, 3, 3), padding=1, groups=32).forward.name
    'grouped_flat'
    >>> fc.conv2d_plan((8, 64, 28, 28), (64, 2, 3, 3), stride=2, padding=1, groups=32).forward.name
    'vector'
    >>> fc.conv2d_plan((8, 16, 28, 28), (16, 16, 3, 3), padding="same", dilation=2).forward.name
    'vector'
    """
    func = "conv2d_plan"
    dt = V.float_dtype(dtype, func)
    x_shape = V.as_shape(x_shape, "x_shape", func, 4)
    w_shape = V.as_shape(w_shape, "w_shape", func, 4)
    g, _ = _conv_geometry(func, x_shape, w_shape, stride, padding, dilation, groups, "x_shape", "w_shape")
    return _plan.plan_conv2d(g, dt)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of a batch of images with a bank of filters (``torch.nn.functional.conv2d``).

    ``y[n, f, oh, ow] = b[f] + sum_{c, i, j} xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw] * w[f, c, i, j]``,
    where ``xpad`` is ``x`` zero-padded by ``padding``, ``Cg = C / groups`` and
    ``g = f // (F / groups)`` is filter ``f``'s group.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input batch.
    w : ndarray, shape (F, C / groups, KH, KW), same dtype as ``x``
        Filters.
    b : ndarray, shape (F,), optional
        Bias, added to every output position of its filter.
    stride : int or (int, int), default 1
        Step of the window, ``(sh, sw)``; must be positive.
    padding : int, (int, int), 'same' or 'valid', default 0
        Zeros added on both sides, ``(ph, pw)``, non-negative. ``'valid'`` is 0;
        ``'same'`` (stride 1 only) keeps the output the input's size: ``dh * (KH - 1)``
        zeros per axis, half on the top and the rest (one more when the total is odd) on
        the bottom, likewise for the width, as PyTorch does.
    dilation : int or (int, int), default 1
        Spacing ``(dh, dw)`` between the kernel's taps; must be positive.
    groups : int, default 1
        The channels and the filters split into this many groups (it must divide both);
        each filter sees only its group's ``C / groups`` channels. ``groups == C`` is a
        depthwise convolution.

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        ``Ho = (H + ph_top + ph_bottom - dh*(KH - 1) - 1) // sh + 1``, likewise ``Wo``.

    Raises
    ------
    TypeError
        Non-array input, a dtype other than float32/float64, mixed dtypes, or a non-integer
        ``stride``/``padding``/``dilation``/``groups``.
    ValueError
        Wrong number of dimensions, channel mismatch between ``x``, ``w`` and ``groups``,
        ``groups`` not dividing the channels or the filters, a bias of the wrong length, a
        (dilated) kernel larger than the padded input, ``stride <= 0``, ``padding < 0``,
        ``dilation <= 0``, ``padding='same'`` with a stride above 1, an unknown padding
        string, or an empty channel/spatial/filter axis.

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
    >>> fc.conv2d(x, w, padding="same")[0, 0]           # one more zero row and column at the bottom/right
    array([[ 8., 12.,  7.],
           [20., 24., 13.],
           [13., 15.,  8.]])
    >>> fc.conv2d(x, w, dilation=2)[0, 0]              # taps two apart: the four corners
    array([[16.]])
    >>> x2 = np.ones((1, 4, 3, 3))
    >>> fc.conv2d(x2, np.ones((2, 2, 1, 1)), groups=2).shape   # two groups of two channels
    (1, 2, 3, 3)
    """
    func = "conv2d"
    V.check_float_array(x, "x", func, 4, _X)
    V.check_float_array(w, "w", func, 4, _W)
    if b is not None:
        V.check_float_array(b, "b", func, 1, "(F,)")
    V.check_same_dtype(func, x=x, w=w, b=b)
    g, extra = _conv_geometry(func, x.shape, w.shape, stride, padding, dilation, groups)
    V.check_buffers(func, g, x.dtype.itemsize)
    if b is not None and b.shape[0] != g.F:
        raise ValueError(f"{func}: b must have shape ({g.F},) to match w.shape={w.shape}; got {b.shape}")
    return _plan.plan_conv2d(g, x.dtype).run_forward(_extend(x, extra), w, b)[0]


def conv2d_backward_input(dy, w, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`conv2d` with respect to its input.

    Computed as the *full* convolution of the output gradient with the kernel rotated by
    180 degrees (and its channel axes swapped): ``dy`` is dilated with ``sh - 1`` /
    ``sw - 1`` zeros between its elements when the stride is larger than one, padded
    with ``KH - 1 - ph`` / ``KW - 1 - pw`` zeros, and correlated with the rotated kernel
    at stride 1. For strides above one the dilation zeros are never multiplied: dx is
    split into its ``sh * sw`` phases, each an undilated full convolution with a sub-kernel.
    With a dilation, the kernel's taps are ``dh`` / ``dw`` apart in that correlation too
    (the gradient of a dilated convolution is a dilated correlation); with groups, each
    group's channels get the gradient of its own filters only. See ``docs/backprop.md``, section 2.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    w : ndarray, shape (F, C / groups, KH, KW), same dtype as ``dy``
        Filters of the forward pass.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)``, the shape of the forward input.
    stride, padding, dilation, groups
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

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> dy = np.ones((1, 1, 2, 2))                  # a 4x4 input, 3x3 filter: 2x2 windows
    >>> fc.conv2d_backward_input(dy, np.ones((1, 1, 3, 3)), (1, 1, 4, 4))[0, 0]
    array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]])
    >>> fc.conv2d_backward_input(np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2)), (1, 1, 3, 3), dilation=2)[0, 0]
    array([[1., 0., 1.],
           [0., 0., 0.],
           [1., 0., 1.]])
    """
    func = "conv2d_backward_input"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(w, "w", func, 4, _W)
    V.check_same_dtype(func, dy=dy, w=w)
    shape = V.as_shape(input_shape, "input_shape", func, 4)
    g, extra = _conv_geometry(func, shape, w.shape, stride, padding, dilation, groups, x_name="input_shape")
    V.check_buffers(func, g, dy.dtype.itemsize)
    V.check_dy(func, dy, g)
    return _crop(_plan.plan_conv2d(g, dy.dtype).run_input_grad(dy, w), extra)


def conv2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`conv2d` with respect to its filters.

    ``dw[f, c, i, j] = sum_{n, oh, ow} dy[n, f, oh, ow] * xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]``
    (``g`` the group of filter ``f``): the correlation of the (padded) input with the
    output gradient, whose taps are ``dh`` / ``dw`` apart with a dilation. See
    ``docs/backprop.md``, section 1.

    Parameters
    ----------
    dy : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    x : ndarray, shape (N, C, H, W), same dtype as ``dy``
        Input of the forward pass.
    weight_shape : tuple of 4 ints
        ``(F, C / groups, KH, KW)``, the shape of the filters.
    stride, padding, dilation, groups
        As given to :func:`conv2d`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv2d`; also ``ValueError`` when ``dy`` does not have the shape the
        forward pass would produce.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> fc.conv2d_backward_weight(np.ones((1, 1, 2, 2)), x, (1, 1, 3, 3))[0, 0]
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]])
    >>> fc.conv2d_backward_weight(np.ones((1, 1, 2, 2)), x, (1, 1, 2, 2), dilation=2)[0, 0]
    array([[10., 18.],
           [42., 50.]])
    """
    func = "conv2d_backward_weight"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(x, "x", func, 4, _X)
    V.check_same_dtype(func, dy=dy, x=x)
    shape = V.as_shape(weight_shape, "weight_shape", func, 4)
    g, extra = _conv_geometry(func, x.shape, shape, stride, padding, dilation, groups, w_name="weight_shape")
    V.check_buffers(func, g, dy.dtype.itemsize)
    V.check_dy(func, dy, g)
    return _plan.plan_conv2d(g, dy.dtype).run_weight_grad(dy, _extend(x, extra))


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1):
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
    w : ndarray, shape (F, C / groups, KH, KW)
        Filters of the forward pass.
    stride, padding, dilation, groups
        As given to :func:`conv2d`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (F, C / groups, KH, KW)
    db : ndarray, shape (F,)
        Returned whether or not the forward pass used a bias.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 3, 3))
    >>> dy = np.ones((1, 1, 2, 2))                  # the gradient of conv2d(x, w).sum()
    >>> dx, dw, db = fc.conv2d_backward(dy, x, w)
    >>> dx[0, 0]                                    # how many windows cover each pixel
    array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]])
    >>> dw[0, 0]                                    # each tap's sum over the windows
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]])
    >>> db
    array([4.])
    """
    func = "conv2d_backward"
    V.check_float_array(dy, "dy", func, 4, _DY)
    V.check_float_array(x, "x", func, 4, _X)
    V.check_float_array(w, "w", func, 4, _W)
    V.check_same_dtype(func, dy=dy, x=x, w=w)
    g, extra = _conv_geometry(func, x.shape, w.shape, stride, padding, dilation, groups)
    V.check_buffers(func, g, dy.dtype.itemsize)
    V.check_dy(func, dy, g)
    p = _plan.plan_conv2d(g, x.dtype)
    dy = _plan.contiguous(dy)
    return _crop(p.run_input_grad(dy, w), extra), p.run_weight_grad(dy, _extend(x, extra)), p.run_bias_grad(dy)


def max_pool2d_plan(x_shape, kernel_size, stride=None, padding=0, dtype=np.float32, *, dilation=1, ceil_mode=False):
    """The plan of a max-pooling (see :func:`conv2d_plan`): a ``fastconv.plan.PoolPlan``.

    Examples
    --------
    >>> import fastconv as fc
    >>> fc.max_pool2d_plan((8, 32, 28, 28), 2).forward.name
    'window_2x2'
    >>> fc.max_pool2d_plan((8, 32, 27, 27), 2, ceil_mode=True).forward.name
    'window_columns'
    """
    func = "max_pool2d_plan"
    dt = V.float_dtype(dtype, func)
    x_shape = V.as_shape(x_shape, "x_shape", func, 4)
    g = V.pool_geometry(func, x_shape, kernel_size, stride, padding, "x_shape", dilation, ceil_mode)
    return _plan.plan_max_pool2d(g, dt)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max-pooling that also returns the position of each maximum.

    ``y[n, c, oh, ow] = max over i < kh, j < kw of xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]``,
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
    dilation : int or (int, int), default 1
        Spacing ``(dh, dw)`` of a window's taps (PyTorch's ``dilation``).
    ceil_mode : bool, default False
        Round the output size up instead of down (PyTorch's rule): a last window may
        hang over the end of the input (it is clipped), as long as it starts inside the
        input or the leading padding.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
        ``Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1``, likewise ``Wo`` (with
        ``ceil_mode``: rounded up, minus one if the last window would start past
        ``H + ph``).
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Flat index ``h * W + w`` of each window's winner inside its ``(n, c)`` plane of
        ``x`` (PyTorch's ``return_indices=True`` convention). Ties go to the first maximum
        in row-major window order; a NaN in the window wins (value NaN, index of the last
        NaN, as PyTorch's CPU kernel).

    Raises
    ------
    TypeError, ValueError
        Non-float input, non-integer parameters, a non-bool ``ceil_mode``, wrong ndim,
        ``kernel_size``/``stride``/``dilation`` not positive, negative padding or padding
        over half the window, a window larger than the padded input (an empty output), a
        dilated window holding no input element, or an empty channel/spatial axis.

    See Also
    --------
    max_pool2d_backward : the gradient. See ``docs/backprop.md``, section 3.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(25.0).reshape(1, 1, 5, 5)
    >>> y, idx = fc.max_pool2d(x, 2, ceil_mode=True)
    >>> y[0, 0]
    array([[ 6.,  8.,  9.],
           [16., 18., 19.],
           [21., 23., 24.]])
    >>> fc.max_pool2d(x, 2, stride=1, dilation=3)[0][0, 0]
    array([[18., 19.],
           [23., 24.]])
    """
    func = "max_pool2d"
    V.check_float_array(x, "x", func, 4, _X)
    g = V.pool_geometry(func, x.shape, kernel_size, stride, padding, "x", dilation, ceil_mode)
    V.check_buffers(func, g, 8)  # the int64 indices are the larger output
    return _plan.plan_max_pool2d(g, x.dtype).run_forward(x)


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

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1., 5., 2., 0.], [3., 4., 8., 1.]]]])
    >>> y, idx = fc.max_pool2d(x, 2)
    >>> y, idx                                      # idx: the winner's flat position in its H*W plane
    (array([[[[5., 8.]]]]), array([[[[1, 6]]]]))
    >>> fc.max_pool2d_backward(np.array([[[[10., 20.]]]]), idx, x.shape)
    array([[[[ 0., 10.,  0.,  0.],
             [ 0.,  0., 20.,  0.]]]])
    """
    return _max_pool_backward("max_pool2d_backward", dy, indices, input_shape)


def _max_pool_backward(func, dy, indices, input_shape):
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
    V.check_allocation(func, "input gradient", (N, C, H, W), dy.dtype.itemsize)
    return _plan.route_max_pool2d(dy, indices, (N, C, H, W), func)


def _avg_plan(func, x_shape, dtype, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
              x_name="x"):
    g = V.pool_geometry(func, x_shape, kernel_size, stride, padding, x_name, 1, ceil_mode)
    V.check_bool(count_include_pad, "count_include_pad", func)
    if divisor_override is not None:
        divisor_override = V.as_int(divisor_override, "divisor_override", func)
        if divisor_override == 0:
            raise ValueError(f"{func}: divisor_override must not be zero (None: the window's size)")
    return _plan.plan_avg_pool2d(g, dtype, bool(count_include_pad), divisor_override)


def avg_pool2d_plan(x_shape, kernel_size, stride=None, padding=0, dtype=np.float32, *, ceil_mode=False,
                    count_include_pad=True, divisor_override=None):
    """The plan of an average pooling (see :func:`conv2d_plan`): a ``fastconv.plan.AvgPoolPlan``.

    Examples
    --------
    >>> import fastconv as fc
    >>> fc.avg_pool2d_plan((8, 32, 28, 28), 3, 2, 1).forward.name
    'ranges'
    >>> fc.avg_pool2d_plan((8, 32, 7, 7), 7).forward.name
    'global'
    """
    func = "avg_pool2d_plan"
    dt = V.float_dtype(dtype, func)
    x_shape = V.as_shape(x_shape, "x_shape", func, 4)
    return _avg_plan(func, x_shape, dt, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                     "x_shape")


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling (PyTorch's ``F.avg_pool2d``).

    ``y[n, c, oh, ow] = sum of the window xpad[n, c, oh*sh : oh*sh+kh, ow*sw : ow*sw+kw] / divisor``,
    where ``xpad`` is ``x`` zero-padded.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
        Window ``(kh, kw)``.
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int), default 0
        Zero padding on both sides; at most half the window.
    ceil_mode : bool, default False
        Round the output size up (as :func:`max_pool2d`); a last window that hangs over
        the end of the padded input averages what it covers.
    count_include_pad : bool, default True
        The divisor counts the padding a window covers (not what ``ceil_mode`` adds past
        it); False: only the input elements it covers.
    divisor_override : int, optional
        Divide every window's sum by this instead (not zero).

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
        ``Ho = (H + 2*ph - kh) // sh + 1`` (rounded up with ``ceil_mode``), likewise ``Wo``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`max_pool2d`; also a non-bool ``count_include_pad`` or a zero or
        non-integer ``divisor_override``.

    See Also
    --------
    avg_pool2d_backward, adaptive_avg_pool2d

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> fc.avg_pool2d(x, 2)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    >>> fc.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)[0, 0]
    array([[ 2.5,  4. ],
           [ 8.5, 10. ]])
    """
    func = "avg_pool2d"
    V.check_float_array(x, "x", func, 4, _X)
    return _avg_plan(func, x.shape, x.dtype, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override).run_forward(x)


def _check_pool_dy(func, dy, y_shape):
    if dy.shape != tuple(y_shape):
        raise ValueError(f"{func}: dy must have shape {tuple(y_shape)} (N, C, Ho, Wo) for this pooling; got {dy.shape}")


def avg_pool2d_backward(dy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each ``dy`` element divided by its window's divisor and spread over the window.

    ``dx[n, c, h, w] = sum over the windows that hold (h, w) of dy[n, c, oh, ow] / divisor(oh, ow)``;
    inputs in no window get zero.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), float32 or float64
        Gradient with respect to the pooled output.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)``, the shape of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As given to :func:`avg_pool2d`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``, dtype of ``dy``

    Raises
    ------
    TypeError, ValueError
        As for :func:`avg_pool2d`, and a ``dy`` whose shape is not the forward output's.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.avg_pool2d_backward(np.ones((1, 1, 1, 2)), (1, 1, 2, 4), 2)[0, 0]
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    func = "avg_pool2d_backward"
    V.check_float_array(dy, "dy", func, 4, "(N, C, Ho, Wo)")
    shape = V.as_shape(input_shape, "input_shape", func, 4)
    plan = _avg_plan(func, shape, dy.dtype, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, "input_shape")
    _check_pool_dy(func, dy, plan.windows.y_shape)
    return plan.run_backward(dy)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling to ``output_size`` (PyTorch's ``F.adaptive_avg_pool2d``).

    Output row ``oh`` averages input rows ``floor(oh * H / Ho)`` to ``ceil((oh + 1) * H / Ho)``
    (exclusive), likewise the columns: windows of (nearly) equal size that cover the input,
    overlapping by a row where ``H`` is not a multiple of ``Ho``. ``output_size=1`` is the
    global average pool (the ResNet head), run by a strategy of its own.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    output_size : int or (int or None, int or None)
        ``(Ho, Wo)``; a None entry keeps the input's size on that axis.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)

    Raises
    ------
    TypeError, ValueError
        Non-float input, wrong ndim, an empty channel/spatial axis, or an ``output_size``
        that is not an int or pair of non-negative ints (or None entries).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(10.0).reshape(1, 1, 2, 5)
    >>> fc.adaptive_avg_pool2d(x, (1, 2))[0, 0]
    array([[3.5, 5.5]])
    >>> fc.adaptive_avg_pool2d(x, 1)[0, 0]
    array([[4.5]])
    """
    func = "adaptive_avg_pool2d"
    V.check_float_array(x, "x", func, 4, _X)
    return _adaptive_plan(func, "avg", x.shape, output_size, x.dtype).run_forward(x)


def _adaptive_plan(func, kind, x_shape, output_size, dtype, x_name="x"):
    key = (func, kind, tuple(x_shape), output_size, np.dtype(dtype), x_name)
    try:
        return _ADAPTIVE_PLANS[key]
    except (KeyError, TypeError):  # not seen yet, or an output_size that is not hashable (a list)
        pass
    plan = _checked_adaptive_plan(func, kind, x_shape, output_size, dtype, x_name)
    if len(_ADAPTIVE_PLANS) < 256:
        try:
            _ADAPTIVE_PLANS[key] = plan
        except TypeError:
            pass
    return plan


#: Plans of adaptive pools whose arguments were checked, by their arguments: the global average
#: pool of a ResNet head takes microseconds, and the checks would be a fifth of it.
_ADAPTIVE_PLANS = {}


def _checked_adaptive_plan(func, kind, x_shape, output_size, dtype, x_name):
    V.check_nonempty(func, x_name, tuple(x_shape), (1, 2, 3), _X)
    out = V.adaptive_output_size(func, output_size, x_shape)
    # the output (and max-pooling's int64 indices): a size too large to allocate is a named error, not NumPy's
    V.check_allocation(func, "output", tuple(x_shape[:2]) + tuple(out), np.dtype(dtype).itemsize + 8 * (kind == "max"))
    plan = _plan.plan_adaptive_avg_pool2d if kind == "avg" else _plan.plan_adaptive_max_pool2d
    return plan(tuple(x_shape), out, dtype)


def adaptive_avg_pool2d_backward(dy, input_shape):
    """Gradient of :func:`adaptive_avg_pool2d` (the output size is ``dy``'s).

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), float32 or float64
    input_shape : tuple of 4 ints
        ``(N, C, H, W)``, the shape of the forward input.

    Returns
    -------
    dx : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.adaptive_avg_pool2d_backward(np.full((1, 1, 1, 1), 4.0), (1, 1, 2, 2))[0, 0]
    array([[1., 1.],
           [1., 1.]])
    """
    func = "adaptive_avg_pool2d_backward"
    V.check_float_array(dy, "dy", func, 4, "(N, C, Ho, Wo)")
    shape = V.as_shape(input_shape, "input_shape", func, 4)
    if shape[:2] != dy.shape[:2]:
        raise ValueError(f"{func}: input_shape {shape} must share (N, C) with dy.shape={dy.shape}")
    V.check_allocation(func, "input gradient", shape, dy.dtype.itemsize)
    return _adaptive_plan(func, "avg", shape, dy.shape[2:], dy.dtype, "input_shape").run_backward(dy)


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """Adaptive max-pooling to ``output_size`` (PyTorch's ``F.adaptive_max_pool2d``).

    The windows of :func:`adaptive_avg_pool2d`; the winner rule of :func:`max_pool2d`
    (ties to the first maximum, NaN wins).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    output_size : int or (int or None, int or None)
        ``(Ho, Wo)``; a None entry keeps the input's size.
    return_indices : bool, default False
        Also return the winners' flat indices ``h * W + w`` (what
        :func:`adaptive_max_pool2d_backward` takes).

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Only with ``return_indices=True``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`adaptive_avg_pool2d`; a non-bool ``return_indices``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(10.0).reshape(1, 1, 2, 5)
    >>> y, idx = fc.adaptive_max_pool2d(x, (1, 2), return_indices=True)
    >>> y[0, 0], idx[0, 0]
    (array([[7., 9.]]), array([[7, 9]]))
    """
    func = "adaptive_max_pool2d"
    V.check_float_array(x, "x", func, 4, _X)
    V.check_bool(return_indices, "return_indices", func)
    y, indices = _adaptive_plan(func, "max", x.shape, output_size, x.dtype).run_forward(x)
    return (y, indices) if return_indices else y


def adaptive_max_pool2d_backward(dy, indices, input_shape):
    """Gradient of :func:`adaptive_max_pool2d`: each ``dy`` element routed to its window's winner.

    The routing of :func:`max_pool2d_backward`, under this name.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), float32 or float64
    indices : ndarray of integers, shape (N, C, Ho, Wo)
        As returned by ``adaptive_max_pool2d(..., return_indices=True)``.
    input_shape : tuple of 4 ints

    Returns
    -------
    dx : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(10.0).reshape(1, 1, 2, 5)
    >>> y, idx = fc.adaptive_max_pool2d(x, (1, 2), return_indices=True)
    >>> fc.adaptive_max_pool2d_backward(np.ones_like(y), idx, x.shape)[0, 0]
    array([[0., 0., 0., 0., 0.],
           [0., 0., 1., 0., 1.]])
    """
    return _max_pool_backward("adaptive_max_pool2d_backward", dy, indices, input_shape)


def relu(x):
    """Rectified linear unit, ``max(x, 0)`` elementwise, for an array of any shape.

    NaN stays NaN, as in PyTorch.

    Parameters
    ----------
    x : ndarray, float32 or float64

    Returns
    -------
    ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    """
    V.check_any_float_array(x, "x", "relu")
    return _plan.relu_forward(x)


def relu_backward(dy, x):
    """Gradient of :func:`relu`: ``dy`` where ``x > 0`` (or NaN), else 0.

    The gradient is blocked where ``x <= 0``, so a NaN input lets it through (PyTorch's rule).

    Parameters
    ----------
    dy : ndarray
        Gradient with respect to the output; shape and dtype of ``x``.
    x : ndarray, float32 or float64
        Input of the forward pass.

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.relu_backward(np.ones(3), np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 1.])
    """
    func = "relu_backward"
    V.check_any_float_array(x, "x", func)
    V.check_like(func, "dy", dy, "x", x)
    return _plan.relu_backward(dy, x)


def _check_linear(func, x, weight):
    V.check_any_float_array(x, "x", func)
    V.check_float_array(weight, "weight", func, 2, "(out_features, in_features)")
    V.check_same_dtype(func, x=x, weight=weight)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{func}: x must have shape (*, {weight.shape[1]}) to match weight.shape={weight.shape}; "
                         f"got {x.shape}")


def linear(x, weight, bias=None):
    """Affine map over the last axis, ``x @ weight.T + bias`` (PyTorch's ``F.linear``).

    Parameters
    ----------
    x : ndarray, shape ``(*, in_features)``, float32 or float64
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    ndarray, shape ``(*, out_features)``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.linear(np.ones((2, 3)), np.arange(6.0).reshape(2, 3), np.array([0.5, -0.5]))
    array([[ 3.5, 11.5],
           [ 3.5, 11.5]])
    """
    func = "linear"
    _check_linear(func, x, weight)
    if bias is not None:
        V.check_float_array(bias, "bias", func, 1, "(out_features,)")
        V.check_same_dtype(func, x=x, bias=bias)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{func}: bias must have shape ({weight.shape[0]},) to match "
                             f"weight.shape={weight.shape}; got {bias.shape}")
    out = _plan.linear_forward(x.reshape(-1, weight.shape[1]), weight, bias)
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def linear_backward(dy, x, weight):
    """All three gradients of :func:`linear`: ``(dx, dweight, dbias)``.

    ``dx = dy @ weight``, ``dweight = dy.T @ x`` and ``dbias = dy.sum(0)``, with the leading
    axes of ``x`` and ``dy`` flattened.

    Parameters
    ----------
    dy : ndarray, shape ``(*, out_features)``
    x : ndarray, shape ``(*, in_features)``
        Input of the forward pass.
    weight : ndarray, shape (out_features, in_features)

    Returns
    -------
    dx : ndarray, shape of ``x``
    dweight : ndarray, shape of ``weight``
    dbias : ndarray, shape (out_features,)

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[1.0, 2.0]])
    >>> weight = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> dx, dweight, dbias = fc.linear_backward(np.array([[1.0, 0.0, 2.0]]), x, weight)
    >>> dx, dbias
    (array([[3., 2.]]), array([1., 0., 2.]))
    >>> dweight
    array([[1., 2.],
           [0., 0.],
           [2., 4.]])
    """
    func = "linear_backward"
    _check_linear(func, x, weight)
    V.check_any_float_array(dy, "dy", func)
    V.check_same_dtype(func, dy=dy, x=x)
    expected = x.shape[:-1] + (weight.shape[0],)
    if dy.shape != expected:
        raise ValueError(f"{func}: dy must have shape {expected} for x.shape={x.shape} and "
                         f"weight.shape={weight.shape}; got {dy.shape}")
    dx2, dw, db = _plan.linear_backward(dy.reshape(-1, weight.shape[0]), x.reshape(-1, weight.shape[1]), weight)
    return dx2.reshape(x.shape), dw, db


def matmul(a, b):
    """The matrix product ``a @ b`` of two 2-D float arrays, on fastconv's threads instead of BLAS.

    Between fastconv's kernels, NumPy's ``@`` hands the cores to OpenBLAS, whose threads keep
    spinning after the product and slow the next fastconv kernel (a cs231n ``Solver`` loop ran
    at half speed). This runs the product on fastconv's own thread pool. (For products you
    keep in NumPy, ``threadpoolctl.threadpool_limits(1, "blas")`` stops the spinning.)

    Parameters
    ----------
    a : ndarray, shape (M, K), float32 or float64
    b : ndarray, shape (K, N), same dtype

    Returns
    -------
    ndarray, shape (M, N)

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([[1., 2.],
           [3., 4.]])
    """
    func = "matmul"
    V.check_float_array(a, "a", func, 2, "(M, K)")
    V.check_float_array(b, "b", func, 2, "(K, N)")
    V.check_same_dtype(func, a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{func}: a.shape={a.shape} and b.shape={b.shape} do not chain (a's columns must be b's rows)")
    return _plan.matmul(a, b)


def _check_per_channel(func, x, **vectors):
    """Check that every non-None vector is a 1-D array of x's dtype with one entry per channel of ``x``."""
    C = x.shape[1]
    for name, v in vectors.items():
        if v is None:
            continue
        V.check_float_array(v, name, func, 1, "(C,)")
        V.check_same_dtype(func, x=x, **{name: v})
        if v.shape[0] != C:
            raise ValueError(f"{func}: {name} must have shape ({C},), one entry per channel of x.shape={x.shape}; "
                             f"got {v.shape}")


def _check_batch_norm_input(func, x):
    V.check_any_float_array(x, "x", func)
    if x.ndim < 2:
        raise ValueError(f"{func}: x must be (N, C), (N, C, L) or (N, C, H, W) with at least 2 dims; "
                         f"got shape {x.shape}")


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               return_stats=False):
    """Batch normalisation over the channel axis 1 (PyTorch's ``F.batch_norm``).

    ``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]``. In training the
    statistics are the batch's (over every axis but 1, the variance biased); otherwise
    they are ``running_mean`` and ``running_var``. Statistics are computed in float64 by
    one compiled pass (blockwise means and deviations merged by Chan's formula), so a
    float32 activation with a large mean loses no precision.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W), float32 or float64
    running_mean, running_var : ndarray, shape (C,), dtype of ``x``, or None
        Required when ``training=False``. In training, when given, they are updated in
        place: ``running = (1 - momentum) * running + momentum * batch``, with the
        *unbiased* batch variance (as PyTorch). An empty batch leaves them unchanged.
    weight, bias : ndarray, shape (C,), optional
        The affine scale and shift (default 1 and 0).
    training : bool, default False
    momentum : float, default 0.1
        A number; the cumulative average (PyTorch's ``momentum=None``) is
        ``momentum = 1 / num_batches_tracked``, which :class:`fastconv.nn.BatchNorm2d` does.
    eps : float, default 1e-5
    return_stats : bool, default False
        Also return the statistics used, what :func:`batch_norm_backward` takes.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray, shape (C,), float64
        Only with ``return_stats``: the mean and ``1 / sqrt(var + eps)`` that normalised
        ``x`` (kept in float64: a float32 mean of 1000 would be off by up to 3e-5).

    Raises
    ------
    ValueError
        A training batch with one value per channel (PyTorch's message), a vector whose
        length is not the channel count, no running statistics when ``training=False``.
    TypeError
        Non-float arrays, mixed dtypes, a non-number ``momentum`` or ``eps``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> rm, rv = np.zeros(2), np.ones(2)
    >>> fc.batch_norm(x, rm, rv, training=True, eps=0.0)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> rm, rv                                  # 0.9 * old + 0.1 * batch (unbiased variance)
    (array([0.2, 2. ]), array([ 1.1, 20.9]))
    """
    func = "batch_norm"
    _check_batch_norm_input(func, x)
    _check_per_channel(func, x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    training = _check_flag(func, "training", training)
    return_stats = _check_flag(func, "return_stats", return_stats)
    momentum = V.check_real(func, "momentum", momentum)
    eps = V.check_real(func, "eps", eps, minimum=0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{func}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{func}: running_mean and running_var must be given when training=False")
    if training:
        V.check_batch_size(func, x.shape)
        for name, v in (("running_mean", running_mean), ("running_var", running_var)):
            if v is not None and not v.flags.writeable:
                raise ValueError(f"{func}: {name} must be writeable: it is updated in place when training")
    out, mean, invstd = _plan.batch_norm_forward(_plan.channel_view(x), running_mean, running_var, weight, bias,
                                                 training, momentum, eps)
    out = out.reshape(x.shape)
    if return_stats:
        return out, mean, invstd
    return out


def _check_flag(func, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be True or False; got {value!r}")
    return bool(value)


def batch_norm_backward(dy, x, mean, invstd, weight=None, training=True):
    """Gradients of :func:`batch_norm`: ``(dx, dweight, dbias)``.

    Two compiled passes: the per-channel sums of ``dy`` and ``dy * (x - mean)``, then ``dx``.

    Parameters
    ----------
    dy : ndarray, shape and dtype of ``x``
        Gradient with respect to the output.
    x : ndarray
        Input of the forward pass.
    mean, invstd : ndarray, shape (C,), float64 or the dtype of ``x``
        The statistics the forward pass used (``batch_norm(..., return_stats=True)``); in
        evaluation mode these are ``running_mean`` and ``1 / sqrt(running_var + eps)``.
    weight : ndarray, shape (C,), optional
        The forward's ``weight`` (default 1).
    training : bool, default True
        Whether the forward used the batch's statistics (then they depend on ``x`` and
        their gradient enters ``dx``) or the running ones (constants).

    Returns
    -------
    dx : ndarray, shape of ``x``
    dweight, dbias : ndarray, shape (C,)
        The gradients with respect to the affine scale and shift (computed also when the
        forward had none: with respect to a scale of 1 and a shift of 0).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[1.0], [3.0]])
    >>> y, mean, invstd = fc.batch_norm(x, None, None, training=True, eps=0.0, return_stats=True)
    >>> dx, dw, db = fc.batch_norm_backward(np.array([[1.0], [0.0]]), x, mean, invstd)
    >>> dx.ravel(), dw, db
    (array([0., 0.]), array([-1.]), array([1.]))
    """
    func = "batch_norm_backward"
    _check_batch_norm_input(func, x)
    V.check_like(func, "dy", dy, "x", x)
    _check_per_channel(func, x, weight=weight)
    for name, v in (("mean", mean), ("invstd", invstd)):
        V.check_float_array(v, name, func, 1, "(C,)")
        if v.dtype not in (x.dtype, np.dtype(np.float64)) or v.shape[0] != x.shape[1]:
            raise ValueError(f"{func}: {name} must have shape ({x.shape[1]},) (one entry per channel of "
                             f"x.shape={x.shape}) and dtype float64 or {x.dtype}; got {v.shape}, {v.dtype}")
    training = _check_flag(func, "training", training)
    if training:
        V.check_batch_size(func, x.shape)
    dx, dw, db = _plan.batch_norm_backward(_plan.channel_view(dy), _plan.channel_view(x), mean, invstd, weight,
                                           training)
    return dx.reshape(x.shape), dw, db


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

    Examples
    --------
    >>> import fastconv as fc
    >>> previous = fc.get_num_threads()
    >>> fc.set_num_threads(1)
    >>> fc.get_num_threads()
    1
    >>> fc.set_num_threads(previous)
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


# ---------------------------------------------------------------------------------------
# Activations (PyTorch's torch.nn.functional names and defaults)
# ---------------------------------------------------------------------------------------
#
# Every ``*_backward(dy, x, ...)`` takes the *input* of the forward pass, as relu_backward.


def _real(value, name, func):
    """``value`` as a Python float; ``TypeError`` unless it is a real number (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} must be a real number; got {value!r} of type {type(value).__name__}")
    return float(value)


def _pointwise(op, func, x, a=0.0, strategy="pointwise", dy=None):
    V.check_any_float_array(x, "x", func)
    if dy is None:
        return _plan.pointwise_forward(op, x, a, strategy)
    V.check_like(func, "dy", dy, "x", x)
    return _plan.pointwise_backward(op, dy, x, a, strategy)


def leaky_relu(x, negative_slope=0.01):
    """Leaky ReLU, ``x if x > 0 else negative_slope * x`` elementwise (PyTorch's ``F.leaky_relu``).

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    negative_slope : float, default 0.01

    Returns
    -------
    ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.leaky_relu(np.array([-2.0, 0.0, 3.0]), 0.1)
    array([-0.2,  0. ,  3. ])
    """
    return _pointwise("leaky_relu", "leaky_relu", x, _real(negative_slope, "negative_slope", "leaky_relu"))


def leaky_relu_backward(dy, x, negative_slope=0.01):
    """Gradient of :func:`leaky_relu`: ``dy`` where ``x > 0``, else ``negative_slope * dy`` (NaN too, as PyTorch).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.leaky_relu_backward(np.ones(2), np.array([-2.0, 3.0]), 0.1)
    array([0.1, 1. ])
    """
    func = "leaky_relu_backward"
    return _pointwise("leaky_relu", func, x, _real(negative_slope, "negative_slope", func), dy=dy)


def elu(x, alpha=1.0):
    """Exponential linear unit, ``x if x > 0 else alpha * (exp(x) - 1)`` (PyTorch's ``F.elu``).

    ``exp(x) - 1`` is computed as ``expm1``: exact near 0, ``-alpha`` for large negative ``x``.

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    alpha : float, default 1.0

    Returns
    -------
    ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.elu(np.array([-1000.0, 0.0, 2.0]))
    array([-1.,  0.,  2.])
    """
    return _pointwise("elu", "elu", x, _real(alpha, "alpha", "elu"))


def elu_backward(dy, x, alpha=1.0):
    """Gradient of :func:`elu`: ``dy`` where ``x > 0``, else ``dy * alpha * exp(x)``; NaN where ``x`` is NaN.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.elu_backward(np.ones(2), np.array([0.0, 2.0]))
    array([1., 1.])
    """
    return _pointwise("elu", "elu_backward", x, _real(alpha, "alpha", "elu_backward"), dy=dy)


def _gelu_strategy(approximate, func):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{func}: approximate must be 'none' or 'tanh'; got {approximate!r}")
    return "erf" if approximate == "none" else "tanh"


def gelu(x, approximate="none"):
    """Gaussian error linear unit (PyTorch's ``F.gelu``).

    ``approximate='none'``: ``x * Phi(x)`` with the normal distribution function
    ``Phi(x) = erfc(-x / sqrt(2)) / 2`` (the same function as PyTorch's ``(1 + erf(x / sqrt 2)) / 2``,
    without its cancellation for negative ``x``). ``approximate='tanh'``:
    ``x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2``.

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    approximate : {'none', 'tanh'}, default 'none'

    Returns
    -------
    ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.gelu(np.array([-1.0, 0.0, 1.0])).round(6)
    array([-0.158655,  0.      ,  0.841345])
    """
    return _pointwise("gelu", "gelu", x, 0.0, _gelu_strategy(approximate, "gelu"))


def gelu_backward(dy, x, approximate="none"):
    """Gradient of :func:`gelu`: ``dy * (Phi(x) + x * phi(x))`` (or the derivative of the tanh form).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.gelu_backward(np.ones(1), np.zeros(1))
    array([0.5])
    """
    return _pointwise("gelu", "gelu_backward", x, 0.0, _gelu_strategy(approximate, "gelu_backward"), dy=dy)


def silu(x):
    """SiLU (swish), ``x * sigmoid(x)`` elementwise (PyTorch's ``F.silu``).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.silu(np.array([-1000.0, 0.0, 1000.0]))
    array([  -0.,    0., 1000.])
    """
    return _pointwise("silu", "silu", x)


def silu_backward(dy, x):
    """Gradient of :func:`silu`: ``dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.silu_backward(np.ones(1), np.zeros(1))
    array([0.5])
    """
    return _pointwise("silu", "silu_backward", x, dy=dy)


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))`` elementwise, through ``exp(-|x|)``: never overflows.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """
    return _pointwise("sigmoid", "sigmoid", x)


def sigmoid_backward(dy, x):
    """Gradient of :func:`sigmoid`: ``dy * sigmoid(x) * sigmoid(-x)`` (``x``: the forward input).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.sigmoid_backward(np.ones(1), np.zeros(1))
    array([0.25])
    """
    return _pointwise("sigmoid", "sigmoid_backward", x, dy=dy)


def tanh(x):
    """Hyperbolic tangent elementwise.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.tanh(np.array([-1000.0, 0.0]))
    array([-1.,  0.])
    """
    return _pointwise("tanh", "tanh", x)


def tanh_backward(dy, x):
    """Gradient of :func:`tanh`: ``dy * (1 - tanh(x)^2)`` (``x``: the forward input).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.tanh_backward(np.ones(1), np.zeros(1))
    array([1.])
    """
    return _pointwise("tanh", "tanh_backward", x, dy=dy)


def _softmax(func, x, dim, log, dy=None):
    V.check_any_float_array(x, "x", func)
    d = V.softmax_dim(dim, x.shape, func)
    x1 = x.reshape(x.shape or (1,))
    y = _plan.softmax_forward(x1, d, log)
    if dy is None:
        return y.reshape(x.shape)
    V.check_like(func, "dy", dy, "x", x)
    return _plan.softmax_backward(dy.reshape(x1.shape), y, d, log).reshape(x.shape)


def softmax(x, dim=None):
    """Softmax over axis ``dim``: ``exp(x - max) / sum(exp(x - max))`` (PyTorch's ``F.softmax``).

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    dim : int
        The axis, in ``[-x.ndim, x.ndim)``. ``None`` picks PyTorch's implicit axis with its warning.

    Returns
    -------
    ndarray, shape and dtype of ``x``
        A NaN (or ``+inf``) in a slice makes the whole slice NaN, as in PyTorch.

    Raises
    ------
    TypeError
        Non-float ``x`` or a non-integer ``dim``.
    ValueError
        ``dim`` out of range (the message names the shape).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]), dim=1)
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    return _softmax("softmax", x, dim, False)


def softmax_backward(dy, x, dim):
    """Gradient of :func:`softmax`: ``y * (dy - sum(dy * y, dim))`` with ``y = softmax(x, dim)``.

    ``x`` is the forward *input* (the softmax is computed again); :class:`fastconv.nn.Softmax`
    keeps its output instead.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.softmax_backward(np.array([1.0, 0.0]), np.zeros(2), dim=0)
    array([ 0.25, -0.25])
    """
    return _softmax("softmax_backward", x, dim, False, dy)


def log_softmax(x, dim=None):
    """Log-softmax over axis ``dim``: ``x - max - log(sum(exp(x - max)))`` (PyTorch's ``F.log_softmax``).

    Finite for finite ``x`` however large (``log_softmax([0, -1e30])`` is ``[0, -1e30]``).
    Parameters, errors and NaN as :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.log_softmax(np.array([0.0, -1000.0]), dim=0)
    array([    0., -1000.])
    """
    return _softmax("log_softmax", x, dim, True)


def log_softmax_backward(dy, x, dim):
    """Gradient of :func:`log_softmax`: ``dy - softmax(x) * sum(dy, dim)`` (``x``: the forward input).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.log_softmax_backward(np.array([1.0, 0.0]), np.zeros(2), dim=0)
    array([ 0.5, -0.5])
    """
    return _softmax("log_softmax_backward", x, dim, True, dy)


# ---------------------------------------------------------------------------------------
# Losses (PyTorch's torch.nn.functional names, argument orders and defaults)
# ---------------------------------------------------------------------------------------
#
# Computed in float64 with NumPy (losses are small next to the layers before them). With
# reduction 'mean' or 'sum' a loss is a Python float; with 'none' an array in the input's
# dtype. ``size_average`` and ``reduce`` are PyTorch's deprecated spellings of ``reduction``.
# Every ``*_backward(dout, input, target, ...)`` returns the gradient with respect to
# ``input`` for the gradient ``dout`` of the objective with respect to the loss: a real
# scalar for 'mean'/'sum', a scalar or an array of the loss's shape for 'none'.


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean squared error, ``(input - target)**2`` reduced (PyTorch's ``F.mse_loss``).

    Parameters
    ----------
    input, target : ndarray, one shape, one float dtype
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    float, or ndarray of input's shape and dtype for ``reduction='none'``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    2.5
    """
    func = "mse_loss"
    return _loss.mse_parts(func, input, target, _loss.legacy_reduction(size_average, reduce, reduction, func))[0]


def mse_loss_backward(dout, input, target, reduction="mean"):
    """Gradient of :func:`mse_loss` with respect to ``input``: ``2 (input - target) dout`` (``/ size`` for the mean).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.mse_loss_backward(1.0, np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    array([1., 2.])
    """
    func = "mse_loss_backward"
    return _loss.mse_parts(func, input, target, _loss.check_reduction(reduction, func))[1](dout)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean absolute error, ``|input - target|`` reduced (PyTorch's ``F.l1_loss``).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.l1_loss(np.array([1.0, -3.0]), np.zeros(2), reduction="sum")
    4.0
    """
    func = "l1_loss"
    return _loss.l1_parts(func, input, target, _loss.legacy_reduction(size_average, reduce, reduction, func))[0]


def l1_loss_backward(dout, input, target, reduction="mean"):
    """Gradient of :func:`l1_loss`: ``sign(input - target) dout``, 0 where they are equal or NaN (as PyTorch).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.l1_loss_backward(1.0, np.array([1.0, -3.0, 0.0]), np.zeros(3), reduction="sum")
    array([ 1., -1.,  0.])
    """
    func = "l1_loss_backward"
    return _loss.l1_parts(func, input, target, _loss.check_reduction(reduction, func))[1](dout)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood of class indices, ``-weight[t] * input[n, t]`` (PyTorch's ``F.nll_loss``).

    Parameters
    ----------
    input : ndarray, shape (N, C), (N, C, d1, ...) or (C,), float32 or float64
        Log-probabilities (e.g. :func:`log_softmax` over axis 1).
    target : ndarray of integers, shape (N,), (N, d1, ...) or ()
        Class indices in ``[0, C)``, or ``ignore_index``.
    weight : ndarray, shape (C,), optional
        Per-class weights (input's dtype).
    ignore_index : int, default -100
        Targets equal to it add nothing to the loss nor to the mean's denominator.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'mean'`` divides by the sum of the counted targets' weights (their count without ``weight``).

    Returns
    -------
    float, or ndarray of target's shape for ``reduction='none'`` (0 where ignored)

    Raises
    ------
    TypeError
        Non-float input or weight, non-integer target.
    ValueError
        Shapes that do not match, or a target outside ``[0, C)`` that is not ``ignore_index``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> logp = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    >>> round(fc.nll_loss(logp, np.array([0, 1])), 6)
    0.490415
    """
    func = "nll_loss"
    return _loss.class_loss_parts(func, input, target, weight, ignore_index,
                                  _loss.legacy_reduction(size_average, reduce, reduction, func), 0.0, False)[0]


def nll_loss_backward(dout, input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Gradient of :func:`nll_loss` with respect to ``input``: ``-weight[t] * dout`` at each target, else 0.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.nll_loss_backward(1.0, np.zeros((2, 2)), np.array([0, 1]))
    array([[-0.5,  0. ],
           [ 0. , -0.5]])
    """
    func = "nll_loss_backward"
    return _loss.class_loss_parts(func, input, target, weight, ignore_index,
                                  _loss.check_reduction(reduction, func), 0.0, False)[1](dout)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy of logits against class indices or class probabilities (PyTorch's ``F.cross_entropy``).

    With class indices: ``nll_loss(log_softmax(input, 1), target, weight, ignore_index)``; with
    ``label_smoothing = e`` the target distribution is ``(1 - e) onehot(t) + e / C``, so the loss is
    ``(1 - e) * nll + e / C * sum_c -weight[c] * log_softmax(input)[c]`` (reduced as the NLL part, over
    the same counted targets). With a float ``target`` of input's shape (class probabilities ``q``):
    ``-sum_c weight[c] q_c log_softmax(input)_c``, smoothed likewise, the mean taken over the samples.
    The log-softmax is max-shifted in float64: finite for any finite logits.

    Parameters
    ----------
    input : ndarray, shape (N, C), (N, C, d1, ...) or (C,), float32 or float64
        Logits.
    target : ndarray
        Integer class indices of shape (N,), (N, d1, ...) or (), or class probabilities of input's shape.
    weight : ndarray, shape (C,), optional
    ignore_index : int, default -100
        Class-index targets equal to it add nothing (nor to the mean's denominator).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    label_smoothing : float in [0, 1], default 0.0

    Returns
    -------
    float, or ndarray of the per-sample shape for ``reduction='none'``

    Raises
    ------
    TypeError, ValueError
        As :func:`nll_loss`; also a ``label_smoothing`` outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> round(fc.cross_entropy(np.array([[2.0, 0.0, 0.0]]), np.array([0])), 6)
    0.239545
    >>> round(fc.cross_entropy(np.array([[2.0, 0.0, 0.0]]), np.array([0]), label_smoothing=0.1), 6)
    0.372878
    """
    func = "cross_entropy"
    return _loss.class_loss_parts(func, input, target, weight, ignore_index,
                                  _loss.legacy_reduction(size_average, reduce, reduction, func),
                                  _loss.check_label_smoothing(label_smoothing, func), True)[0]


def cross_entropy_backward(dout, input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Gradient of :func:`cross_entropy` with respect to the logits: ``(softmax(input) - onehot(t)) * dout``
    (``/ N`` for the mean) without weights or smoothing; in general ``softmax * sum(a) - a`` for the
    weighted, smoothed target ``a``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.cross_entropy_backward(1.0, np.zeros((1, 2)), np.array([1]))
    array([[ 0.5, -0.5]])
    """
    func = "cross_entropy_backward"
    return _loss.class_loss_parts(func, input, target, weight, ignore_index, _loss.check_reduction(reduction, func),
                                  _loss.check_label_smoothing(label_smoothing, func), True)[1](dout)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid binary cross-entropy of logits (PyTorch's ``F.binary_cross_entropy_with_logits``).

    ``-weight * (pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))``, computed as
    ``(1 - t) x + (1 + (pos_weight - 1) t) * (log1p(exp(-|x|)) + max(-x, 0))``: exact for logits of any size.

    Parameters
    ----------
    input : ndarray, float32 or float64, any shape
        Logits.
    target : ndarray, input's shape and dtype
        Targets, usually in ``[0, 1]``.
    weight : ndarray, optional
        Broadcastable to input's shape: a weight per element.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    pos_weight : ndarray, optional
        Broadcastable to input's shape (usually ``(C,)`` for the last axis): the positive targets' weight.

    Returns
    -------
    float, or ndarray of input's shape for ``reduction='none'``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.binary_cross_entropy_with_logits(np.array([1000.0, -1000.0]), np.array([1.0, 0.0]))
    0.0
    """
    func = "binary_cross_entropy_with_logits"
    return _loss.bce_with_logits_parts(func, input, target, weight,
                                       _loss.legacy_reduction(size_average, reduce, reduction, func), pos_weight)[0]


def binary_cross_entropy_with_logits_backward(dout, input, target, weight=None, reduction="mean", pos_weight=None):
    """Gradient of :func:`binary_cross_entropy_with_logits` with respect to ``input``:
    ``weight * ((1 - t) - (1 + (pos_weight - 1) t) sigmoid(-x)) * dout`` (``sigmoid(x) - t`` without weights).

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.binary_cross_entropy_with_logits_backward(1.0, np.zeros(2), np.array([1.0, 0.0]))
    array([-0.25,  0.25])
    """
    func = "binary_cross_entropy_with_logits_backward"
    return _loss.bce_with_logits_parts(func, input, target, weight, _loss.check_reduction(reduction, func),
                                       pos_weight)[1](dout)


# ---------------------------------------------------------------------------------------
# Transposed convolution: the convolution's passes with the roles of x and y swapped
# ---------------------------------------------------------------------------------------

_WT = V.WT_LAYOUT


def conv_transpose_plan(func, x_shape, w_shape, dtype, stride, padding, output_padding, groups, dilation,
                        x_name="x", w_name="w"):
    """The :class:`~fastconv.plan.ConvPlan` of the convolution whose input gradient this transposed convolution is.

    Its ``geometry.x_shape`` is the transposed convolution's output, ``geometry.y_shape`` its
    input (extended by zero rows when ``output_padding >= stride``, see
    :func:`fastconv._validation.conv_transpose_geometry`).
    """
    g = V.conv_transpose_geometry(func, x_shape, w_shape, stride, padding, output_padding, groups, dilation,
                                  x_name, w_name)
    V.check_buffers(func, g, np.dtype(dtype).itemsize)
    return _plan.plan_conv2d(g, dtype)


def _as_conv_output(plan, a):
    """``a`` (the transposed convolution's input or its gradient) as the convolution's output gradient."""
    shape = plan.geometry.y_shape
    if a.shape == shape:
        return a
    out = np.zeros(shape, dtype=a.dtype)  # output_padding >= stride: rows no input pixel reaches
    out[:, :, : a.shape[2], : a.shape[3]] = a
    return out


def transposed_forward(plan, x, w, b=None):
    """The transposed convolution of ``x``: the input gradient of ``plan``'s convolution, plus the bias."""
    return plan.run_input_grad(_as_conv_output(plan, x), w, b)


def transposed_input_grad(plan, dy, w, input_shape):
    """dx of a transposed convolution: the *forward* convolution of ``dy`` with the same weight."""
    dx = plan.run_forward(dy, w)[0]
    return dx if dx.shape == tuple(input_shape) else np.ascontiguousarray(dx[:, :, : input_shape[2],
                                                                             : input_shape[3]])


def transposed_weight_grad(plan, dy, x):
    """dw of a transposed convolution: the convolution's weight gradient with ``x`` and ``dy`` swapped."""
    return plan.run_weight_grad(_as_conv_output(plan, _plan.contiguous(x)), dy)


def _transpose_checks(func, **arrays):
    """Type, ndim and dtype checks of a transposed convolution's arrays (None allowed for ``b``)."""
    layouts = {"x": _X, "w": _WT, "dy": "(N, C_out, Ho, Wo)", "b": "(C_out,)"}
    for name, a in arrays.items():
        if a is not None or name != "b":
            V.check_float_array(a, name, func, 1 if name == "b" else 4, layouts[name])
    V.check_same_dtype(func, **arrays)


def _check_transpose_dy(func, dy, plan):
    if dy.shape != plan.geometry.x_shape:
        raise ValueError(f"{func}: dy must have shape {plan.geometry.x_shape} (N, C_out, Ho, Wo), the output of "
                         f"this transposed convolution; got {dy.shape}")


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution (PyTorch's ``conv_transpose2d``): the input gradient of a convolution.

    ``conv_transpose2d(x, w, stride=s, padding=p, dilation=d, groups=g)`` is
    ``conv2d_backward_input(x, w, (N, C_out, Ho, Wo), stride=s, padding=p, ...)``: every input
    pixel scatters ``x[n, c, i, j] * w[c]`` onto the output window of the convolution's
    output pixel ``(i, j)``. It runs exactly that: the convolution plan's input-gradient
    pass, with the roles of the shapes swapped, plus the bias. See ``docs/backprop.md``, section 6.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W), float32 or float64
    w : ndarray, shape (C_in, C_out / groups, KH, KW), same dtype
        PyTorch's layout: the *input* channels first.
    b : ndarray, shape (C_out,), optional
    stride : int or (int, int), default 1
        The step between the output windows of neighbouring input pixels.
    padding : int or (int, int), default 0
        Rows/columns cropped from each side of the full output (``dilation * (K - 1) - padding``
        zeros padded around the input of the equivalent direct convolution).
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right; each must be smaller than its stride or
        its dilation (it picks one of the ``stride`` input sizes a strided convolution maps to
        the same output size).
    groups : int, default 1
        Must divide ``C_in``; input channels of group ``g`` reach only output channels of group ``g``.
    dilation : int or (int, int), default 1
        Spacing of the kernel taps.

    Returns
    -------
    y : ndarray, shape (N, C_out, Ho, Wo)
        ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + oph + 1``, likewise ``Wo``.

    Raises
    ------
    TypeError
        Non-array input, a dtype other than float32/float64, mixed dtypes, non-integer parameters.
    ValueError
        Wrong number of dimensions, ``w.shape[0] != C_in``, ``groups`` not dividing ``C_in``,
        ``output_padding`` not smaller than stride or dilation, ``stride`` or ``dilation``
        below 1, negative ``padding``, a non-positive output size, a bias of the wrong length.

    See Also
    --------
    conv_transpose2d_backward : all three gradients.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> fc.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0]   # each pixel a 2x2 block
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]])
    >>> fc.conv_transpose2d(x, np.ones((1, 1, 2, 2)))[0, 0]             # overlapping at stride 1
    array([[ 1.,  3.,  2.],
           [ 4., 10.,  6.],
           [ 3.,  7.,  4.]])
    """
    func = "conv_transpose2d"
    _transpose_checks(func, x=x, w=w, b=b)
    p = conv_transpose_plan(func, x.shape, w.shape, x.dtype, stride, padding, output_padding, groups, dilation)
    if b is not None and b.shape[0] != p.geometry.C:
        raise ValueError(f"{func}: b must have shape ({p.geometry.C},) to match w.shape={w.shape} and "
                         f"groups={p.geometry.groups}; got {b.shape}")
    return transposed_forward(p, x, w, b)


def conv_transpose2d_backward_input(dy, w, input_shape, stride=1, padding=0, output_padding=0, groups=1,
                                    dilation=1):
    """Gradient of :func:`conv_transpose2d` with respect to its input: a (direct) convolution.

    ``dx = conv2d(dy, w, stride=stride, padding=padding, dilation=dilation, groups=groups)``
    (cropped to ``input_shape`` when ``output_padding >= stride`` left extra rows): the adjoint
    of the adjoint is the convolution itself. It runs the convolution plan's forward pass.
    See ``docs/backprop.md``, section 6.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the transposed convolution's output.
    w : ndarray, shape (C_in, C_out / groups, KH, KW), same dtype
    input_shape : tuple of 4 ints
        ``(N, C_in, H, W)``.
    stride, padding, output_padding, groups, dilation
        As given to :func:`conv_transpose2d`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> dy = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> fc.conv_transpose2d_backward_input(dy, np.ones((1, 1, 2, 2)), (1, 1, 2, 2), stride=2)[0, 0]
    array([[10., 18.],
           [42., 50.]])
    """
    func = "conv_transpose2d_backward_input"
    _transpose_checks(func, dy=dy, w=w)
    shape = V.as_shape(input_shape, "input_shape", func, 4)
    p = conv_transpose_plan(func, shape, w.shape, dy.dtype, stride, padding, output_padding, groups, dilation,
                            x_name="input_shape")
    _check_transpose_dy(func, dy, p)
    return transposed_input_grad(p, dy, w, shape)


def conv_transpose2d_backward_weight(dy, x, weight_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1):
    """Gradient of :func:`conv_transpose2d` with respect to its weight.

    The convolution's weight gradient with ``x`` and ``dy`` swapped:
    ``conv2d_backward_weight(x, dy, weight_shape, stride, padding, ...)`` (``x`` as the
    output gradient, ``dy`` as the input). See ``docs/backprop.md``, section 6.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, Ho, Wo)
    x : ndarray, shape (N, C_in, H, W), same dtype
    weight_shape : tuple of 4 ints
        ``(C_in, C_out / groups, KH, KW)``.
    stride, padding, output_padding, groups, dilation
        As given to :func:`conv_transpose2d`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> fc.conv_transpose2d_backward_weight(np.ones((1, 1, 4, 4)), x, (1, 1, 2, 2), stride=2)[0, 0]
    array([[10., 10.],
           [10., 10.]])
    """
    func = "conv_transpose2d_backward_weight"
    _transpose_checks(func, dy=dy, x=x)
    shape = V.as_shape(weight_shape, "weight_shape", func, 4)
    p = conv_transpose_plan(func, x.shape, shape, dy.dtype, stride, padding, output_padding, groups, dilation,
                            w_name="weight_shape")
    _check_transpose_dy(func, dy, p)
    return transposed_weight_grad(p, dy, x)


def conv_transpose2d_backward(dy, x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """All three gradients of :func:`conv_transpose2d`: ``(dx, dw, db)``.

    ``dx`` is a convolution of ``dy`` (:func:`conv_transpose2d_backward_input`), ``dw`` the
    convolution's weight gradient with ``x`` and ``dy`` swapped
    (:func:`conv_transpose2d_backward_weight`), ``db = dy.sum(axis=(0, 2, 3))``. See ``docs/backprop.md``,
    section 6.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, Ho, Wo)
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_in, C_out / groups, KH, KW)
    stride, padding, output_padding, groups, dilation
        As given to :func:`conv_transpose2d`.

    Returns
    -------
    dx : ndarray, shape (N, C_in, H, W)
    dw : ndarray, shape (C_in, C_out / groups, KH, KW)
    db : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> dx, dw, db = fc.conv_transpose2d_backward(np.ones((1, 1, 3, 3)), x, np.ones((1, 1, 2, 2)))
    >>> dx[0, 0], db
    (array([[4., 4.],
           [4., 4.]]), array([9.]))
    """
    func = "conv_transpose2d_backward"
    _transpose_checks(func, dy=dy, x=x, w=w)
    p = conv_transpose_plan(func, x.shape, w.shape, dy.dtype, stride, padding, output_padding, groups, dilation)
    _check_transpose_dy(func, dy, p)
    dy = _plan.contiguous(dy)
    return (transposed_input_grad(p, dy, w, x.shape), transposed_weight_grad(p, dy, x), p.bias_grad.run(dy))
