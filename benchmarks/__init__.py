"""fastconv's benchmark suite (pytest-benchmark) and the tables behind it.

:mod:`benchmarks.cases` holds the case table and the implementation table. The
case table drives the tests: ``tests/test_conv.py`` and ``tests/test_pool.py`` check
every row against the reference and PyTorch. It drives the benchmarks too: its rows
with a ``bench_batch`` are checked, then timed, by pytest (``benchmarks/test_bench_*.py``)
and ``scripts/bench_report.py`` alike.
:mod:`benchmarks.im2col` is the NumPy im2col+BLAS baseline.
"""
