"""Classification metrics on predicted and true labels: confusion matrix, per-class recall.

They take integer class labels, as :func:`fastconv.training.evaluate` returns its
``predictions``, and know nothing of the model or data set::

    result = training.evaluate(model, x_test, y_test)
    matrix = confusion_matrix(y_test, result.predictions, num_classes=10)
    print(format_confusion_matrix(matrix))
"""

import numbers

import numpy as np

__all__ = ["confusion_matrix", "format_confusion_matrix", "per_class_recall"]


def confusion_matrix(y_true, y_pred, num_classes=None):
    """Count how often each true class was predicted as each class.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (N,)
        Values in ``[0, num_classes)``.
    num_classes : int, optional
        Number of classes K. Default: one more than the largest label in ``y_true`` or
        ``y_pred`` (pass it when a class may be missing from both).

    Returns
    -------
    numpy.ndarray of int64, shape (K, K)
        ``m[i, j]`` = number of samples of class ``i`` predicted as ``j``; the diagonal
        holds the correct predictions.

    Raises
    ------
    ValueError
        If the label arrays are not 1-d of the same length, or hold a value outside
        ``[0, num_classes)``.

    Examples
    --------
    >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2])
    array([[1, 0, 0],
           [0, 1, 1],
           [0, 0, 1]])
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"confusion_matrix: y_true and y_pred must be 1-d of equal length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    if num_classes is None:
        num_classes = max(int(max(y_true.max(), y_pred.max())) + 1, 0) if y_true.size else 0
    elif isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be a positive int; got {num_classes!r}")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has values outside [0, {num_classes})")
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(matrix):
    """Fraction of each true class predicted correctly: the diagonal over the row sums.

    Parameters
    ----------
    matrix : array_like of int, shape (K, K)
        A confusion matrix (rows: true classes), as from :func:`confusion_matrix`.

    Returns
    -------
    numpy.ndarray of float64, shape (K,)
        ``nan`` for a class with no samples.

    Examples
    --------
    >>> from fastconv.metrics import confusion_matrix, per_class_recall
    >>> per_class_recall(confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2]))
    array([1. , 0.5, 1. ])
    """
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1)
    return np.where(totals > 0, np.diagonal(matrix) / np.maximum(totals, 1), np.nan)


def format_confusion_matrix(matrix):
    """Render a confusion matrix as text: rows are true classes, columns predictions, plus recall.

    Parameters
    ----------
    matrix : numpy.ndarray of int, shape (K, K)

    Returns
    -------
    str
        A header line and one line per true class, ending with its recall in percent
        (``-`` for a class with no samples).

    Examples
    --------
    >>> from fastconv.metrics import confusion_matrix, format_confusion_matrix
    >>> print(format_confusion_matrix(confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2])))
    true\\pred    0    1    2   recall
            0    1    0    0  100.00%
            1    0    1    1   50.00%
            2    0    0    1  100.00%
    """
    matrix = np.asarray(matrix)
    k = len(matrix)
    width = max(5, len(str(int(matrix.max()))) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k)) + "   recall"]
    for i, recall in enumerate(per_class_recall(matrix)):
        text = "      -" if np.isnan(recall) else f"{100 * recall:7.2f}%"
        lines.append(f"{i:>9}" + "".join(f"{v:>{width}}" for v in matrix[i]) + " " + text)
    return "\n".join(lines)
