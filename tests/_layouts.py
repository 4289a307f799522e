"""Memory layouts the public API must accept: the same values, arranged differently in memory."""

import numpy as np

LAYOUTS = ["fortran", "sliced", "channels-last-view", "negative-strides", "readonly"]


def relayout(a, kind):
    """``a`` (C-contiguous) rearranged in memory as ``kind`` (one of :data:`LAYOUTS`), same values.

    The gaps of a ``"sliced"`` view hold NaN (-1 for integers), so a kernel that read
    outside the view would show it in its result.
    """
    reverse = (slice(None, None, -1),) * a.ndim
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "sliced":
        base = np.full(tuple(2 * n + 1 for n in a.shape), np.nan if a.dtype.kind == "f" else -1, dtype=a.dtype)
        view = base[(slice(1, None, 2),) * a.ndim]
        view[...] = a
        return view
    if kind == "channels-last-view":
        if a.ndim != 4:
            return a.copy()
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if kind == "negative-strides":
        return a[reverse].copy()[reverse]
    if kind == "readonly":
        out = a.copy()
        out.flags.writeable = False
        return out
    raise AssertionError(kind)
