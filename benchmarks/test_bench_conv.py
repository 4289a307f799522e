"""Convolution benchmarks: forward, input gradient, weight gradient, full backward.

Every implementation of :data:`benchmarks.cases.IMPLEMENTATIONS` on every benchmark
row of the conv table (:data:`benchmarks.cases.CONV_CASES`, the rows with a ``bench_batch``;
float32; float64 for :data:`benchmarks.cases.FLOAT64_CASES`), grouped per op, case and
dtype. Each is checked against the naive reference before it is timed. ``naive_1img``
rows time ONE image: multiply by the case's batch (``extra_info['scale_to_full_batch']``).
"""

import pytest

from benchmarks import cases

ROWS = cases.table(case_names=cases.CONV_CASES)


@pytest.mark.parametrize("impl, op, case, dtype", [pytest.param(*r, id=cases.row_id(*r)) for r in ROWS])
def test_conv(bench_op, impl, op, case, dtype):
    bench_op(impl, op, case, dtype)
