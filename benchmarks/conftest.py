"""pytest-benchmark plumbing shared by ``benchmarks/test_bench_*.py``.

Two modes, chosen by pytest-benchmark's own switch:

* **smoke** (the default: pyproject's addopts has ``--benchmark-disable``): every
  benchmark body runs once, cheaply, so CI proves the suite works. Cases run at
  batch :data:`~benchmarks.cases.SMOKE_BATCH`; the correctness check on 1 image; the
  naive implementation only on :data:`~benchmarks.cases.SMOKE_NAIVE_CASES`; the
  compile benchmark only for ``conv2d``.
* **benchmark** (``--benchmark-enable`` or ``--benchmark-only``): full batch sizes,
  one untimed warm-up call (compilation excluded), then pytest-benchmark's repeated
  timings. Benchmarks are grouped per op, case and dtype.

Every implementation passes :func:`benchmarks.cases.check` before it is timed.
Threads are pinned for the session (fastconv, torch and, with threadpoolctl,
NumPy's BLAS) to ``--bench-threads`` (default: the cores available).
"""

import pytest

from benchmarks import cases


def pytest_addoption(parser):
    parser.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="threads for fastconv, torch and (with threadpoolctl) BLAS in the benchmarks (default: all cores)",
    )


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request):
    """Pin every library's thread count for the benchmark session; restored afterwards."""
    n = request.config.getoption("--bench-threads") or cases.default_threads()
    with cases.pinned_threads(n):
        yield n


@pytest.fixture
def smoke(benchmark):
    """True when pytest-benchmark is disabled: run each benchmark body once, cheaply."""
    return benchmark.disabled


def _skip_if_unavailable(impl, case=None):
    reason = impl.unavailable_reason(case)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def bench_op(benchmark, smoke):
    """Check, then benchmark, one (implementation, op, case, dtype) of the tables.

    Returns a function ``run(impl_name, op, case_name, dtype)``.
    """

    def run(impl_name, op, case_name, dtype):
        impl = cases.IMPLEMENTATIONS[impl_name]
        case = cases.CASES[case_name]
        _skip_if_unavailable(impl, case)
        if smoke and impl.name == "naive" and case.name not in cases.SMOKE_NAIVE_CASES:
            pytest.skip(f"smoke mode: naive NumPy runs only on {', '.join(cases.SMOKE_NAIVE_CASES)}")

        cases.check(impl, op, case, dtype, batch=1 if smoke else cases.CHECK_BATCH)

        timed = case
        if impl.timed_batch is not None:
            timed = case.with_batch(min(impl.timed_batch, case.n))
        elif smoke:
            timed = case.with_batch(min(cases.SMOKE_BATCH, case.n))
        thunk = impl.thunk(op, timed, cases.make_inputs(timed, dtype))

        benchmark.group = f"{op} {case.name} {dtype}"
        benchmark.extra_info.update(
            case=case.describe(),
            timed_batch=timed.n,
            # Multiply the time by this to get the full-batch time (naive NumPy is timed on a slice).
            scale_to_full_batch=case.n / timed.n,
            gflop_full_batch=(case.flop(op) or 0) / 1e9,
        )
        if smoke:
            benchmark(thunk)
        elif impl.name == "naive":
            thunk()  # warm-up (nothing to compile, but caches and page faults)
            benchmark.pedantic(thunk, rounds=3, iterations=1)
        else:
            thunk()  # warm-up: compilation and first-touch allocations are not timed
            benchmark(thunk)

    return run
