"""How compiled kernels are launched: safe across Python threads and after ``fork``.

Numba runs ``prange`` loops on one of three threading layers, with different limits:

- ``omp`` (GNU OpenMP, the usual one on Linux): safe for calls from several Python
  threads at once, but a process that forks after using it cannot start a parallel
  region in the child -- Numba terminates the child (``fork() called from a process
  already using GNU OpenMP``). fastconv notices the fork and runs the child's calls
  through serial builds of the same kernels (compiled on first use in the child).
- ``workqueue`` (the fallback when neither TBB nor OpenMP is available): fork-safe but
  not safe for concurrent launches, so launches are serialised with a lock.
- ``tbb``: safe for both; nothing to do.

Small calls run on one thread (the plan decides which: :mod:`fastconv.plan`): waking
the pool costs more than the work, and on a busy machine a parallel region waits for
every thread to be scheduled. The kernels split their
work by the caller's thread count, not by the threads that actually run, so the result
does not depend on which path was taken.
"""

import os
import threading

import numba

from .config import SERIAL_JIT

_workqueue_lock = threading.Lock()
_serial_builds = {}
_serial_lock = threading.Lock()
_in_child_of_omp_parent = False


_layer = None


def _threading_layer():
    """Numba's threading layer, or None before the first parallel region (it never changes once chosen)."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no parallel region has run yet in this process
            return None
    return _layer


def _after_fork_in_child():
    global _in_child_of_omp_parent, _workqueue_lock, _serial_lock
    # Only the forking thread exists in the child: a lock another thread held at the
    # fork would stay held forever. Start the child with fresh locks.
    _workqueue_lock = threading.Lock()
    _serial_lock = threading.Lock()
    if _threading_layer() == "omp":
        _in_child_of_omp_parent = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _serial(kernel):
    """A serial (``parallel=False``) build of ``kernel``, compiled once per process."""
    with _serial_lock:
        build = _serial_builds.get(kernel)
        if build is None:
            # Not cached on disk: the serial build shares the parallel one's source and
            # name, and the two must never read each other's cache entries.
            options = dict(SERIAL_JIT, cache=False)
            build = numba.njit(**options)(kernel.py_func)
            _serial_builds[kernel] = build
        return build


def _thread_count_calls():
    """``(get, set)`` of the calling thread's Numba thread count.

    Numba's public ``get_num_threads``/``set_num_threads`` start the pool and check the value on
    every call (1.4 and 2.0 us here, against 0.2 and 0.5 for the functions behind them); a small
    launch calls each twice. The functions behind them once the pool runs, the public ones if this
    Numba has no such names.
    """
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        get, set_ = parallel._get_num_threads, parallel._set_num_threads
        if get() == numba.get_num_threads():
            return get, set_
    except Exception:  # another Numba: its private names differ
        pass
    return numba.get_num_threads, numba.set_num_threads


_get_threads = _set_threads = None


def launch(kernel, *args, serial=False):
    """Run a compiled parallel kernel the way this process can run it safely and fast.

    ``serial=True`` runs it on one thread (the plan asks for that on small launches:
    ``fastconv.plan.TUNING.small_work``); the thread count is restored afterwards.
    """
    if _in_child_of_omp_parent:
        return _serial(kernel)(*args)
    if serial:
        global _get_threads, _set_threads
        if _get_threads is None:
            _get_threads, _set_threads = _thread_count_calls()
        previous = _get_threads()
        if previous > 1:
            _set_threads(1)
            try:
                return _launch_parallel(kernel, args)
            finally:
                _set_threads(previous)
    return _launch_parallel(kernel, args)


def _launch_parallel(kernel, args):
    if _threading_layer() == "workqueue":
        with _workqueue_lock:
            return kernel(*args)
    return kernel(*args)
