"""Shared fixtures for the fastconv test suite.

Fixtures
--------
rng
    A seeded ``numpy.random.Generator``; every test gets a fresh one with the same seed.
tol
    ``tol(dtype, n_terms=1)`` -> ``{"rtol": ..., "atol": ...}`` for ``np.testing.assert_allclose``,
    for comparing a result computed in ``dtype`` against an exact (float64) reference.
    ``n_terms`` is the length of the reductions behind each element (e.g. ``C*KH*KW`` for a
    conv output); the absolute tolerance grows with its square root, as rounding error does.

Hypothesis runs under the ``"ci"`` profile (no deadline, 40 examples, no example database
written to disk) unless ``HYPOTHESIS_PROFILE`` names another registered profile
(``"thorough"``: 500 examples; ``"fuzz"``: 2,000, for ``tests/test_fuzz.py``).
"""

import os

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; tests that need it importorskip it
    settings = None

if settings is not None:
    # The default profile is derandomized: the suite (and CI) draws the same examples every run, so a
    # red run is a change's fault, reproducible, and not a new corner found by chance. The longer
    # profiles draw fresh examples each run: that is where the fuzzing finds new corners.
    settings.register_profile(
        "ci",
        deadline=None,
        max_examples=40,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
        derandomize=True,
    )
    settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500, derandomize=False)
    # tests/test_fuzz.py at length: HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_fuzz.py
    settings.register_profile("fuzz", parent=settings.get_profile("ci"), max_examples=2000, derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SEED = 20240607

_BASE_TOL = {
    np.dtype(np.float32): 1e-4,
    np.dtype(np.float64): 1e-10,
}


def tolerance(dtype, n_terms=1):
    """Return ``dict(rtol=..., atol=...)`` for comparing a ``dtype`` result to an exact reference.

    Parameters
    ----------
    dtype : dtype-like
        float32 or float64.
    n_terms : int
        Number of terms summed into each compared element.
    """
    base = _BASE_TOL[np.dtype(dtype)]
    return {"rtol": base, "atol": base * max(1.0, np.sqrt(n_terms) / 4)}


@pytest.fixture
def rng():
    """A seeded random generator, identical for every test."""
    return np.random.default_rng(SEED)


@pytest.fixture
def tol():
    """The :func:`tolerance` function: ``tol(dtype, n_terms=1) -> dict(rtol=, atol=)``."""
    return tolerance


def numerical_gradient(f, a, eps=1e-6):
    """Central finite-difference gradient of the scalar function ``f`` at the float64 array ``a``.

    ``a`` is perturbed in place one element at a time and restored afterwards.

    Returns
    -------
    ndarray, shape a.shape
        ``(f(a + eps e_k) - f(a - eps e_k)) / (2 eps)`` for every element ``k``.
    """
    assert a.dtype == np.float64, "finite differences need float64"
    grad = np.empty_like(a)
    flat = a.reshape(-1)  # a view: a must be contiguous
    assert np.shares_memory(flat, a)
    for k in range(flat.size):
        original = flat[k]
        flat[k] = original + eps
        f_plus = f()
        flat[k] = original - eps
        f_minus = f()
        flat[k] = original
        grad.reshape(-1)[k] = (f_plus - f_minus) / (2 * eps)
    return grad


@pytest.fixture
def numgrad():
    """The :func:`numerical_gradient` function: ``numgrad(f, a, eps=1e-6)``.

    ``f`` takes no arguments and reads ``a`` (which is perturbed in place).
    """
    return numerical_gradient


@pytest.fixture
def one_thread():
    """Run the test with fastconv on one thread, restoring the previous count afterwards.

    For tests that make hundreds of tiny calls (finite differences): on a loaded machine
    each parallel region on tiny data can wait milliseconds for a second core.
    """
    import fastconv.functional as fc

    previous = fc.get_num_threads()
    fc.set_num_threads(1)
    try:
        yield
    finally:
        fc.set_num_threads(previous)
