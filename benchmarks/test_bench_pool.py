"""Max-pool benchmarks: forward (with winner indices) and backward.

Same table-driven scheme as ``test_bench_conv.py``: each implementation is checked
against the naive reference (values and indices exactly) before it is timed.
"""

import pytest

from benchmarks import cases

ROWS = cases.table(case_names=cases.POOL_CASES)


@pytest.mark.parametrize("impl, op, case, dtype", [pytest.param(*r, id=cases.row_id(*r)) for r in ROWS])
def test_pool(bench_op, impl, op, case, dtype):
    bench_op(impl, op, case, dtype)
