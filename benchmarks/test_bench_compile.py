"""First-call (compile) time of each fastconv kernel, in a fresh process.

``cold``: a new process with ``NUMBA_CACHE_DIR`` pointed at an empty directory (full
compilation). ``warm``: a second new process on the same directory (cache load).
The benchmark time is the whole child process (interpreter start-up and imports
included); ``extra_info`` holds the in-process ``first_call_s`` and ``import_s``.
Smoke mode runs only ``conv2d``: each cold compile takes seconds.
"""

import pytest

from benchmarks import cases
from benchmarks.compile_probe import run_probe

SMOKE_OPS = ("conv2d",)


@pytest.fixture(scope="module")
def cold_runs():
    """op -> (cache directory, cold first-call seconds): filled by the cold test, reused by the warm one."""
    return {}


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("op", cases.OPS)
def test_first_call(benchmark, smoke, cold_runs, tmp_path_factory, op, cache):
    if smoke and op not in SMOKE_OPS:
        pytest.skip(f"smoke mode: compile benchmarks run only for {', '.join(SMOKE_OPS)}")
    dtype = "float32"
    results = []

    def cold_setup():
        return (op, dtype, tmp_path_factory.mktemp(f"numba_cache_{op}")), {}

    def warm_setup():
        if op not in cold_runs:  # the cold test did not run (e.g. -k warm): fill a cache now
            cache_dir = tmp_path_factory.mktemp(f"numba_cache_{op}")
            cold_runs[op] = (cache_dir, run_probe(op, dtype, cache_dir)["first_call_s"])
        return (op, dtype, cold_runs[op][0]), {}

    def probe(o, d, cache_dir):
        results.append((cache_dir, run_probe(o, d, cache_dir)))

    benchmark.group = f"first call ({cache} cache)"
    benchmark.pedantic(
        probe, setup=cold_setup if cache == "cold" else warm_setup, rounds=1 if smoke else 3, iterations=1
    )
    cache_dir, last = results[-1]
    benchmark.extra_info.update({k: last[k] for k in ("import_s", "first_call_s", "second_call_s")})
    assert last["first_call_s"] > 0 and last["second_call_s"] > 0
    if cache == "cold":
        cold_runs[op] = (cache_dir, min(r["first_call_s"] for _, r in results))
    else:
        # Loading from the cache must beat compiling (else the cache is not being used).
        cold_first = cold_runs[op][1]
        assert last["first_call_s"] < cold_first, (
            f"{op}: warm-cache first call {last['first_call_s']:.2f}s is not faster than the cold "
            f"compile {cold_first:.2f}s: is Numba's cache (fastconv.config.CACHE) in use?"
        )
