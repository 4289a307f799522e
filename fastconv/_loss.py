"""The losses' checks and arithmetic, shared by :mod:`fastconv.functional` and :mod:`fastconv.nn`.

Losses are small next to the layers they follow, so they are plain NumPy, computed in
float64 whatever the input's dtype: ``reduction='none'`` returns an array in the input's
dtype, ``'mean'`` and ``'sum'`` a Python float. Each ``*_parts`` function checks its
arguments (messages name the public ``owner``, the argument and the shapes) and returns
``(loss, grad)``, where ``grad(dout)`` is the gradient with respect to ``input`` for the
gradient ``dout`` of the final objective with respect to the loss (a real scalar for
``'mean'``/``'sum'``; for ``'none'`` a scalar or an array of the loss's shape).
"""

import numbers
import operator
import warnings

import numpy as np

from . import _validation as V

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, owner):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    return reduction


def legacy_reduction(size_average, reduce, reduction, owner):
    """PyTorch's deprecated ``size_average``/``reduce`` arguments mapped to ``reduction`` (with its warning)."""
    if size_average is None and reduce is None:
        return check_reduction(reduction, owner)
    warnings.warn(f"{owner}: size_average and reduce are deprecated (as in PyTorch); use reduction",
                  UserWarning, stacklevel=3)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")


def _index(value, name, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int; got {value!r} of type {type(value).__name__}")
    return operator.index(value)


def _check_float(a, name, owner, like=None):
    V.check_any_float_array(a, name, owner)
    if like is not None and a.dtype != like.dtype:
        raise TypeError(f"{owner}: {name} must have the dtype of input, {like.dtype}; got {a.dtype}")


def _check_broadcast(a, name, owner, input):
    """``a`` (None or a float array of input's dtype broadcastable to input's shape) as float64."""
    if a is None:
        return None
    _check_float(a, name, owner, input)
    try:
        shape = np.broadcast_shapes(a.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise ValueError(f"{owner}: {name} of shape {a.shape} does not broadcast to input.shape={input.shape}")
    return a.astype(np.float64)


def _check_pair(owner, input, target):
    _check_float(input, "input", owner)
    _check_float(target, "target", owner, input)
    if target.shape != input.shape:
        raise ValueError(f"{owner}: target must have input's shape {input.shape}; got {target.shape}")
    return input.astype(np.float64), target.astype(np.float64)


def dout_coefficients(dout, reduction, loss_shape, owner, denominator):
    """``dL/dloss_i`` as a float64 array broadcastable to ``loss_shape``; checks ``dout``.

    An array ``dout`` must be float32, float64 or integer (the dtypes fastconv computes in, and
    exact integers); float16, complex, bool and object arrays are a TypeError for every loss.
    """
    if isinstance(dout, np.ndarray):
        if dout.dtype.kind not in "iu" and dout.dtype not in (np.float32, np.float64):
            raise TypeError(f"{owner}: dout must be a real scalar or a float32, float64 or integer array; "
                            f"got dtype {dout.dtype} (shape {dout.shape})")
        if dout.ndim == 0:
            dout = dout.item()
    if reduction == "none" and isinstance(dout, np.ndarray):
        if dout.shape != tuple(loss_shape):
            raise ValueError(f"{owner}: dout must be a real scalar or an array of the loss's shape "
                             f"{tuple(loss_shape)} (reduction='none'); got dtype {dout.dtype}, shape {dout.shape}")
        return dout.astype(np.float64)
    if isinstance(dout, (bool, np.bool_)) or not isinstance(dout, numbers.Real):
        what = "a real scalar" + (" or an array of the loss's shape" if reduction == "none" else "")
        raise TypeError(f"{owner}: dout must be {what}; got {dout!r}")
    c = np.float64(dout)
    if reduction != "mean":
        return c
    with np.errstate(divide="ignore", invalid="ignore"):  # no sample counted: NaN, as PyTorch's 0/0
        return c / np.float64(denominator)


def reduce(loss, reduction, dtype, denominator=None):
    """``loss`` (float64) reduced: an array of ``dtype`` for 'none', else a Python float (the mean over
    ``denominator``, default the element count: NaN for none, as PyTorch's 0/0)."""
    if reduction == "none":
        return loss.astype(dtype)
    total = float(loss.sum())
    if reduction == "sum":
        return total
    den = float(loss.size if denominator is None else denominator)
    return total / den if den else float("nan")


def _finish(grad, dtype):
    return np.ascontiguousarray(grad).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------
# Regression losses
# ---------------------------------------------------------------------------------------


def mse_parts(owner, input, target, reduction):
    x, t = _check_pair(owner, input, target)
    d = x - t
    den = d.size

    def grad(dout):
        return _finish(2.0 * d * dout_coefficients(dout, reduction, d.shape, owner, den), input.dtype)

    return reduce(d * d, reduction, input.dtype), grad


def l1_parts(owner, input, target, reduction):
    x, t = _check_pair(owner, input, target)
    d = x - t
    den = d.size

    def grad(dout):
        sign = (d > 0).astype(np.float64) - (d < 0)  # 0 at 0 and at NaN, as PyTorch
        return _finish(sign * dout_coefficients(dout, reduction, d.shape, owner, den), input.dtype)

    return reduce(np.abs(d), reduction, input.dtype), grad


def bce_with_logits_parts(owner, input, target, weight, reduction, pos_weight):
    x, t = _check_pair(owner, input, target)
    w = _check_broadcast(weight, "weight", owner, input)
    pw = _check_broadcast(pos_weight, "pos_weight", owner, input)
    e = np.exp(-np.abs(x))  # never overflows
    # loss = (1 - t) x + lw * softplus(-x), lw = 1 + (pos_weight - 1) t; softplus(-x) = log1p(e) + max(-x, 0).
    lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    loss = (1.0 - t) * x + lw * (np.log1p(e) + np.maximum(-x, 0.0))
    if w is not None:
        loss = loss * w
    den = x.size

    def grad(dout):
        sig_neg = np.where(x >= 0, e, 1.0) / (1.0 + e)  # sigmoid(-x)
        g = (1.0 - t) - lw * sig_neg
        if pw is not None:  # PyTorch's form sigmoid(x) lw - pos_weight t where pos_weight is not finite (inf - inf)
            with np.errstate(invalid="ignore"):
                g = np.where(np.isfinite(pw), g, np.where(x >= 0, 1.0, e) / (1.0 + e) * lw - pw * t)
        if w is not None:
            g = g * w
        return _finish(g * dout_coefficients(dout, reduction, x.shape, owner, den), input.dtype)

    return reduce(loss, reduction, input.dtype), grad


# ---------------------------------------------------------------------------------------
# Classification losses: (N, C), (N, C, d1, ...) or (C,) against class indices
# ---------------------------------------------------------------------------------------


def _class_rows(owner, input, what):
    """``input`` as float64 rows ``(M, C)`` with the class axis last, and the per-sample shape."""
    _check_float(input, "input", owner)
    if input.ndim == 0:
        raise ValueError(f"{owner}: input must be {what} of shape (C,), (N, C) or (N, C, d1, ...); "
                         f"got shape {input.shape}")
    if input.shape[min(1, input.ndim - 1)] == 0 or (input.ndim > 1 and input.shape[0] == 0):
        raise ValueError(f"{owner}: input must have at least one sample and one class; got shape {input.shape}")
    if input.ndim == 1:
        return input.astype(np.float64)[None], ()
    C = input.shape[1]
    rows = np.moveaxis(input, 1, -1).reshape(-1, C).astype(np.float64)
    return rows, (input.shape[0],) + input.shape[2:]


def _from_rows(g, input):
    """The inverse of :func:`_class_rows` for a gradient ``g`` of shape ``(M, C)``."""
    if input.ndim == 1:
        return _finish(g[0], input.dtype)
    C = input.shape[1]
    return _finish(np.moveaxis(g.reshape((input.shape[0],) + input.shape[2:] + (C,)), -1, 1), input.dtype)


def _class_targets(owner, target, sample_shape, C, ignore_index, input_shape):
    """``(t, valid)``: the targets flattened to ``(M,)`` ints (ignored ones set to 0) and their mask."""
    if not isinstance(target, np.ndarray):
        raise TypeError(f"{owner}: target must be a numpy.ndarray of integer class labels of shape {sample_shape}; "
                        f"got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{owner}: target must hold integer class labels of shape {sample_shape} (or, for "
                        f"cross-entropy, class probabilities of input's shape {input_shape}); got dtype "
                        f"{target.dtype}, shape {target.shape}")
    if target.shape != sample_shape:
        raise ValueError(f"{owner}: target must have shape {sample_shape} to match input.shape={input_shape}; "
                         f"got {target.shape}")
    flat = target.reshape(-1)
    valid = flat != ignore_index
    picked = flat[valid]
    if picked.size:
        lo, hi = int(picked.min()), int(picked.max())
        if lo < 0 or hi >= C:
            raise ValueError(
                f"{owner}: target labels must lie in [0, {C}) for {C} classes (input.shape={input_shape}, "
                f"target.shape={target.shape}) or equal ignore_index={ignore_index}; got values in [{lo}, {hi}]")
    return np.where(valid, flat, 0).astype(np.intp), valid


def _class_weight(owner, weight, input, C):
    if weight is None:
        return None
    _check_float(weight, "weight", owner, input)
    if weight.shape != (C,):
        raise ValueError(f"{owner}: weight must have shape ({C},), one per class of input.shape={input.shape}; "
                         f"got {weight.shape}")
    return weight.astype(np.float64)


def _log_softmax_rows(z):
    """``(log_softmax(z), softmax(z))`` of float64 rows, max-shifted (PyTorch's +-inf and NaN rules)."""
    with np.errstate(invalid="ignore"):
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return logp, np.exp(logp)


def class_loss_parts(owner, input, target, weight, ignore_index, reduction, label_smoothing, log_softmax):
    """Cross-entropy (``log_softmax=True``, logits) or NLL (log-probabilities) against class indices or,
    for cross-entropy, class probabilities (a float ``target`` of input's shape)."""
    ignore_index = _index(ignore_index, "ignore_index", owner)
    if not -(2**63) <= ignore_index < 2**63:  # PyTorch's is an int64
        raise ValueError(f"{owner}: ignore_index must fit in int64; got {ignore_index}")
    eps = float(label_smoothing)
    rows, sample_shape = _class_rows(owner, input, "logits" if log_softmax else "log-probabilities")
    M, C = rows.shape
    w = _class_weight(owner, weight, input, C)
    logp, p = _log_softmax_rows(rows) if log_softmax else (rows, None)
    if log_softmax and isinstance(target, np.ndarray) and target.dtype.kind == "f" and target.shape == input.shape:
        return _probability_parts(owner, input, target, w, reduction, eps, logp, p, sample_shape)
    t, valid = _class_targets(owner, target, sample_shape, C, ignore_index, input.shape)
    idx = np.arange(M)
    wt = np.where(valid, 1.0 if w is None else w[t], 0.0)
    with np.errstate(invalid="ignore"):
        loss = np.where(valid, -wt * logp[idx, t], 0.0)
        if eps:
            smooth = -(logp.sum(axis=1) if w is None else (logp * w).sum(axis=1))
            loss = (1.0 - eps) * loss + (eps / C) * np.where(valid, smooth, 0.0)
    den = wt.sum()

    def grad(dout):
        # Ignored samples get exactly no gradient (PyTorch never writes theirs), even when none is counted.
        c = np.where(valid, dout_coefficients(dout, reduction, sample_shape, owner, den).reshape(-1), 0.0)
        if not log_softmax:  # NLL: only the targets' entries (PyTorch scatters there: the rest is 0, not 0 * NaN)
            g = np.zeros((M, C))
            g[idx, t] = -wt * c
            return _from_rows(g, input)
        if log_softmax:
            total = (1.0 - eps) * wt
            if eps:  # selected, not multiplied by the mask: an ignored row stays 0 with a non-finite weight
                total = total + np.where(valid, (eps / C) * (C if w is None else w.sum()), 0.0)
            g = p * total[:, None]
            if eps:
                g -= np.where(valid[:, None], (eps / C) * (1.0 if w is None else w), 0.0)
        else:
            g = np.zeros((M, C))
        g[idx, t] -= (1.0 - eps) * wt
        return _from_rows(g * c[:, None], input)

    return reduce(loss.reshape(sample_shape), reduction, input.dtype, den), grad


def _probability_parts(owner, input, target, w, reduction, eps, logp, p, sample_shape):
    """Cross-entropy against class probabilities: ``-sum_c w_c q_c log p_c``, ``q`` the smoothed target."""
    _check_float(target, "target", owner, input)
    if target.shape != input.shape:
        raise ValueError(f"{owner}: a target of class probabilities must have input's shape {input.shape}; "
                         f"got {target.shape}")
    M, C = logp.shape
    q = _class_rows(owner, target, "probabilities")[0] * (1.0 - eps) + eps / C
    wq = q if w is None else q * w
    loss = -(wq * logp).sum(axis=1)

    def grad(dout):
        c = dout_coefficients(dout, reduction, sample_shape, owner, M).reshape(-1) * np.ones(M)
        g = p * wq.sum(axis=1, keepdims=True) - wq
        return _from_rows(g * c[:, None], input)

    return reduce(loss.reshape(sample_shape), reduction, input.dtype), grad


def check_label_smoothing(value, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: label_smoothing must be a float in [0, 1]; got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: label_smoothing must be between 0 and 1; got {value}")
    return float(value)
