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
    >>> from fastconv.plan import STRATEGIES
    >>> p = fc.conv2d_plan((64, 32, 14, 14), (64, 32, 3, 3), padding=1)
    >>> p.forward.op, p.weight_grad.op
    ('conv2d_forward', 'conv2d_weight_grad')
    >>> STRATEGIES["conv2d_forward", p.forward.name] is p.forward  # the name ('vector', ...) depends on the CPU
    True

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
    "PoolGeometry",
    "PoolWindows",
    "PoolPlan",
    "AvgPoolPlan",
    "plan_conv2d",
    "plan_max_pool2d",
    "plan_adaptive_max_pool2d",
    "plan_avg_pool2d",
    "plan_adaptive_avg_pool2d",
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
    depthwise_rows : float
        A depthwise forward pass (and stride-1 input gradient) whose output rows are at least
        this many vectors long runs ``depthwise_rows`` (NCHW, the vector along the row), else
        the NHWC ``depthwise`` kernels (the vector over channels). float32, 512-bit, 1 thread
        (``benchmarks/layers.py --clock cpu --only depthwise``): 8 x 144 x 56 x 56 3.9 ms against 14.2; 8 x 384 x 14 x 14
        1.1 against 2.7; 8 x 960 x 7 x 7 1.4 against 1.9; 4-wide outputs 1.7 against 1.3 (8 x 960 x 7 x 7
        at stride 2), 3-wide 0.74 against 0.63.
    depthwise_rows_backward : float
        The same for the depthwise weight gradient (per-tap dot products along the rows of
        ``dy``: 112 x 112 maps 4.5 ms against 11.6, 14 x 14 2.0 against 4.0, 7 x 7 2.9 against
        1.8) and for the strided input gradient (``depthwise_rows_strided``, rows of ``W // sw``
        per column phase: 8 x 96 x 56 x 56 at stride 2 2.9 ms against 5.6, 7 x 7 1.7 against 0.6).
    depthwise_flat : float
        A depthwise pass at stride 1 whose output rows are as wide as the input's (``'same'``
        padding) and at most this many vectors long runs ``depthwise_flat`` (the vector along the
        flattened plane, masked loads for the padding; forward, input and weight gradients).
        float32, 512-bit, 1 thread (forward / input / weight gradient, ms; ``benchmarks/NOTES.md``,
        "Depthwise on narrow maps"): 8 x 384 x 14 x 14 0.46 / 0.45 / 0.52 against the rows kernels'
        1.31 / 1.33 / 1.99; 8 x 960 x 7 x 7 0.38 / 0.37 / 0.49 against 1.50 / 1.66 / 2.75 (NHWC 2.2 /
        1.1 / 2.1); 8 x 144 x 56 x 56 2.7 / 2.6 / 3.7 against 4.0 / 4.0 / 5.8; 8 x 32 x 112 x 112 3.0 /
        3.1 / 3.6 against 3.2 / 3.3 / 4.4; 4 x 16 x 224 x 224 4.5 / 4.6 / 4.9 against 3.2 / 3.3 / 4.2.
    strided_pointwise_pixels : int
        A 1x1 convolution at a stride above 1 (no padding) whose output planes have at least
        this many pixels subsamples ``x`` once and runs the pointwise matrix products
        (8x256x28x28 -> 512 at stride 2, one thread: forward 7.2 ms instead of 8.7, weight
        gradient 7.3 instead of 11.1); smaller planes keep the vector strategies, whose tiles
        the 49 columns of a 7x7 plane do not fill (16x512x14x14 -> 1024: 2x faster there).
    stream_store_bytes : int
        A normalisation pass that moves at least this many bytes (its inputs and output) writes
        its output by non-temporal stores, straight to memory (``norm_forward/affine_stream``,
        the eval-mode batch norm; ``norm_batch_backward/fused_channels_stream``, dx in training).
        One thread, float32, eval forward: 32 x 64 x 56 x 56 (25.7 MB) 1.42 ms against 1.96
        (torch 1.98), 16 x 64 x 56 x 56 0.51 against 0.83, but 8 x 64 x 56 x 56 (6.4 MB, in the
        cache with its input) 0.25 against 0.17; training backward: 32 x 64 x 56 x 56 4.1 ms
        against 5.2 (torch 6.4), 8 x 64 x 56 x 56 0.94 against 1.23.
    strided_pointwise_channels : int
        Such a 1x1 strided convolution with this many channels or more (or an output plane below
        ``strided_pointwise_pixels``), a vector of filters and ``C >= short_reduction`` runs the vector tiles on the
        subsampled ``x`` packed NHWC (``pointwise_strided_vector``, forward and weight gradient) instead: one
        thread, 8x256x28x28 -> 512 at stride 2 forward 6.2 ms against 7.7, weight gradient 6.7 against 7.7;
        8x512x14x14 -> 1024 forward 5.7 against 7.0 (the vector tiles at stride 2 on the whole x);
        16x128x28x28 -> 256 4.2 against 4.4 and 16x64x56x56 -> 128 5.5 against 5.2 (kept on the matrix products).
    phase_pixels : int
        Output pixels per job of the strided input gradient (``phases_vector``): a job takes
        ``ceil(phase_pixels / Wp)`` rows of one stride phase (``Wp`` the padded width of dy), its tiles
        running flat across them. 1 thread, 16x128x16x16 -> 64 (4x4, stride 2): 1-16 rows within 5%.
    phases_narrow_filters : int
        A strided input gradient whose dx has at most a quarter vector of channels (``4 * C <= L``:
        the DCGAN generator's last layer, C = 3) and dy at least this many runs ``phases_shared_pack``
        (the tiled kernel per phase, dot products along dy's channels) instead of ``phases_vector``,
        whose vectors of dx's channels would be mostly padding: 8x64x16x16 -> 3 (4x4, stride 2) 0.76 ms
        against 1.18; with 16 channels of dy 0.35 against 0.50 the other way.
    """

    short_reduction: int = 32
    short_row: int = 16
    big_partials: int = 4 << 20
    small_work: int = 1 << 18
    depthwise_rows: float = 0.3
    depthwise_rows_backward: float = 0.75
    depthwise_flat: float = 8.0
    strided_pointwise_pixels: int = 128
    stream_store_bytes: int = 16 << 20
    phase_pixels: int = 64
    phases_narrow_filters: int = 64
    strided_pointwise_channels: int = 256


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
    NHWC_PADDED_LANES = "zero-padded NHWC, channels zero-padded to whole vectors (N, H+2ph, W+2pw, Cp)"
    NCHW_SUBSAMPLED = "x[:, :, ::sh, ::sw] of a 1x1 strided convolution, C-contiguous NCHW (N, C, Ho, Wo)"
    NHWC_SUBSAMPLED = "x[:, :, ::sh, ::sw] of a 1x1 strided convolution, packed NHWC (N, Ho, Wo, C)"


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
        ``"adaptive_max_pool2d_forward"``, ``"avg_pool2d_forward"``, ``"avg_pool2d_backward"``,
        ``"relu_forward"``, ``"relu_backward"``, ``"linear_forward"``, ``"linear_backward"``, the norm passes, and
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


_KERNEL_MODULES = {}


def kernel(qualified):
    """The compiled kernel ``"module.function"`` of :mod:`fastconv.kernels`, looked up at call time.

    The module is imported once; the function is read from it on every call (so a test can replace it).
    """
    found = _KERNEL_MODULES.get(qualified)
    if found is None:
        module, name = qualified.split(".")
        found = _KERNEL_MODULES[qualified] = (importlib.import_module(f"fastconv.kernels.{module}"), name)
    return getattr(*found)


def _run(qualified, *args, work):
    """Launch a kernel; on one thread when ``work`` (inner-loop operations) is below ``TUNING.small_work``."""
    return launch(kernel(qualified), *args, serial=work < TUNING.small_work)


def contiguous(a, dtype=None):
    """``a`` as a C-contiguous, aligned, writeable-typed array: a view when it already is one.

    Read-only inputs are copied: Numba types read-only arrays separately, and passing
    one would compile (and cache) a second version of every kernel.
    """
    if isinstance(a, np.ndarray):
        flags = a.flags
        if flags.c_contiguous and flags.aligned and flags.writeable and (dtype is None or a.dtype == dtype):
            return a
    return np.require(a, dtype=dtype, requirements=["C", "A", "W"])


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------


class ConvGeometry(NamedTuple):
    """A validated sliding window: input ``(N, C, H, W)``, ``F`` filters of ``KH x KW``, output ``Ho x Wo``.

    ``dilation`` spaces the taps (tap ``i`` reads row ``oh*sh + i*dilation[0] - ph``); with
    ``groups`` G the channels and filters split into G groups, filter ``f`` reading only the
    ``C / G`` channels of its group (weights ``(F, C / G, KH, KW)``). A pooling is the
    depthwise case, ``F == C``: one ``KH x KW`` window per channel.
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
    dilation: tuple = (1, 1)
    groups: int = 1

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.F, self.C // self.groups, self.KH, self.KW)

    @property
    def dense(self):
        """No dilation and one group: the geometry every dense strategy takes."""
        return self.dilation == (1, 1) and self.groups == 1

    @property
    def depthwise(self):
        """One input channel per group (``groups == C``), any number of filters per channel."""
        return self.groups == self.C and self.groups > 1

    @property
    def y_shape(self):
        return (self.N, self.F, self.Ho, self.Wo)

    @property
    def pointwise(self):
        """A 1x1 convolution at stride 1 without padding: per image, a matrix product in NCHW."""
        return self.KH == self.KW == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0 and self.groups == 1

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
    _run("pack.pack_nhwc_padded", HOST.width, contiguous(a), ph, pw, out, work=out.size)
    return Packed(Layout.NHWC_PADDED, (ph, pw), out)


def _pack_nchw(a, ph, pw):
    """Copy an NCHW array into a new zero-padded NCHW array (one parallel pass)."""
    N, C, H, W = a.shape
    out = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=a.dtype)
    _run("pack.pack_nchw_padded", contiguous(a), ph, pw, out, work=out.size)
    return Packed(Layout.NCHW_PADDED, (ph, pw), out)


class _Rotated:
    """The input gradient's kernel: ``w`` rotated by 180 degrees, channel axes swapped (within each of
    ``groups`` groups), not yet copied.

    The vector strategy packs it straight from ``w``; the others take :meth:`array`.
    """

    def __init__(self, w, groups=1):
        self.w = contiguous(w)
        self.groups = groups
        self.shape = (w.shape[1] * groups, w.shape[0] // groups, w.shape[2], w.shape[3])
        self.dtype = w.dtype

    def array(self):
        G, (F, Cg, KH, KW) = self.groups, self.w.shape
        k = self.w.reshape(G, F // G, Cg, KH, KW)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        return contiguous(k).reshape(self.shape)


def _weights(w):
    """The kernel as an (F, C, KH, KW) array (a :class:`_Rotated` one copied now)."""
    return w.array() if isinstance(w, _Rotated) else w


def _tiled_weights(w):
    """(F, C, KH, KW) -> (F, KW * KH * C), ordered (f, j, i, c) as the tiled kernels read the input."""
    F, C, KH, KW = w.shape
    return contiguous(w.transpose(0, 3, 2, 1)).reshape(F, KW * KH * C)


def _relu_in_place(out, relu):
    """The ReLU of the strategies whose kernel has no fused one: one more pass, in place."""
    if relu:
        flat = out.reshape(-1)
        _run("elementwise.elementwise_relu", flat, flat, work=flat.size)


@_strategy("conv2d_forward", "pointwise_matmul", ["matmul.matmul_nn", "elementwise.elementwise_relu"], Layout.NCHW,
           "1x1, stride 1, no padding: y[n] = w @ x[n] per image, no repacking")
def _forward_pointwise(g, x, w, b, out, cpu, relu=False):
    packed = Packed(Layout.NCHW, (0, 0), contiguous(x))
    _run("matmul.matmul_nn", cpu.width, contiguous(_weights(w)).reshape(g.F, g.C),
         packed.array.reshape(g.N, g.C, g.H * g.W), b,
         out.reshape(g.N, g.F, g.H * g.W), work=out.size * g.C)
    _relu_in_place(out, relu)
    return packed


def _tiled_on_packed(g, xp, w, b, out, cpu):
    _run("tiled.tiled_forward_4x4", xp, _tiled_weights(_weights(w)), g.KH, b, g.sh, g.sw, out,
         work=out.size * g.C * g.KH * g.KW)


@_strategy("conv2d_forward", "tiled", ["pack.pack_nhwc_padded", "tiled.tiled_forward_4x4", "elementwise.elementwise_relu"], Layout.NHWC_PADDED,
           "zero-padded NHWC, rows interleaved; 4 pixels x 4 filters dot-product tiles (few filters)")
def _forward_tiled(g, x, w, b, out, cpu, relu=False):
    packed = _pack_nhwc(x, g.ph, g.pw)
    _tiled_on_packed(g, packed.array, w, b, out, cpu)
    _relu_in_place(out, relu)
    return packed


_forward_tiled.on_packed = _tiled_on_packed


@_strategy("conv2d_forward", "flat", ["flat.flat_forward"], Layout.NCHW,
           "stride 1, short receptive field: vector tiles along whole zero-padded NCHW planes (padded per job, "
           "in cache), accumulators in registers")
def _forward_flat(g, x, w, b, out, cpu, relu=False):
    packed = Packed(Layout.NCHW, (g.ph, g.pw), contiguous(x))
    _run("flat.flat_forward", cpu.width, packed.array, contiguous(_weights(w)), b, (g.ph, g.pw, 1, 1), 1, relu,
         out, work=out.size * g.C * g.KH * g.KW)
    return packed


@_strategy("conv2d_forward", "filter_vector", ["pack.pack_nhwc_padded", "filter_vector.filter_vector_forward",
            "elementwise.elementwise_relu"],
           Layout.NHWC_PADDED, "strided, short receptive field: the vector axis is the filter axis")
def _forward_filter_vector(g, x, w, b, out, cpu, relu=False):
    packed = _pack_nhwc(x, g.ph, g.pw)
    wk = contiguous(_weights(w).transpose(2, 3, 1, 0))
    _run("filter_vector.filter_vector_forward", packed.array, wk, b, g.sh, g.sw, out,
         work=out.size * g.C * g.KH * g.KW)
    _relu_in_place(out, relu)
    return packed


def _vector_weights(w, lanes, groups=1):
    """(F, C/G, KH, KW) (or a :class:`_Rotated`) -> (G, blocks, KH, KW, C/G, lanes), ``blocks = ceil(F/G/lanes)``."""
    F, Cg, KH, KW = w.shape
    wv = np.empty((groups, -(-F // groups // lanes), KH, KW, Cg, lanes), dtype=w.dtype)
    rotated = isinstance(w, _Rotated)
    _run("pack.pack_vector_weights", w.w if rotated else contiguous(w), rotated, wv, work=wv.size)
    return wv


def _vector_on_packed(g, xp, w, b, out, cpu, relu=False):
    _run("vector.vector_forward", cpu.width, xp, _vector_weights(w, cpu.lanes(out.dtype), g.groups), b,
         (g.sh, g.sw), g.dilation, relu, out, work=out.size * g.C // g.groups * g.KH * g.KW)


@_strategy("conv2d_forward", "vector",
           ["pack.pack_nhwc_padded", "pack.pack_vector_weights", "vector.vector_forward"], Layout.NHWC_PADDED,
           "zero-padded NHWC; outer-product tiles of pixels x 2 vectors of filters, accumulators in registers")
def _forward_vector(g, x, w, b, out, cpu, relu=False):
    packed = _pack_nhwc(x, g.ph, g.pw)
    _vector_on_packed(g, packed.array, w, b, out, cpu, relu)
    return packed


_forward_vector.on_packed = _vector_on_packed


def _choose_forward(g, cpu, dtype):
    """The forward strategy for geometry ``g`` on ``cpu``."""
    if g.pointwise:
        return STRATEGIES["conv2d_forward", "pointwise_matmul"]
    if _strided_pointwise_vector(g, cpu.lanes(dtype)):
        return STRATEGIES["conv2d_forward", "pointwise_strided_vector"]
    if _strided_pointwise(g):
        return STRATEGIES["conv2d_forward", "pointwise_strided"]
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
    _run("matmul.matmul_nn", plan.cpu.width, contiguous(w.reshape(g.F, g.C).T), contiguous(dy).reshape(g.N, g.F, -1),
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
           ["pack.pack_nhwc_padded", "tiled.tiled_forward_4x4", "pack.pack_scatter_phase"], None,
           "strided, few input channels: one stride-1 correlation per phase with its sub-kernel on the tiled "
           "kernel, dy packed once for all")
def _input_grad_phases_shared(plan, dy, w):
    # The sub-kernels have at most t = ceil(K / s) taps per axis; dy is packed once, padded
    # for the largest; a smaller one computes t - th surplus rows (columns) per side, skipped.
    g = plan.geometry
    tmax_h, tmax_w = -(-g.KH // g.sh), -(-g.KW // g.sw)
    dyp = _pack_nhwc(dy, tmax_h - 1, tmax_w - 1).array
    zeros = np.zeros(g.C, dtype=dy.dtype)

    def compute(sub, th, tw):
        phase = np.empty((g.N, g.C, g.Ho + 2 * tmax_h - th - 1, g.Wo + 2 * tmax_w - tw - 1), dtype=dy.dtype)
        sub_g = g.correlation(g.N, g.F, dyp.shape[1], dyp.shape[2], g.C, th, tw, 0, 0)
        _tiled_on_packed(sub_g, dyp, _Rotated(sub), zeros, phase, plan.cpu)
        return phase, (tmax_h - th, tmax_w - tw)

    return _each_phase(g, dy, w, compute)


def _phase_padding(size, out, k, s, p):
    """dy's zero padding ``(before, after)`` along one axis for :func:`fastconv.kernels.phases.phases_input_grad`:
    as far as the taps of the phase rows that land in dx (of ``size``) read, no further."""
    before = after = 0
    for r in range(min(s, k)):
        lo, hi = max(0, -(-(p - r) // s)), -(-(size + p - r) // s)  # the phase's rows q in dx
        if lo < hi:
            before = max(before, len(range(r, k, s)) - 1 - lo)
            after = max(after, hi - out)
    return before, after


def _phases_vector(plan, dy, w, b):
    """dx + b of a dense strided convolution by :func:`fastconv.kernels.phases.phases_input_grad`."""
    g = plan.geometry
    (top, bottom), (left, right) = (_phase_padding(g.H, g.Ho, g.KH, g.sh, g.ph),
                                    _phase_padding(g.W, g.Wo, g.KW, g.sw, g.pw))
    dyp = np.empty((g.N, top + g.Ho + bottom, left + g.Wo + right, g.F), dtype=dy.dtype)
    _run("pack.pack_nhwc_padded", plan.cpu.width, contiguous(dy), top, left, dyp, work=dyp.size)
    L = plan.cpu.lanes(dy.dtype)
    wv = np.empty((-(-g.C // L) * g.KH * g.KW * g.F, L), dtype=dy.dtype)
    _run("phases.phases_weights", contiguous(w), (g.sh, g.sw), wv, work=wv.size)
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    rows = max(1, -(-TUNING.phase_pixels // dyp.shape[2]))
    _run("phases.phases_input_grad", plan.cpu.width, dyp, wv, b, (g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, top, left),
         rows, dx, work=dy.size * g.C * g.KH * g.KW)
    return dx


@_strategy("conv2d_input_grad", "phases_vector",
           ["pack.pack_nhwc_padded", "phases.phases_weights", "phases.phases_input_grad"], None,
           "strided: every stride phase in one launch on the vector tiles (dy packed once, NHWC), "
           "dx's rows written from the tiles' buffer")
def _input_grad_phases_vector(plan, dy, w):
    return _phases_vector(plan, dy, w, np.zeros(plan.geometry.C, dtype=dy.dtype))


_input_grad_phases_vector.with_bias = _phases_vector


def _input_grad_inner(g, cpu, dtype):
    """The forward strategies the input gradient runs inside (for :meth:`ConvPlan.explain`)."""
    if _choose_input_grad(g, cpu, dtype).name == "full_correlation":
        return (_choose_forward(g.correlation(g.N, g.F, g.Ho, g.Wo, g.C, g.KH, g.KW, g.KH - 1 - g.ph,
                                              g.KW - 1 - g.pw), cpu, dtype),)
    return ()


def _input_grad_nonfinite_weights(plan, dy, w):
    """dx when ``w`` holds NaN or infinity, each such weight reaching only the inputs it touches.

    The strategies correlate a zero-padded (and, strided, zero-dilated) ``dy`` with the
    rotated kernel, so a non-finite weight meets padding zeros and ``0 * inf = NaN`` would
    spread over dx, unlike PyTorch and the reference. Here the finite weights run through
    the planned strategy, and each non-finite tap ``(f, c, kh, kw)`` is then added on its
    own: ``dx[:, c, oh*sh + kh - ph, ow*sw + kw - pw] += dy[:, f, oh, ow] * w[f, c, kh, kw]``.
    """
    g = plan.geometry
    bad = ~np.isfinite(w)
    dx = plan.input_grad.run(plan, dy, np.where(bad, w.dtype.type(0), w))
    if not dx.flags.writeable:
        dx = dx.copy()
    for f, c, kh, kw in zip(*np.nonzero(bad)):
        rows = _tap_range(g.H, g.Ho, kh, g.sh, g.ph)
        cols = _tap_range(g.W, g.Wo, kw, g.sw, g.pw)
        if rows is None or cols is None:
            continue
        (o0, o1, i0, i1), (q0, q1, j0, j1) = rows, cols
        dx[:, c, i0:i1:g.sh, j0:j1:g.sw] += dy[:, f, o0:o1, q0:q1] * w[f, c, kh, kw]
    return dx


def _tap_range(size, out_size, k, stride, pad):
    """``(o0, o1, i0, i1)``: the outputs ``o0 <= o < o1`` whose tap ``k`` reads input ``o*stride + k - pad``
    inside ``[0, size)``, and the input slice ``i0:i1`` (step ``stride``) they read; None if there are none."""
    o0 = max(0, -(-(pad - k) // stride))
    o1 = min(out_size, (size - 1 - k + pad) // stride + 1)
    if o0 >= o1:
        return None
    return o0, o1, o0 * stride + k - pad, (o1 - 1) * stride + k - pad + 1


def _choose_input_grad(g, cpu, dtype):
    if g.pointwise:
        return STRATEGIES["conv2d_input_grad", "pointwise_matmul"]
    if _strided_pointwise(g):
        return STRATEGIES["conv2d_input_grad", "pointwise_strided"]
    if g.sh == g.sw == 1 and g.KH - 1 - g.ph >= 0 and g.KW - 1 - g.pw >= 0:
        return STRATEGIES["conv2d_input_grad", "full_correlation"]
    if 4 * g.C <= cpu.lanes(dtype) and g.F >= TUNING.phases_narrow_filters:
        return STRATEGIES["conv2d_input_grad", "phases_shared_pack"]
    return STRATEGIES["conv2d_input_grad", "phases_vector"]


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
           "stride 1, short receptive field: per-tap dot products over whole planes, filters x taps vector tiles; "
           "per-thread partials", needs_finite=True)
def _weight_grad_flat(g, x, dy, packed, cpu):
    threads = numba.get_num_threads()
    partial = np.empty((max(1, min(threads, g.N)), g.F, g.C, g.KH, g.KW), dtype=dy.dtype)
    _run("flat.flat_weight_grad", cpu.width, _pack_nchw(x, g.ph, g.pw).array, dy, (1, 1), 1, partial,
         work=dy.size * g.C * g.KH * g.KW)
    return partial.sum(axis=0)  # partials summed in thread order


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
    L, G = cpu.lanes(dy.dtype), g.groups
    Cg, Fg = g.C // G, g.F // G
    blocks = -(-Fg // L)
    size = G * blocks * L * g.KH * g.KW * Cg
    chunks, ujobs = _vector_weight_grad_split(g, G * ((blocks + 1) // 2), size * dy.itemsize)
    part = np.empty((chunks, G, blocks, g.KH, g.KW, Cg, L), dtype=dy.dtype)
    _run("vector.vector_weight_grad", cpu.width, _nhwc_operand(g, x, packed), contiguous(dy), (g.sh, g.sw), g.dilation,
         (chunks, ujobs), part, work=dy.size * Cg * g.KH * g.KW)
    dw = part.sum(axis=0) if chunks > 1 else part[0]  # partials summed in chunk order
    # (G, blocks, KH, KW, Cg, L) -> (F, Cg, KH, KW).
    dw = dw.transpose(0, 1, 5, 4, 2, 3).reshape(G, blocks * L, Cg, g.KH, g.KW)
    return contiguous(dw[:, :Fg]).reshape(g.F, Cg, g.KH, g.KW)


def _vector_weight_grad_split(g, units, partial_bytes):
    """``(chunks, unit_jobs)``: split the rows (one partial each) unless the partials pass
    ``TUNING.big_partials`` or the rows are too few; then split the units (pairs of filter blocks)."""
    threads = numba.get_num_threads()
    if threads * partial_bytes <= TUNING.big_partials and g.N * g.Ho >= 2 * threads:
        return threads, 1
    ujobs = max(1, min(threads, units))
    return max(1, threads // ujobs), ujobs


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
    if _strided_pointwise_vector(g, cpu.vector_bytes // itemsize):
        return STRATEGIES["conv2d_weight_grad", "pointwise_strided_vector"]
    if _strided_pointwise(g):
        return STRATEGIES["conv2d_weight_grad", "pointwise_strided_nt"]
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
# Convolution: depthwise
# ---------------------------------------------------------------------------------------


def _depthwise_lanes(g, cpu, dtype):
    """``Cp``: the channels rounded up to whole vectors of ``cpu`` in ``dtype``."""
    L = cpu.lanes(dtype)
    return -(-g.C // L) * L


def _depthwise_pack(a, pad, m, Cp):
    """NCHW ``a`` (channels ``C*m``) -> zero-padded NHWC ``(N, H+2ph, W+2pw, m*Cp)`` (one parallel pass)."""
    N, F, H, W = a.shape
    out = np.empty((N, H + 2 * pad[0], W + 2 * pad[1], m * Cp), dtype=a.dtype)
    _run("depthwise.depthwise_pack", contiguous(a), pad[0], pad[1], m, out, work=out.size)
    return out


def _depthwise_weights(g, w, Cp):
    """(C*m, 1, KH, KW) -> ``wk[k, i, j, c] = w[c*m + k, 0, i, j]``, zero for ``c >= C``."""
    m = g.F // g.C
    wk = np.zeros((m, g.KH, g.KW, Cp), dtype=w.dtype)
    wk[..., :g.C] = w.reshape(g.C, m, g.KH, g.KW).transpose(1, 2, 3, 0)
    return wk


def _depthwise_geom(g):
    return (g.sh, g.sw) + tuple(g.dilation)


@_strategy("conv2d_forward", "depthwise", ["depthwise.depthwise_pack", "depthwise.depthwise_forward"],
           Layout.NHWC_PADDED_LANES, "groups == C: NHWC, a vector of channels per pixel accumulates every tap "
                                     "in a register; rows written back NCHW with the bias (and ReLU)")
def _forward_depthwise(g, x, w, b, out, cpu, relu=False):
    Cp = _depthwise_lanes(g, cpu, out.dtype)
    packed = Packed(Layout.NHWC_PADDED_LANES, (g.ph, g.pw), _depthwise_pack(x, (g.ph, g.pw), 1, Cp))
    _run("depthwise.depthwise_forward", cpu.width, packed.array, _depthwise_weights(g, w, Cp), b,
         _depthwise_geom(g), relu, out, work=out.size * g.KH * g.KW)
    return packed


@_strategy("conv2d_input_grad", "depthwise", ["depthwise.depthwise_pack", "depthwise.depthwise_input_grad"], None,
           "groups == C: dy packed NHWC; each dx pixel gathers the taps reaching it, a vector of channels at a time")
def _input_grad_depthwise(plan, dy, w):
    g = plan.geometry
    Cp = _depthwise_lanes(g, plan.cpu, dy.dtype)
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    _run("depthwise.depthwise_input_grad", plan.cpu.width, _depthwise_pack(dy, (0, 0), g.F // g.C, Cp),
         _depthwise_weights(g, w, Cp), _depthwise_geom(g), (g.ph, g.pw), dx, work=dy.size * g.KH * g.KW)
    return dx


@_strategy("conv2d_weight_grad", "depthwise", ["depthwise.depthwise_pack", "depthwise.depthwise_weight_grad"],
           Layout.NHWC_PADDED_LANES, "groups == C: a vector of channels per tap accumulated along each row of dy; "
                                     "chunks of rows split between threads, partials summed in order")
def _weight_grad_depthwise(g, x, dy, packed, cpu):
    Cp = _depthwise_lanes(g, cpu, dy.dtype)
    xp = _reuse(packed, Layout.NHWC_PADDED_LANES, g)
    if xp is None or xp.shape[3] != Cp:
        xp = _depthwise_pack(x, (g.ph, g.pw), 1, Cp)
    m = g.F // g.C
    chunks = max(1, min(numba.get_num_threads(), g.N * g.Ho))
    part = np.empty((chunks, m, g.KH, g.KW, Cp), dtype=dy.dtype)
    _run("depthwise.depthwise_weight_grad", cpu.width, xp, dy, _depthwise_geom(g), part,
         work=dy.size * g.KH * g.KW)
    dw = part.sum(axis=0) if chunks > 1 else part[0]  # partials summed in chunk order
    # (m, KH, KW, Cp) -> (C*m, 1, KH, KW)
    return contiguous(dw[..., :g.C].transpose(3, 0, 1, 2).reshape(g.F, 1, g.KH, g.KW))


@_strategy("conv2d_forward", "depthwise_rows", ["depthwise.depthwise_rows_forward"], Layout.NCHW,
           "groups == C, wide rows: NCHW, each job pads its plane into the cache split by column phase; "
           "a vector of outputs along the row accumulates every tap in a register")
def _forward_depthwise_rows(g, x, w, b, out, cpu, relu=False):
    packed = Packed(Layout.NCHW, (0, 0), contiguous(x))
    _run("depthwise.depthwise_rows_forward", cpu.width, packed.array, contiguous(w).reshape(g.F, g.KH, g.KW), b,
         _depthwise_geom(g) + (g.ph, g.pw), relu, out, work=out.size * g.KH * g.KW)
    return packed


def _rows_input_grad_padding(g):
    """The padding of the stride-1 input gradient as a forward correlation of dy (negative: not one)."""
    return (g.KH - 1) * g.dilation[0] - g.ph, (g.KW - 1) * g.dilation[1] - g.pw


def _finite_weights_rows(run):
    """A rows input gradient: the NHWC gather instead when ``w`` is not finite (a weight of inf
    must not meet the padding zeros the rows kernels read), else ``run(g, dy, w, dx)`` into a new dx."""

    def input_grad(plan, dy, w):
        if not np.isfinite(w).all():
            return STRATEGIES["conv2d_input_grad", "depthwise"].run(plan, dy, w)
        dx = np.empty(plan.geometry.x_shape, dtype=dy.dtype)
        run(plan, contiguous(dy), w, dx)
        return dx

    return input_grad


@_strategy("conv2d_input_grad", "depthwise_rows", ["depthwise.depthwise_rows_forward"], None,
           "groups == C, stride 1, wide rows: the rows forward kernel on dy padded by (K-1)*d - p with the "
           "rotated kernel, each dx plane summing its m filters (the gather when w is not finite)")
@_finite_weights_rows
def _input_grad_depthwise_rows(plan, dy, w, dx):
    g = plan.geometry
    _rotated_forward(plan, "depthwise.depthwise_rows_forward", (1, 1) + tuple(g.dilation) + _rows_input_grad_padding(g),
                     dy, w, dx)


def _rotated_forward(plan, forward, geom, dy, w, dx):
    """dx of a stride-1 depthwise convolution: the depthwise ``forward`` kernel (rows or flat, with its ``geom``)
    on dy with the 180-degree-rotated kernel and no bias."""
    g = plan.geometry
    wt = contiguous(w[:, :, ::-1, ::-1]).reshape(g.F, g.KH, g.KW)
    _run(forward, plan.cpu.width, dy, wt, np.zeros(g.C, dtype=dy.dtype), geom, False, dx, work=dy.size * g.KH * g.KW)


@_strategy("conv2d_input_grad", "depthwise_rows_strided", ["depthwise.depthwise_rows_input_grad"], None,
           "groups == C, strided, wide rows: NCHW gather; per dx row and column phase the taps reaching it are "
           "fixed and each reads a contiguous run of dy (the NHWC gather when w is not finite)")
@_finite_weights_rows
def _input_grad_depthwise_rows_strided(plan, dy, w, dx):
    g = plan.geometry
    _run("depthwise.depthwise_rows_input_grad", plan.cpu.width, dy, contiguous(w).reshape(g.F, -1),
         _depthwise_geom(g) + (g.ph, g.pw), g.KH, dx, work=dy.size * g.KH * g.KW)


@_strategy("conv2d_weight_grad", "depthwise_rows", ["depthwise.depthwise_rows_weight_grad"], Layout.NCHW,
           "groups == C, wide rows: per image and channel, one dot product per tap of dy's rows with the "
           "plane padded in the cache; per-image partials summed in order")
def _weight_grad_depthwise_rows(g, x, dy, packed, cpu):
    part = np.empty((g.N, g.F, g.KH * g.KW), dtype=dy.dtype)
    _run("depthwise.depthwise_rows_weight_grad", cpu.width, contiguous(x), dy, _depthwise_geom(g) + (g.ph, g.pw),
         g.KH, part, work=dy.size * g.KH * g.KW)
    return part.sum(axis=0).reshape(g.F, 1, g.KH, g.KW)  # partials summed in image order


def _flat_geom(g, pad):
    return tuple(g.dilation) + tuple(pad)


@_strategy("conv2d_forward", "depthwise_flat", ["depthwise.depthwise_flat_forward"], Layout.NCHW,
           "groups == C, stride 1, 'same' width, narrow maps: NCHW, the vector along the flattened plane; each "
           "tap one masked load (the padding is the lanes left out), no copy of the plane")
def _forward_depthwise_flat(g, x, w, b, out, cpu, relu=False):
    packed = Packed(Layout.NCHW, (0, 0), contiguous(x))
    _run("depthwise.depthwise_flat_forward", cpu.width, packed.array, contiguous(w).reshape(g.F, g.KH, g.KW), b,
         _flat_geom(g, (g.ph, g.pw)), relu, out, work=out.size * g.KH * g.KW)
    return packed


@_strategy("conv2d_input_grad", "depthwise_flat", ["depthwise.depthwise_flat_forward"], None,
           "groups == C, stride 1, 'same' width, narrow maps: the flat forward kernel on dy with the rotated "
           "kernel, each dx plane summing its m filters (the gather when w is not finite)")
@_finite_weights_rows
def _input_grad_depthwise_flat(plan, dy, w, dx):
    g = plan.geometry
    _rotated_forward(plan, "depthwise.depthwise_flat_forward", _flat_geom(g, _rows_input_grad_padding(g)), dy, w, dx)


@_strategy("conv2d_weight_grad", "depthwise_flat", ["depthwise.depthwise_flat_weight_grad"], Layout.NCHW,
           "groups == C, stride 1, 'same' width, narrow maps: per filter, one dot product per tap of dy's "
           "flat planes with x's shifted by the tap (masked), every image summed in registers")
def _weight_grad_depthwise_flat(g, x, dy, packed, cpu):
    dw = np.empty((g.F, g.KH * g.KW), dtype=dy.dtype)
    _run("depthwise.depthwise_flat_weight_grad", cpu.width, contiguous(x), dy, _flat_geom(g, (g.ph, g.pw)), g.KH,
         dw, work=dy.size * g.KH * g.KW)
    return dw.reshape(g.F, 1, g.KH, g.KW)


def _flat_applies(g, L):
    """The flat-plane kernels compute ``g``: stride 1, output rows as wide as the input's, narrow maps."""
    return g.sh == g.sw == 1 and g.Wo == g.W and g.Wo <= TUNING.depthwise_flat * L


@functools.lru_cache(maxsize=1024)
def _depthwise_plan(geometry, dtype, cpu, threads):
    """The plan of a depthwise geometry (``groups == C``, any multiplier): the flat-plane kernels at stride 1
    with ``Wo == W`` up to ``TUNING.depthwise_flat`` vectors wide, else NCHW rows on wide maps, else NHWC."""
    g = geometry
    L = cpu.lanes(dtype)

    flat = _flat_applies(g, L)

    def pick(op, wide):
        return STRATEGIES[op, "depthwise_flat" if flat else "depthwise_rows" if wide else "depthwise"]

    wg = pick("conv2d_weight_grad", g.Wo >= TUNING.depthwise_rows_backward * L)
    gather = STRATEGIES["conv2d_input_grad", "depthwise"]
    if flat:
        input_grad = STRATEGIES["conv2d_input_grad", "depthwise_flat"]
    elif g.sh == g.sw == 1 and min(_rows_input_grad_padding(g)) >= 0 and g.W >= TUNING.depthwise_rows * L:
        input_grad = STRATEGIES["conv2d_input_grad", "depthwise_rows"]
    elif g.W // g.sw >= TUNING.depthwise_rows_backward * L:
        input_grad = STRATEGIES["conv2d_input_grad", "depthwise_rows_strided"]
    else:
        input_grad = gather
    return ConvPlan(
        geometry=g, dtype=dtype, cpu=cpu, threads=threads,
        forward=pick("conv2d_forward", g.Wo >= TUNING.depthwise_rows * L),
        input_grad=input_grad,
        input_grad_inner=() if input_grad is gather else (gather,),  # the rows' fallback for non-finite w
        weight_grad=wg, weight_grad_nonfinite=wg,
        bias_grad=STRATEGIES["conv2d_bias_grad", "plane_sums"],
    )
# Convolution: 1x1 at a stride above 1 (ResNet's shortcuts)
# ---------------------------------------------------------------------------------------


def _subsampled_pointwise(g):
    """A dense 1x1 convolution without padding at a stride above 1: a pointwise one on ``x[:, :, ::sh, ::sw]``."""
    return g.dense and g.KH == g.KW == 1 and g.ph == g.pw == 0 and (g.sh, g.sw) != (1, 1)


def _strided_pointwise(g):
    """:func:`_subsampled_pointwise`, output planes of at least ``TUNING.strided_pointwise_pixels``."""
    return _subsampled_pointwise(g) and g.Ho * g.Wo >= TUNING.strided_pointwise_pixels


def _strided_pointwise_vector(g, lanes):
    """:func:`_subsampled_pointwise` with a vector of ``lanes`` filters and a long reduction, on a small plane or
    with ``TUNING.strided_pointwise_channels`` channels: the vector tiles on the subsampled ``x``."""
    return (_subsampled_pointwise(g) and g.F >= lanes and g.C >= TUNING.short_reduction
            and (g.Ho * g.Wo < TUNING.strided_pointwise_pixels or g.C >= TUNING.strided_pointwise_channels))


def _subsampled(g, x, packed=None):
    """``x[:, :, ::sh, ::sw]`` as a C-contiguous ``(N, C, Ho, Wo)`` array (the forward's when it made one)."""
    if packed is not None and packed.layout is Layout.NCHW_SUBSAMPLED:
        return packed.array
    return contiguous(x[:, :, ::g.sh, ::g.sw])


@_strategy("conv2d_forward", "pointwise_strided", ["matmul.matmul_nn", "elementwise.elementwise_relu"],
           Layout.NCHW_SUBSAMPLED, "1x1, stride above 1, no padding: x subsampled once, then y[n] = w @ xs[n]")
def _forward_pointwise_strided(g, x, w, b, out, cpu, relu=False):
    xs = _subsampled(g, x)
    _run("matmul.matmul_nn", cpu.width, contiguous(_weights(w)).reshape(g.F, g.C), xs.reshape(g.N, g.C, -1), b,
         out.reshape(g.N, g.F, -1), work=out.size * g.C)
    _relu_in_place(out, relu)
    return Packed(Layout.NCHW_SUBSAMPLED, (0, 0), xs)


@_strategy("conv2d_forward", "pointwise_strided_vector",
           ["pack.pack_nhwc_padded", "pack.pack_vector_weights", "vector.vector_forward"], Layout.NHWC_SUBSAMPLED,
           "1x1, stride above 1, no padding: x subsampled once and packed NHWC, the vector tiles at stride 1")
def _forward_pointwise_strided_vector(g, x, w, b, out, cpu, relu=False):
    packed = _subsampled_nhwc(g, x)
    _vector_on_packed(_subsampled_geometry(g), packed.array, w, b, out, cpu, relu)
    return packed


def _subsampled_geometry(g):
    """The stride-1 1x1 convolution of ``x[:, :, ::sh, ::sw]``."""
    return g.correlation(g.N, g.C, g.Ho, g.Wo, g.F, 1, 1, 0, 0)


def _subsampled_nhwc(g, x, packed=None):
    """``x[:, :, ::sh, ::sw]`` packed NHWC (the forward's when it made one)."""
    if packed is not None and packed.layout is Layout.NHWC_SUBSAMPLED:
        return packed
    return Packed(Layout.NHWC_SUBSAMPLED, (0, 0), _pack_nhwc(_subsampled(g, x), 0, 0).array)


@_strategy("conv2d_weight_grad", "pointwise_strided_vector", ["pack.pack_nhwc_padded", "vector.vector_weight_grad"],
           Layout.NHWC_SUBSAMPLED, "1x1, stride above 1, no padding: the vector weight gradient on the subsampled x, "
                                   "packed NHWC")
def _weight_grad_pointwise_strided_vector(g, x, dy, packed, cpu):
    xs = Packed(Layout.NHWC_PADDED, (0, 0), _subsampled_nhwc(g, x, packed).array)
    return _weight_grad_vector(_subsampled_geometry(g), None, dy, xs, cpu)


@_strategy("conv2d_input_grad", "pointwise_strided", ["matmul.matmul_nn"], None,
           "1x1, stride above 1, no padding: w.T @ dy[n] scattered into the zeros of dx[:, :, ::sh, ::sw]")
def _input_grad_pointwise_strided(plan, dy, w):
    g = plan.geometry
    dxs = np.empty((g.N, g.C, g.Ho, g.Wo), dtype=dy.dtype)
    _run("matmul.matmul_nn", plan.cpu.width, contiguous(w.reshape(g.F, g.C).T), contiguous(dy).reshape(g.N, g.F, -1),
         np.zeros(g.C, dtype=dy.dtype), dxs.reshape(g.N, g.C, -1), work=dy.size * g.C)
    dx = np.zeros(g.x_shape, dtype=dy.dtype)
    dx[:, :, ::g.sh, ::g.sw] = dxs
    return dx


@_strategy("conv2d_weight_grad", "pointwise_strided_nt", ["matmul.matmul_nt"], Layout.NCHW_SUBSAMPLED,
           "1x1, stride above 1, no padding: dw = sum_n dy[n] @ xs[n].T on the subsampled x")
def _weight_grad_pointwise_strided(g, x, dy, packed, cpu):
    xs = _subsampled(g, x, packed)
    dw = np.empty((g.F, g.C), dtype=dy.dtype)
    _run("matmul.matmul_nt", dy.reshape(g.N, g.F, -1), xs.reshape(g.N, g.C, -1), dw, work=dy.size * g.C)
    return dw.reshape(g.F, g.C, 1, 1)


# ---------------------------------------------------------------------------------------
# Convolution: dilated and grouped geometries (issue 15)
# ---------------------------------------------------------------------------------------


def _uses_dilation_phases(g):
    """Dilated, stride 1, one group: the input gradient as ``dh * dw`` undilated ones, one per phase
    (see :func:`_dilation_phases`)."""
    return g.groups == 1 and g.sh == g.sw == 1 and g.dilation != (1, 1)


def _dilation_phases(g):
    """``[(a, b, sub)]``: the output phase ``y[:, :, a::dh, b::dw]`` is the dense stride-1 convolution ``sub`` of the
    padded-input phase ``xp[:, :, a::dh, b::dw]`` with the undilated kernel (no padding); phases without output are left out.
    """
    (dh, dw), Hp, Wp = g.dilation, g.H + 2 * g.ph, g.W + 2 * g.pw
    phases = []
    for a in range(min(dh, g.Ho)):
        for b in range(min(dw, g.Wo)):
            H, W = len(range(a, Hp, dh)), len(range(b, Wp, dw))
            phases.append((a, b, ConvGeometry(g.N, g.C, H, W, g.F, g.KH, g.KW, 1, 1, 0, 0, H - g.KH + 1, W - g.KW + 1)))
    return phases


def _phase_plans(g, dtype, cpu):
    """``[(a, b, plan)]``: the dense plan of each dilation phase."""
    threads = numba.get_num_threads()
    return [(a, b, _conv_plan(sub, np.dtype(dtype), cpu, threads)) for a, b, sub in _dilation_phases(g)]


@_strategy("conv2d_input_grad", "dilation_phases", [], None,
           "dilated, stride 1, one group: each phase's dense input gradient, written into the padded dx's phase")
def _input_grad_dilation_phases(plan, dy, w):
    g = plan.geometry
    dh, dw = g.dilation
    dxp = np.zeros((g.N, g.C, g.H + 2 * g.ph, g.W + 2 * g.pw), dtype=dy.dtype)
    for a, c, p in _phase_plans(g, dy.dtype, plan.cpu):
        dxp[:, :, a::dh, c::dw] = p.run_input_grad(contiguous(dy[:, :, a::dh, c::dw]), w)
    return contiguous(dxp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])


def _group_weights(w, G):
    """(F, C/G, KH, KW) -> (G, KH, KW, F/G, C/G)."""
    F, Cg, KH, KW = w.shape
    return contiguous(w.reshape(G, F // G, Cg, KH, KW).transpose(0, 3, 4, 1, 2))


@_strategy("conv2d_input_grad", "grouped_gather", ["pack.pack_nhwc_padded", "grouped.grouped_input_grad"], None,
           "grouped or dilated: each dx element gathers the taps that reach it (NHWC dy), all groups in one launch")
def _input_grad_grouped(plan, dy, w):
    g = plan.geometry
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    _run("grouped.grouped_input_grad", _pack_nhwc(dy, 0, 0).array, _group_weights(w, g.groups), (g.sh, g.sw),
         g.dilation, (g.ph, g.pw), dx, work=dy.size * g.C // g.groups * g.KH * g.KW)
    return dx


@_strategy("conv2d_forward", "grouped_flat", ["flat.flat_forward"], Layout.NCHW,
           "grouped or dilated, stride 1, few filters per group: vector tiles along whole zero-padded NCHW planes "
           "(padded per job, in cache), all groups in one launch")
def _forward_grouped_flat(g, x, w, b, out, cpu, relu=False):
    packed = Packed(Layout.NCHW, (g.ph, g.pw), contiguous(x))
    _run("flat.flat_forward", cpu.width, packed.array, contiguous(_weights(w)), b, (g.ph, g.pw) + g.dilation,
         g.groups, relu, out, work=out.size * g.C // g.groups * g.KH * g.KW)
    return packed


def _gather_unless_finite(run):
    """The input gradient ``run(plan, dy, w, dx)`` (a forward pass of the zero-padded dy) for finite
    weights; the gather otherwise, since padding zeros would meet the non-finite taps."""

    @functools.wraps(run)
    def input_grad(plan, dy, w):
        if not np.isfinite(w).all():
            return _input_grad_grouped(plan, dy, w)
        dx = np.empty(plan.geometry.x_shape, dtype=dy.dtype)
        run(plan, dy, w, dx)
        return dx

    return input_grad


def _full_padding(g):
    """dy's padding in the input gradient of a stride-1 convolution: ``d * (K - 1) - p`` per axis."""
    return g.dilation[0] * (g.KH - 1) - g.ph, g.dilation[1] * (g.KW - 1) - g.pw


@_strategy("conv2d_input_grad", "grouped_flat", ["flat.flat_forward"], None,
           "grouped or dilated, stride 1, few filters per group: the forward kernel on dy padded by d*(K-1)-p with "
           "the rotated kernel of each group (grouped_gather when w is not finite)")
@_gather_unless_finite
def _input_grad_grouped_flat(plan, dy, w, dx):
    g = plan.geometry
    _run("flat.flat_forward", plan.cpu.width, contiguous(dy), _Rotated(w, g.groups).array(), np.zeros(g.C, dtype=dy.dtype),
         _full_padding(g) + g.dilation, g.groups, False, dx, work=dx.size * g.F // g.groups * g.KH * g.KW)


@_strategy("conv2d_weight_grad", "grouped_flat", ["pack.pack_nchw_padded", "flat.flat_weight_grad"],
           Layout.NCHW_PADDED, "grouped or dilated, stride 1, few filters per group: per-tap dot products over whole "
                               "planes, filters x taps vector tiles; per-thread partials", needs_finite=True)
def _weight_grad_grouped_flat(g, x, dy, packed, cpu):
    partial = np.empty((max(1, min(numba.get_num_threads(), g.N)),) + g.w_shape, dtype=dy.dtype)
    _run("flat.flat_weight_grad", cpu.width, _pack_nchw(x, g.ph, g.pw).array, dy, g.dilation, g.groups, partial,
         work=dy.size * g.C // g.groups * g.KH * g.KW)
    return partial.sum(axis=0)  # partials summed in thread order


@_strategy("conv2d_input_grad", "vector_full", ["pack.pack_nhwc_padded", "pack.pack_vector_weights",
                                                 "vector.vector_forward"], None,
           "grouped or dilated, stride 1: the vector forward on dy padded by d*(K-1)-p with each group's rotated "
           "kernel, all groups in one launch (grouped_gather when w is not finite)")
@_gather_unless_finite
def _input_grad_vector(plan, dy, w, dx):
    g = plan.geometry
    inner = ConvGeometry(g.N, g.F, g.Ho, g.Wo, g.C, g.KH, g.KW, 1, 1, *_full_padding(g), g.H, g.W, g.dilation,
                         g.groups)
    _forward_vector(inner, dy, _Rotated(w, g.groups), np.zeros(g.C, dtype=dy.dtype), dx, plan.cpu)


#: Input-gradient strategies that multiply only what the reference multiplies (no padding or stride
#: zeros; the dilation phases' dense plans take care of their own): no non-finite-weight fallback.
_EXACT_INPUT_GRADS = frozenset({"pointwise_strided", "grouped_gather", "dilation_phases", "grouped_flat",
                                "vector_full", "depthwise", "depthwise_rows", "depthwise_rows_strided",
                                "depthwise_flat"})


def _fills_vectors(g, filters, channels, cpu, dtype):
    """A group's ``filters`` fill a vector of ``cpu`` and its receptive field (``channels`` x the kernel) is
    not short: the vector kernels' condition, as for a dense convolution (``_choose_forward``). With 16 vector
    registers (AVX2) never for more than one group: the flat kernels measured faster there on every grouped shape
    tried, 2-3.7x with 8 or 16 filters a group, level at 128 (``benchmarks/NOTES.md``)."""
    if g.groups > 1 and cpu.vector_bytes < 64:
        return False
    return filters // g.groups >= cpu.lanes(dtype) and channels // g.groups * g.KH * g.KW >= TUNING.short_reduction


def _general_plan(g, dtype, cpu, threads):
    """The :class:`ConvPlan` of a dilated or grouped (not depthwise) geometry.

    The vector kernels, every pass, where a group's filters fill a vector or the stride is above 1;
    the flat ones at stride 1 otherwise (fewer filters per group than lanes: 8 x 256 x 14 x 14 with
    32 groups of 8 filters, float32, 512-bit, 1 thread: flat 2.3 ms forward, vector 3.0; and every
    grouped convolution with 16 vector registers: ``_fills_vectors``, ``benchmarks/NOTES.md``). The
    input gradient at stride 1 is a forward pass of dy when the padding does not pass d*(K-1) (dy
    would need a negative padding), else one group's dilation phases, else the gather; strided, the
    gather.
    """
    kind = "vector" if g.sh > 1 or g.sw > 1 or _fills_vectors(g, g.F, g.C, cpu, dtype) else "grouped_flat"
    if g.sh > 1 or g.sw > 1:
        ig = "grouped_gather"
    elif min(_full_padding(g)) >= 0:  # a forward pass of dy, with C filters and F channels
        ig = "vector_full" if _fills_vectors(g, g.C, g.F, cpu, dtype) else "grouped_flat"
    else:
        ig = "dilation_phases" if _uses_dilation_phases(g) else "grouped_gather"
    inner = ()
    if ig == "dilation_phases":
        inner = tuple(dict.fromkeys(s for _, _, p in _phase_plans(g, dtype, cpu)
                                    for s in (p.input_grad, *p.input_grad_inner)))
    wg = STRATEGIES["conv2d_weight_grad", kind]
    return ConvPlan(geometry=g, dtype=dtype, cpu=cpu, threads=threads,
                    forward=STRATEGIES["conv2d_forward", kind], input_grad=STRATEGIES["conv2d_input_grad", ig],
                    input_grad_inner=inner, weight_grad=wg,
                    weight_grad_nonfinite=STRATEGIES["conv2d_weight_grad", "vector"] if wg.needs_finite else wg,
                    bias_grad=STRATEGIES["conv2d_bias_grad", "plane_sums"])


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
    def run_forward(self, x, w, b=None, relu=False):
        """``(y, packed)``: the convolution, and ``x`` as the forward strategy packed it.

        Hand ``packed`` to :meth:`run_weight_grad`, which reuses it when it reads the same
        layout. ``packed`` is None for an empty batch. With ``relu=True``, ``y`` is
        ``max(conv, 0)`` (NaN kept), fused into the kernel's last pass where the strategy
        has it (``vector``, ``flat``) and one in-place pass otherwise.
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
        return out, self.forward.run(g, x, w, bias, out, self.cpu, relu)

    def run_input_grad(self, dy, w, b=None):
        """dx: the full correlation of dy (dilated by the stride) with the 180-degree-rotated kernel.

        ``b`` (one value per channel of dx, the transposed convolution's bias) is added to dx, in the
        kernel's last pass where the strategy has it (``phases_vector``) and one more pass otherwise.
        """
        g = self.geometry
        _check_operand(self, "dy", dy, g.y_shape)
        _check_operand(self, "w", w, g.w_shape)
        if b is not None:
            _check_operand(self, "b", b, (g.C,))
        if g.N == 0:
            return np.zeros(g.x_shape, dtype=self.dtype)
        exact = self.input_grad.name in _EXACT_INPUT_GRADS or np.isfinite(w).all()
        fused = getattr(self.input_grad.run, "with_bias", None)
        if b is not None and exact and fused is not None:
            return fused(self, contiguous(dy), w, contiguous(b))
        dx = self.input_grad.run(self, contiguous(dy), w) if exact else _input_grad_nonfinite_weights(
            self, contiguous(dy), w)
        if b is not None:
            dx += b[:, None, None]
        return dx

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
            f"conv2d x{g.x_shape} w{g.w_shape} stride {(g.sh, g.sw)} padding {(g.ph, g.pw)}"
            + ("" if g.dense else f" dilation {g.dilation} groups {g.groups}") + f" {self.dtype} "
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
    if not g.dense:
        return _general_plan(g, dtype, cpu, threads)
    wg = _choose_weight_grad(g, dtype.itemsize, threads, cpu)
    return ConvPlan(
        geometry=g, dtype=dtype, cpu=cpu, threads=threads,
        forward=_choose_forward(g, cpu, dtype),
        input_grad=_choose_input_grad(g, cpu, dtype),
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
    if geometry.depthwise:
        return _depthwise_plan(geometry, np.dtype(dtype), HOST if cpu is None else cpu, numba.get_num_threads())
    return _conv_plan(geometry, np.dtype(dtype), HOST if cpu is None else cpu, numba.get_num_threads())


# ---------------------------------------------------------------------------------------
# Pooling: geometry and windows
# ---------------------------------------------------------------------------------------


class PoolGeometry(NamedTuple):
    """A validated pooling window: input ``(N, C, H, W)``, ``KH x KW`` taps ``(dh, dw)`` apart, output ``Ho x Wo``.

    ``Ho``/``Wo`` follow PyTorch's rule (``ceil_mode`` included): see
    :func:`fastconv.functional.max_pool2d`. ``F`` is ``C`` (one window per channel).
    """

    N: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    Ho: int
    Wo: int
    ceil_mode: bool = False

    @property
    def F(self):
        return self.C

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.Ho, self.Wo)

    def describe(self):
        text = f"x{self.x_shape} kernel {(self.KH, self.KW)} stride {(self.sh, self.sw)} padding {(self.ph, self.pw)}"
        if (self.dh, self.dw) != (1, 1):
            text += f" dilation {(self.dh, self.dw)}"
        return text + (" ceil_mode" if self.ceil_mode else "")

    def axis_windows(self, axis, count_include_pad=True):
        """``(ranges, divisors)`` of one axis (0: rows, 1: columns) for average pooling (dilation 1).

        ``ranges[o]`` is output ``o``'s window ``(start, end)`` clipped to the input;
        ``divisors[o]`` its length, counting the padding (not what ``ceil_mode`` adds past
        it) when ``count_include_pad`` (PyTorch's rule).
        """
        size, k, s, pad, out = ((self.H, self.KH, self.sh, self.ph, self.Ho) if axis == 0 else
                                (self.W, self.KW, self.sw, self.pw, self.Wo))
        ranges, divisors = [], []
        for o in range(out):
            start = o * s - pad
            end = min(start + k, size + pad)
            ranges.append((max(start, 0), min(end, size)))
            divisors.append(end - start if count_include_pad else ranges[-1][1] - ranges[-1][0])
        return tuple(ranges), tuple(divisors)


class PoolWindows(NamedTuple):
    """Separable pooling windows: output ``(oh, ow)`` covers input rows ``rows[oh]`` x columns ``cols[ow]``.

    The geometry of adaptive pooling, and of average pooling once its padding and divisor
    rule are applied. Ranges are ``(start, end)`` inside the input, never empty; the average's
    divisor is ``row_div[oh] * col_div[ow]``. ``interior = (kw, sw, ow_a, ow_b)``: the output
    columns ``[ow_a, ow_b)`` have windows ``kw`` wide and ``sw`` apart (summed tap by tap).
    """

    N: int
    C: int
    H: int
    W: int
    rows: tuple
    cols: tuple
    row_div: tuple
    col_div: tuple
    interior: tuple = (0, 0, 0, 0)

    @property
    def Ho(self):
        return len(self.rows)

    @property
    def Wo(self):
        return len(self.cols)

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.Ho, self.Wo)

    @property
    def is_global(self):
        """One window, the whole plane, divided by its size: the mean of each plane."""
        whole = (self.rows, self.cols) == (((0, self.H),), ((0, self.W),))
        return whole and self.row_div[0] * self.col_div[0] == self.H * self.W

    def describe(self):
        return f"x{self.x_shape} -> {(self.Ho, self.Wo)} windows"


#: Output columns of uniform windows from which the average kernels sum tap by tap
#: (``interior`` of :class:`PoolWindows`); fewer are summed window by window. Tap by tap
#: was 13-20% faster with 28 such columns (32x64x56x56, 2x2 and 3x3 windows at stride 2),
#: 5-10% slower with 7 (32x256x14x14), and slower for 8 x 8 windows (one thread, AVX-512).
_TAP_BY_TAP_COLUMNS = 16


def _interior(kw, sw, ow_a, ow_b):
    return (kw, sw, ow_a, ow_b) if ow_b - ow_a >= _TAP_BY_TAP_COLUMNS and kw < 8 else (0, 0, 0, 0)


def adaptive_windows(x_shape, out_hw):
    """The :class:`PoolWindows` of adaptive pooling to ``out_hw``: PyTorch's
    ``start = floor(o * size / out)``, ``end = ceil((o + 1) * size / out)``."""
    N, C, H, W = x_shape

    def axis(size, out):
        return tuple((o * size // out, -(-(o + 1) * size // out)) for o in range(out))

    rows, cols = axis(H, out_hw[0]), axis(W, out_hw[1])
    Wo = out_hw[1]
    interior = _interior(W // Wo, W // Wo, 0, Wo) if Wo and W % Wo == 0 else (0, 0, 0, 0)
    return PoolWindows(N, C, H, W, rows, cols, tuple(e - s for s, e in rows), tuple(e - s for s, e in cols),
                       interior)


def avg_windows(g, count_include_pad=True, divisor_override=None):
    """The :class:`PoolWindows` of average pooling over a :class:`PoolGeometry` (dilation 1)."""
    rows, row_div = g.axis_windows(0, count_include_pad)
    cols, col_div = g.axis_windows(1, count_include_pad)
    if divisor_override is not None:
        row_div, col_div = (divisor_override,) * len(rows), (1,) * len(cols)
    ow_a = min(-(-g.pw // g.sw), g.Wo)
    ow_b = max(min((g.W - g.KW + g.pw) // g.sw + 1, g.Wo), ow_a)
    return PoolWindows(g.N, g.C, g.H, g.W, rows, cols, row_div, col_div, _interior(g.KW, g.sw, ow_a, ow_b))


@functools.lru_cache(maxsize=256)
def _window_arrays(windows, dtype):
    """``(rows, cols, row_div, col_div)`` as the kernels take them: int64 ranges, divisors in ``dtype``."""
    w = windows
    return (np.array(w.rows, dtype=np.int64).reshape(-1, 2), np.array(w.cols, dtype=np.int64).reshape(-1, 2),
            np.array(w.row_div, dtype=dtype), np.array(w.col_div, dtype=dtype))


def _planes(a, g):
    """``a`` (N, C, h, w) as ``(N * C, h, w)`` contiguous planes."""
    return contiguous(a).reshape(g.N * g.C, a.shape[2], a.shape[3])


# ---------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------


@_strategy("max_pool2d_forward", "window_2x2", ["maxpool.maxpool_forward_2x2"], Layout.NCHW,
           "2x2 windows at stride 2 without padding: stride-2 loads merged with branch-free selects")
def _pool_2x2(g, planes, out, indices):
    _run("maxpool.maxpool_forward_2x2", planes, out, indices, work=out.size * 4)


@_strategy("max_pool2d_forward", "window_any", ["maxpool.maxpool_forward_window"], Layout.NCHW,
           "any window, dilation, ceil_mode: interior windows merged tap by tap with branch-free selects, "
           "edges one by one")
def _pool_any(g, planes, out, indices):
    _run("maxpool.maxpool_forward_window", planes, (g.KH, g.KW), (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), out,
         indices, work=out.size * g.KH * g.KW)


@_strategy("max_pool2d_forward", "window_columns", ["maxpool.maxpool_forward_columns"], Layout.NCHW,
           "narrow outputs: a window's rows merged across the whole input row (vectorised), then its columns")
def _pool_columns(g, planes, out, indices):
    _run("maxpool.maxpool_forward_columns", planes, (g.KH, g.KW), (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), out,
         indices, work=out.size * g.KH * g.KW)


#: Output widths below which ``window_columns`` replaces ``window_any`` (at stride 1 /
#: above). One thread, 3x3 windows (benchmarks/NOTES.md): 2x faster on 14x14 planes at
#: stride 2, 1.5x on 28x28, 1.06x on 56x56; 4% slower on 28x28 at stride 1.
_COLUMNS_BELOW = (16, 32)


@_strategy("adaptive_max_pool2d_forward", "ranges", ["maxpool.maxpool_forward_ranges"], Layout.NCHW,
           "PyTorch's adaptive windows, each scanned on its own")
def _pool_ranges(g, planes, out, indices):
    rows, cols, _, _ = _window_arrays(g, np.float64)
    _run("maxpool.maxpool_forward_ranges", planes, rows, cols, out, indices,
         work=out.size * -(-g.H // max(g.Ho, 1)) * -(-g.W // max(g.Wo, 1)))


@_strategy("max_pool2d_backward", "route", ["maxpool.maxpool_backward_route", "elementwise.elementwise_relu_grad"],
           Layout.NCHW,
           "each dy element added to its window's winner; bad indices counted, never written through")
def _pool_route(dy, indices, dx):
    return _run("maxpool.maxpool_backward_route", dy, indices, dx, work=dx.size + dy.size)


@dataclasses.dataclass(frozen=True)
class PoolPlan:
    """The strategies of one max-pooling geometry (see :class:`ConvPlan`).

    ``geometry`` is a :class:`PoolGeometry` (``max_pool2d``) or :class:`PoolWindows`
    (``adaptive_max_pool2d``).
    """

    geometry: object
    dtype: np.dtype
    forward: Strategy
    backward: Strategy

    def run_forward(self, x):
        """``(y, indices)``: the maxima and the flat index of each winner in its plane."""
        g = self.geometry
        _check_operand(self, "x", x, g.x_shape)
        out = np.empty(g.y_shape, dtype=self.dtype)
        indices = np.empty(g.y_shape, dtype=np.int64)
        if out.size:
            P = g.N * g.C
            self.forward.run(g, _planes(x, g), out.reshape(P, g.Ho, g.Wo), indices.reshape(P, g.Ho, g.Wo))
        return out, indices

    def run_backward(self, dy, indices, relu_output=None):
        """dx: each ``dy`` element routed to its window's winner (``indices`` from :meth:`run_forward`).

        ``relu_output``: when the pooled input was a ReLU's output, pass the pool's output
        ``y`` here to do that ReLU's backward pass on ``dy`` before routing it (a gradient is
        routed only where ``not y <= 0``); ``dx`` is then the gradient w.r.t. the ReLU's input.
        """
        _check_operand(self, "dy", dy, self.geometry.y_shape)
        if relu_output is not None:
            _check_operand(self, "relu_output", relu_output, self.geometry.y_shape)
        return route_max_pool2d(dy, indices, self.geometry.x_shape, relu_output=relu_output)

    def explain(self):
        op = "max_pool2d" if isinstance(self.geometry, PoolGeometry) else "adaptive_max_pool2d"
        return (f"{op} {self.geometry.describe()} {self.dtype}\n"
                f"  forward   {self.forward.name}: {self.forward.summary}\n"
                f"  backward  {self.backward.name}: {self.backward.summary}")

    def __str__(self):
        return self.explain()

    def strategies(self):
        return [self.forward, self.backward]


def route_max_pool2d(dy, indices, x_shape, func="max_pool2d_backward", relu_output=None):
    """dx of shape ``x_shape``: ``dx[n, c].flat[indices[n, c, k]] += dy[n, c, k]`` (the ``route`` strategy).

    ``dy`` and ``indices`` share their shape ``(N, C, ...)``. The kernel checks every index
    before it writes; a ``ValueError`` naming ``func`` is raised after it if any was
    outside ``[0, H*W)``. With ``relu_output`` (the pooled maxima, same shape), only the
    ``dy`` elements whose maximum is not ``<= 0`` are routed (see :meth:`PoolPlan.run_backward`).
    """
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    if dy.size == 0:
        dx[...] = 0
        return dx
    P = N * C
    if relu_output is not None:
        # The ReLU's mask on the pooled gradient (a quarter of the input's size for 2x2 windows) before
        # routing: every dy reaching an input position comes from windows that position won, whose
        # maximum is that position's value, so masking before the sum equals masking after. A mask read
        # inside the routing loop made the plain route 20-90% slower (benchmarks/NOTES.md).
        dy = relu_backward(dy, relu_output)
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
    """The :class:`PoolPlan` of a validated ``geometry`` (a :class:`PoolGeometry`) in ``dtype``.

    ``window_2x2`` takes 2 x 2 windows at stride 2 without padding or dilation whenever
    the output is the floor one (``ceil_mode`` adds no window); ``window_columns`` narrow
    outputs (:data:`_COLUMNS_BELOW`); ``window_any`` the rest.
    """
    g = geometry
    two = (g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) == (2, 2, 2, 2, 0, 0, 1, 1)
    if two and (g.Ho, g.Wo) == (g.H // 2, g.W // 2):
        name = "window_2x2"
    elif g.Wo < _COLUMNS_BELOW[g.sw > 1]:
        name = "window_columns"
    else:
        name = "window_any"
    return PoolPlan(g, np.dtype(dtype), STRATEGIES["max_pool2d_forward", name],
                    STRATEGIES["max_pool2d_backward", "route"])


@functools.lru_cache(maxsize=256)
def plan_adaptive_max_pool2d(x_shape, output_size, dtype):
    """The :class:`PoolPlan` of adaptive max-pooling of a validated ``x_shape`` to ``output_size`` ``(Ho, Wo)``."""
    return PoolPlan(adaptive_windows(x_shape, output_size), np.dtype(dtype),
                    STRATEGIES["adaptive_max_pool2d_forward", "ranges"], STRATEGIES["max_pool2d_backward", "route"])


# ---------------------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------------------


@_strategy("avg_pool2d_forward", "ranges", ["avgpool.avgpool_forward_ranges"], Layout.NCHW,
           "separable windows: a window's input rows added (vectorised), then summed over every column window")
def _avg_ranges(w, planes, out):
    rows, cols, row_div, col_div = _window_arrays(w, out.dtype)
    _run("avgpool.avgpool_forward_ranges", planes, rows, cols, row_div, col_div, w.interior, out,
         work=out.size * -(-w.H // w.Ho) * -(-w.W // w.Wo) + planes.size)


@_strategy("avg_pool2d_backward", "ranges", ["avgpool.avgpool_backward_ranges"], Layout.NCHW,
           "each dy element divided once, spread along its window's columns, then added to its rows")
def _avg_ranges_backward(w, dy, dx):
    rows, cols, row_div, col_div = _window_arrays(w, dx.dtype)
    _run("avgpool.avgpool_backward_ranges", dy, rows, cols, row_div, col_div, w.interior, dx,
         work=dy.size * -(-w.H // w.Ho) + dx.size)


@_strategy("avg_pool2d_forward", "global", ["avgpool.avgpool_forward_global"], Layout.NCHW,
           "one window, the whole plane: each plane's mean, a vectorised sum per plane")
def _avg_global(w, planes, out):
    _run("avgpool.avgpool_forward_global", planes.reshape(planes.shape[0], -1), out.reshape(-1), work=planes.size)


@_strategy("avg_pool2d_backward", "global", ["avgpool.avgpool_backward_global"], Layout.NCHW,
           "each plane filled with its gradient divided by the plane's size")
def _avg_global_backward(w, dy, dx):
    _run("avgpool.avgpool_backward_global", dy.reshape(-1), dx.reshape(dx.shape[0], -1), work=dx.size)


@dataclasses.dataclass(frozen=True)
class AvgPoolPlan:
    """The strategies of one average pooling (``avg_pool2d`` or ``adaptive_avg_pool2d``), on its :class:`PoolWindows`."""

    windows: PoolWindows
    dtype: np.dtype
    forward: Strategy
    backward: Strategy
    op: str = "avg_pool2d"

    @property
    def geometry(self):
        return self.windows

    def run_forward(self, x):
        """The averages, shape ``(N, C, Ho, Wo)``."""
        w = self.windows
        _check_operand(self, "x", x, w.x_shape)
        out = np.empty(w.y_shape, dtype=self.dtype)
        if out.size:
            self.forward.run(w, _planes(x, w), out.reshape(w.N * w.C, w.Ho, w.Wo))
        return out

    def run_backward(self, dy):
        """dx: each ``dy`` element divided by its divisor and spread over its window."""
        w = self.windows
        _check_operand(self, "dy", dy, w.y_shape)
        dx = np.empty(w.x_shape, dtype=self.dtype)
        if dy.size == 0:
            dx[...] = 0
        elif dx.size:
            self.backward.run(w, _planes(dy, w), dx.reshape(w.N * w.C, w.H, w.W))
        return dx

    def explain(self):
        return (f"{self.op} {self.windows.describe()} {self.dtype}\n"
                f"  forward   {self.forward.name}: {self.forward.summary}\n"
                f"  backward  {self.backward.name}: {self.backward.summary}")

    def __str__(self):
        return self.explain()

    def strategies(self):
        return [self.forward, self.backward]


@functools.lru_cache(maxsize=1024)
def _avg_plan(windows, dtype, op):
    name = "global" if windows.is_global else "ranges"
    return AvgPoolPlan(windows, dtype, STRATEGIES["avg_pool2d_forward", name], STRATEGIES["avg_pool2d_backward", name],
                       op)


@functools.lru_cache(maxsize=1024)
def plan_avg_pool2d(geometry, dtype, count_include_pad=True, divisor_override=None):
    """The :class:`AvgPoolPlan` of a validated :class:`PoolGeometry` (dilation 1) in ``dtype``.

    A window that is the whole plane (and divides by its size) takes ``global``; the rest ``ranges``.
    """
    return _avg_plan(avg_windows(geometry, count_include_pad, divisor_override), np.dtype(dtype), "avg_pool2d")


@functools.lru_cache(maxsize=256)
def plan_adaptive_avg_pool2d(x_shape, output_size, dtype):
    """The :class:`AvgPoolPlan` of adaptive average pooling of ``x_shape`` to ``output_size`` ``(Ho, Wo)``.

    Output ``(1, 1)`` is the global average pool (the ``global`` strategy).
    """
    return _avg_plan(adaptive_windows(x_shape, output_size), np.dtype(dtype), "adaptive_avg_pool2d")


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


@_strategy("matmul", "matmul_nn", ["matmul.matmul_nn"], None,
           "12 rows (6 with 16 vector registers) x 2 vectors of the product in registers, 256 columns per job")
def matmul(a, b):
    """``a @ b`` for 2-D arrays on fastconv's thread pool (no checks: see :func:`fastconv.functional.matmul`).

    See :mod:`fastconv.kernels.matmul` for why not NumPy's BLAS.
    """
    a, b = contiguous(a), contiguous(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _run("matmul.matmul_nn", HOST.width, a, b[None], np.zeros(a.shape[0], dtype=a.dtype), out[None],
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
# Normalisation (batch, layer and group norm): an activation viewed as (N, C, L)
# ---------------------------------------------------------------------------------------


def channel_view(a):
    """``a`` of shape (N, C, *) as a C-contiguous (N, C, L) array (a view when it already is contiguous)."""
    N, C = a.shape[:2]
    return contiguous(a).reshape(N, C, int(np.prod(a.shape[2:], dtype=np.int64)))


@_strategy("norm_statistics", "chan_blocks", ["norm.norm_moments"], None,
           "one job per channel; each row block's mean and squared deviations in float64, merged by Chan's formula")
def norm_moments(x3):
    """``(mean, m2)``, float64 arrays of shape ``(C,)``, of an ``(N, C, L)`` array (no checks).

    ``m2[c]`` is the sum of squared deviations from ``mean[c]`` over the ``N * L`` values of channel ``c``.
    """
    x3 = contiguous(x3)
    C = x3.shape[1]
    mean, m2 = np.empty(C), np.empty(C)
    _run("norm.norm_moments", x3, mean, m2, work=x3.size)
    return mean, m2


@_strategy("norm_forward", "affine_rows", ["norm.norm_affine"], None,
           "one job per (n, c) row: (x - mean[c]) * scale[c] + shift[c]")
def norm_affine(x3, mean, scale, shift, stream=None):
    """``(x3 - mean[c]) * scale[c] + shift[c]`` of an ``(N, C, L)`` array, in its dtype (no checks).

    ``stream``: write the output by non-temporal stores (:func:`norm_affine_stream`); by
    default for large outputs (:func:`_streams`).

    ``mean`` (float64) is split into its value in x's dtype and the rest, which is folded
    into the shift: ``x - mean`` then loses nothing of a float64 mean in float32 (for
    ``x`` within a factor 2 of it, the subtraction is exact).
    """
    dt = x3.dtype
    mean = np.asarray(mean, dtype=np.float64)
    head = mean.astype(dt)
    with np.errstate(invalid="ignore"):  # inf - inf would turn an infinite mean into NaN
        rest = np.where(np.isfinite(mean), mean - head, 0.0)
    scale = np.asarray(scale, dtype=np.float64)
    # The fold where rest is 0 or the scale infinite would put 0 * inf = NaN into the shift.
    fold = np.where((rest != 0) & np.isfinite(scale), rest * np.where(np.isfinite(scale), scale, 0.0), 0.0)
    shift = np.asarray(shift, dtype=np.float64) - fold
    args = (contiguous(x3), head, contiguous(scale, dt), shift.astype(dt))
    if _streams(x3) if stream is None else stream:
        return norm_affine_stream(*args)
    out = np.empty(x3.shape, dtype=dt)
    _run("norm.norm_affine", *args, out, work=x3.size)
    return out


def _streams(x3, arrays=2):
    """Whether a norm pass over ``(N, C, L)`` arrays like ``x3`` writes its output by non-temporal stores.

    When the pass moves at least ``TUNING.stream_store_bytes`` (``arrays`` arrays: its inputs
    and its output) and the rows are whole vectors, so that every row starts aligned in an
    aligned buffer.
    """
    row = x3.shape[2] * x3.dtype.itemsize
    return arrays * x3.nbytes >= TUNING.stream_store_bytes and row % HOST.vector_bytes == 0


def _empty_aligned(shape, dtype, align):
    """An uninitialised C-contiguous array whose first element's address is a multiple of ``align`` bytes."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count + align // dtype.itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % align) // dtype.itemsize
    return raw[skip:skip + count].reshape(shape)


@_strategy("norm_forward", "affine_stream", ["norm.norm_affine_stream"], None,
           "norm_affine with non-temporal vector stores into a vector-aligned output, jobs of ~1 MB of rows "
           "(outputs larger than the cache: one memory read and one write per element instead of two reads)")
def norm_affine_stream(x3, head, scale, shift):
    """``(x3 - head[c]) * scale[c] + shift[c]``, all of x's dtype, written by non-temporal stores (no checks)."""
    N, C, L = x3.shape
    out = _empty_aligned(x3.shape, x3.dtype, HOST.vector_bytes)
    rows = max(1, (1 << 20) // max(L * x3.dtype.itemsize, 1))
    _run("norm.norm_affine_stream", HOST.width, x3, head, scale, shift, out, rows, work=x3.size)
    return out


def norm_grad_sums(dy3, x3, mean):
    """``(sum(dy), sum(dy * (x - mean[c])))`` per channel of ``(N, C, L)`` arrays, float64 (no checks)."""
    C = x3.shape[1]
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    _run("norm.norm_grad_sums", contiguous(dy3, x3.dtype), contiguous(x3), contiguous(mean, np.float64), sum_dy,
         sum_dy_xmu, work=2 * x3.size)
    return sum_dy, sum_dy_xmu


@_strategy("norm_backward", "two_pass", ["norm.norm_grad_sums", "norm.norm_grad_apply", "norm.norm_affine"], None,
           "per-channel sums of dy and dy * (x - mean) in float64, then one pass dy * a + (x - mean) * b + k "
           "(dy * a without training)")
def norm_backward(dy3, x3, mean, invstd, gain, training):
    """``(dx3, sum_dy, sum_dy_xmu)`` of ``y = (x - mean) * invstd * gain`` over ``(N, C, L)`` arrays (no checks).

    With ``training`` the statistics are the batch's own (their gradient flows into ``dx``);
    otherwise they are constants. ``mean``, ``invstd`` and ``gain`` have shape ``(C,)``;
    the sums are float64.
    """
    dt = x3.dtype
    N, C, L = x3.shape
    sum_dy, sum_dy_xmu = norm_grad_sums(dy3, x3, mean)
    invstd = np.asarray(invstd, dtype=np.float64)
    a = np.asarray(gain, dtype=np.float64) * invstd
    if training:
        M = N * L
        b, k = -a * invstd * invstd * sum_dy_xmu / M, -a * sum_dy / M
    else:  # constant statistics: dx = dy * a whatever x holds (as PyTorch: a NaN in x makes no NaN in dx)
        dx = np.empty(x3.shape, dtype=dt)
        _run("norm.norm_affine", contiguous(dy3, dt), np.zeros(C, dt), a.astype(dt), np.zeros(C, dt), dx,
             work=x3.size)
        return dx, sum_dy, sum_dy_xmu
    mean = np.asarray(mean, dtype=np.float64)
    head = mean.astype(dt)
    with np.errstate(invalid="ignore"):  # the rest of the float64 mean, as in norm_affine; not where b is infinite
        rest = np.where(np.isfinite(mean), mean - head, 0.0)  # (a non-finite dy): rest * inf would make NaN of -inf
        k = k - np.where(np.isfinite(b), rest * b, 0.0)
    dx = np.empty(x3.shape, dtype=dt)
    _run("norm.norm_grad_apply", contiguous(dy3, dt), contiguous(x3), head, a.astype(dt), b.astype(dt),
         k.astype(dt), dx, work=x3.size)
    return dx, sum_dy, sum_dy_xmu


def _fused_channels(C):
    """Batch norm runs channel by channel (the ``fused_channels`` strategies) when every thread gets a channel."""
    return C >= numba.get_num_threads()


@_strategy("norm_batch_forward", "fused_channels", ["norm.norm_fused_forward"], None,
           "one job per channel: its statistics, then its normalisation while it is still in the cache")
def norm_fused_forward(x3, weight, bias, eps):
    """``(out3, mean, invstd, m2)`` of a training batch norm of an ``(N, C, L)`` array, N * L > 0 (no checks)."""
    C = x3.shape[1]
    out = np.empty(x3.shape, dtype=x3.dtype)
    stats = np.empty((3, C))
    gain = np.ones(C) if weight is None else contiguous(weight, np.float64)
    shift = np.zeros(C) if bias is None else contiguous(bias, np.float64)
    _run("norm.norm_fused_forward", contiguous(x3), gain, shift, float(eps), out, stats,
         np.empty((3, C), dtype=x3.dtype), work=2 * x3.size)
    return out, stats[0], stats[1], stats[2]


@_strategy("norm_batch_backward", "fused_channels", ["norm.norm_fused_backward"], None,
           "one job per channel: the sums of dy and dy * (x - mean), then dx while the channel is in the cache")
def norm_fused_backward(dy3, x3, mean, invstd, gain, training, stream=None):
    """``(dx3, sum_dy, sum_dy_xmu)`` as :func:`norm_backward`, channel by channel (no checks).

    ``stream`` (training only): write ``dx`` by non-temporal stores (``fused_channels_stream``);
    by default when :func:`_streams` says so for the three arrays.
    """
    C = x3.shape[1]
    sums = np.empty((2, C))
    stats = np.stack([np.asarray(mean, dtype=np.float64), np.asarray(invstd, dtype=np.float64)])
    args = (contiguous(dy3, x3.dtype), contiguous(x3), stats, contiguous(gain, np.float64))
    if training and (_streams(x3, 3) if stream is None else stream):
        return norm_fused_backward_stream(*args, sums)
    dx = np.empty(x3.shape, dtype=x3.dtype)
    _run("norm.norm_fused_backward", *args, bool(training), dx, sums, np.empty((4, C), dtype=x3.dtype),
         work=3 * x3.size)
    return dx, sums[0], sums[1]


@_strategy("norm_batch_backward", "fused_channels_stream", ["norm.norm_fused_backward_stream"], None,
           "fused_channels in training with dx written by non-temporal vector stores into a vector-aligned array "
           "(large activations: dx is not read into the cache before it is written)")
def norm_fused_backward_stream(dy3, x3, stats, gain, sums):
    """``(dx3, sum_dy, sum_dy_xmu)`` of a training batch norm, ``dx`` by non-temporal stores (no checks)."""
    dx = _empty_aligned(x3.shape, x3.dtype, HOST.vector_bytes)
    _run("norm.norm_fused_backward_stream", HOST.width, dy3, x3, stats, gain, dx, sums,
         np.empty((4, x3.shape[1]), dtype=x3.dtype), work=3 * x3.size)
    return dx, sums[0], sums[1]


def batch_norm_forward(x3, running_mean, running_var, weight, bias, training, momentum, eps):
    """``(out3, mean, invstd)`` of batch normalisation over an ``(N, C, L)`` array (no checks).

    ``mean`` and ``invstd`` (float64, shape ``(C,)``) are the statistics used: the batch's
    in training, the running ones otherwise. In training the running statistics, when
    given, are updated in place (``momentum``; the running variance is unbiased).
    """
    N, C, L = x3.shape
    M = N * L
    # The fused kernel folds the weight into its pass; an infinite weight takes the two passes,
    # which give PyTorch's +-inf (not NaN) for it.
    if training and M and _fused_channels(C) and (weight is None or np.isfinite(weight).all()):
        out, mean, invstd, m2 = norm_fused_forward(x3, weight, bias, eps)
    else:
        if training:
            mean, m2 = norm_moments(x3)
            invstd = 1.0 / np.sqrt((m2 / M if M else m2) + eps)
        else:
            mean = running_mean.astype(np.float64)
            invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        scale = invstd if weight is None else invstd * weight
        out = norm_affine(x3, mean, scale, np.zeros(C) if bias is None else bias)
    if training and running_mean is not None and M > 1:  # an empty batch leaves them alone (as PyTorch)
        m = float(momentum)
        for buf, batch in ((running_mean, mean), (running_var, m2 / (M - 1))):
            np.copyto(buf, (1.0 - m) * buf.astype(np.float64) + m * batch, casting="unsafe")
    return out, mean, invstd


def batch_norm_backward(dy3, x3, mean, invstd, weight, training):
    """``(dx3, dweight, dbias)`` of :func:`batch_norm_forward` (no checks); ``dweight``, ``dbias`` in x's dtype."""
    dt = x3.dtype
    gain = np.ones(x3.shape[1]) if weight is None else weight
    # Without training dx is dy * a (norm_backward's norm_affine pass): the fused kernel's dx read x (NaN in x -> NaN)
    fused = training and _fused_channels(x3.shape[1]) and np.isfinite(gain).all()
    bad = None if fused or not training else ~np.isfinite(np.asarray(gain))
    if bad is not None and bad.any():
        # An infinite (or NaN) weight in training: dx = weight * (the rest), PyTorch's order, which gives +-inf
        # (NaN where the rest is 0); weight * dy first would meet inf - inf in the mean terms. Below.
        gain = np.where(bad, 1.0, np.asarray(gain, dtype=np.float64))
    dx, sum_dy, sum_dy_xmu = (norm_fused_backward if fused else norm_backward)(dy3, x3, mean, invstd, gain, training)
    if fused and not (np.isfinite(sum_dy).all() and np.isfinite(sum_dy_xmu).all()):
        # A non-finite dy (or x): the two passes give PyTorch's +-inf where the fused fold gives NaN.
        dx, sum_dy, sum_dy_xmu = norm_backward(dy3, x3, mean, invstd, gain, training)
    if bad is not None and bad.any():  # those channels in float64, the weight last (a rare path: NumPy)
        s, M = np.asarray(invstd, np.float64)[bad][:, None], max(x3.shape[0] * x3.shape[2], 1)
        with np.errstate(invalid="ignore", over="ignore"):
            xmu = x3[:, bad].astype(np.float64) - np.asarray(mean, np.float64)[bad][:, None]
            proj = s * s * (sum_dy_xmu[bad] / M)[:, None]
            rest = dy3[:, bad].astype(np.float64) - (sum_dy[bad] / M)[:, None] - xmu * proj
            dx[:, bad] = (np.asarray(weight, np.float64)[bad][:, None] * (s * rest)).astype(dt)
    return dx, (sum_dy_xmu * np.asarray(invstd, np.float64)).astype(dt), sum_dy.astype(dt)


def group_norm_forward(x, groups, weight, bias, eps):
    """``(out, (mean, invstd, xhat))`` of group normalisation of an (N, C, ...) array (no checks).

    Each sample's ``C`` channels form ``groups`` consecutive groups, normalised by their own
    statistics (the norm kernels on the ``(1, N * groups, C // groups * L)`` view), then
    scaled and shifted per channel. Over an ``(N, D)`` array with one group this is layer
    normalisation. ``mean`` and ``invstd`` are float64 of shape ``(N * groups,)``; ``xhat``
    is the normalised input as ``(N, C, L)``.
    """
    N, C = x.shape[:2]
    x3 = channel_view(x)
    L = x3.shape[2]
    xs = x3.reshape(1, N * groups, C // groups * L)
    mean, m2 = norm_moments(xs)
    invstd = 1.0 / np.sqrt(m2 / max(xs.shape[2], 1) + eps)
    xhat = norm_affine(xs, mean, invstd, np.zeros(N * groups)).reshape(N, C, L)
    ones, zeros = np.ones(C), np.zeros(C)
    out = norm_affine(xhat, zeros, ones if weight is None else weight, zeros if bias is None else bias)
    return out.reshape(x.shape), (mean, invstd, xhat)


def group_norm_backward(dy, x, groups, saved, weight):
    """``(dx, dweight, dbias)`` of :func:`group_norm_forward`, ``saved`` its ``(mean, invstd, xhat)`` (no checks)."""
    mean, invstd, xhat = saved
    N, C = x.shape[:2]
    dy3 = channel_view(dy).astype(x.dtype, copy=False)
    zeros = np.zeros(C)
    dbias, dweight = norm_grad_sums(dy3, xhat, zeros)
    dxhat = dy3 if weight is None else norm_affine(dy3, zeros, weight, zeros)
    M = xhat.size // (N * groups) if N else 0
    dx, _, _ = norm_backward(dxhat.reshape(1, N * groups, M), channel_view(x).reshape(1, N * groups, M), mean,
                             invstd, np.ones(N * groups), True)
    return dx.reshape(x.shape), dweight.astype(x.dtype), dbias.astype(x.dtype)
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


def _pointwise_code(helper):
    """The op code of the scalar function ``helper`` in the activation kernels."""
    return importlib.import_module("fastconv.kernels.activation").POINTWISE_OPS.index(helper)


def _register_pointwise(op, name, helper, cost):
    kernels = ["activation.activation_pointwise"]

    @_strategy(f"{op}_forward", name, kernels, None, f"one parallel pass of activation._{helper}")
    def forward(x, a):
        flat = contiguous(x).reshape(-1)
        out = np.empty(x.shape, dtype=x.dtype)
        _run(kernels[0], _pointwise_code(helper), flat, x.dtype.type(a), out.reshape(-1),
             work=flat.size * cost)
        return out

    @_strategy(f"{op}_backward", name, ["activation.activation_pointwise_grad"], None,
               f"one parallel pass of activation._{helper}_grad, reading the forward input")
    def backward(dy, x, a):
        flat = contiguous(x).reshape(-1)
        dx = np.empty(x.shape, dtype=x.dtype)
        _run("activation.activation_pointwise_grad", _pointwise_code(helper), contiguous(dy).reshape(-1),
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
