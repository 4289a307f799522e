#!/usr/bin/env python
"""Benchmark fastconv against PyTorch CPU, NumPy im2col+BLAS and naive NumPy; write BENCHMARKS.md.

One command, one process, side by side::

    python scripts/bench_report.py                  # everything, all cores -> BENCHMARKS.md + .png + .json
    python scripts/bench_report.py --quick          # a few minutes: fewer repeats, naive on 2 cases only
    python scripts/bench_report.py --cases mnist_conv2,k5 --ops conv2d,conv2d_backward --threads 1

What it does, in order:

1. Pins threads: ``fastconv.functional.set_num_threads(n)``, ``torch.set_num_threads(n)`` and,
   with threadpoolctl (or ``OPENBLAS_NUM_THREADS`` when unset and threadpoolctl is missing),
   NumPy's BLAS, with ``n = --threads`` (default: the cores available).
2. For every row of the table in :mod:`benchmarks.cases` (implementation x op x case x dtype):
   checks the implementation against the naive reference (float64 oracle), then times it:
   one untimed warm-up call (Numba compilation happens there), then repeated timings; the
   implementations of one (op, case, dtype) are timed in alternating blocks (two rounds,
   each block after a short pause so no library's idle threads are still spinning), so
   load changes on a shared machine hit all of them alike; the median is reported. The naive NumPy loops are
   timed on one image and scaled to the batch (marked in the tables).
3. The training step of the reference MNIST CNN (fastconv vs torch, batch 64 and 256).
4. First-call (compile) time of every fastconv op in fresh processes: cold (empty
   ``NUMBA_CACHE_DIR``) and warm (same directory, second process).
5. Writes the Markdown report, a JSON file with every number, and a PNG chart of the ratios
   (skipped with a message if matplotlib is missing).
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Environment variables that change NumPy/BLAS/Numba/torch speed: recorded, never changed
#: (except OPENBLAS_NUM_THREADS, set to --threads only when unset and threadpoolctl is missing).
RECORDED_ENV = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "NUMBA_CACHE_DIR",
    "FASTCONV_NO_CACHE",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, naive NumPy only on the smoke cases, compile time only for conv2d")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--ops", help="comma-separated ops (default: all)")
    p.add_argument("--impls", help="comma-separated implementations: fastconv,torch,im2col,naive (default: all)")
    p.add_argument("--float64", choices=("subset", "all", "none"), default="subset",
                   help="which cases also run in float64 (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all cores)")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per implementation (default 15, quick 5)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step benchmark")
    p.add_argument("--no-compile", action="store_true", help="skip the first-call (compile) benchmark")
    p.add_argument("--no-layers", action="store_true",
                   help="skip the goal rows of issues 15 and 16 (benchmarks/layers.py: depthwise, grouped, transposed, "
                        "BatchNorm, pooling)")
    p.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"),
                   help="Markdown report path (default: %(default)s); the chart and JSON go next to it")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 5 if args.quick else 15
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args, p


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _split(text):
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# ----------------------------------------------------------------------------- timing


def _calls_per_sample(seconds_per_call, target=0.02):
    """Repeat fast calls inside one sample so the timer's resolution does not matter."""
    return max(1, math.ceil(target / max(seconds_per_call, 1e-9)))


#: Pause before each block of one implementation. fastconv (Numba's OpenMP pool), torch
#: (its own OpenMP pool) and NumPy's OpenBLAS each leave worker threads spinning after a
#: call (OpenBLAS for up to about 0.1 s); timed straight after another library, a call
#: shares the cores with those spinning threads and can take several times longer.
SETTLE_S = 0.15


def time_round_robin(thunks, repeat, budget, rounds=2):
    """Median seconds per call of each thunk, timed in alternating blocks.

    Each round times every implementation in turn, as one block of samples that starts
    after a pause (:data:`SETTLE_S`) and one untimed call, so no implementation is timed
    while another library's threads are still spinning. Two rounds spread slow drifts of
    the machine's load over all implementations.

    Parameters
    ----------
    thunks : dict of str -> callable
        Already warmed up.
    repeat : int
        Maximum samples per thunk.
    budget : float
        Seconds per thunk to aim for; at least 3 samples are always taken.
    rounds : int
        Blocks per thunk.

    Returns
    -------
    dict of str -> dict
        ``median_s``, ``min_s``, ``samples`` (per-call seconds of every sample).
    """
    loops, n_samples, samples = {}, {}, {}
    for name, fn in thunks.items():
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        loops[name] = _calls_per_sample(one)
        n_samples[name] = max(3, min(repeat, math.ceil(budget / (loops[name] * max(one, 1e-9)))))
        samples[name] = []
    for r in range(rounds):
        for name, fn in thunks.items():
            todo = n_samples[name] // rounds + (1 if r < n_samples[name] % rounds else 0)
            if todo == 0:
                continue
            time.sleep(SETTLE_S)
            fn()
            k = loops[name]
            for _ in range(todo):
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                samples[name].append((time.perf_counter() - t0) / k)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "samples": s} for name, s in samples.items()}


# ------------------------------------------------------------------------- benchmarks


def run_ops(args, cases, log):
    """Check and time every selected row of the table; returns a list of result dicts."""
    rows = cases.table(_split(args.cases), _split(args.ops), _split(args.impls), args.float64)
    groups = {}
    for impl, op, case_name, dtype in rows:
        groups.setdefault((op, case_name, dtype), []).append(impl)
    results = []
    budget = 0.5 if args.quick else 2.0
    for (op, case_name, dtype), impl_names in groups.items():
        case = cases.CASES[case_name]
        thunks, meta = {}, {}
        for name in impl_names:
            impl = cases.IMPLEMENTATIONS[name]
            entry = {"op": op, "case": case_name, "dtype": dtype, "impl": name, "gflop": (case.flop(op) or 0) / 1e9}
            reason = impl.unavailable_reason(case)
            if reason is None and name == "naive" and args.quick and case_name not in cases.SMOKE_NAIVE_CASES:
                reason = "skipped in --quick mode"
            if reason is not None:
                entry["status"] = f"skipped: {reason}"
                results.append(entry)
                continue
            try:
                cases.check(impl, op, case, dtype)
            except AssertionError as exc:
                entry["status"] = f"FAILED CHECK: {exc}"
                results.append(entry)
                log(f"  !! {exc}")
                continue
            timed = case.with_batch(min(impl.timed_batch, case.n)) if impl.timed_batch else case
            thunk = impl.thunk(op, timed, cases.make_inputs(timed, dtype))
            if name != "naive":  # nothing to compile there, and each call takes seconds
                thunk()  # warm-up: compilation, caches, first-touch allocations
            entry.update(status="ok", timed_batch=timed.n, scale=case.n / timed.n)
            thunks[name], meta[name] = thunk, entry
        # The naive loops take seconds: time them alone, the others in alternating blocks.
        fast = {k: v for k, v in thunks.items() if k != "naive"}
        timings = time_round_robin(fast, args.repeat, budget) if fast else {}
        if "naive" in thunks:
            timings.update(time_round_robin({"naive": thunks["naive"]}, 3, 0))
        for name, entry in meta.items():
            t = timings[name]
            entry.update(time_s=t["median_s"] * entry["scale"], min_s=t["min_s"] * entry["scale"],
                         n_samples=len(t["samples"]))
            results.append(entry)
        summary = "  ".join(f"{e['impl']}={e['time_s'] * 1e3:.3g}ms" for e in meta.values())
        log(f"{op:24s} {case_name:12s} {dtype}  {summary}")
    return results


def run_training(args, log):
    from benchmarks import training

    results = []
    try:
        training.check_train_step()
        checked = "agrees with PyTorch's (loss and updated weights over 2 steps from the same start)"
    except ImportError:  # no torch: at least make sure fastconv's step learns
        try:
            training.check_loss_decreases()
            checked = "lowers the loss on a fixed batch (torch is not installed, so it was not compared)"
        except AssertionError as exc:
            log(f"  !! training step check failed: {exc}")
            return [{"status": f"FAILED CHECK: {exc}"}]
    except AssertionError as exc:
        log(f"  !! training step check failed: {exc}")
        return [{"status": f"FAILED CHECK: {exc}"}]
    for batch in training.TRAIN_BATCHES:
        thunks = {}
        for impl in training.TRAIN_IMPLEMENTATIONS:
            reason = training.unavailable_reason(impl)
            if reason is not None:
                results.append({"impl": impl, "batch": batch, "status": f"skipped: {reason}"})
                continue
            step = training.STEPS[impl](batch)
            step()  # warm-up
            thunks[impl] = step
        timings = time_round_robin(thunks, args.repeat, 1.0 if args.quick else 4.0)
        for impl, t in timings.items():
            results.append({"impl": impl, "batch": batch, "status": "ok", "check": checked,
                            "time_s": t["median_s"], "images_per_s": batch / t["median_s"],
                            "n_samples": len(t["samples"])})
        log(f"train_step batch {batch}: " + "  ".join(f"{k}={v['median_s'] * 1e3:.1f}ms" for k, v in timings.items()))
    return results


def run_compile(args, cases, log):
    from benchmarks.compile_probe import run_probe

    ops = ("conv2d",) if args.quick else cases.OPS
    results = []
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as tmp:
        for op in ops:
            cache_dir = os.path.join(tmp, op)
            os.makedirs(cache_dir)
            try:
                cold = run_probe(op, "float32", cache_dir)
                warm = run_probe(op, "float32", cache_dir)
            except Exception as exc:  # report it, keep the rest of the report
                results.append({"op": op, "status": f"failed: {exc}"})
                log(f"  !! compile probe {op}: {exc}")
                continue
            results.append({"op": op, "status": "ok", "cold": cold, "warm": warm})
            log(f"first call {op:24s} cold {cold['first_call_s']:.2f}s  warm {warm['first_call_s']:.3f}s")
    return results


# ---------------------------------------------------------------------------- machine


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = None, []
    for line in info.splitlines():
        if line.startswith("model name") and model is None:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    return model or platform.machine(), flags


def machine_info(threads, cases, env_before):
    import numba
    import numpy as np

    model, flags = _cpu_model()
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": model,
        "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags],
        "cores_available": cases.default_threads(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _numba_layer(numba),
        "env": env_before,
        "blas_threadpools": cases.blas_info(),
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: not essential
        info["numpy_blas"] = "unknown"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        import fastconv

        info["fastconv"] = getattr(fastconv, "__version__", "?")
    except ImportError:
        info["fastconv"] = None
    return info


def _loadavg():
    """The 1-minute load average (other jobs on the machine), or None where unsupported."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _numba_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel code has run yet
        return f"not initialised (config: {numba.config.THREADING_LAYER})"


# ----------------------------------------------------------------------------- output


def strategies(cases):
    """``{case: {pass: strategy}}``: what :mod:`fastconv.plan` runs for every case, on this CPU and thread count."""
    import fastconv as fc

    found = {}
    for c in cases.CASES.values():
        if c.kind == "conv":
            p = fc.conv2d_plan(c.x_shape, c.w_shape, c.stride_hw, c.pad_hw, **c.options)
            inner = "+".join(s.name for s in p.input_grad_inner)
            found[c.name] = {"forward": p.forward.name,
                             "input grad": p.input_grad.name + (f" ({inner})" if inner else ""),
                             "weight grad": p.weight_grad.name, "bias grad": p.bias_grad.name}
        else:
            p = fc.max_pool2d_plan(c.x_shape, c.kernel_hw, c.stride_hw, c.pad_hw)
            found[c.name] = {"forward": p.forward.name, "backward": p.backward.name}
    return found


def _fmt_time(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    return f"{seconds * 1e3:.3g} ms"


def _fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    return f"{r:,.0f}" if r >= 10 else f"{r:.2f}"


def _index(results):
    return {(r["op"], r["case"], r["dtype"], r["impl"]): r for r in results if "case" in r}


def _time_of(index, op, case, dtype, impl):
    r = index.get((op, case, dtype, impl))
    return r.get("time_s") if r and r.get("status") == "ok" else None


def ratio_rows(results, dtype="float32"):
    """(case, op, fastconv/torch, fastconv/im2col, naive/fastconv) for every timed fastconv row."""
    index = _index(results)
    rows = []
    seen = []
    for r in results:
        key = (r.get("case"), r.get("op"))
        if r.get("impl") != "fastconv" or r.get("dtype") != dtype or key in seen:
            continue
        seen.append(key)
        fc = _time_of(index, r["op"], r["case"], dtype, "fastconv")
        if fc is None:
            continue
        t = {i: _time_of(index, r["op"], r["case"], dtype, i) for i in ("torch", "im2col", "naive")}
        rows.append((r["case"], r["op"], fc / t["torch"] if t["torch"] else None,
                     fc / t["im2col"] if t["im2col"] else None, t["naive"] / fc if t["naive"] else None))
    return rows


def run_layers(args, log):
    """The goal rows of :mod:`benchmarks.layers`, fastconv against torch (skipped without torch)."""
    if importlib.util.find_spec("torch") is None:
        log("layers: torch is not installed, skipped")
        return []
    from benchmarks import layers

    log("layers: the goal rows of issues 15 and 16")
    rows = layers.rows()
    if args.quick:
        rows = rows[::4]
    return layers.measure(rows, 0.5 if args.quick else 2.0, out=sys.stdout)


def _layers_markdown(layer_results):
    from benchmarks import layers

    met = sum(r["ratio"] <= r["goal"] for r in layer_results)
    lines = ["## Goal rows: the layers of issues 15 and 16 (float32)", "",
             "fastconv against PyTorch through the public API (`benchmarks/layers.py`): each library timed in blocks "
             "of calls, the blocks alternated, the minimum of each; `median` is the median over the rounds of the "
             "blocks' ratio. Every row was checked against torch first. The goal is the issue's bound on "
             f"fastconv's time / torch's. {met} of {len(layer_results)} rows meet it.", "",
             "| pass | input (N, C, H, W) | fastconv | torch | fastconv/torch | median | goal | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in layer_results:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"| {r['name']} | {shape} | {_fmt_time(r['fastconv_ms'] / 1e3)} | {_fmt_time(r['torch_ms'] / 1e3)} "
                     f"| {r['ratio']:.2f} | {r['median_ratio']:.2f} | <= {r['goal']:.1f} "
                     f"| {'met' if r['ratio'] <= r['goal'] else '**not met**'} |")
    lines += ["", f"Reproduce one group: `PYTHONPATH=$PWD python benchmarks/layers.py --only depthwise` (or "
              f"`--clock cpu` for 1-thread CPU time on a busy machine). Depthwise goal {layers.GOAL_DEPTHWISE}, the "
              f"other convolutions of issue 15 {layers.GOAL_ISSUE15}, issue 16's layers {layers.GOAL_ISSUE16}.", ""]
    return lines


def write_markdown(path, cases, info, results, train, compile_results, command, chart_note, layer_results=()):
    index = _index(results)
    impls = [i for i in cases.IMPLEMENTATIONS if any(r.get("impl") == i for r in results)]
    lines = [
        "# fastconv benchmarks",
        "",
        f"Generated by `{command}` on {info['date']}.",
        "Numbers are medians of repeated calls after a warm-up call (compilation is never timed), with",
        f"every library pinned to {info['threads']} thread(s), measured side by side in one process.",
        "Ratios are time / time: below 1 means fastconv is faster. Absolute times drift between runs on",
        "shared machines; compare ratios from the same run.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']} ({info['cores_available']} cores available, os.cpu_count() = {info['cpu_count']}; "
        f"ISA: {', '.join(info['isa']) or 'n/a'})",
        f"- Threads: {info['threads']} for fastconv (Numba, threading layer {info['numba_threading_layer']}), "
        f"torch ({info.get('torch_threads', '—')}) and NumPy's BLAS (see below)",
        f"- Python {info['python']}, NumPy {info['numpy']} (BLAS: {info['numpy_blas']}), Numba {info['numba']}, "
        f"PyTorch {info['torch'] or 'not installed'}, fastconv {info['fastconv']}",
        f"- Platform: {info['platform']}",
        "- Environment at start: "
        + ", ".join(f"`{k}={v}`" if v is not None else f"`{k}` unset" for k, v in info["env"].items()),
    ]
    if info["env"].get("OPENBLAS_CORETYPE"):
        lines.append(f"- **`OPENBLAS_CORETYPE={info['env']['OPENBLAS_CORETYPE']}` was set**: OpenBLAS then runs "
                     "that older CPU's kernels, and the im2col (NumPy BLAS) times are slower than this CPU allows. "
                     "For a fair im2col baseline run `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                     "scripts/bench_report.py`")
    for k, v in info.get("env_set_by_script", {}).items():
        lines.append(f"- `{k}={v}` was set by this script (threadpoolctl is not installed, so NumPy's BLAS threads "
                     "can only be pinned this way)")
    pools = info["blas_threadpools"]
    if isinstance(pools, str):
        lines.append(f"- BLAS thread pools: {pools}")
    else:
        for p in pools:
            lines.append(f"- BLAS thread pool: {p.get('internal_api')} {p.get('version')} "
                         f"({p.get('threading_layer', '?')}), {p.get('num_threads')} threads, "
                         f"core type {p.get('architecture', '?')}, {os.path.basename(p.get('filepath', ''))}")
    load = info.get("load_average", {})
    lines += [
        f"- Load average (1 min) when the op benchmarks started: {load.get('start')}, when they ended: "
        f"{load.get('end')} (with {info['cores_available']} cores: anything near or above that means other jobs "
        "competed for the CPU and the numbers are noisy; the multi-threaded libraries suffer most)",
        "- Treat differences under ~20% as noise and re-run before drawing conclusions.",
        "",
        "## Implementations",
        "",
    ]
    for name in impls:
        impl = cases.IMPLEMENTATIONS[name]
        note = (f" Timed on {cases.NAIVE_BATCH} image and scaled linearly to the batch (marked †)."
                if impl.timed_batch else "")
        statuses = [r["status"] for r in results if r.get("impl") == name]
        if "ok" not in statuses:
            note += f" Not run ({statuses[0]})."
        lines.append(f"- **{name}**: {impl.label}.{note}")
    lines += [
        "",
        "Every implementation was checked against the naive reference (computed in float64 on the same",
        f"inputs, first {cases.CHECK_BATCH} images; relative tolerance {cases.RTOL['float32']:g} in float32, "
        f"{cases.RTOL['float64']:g} in float64; pool indices exact) before it was timed.",
        "",
    ]

    used = [c for c in cases.CASES.values() if any(r.get("case") == c.name for r in results)]
    if used:
        lines += ["## Cases", "", "Input (N, C, H, W); conv: F filters of k x k; pool: k x k windows. "
                  "Conv pads with zeros, pool with -inf.", "",
                  "| case | op kind | N | C | H | W | F | k | stride | pad |", "|---" * 10 + "|"]
        for c in used:
            lines.append(f"| {c.name} | {c.kind} | {c.n} | {c.c} | {c.h} | {c.w} | {getattr(c, 'f', '—')} "
                         f"| {c.k} | {c.stride} | {c.pad} |")
        lines.append("")
        plans = info.get("strategies", {})
        lines += ["### Strategies", "", "What `fastconv.plan` chose for each case on this machine and thread count "
                  "(`print(fastconv.conv2d_plan(x_shape, w_shape, stride, padding))` explains one):", "",
                  "| case | forward | input grad | weight grad |", "|---" * 4 + "|"]
        for c in used:
            p = plans.get(c.name, {})
            lines.append(f"| {c.name} | {p.get('forward', '—')} | {p.get('input grad', '—')} "
                         f"| {p.get('weight grad', p.get('backward', '—'))} |")
        lines.append("")

    summary = ratio_rows(results)
    columns = {"conv2d": "forward", "max_pool2d": "forward", "conv2d_backward_input": "input grad",
               "conv2d_backward_weight": "weight grad", "conv2d_backward": "full backward",
               "max_pool2d_backward": "full backward"}
    titles = ("fastconv time / PyTorch time", "fastconv time / NumPy im2col time", "naive NumPy time / fastconv time")
    for col, title in enumerate(titles, start=2):
        if not any(r[col] for r in summary):
            continue
        heads = [h for h in dict.fromkeys(columns.values()) if any(columns[r[1]] == h for r in summary)]
        lines += [f"## Summary: {title} (float32)", "", "| case | " + " | ".join(heads) + " |",
                  "|---|" + "---|" * len(heads)]
        by = {(r[0], columns[r[1]]): r[col] for r in summary}
        for case in dict.fromkeys(r[0] for r in summary):
            cells = [_fmt_ratio(by.get((case, h)), 1.0) if by.get((case, h)) else "—" for h in heads]
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    if chart_note:
        lines += [chart_note, ""]

    for dtype in cases.DTYPES:
        for op in cases.OPS:
            keys = [k for k in index if k[0] == op and k[2] == dtype]
            case_names = list(dict.fromkeys(k[1] for k in keys))
            if not case_names:
                continue
            is_conv = op in cases.CONV_OPS
            header = ["case", "GFLOP"] if is_conv else ["case"]
            header += [f"{i} †" if cases.IMPLEMENTATIONS[i].timed_batch else i for i in impls]
            header += ["fastconv/torch", "fastconv/im2col", "naive/fastconv"]
            if is_conv:
                header += ["fastconv GFLOP/s", "torch GFLOP/s"]
            lines += [f"## {op} ({dtype})", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            for case in case_names:
                t = {i: _time_of(index, op, case, dtype, i) for i in impls}
                gflop = (cases.CASES[case].flop(op) or 0) / 1e9
                row = [f"{case}"] + ([f"{gflop:.3g}"] if is_conv else [])
                for i in impls:
                    r = index.get((op, case, dtype, i))
                    if r is None:
                        row.append("—")
                    elif r["status"] != "ok":
                        row.append("FAILED CHECK" if r["status"].startswith("FAILED") else "skipped")
                    else:
                        row.append(_fmt_time(r["time_s"]))
                fc = t.get("fastconv")
                row += [_fmt_ratio(fc, t.get("torch")), _fmt_ratio(fc, t.get("im2col")), _fmt_ratio(t.get("naive"), fc)]
                if is_conv:
                    row += [f"{gflop / t[i]:.1f}" if t.get(i) else "—" for i in ("fastconv", "torch")]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
            for r in results:
                if r.get("op") != op or r.get("dtype") != dtype or not r["status"].startswith("FAILED"):
                    continue
                lines += [f"- **{r['impl']} {r['case']}**: {r['status']}", ""]


    if layer_results:
        lines += _layers_markdown(layer_results)

    if train:
        from benchmarks import training

        lines += ["## Training step: reference MNIST CNN (float32)", "",
                  "conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1, ReLU, maxpool 2, flatten, "
                  "linear 3136->128, ReLU, linear 128->10; cross-entropy; SGD momentum 0.9. One step = forward, "
                  "loss, backward, update on a fixed batch of random normal images. "
                  f"Forward cost {training.FORWARD_FLOP_PER_IMAGE / 1e6:.1f} MFLOP per image. "
                  "PyTorch's step is faster on real MNIST batches than on this random one (measured 9.5 vs "
                  "11.9 ms at batch 64; fastconv's does not depend on the data): for what a user sees, compare "
                  "`scripts/train_mnist.py` with `scripts/torch_mnist_baseline.py` on the real data set "
                  "(README).", ""]
        if train and train[0].get("status", "").startswith("FAILED"):
            lines += [f"**{train[0]['status']}**", ""]
        else:
            checks = {r.get("check") for r in train if r.get("check")}
            lines += [f"fastconv's step {', '.join(checks) or 'was not checked'}.", "",
                      "| batch | fastconv ms/step | torch ms/step | fastconv images/s | torch images/s "
                      "| fastconv/torch |",
                      "|---|---|---|---|---|---|"]
            for batch in training.TRAIN_BATCHES:
                by = {r["impl"]: r for r in train if r.get("batch") == batch and r.get("status") == "ok"}
                f_s = by["fastconv"]["time_s"] if "fastconv" in by else None
                t_s = by["torch"]["time_s"] if "torch" in by else None
                f_ips = f"{batch / f_s:,.0f}" if f_s else "—"
                t_ips = f"{batch / t_s:,.0f}" if t_s else "—"
                lines.append(f"| {batch} | {_fmt_time(f_s)} | {_fmt_time(t_s)} | {f_ips} | {t_ips} "
                             f"| {_fmt_ratio(f_s, t_s)} |")
            lines.append("")

    if compile_results:
        lines += ["## First call (compilation) in a new process (float32)", "",
                  "`cold`: empty `NUMBA_CACHE_DIR`, everything compiles. `warm`: a second process on the same cache "
                  "directory. First call = compile or cache load + the work (tiny inputs); import = "
                  "`import fastconv.functional`; process = the whole child process, interpreter start-up included.", "",
                  "| op | cold first call | warm first call | import | cold process | warm process |",
                  "|---|---|---|---|---|---|"]
        for r in compile_results:
            if r["status"] != "ok":
                lines.append(f"| {r['op']} | {r['status']} | | | | |")
                continue
            c, w = r["cold"], r["warm"]
            lines.append(f"| {r['op']} | {c['first_call_s']:.2f} s | {w['first_call_s']:.3f} s "
                         f"| {w['import_s']:.2f} s | "
                         f"{c['process_s']:.2f} s | {w['process_s']:.2f} s |")
        lines.append("")

    lines += ["## Reproduce", "", "```", command, "```", "",
              "Options: `--quick`, `--cases`, `--ops`, `--impls`, `--float64 {subset,all,none}`, `--threads N`, "
              "`--repeat R`, `--no-train`, `--no-compile`, `--no-layers`, `--out PATH`. The pytest-benchmark suite "
              "(`pytest benchmarks --benchmark-enable`) times the same table.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_chart(path, results):
    """PNG of the float32 ratios; returns a note for the report (or why it was skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)."
    rows = ratio_rows(results)
    if not rows:
        return None
    labels = [f"{case} · {op}" for case, op, *_ in rows]
    panels = [
        (2, "fastconv / PyTorch time (< 1: fastconv faster)", "tab:blue"),
        (3, "fastconv / NumPy im2col time (< 1: fastconv faster)", "tab:orange"),
        (4, "naive NumPy / fastconv time (speed-up)", "tab:green"),
    ]
    panels = [p for p in panels if any(r[p[0]] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.32 * len(rows) + 1.5), sharey=True,
                             squeeze=False)
    ypos = list(range(len(rows)))[::-1]
    for ax, (col, title, color) in zip(axes[0], panels):
        vals = [r[col] for r in rows]
        # Bars grow from 1 (parity) on a log axis: left of 1 fastconv wins, right of it loses
        # (or, for the speed-up panel, the bar length is the speed-up).
        for y, v in zip(ypos, vals):
            if v:
                ax.barh(y, v - 1.0, left=1.0, color=color)
                ax.annotate(_fmt_ratio(v, 1.0), (v, y), xytext=(3 if v >= 1 else -3, 0), textcoords="offset points",
                            ha="left" if v >= 1 else "right", va="center", fontsize=7)
        span = max(max(abs(math.log10(v)) for v in vals if v), 0.1) * 1.35
        ax.set_xscale("log")
        ax.set_xlim(0.8 if min(v for v in vals if v) >= 1 else 10 ** -span, 10 ** span)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0) if span < 1.5 else (1.0,)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", which="major", alpha=0.3)
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    fig.suptitle("fastconv benchmark ratios (float32)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![ratios]({os.path.basename(path)})"


# ------------------------------------------------------------------------------- main


def main(argv=None):
    args, parser = parse_args(argv)
    env_before = {k: os.environ.get(k) for k in RECORDED_ENV}
    threads = args.threads or _cores()
    env_set = {}
    if importlib.util.find_spec("threadpoolctl") is None and os.environ.get("OPENBLAS_NUM_THREADS") is None:
        # Without threadpoolctl, NumPy's OpenBLAS can only be pinned by this variable, read when
        # NumPy loads it: so it is set here, before anything imports NumPy.
        os.environ["OPENBLAS_NUM_THREADS"] = env_set["OPENBLAS_NUM_THREADS"] = str(threads)
    sys.path.insert(0, REPO)

    from benchmarks import cases  # imports NumPy

    for name, valid, given in (("--cases", cases.CASES, _split(args.cases)), ("--ops", cases.OPS, _split(args.ops)),
                               ("--impls", cases.IMPLEMENTATIONS, _split(args.impls))):
        unknown = sorted(set(given or ()) - set(valid))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")

    command = "python scripts/bench_report.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))

    def log(msg):
        print(msg, flush=True)

    out = os.path.abspath(args.out)
    stem = os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log(f"fastconv benchmark report: {threads} thread(s); writing {out}")
    load_start = _loadavg()
    with cases.pinned_threads(threads):
        results = run_ops(args, cases, log)
        train = [] if args.no_train else run_training(args, log)
        layer_results = [] if args.no_layers else run_layers(args, log)
        info = machine_info(threads, cases, env_before)
        info["strategies"] = strategies(cases)
        info["env_set_by_script"] = env_set
        info["load_average"] = {"start": load_start, "end": _loadavg()}
    compile_results = [] if args.no_compile else run_compile(args, cases, log)

    chart_note = write_chart(stem + ".png", results)
    if chart_note and chart_note.startswith("matplotlib"):
        log(chart_note)
    write_markdown(out, cases, info, results, train, compile_results, command, chart_note, layer_results)
    with open(stem + ".json", "w") as f:
        json.dump({"command": command, "machine": info, "ops": results, "train_step": train,
                   "first_call": compile_results,
                   "layers": layer_results}, f, indent=1, default=str)
    chart_written = chart_note is not None and not chart_note.startswith("matplotlib")
    log(f"wrote {out}, {stem}.json" + (f", {stem}.png" if chart_written else ""))
    failed = [r for r in results + train if str(r.get("status", "")).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
