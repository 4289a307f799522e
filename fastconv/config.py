"""One place for the flags every compiled kernel is built with.

Every ``@njit`` in :mod:`fastconv.kernels` takes its options from here, so a change
(for example turning the disk cache off while debugging) is made once.

``FASTMATH`` is a *set* of LLVM fast-math flags rather than ``fastmath=True``:
``reassoc`` and ``contract`` let LLVM vectorise reductions and fuse multiply-adds,
while leaving out ``nnan`` and ``ninf`` keeps NaN and ``-inf`` handling exact, which
max-pool (``-inf`` padding, NaN propagation) relies on.

Environment variables (read once, at import):

``FASTCONV_NO_CACHE=1``
    Do not cache compiled kernels on disk.
``FASTCONV_PREFER_512=0``
    Keep LLVM's default preference for 256-bit vectors on AVX-512 machines (see
    :func:`_prefer_512_bit_vectors`).
"""

import os

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Cache compiled machine code on disk (next to the sources, or in
#: ``NUMBA_CACHE_DIR``) so later processes skip compilation.
CACHE = os.environ.get("FASTCONV_NO_CACHE", "") in ("", "0")

#: Options for kernels whose outer loop is a ``prange``.
PARALLEL_JIT = dict(parallel=True, fastmath=FASTMATH, cache=CACHE, nogil=True, error_model="numpy")

#: Options for small helpers inlined into the parallel kernels.
SERIAL_JIT = dict(parallel=False, fastmath=FASTMATH, cache=CACHE, nogil=True, error_model="numpy")


def _prefer_512_bit_vectors():
    """Let LLVM use 512-bit vectors on AVX-512 machines.

    LLVM's tuning for recent Intel cores prefers 256-bit vectors even where AVX-512 is
    available (to avoid the frequency drop of early AVX-512 parts). fastconv's kernels
    are bound by vector FMA throughput, and on the development machine 512-bit vectors
    made the register-tiled kernels about 1.5x faster (see ``benchmarks/NOTES.md``).

    This sets Numba's target CPU features for the whole process, so it is done only when
    nothing else has chosen them: not when ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` is
    set, not when ``FASTCONV_PREFER_512=0``, and only on a CPU with AVX-512F. It can take
    effect only while Numba has not built its CPU target yet in this process (it does
    when the first ``@njit`` function is created, by any library); after that it is not
    applied and the kernels are compiled with Numba's defaults.
    Returns True when the setting was applied.
    """
    if os.environ.get("FASTCONV_PREFER_512", "1") == "0":
        return False
    from numba.core import config as numba_config

    if numba_config.CPU_NAME or numba_config.CPU_FEATURES:
        return False
    try:
        from numba.core.registry import cpu_target

        if "_toplevel_target_context" in vars(cpu_target):  # the target machine exists already
            return False
    except Exception:  # pragma: no cover - Numba internals moved: try anyway
        pass
    try:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features()
        if not features.get("avx512f", False):
            return False
        numba_config.CPU_NAME = ll.get_host_cpu_name()
        numba_config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    except Exception:  # pragma: no cover - never fail an import over a tuning hint
        return False
    return True


PREFER_512 = _prefer_512_bit_vectors()


def _vector_bytes():
    """Bytes of the vector registers the vector kernels use: 64 (AVX-512F), 32 (AVX2 with FMA), else 16.

    Follows ``NUMBA_CPU_FEATURES`` when it is set, else the host CPU. On CPUs without these
    (and on other architectures) the kernels are still correct: LLVM splits or emulates the
    vectors.
    """
    from numba.core import config as numba_config

    try:
        if numba_config.CPU_FEATURES:
            on = {f[1:] for f in numba_config.CPU_FEATURES.split(",") if f.startswith("+")}
        else:
            import llvmlite.binding as ll

            on = {k for k, v in ll.get_host_cpu_features().items() if v}
    except Exception:  # pragma: no cover - a tuning hint, never an import failure
        return 16
    if "avx512f" in on:
        return 64
    if "avx2" in on and "fma" in on:
        return 32
    return 16


#: The vector kernels' register width in bytes (see :func:`_vector_bytes`).
VECTOR_BYTES = _vector_bytes()
