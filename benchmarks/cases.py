"""The tables that drive the benchmarks: cases x operations x implementations.

One table, two uses (the numbagg pattern): every (implementation, operation, case,
dtype) combination is first checked for agreement with the naive reference and
only then timed. The pytest-benchmark suite (``benchmarks/test_bench_*.py``) and
``scripts/bench_report.py`` both read these tables, so a case or an
implementation added here is checked and benchmarked everywhere.

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


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """A convolution layer: input (N, C, H, W), F filters of k x k, stride, zero padding."""

    name: str
    n: int
    c: int
    h: int
    w: int
    f: int
    k: int
    stride: int
    pad: int

    kind = "conv"

    @property
    def out_hw(self):
        """``(Ho, Wo)``."""
        return (
            (self.h + 2 * self.pad - self.k) // self.stride + 1,
            (self.w + 2 * self.pad - self.k) // self.stride + 1,
        )

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self):
        return (self.f, self.c, self.k, self.k)

    @property
    def y_shape(self):
        return (self.n, self.f) + self.out_hw

    def flop(self, op):
        """Floating-point operations of ``op`` (a multiply-add counts 2)."""
        ho, wo = self.out_hw
        mac = 2 * self.n * self.f * ho * wo * self.c * self.k * self.k
        if op == "conv2d_backward":
            return 2 * mac + self.n * self.f * ho * wo  # dx + dw + db
        return mac

    def with_batch(self, n):
        """The same layer at batch size ``n``."""
        return dataclasses.replace(self, n=n)

    def describe(self):
        return (
            f"N={self.n} C={self.c} H={self.h} W={self.w} F={self.f} "
            f"k={self.k} stride={self.stride} pad={self.pad}"
        )


@dataclasses.dataclass(frozen=True)
class PoolCase:
    """A max-pool layer: input (N, C, H, W), k x k windows, stride, -inf padding."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    stride: int
    pad: int

    kind = "pool"

    @property
    def out_hw(self):
        return (
            (self.h + 2 * self.pad - self.k) // self.stride + 1,
            (self.w + 2 * self.pad - self.k) // self.stride + 1,
        )

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        return (self.n, self.c) + self.out_hw

    def flop(self, op):
        """None: pooling has no floating-point arithmetic worth counting."""
        return None

    def with_batch(self, n):
        return dataclasses.replace(self, n=n)

    def describe(self):
        return f"N={self.n} C={self.c} H={self.h} W={self.w} k={self.k} stride={self.stride} pad={self.pad}"


CONV_CASES = {
    c.name: c
    for c in (
        ConvCase("mnist_conv1", 64, 1, 28, 28, 32, 3, 1, 1),
        ConvCase("mnist_conv2", 64, 32, 14, 14, 64, 3, 1, 1),
        ConvCase("cifar_conv", 32, 3, 32, 32, 64, 3, 1, 1),
        ConvCase("resnet_conv", 16, 64, 56, 56, 64, 3, 1, 1),
        ConvCase("strided", 16, 64, 56, 56, 128, 3, 2, 1),
        ConvCase("k5", 64, 32, 14, 14, 64, 5, 1, 2),
        # Shapes no kernel was tuned on (issue 6: the targets must hold beyond the table):
        # a 1x1 bottleneck, a 7x7 stride-2 stem, odd sizes, many channels on a small map.
        ConvCase("conv1x1", 32, 256, 14, 14, 64, 1, 1, 0),
        ConvCase("stem7x7s2", 8, 3, 224, 224, 64, 7, 2, 3),
        ConvCase("odd", 16, 17, 23, 29, 33, 3, 1, 1),
        ConvCase("deep", 8, 512, 7, 7, 512, 3, 1, 1),
    )
}
#: The cases added to check that speed holds on shapes nothing was tuned for.
UNSEEN_CASES = ("conv1x1", "stem7x7s2", "odd", "deep")
POOL_CASES = {
    c.name: c
    for c in (
        PoolCase("pool_k2s2", 64, 32, 28, 28, 2, 2, 0),
        PoolCase("pool_k3s2p1", 16, 64, 56, 56, 3, 2, 1),
    )
}
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
        conv: ``x`` (N, C, H, W), ``w`` (F, C, k, k), ``b`` (F,), ``dy`` (N, F, Ho, Wo).
        pool: ``x`` (N, C, H, W), ``dy`` (N, C, Ho, Wo), ``indices`` (N, C, Ho, Wo)
        int64, the winners of ``x`` (for the backward pass).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if case.kind == "conv":
        fan_in = case.c * case.k * case.k
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

    def unavailable_reason(self):
        """None if usable, else why not (a string)."""
        return self._module_or_error[1]

    def thunk(self, op, case, a):
        """A zero-argument callable running ``op`` of ``case`` on the arrays ``a``."""
        m = self._module_or_error[0]
        s, p = case.stride, case.pad
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

    def unavailable_reason(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "PyTorch is not installed"
        return None

    def thunk(self, op, case, a):
        import torch

        t = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in a.items()}
        s, p = (case.stride, case.stride), (case.pad, case.pad)
        if op == "conv2d":
            return lambda: torch.nn.functional.conv2d(t["x"], t["w"], t["b"], s, p)
        if op in CONV_OPS:
            mask = {
                "conv2d_backward_input": (True, False, False),
                "conv2d_backward_weight": (False, True, False),
                "conv2d_backward": (True, True, True),
            }[op]
            bias_sizes = [case.f] if mask[2] else None
            conv_bwd = torch.ops.aten.convolution_backward
            return lambda: conv_bwd(t["dy"], t["x"], t["w"], bias_sizes, s, p, (1, 1), False, (0, 0), 1, mask)
        k = (case.k, case.k)
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
def _oracle(op, case):
    """The reference outputs of ``op`` on ``case``'s inputs, in float64 (cached per process)."""
    if op == "conv2d_backward":
        # Composed from the cached parts: the full backward is exactly these three.
        (dx,) = _oracle("conv2d_backward_input", case)
        (dw,) = _oracle("conv2d_backward_weight", case)
        db = make_inputs(case, np.float64)["dy"].sum(axis=(0, 2, 3))
        return dx, dw, db
    naive = IMPLEMENTATIONS["naive"]
    reason = naive.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the correctness oracle is the naive reference, but {reason}")
    return naive.to_numpy(naive.thunk(op, case, make_inputs(case, np.float64))())


def check(impl, op, case, dtype, batch=CHECK_BATCH):
    """Assert that ``impl`` computes ``op`` of ``case`` correctly, on ``batch`` images.

    Raises
    ------
    AssertionError
        Naming the implementation, op, case, dtype, output and the error found.
    """
    small = case.with_batch(min(batch, case.n))
    got = impl.to_numpy(impl.thunk(op, small, make_inputs(small, dtype))())
    want = _oracle(op, small)
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
