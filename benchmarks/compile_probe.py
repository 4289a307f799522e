"""First-call (compile) time of one fastconv operation, measured in a fresh process.

Run as a module in a child process; it prints one JSON line::

    python -m benchmarks.compile_probe --op conv2d --dtype float32

``NUMBA_CACHE_DIR`` decides where Numba's on-disk cache lives: point it at an empty
directory for a cold compile, and run a second process on the same directory for a
warm-cache start. :func:`run_probe` does that from the parent.

Reported (seconds): ``import_s`` (``import fastconv.functional``, numba included),
``first_call_s`` (the first call: compilation or cache load, plus the work),
``second_call_s`` (the same call again: the work alone), ``first_call_cpu_s`` (the first
call's CPU time: compilation is single-threaded, so this moves less with the machine's load
than the wall time) and ``process_s`` (the whole child process, interpreter start-up
included, measured by the parent). ``--op train_step`` times one training step of the
reference CNN (batch 64, :class:`benchmarks.training.FastconvStep`): every kernel a
training run needs::

    NUMBA_CACHE_DIR=$(mktemp -d) python -m benchmarks.compile_probe --op train_step
"""

import argparse
import json
import os
import subprocess
import sys
import time

#: Small inputs: the first call's time is then all compilation (or cache loading).
PROBE_CONV = dict(name="probe", n=2, c=3, h=10, w=10, f=4, k=3, stride=1, pad=1)
PROBE_POOL = dict(name="probe", n=2, c=3, h=10, w=10, k=2, stride=2, pad=0)


def _measure(op, dtype):
    t0 = time.perf_counter()
    import fastconv.functional  # noqa: F401  (numba, the kernels' modules)

    t_import = time.perf_counter() - t0

    from benchmarks import cases

    if op == "train_step":
        from benchmarks.training import FastconvStep

        thunk = FastconvStep(64)
    else:
        case = cases.ConvCase(**PROBE_CONV) if op in cases.CONV_OPS else cases.PoolCase(**PROBE_POOL)
        thunk = cases.IMPLEMENTATIONS["fastconv"].thunk(op, case, cases.make_inputs(case, dtype))
    t0, c0 = time.perf_counter(), time.process_time()
    thunk()
    t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    thunk()
    t_second = time.perf_counter() - t0
    return {"op": op, "dtype": dtype, "import_s": t_import, "first_call_s": t_first, "second_call_s": t_second,
            "first_call_cpu_s": c_first}


def run_probe(op, dtype, cache_dir, timeout=600):
    """Measure ``op``'s first call in a new Python process using ``cache_dir`` as Numba's cache.

    Parameters
    ----------
    op : str
        One of :data:`benchmarks.cases.OPS`, or ``"train_step"``.
    dtype : str
        ``"float32"`` or ``"float64"``.
    cache_dir : str or path
        ``NUMBA_CACHE_DIR`` for the child: empty for a cold start, reused for a warm one.

    Returns
    -------
    dict
        The child's measurements plus ``process_s``.
    """
    import fastconv

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The child imports the same fastconv as this process, and this benchmarks package.
    fastconv_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env = dict(os.environ)
    env.pop("FASTCONV_NO_CACHE", None)
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([here, fastconv_root] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "benchmarks.compile_probe", "--op", op, "--dtype", dtype]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=here, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"compile probe {op} {dtype} failed ({proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = elapsed
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", required=True)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.op, args.dtype)))


if __name__ == "__main__":
    main()
