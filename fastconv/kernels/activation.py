"""Activation kernels: pointwise functions of one shape of loop, and softmax over one axis.

The pointwise activations (LeakyReLU, ELU, GELU, SiLU, sigmoid, tanh) share two kernels,
one for the forward pass and one for the gradient; an op code (:data:`POINTWISE_OPS`)
picks the loop, one ``prange`` loop per scalar function with the function inlined, which
LLVM vectorises as it does the ReLU loop (LeakyReLU over a 64x256x28x28 float32
activation: 8 ms on 2 threads, as ``np.maximum``). (The function was once the kernel's
argument: a dispatcher in a signature is a new type in every process, so the disk cache
never hit, compiled again in every process and grew an index entry each time, until
Numba failed to re-save the index: "underlying object has vanished".) Scalar functions
take ``(v, a)`` (the forward) or ``(g, v, a)`` (the gradient: ``g`` the output's gradient,
``v`` the forward input, ``a`` the layer's one parameter, ignored by most), compute in the
dtype of ``v`` and never overflow: the sigmoid family goes through ``exp(-|v|)``.

Numba has no vector math library here (no SVML), so ``math.exp`` is a scalar libm call per
element and keeps a loop from vectorising; the kernels use :func:`_exp` (and, in float32,
:func:`_erfc` built on it) instead, written in arithmetic LLVM vectorises: softmax over
4096x1000 float32 logits went from 33 ms to 2 ms, tanh over 64x256x28x28 from 100 ms to a few.
Only float64 ``erfc`` stays a libm call.

Softmax and log-softmax run over the middle axis of a C-contiguous ``(outer, D, inner)``
view of the input (any ``dim`` of any shape is one), without moving the axis: when
``inner == 1`` each row is contiguous (``*_rows``); otherwise a job takes a block of
``inner`` columns and keeps its running maxima and sums in small arrays, so the inner loop
still runs over contiguous memory (``*_columns``). The maximum is subtracted before ``exp``;
a NaN anywhere in a slice makes the whole slice NaN, as in PyTorch.

Kernels
-------
- :func:`activation_pointwise`: ``out = f(x, a)``, ``f`` picked by an op code.
- :func:`activation_pointwise_grad`: ``dx = f(dy, x, a)``.
- :func:`activation_softmax_rows`, :func:`activation_softmax_columns`: softmax (``log=False``)
  or log-softmax (``log=True``) over axis 1 of ``(outer, D, inner)``.
- :func:`activation_softmax_rows_grad`, :func:`activation_softmax_columns_grad`: their
  gradients from the forward *output* ``y``: ``y * (dy - sum(dy * y))`` and
  ``dy - exp(y) * sum(dy)``.

Scalar functions (inline helpers): :func:`_exp` (a vectorisable ``exp``), :func:`_expm1`, :func:`_tanh_abs`, :func:`_erfc32`,
:func:`_sigmoid_pair`, :func:`_leaky_relu`, :func:`_leaky_relu_grad`, :func:`_elu`, :func:`_elu_grad`,
:func:`_gelu`, :func:`_gelu_grad`, :func:`_gelu_tanh`, :func:`_gelu_tanh_grad`, :func:`_silu`,
:func:`_silu_grad`, :func:`_sigmoid`, :func:`_sigmoid_grad`, :func:`_tanh`, :func:`_tanh_grad`.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..config import PARALLEL_JIT, SERIAL_JIT
from .simd import pow2

#: Columns per job of the ``*_columns`` softmax kernels.
_COLUMNS = 256


# ---------------------------------------------------------------------------------------
# Scalar functions
# ---------------------------------------------------------------------------------------

#: Taylor coefficients ``1/n!`` of ``exp`` on ``|r| <= ln(2)/2``, highest first (after the leading one):
#: degree 7 leaves 5e-9 (float32), degree 12 2e-17 (float64).
_EXP_TERMS32 = tuple(1.0 / math.factorial(n) for n in range(6, 0, -1))
_EXP_TERMS64 = tuple(1.0 / math.factorial(n) for n in range(11, 0, -1))


#: ``1/n!`` for ``expm1``'s polynomial ``v + v^2/2 + ...`` on ``|v| < 1/2``, highest first, down to ``1/2``:
#: degree 8 (float32) and 15 (float64).
_EXPM1_TERMS32 = tuple(1.0 / math.factorial(n) for n in range(8, 1, -1))
_EXPM1_TERMS64 = tuple(1.0 / math.factorial(n) for n in range(15, 1, -1))


# Without ``reassoc``: it would fold the two-part ``k * ln 2`` back into one product, and the
# rounding shifter away (the rest of fastconv's flags kept). The flags are per LLVM instruction,
# so they survive LLVM's inlining into the kernels; never ``inline="always"``: Numba would inline
# the source, compiled with the caller's ``reassoc`` (sigmoid was off by millions of ulp).
@njit(**dict(SERIAL_JIT, fastmath={"nsz", "arcp", "contract", "afn"}))
def _exp(v):
    """``exp(v)`` without a call, so loops vectorise (libm's ``exp`` is a scalar call: 9x slower here).

    ``v = k ln 2 + r``: ``k`` rounded with the ``1.5 * 2**mantissa`` shifter, ``ln 2`` in two parts
    (Cody and Waite), ``exp(r)`` a Taylor polynomial, ``2**k`` from the exponent bits
    (:func:`fastconv.kernels.simd.pow2`). Within 1 ulp (float32) and 1.5 ulp (float64) of libm; NaN
    stays NaN, ``+inf`` past the largest float; results below ``2**-125`` (float32: ``exp(-86.5)``)
    or ``2**-1021`` (float64: ``exp(-708)``) are flushed to 0.
    """
    t = type(v)
    narrow = t(1e-50) == t(0)  # float32; a constant LLVM folds
    hi = t(88.72283905206835) if narrow else t(709.782712893384)
    lo = t(-86.5) if narrow else t(-708.0)
    c = hi if v > hi else v
    c = lo if c < lo else c
    shifter = t(12582912.0) if narrow else t(6755399441055744.0)
    k = (c * t(1.4426950408889634) + shifter) - shifter
    r = (c - k * t(0.693359375)) - k * t(-2.12194440054690583e-4)
    if narrow:
        p = t(1.0 / 5040.0)
        for a in _EXP_TERMS32:
            p = p * r + t(a)
    else:
        p = t(1.0 / 479001600.0)
        for a in _EXP_TERMS64:
            p = p * r + t(a)
    y = (p * r + t(1)) * pow2(k - t(1)) * t(2)
    y = t(np.inf) if v > hi else y
    return t(0) if v < lo else y


@njit(**SERIAL_JIT)
def _expm1(v):
    """``exp(v) - 1`` without a call: a Taylor polynomial for ``|v| < 1/2`` (no cancellation), else
    ``_exp(v) - 1`` (at most a few ulp there). Both are computed and one selected, so loops vectorise."""
    t = type(v)
    narrow = t(1e-50) == t(0)
    p = t(0)
    if narrow:
        for a in _EXPM1_TERMS32:
            p = p * v + t(a)
    else:
        for a in _EXPM1_TERMS64:
            p = p * v + t(a)
    small = v * (p * v + t(1))
    return small if abs(v) < t(0.5) else _exp(v) - t(1)


@njit(**SERIAL_JIT)
def _tanh_abs(v):
    """``tanh(v)`` as ``-e / (e + 2)``, ``e = expm1(-2|v|)`` in ``(-1, 0]``, with ``v``'s sign: no overflow."""
    t = type(v)
    e = _expm1(t(-2) * abs(v))
    r = -e / (e + t(2))
    return r if v >= 0 else -r


#: Numerical Recipes' ``erfcc`` (a Chebyshev fit, relative error below 1.2e-7 everywhere), highest first.
_ERFC_TERMS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
               0.37409196, 1.00002368, -1.26551223)


@njit(**SERIAL_JIT, inline="always")  # else LLVM left a call, and GELU's gradient scalar (360 ms, not 13)
def _erfc32(v):
    """float32 ``erfc(v)`` as ``t exp(-v^2 + P(t))``, ``t = 1/(1 + |v|/2)``, through :func:`_exp` (no call:
    vectorises); within 1e-6 of libm relative for ``|v| < 4``, 8e-6 far in the tail."""
    t = type(v)
    z = abs(v)
    u = t(1) / (t(1) + t(0.5) * z)
    p = t(0)
    for a in _ERFC_TERMS:
        p = p * u + t(a)
    r = u * _exp(p - z * z)
    return r if v >= 0 else t(2) - r


def _erfc(v):
    """``erfc(v)``: :func:`_erfc32` for float32, libm's for float64 (chosen when typing, no branch)."""


@overload(_erfc, inline="always")
def _erfc_impl(v):
    if v == types.float32:
        return lambda v: _erfc32(v)
    return lambda v: math.erfc(v)


@njit(**SERIAL_JIT)
def _sigmoid_pair(v):
    """``(sigmoid(v), sigmoid(-v))`` from ``exp(-|v|)``: no overflow, each accurate in its tail."""
    one = type(v)(1)
    e = _exp(-abs(v))
    big = one / (one + e)
    small = e * big
    return (big, small) if v >= 0 else (small, big)


@njit(**SERIAL_JIT)
def _leaky_relu(v, a):
    return v if v > 0 else v * a


@njit(**SERIAL_JIT)
def _leaky_relu_grad(g, v, a):
    return g if v > 0 else g * a  # PyTorch: a NaN input takes the negative branch


@njit(**SERIAL_JIT)
def _elu(v, a):
    return v if v > 0 else a * _expm1(v)


@njit(**SERIAL_JIT)
def _elu_grad(g, v, a):
    return g if v > 0 else g * a * _exp(v)  # a NaN input gives NaN (as PyTorch's vector loop)


@njit(**SERIAL_JIT)
def _gelu(v, a):
    """``v * Phi(v)``, with ``Phi(v) = erfc(-v / sqrt 2) / 2``: accurate in the negative tail too."""
    t = type(v)
    return t(0.5) * v * _erfc(-v * t(0.7071067811865476))


@njit(**SERIAL_JIT)
def _gelu_grad(g, v, a):
    """``Phi(v) + v * phi(v)``."""
    t = type(v)
    phi = _exp(t(-0.5) * v * v) * t(0.3989422804014327)
    return g * (t(0.5) * _erfc(-v * t(0.7071067811865476)) + v * phi)


@njit(**SERIAL_JIT)
def _gelu_tanh(v, a):
    """``v (1 + tanh u) / 2 = v * sigmoid(2u)``, ``u = sqrt(2/pi) (v + 0.044715 v^3)``."""
    t = type(v)
    u2 = t(1.5957691216057308) * (v + t(0.044715) * v * v * v)
    return v * _sigmoid_pair(u2)[0]


@njit(**SERIAL_JIT)
def _gelu_tanh_grad(g, v, a):
    t = type(v)
    u2 = t(1.5957691216057308) * (v + t(0.044715) * v * v * v)
    s, r = _sigmoid_pair(u2)
    return g * (s + v * s * r * t(1.5957691216057308) * (t(1) + t(0.134145) * v * v))


@njit(**SERIAL_JIT)
def _silu(v, a):
    return v * _sigmoid_pair(v)[0]


@njit(**SERIAL_JIT)
def _silu_grad(g, v, a):
    s, r = _sigmoid_pair(v)
    return g * s * (type(v)(1) + v * r)


@njit(**SERIAL_JIT)
def _sigmoid(v, a):
    return _sigmoid_pair(v)[0]


@njit(**SERIAL_JIT)
def _sigmoid_grad(g, v, a):
    s, r = _sigmoid_pair(v)
    return g * s * r


@njit(**SERIAL_JIT)
def _tanh(v, a):
    return _tanh_abs(v)


@njit(**SERIAL_JIT)
def _tanh_grad(g, v, a):
    y = _tanh_abs(v)
    return g * (type(v)(1) - y * y)


# ---------------------------------------------------------------------------------------
# Pointwise kernels
# ---------------------------------------------------------------------------------------


# A plain ``prange`` over the elements (Numba gives each thread one contiguous range): with
# ReLU's blocks of ``_BLOCK`` slices LLVM left GELU's loop scalar (137 ms instead of 15 ms on a
# 64x256x28x28 float32 activation; the other functions ran as fast either way).


#: The scalar functions of :func:`activation_pointwise` (and, with ``_grad``, of
#: :func:`activation_pointwise_grad`), by op code: the index here.
POINTWISE_OPS = ('leaky_relu', 'elu', 'gelu', 'gelu_tanh', 'silu', 'sigmoid', 'tanh')


@njit(**PARALLEL_JIT)
def activation_pointwise(op, x, a, out):
    """``out[i] = f(x[i], a)`` for flat arrays of one length, ``f = POINTWISE_OPS[op]``."""
    n = x.shape[0]
    if op == 0:
        for i in prange(n):
            out[i] = _leaky_relu(x[i], a)
    elif op == 1:
        for i in prange(n):
            out[i] = _elu(x[i], a)
    elif op == 2:
        for i in prange(n):
            out[i] = _gelu(x[i], a)
    elif op == 3:
        for i in prange(n):
            out[i] = _gelu_tanh(x[i], a)
    elif op == 4:
        for i in prange(n):
            out[i] = _silu(x[i], a)
    elif op == 5:
        for i in prange(n):
            out[i] = _sigmoid(x[i], a)
    elif op == 6:
        for i in prange(n):
            out[i] = _tanh(x[i], a)


@njit(**PARALLEL_JIT)
def activation_pointwise_grad(op, dy, x, a, dx):
    """``dx[i] = f(dy[i], x[i], a)`` for flat arrays of one length, ``f = POINTWISE_OPS[op] + "_grad"``."""
    n = x.shape[0]
    if op == 0:
        for i in prange(n):
            dx[i] = _leaky_relu_grad(dy[i], x[i], a)
    elif op == 1:
        for i in prange(n):
            dx[i] = _elu_grad(dy[i], x[i], a)
    elif op == 2:
        for i in prange(n):
            dx[i] = _gelu_grad(dy[i], x[i], a)
    elif op == 3:
        for i in prange(n):
            dx[i] = _gelu_tanh_grad(dy[i], x[i], a)
    elif op == 4:
        for i in prange(n):
            dx[i] = _silu_grad(dy[i], x[i], a)
    elif op == 5:
        for i in prange(n):
            dx[i] = _sigmoid_grad(dy[i], x[i], a)
    elif op == 6:
        for i in prange(n):
            dx[i] = _tanh_grad(dy[i], x[i], a)


# ---------------------------------------------------------------------------------------
# Softmax over the middle axis of (outer, D, inner)
# ---------------------------------------------------------------------------------------


@njit(**PARALLEL_JIT)
def activation_softmax_rows(x, log, out):
    """Softmax (or log-softmax) of each row of the C-contiguous ``(R, D)`` array ``x``; ``D >= 1``."""
    R, D = x.shape
    zero = np.zeros(1, dtype=out.dtype)[0]
    for r in prange(R):
        row = x[r]
        dst = out[r]
        m = row[0]
        for j in range(D):
            v = row[j]
            m = v if v > m else m
        s = zero
        for j in range(D):
            z = row[j] - m
            e = _exp(z)
            s += e
            dst[j] = z if log else e  # the shifted logit is stored: x - (m + log s) would round m + log s
        if log:
            ls = math.log(s)
            for j in range(D):
                dst[j] -= ls
        else:
            inv = type(s)(1) / s
            for j in range(D):
                dst[j] *= inv


@njit(**PARALLEL_JIT)
def activation_softmax_columns(x, log, out):
    """Softmax (or log-softmax) over axis 1 of the C-contiguous ``(O, D, I)`` array ``x``; ``D >= 1``.

    A job is one ``o`` and a block of up to ``_COLUMNS`` of the ``I`` columns.
    """
    O, D, I = x.shape
    blocks = (I + _COLUMNS - 1) // _COLUMNS
    for job in prange(O * blocks):
        o = job // blocks
        lo = (job - o * blocks) * _COLUMNS
        w = min(I, lo + _COLUMNS) - lo
        m = x[o, 0, lo:lo + w].copy()
        s = np.zeros(w, dtype=out.dtype)
        for d in range(D):
            src = x[o, d, lo:lo + w]
            for i in range(w):
                m[i] = src[i] if src[i] > m[i] else m[i]
        for d in range(D):
            src = x[o, d, lo:lo + w]
            dst = out[o, d, lo:lo + w]
            for i in range(w):
                z = src[i] - m[i]
                e = _exp(z)
                s[i] += e
                dst[i] = z if log else e
        for i in range(w):
            s[i] = math.log(s[i]) if log else type(m[0])(1) / s[i]
        for d in range(D):
            dst = out[o, d, lo:lo + w]
            if log:
                for i in range(w):
                    dst[i] -= s[i]
            else:
                for i in range(w):
                    dst[i] *= s[i]


@njit(**PARALLEL_JIT)
def activation_softmax_rows_grad(dy, y, log, dx):
    """Gradient of :func:`activation_softmax_rows` from its output ``y``, row by row."""
    R, D = y.shape
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for r in prange(R):
        g = dy[r]
        yr = y[r]
        dst = dx[r]
        s = zero
        if log:
            for j in range(D):
                s += g[j]
            for j in range(D):
                dst[j] = g[j] - _exp(yr[j]) * s
        else:
            for j in range(D):
                s += g[j] * yr[j]
            for j in range(D):
                dst[j] = yr[j] * (g[j] - s)


@njit(**PARALLEL_JIT)
def activation_softmax_columns_grad(dy, y, log, dx):
    """Gradient of :func:`activation_softmax_columns` from its output ``y`` (jobs as there)."""
    O, D, I = y.shape
    blocks = (I + _COLUMNS - 1) // _COLUMNS
    for job in prange(O * blocks):
        o = job // blocks
        lo = (job - o * blocks) * _COLUMNS
        w = min(I, lo + _COLUMNS) - lo
        s = np.zeros(w, dtype=dx.dtype)
        for d in range(D):
            g = dy[o, d, lo:lo + w]
            yd = y[o, d, lo:lo + w]
            if log:
                for i in range(w):
                    s[i] += g[i]
            else:
                for i in range(w):
                    s[i] += g[i] * yd[i]
        for d in range(D):
            g = dy[o, d, lo:lo + w]
            yd = y[o, d, lo:lo + w]
            dst = dx[o, d, lo:lo + w]
            if log:
                for i in range(w):
                    dst[i] = g[i] - _exp(yd[i]) * s[i]
            else:
                for i in range(w):
                    dst[i] = yd[i] * (g[i] - s[i])
