"""Compiled kernels (``@njit`` only). See :mod:`fastconv.functional` for the public API."""
