"""One place for the flags every compiled kernel is built with.

Every ``@njit`` in :mod:`fastconv.kernels` takes its options from here, so a change
(for example turning the disk cache off while debugging) is made once.

``FASTMATH`` is a *set* of LLVM fast-math flags rather than ``fastmath=True``:
``reassoc`` and ``contract`` let LLVM vectorise reductions and fuse multiply-adds,
while leaving out ``nnan`` and ``ninf`` keeps NaN and ``-inf`` handling exact, which
max-pool (``-inf`` padding, NaN propagation) relies on.
"""

import os

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Cache compiled machine code on disk (next to the sources, or in
#: ``NUMBA_CACHE_DIR``) so later processes skip compilation.
#: Set ``FASTCONV_NO_CACHE=1`` to turn it off.
CACHE = os.environ.get("FASTCONV_NO_CACHE", "") in ("", "0")

#: Options for kernels whose outer loop is a ``prange``.
PARALLEL_JIT = dict(parallel=True, fastmath=FASTMATH, cache=CACHE, nogil=True, error_model="numpy")

#: Options for small helpers inlined into the parallel kernels.
SERIAL_JIT = dict(parallel=False, fastmath=FASTMATH, cache=CACHE, nogil=True, error_model="numpy")
