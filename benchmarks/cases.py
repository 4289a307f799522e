"""The case table that drives the tests and the benchmarks: cases x operations x implementations.

One table, every use (the numbagg ``COMPARISONS`` pattern). Each row of
:data:`CONV_ROWS` and :data:`POOL_ROWS` is a layer shape, and adding one gives:

* reference tests: ``tests/test_conv.py`` and ``tests/test_pool.py`` compare
  :mod:`fastconv.functional` with the naive reference (:mod:`fastconv.reference`) on
  every row, in float32 and float64, forward pass and every gradient;
* PyTorch tests: the same files compare fastconv with PyTorch on every row;
* a benchmark, when the row has a ``bench_batch``: the pytest-benchmark suite
  (``benchmarks/test_bench_*.py``) and ``scripts/bench_report.py`` check and time it
  at that batch (:data:`CONV_CASES`, :data:`POOL_CASES`, :func:`table`).

The tests run every row at its own small batch ``n``. They and the benchmarks'
correctness check draw the same inputs (:func:`make_inputs`) and compare with one
float64 oracle per op, row and batch (:func:`oracle`, cached per process), so a
``python -m pytest`` run computes each reference result once.

Implementations
---------------
``fastconv``
    :mod:`fastconv.functional`, the Numba kernels.
``torch``
    PyTorch CPU (``torch.nn.functional`` forward ops and the ``aten`` backward ops
    autograd itself calls), when torch is installed; skipped otherwise.
``im2col``
    :mod:`benchmarks.im2col`, NumPy im2col + BLAS: the best-effort "fast NumPy".
``naive``
    :mod:`fastconv.reference`, textbook NumPy loops. It takes seconds to minutes on
    the large cases, so it is timed on the first :data:`NAIVE_BATCH` image(s) of the
    batch and the time is scaled linearly to the full batch (every op here is
    linear in N); reports say so.

Correctness check
-----------------
:func:`check` runs an implementation on the first :data:`CHECK_BATCH` images of a
case and compares every output with the naive reference computed in float64 on
the same values (inputs are drawn in float32 and widened, so the float32 and
float64 variants of a case share one exact oracle). Pool indices must match
exactly; floats within a relative tolerance per dtype.
"""

import dataclasses
import functools
import importlib
import math
import os
from contextlib import contextmanager

import numpy as np

from . import im2col

# --------------------------------------------------------------------------- cases


def _label(value):
    """``value`` as a test id shows it: ``2``, ``1x2`` for an (h, w) pair, ``None``."""
    if isinstance(value, (tuple, list)):
        return "x".join(map(str, value))
    return str(value)


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What :class:`ConvCase` and :class:`PoolCase` share: the input shape and the window geometry.

    The subclasses add the window fields ``k``, ``stride``, ``pad`` and the class attribute ``kind``.
    """

    name: str
    n: int
    c: int
    h: int
    w: int

    @property
    def kernel_hw(self):
        return im2col._pair(self.k)

    @property
    def stride_hw(self):
        """``(sh, sw)``; a pool stride of None is the kernel size."""
        return im2col._pair(self.k if self.stride is None else self.stride)

    @property
    def pad_hw(self):
        return im2col._pair(self.pad)

    @property
    def dilation_hw(self):
        """``(dh, dw)`` (the subclasses with a ``dilation`` field)."""
        return im2col._pair(self.dilation)

    @property
    def out_hw(self):
        """``(Ho, Wo)``."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_hw, self.stride_hw, self.pad_hw
        return (self.h + 2 * ph - kh) // sh + 1, (self.w + 2 * pw - kw) // sw + 1

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    def with_batch(self, n):
        """The same layer at batch size ``n``."""
        return dataclasses.replace(self, n=n)

    def __str__(self):
        """The test id: name and shape, e.g. ``grid-s2-p1:N2-C3-9x11-F5-k3x3-s2-p1``."""
        f = f"-F{self.f}" if self.kind == "conv" else ""
        kh, kw = self.kernel_hw
        return (f"{self.name}:N{self.n}-C{self.c}-{self.h}x{self.w}{f}-k{kh}x{kw}"
                f"-s{_label(self.stride)}-p{_label(self.pad)}")

    def describe(self):
        f = f" F={self.f}" if self.kind == "conv" else ""
        return f"N={self.n} C={self.c} H={self.h} W={self.w}{f} k={self.k} stride={self.stride} pad={self.pad}"


@dataclasses.dataclass(frozen=True)
class ConvCase(_Layer):
    """A convolution layer: input (N, C, H, W), F filters of KH x KW, stride, zero padding.

    Parameters
    ----------
    name : str
        Unique in the table; a benchmark row's name is its benchmark id and report row.
    n, c, h, w : int
        The input; ``n`` is the (small) batch the tests run.
    f : int
        Filters.
    k, stride, pad : int or (h, w) pair
        Kernel size, stride and zero padding, passed to the implementations as given
        (so the table exercises both spellings).
    bench_batch : int, optional
        The batch the benchmarks time the row at; None (a test-only row) to leave it
        out of the benchmarks.
    dilation : int or (h, w) pair, default 1
    groups : int, default 1
        As :func:`fastconv.functional.conv2d` takes them (issue 15); ``pad`` may also be
        ``'same'`` or ``'valid'`` (a table row's ``'same'`` pads symmetrically: an odd
        ``dilation * (k - 1)`` total is tested in ``tests/test_conv_dilated_grouped.py``).
    """

    f: int
    k: object
    stride: object = 1
    pad: object = 0
    bench_batch: object = None
    dilation: object = 1
    groups: int = 1

    kind = "conv"

    def __post_init__(self):
        if self.pad == "same" and any(d * (k - 1) % 2 for d, k in zip(self.dilation_hw, self.kernel_hw)):
            raise ValueError(f"{self.name}: a table row's padding='same' must pad both sides alike")

    @property
    def pad_hw(self):
        """``(ph, pw)`` on each side, ``'same'`` and ``'valid'`` resolved."""
        if self.pad == "valid":
            return (0, 0)
        if self.pad == "same":
            return tuple(d * (k - 1) // 2 for d, k in zip(self.dilation_hw, self.kernel_hw))
        return im2col._pair(self.pad)

    @property
    def out_hw(self):
        """``(Ho, Wo)``, the dilation included."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_hw, self.stride_hw, self.pad_hw, self.dilation_hw
        return (self.h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (self.w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    @property
    def options(self):
        """The keyword arguments beyond stride and padding: ``dilation`` and ``groups``."""
        return {"dilation": self.dilation, "groups": self.groups}

    @property
    def w_shape(self):
        return (self.f, self.c // self.groups) + self.kernel_hw

    @property
    def y_shape(self):
        return (self.n, self.f) + self.out_hw

    def __str__(self):
        extra = (f"-d{_label(self.dilation)}" if self.dilation != 1 else "") + (
            f"-g{self.groups}" if self.groups != 1 else "")
        return super().__str__() + extra

    def describe(self):
        return super().describe() + "".join(f" {k}={v}" for k, v in self.options.items() if v != 1)

    def flop(self, op):
        """Floating-point operations of ``op`` (a multiply-add counts 2)."""
        (kh, kw), (ho, wo) = self.kernel_hw, self.out_hw
        mac = 2 * self.n * self.f * ho * wo * self.c // self.groups * kh * kw
        if op == "conv2d_backward":
            return 2 * mac + self.n * self.f * ho * wo  # dx + dw + db
        return mac


@dataclasses.dataclass(frozen=True)
class PoolCase(_Layer):
    """A max-pool layer: input (N, C, H, W), KH x KW windows, stride, -inf padding, dilation, ceil_mode.

    Fields as :class:`ConvCase` (without ``f``); ``stride`` None means the kernel size,
    as in :func:`fastconv.functional.max_pool2d`.
    """

    k: object
    stride: object = None
    pad: object = 0
    bench_batch: object = None
    dilation: object = 1
    ceil_mode: bool = False

    kind = "pool"

    @property
    def out_hw(self):
        """``(Ho, Wo)`` by PyTorch's rule (dilation and ``ceil_mode`` included)."""
        from fastconv._validation import pool_output_size

        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_hw, self.stride_hw, self.pad_hw, self.dilation_hw
        return (pool_output_size(self.h, (kh - 1) * dh + 1, sh, ph, self.ceil_mode),
                pool_output_size(self.w, (kw - 1) * dw + 1, sw, pw, self.ceil_mode))

    @property
    def y_shape(self):
        return (self.n, self.c) + self.out_hw

    @property
    def options(self):
        """The keyword arguments beyond kernel, stride and padding: ``dilation`` and ``ceil_mode``."""
        return {"dilation": self.dilation, "ceil_mode": self.ceil_mode}

    def __str__(self):
        extra = (f"-d{_label(self.dilation)}" if self.dilation != 1 else "") + ("-ceil" if self.ceil_mode else "")
        return super().__str__() + extra

    def flop(self, op):
        """None: pooling has no floating-point arithmetic worth counting."""
        return None


@dataclasses.dataclass(frozen=True)
class AvgPoolCase(_Layer):
    """An average-pool layer (:func:`fastconv.functional.avg_pool2d`): window, stride, zero padding and options."""

    k: object
    stride: object = None
    pad: object = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: object = None

    kind = "avg_pool"

    @property
    def out_hw(self):
        from fastconv._validation import pool_output_size

        (kh, kw), (sh, sw), (ph, pw) = self.kernel_hw, self.stride_hw, self.pad_hw
        return (pool_output_size(self.h, kh, sh, ph, self.ceil_mode), pool_output_size(self.w, kw, sw, pw, self.ceil_mode))

    @property
    def y_shape(self):
        return (self.n, self.c) + self.out_hw

    @property
    def options(self):
        return {"ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def __str__(self):
        extra = ("-ceil" if self.ceil_mode else "") + ("" if self.count_include_pad else "-nopad")
        return super().__str__() + extra + (f"-div{self.divisor_override}" if self.divisor_override else "")


@dataclasses.dataclass(frozen=True)
class AdaptivePoolCase:
    """An adaptive pooling (average and max) of an input (N, C, H, W) to ``output_size`` (PyTorch's spelling)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    output_size: object

    kind = "adaptive_pool"

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def out_hw(self):
        pair = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size,) * 2
        return tuple(size if v is None else v for v, size in zip(pair, (self.h, self.w)))

    @property
    def y_shape(self):
        return (self.n, self.c) + self.out_hw

    def __str__(self):
        return f"{self.name}:N{self.n}-C{self.c}-{self.h}x{self.w}-out{_label(self.output_size)}"


# Test-only rows. Every stride and padding spelling on one small layer:
CONV_GRID = tuple(
    ConvCase(f"grid-s{_label(s)}-p{_label(p)}", 2, 3, 9, 11, 5, 3, s, p)
    for s in (1, 2, 3, (1, 2))
    for p in (0, 1, 2, (0, 2))
)
# Square and rectangular kernels, at stride 1 (padding half the kernel) and at stride 2:
_KERNELS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 3), (3, 1), (5, 2), (2, 7))
CONV_KERNELS = tuple(
    ConvCase(f"kernel-{kh}x{kw}-s{s}", 2, 2, 9, 10, 5, (kh, kw), s, (kh // 2, kw // 2) if s == 1 else 0)
    for s in (1, 2)
    for kh, kw in _KERNELS
)
# Edge cases of the kernels' loops and tilings:
CONV_SHAPES = (
    ConvCase("shape-batch1", 1, 3, 8, 8, 4, 3, 1, 1),
    ConvCase("shape-C1", 3, 1, 10, 10, 6, 3, 1, 0),
    ConvCase("shape-F17", 2, 3, 7, 7, 17, 3, 1, 1),
    ConvCase("shape-F1", 2, 3, 6, 6, 1, 3, 1, 1),
    ConvCase("shape-C20-F33", 2, 20, 6, 5, 33, 3, 1, 1),
    ConvCase("shape-odd", 2, 2, 13, 7, 3, 3, 1, 1),
    ConvCase("shape-tall", 1, 2, 15, 4, 3, 3, (2, 1), (1, 0)),
    ConvCase("shape-wide", 1, 2, 5, 40, 3, 3, 1, 1),
    ConvCase("shape-exact-fit", 2, 2, 9, 9, 3, 3, 2, 0),
    ConvCase("shape-leftover", 2, 2, 10, 10, 3, 3, 2, 0),
    ConvCase("shape-leftover-s4", 2, 2, 11, 11, 3, 3, 4, 0),
    ConvCase("shape-kernel-is-input", 2, 3, 5, 4, 2, (5, 4), 1, 0),
    ConvCase("shape-1x1-input-pad1", 2, 3, 1, 1, 4, 3, 1, 1),
    ConvCase("shape-1x1-kernel-pad2", 1, 2, 3, 3, 2, 1, 1, 2),
    ConvCase("shape-padding-over-kernel", 2, 2, 4, 5, 3, 3, 1, 3),
    # F >= 32 with stride > 1: the input gradient's phases (phases_vector), odd strides and kernels
    ConvCase("shape-F32-s2", 2, 3, 11, 9, 32, 3, 2, 1),
    ConvCase("shape-F33-s2x3-k4x5", 1, 2, 13, 12, 33, (4, 5), (2, 3), (2, 1)),
    ConvCase("shape-F40-s3-k2", 1, 2, 9, 10, 40, 2, 3, 0),
    ConvCase("shape-F36-stem7", 1, 2, 17, 16, 36, 7, 2, 3),
    # Strided, one input channel and 64 filters: dx's channels fill a quarter vector at most, the input
    # gradient runs the tiled kernel per phase (phases_shared_pack) instead of the phases' vector kernel.
    ConvCase("shape-C1-F64-s2", 2, 1, 9, 8, 64, 4, 2, 1),
    # Many channels: receptive fields of 2304 (forward and input gradient); the weight
    # gradient's per-thread partials would pass 4 MiB, so the filters are split instead.
    ConvCase("shape-many-channels", 2, 256, 5, 6, 256, 3, 1, 1),
    # Rows narrower than the 4-pixel tile (pixel by pixel), and 5-7 wide (the last tile
    # overlaps the one before it), on the tiled kernels (receptive field >= 32).
    ConvCase("shape-tiled-W3", 2, 8, 4, 3, 9, 3, 1, 1),
    ConvCase("shape-tiled-W2", 2, 8, 5, 2, 9, 3, 1, 1),
    ConvCase("shape-tiled-W7", 2, 8, 3, 7, 9, 3, 1, 1),
    # 1x1 at stride 1 without padding: matrix products in NCHW (fastconv.kernels.dense),
    # with 4 x 4 tile remainders in filters (9) and channels (41) and an odd plane (5 x 7).
    ConvCase("shape-pointwise", 3, 41, 5, 7, 9, 1, 1, 0),
    ConvCase("shape-pointwise-tiny", 1, 2, 1, 1, 1, 1, 1, 0),
)


def _random_conv_rows(count, seed):
    """Seeded random layers up to 19 x 19 with kernels up to 7 x 7, strides up to 3, paddings up to 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        kh, kw = (int(k) for k in rng.integers(1, 8, 2))
        sh, sw = (int(s) for s in rng.integers(1, 4, 2))
        ph, pw = (int(p) for p in rng.integers(0, 4, 2))
        h = int(rng.integers(max(1, kh - 2 * ph), 20))
        w = int(rng.integers(max(1, kw - 2 * pw), 20))
        stride = sh if rng.random() < 0.3 else (sh, sw)
        pad = (ph, pw) if rng.random() < 0.7 else ph
        if np.ndim(pad) == 0:  # keep the kernel inside the padded input
            h, w = max(h, kh - 2 * ph), max(w, kw - 2 * ph)
        n, c, f = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 21))
        rows.append(ConvCase(f"random-{i}", n, c, h, w, f, (kh, kw), stride, pad))
    return tuple(rows)


CONV_RANDOM = _random_conv_rows(24, seed=7)
#: The layers of tests/test_nn.py's nn.Conv2d tests (finite differences on every element: tiny).
CONV_LAYERS = (
    ConvCase("layer-conv-k3-p1", 2, 3, 6, 7, 4, 3, 1, 1),
    ConvCase("layer-conv-k3-s2", 2, 2, 7, 8, 3, 3, 2, 0),
    ConvCase("layer-conv-k2x3-s2x1-p1x0", 1, 2, 5, 6, 3, (2, 3), (2, 1), (1, 0)),
    ConvCase("layer-conv-k1", 2, 3, 4, 4, 2, 1, 1, 0),
)
#: Benchmark rows: issue 5's layers, then (issue 6: the targets must hold beyond the
#: table) shapes no kernel was tuned on: a 1x1 bottleneck, a 7x7 stride-2 stem, odd
#: sizes, many channels on a small map. The tests run them at batch 1 or 2.
CONV_BENCH = (
    ConvCase("mnist_conv1", 2, 1, 28, 28, 32, 3, 1, 1, bench_batch=64),
    ConvCase("mnist_conv2", 1, 32, 14, 14, 64, 3, 1, 1, bench_batch=64),
    ConvCase("cifar_conv", 1, 3, 32, 32, 64, 3, 1, 1, bench_batch=32),
    ConvCase("resnet_conv", 1, 64, 56, 56, 64, 3, 1, 1, bench_batch=16),
    ConvCase("strided", 1, 64, 56, 56, 128, 3, 2, 1, bench_batch=16),
    ConvCase("k5", 1, 32, 14, 14, 64, 5, 1, 2, bench_batch=64),
    ConvCase("conv1x1", 1, 256, 14, 14, 64, 1, 1, 0, bench_batch=32),
    ConvCase("stem7x7s2", 1, 3, 224, 224, 64, 7, 2, 3, bench_batch=8),
    ConvCase("odd", 1, 17, 23, 29, 33, 3, 1, 1, bench_batch=16),
    ConvCase("deep", 1, 512, 7, 7, 512, 3, 1, 1, bench_batch=8),
    # Issue 15: ResNeXt's grouped 3x3 (32 groups of 8 channels), DeepLab's dilated 3x3,
    # a 'same' 5x5 and ResNet's 1x1 stride-2 shortcut.
    ConvCase("grouped32", 1, 256, 14, 14, 256, 3, 1, 1, bench_batch=8, groups=32),
    ConvCase("dilated3x3d2", 1, 64, 28, 28, 64, 3, 1, 2, bench_batch=8, dilation=2),
    ConvCase("same5x5", 1, 32, 28, 28, 64, 5, 1, "same", bench_batch=16),
    ConvCase("conv1x1s2", 1, 256, 28, 28, 512, 1, 2, 0, bench_batch=8),
)
#: Issue 15 (test-only rows): dilation, groups and 'same'/'valid' on small layers, every strategy
#: of the non-dense geometries (grouped at strides 1 and 2, dilation phases, dilation with groups),
#: and 1x1 at strides above 1.
CONV_DILATED_GROUPED = (
    ConvCase("dilated-d2-p2", 2, 3, 9, 10, 4, 3, 1, 2, dilation=2),
    ConvCase("dilated-d2x3-p0", 2, 3, 11, 12, 5, 3, 1, 0, dilation=(2, 3)),
    ConvCase("dilated-d2-s2", 2, 3, 11, 10, 4, 3, 2, 1, dilation=2),
    ConvCase("dilated-d3-same", 1, 4, 10, 9, 33, 3, 1, "same", dilation=3),
    ConvCase("dilated-k2-d2-same", 2, 2, 8, 7, 3, 2, 1, "same", dilation=2),
    ConvCase("grouped-g2", 2, 4, 8, 9, 6, 3, 1, 1, groups=2),
    ConvCase("grouped-g4-s2", 2, 8, 9, 9, 8, 3, 2, (1, 0), groups=4),
    ConvCase("grouped-g3-d2-k2x3", 1, 6, 9, 10, 9, (2, 3), (1, 2), 1, dilation=(2, 1), groups=3),
    ConvCase("grouped-g2-k1-s2", 2, 4, 7, 8, 6, 1, 2, 0, groups=2),
    ConvCase("grouped-g2-valid", 2, 4, 7, 8, 4, 3, 1, "valid", groups=2),
    ConvCase("same-k5", 2, 3, 8, 9, 4, 5, 1, "same"),
    # Padding beyond the dilated kernel (d * (K - 1) < p): the input gradient's other strategies.
    ConvCase("dilated-pad-over-kernel", 2, 2, 6, 7, 3, 2, 1, 3, dilation=2),
    ConvCase("grouped-g2-k1-p1", 2, 4, 5, 6, 4, 1, 1, 1, groups=2),
    ConvCase("pointwise-s2", 2, 6, 25, 24, 5, 1, 2, 0),  # 13x12 outputs: the subsampled matmul
    ConvCase("pointwise-s3x2", 1, 40, 37, 26, 9, 1, (3, 2), 0),
    ConvCase("pointwise-s2-small", 2, 6, 9, 10, 5, 1, 2, 0),  # 5x5 outputs: the vector/tiled strategies
    ConvCase("pointwise-s2-vector", 2, 40, 9, 10, 17, 1, 2, 0),  # 5x5 outputs, C >= 32: the subsampled vector tiles
)
#: Every conv row: each is a reference test and a PyTorch test; the ones with a
#: ``bench_batch`` also a benchmark.
CONV_ROWS = CONV_GRID + CONV_KERNELS + CONV_SHAPES + CONV_RANDOM + CONV_LAYERS + CONV_BENCH + CONV_DILATED_GROUPED
#: Depthwise rows (issue 15: ``groups == c``, any channel multiplier ``f // c``): small test
#: rows for the kernels' edges (channels not a whole vector, multiplier 2, strides,
#: dilation, 5x5; narrow maps for the NHWC kernels, wide ones for the NCHW rows), then MobileNet's 3x3 layers (benchmarks/layers.py times them
#: against torch at ``bench_batch``). Walked by the plan-level tests (:data:`CONV_PLAN_ROWS`);
#: the functional API's depthwise calls are tested in ``tests/test_depthwise.py``.
CONV_DEPTHWISE = (
    ConvCase("dw-C3", 2, 3, 9, 11, 3, 3, 1, 1, groups=3),
    ConvCase("dw-C17-m2-s2-d2", 2, 17, 9, 8, 34, 3, 2, 1, dilation=2, groups=17),
    ConvCase("dw-C40-k5", 1, 40, 7, 9, 40, 5, 1, 2, groups=40),
    ConvCase("dw-C16-k2x3-s3x1", 3, 16, 10, 7, 16, (2, 3), (3, 1), (0, 1), groups=16),
    ConvCase("dw-narrow-C24", 2, 24, 4, 3, 24, 3, 2, 1, groups=24),  # 2 x 2 outputs: NHWC at every width
    ConvCase("dw-wide-m2", 2, 4, 5, 40, 8, 3, 1, 1, groups=4),  # rows kernels (NCHW) at every width
    ConvCase("dw-wide-s2-d2", 1, 3, 9, 70, 3, 3, 2, 2, dilation=2, groups=3),
    ConvCase("dw_c32_112", 1, 32, 112, 112, 32, 3, 1, 1, bench_batch=8, groups=32),
    ConvCase("dw_c96_56_s2", 1, 96, 56, 56, 96, 3, 2, 1, bench_batch=8, groups=96),
    ConvCase("dw_c144_56", 1, 144, 56, 56, 144, 3, 1, 1, bench_batch=8, groups=144),
    ConvCase("dw_c144_56_s2", 1, 144, 56, 56, 144, 3, 2, 1, bench_batch=8, groups=144),
    ConvCase("dw_c384_14", 1, 384, 14, 14, 384, 3, 1, 1, bench_batch=8, groups=384),
    ConvCase("dw_c960_7", 1, 960, 7, 7, 960, 3, 1, 1, bench_batch=8, groups=960),
)
#: Every conv row the plan layer is tested on (tests/test_plan.py, the 64-bit audit).
CONV_PLAN_ROWS = CONV_ROWS + CONV_DEPTHWISE

POOL_SHAPES = (
    *(PoolCase(f"kernel-k{k}", 2, 3, 9, 8, k) for k in (1, 2, 3, 4, 5)),
    PoolCase("k2s2", 2, 3, 8, 8, 2, 2, 0),
    PoolCase("k2s2-odd", 2, 3, 7, 11, 2, 2, 0),  # the 2x2 kernel drops the last row and column
    PoolCase("overlap-s1", 2, 3, 9, 9, 3, 1, 0),
    PoolCase("overlap-s2p1", 2, 3, 9, 10, 3, 2, 1),
    PoolCase("overlap-k4p2", 2, 2, 10, 9, 4, 2, 2),
    PoolCase("stride-over-kernel", 2, 2, 11, 11, 2, 3, 0),
    PoolCase("k2p1", 2, 2, 9, 9, 2, 1, 1),
    PoolCase("k5p2", 2, 2, 9, 11, 5, (1, 3), (2, 1)),
    PoolCase("nonsquare", 2, 3, 9, 10, (2, 3), (1, 2), (1, 1)),
    PoolCase("nonsquare-k3x1", 1, 2, 10, 7, (3, 1), (2, 1), (1, 0)),
    PoolCase("global", 2, 3, 7, 5, (7, 5), None, 0),
    PoolCase("global-square", 2, 3, 6, 6, 6, None, 0),
    PoolCase("odd", 3, 1, 13, 7, 3, 2, 0),
    PoolCase("1x1", 1, 2, 1, 1, 1, None, 0),
    PoolCase("one-row", 1, 2, 1, 3, (1, 3), 1, (0, 1)),
)


def _random_pool_rows(count, seed):
    """Seeded random windows up to 5 x 5 (padding at most half of it), strides up to 4 or None."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        kh, kw = (int(k) for k in rng.integers(1, 6, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        stride = None if rng.random() < 0.3 else tuple(int(s) for s in rng.integers(1, 5, 2))
        h, w = int(rng.integers(max(1, kh - 2 * ph), 16)), int(rng.integers(max(1, kw - 2 * pw), 16))
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        rows.append(PoolCase(f"random-{i}", n, c, h, w, (kh, kw), stride, (ph, pw)))
    return tuple(rows)


POOL_RANDOM = _random_pool_rows(12, seed=11)
#: The layers of tests/test_nn.py's nn.MaxPool2d tests.
POOL_LAYERS = (
    PoolCase("layer-maxpool-2", 2, 3, 6, 7, 2),
    PoolCase("layer-maxpool-3-s2-p1-overlap", 2, 2, 7, 6, 3, 2, 1),
    PoolCase("layer-maxpool-2x3-s1x2", 1, 2, 5, 7, (2, 3), (1, 2)),
)
POOL_BENCH = (
    PoolCase("pool_k2s2", 2, 32, 28, 28, 2, 2, 0, bench_batch=64),
    PoolCase("pool_k3s2p1", 1, 64, 56, 56, 3, 2, 1, bench_batch=16),
)
#: Dilation and ceil_mode (issue 16): windows that hang past the input, taps skipping inputs.
POOL_VARIANTS = (
    PoolCase("ceil-k3s2", 2, 3, 8, 9, 3, 2, 0, ceil_mode=True),
    PoolCase("ceil-k2s2-odd", 2, 3, 7, 11, 2, 2, 0, ceil_mode=True),  # not the 2x2 kernel: one more window
    PoolCase("ceil-k2s2-even", 1, 2, 6, 8, 2, 2, 0, ceil_mode=True),  # the 2x2 kernel: nothing added
    PoolCase("ceil-k3s2p1", 2, 2, 9, 10, 3, 2, 1, ceil_mode=True),
    PoolCase("ceil-last-window-dropped", 1, 2, 5, 5, 2, 2, 1, ceil_mode=True),  # would start in the right padding
    PoolCase("ceil-window-over-input", 1, 2, 2, 2, 3, 2, 0, ceil_mode=True),  # larger than the input: clipped
    PoolCase("dilation-2", 2, 3, 9, 9, 3, 1, 0, dilation=2),
    PoolCase("dilation-2x3-p1", 2, 2, 10, 11, (3, 2), (1, 2), 1, dilation=(2, 3)),
    PoolCase("dilation-3-s2-ceil", 1, 3, 12, 13, 3, 2, 1, dilation=3, ceil_mode=True),
    PoolCase("dilation-1x4-wide", 1, 2, 4, 30, (1, 3), (1, 2), (0, 1), dilation=(1, 4)),
    # Outputs 16 wide at stride 1, 32 at stride 2, and wider: window_any (narrower: window_columns).
    PoolCase("wide-s1-dilation-ceil", 1, 2, 5, 40, 3, 1, 1, dilation=(1, 2), ceil_mode=True),
    PoolCase("wide-s2-ceil", 1, 2, 4, 67, 3, 2, 0, ceil_mode=True),
)
#: Every pool row, as :data:`CONV_ROWS`.
POOL_ROWS = POOL_SHAPES + POOL_RANDOM + POOL_LAYERS + POOL_BENCH + POOL_VARIANTS

#: Average-pooling rows (issue 16): every option, the whole-plane window (the ``global``
#: strategy), and the layers :mod:`benchmarks.layers` times at full size.
AVG_POOL_ROWS = (
    AvgPoolCase("avg-k2", 2, 3, 8, 9, 2),
    AvgPoolCase("avg-k3s2p1", 2, 3, 9, 10, 3, 2, 1),
    AvgPoolCase("avg-k3s2p1-nopad", 2, 3, 9, 10, 3, 2, 1, count_include_pad=False),
    AvgPoolCase("avg-k3s2-ceil", 2, 2, 8, 9, 3, 2, 0, ceil_mode=True),
    AvgPoolCase("avg-k3s2p1-ceil-nopad", 2, 2, 10, 9, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    AvgPoolCase("avg-ceil-over-input", 1, 2, 2, 2, 3, 2, 0, ceil_mode=True),
    AvgPoolCase("avg-divisor", 2, 2, 7, 8, (3, 2), (2, 1), (1, 1), divisor_override=5),
    AvgPoolCase("avg-divisor-negative-ceil", 1, 2, 7, 7, 2, 2, 1, ceil_mode=True, divisor_override=-3),
    AvgPoolCase("avg-overlap-s1", 2, 2, 6, 7, 3, 1, 1),
    AvgPoolCase("avg-stride-over-kernel", 2, 2, 11, 11, 2, 3, 0),
    AvgPoolCase("avg-nonsquare", 1, 3, 9, 12, (2, 4), (1, 3), (1, 2)),
    AvgPoolCase("avg-wide-rows", 1, 2, 5, 70, 3, 2, 1),  # over 16 columns: summed tap by tap
    AvgPoolCase("avg-whole-plane", 2, 3, 5, 6, (5, 6)),  # the global strategy
    AvgPoolCase("avg-1x1", 2, 2, 4, 5, 1),
    AvgPoolCase("avg-resnet-14", 2, 8, 14, 14, 3, 2, 1),
    AvgPoolCase("avg-resnet-56", 1, 4, 56, 56, 2, 2, 0),
)
#: Adaptive rows: PyTorch's windows when the sizes divide and when they do not, output
#: larger than the input, None entries, the global average (output 1).
ADAPTIVE_POOL_ROWS = (
    AdaptivePoolCase("adaptive-divides", 2, 3, 8, 6, (4, 3)),
    AdaptivePoolCase("adaptive-uneven", 2, 3, 10, 7, (3, 4)),
    AdaptivePoolCase("adaptive-larger", 1, 2, 3, 5, (5, 7)),
    AdaptivePoolCase("adaptive-none-h", 2, 2, 6, 9, (None, 4)),
    AdaptivePoolCase("adaptive-none-w", 1, 2, 6, 9, (2, None)),
    AdaptivePoolCase("adaptive-int", 2, 2, 9, 9, 4),
    AdaptivePoolCase("adaptive-global", 2, 5, 7, 6, 1),
    AdaptivePoolCase("adaptive-global-1x1-input", 2, 3, 1, 1, 1),
    AdaptivePoolCase("adaptive-resnet-7", 1, 8, 14, 14, 7),
    AdaptivePoolCase("adaptive-resnet-56-7", 1, 2, 56, 56, 7),
    AdaptivePoolCase("adaptive-wide-uniform", 1, 2, 3, 64, (1, 32)),  # 32 uniform column windows
)


@dataclasses.dataclass(frozen=True)
class NormCase:
    """A normalisation layer's input: ``shape`` (N, C, ...) for the tests, ``bench_shape`` for the benchmark.

    ``tests/test_norm.py`` runs :func:`fastconv.functional.batch_norm` and its backward on
    every row against the reference; ``benchmarks/layers.py`` times BatchNorm2d at ResNet's
    shapes against PyTorch.
    """

    name: str
    shape: tuple
    bench_shape: object = None


NORM_ROWS = (
    NormCase("bn1d-NC", (6, 5)),
    NormCase("bn1d-NC-many-rows", (2100, 2)),  # more rows than one statistics block holds
    NormCase("bn1d-NCL", (3, 4, 7)),
    NormCase("bn2d", (2, 3, 5, 4)),
    NormCase("bn2d-one-channel", (3, 1, 4, 4)),
    NormCase("bn2d-long-rows", (2, 2, 50, 50)),  # rows longer than one statistics block
    NormCase("bn3d", (2, 2, 3, 2, 2)),
    NormCase("bn2d-resnet", (2, 4, 8, 8), bench_shape=(32, 64, 56, 56)),
)


def _benchmarks(rows):
    """The benchmark rows of ``rows`` by name, at their benchmark batch (names must be unique)."""
    names = [r.name for r in rows]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"case names must be unique; repeated: {', '.join(repeated)}")
    return {r.name: r.with_batch(r.bench_batch) for r in rows if r.bench_batch is not None}


#: The benchmarks' cases by name, at full batch (the report's and the benchmark ids' names).
CONV_CASES = _benchmarks(CONV_ROWS)
#: The cases added to check that speed holds on shapes nothing was tuned for.
UNSEEN_CASES = ("conv1x1", "stem7x7s2", "odd", "deep")
POOL_CASES = _benchmarks(POOL_ROWS)
CASES = {**CONV_CASES, **POOL_CASES}

CONV_OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward")
POOL_OPS = ("max_pool2d", "max_pool2d_backward")
OPS = CONV_OPS + POOL_OPS

DTYPES = ("float32", "float64")
#: The float64 subset: the MNIST/cs231n-sized layers float64 users actually run.
FLOAT64_CASES = ("mnist_conv1", "mnist_conv2", "cifar_conv", "pool_k2s2")

#: Images the correctness check runs on (2, so batch reductions are exercised).
CHECK_BATCH = 2
#: Images the naive implementation is timed on; its time is scaled to the full batch.
NAIVE_BATCH = 1
#: Batch size of every case in smoke mode (``pytest`` with ``--benchmark-disable``).
SMOKE_BATCH = 2
#: The only cases the naive implementation runs on in smoke mode.
SMOKE_NAIVE_CASES = ("mnist_conv2", "pool_k2s2")

#: Relative tolerance of the check: max |got - want| <= RTOL * max |want|.
RTOL = {"float32": 1e-4, "float64": 1e-10}


def ops_for(case):
    """The operations that apply to ``case``."""
    return CONV_OPS if case.kind == "conv" else POOL_OPS


def dtypes_for(case, float64="subset"):
    """The dtypes ``case`` runs in: float32 always; float64 per ``float64`` ('subset', 'all', 'none')."""
    if float64 == "all" or (float64 == "subset" and case.name in FLOAT64_CASES):
        return DTYPES
    return ("float32",)


# -------------------------------------------------------------------------- inputs


def _normal(rng, shape, dtype, scale=1.0):
    # Drawn in float32 and widened: a case's float64 inputs equal its float32 inputs
    # exactly, so one float64 oracle serves both dtypes.
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    return a.astype(dtype)


def make_inputs(case, dtype, seed=0):
    """Random inputs of ``case`` in ``dtype``, the same for every implementation.

    Returns
    -------
    dict of ndarray
        conv: ``x`` (N, C, H, W), ``w`` (F, C, KH, KW), ``b`` (F,), ``dy`` (N, F, Ho, Wo).
        pool: ``x`` (N, C, H, W), ``dy`` (N, C, Ho, Wo), ``indices`` (N, C, Ho, Wo)
        int64, the winners of ``x`` (for the backward pass).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if case.kind == "conv":
        fan_in = case.c * case.kernel_hw[0] * case.kernel_hw[1]
        return {
            "x": _normal(rng, case.x_shape, dtype),
            "w": _normal(rng, case.w_shape, dtype, 1 / math.sqrt(fan_in)),
            "b": _normal(rng, (case.f,), dtype),
            "dy": _normal(rng, case.y_shape, dtype),
        }
    x = _normal(rng, case.x_shape, dtype)
    dy = _normal(rng, case.y_shape, dtype)
    _, indices = im2col.max_pool2d(x, case.k, case.stride, case.pad)
    # im2col's indices are a transposed view; every library's forward pass returns
    # C-contiguous indices, and that is what a backward pass gets in a real network.
    return {"x": x, "dy": dy, "indices": np.ascontiguousarray(indices)}


# ------------------------------------------------------------------ implementations


def _issue15_conv(case):
    """True when a conv row uses a dilation, groups or a padding string (issue 15's parameters)."""
    return case.options != {"dilation": 1, "groups": 1} or isinstance(case.pad, str)


class NumpyImplementation:
    """An implementation with fastconv's functional signatures on NumPy arrays.

    Parameters
    ----------
    name : str
        Short name used in test ids and tables.
    label : str
        Long name for reports.
    module : str
        Module to import lazily (``fastconv.functional``, ``fastconv.reference``, ...).
    timed_batch : int, optional
        If given, time on this many images and scale to the case's batch.
    """

    def __init__(self, name, label, module, timed_batch=None):
        self.name = name
        self.label = label
        self.module_name = module
        self.timed_batch = timed_batch

    def __repr__(self):
        return f"<implementation {self.name}: {self.label}>"

    @functools.cached_property
    def _module_or_error(self):
        try:
            return importlib.import_module(self.module_name), None
        except ImportError as exc:
            return None, f"{self.module_name} cannot be imported: {exc}"

    def unavailable_reason(self, case=None):
        """None if usable (on ``case``, when given), else why not (a string)."""
        if self.name == "im2col" and case is not None and case.kind == "conv" and _issue15_conv(case):
            return "benchmarks/im2col.py has no dilation, groups or padding strings"
        return self._module_or_error[1]

    def thunk(self, op, case, a):
        """A zero-argument callable running ``op`` of ``case`` on the arrays ``a``."""
        m = self._module_or_error[0]
        s, p = case.stride, case.pad
        if case.kind == "conv" and _issue15_conv(case):
            # The issue-15 options: the reference takes numeric padding only.
            o, p = case.options, (case.pad_hw if self.name == "naive" else p)
            return self._conv_thunk(m, op, a, s, p, o)
        if op == "conv2d":
            return lambda: m.conv2d(a["x"], a["w"], a["b"], s, p)
        if op == "conv2d_backward_input":
            return lambda: m.conv2d_backward_input(a["dy"], a["w"], a["x"].shape, s, p)
        if op == "conv2d_backward_weight":
            return lambda: m.conv2d_backward_weight(a["dy"], a["x"], a["w"].shape, s, p)
        if op == "conv2d_backward":
            return lambda: m.conv2d_backward(a["dy"], a["x"], a["w"], s, p)
        if op == "max_pool2d":
            return lambda: m.max_pool2d(a["x"], case.k, s, p)
        if op == "max_pool2d_backward":
            return lambda: m.max_pool2d_backward(a["dy"], a["indices"], a["x"].shape)
        raise ValueError(f"unknown op {op!r}")

    @staticmethod
    def _conv_thunk(m, op, a, s, p, o):
        if op == "conv2d":
            return lambda: m.conv2d(a["x"], a["w"], a["b"], s, p, **o)
        if op == "conv2d_backward_input":
            return lambda: m.conv2d_backward_input(a["dy"], a["w"], a["x"].shape, s, p, **o)
        if op == "conv2d_backward_weight":
            return lambda: m.conv2d_backward_weight(a["dy"], a["x"], a["w"].shape, s, p, **o)
        if op == "conv2d_backward":
            return lambda: m.conv2d_backward(a["dy"], a["x"], a["w"], s, p, **o)
        raise ValueError(f"unknown op {op!r}")

    def to_numpy(self, result):
        """The outputs of one call as a tuple of ndarrays."""
        return tuple(result) if isinstance(result, tuple) else (result,)


class TorchImplementation:
    """PyTorch CPU, called without autograd overhead.

    Forward ops are ``torch.nn.functional``; the conv gradients call
    ``aten.convolution_backward`` with an output mask (what autograd and
    ``torch.nn.grad.conv2d_input``/``conv2d_weight`` call), and the pool gradient
    ``aten.max_pool2d_with_indices_backward``. Arrays are converted to tensors
    (zero-copy) before timing, never inside the timed call.
    """

    name = "torch"
    label = ("PyTorch CPU: torch.nn.functional forward ops; aten.convolution_backward and "
             "aten.max_pool2d_with_indices_backward, as autograd calls them")
    timed_batch = None

    def __repr__(self):
        return f"<implementation {self.name}: {self.label}>"

    def unavailable_reason(self, case=None):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "PyTorch is not installed"
        return None

    def thunk(self, op, case, a):
        import torch

        t = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in a.items()}
        s, p = case.stride_hw, case.pad_hw
        d, groups = (case.dilation_hw, case.groups) if case.kind == "conv" else ((1, 1), 1)
        if op == "conv2d":
            return lambda: torch.nn.functional.conv2d(t["x"], t["w"], t["b"], s, p, d, groups)
        if op in CONV_OPS:
            mask = {
                "conv2d_backward_input": (True, False, False),
                "conv2d_backward_weight": (False, True, False),
                "conv2d_backward": (True, True, True),
            }[op]
            bias_sizes = [case.f] if mask[2] else None
            conv_bwd = torch.ops.aten.convolution_backward
            return lambda: conv_bwd(t["dy"], t["x"], t["w"], bias_sizes, s, p, d, False, (0, 0), groups, mask)
        k = case.kernel_hw
        if op == "max_pool2d":
            return lambda: torch.nn.functional.max_pool2d(t["x"], k, s, p, return_indices=True)
        if op == "max_pool2d_backward":
            pool_bwd = torch.ops.aten.max_pool2d_with_indices_backward
            return lambda: pool_bwd(t["dy"], t["x"], k, s, p, (1, 1), False, t["indices"])
        raise ValueError(f"unknown op {op!r}")

    def to_numpy(self, result):
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return tuple(r.numpy() for r in result if r is not None)


IMPLEMENTATIONS = {
    impl.name: impl
    for impl in (
        NumpyImplementation("fastconv", "fastconv.functional (the Numba kernels)", "fastconv.functional"),
        TorchImplementation(),
        NumpyImplementation("im2col", "NumPy im2col + BLAS GEMM (benchmarks/im2col.py)", "benchmarks.im2col"),
        NumpyImplementation(
            "naive", "naive NumPy loops (fastconv.reference)", "fastconv.reference", timed_batch=NAIVE_BATCH
        ),
    )
}

# --------------------------------------------------------------------- correctness


@functools.lru_cache(maxsize=None)
def oracle(op, case):
    """The reference outputs of ``op`` on ``case``'s inputs (:func:`make_inputs`), in float64.

    Cached per process and read-only: the tests compare with the same arrays as
    :func:`check`, so each (op, case) is computed once in a run.
    """
    if op == "conv2d_backward":
        # Composed from the cached parts: the full backward is exactly these three.
        (dx,) = oracle("conv2d_backward_input", case)
        (dw,) = oracle("conv2d_backward_weight", case)
        outputs = dx, dw, make_inputs(case, np.float64)["dy"].sum(axis=(0, 2, 3))
    else:
        naive = IMPLEMENTATIONS["naive"]
        reason = naive.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"the correctness oracle is the naive reference, but {reason}")
        outputs = naive.to_numpy(naive.thunk(op, case, make_inputs(case, np.float64))())
    for a in outputs:
        a.flags.writeable = False
    return outputs


def check(impl, op, case, dtype, batch=CHECK_BATCH):
    """Assert that ``impl`` computes ``op`` of ``case`` correctly, on ``batch`` images.

    Raises
    ------
    AssertionError
        Naming the implementation, op, case, dtype, output and the error found.
    """
    small = case.with_batch(min(batch, case.n))
    got = impl.to_numpy(impl.thunk(op, small, make_inputs(small, dtype))())
    want = oracle(op, small)
    where = f"{impl.name} {op} {case.name} {dtype} (batch {small.n})"
    assert len(got) == len(want), f"{where}: {len(got)} outputs, expected {len(want)}"
    for i, (g, ww) in enumerate(zip(got, want)):
        assert g.shape == ww.shape, f"{where}: output {i} has shape {g.shape}, expected {ww.shape}"
        if ww.dtype.kind in "iu":
            bad = int(np.count_nonzero(g != ww))
            assert bad == 0, f"{where}: output {i} (indices) differs at {bad} of {ww.size} positions"
            continue
        assert g.dtype == np.dtype(dtype), f"{where}: output {i} has dtype {g.dtype}, expected {dtype}"
        scale = max(float(np.max(np.abs(ww))), np.finfo(np.float64).tiny)
        err = float(np.max(np.abs(g.astype(np.float64) - ww))) / scale
        assert err <= RTOL[dtype], f"{where}: output {i} relative error {err:.3g} > {RTOL[dtype]:g}"


# ------------------------------------------------------------------------- threads


def default_threads():
    """The cores this process may run on, capped by Numba's pool size: every benchmark's default."""
    import numba

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, numba.config.NUMBA_NUM_THREADS)


def blas_info():
    """The BLAS thread pools NumPy (and torch) use, via threadpoolctl if installed.

    Returns
    -------
    list of dict or str
        threadpoolctl's ``threadpool_info()``, or a string saying it is unavailable.
    """
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl is not installed: no details"
    return threadpoolctl.threadpool_info()


@contextmanager
def pinned_threads(n):
    """Run fastconv, torch and (with threadpoolctl) NumPy's BLAS on ``n`` threads.

    Restores every previous setting on exit. Without threadpoolctl, NumPy's BLAS keeps
    the thread count it started with (``OPENBLAS_NUM_THREADS``, else all cores), which
    is what ``scripts/bench_report.py`` sets before NumPy is imported.
    """
    import fastconv.functional as fcf

    old_fc = fcf.get_num_threads()
    torch = None
    try:
        import torch
    except ImportError:
        pass
    old_torch = torch.get_num_threads() if torch is not None else None
    limiter = None
    try:
        import threadpoolctl

        limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass
    try:
        fcf.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        yield n
    finally:
        fcf.set_num_threads(old_fc)
        if torch is not None:
            torch.set_num_threads(old_torch)
        if limiter is not None:
            limiter.restore_original_limits()


# --------------------------------------------------------------------------- table


def table(case_names=None, ops=None, impls=None, float64="subset"):
    """Every (implementation, op, case, dtype) to check and time, as name tuples.

    Parameters
    ----------
    case_names, ops, impls : iterable of str, optional
        Restrict to these (default: all).
    float64 : {"subset", "all", "none"}
        Which cases also run in float64 (see :data:`FLOAT64_CASES`).
    """
    rows = []
    for case in CASES.values():
        if case_names is not None and case.name not in case_names:
            continue
        for op in ops_for(case):
            if ops is not None and op not in ops:
                continue
            for dtype in dtypes_for(case, float64):
                for impl in IMPLEMENTATIONS:
                    if impls is None or impl in impls:
                        rows.append((impl, op, case.name, dtype))
    return rows


def row_id(impl, op, case_name, dtype):
    """Test id of a table row; says when the naive time is for a slice of the batch."""
    impl_label = f"{impl}_{NAIVE_BATCH}img" if impl == "naive" else impl
    return f"{op}-{case_name}-{dtype}-{impl_label}"
