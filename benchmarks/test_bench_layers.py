"""The goal rows of :mod:`benchmarks.layers` agree with PyTorch (on small inputs) before the report times them."""

import numpy as np
import pytest

from benchmarks import layers

torch = pytest.importorskip("torch")

ROWS = layers.rows()


@pytest.mark.torch
@pytest.mark.parametrize("row", ROWS, ids=[f"{r.name}-{'x'.join(map(str, r.shape))}" for r in ROWS])
def test_row_agrees_with_torch(row):
    layers.check(row, row.small)


def test_every_goal_of_the_issues_has_rows():
    names = " ".join(r.name for r in ROWS)
    for part in ("depthwise", "s2 forward", "grouped32", "dilated3x3d2", "same5x5", "conv1x1s2", "conv_transpose2d",
                 "BatchNorm2d forward", "BatchNorm2d backward", "BatchNorm2d eval", "avg_pool2d", "adaptive_avg_pool2d",
                 "global average pool", "ceil_mode"):
        assert part in names, part


@pytest.mark.torch
def test_check_rejects_a_wrong_result():
    row = layers.Row("wrong", 16, 1.0, (2, 3, 4, 4), (2, 3, 4, 4),
                     lambda shape, rng: (lambda: np.ones(shape, np.float32), lambda: torch.zeros(shape)))
    with pytest.raises(AssertionError, match="wrong, result 0: max difference 1"):
        layers.check(row)


def test_side_by_side_times_both_calls():
    calls = (lambda: sum(range(2000)), lambda: sum(range(20)))
    (slow, fast), median = layers.side_by_side(calls, seconds=0.04, rounds=2, pause=0.0)
    assert slow > fast > 0 and median > 1


@pytest.mark.torch
def test_measure_times_every_kind_of_row():
    """The report's own call (the BatchNorm backward row needs torch's autograd on), on small inputs."""
    kinds = [r for r in ROWS if r.name in ("depthwise 32x112x112 forward", "BatchNorm2d backward", "global average pool")]
    results = layers.measure(kinds[:3], seconds=0.02, shape=(2, 32, 6, 6))
    assert [r["name"] for r in results] == [r.name for r in kinds[:3]]
    assert all(r["fastconv_ms"] > 0 and r["torch_ms"] > 0 for r in results)
