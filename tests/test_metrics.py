"""Tests for fastconv.metrics: confusion matrix, per-class recall and their text form."""

import doctest

import numpy as np
import pytest

from fastconv import metrics
from fastconv.metrics import confusion_matrix, format_confusion_matrix, per_class_recall


def test_confusion_matrix_matches_counting_loop():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), np.int64)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, num_classes=10), expected)
    text = format_confusion_matrix(expected)
    assert len(text.splitlines()) == 11 and "recall" in text


def test_number_of_classes_is_inferred_unless_given():
    assert confusion_matrix([0, 2], [1, 1]).shape == (3, 3)
    assert confusion_matrix([0, 2], [1, 1], num_classes=5).shape == (5, 5)
    assert confusion_matrix([], []).shape == (0, 0)


@pytest.mark.parametrize("y_true, y_pred, num_classes", [([1, 2], [1], 10), ([0, 10], [0, 1], 10),
                                                         ([-1], [0], 10), ([[0]], [[0]], None), ([0], [0], 0)],
                         ids=["length", "too large", "negative", "2-d", "no classes"])
def test_confusion_matrix_errors(y_true, y_pred, num_classes):
    with pytest.raises(ValueError, match="confusion_matrix"):
        confusion_matrix(y_true, y_pred, num_classes)


def test_recall_and_its_text_with_an_empty_class():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    np.testing.assert_array_equal(per_class_recall(matrix), [0.75, np.nan, 0.5])
    lines = format_confusion_matrix(matrix).splitlines()
    assert lines[0].split() == ["true\\pred", "0", "1", "2", "recall"]
    assert lines[1].split() == ["0", "3", "1", "0", "75.00%"]
    assert lines[2].split() == ["1", "0", "0", "0", "-"]


def test_docstring_examples_run():
    assert doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
