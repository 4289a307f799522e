"""The plan layer: one place decides which strategy runs each operation.

For an operation and its geometry (shapes, stride, padding), dtype and CPU, a *plan*
names the strategy of every pass -- the compiled kernels it launches, the layout it packs
its operands into, and what the forward pass hands to the backward pass -- and runs it.
Every threshold and tuning variable of fastconv lives here (:data:`TUNING`, :data:`HOST`).

The functional API (:mod:`fastconv.functional`) is: validate once, plan, run. Layers
(:mod:`fastconv.nn`) build a plan once per input shape and keep it. Nothing here checks
the user's arguments beyond what keeps a kernel inside its arrays: a plan's ``run_*``
methods compare their operands' shapes and dtype with the plan and refuse the rest.

Asking which strategy a call takes::

    >>> import fastconv as fc
    >>> p = fc.conv2d_plan((64, 32, 14, 14), (64, 32, 3, 3), padding=1)
    >>> p.forward.name, p.weight_grad.name
    ('vector', 'tiled_by_filters')

``print(p)`` explains every pass.

Strategies
----------
:data:`STRATEGIES` is the registry: ``(op, name) -> Strategy``, each with its kernels
(``"module.function"`` in :mod:`fastconv.kernels`), the layout it reads and a summary.
The tests walk it: every strategy is reached by a case of the case table and compared
with the reference, and the 64-bit index audit covers every kernel it names.
"""

import dataclasses
import enum
import functools
import importlib
import math
from typing import Callable, NamedTuple

import numba
import numpy as np

from . import config
from ._runtime import launch
from .kernels import simd

__all__ = [
    "TUNING",
    "HOST",
    "CPU",
    "Tuning",
    "Layout",
    "Packed",
    "Strategy",
    "STRATEGIES",
    "ConvGeometry",
    "ConvPlan",
    "PoolPlan",
    "plan_conv2d",
    "plan_max_pool2d",
    "route_max_pool2d",
    "kernel",
    "contiguous",
]


# ---------------------------------------------------------------------------------------
# Tuning and the CPU
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Every threshold that picks a strategy or a thread count. Measured in ``benchmarks/NOTES.md``.

    Attributes
    ----------
    short_reduction : int
        Receptive fields (``KH * KW * C``) shorter than this do not fill the tiled
        kernels' vectors: the forward pass runs ``flat`` (stride 1) or ``filter_vector``,
        the weight gradient ``flat`` (stride 1). The input gradient's phases use it on
        the smallest sub-kernel (``F * KH//sh * KW//sw``).
    short_row : int
        Output rows this narrow or narrower split the tiled weight gradient by filters
        instead of by rows: on 14x14 maps 1.6-1.8x faster, on 7x7 x 512 channels 3.7x;
        on maps of 28 and wider 2-30% slower.
    big_partials : int
        Bytes of per-thread partial weight gradients above which the filters are split
        instead (8x512x7x7 -> 512 filters would need two partials of 9.4 MB).
    small_work : int
        Launches of fewer inner-loop operations than this run on one thread: waking the
        pool costs more than the work (a 2x7x6 input took 0.5-20 ms on two threads under
        load, 0.014 ms on one).
    """

    short_reduction: int = 32
    short_row: int = 16
    big_partials: int = 4 << 20
    small_work: int = 1 << 18


TUNING = Tuning()


@dataclasses.dataclass(frozen=True)
class CPU:
    """What the plan needs to know of the CPU the kernels are compiled for.

    Attributes
    ----------
    name : str
        LLVM's name of the CPU (for reports).
    vector_bytes : int
        The width of a vector register the vector kernels use: 64 with AVX-512 (32 such
        registers: a tile of 7 x 2 vectors), 32 with AVX2 and FMA (16 registers: 6 x 2),
        else 16.
    """

    name: str
    vector_bytes: int = 64

    @property
    def width(self):
        """The :class:`fastconv.kernels.simd.Width` the vector kernels are compiled for."""
        return simd.Width(self.vector_bytes)

    def lanes(self, dtype):
        """Elements of ``dtype`` in one vector register."""
        return self.vector_bytes // np.dtype(dtype).itemsize


def _host_cpu():
    """The CPU Numba compiles for (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` when set)."""
    try:
        import llvmlite.binding as ll

        name = ll.get_host_cpu_name()
    except Exception:  # pragma: no cover - a label only
        name = "unknown"
    from numba.core import config as numba_config

    return CPU(numba_config.CPU_NAME or name, config.VECTOR_BYTES)


HOST = _host_cpu()


# ---------------------------------------------------------------------------------------
# Layouts, strategies and the registry
# ---------------------------------------------------------------------------------------


class Layout(enum.Enum):
    """How a strategy wants an activation laid out."""

    NCHW = "NCHW as given (no copy when contiguous)"
    NCHW_PADDED = "zero-padded NCHW (N, C, H+2ph, W+2pw)"
    NHWC_PADDED = "zero-padded NHWC (N, H+2ph, W+2pw, C)"


@dataclasses.dataclass(frozen=True)
class Packed:
    """An operand packed by a forward pass, handed to the backward pass that reads the same layout.

    Attributes
    ----------
    layout : Layout
    padding : (int, int)
        The zero padding it carries.
    array : ndarray
    """

    layout: Layout
    padding: tuple
    array: np.ndarray = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One way to compute one pass of an operation.

    Attributes
    ----------
    op : str
        The pass: ``"conv2d_forward"``, ``"conv2d_input_grad"``, ``"conv2d_weight_grad"``,
        ``"conv2d_bias_grad"``, ``"max_pool2d_forward"``, ``"max_pool2d_backward"``,
        ``"relu_forward"``, ``"relu_backward"``, ``"linear_forward"``, ``"linear_backward"``, and
        ``"<op>_forward"``/``"<op>_backward"`` of every activation of :data:`POINTWISE`, ``"softmax"``
        and ``"log_softmax"``.
    name : str
        The strategy's name, unique within ``op``.
    kernels : tuple of str
        The compiled kernels it launches, as ``"module.function"`` of :mod:`fastconv.kernels`.
    reads : Layout or None
        The layout of the activation it reads (``None``: no activation, or several).
    summary : str
        One line for :meth:`ConvPlan.explain`.
    needs_finite : bool
        Correct only for a finite input (the plan then names a fallback).
    """

    op: str
    name: str
    kernels: tuple
    reads: object
    summary: str
    needs_finite: bool = False
    run: Callable = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self):
        return self.name


#: The registry of every strategy: ``(op, name) -> Strategy``.
STRATEGIES = {}


def _strategy(op, name, kernels, reads, summary, needs_finite=False):
    """Register the decorated function as the ``run`` of strategy ``(op, name)``."""

    def register(run):
        key = (op, name)
        if key in STRATEGIES:  # pragma: no cover - a programming error
            raise RuntimeError(f"strategy {key} registered twice")
        STRATEGIES[key] = Strategy(op, name, tuple(kernels), reads, summary, needs_finite, run)
        return run

    return register


def kernel(qualified):
    """The compiled kernel ``"module.function"`` of :mod:`fastconv.kernels`, looked up at call time."""
    module, name = qualified.split(".")
    return getattr(importlib.import_module(f"fastconv.kernels.{module}"), name)


def _run(qualified, *args, work):
    """Launch a kernel; on one thread when ``work`` (inner-loop operations) is below ``TUNING.small_work``."""
    return launch(kernel(qualified), *args, serial=work < TUNING.small_work)


def contiguous(a, dtype=None):
    """``a`` as a C-contiguous, aligned, writeable-typed array: a view when it already is one.

    Read-only inputs are copied: Numba types read-only arrays separately, and passing
    one would compile (and cache) a second version of every kernel.
    """
    return np.require(a, dtype=dtype, requirements=["C", "A", "W"])


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------


class ConvGeometry(NamedTuple):
    """A validated sliding window: input ``(N, C, H, W)``, ``F`` filters of ``KH x KW``, output ``Ho x Wo``.

    A pooling is the depthwise case, ``F == C``: one ``KH x KW`` window per channel.
    """

    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    sh: int
    sw: int
    ph: int
    pw: int
    Ho: int
    Wo: int

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.F, self.C, self.KH, self.KW)

    @property
    def y_shape(self):
        return (self.N, self.F, self.Ho, self.Wo)

    @property
    def pointwise(self):
        """A 1x1 convolution at stride 1 without padding: per image, a matrix product in NCHW."""
        return self.KH == self.KW == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0

    def correlation(self, N, C, H, W, F, KH, KW, ph, pw):
        """The stride-1 geometry of another correlation (the input gradient's inner ones)."""
        return ConvGeometry(N, C, H, W, F, KH, KW, 1, 1, ph, pw, H + 2 * ph - KH + 1, W + 2 * pw - KW + 1)


def _check_operand(plan, name, a, shape):
    """Refuse an operand that does not match the plan (a kernel would read past its arrays)."""
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != plan.dtype:
        got = f"shape {a.shape}, dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{type(plan).__name__}: {name} must have shape {tuple(shape)} and dtype "
                         f"{plan.dtype} for this plan; got {got}")


# ---------------------------------------------------------------------------------------
# Convolution: forward strategies
# ---------------------------------------------------------------------------------------


def _pack_nhwc(a, ph, pw):
    """Copy an NCHW array into a new zero-padded NHWC array (one parallel pass)."""
    N, C, H, W = a.shape
    out = np.empty((N, H + 2 * ph, W + 2 * pw, C), dtype=a.dtype)
    _run("pack.pack_nhwc_padded", contiguous(a), ph, pw, out, work=out.size)
    return Packed(Layout.NHWC_PADDED, (ph, pw), out)


def _pack_nchw(a, ph, pw):
    """Copy an NCHW array into a new zero-padded NCHW array (one parallel pass)."""
    N, C, H, W = a.shape
    out = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=a.dtype)
    _run("pack.pack_nchw_padded", contiguous(a), ph, pw, out, work=out.size)
    return Packed(Layout.NCHW_PADDED, (ph, pw), out)


class _Rotated:
    """The input gradient's kernel: ``w`` rotated by 180 degrees, channel axes swapped, not yet copied.

    The vector strategy packs it straight from ``w``; the others take :meth:`array`.
    """

    def __init__(self, w):
        self.w = contiguous(w)
        self.shape = (w.shape[1], w.shape[0], w.shape[2], w.shape[3])
        self.dtype = w.dtype

    def array(self):
        return contiguous(self.w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _weights(w):
    """The kernel as an (F, C, KH, KW) array (a :class:`_Rotated` one copied now)."""
    return w.array() if isinstance(w, _Rotated) else w


def _tiled_weights(w):
    """(F, C, KH, KW) -> (F, KW * KH * C), ordered (f, j, i, c) as the tiled kernels read the input."""
    F, C, KH, KW = w.shape
    return contiguous(w.transpose(0, 3, 2, 1)).reshape(F, KW * KH * C)


@_strategy("conv2d_forward", "pointwise_matmul", ["matmul.matmul_nn"], Layout.NCHW,
           "1x1, stride 1, no padding: y[n] = w @ x[n] per image, no repacking")
def _forward_pointwise(g, x, w, b, out, cpu):
    packed = Packed(Layout.NCHW, (0, 0), contiguous(x))
    _run("matmul.matmul_nn", contiguous(_weights(w)).reshape(g.F, g.C), packed.array.reshape(g.N, g.C, g.H * g.W), b,
         out.reshape(g.N, g.F, g.H * g.W), work=out.size * g.C)
    return packed


def _tiled_on_packed(g, xp, w, b, out, cpu):
    _run("tiled.tiled_forward_4x4", xp, _tiled_weights(_weights(w)), g.KH, b, g.sh, g.sw, out,
         work=out.size * g.C * g.KH * g.KW)


@_strategy("conv2d_forward", "tiled", ["pack.pack_nhwc_padded", "tiled.tiled_forward_4x4"], Layout.NHWC_PADDED,
           "zero-padded NHWC, rows interleaved; 4 pixels x 4 filters dot-product tiles (few filters)")
def _forward_tiled(g, x, w, b, out, cpu):
    packed = _pack_nhwc(x, g.ph, g.pw)
    _tiled_on_packed(g, packed.array, w, b, out, cpu)
    return packed


_forward_tiled.on_packed = _tiled_on_packed


@_strategy("conv2d_forward", "flat", ["pack.pack_nchw_padded", "flat.flat_forward"], Layout.NCHW_PADDED,
           "stride 1, short receptive field: each tap one loop over a whole zero-padded NCHW plane")
def _forward_flat(g, x, w, b, out, cpu):
    packed = _pack_nchw(x, g.ph, g.pw)
    _run("flat.flat_forward", packed.array, contiguous(_weights(w)), b, out, work=out.size * g.C * g.KH * g.KW)
    return packed


@_strategy("conv2d_forward", "filter_vector", ["pack.pack_nhwc_padded", "filter_vector.filter_vector_forward"],
           Layout.NHWC_PADDED, "strided, short receptive field: the vector axis is the filter axis")
def _forward_filter_vector(g, x, w, b, out, cpu):
    packed = _pack_nhwc(x, g.ph, g.pw)
    wk = contiguous(_weights(w).transpose(2, 3, 1, 0))
    _run("filter_vector.filter_vector_forward", packed.array, wk, b, g.sh, g.sw, out,
         work=out.size * g.C * g.KH * g.KW)
    return packed


def _vector_weights(w, lanes):
    """(F, C, KH, KW) (or a :class:`_Rotated`) -> (blocks, KH, KW * C, lanes), an even number of blocks."""
    F, C, KH, KW = w.shape
    wv = np.empty((2 * -(-F // (2 * lanes)), KH, KW * C, lanes), dtype=w.dtype)
    rotated = isinstance(w, _Rotated)
    _run("pack.pack_vector_weights", w.w if rotated else contiguous(w), rotated, wv, work=wv.size)
    return wv


def _vector_on_packed(g, xp, w, b, out, cpu):
    _run("vector.vector_forward", cpu.width, xp, _vector_weights(w, cpu.lanes(out.dtype)), b, (g.sh, g.sw), False,
         out, work=out.size * g.C * g.KH * g.KW)


@_strategy("conv2d_forward", "vector",
           ["pack.pack_nhwc_padded", "pack.pack_vector_weights", "vector.vector_forward"], Layout.NHWC_PADDED,
           "zero-padded NHWC; outer-product tiles of pixels x 2 vectors of filters, accumulators in registers")
def _forward_vector(g, x, w, b, out, cpu):
    packed = _pack_nhwc(x, g.ph, g.pw)
    _vector_on_packed(g, packed.array, w, b, out, cpu)
    return packed


_forward_vector.on_packed = _vector_on_packed


def _choose_forward(g, cpu, dtype):
    """The forward strategy for geometry ``g`` on ``cpu``."""
    if g.pointwise:
        return STRATEGIES["conv2d_forward", "pointwise_matmul"]
    if g.KH * g.KW * g.C >= TUNING.short_reduction:
        if g.F >= cpu.lanes(dtype):
            return STRATEGIES["conv2d_forward", "vector"]
        return STRATEGIES["conv2d_forward", "tiled"]
    if g.sh == g.sw == 1:
        return STRATEGIES["conv2d_forward", "flat"]
    return STRATEGIES["conv2d_forward", "filter_vector"]


# ---------------------------------------------------------------------------------------
# Convolution: input-gradient strategies
# ---------------------------------------------------------------------------------------


def _full_correlation(plan, dy, w, pad, out):
    """out = correlation of dy (zero-padded by ``pad``) with w rotated by 180 degrees, channels swapped."""
    N, F, Ho, Wo = dy.shape
    C, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    inner = plan.geometry.correlation(N, F, Ho, Wo, C, KH, KW, *pad)
    _choose_forward(inner, plan.cpu, dy.dtype).run(inner, dy, _Rotated(w), np.zeros(C, dtype=dy.dtype), out, plan.cpu)


@_strategy("conv2d_input_grad", "pointwise_matmul", ["matmul.matmul_nn"], None,
           "1x1, stride 1, no padding: dx[n] = w.T @ dy[n] per image")
def _input_grad_pointwise(plan, dy, w):
    g = plan.geometry
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    _run("matmul.matmul_nn", contiguous(w.reshape(g.F, g.C).T), contiguous(dy).reshape(g.N, g.F, -1),
         np.zeros(g.C, dtype=dy.dtype), dx.reshape(g.N, g.C, -1), work=dy.size * g.C)
    return dx


@_strategy("conv2d_input_grad", "full_correlation", [], None,
           "stride 1: a forward convolution of dy, padded by K-1-p, with the rotated kernel")
def _input_grad_full(plan, dy, w):
    g = plan.geometry
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    _full_correlation(plan, dy, w, (g.KH - 1 - g.ph, g.KW - 1 - g.pw), dx)
    return dx


def _phases(g):
    """The stride phases ``(rh, rw)`` that some tap reaches."""
    return [(rh, rw) for rh in range(min(g.sh, g.KH)) for rw in range(min(g.sw, g.KW))]


def _each_phase(g, dy, w, compute):
    """dx of a strided convolution: ``compute(sub, th, tw)`` gives each phase as ``(phase, first)``.

    ``sub`` is the phase's sub-kernel (the taps ``i = rh + sh*t``), ``phase`` the phase
    computed in padded coordinates and ``first`` its first row and column that count.
    Positions of no phase (a stride larger than the kernel) stay 0.
    """
    dx = np.zeros(g.x_shape, dtype=dy.dtype)
    for rh, rw in _phases(g):
        sub = w[:, :, rh::g.sh, rw::g.sw]
        phase, first = compute(sub, sub.shape[2], sub.shape[3])
        # Phase element (q_h, q_w) is padded position (rh + sh*q_h, rw + sw*q_w).
        _run("pack.pack_scatter_phase", phase, first, (rh, rw), (g.sh, g.sw), (g.ph, g.pw), dx, work=phase.size)
    return dx


@_strategy("conv2d_input_grad", "phases_shared_pack",
           ["pack.pack_nhwc_padded", "pack.pack_scatter_phase"], None,
           "strided: one stride-1 correlation per phase with its sub-kernel, dy packed once for all")
def _input_grad_phases_shared(plan, dy, w):
    # The sub-kernels have at most t = ceil(K / s) taps per axis; dy is packed once, padded
    # for the largest; a smaller one computes t - th surplus rows (columns) per side, skipped.
    g = plan.geometry
    tmax_h, tmax_w = -(-g.KH // g.sh), -(-g.KW // g.sw)
    dyp = _pack_nhwc(dy, tmax_h - 1, tmax_w - 1).array
    zeros = np.zeros(g.C, dtype=dy.dtype)
    inner = _shared_pack_inner(g, plan.cpu, dy.dtype)

    def compute(sub, th, tw):
        phase = np.empty((g.N, g.C, g.Ho + 2 * tmax_h - th - 1, g.Wo + 2 * tmax_w - tw - 1), dtype=dy.dtype)
        sub_g = g.correlation(g.N, g.F, dyp.shape[1], dyp.shape[2], g.C, th, tw, 0, 0)
        inner.run.on_packed(sub_g, dyp, _Rotated(sub), zeros, phase, plan.cpu)
        return phase, (tmax_h - th, tmax_w - tw)

    return _each_phase(g, dy, w, compute)


@_strategy("conv2d_input_grad", "phases", ["pack.pack_scatter_phase"], None,
           "strided, short sub-kernels: one full correlation per phase, each planned as a forward pass")
def _input_grad_phases(plan, dy, w):
    g = plan.geometry

    def compute(sub, th, tw):
        phase = np.empty((g.N, g.C, g.Ho + th - 1, g.Wo + tw - 1), dtype=dy.dtype)
        _full_correlation(plan, dy, sub, (th - 1, tw - 1), phase)
        return phase, (0, 0)

    return _each_phase(g, dy, w, compute)


def _shared_pack_inner(g, cpu, dtype):
    """The NHWC forward strategy the phases of ``phases_shared_pack`` run on the shared pack of dy."""
    if g.C >= cpu.lanes(dtype):
        return STRATEGIES["conv2d_forward", "vector"]
    return STRATEGIES["conv2d_forward", "tiled"]


def _input_grad_inner(g, cpu, dtype):
    """The forward strategies the input gradient runs inside (for :meth:`ConvPlan.explain`)."""
    name = _choose_input_grad(g).name
    if name == "full_correlation":
        return (_choose_forward(g.correlation(g.N, g.F, g.Ho, g.Wo, g.C, g.KH, g.KW, g.KH - 1 - g.ph,
                                              g.KW - 1 - g.pw), cpu, dtype),)
    if name == "phases_shared_pack":
        return (_shared_pack_inner(g, cpu, dtype),)
    if name == "phases":
        inner = []
        for rh, rw in _phases(g):
            th, tw = len(range(rh, g.KH, g.sh)), len(range(rw, g.KW, g.sw))
            s = _choose_forward(g.correlation(g.N, g.F, g.Ho, g.Wo, g.C, th, tw, th - 1, tw - 1), cpu, dtype)
            if s not in inner:
                inner.append(s)
        return tuple(inner)
    return ()


def _choose_input_grad(g):
    if g.pointwise:
        return STRATEGIES["conv2d_input_grad", "pointwise_matmul"]
    if g.sh == g.sw == 1 and g.KH - 1 - g.ph >= 0 and g.KW - 1 - g.pw >= 0:
        return STRATEGIES["conv2d_input_grad", "full_correlation"]
    smallest = g.F * max(g.KH // g.sh, 1) * max(g.KW // g.sw, 1)  # the smallest phase's reduction
    if smallest >= TUNING.short_reduction:
        return STRATEGIES["conv2d_input_grad", "phases_shared_pack"]
    return STRATEGIES["conv2d_input_grad", "phases"]


# ---------------------------------------------------------------------------------------
# Convolution: weight- and bias-gradient strategies
# ---------------------------------------------------------------------------------------


def _reuse(packed, layout, g):
    """``packed.array`` when the forward pass left ``x`` in ``layout`` with this padding, else None."""
    if packed is not None and packed.layout is layout and packed.padding == (g.ph, g.pw):
        return packed.array
    return None


@_strategy("conv2d_weight_grad", "pointwise_matmul_nt", ["matmul.matmul_nt"], Layout.NCHW,
           "1x1, stride 1, no padding: dw = sum_n dy[n] @ x[n].T")
def _weight_grad_pointwise(g, x, dy, packed, cpu):
    xc = _reuse(packed, Layout.NCHW, g)
    xc = contiguous(x) if xc is None else xc
    dw = np.empty((g.F, g.C), dtype=dy.dtype)
    _run("matmul.matmul_nt", dy.reshape(g.N, g.F, -1), xc.reshape(g.N, g.C, -1), dw, work=dy.size * g.C)
    return dw.reshape(g.F, g.C, 1, 1)


@_strategy("conv2d_weight_grad", "flat", ["pack.pack_nchw_padded", "flat.flat_weight_grad"], Layout.NCHW_PADDED,
           "stride 1, short receptive field: per-tap dot products over whole planes; per-thread partials",
           needs_finite=True)
def _weight_grad_flat(g, x, dy, packed, cpu):
    xq = _reuse(packed, Layout.NCHW_PADDED, g)
    xq = _pack_nchw(x, g.ph, g.pw).array if xq is None else xq
    threads = numba.get_num_threads()
    partial = np.empty((max(1, min(threads, g.N)), g.F, g.C * g.KH * g.KW), dtype=dy.dtype)
    _run("flat.flat_weight_grad", xq, dy, g.KH, g.KW, partial, work=dy.size * partial[0, 0].size)
    return partial.sum(axis=0).reshape(g.F, g.C, g.KH, g.KW)  # partials summed in thread order


def _nhwc_operand(g, x, packed):
    xp = _reuse(packed, Layout.NHWC_PADDED, g)
    return _pack_nhwc(x, g.ph, g.pw).array if xp is None else xp


def _from_tiled(dw, g):
    """(F, KW * KH * C) -> (F, C, KH, KW)."""
    return contiguous(dw.reshape(g.F, g.KW, g.KH, g.C).transpose(0, 3, 2, 1))


@_strategy("conv2d_weight_grad", "tiled_by_filters", ["pack.pack_nhwc_padded", "tiled.tiled_weight_grad_by_filters"],
           Layout.NHWC_PADDED, "rank-4 updates on interleaved NHWC rows; the filters split between threads")
def _weight_grad_by_filters(g, x, dy, packed, cpu):
    # Every element is summed over the rows in order, whatever the thread count.
    block = max(4, g.F // numba.get_num_threads() // 4 * 4)
    dw = np.empty((g.F, g.KW * g.KH * g.C), dtype=dy.dtype)
    _run("tiled.tiled_weight_grad_by_filters", _nhwc_operand(g, x, packed), dy, g.KH, g.sh, g.sw, block, dw,
         work=dy.size * dw.shape[1])
    return _from_tiled(dw, g)


@_strategy("conv2d_weight_grad", "tiled_by_rows", ["pack.pack_nhwc_padded", "tiled.tiled_weight_grad_by_rows"],
           Layout.NHWC_PADDED, "rank-4 updates on interleaved NHWC rows; the rows split between threads, "
                               "per-thread partials summed in order")
def _weight_grad_by_rows(g, x, dy, packed, cpu):
    R = g.KW * g.KH * g.C
    partial = np.empty((_row_jobs(g, numba.get_num_threads()), g.F, R), dtype=dy.dtype)
    _run("tiled.tiled_weight_grad_by_rows", _nhwc_operand(g, x, packed), dy, g.KH, g.sh, g.sw, partial,
         work=dy.size * R)
    return _from_tiled(partial.sum(axis=0), g)  # partials summed in thread order


@_strategy("conv2d_weight_grad", "vector", ["pack.pack_nhwc_padded", "vector.vector_weight_grad"],
           Layout.NHWC_PADDED, "outer-product tiles of 7 entries x 2 vectors of filters over blocks of rows; "
                               "rows or filter groups split between threads")
def _weight_grad_vector(g, x, dy, packed, cpu):
    L = cpu.lanes(dy.dtype)
    blocks = 2 * -(-g.F // (2 * L))
    size = blocks * L * g.KH * g.KW * g.C
    chunks, gjobs = _vector_weight_grad_split(g, blocks, size * dy.itemsize)
    part = np.empty((chunks, blocks, g.KH, g.KW * g.C, L), dtype=dy.dtype)
    _run("vector.vector_weight_grad", cpu.width, _nhwc_operand(g, x, packed), dy, g.KH, (g.sh, g.sw),
         (chunks, gjobs), part, work=dy.size * g.C * g.KH * g.KW)
    dw = part.sum(axis=0) if chunks > 1 else part[0]  # partials summed in chunk order
    # (blocks, KH, KW * C, L) -> (F, C, KH, KW).
    dw = dw.reshape(blocks, g.KH, g.KW, g.C, L).transpose(0, 4, 3, 1, 2).reshape(blocks * L, g.C, g.KH, g.KW)
    return contiguous(dw[:g.F])


def _vector_weight_grad_split(g, blocks, partial_bytes):
    """``(chunks, group_jobs)``: split the rows (one partial each) unless the partials pass
    ``TUNING.big_partials`` or the rows are too few; then split the filter groups."""
    threads = numba.get_num_threads()
    if threads * partial_bytes <= TUNING.big_partials and g.N * g.Ho >= 2 * threads:
        return threads, 1
    gjobs = max(1, min(threads, blocks // 2))
    return max(1, threads // gjobs), gjobs


def _row_jobs(g, threads):
    """Jobs of the row-split tiled weight gradient: one per thread, at most one per output row."""
    return max(1, min(threads, g.N * g.Ho))


def _choose_tiled_weight_grad(g, itemsize, threads):
    partials = _row_jobs(g, threads) * g.F * g.KW * g.KH * g.C * itemsize
    if g.Wo <= TUNING.short_row or partials > TUNING.big_partials:
        return STRATEGIES["conv2d_weight_grad", "tiled_by_filters"]
    return STRATEGIES["conv2d_weight_grad", "tiled_by_rows"]


def _choose_weight_grad(g, itemsize, threads, cpu):
    if g.pointwise:
        return STRATEGIES["conv2d_weight_grad", "pointwise_matmul_nt"]
    if g.sh == g.sw == 1 and g.C * g.KH * g.KW < TUNING.short_reduction:
        return STRATEGIES["conv2d_weight_grad", "flat"]
    if g.F >= cpu.vector_bytes // itemsize and g.C * g.KH * g.KW >= TUNING.short_reduction:
        return STRATEGIES["conv2d_weight_grad", "vector"]
    return _choose_tiled_weight_grad(g, itemsize, threads)


@_strategy("conv2d_bias_grad", "plane_sums", ["flat.flat_bias_grad"], None,
           "each (n, f) plane of dy summed as one flat run; one filter per job")
def _bias_grad(dy):
    db = np.zeros(dy.shape[1], dtype=dy.dtype)
    _run("flat.flat_bias_grad", contiguous(dy), db, work=dy.size)
    return db


# ---------------------------------------------------------------------------------------
# Convolution plans
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """The strategies of every pass of one convolution geometry, and the way to run them.

    Build one with :func:`fastconv.functional.conv2d_plan` (validated) or :func:`plan_conv2d`.

    Attributes
    ----------
    geometry : ConvGeometry
    dtype : numpy.dtype
    cpu : CPU
    forward, input_grad, weight_grad, bias_grad : Strategy
    weight_grad_nonfinite : Strategy
        Run instead of ``weight_grad`` when that one needs a finite input and ``x`` holds
        an infinity or NaN (``0 * inf`` would put a NaN where the reference has none).
    input_grad_inner : tuple of Strategy
        The forward strategies the input gradient runs inside.
    threads : int
        The thread count the plan was made for (the weight gradient's split depends on it).
    """

    geometry: ConvGeometry
    dtype: np.dtype
    cpu: CPU
    threads: int
    forward: Strategy
    input_grad: Strategy
    input_grad_inner: tuple
    weight_grad: Strategy
    weight_grad_nonfinite: Strategy
    bias_grad: Strategy

    # -- running ----------------------------------------------------------------------
    def run_forward(self, x, w, b=None):
        """``(y, packed)``: the convolution, and ``x`` as the forward strategy packed it.

        Hand ``packed`` to :meth:`run_weight_grad`, which reuses it when it reads the same
        layout. ``packed`` is None for an empty batch.
        """
        g = self.geometry
        _check_operand(self, "x", x, g.x_shape)
        _check_operand(self, "w", w, g.w_shape)
        if b is not None:
            _check_operand(self, "b", b, (g.F,))
        out = np.empty(g.y_shape, dtype=self.dtype)
        if g.N == 0:
            return out, None
        bias = np.zeros(g.F, dtype=self.dtype) if b is None else contiguous(b)
        return out, self.forward.run(g, x, w, bias, out, self.cpu)

    def run_input_grad(self, dy, w):
        """dx: the full correlation of dy (dilated by the stride) with the 180-degree-rotated kernel."""
        g = self.geometry
        _check_operand(self, "dy", dy, g.y_shape)
        _check_operand(self, "w", w, g.w_shape)
        if g.N == 0:
            return np.zeros(g.x_shape, dtype=self.dtype)
        return self.input_grad.run(self, contiguous(dy), w)

    def run_weight_grad(self, dy, x, packed=None):
        """dw: the correlation of x (zero-padded) with dy, summed over the batch.

        ``packed``: what :meth:`run_forward` returned for this ``x`` (saves packing it again).
        """
        g = self.geometry
        _check_operand(self, "dy", dy, g.y_shape)
        _check_operand(self, "x", x, g.x_shape)
        if g.N == 0:
            return np.zeros(g.w_shape, dtype=self.dtype)
        strategy = self.weight_grad
        if strategy.needs_finite and not np.isfinite(x).all():
            strategy = self.weight_grad_nonfinite
        return strategy.run(g, x, contiguous(dy), packed, self.cpu)

    def run_bias_grad(self, dy):
        """db: ``dy`` summed over the batch and the pixels."""
        _check_operand(self, "dy", dy, self.geometry.y_shape)
        return self.bias_grad.run(dy)

    # -- explaining -------------------------------------------------------------------
    def explain(self):
        """A few lines naming the strategy and kernels of every pass."""
        g = self.geometry
        inner = ", ".join(s.name for s in self.input_grad_inner)
        wg = self.weight_grad.name
        if self.weight_grad is not self.weight_grad_nonfinite:
            wg += f" ({self.weight_grad_nonfinite.name} when x is not finite)"
        lines = [
            f"conv2d x{g.x_shape} w{g.w_shape} stride {(g.sh, g.sw)} padding {(g.ph, g.pw)} {self.dtype} "
            f"on {self.cpu.name} ({8 * self.cpu.vector_bytes}-bit vectors), {self.threads} threads",
            f"  forward      {self.forward.name}: {self.forward.summary}",
            f"  input grad   {self.input_grad.name}{' -> ' + inner if inner else ''}: {self.input_grad.summary}",
            f"  weight grad  {wg}: {self.weight_grad.summary}"
            + (" (reuses the forward's packed x)" if self.weight_grad.reads is self.forward.reads else ""),
            f"  bias grad    {self.bias_grad.name}: {self.bias_grad.summary}",
        ]
        return "\n".join(lines)

    def __str__(self):
        return self.explain()

    def strategies(self):
        """Every strategy this plan can run (including fallbacks and inner ones)."""
        found = [self.forward, self.input_grad, *self.input_grad_inner, self.weight_grad,
                 self.weight_grad_nonfinite, self.bias_grad]
        return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=4096)
def _conv_plan(geometry, dtype, cpu, threads):
    g = geometry
    wg = _choose_weight_grad(g, dtype.itemsize, threads, cpu)
    return ConvPlan(
        geometry=g, dtype=dtype, cpu=cpu, threads=threads,
        forward=_choose_forward(g, cpu, dtype),
        input_grad=_choose_input_grad(g),
        input_grad_inner=_input_grad_inner(g, cpu, dtype),
        weight_grad=wg,
        weight_grad_nonfinite=_choose_tiled_weight_grad(g, dtype.itemsize, threads) if wg.needs_finite else wg,
        bias_grad=STRATEGIES["conv2d_bias_grad", "plane_sums"],
    )


def plan_conv2d(geometry, dtype, cpu=None):
    """The :class:`ConvPlan` of a validated ``geometry`` (a :class:`ConvGeometry`) in ``dtype``.

    ``cpu`` defaults to :data:`HOST`; another :class:`CPU` plans (and runs) the kernels
    another CPU would take, e.g. the 256-bit (AVX2) kernels on an AVX-512 machine. Plans are cached;
    the thread count of the calling thread is part of the key.
    """
    return _conv_plan(geometry, np.dtype(dtype), HOST if cpu is None else cpu, numba.get_num_threads())


# ---------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------


@_strategy("max_pool2d_forward", "window_2x2", ["maxpool.maxpool_forward_2x2"], Layout.NCHW,
           "2x2 windows at stride 2 without padding: stride-2 loads merged with branch-free selects")
def _pool_2x2(g, planes, out, indices):
    _run("maxpool.maxpool_forward_2x2", planes, out, indices, work=out.size * 4)


@_strategy("max_pool2d_forward", "window_any", ["maxpool.maxpool_forward_window"], Layout.NCHW,
           "any window: interior windows merged tap by tap with branch-free selects, edges one by one")
def _pool_any(g, planes, out, indices):
    _run("maxpool.maxpool_forward_window", planes, (g.KH, g.KW), (g.sh, g.sw), (g.ph, g.pw), out, indices,
         work=out.size * g.KH * g.KW)


@_strategy("max_pool2d_backward", "route", ["maxpool.maxpool_backward_route"], Layout.NCHW,
           "each dy element added to its window's winner; bad indices counted, never written through")
def _pool_route(dy, indices, dx):
    return _run("maxpool.maxpool_backward_route", dy, indices, dx, work=dx.size + dy.size)


@dataclasses.dataclass(frozen=True)
class PoolPlan:
    """The strategies of one max-pooling geometry (see :class:`ConvPlan`)."""

    geometry: ConvGeometry
    dtype: np.dtype
    forward: Strategy
    backward: Strategy

    def run_forward(self, x):
        """``(y, indices)``: the maxima and the flat index of each winner in its plane."""
        g = self.geometry
        _check_operand(self, "x", x, g.x_shape)
        out = np.empty(g.y_shape, dtype=self.dtype)
        indices = np.empty(g.y_shape, dtype=np.int64)
        if g.N:
            P = g.N * g.C
            self.forward.run(g, contiguous(x).reshape(P, g.H, g.W), out.reshape(P, g.Ho, g.Wo),
                             indices.reshape(P, g.Ho, g.Wo))
        return out, indices

    def run_backward(self, dy, indices):
        """dx: each ``dy`` element routed to its window's winner (``indices`` from :meth:`run_forward`)."""
        _check_operand(self, "dy", dy, self.geometry.y_shape)
        return route_max_pool2d(dy, indices, self.geometry.x_shape)

    def explain(self):
        g = self.geometry
        return (f"max_pool2d x{g.x_shape} kernel {(g.KH, g.KW)} stride {(g.sh, g.sw)} padding {(g.ph, g.pw)} "
                f"{self.dtype}\n  forward   {self.forward.name}: {self.forward.summary}\n"
                f"  backward  {self.backward.name}: {self.backward.summary}")

    def __str__(self):
        return self.explain()

    def strategies(self):
        return [self.forward, self.backward]


def route_max_pool2d(dy, indices, x_shape, func="max_pool2d_backward"):
    """dx of shape ``x_shape``: ``dx[n, c].flat[indices[n, c, k]] += dy[n, c, k]`` (the ``route`` strategy).

    ``dy`` and ``indices`` share their shape ``(N, C, ...)``. The kernel checks every index
    before it writes; a ``ValueError`` naming ``func`` is raised after it if any was
    outside ``[0, H*W)``.
    """
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    if dy.size == 0:
        dx[...] = 0
        return dx
    P = N * C
    bad = STRATEGIES["max_pool2d_backward", "route"].run(
        contiguous(dy).reshape(P, -1), contiguous(indices, np.int64).reshape(P, -1), dx.reshape(P, H * W))
    if bad:
        lo, hi = int(indices.min()), int(indices.max())
        raise ValueError(
            f"{func}: indices must lie in [0, H*W) = [0, {H * W}) for input_shape {(N, C, H, W)}; "
            f"got values in [{lo}, {hi}] ({bad} out of range)"
        )
    return dx


@functools.lru_cache(maxsize=1024)
def plan_max_pool2d(geometry, dtype):
    """The :class:`PoolPlan` of a validated ``geometry`` (a :class:`ConvGeometry` with ``F == C``) in ``dtype``."""
    g = geometry
    name = "window_2x2" if (g.KH, g.KW, g.sh, g.sw, g.ph, g.pw) == (2, 2, 2, 2, 0, 0) else "window_any"
    return PoolPlan(g, np.dtype(dtype), STRATEGIES["max_pool2d_forward", name],
                    STRATEGIES["max_pool2d_backward", "route"])


# ---------------------------------------------------------------------------------------
# Elementwise and dense layers: one strategy each
# ---------------------------------------------------------------------------------------


@_strategy("relu_forward", "elementwise", ["elementwise.elementwise_relu"], None,
           "one parallel pass; NaN stays NaN")
def relu_forward(x):
    """``max(x, 0)`` of any float array (no checks: see :func:`fastconv.functional.relu`)."""
    flat = contiguous(x).reshape(-1)
    out = np.empty(x.shape, dtype=x.dtype)
    _run("elementwise.elementwise_relu", flat, out.reshape(-1), work=flat.size)
    return out


@_strategy("relu_backward", "elementwise", ["elementwise.elementwise_relu_grad"], None,
           "one parallel pass reading the forward input: dy where not x <= 0")
def relu_backward(dy, x):
    """``dy`` where ``not x <= 0``, else 0 (no checks: see :func:`fastconv.functional.relu_backward`)."""
    dx = np.empty(x.shape, dtype=x.dtype)
    _run("elementwise.elementwise_relu_grad", contiguous(dy).reshape(-1), contiguous(x).reshape(-1),
         dx.reshape(-1), work=x.size)
    return dx


@_strategy("linear_forward", "matmul_nt", ["matmul.matmul_nt"], None,
           "x @ weight.T as 4x4 tiles of dot products, no transposed copy")
def linear_forward(x2, weight, bias):
    """``x2 @ weight.T + bias`` for 2-D ``x2`` (no checks: see :func:`fastconv.functional.linear`)."""
    a, b = contiguous(x2), contiguous(weight)
    out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
    _run("matmul.matmul_nt", a[None], b[None], out, work=a.shape[0] * a.shape[1] * b.shape[0])
    if bias is not None:
        out += bias
    return out


@_strategy("matmul", "matmul_nn", ["matmul.matmul_nn"], None, "4 rows x 256 columns of the product per job")
def matmul(a, b):
    """``a @ b`` for 2-D arrays on fastconv's thread pool (no checks: see :func:`fastconv.functional.matmul`).

    See :mod:`fastconv.kernels.matmul` for why not NumPy's BLAS.
    """
    a, b = contiguous(a), contiguous(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _run("matmul.matmul_nn", a, b[None], np.zeros(a.shape[0], dtype=a.dtype), out[None],
         work=a.shape[0] * a.shape[1] * b.shape[1])
    return out


@_strategy("linear_backward", "matmul_nn", ["matmul.matmul_nn"], None,
           "dx = dy @ weight and dw = dy.T @ x as matrix products on fastconv's threads")
def linear_backward(d2, x2, weight, input_grad=True):
    """``(dx2, dw, db)`` for 2-D operands; ``dx2`` is None without ``input_grad`` (no checks)."""
    dw = matmul(d2.T, x2)
    db = d2.sum(axis=0)
    dx2 = matmul(d2, weight) if input_grad else None
    return dx2, dw, db


# ---------------------------------------------------------------------------------------
# Activations: pointwise functions and softmax over one axis
# ---------------------------------------------------------------------------------------

#: The pointwise activations: ``op -> {strategy: (scalar function of kernels.activation, work per element)}``.
#: Every strategy runs the same two kernels with another compiled-in scalar function.
POINTWISE = {
    "leaky_relu": {"pointwise": ("leaky_relu", 1)},
    "elu": {"pointwise": ("elu", 8)},
    "gelu": {"erf": ("gelu", 16), "tanh": ("gelu_tanh", 12)},
    "silu": {"pointwise": ("silu", 8)},
    "sigmoid": {"pointwise": ("sigmoid", 8)},
    "tanh": {"pointwise": ("tanh", 8)},
}


def _register_pointwise(op, name, helper, cost):
    kernels = ["activation.activation_pointwise"]

    @_strategy(f"{op}_forward", name, kernels, None, f"one parallel pass of activation._{helper}")
    def forward(x, a):
        flat = contiguous(x).reshape(-1)
        out = np.empty(x.shape, dtype=x.dtype)
        _run(kernels[0], kernel(f"activation._{helper}"), flat, x.dtype.type(a), out.reshape(-1),
             work=flat.size * cost)
        return out

    @_strategy(f"{op}_backward", name, ["activation.activation_pointwise_grad"], None,
               f"one parallel pass of activation._{helper}_grad, reading the forward input")
    def backward(dy, x, a):
        flat = contiguous(x).reshape(-1)
        dx = np.empty(x.shape, dtype=x.dtype)
        _run("activation.activation_pointwise_grad", kernel(f"activation._{helper}_grad"), contiguous(dy).reshape(-1),
             flat, x.dtype.type(a), dx.reshape(-1), work=flat.size * cost)
        return dx


for _op, _variants in POINTWISE.items():
    for _name, (_helper, _cost) in _variants.items():
        _register_pointwise(_op, _name, _helper, _cost)


def pointwise_forward(op, x, a=0.0, strategy="pointwise"):
    """Activation ``op`` of :data:`POINTWISE` (its one parameter ``a``) of any float array (no checks)."""
    return STRATEGIES[f"{op}_forward", strategy].run(x, a)


def pointwise_backward(op, dy, x, a=0.0, strategy="pointwise"):
    """The gradient of :func:`pointwise_forward` from the forward input ``x`` (no checks)."""
    return STRATEGIES[f"{op}_backward", strategy].run(dy, x, a)


def _register_softmax(op, log):
    for name, layout in (("rows", "the axis is the last one: one contiguous row per job"),
                         ("columns", "axis followed by others: blocks of 256 contiguous columns per job")):
        fwd, grad = f"activation.activation_softmax_{name}", f"activation.activation_softmax_{name}_grad"
        two_d = name == "rows"

        @_strategy(f"{op}_forward", name, [fwd], None, f"max-shifted, over (outer, D, inner); {layout}")
        def forward(x3, out3, fwd=fwd, two_d=two_d):
            O, D, I = x3.shape
            shape = (O, D) if two_d else (O, D, I)
            _run(fwd, x3.reshape(shape), log, out3.reshape(shape), work=x3.size * 12)

        @_strategy(f"{op}_backward", name, [grad], None, f"from the forward output; {layout}")
        def backward(dy3, y3, dx3, grad=grad, two_d=two_d):
            O, D, I = y3.shape
            shape = (O, D) if two_d else (O, D, I)
            _run(grad, dy3.reshape(shape), y3.reshape(shape), log, dx3.reshape(shape), work=y3.size * 4)


_register_softmax("softmax", False)
_register_softmax("log_softmax", True)


def _axis_view(shape, dim):
    """``(outer, D, inner)``: ``shape`` seen as three axes around axis ``dim`` (already in range)."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def softmax_forward(x, dim, log=False):
    """Softmax (``log=False``) or log-softmax of ``x`` over axis ``dim`` (``0 <= dim < x.ndim``; no checks)."""
    view = _axis_view(x.shape, dim)
    out = np.empty(x.shape, dtype=x.dtype)
    if out.size:
        strategy = STRATEGIES["log_softmax_forward" if log else "softmax_forward", "rows" if view[2] == 1 else "columns"]
        strategy.run(contiguous(x).reshape(view), out.reshape(view))
    return out


def softmax_backward(dy, y, dim, log=False):
    """The gradient of :func:`softmax_forward` from its output ``y`` (no checks)."""
    view = _axis_view(y.shape, dim)
    dx = np.empty(y.shape, dtype=y.dtype)
    if dx.size:
        strategy = STRATEGIES["log_softmax_backward" if log else "softmax_backward", "rows" if view[2] == 1 else "columns"]
        strategy.run(contiguous(dy).reshape(view), contiguous(y).reshape(view), dx.reshape(view))
    return dx
