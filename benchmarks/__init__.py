"""fastconv's benchmark suite (pytest-benchmark) and the tables behind it.

:mod:`benchmarks.cases` holds the case table and the implementation table that
drive both the correctness checks and the timings, in pytest
(``benchmarks/test_bench_*.py``) and in ``scripts/bench_report.py`` alike.
:mod:`benchmarks.im2col` is the NumPy im2col+BLAS baseline.
"""
