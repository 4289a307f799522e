"""Thread safety, fork safety and thread-count hygiene (see ``fastconv/_runtime.py``).

- 8 Python threads calling every op at once on shared inputs get bitwise the results of
  serial calls, under the default threading layer here and under ``workqueue`` and
  ``omp`` in subprocesses (where ``NUMBA_NUM_THREADS=3`` also gives uneven work splits);
- the forward pass, the input gradient, the bias gradient and max-pooling do not depend on
  the thread count; the weight gradient is reproducible for a fixed count;
- a process forked (``os.fork``, ``multiprocessing`` with the ``fork`` start method) after
  its parent used fastconv can use it and gets the parent's results;
- ``set_num_threads`` is per calling thread, and no call changes it, even when a kernel
  raises;
- a ``ThreadPoolExecutor`` in a data-parallel training loop (one model replica per shard)
  reproduces the serial loop bitwise, and a shared model can be evaluated from several
  threads under ``nn.no_grad()``.

The helpers below are also run by the subprocess tests, which import this file by path.
"""

import concurrent.futures
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
import zlib
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
import pytest

import fastconv.functional as fc
from fastconv import nn, optim

REPO = Path(__file__).resolve().parents[1]
F32, F64 = np.float32, np.float64
HAS_FORK = hasattr(os, "fork")


class OpCase(NamedTuple):
    name: str
    N: int
    C: int
    H: int
    W: int
    F: int
    K: int
    stride: object
    padding: object


CASES = [
    OpCase("small-few-channels", 2, 3, 9, 8, 4, 3, 1, 1),  # short receptive field kernel, one-thread launches
    OpCase("small-strided", 2, 8, 11, 10, 6, 3, 2, 1),  # general forward kernel, per-phase input gradient
    OpCase("parallel", 4, 16, 44, 44, 8, 3, 1, 1),  # conv and pool forward launches above plan.TUNING.small_work
]
# Results that the implementation computes without a thread-count-dependent split.
COUNT_INDEPENDENT = ("y", "dx", "db", "dx_only", "pool", "pool_idx", "pool_dx")
COUNT_DEPENDENT = ("dw", "dw_only")


def make_inputs(case, dtype):
    """Seeded inputs of ``case``: x, w, b, dy (conv) and pdy (for the 3x3/2 pad-1 max-pool)."""
    rng = np.random.default_rng(zlib.crc32(f"{case.name}/{np.dtype(dtype).name}".encode()))
    s, p = case.stride, case.padding
    Ho, Wo = (case.H + 2 * p - case.K) // s + 1, (case.W + 2 * p - case.K) // s + 1
    Hp, Wp = (case.H + 2 - 3) // 2 + 1, (case.W + 2 - 3) // 2 + 1

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return dict(x=normal(case.N, case.C, case.H, case.W), w=normal(case.F, case.C, case.K, case.K), b=normal(case.F),
                dy=normal(case.N, case.F, Ho, Wo), pdy=normal(case.N, case.C, Hp, Wp))


def run_ops(case, inp):
    """Every public op on ``inp``; returns name -> result array."""
    x, w, b, dy = inp["x"], inp["w"], inp["b"], inp["dy"]
    s, p = case.stride, case.padding
    dx, dw, db = fc.conv2d_backward(dy, x, w, s, p)
    pool, pool_idx = fc.max_pool2d(x, 3, 2, 1)
    return dict(
        y=fc.conv2d(x, w, b, s, p), dx=dx, dw=dw, db=db,
        dx_only=fc.conv2d_backward_input(dy, w, x.shape, s, p),
        dw_only=fc.conv2d_backward_weight(dy, x, w.shape, s, p),
        pool=pool, pool_idx=pool_idx, pool_dx=fc.max_pool2d_backward(inp["pdy"], pool_idx, x.shape),
    )  # fmt: skip


def _differences(got, want, label, names=None):
    return [
        f"{label}/{name}"
        for name in (names or want)
        if got[name].dtype != want[name].dtype or got[name].tobytes() != want[name].tobytes()
    ]


def threaded_mismatches(n_threads=8, rounds=2, dtypes=(F32, F64)):
    """Run every op of every case from ``n_threads`` threads at once; list what differs from serial calls."""
    count = fc.get_num_threads()
    keys = [(case, dt) for case in CASES for dt in dtypes]
    inputs = {k: make_inputs(*k) for k in keys}
    expected = {k: run_ops(k[0], inputs[k]) for k in keys}
    barrier = threading.Barrier(n_threads)
    problems = []

    def worker(tid):
        try:
            fc.set_num_threads(count)  # per thread: new threads start at NUMBA_NUM_THREADS
            barrier.wait(timeout=120)
            for r in range(rounds):
                for j in range(len(keys)):
                    case, dt = keys[(j + tid) % len(keys)]  # the threads start on different ops
                    got = run_ops(case, inputs[case, dt])
                    problems.extend(_differences(got, expected[case, dt], f"thread {tid} round {r} {case.name} "
                                                                         f"{np.dtype(dt).name}"))
                    if fc.get_num_threads() != count:
                        problems.append(f"thread {tid}: thread count {fc.get_num_threads()} != {count}")
        except BaseException:  # noqa: BLE001 - reported to the test
            problems.append(f"thread {tid} raised:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    problems.extend(f"thread {i} hangs" for i, t in enumerate(threads) if t.is_alive())
    return problems


def thread_count_dependence(dtypes=(F32, F64)):
    """Compare results across thread counts 1..NUMBA_NUM_THREADS; list what breaks the promises."""
    previous = fc.get_num_threads()
    problems = []
    try:
        for case in CASES:
            for dt in dtypes:
                inp = make_inputs(case, dt)
                label = f"{case.name} {np.dtype(dt).name}"
                fc.set_num_threads(1)
                base = run_ops(case, inp)
                for count in range(1, numba.config.NUMBA_NUM_THREADS + 1):
                    fc.set_num_threads(count)
                    first, second = run_ops(case, inp), run_ops(case, inp)
                    problems += _differences(second, first, f"{label} repeat at {count} threads")
                    problems += _differences(first, base, f"{label} {count} vs 1 threads", COUNT_INDEPENDENT)
                    for name in COUNT_DEPENDENT:  # other partial sums: the same value up to rounding
                        terms = inp["dy"][:, 0].size  # N * Ho * Wo products per element
                        bound = 4 * np.finfo(dt).eps * np.sqrt(terms) * np.abs(base[name]).max()
                        if np.abs(first[name].astype(F64) - base[name]).max() > bound:
                            problems.append(f"{label} {count} vs 1 threads/{name}: beyond rounding")
                    if fc.get_num_threads() != count:
                        problems.append(f"{label}: thread count changed from {count} to {fc.get_num_threads()}")
    finally:
        fc.set_num_threads(previous)
    return problems


def in_forked_child(fn, timeout=300):
    """Run ``fn()`` in an ``os.fork()``-ed child and return its result (pickled through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller (pytest)
        code = 1
        try:
            os.close(r)
            signal.alarm(timeout)  # a hang kills the child with SIGALRM
            try:
                payload = ("ok", fn())
            except BaseException:  # noqa: BLE001
                payload = ("error", traceback.format_exc())
            with os.fdopen(w, "wb") as f:
                pickle.dump(payload, f)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}"
        raise AssertionError(f"forked child died ({how})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"forked child raised:\n{value}")
    return value


def fork_mismatches(dtypes=(F32,)):
    """What a forked child computes differently from this process (see the bias-gradient note below)."""
    keys = [(case, dt) for case in CASES for dt in dtypes]
    expected = {(c.name, np.dtype(dt).name): run_ops(c, make_inputs(c, dt)) for c, dt in keys}
    got = in_forked_child(lambda: {(c.name, np.dtype(dt).name): run_ops(c, make_inputs(c, dt)) for c, dt in keys})
    problems = []
    for key, want in expected.items():
        # The bias gradient of a forked child of an OpenMP parent (a serial build of the kernel) can
        # differ from the parent's in the last bits: compared to rounding only.
        exact = [name for name in want if name != "db"]
        problems += _differences(got[key], want, " ".join(key), exact)
        t = 1e-5 if key[1] == "float32" else 1e-12
        if not np.allclose(got[key]["db"], want["db"], rtol=t, atol=t):
            problems.append(f"{' '.join(key)}/db: not even close")
    return problems


def layer_report():
    """What the threading-layer subprocess tests check, as a JSON-able dict."""
    inp = make_inputs(CASES[-1], F32)
    run_ops(CASES[-1], inp)  # a parallel launch: the threading layer is chosen now
    count = fc.get_num_threads()
    report = {"layer": numba.threading_layer(), "num_threads": count}
    report["thread_mismatches"] = threaded_mismatches()
    report["num_threads_after"] = fc.get_num_threads()
    report["count_dependence"] = thread_count_dependence()
    if HAS_FORK and report["layer"] != "omp":  # an omp child compiles serial builds: tested in-process
        report["fork_mismatches"] = fork_mismatches()
    return report


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------


def test_eight_threads_calling_every_op_match_serial_calls():
    assert threaded_mismatches() == []


def test_results_across_thread_counts():
    assert thread_count_dependence() == []


LAYER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("concurrency_checks", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("REPORT " + json.dumps(module.layer_report()))
    """
)


def _subprocess_env(**extra):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_threads_and_thread_counts_under_each_threading_layer(layer):
    proc = subprocess.run(
        [sys.executable, "-c", LAYER_SCRIPT, __file__],
        env=_subprocess_env(NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="3"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0 and ("threading layer" in proc.stderr or "TBB" in proc.stderr):
        pytest.skip(f"the {layer} threading layer is not available here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["layer"] == layer
    assert report["num_threads"] == report["num_threads_after"] == 3
    assert report["thread_mismatches"] == []
    assert report["count_dependence"] == []
    assert report.get("fork_mismatches", []) == []


# ---------------------------------------------------------------------------------------
# Thread counts
# ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_thread_count():
    previous = fc.get_num_threads()
    yield
    fc.set_num_threads(previous)


@pytest.mark.parametrize("count", range(1, numba.config.NUMBA_NUM_THREADS + 1))
def test_calls_leave_the_thread_count_alone(count, restore_thread_count):
    fc.set_num_threads(count)
    for case in CASES:
        run_ops(case, make_inputs(case, F32))
        assert fc.get_num_threads() == count, case.name


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt and the like."""


def _call_pool(x):
    return fc.max_pool2d(x, 3, stride=2, padding=1)


def _call_pool_2x2(x):
    return fc.max_pool2d(x, 2)


def _call_conv_backward(x):
    return fc.conv2d_backward(np.ones((x.shape[0], 2, x.shape[2], x.shape[3]), x.dtype), x,
                              np.ones((2, x.shape[1], 3, 3), x.dtype), padding=1)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("exc", [RuntimeError, _Interrupt], ids=["RuntimeError", "BaseException"])
@pytest.mark.parametrize(
    "module, kernel, call",
    [("maxpool", lambda shape: fc.max_pool2d_plan(shape, 3, 2, 1).forward.kernels[0].split(".")[1], _call_pool),
     ("maxpool", "maxpool_forward_2x2", _call_pool_2x2),
     ("pack", "pack_nhwc_padded", _call_conv_backward),  # the first launch of the call
     ("flat", "flat_bias_grad", _call_conv_backward)],  # the last one
    ids=["max_pool2d", "max_pool2d-2x2", "conv2d_backward-first-launch", "conv2d_backward-last-launch"],
)
def test_thread_count_restored_when_a_kernel_raises(module, kernel, call, exc, size, monkeypatch,
                                                   restore_thread_count):
    import importlib

    kernels = importlib.import_module(f"fastconv.kernels.{module}")
    seen = []
    x = np.ones((2, 4, 8, 8) if size == "small" else (4, 16, 96, 96), F32)
    if callable(kernel):  # the kernel the plan of this call runs (narrow and wide pools differ)
        kernel = kernel(x.shape)

    def failing_kernel(*args):
        seen.append(numba.get_num_threads())
        raise exc("kernel failed (simulated)")

    monkeypatch.setattr(kernels, kernel, failing_kernel)
    top = numba.config.NUMBA_NUM_THREADS
    for count in sorted({1, top}):
        fc.set_num_threads(count)
        with pytest.raises(exc, match="simulated"):
            call(x)
        assert fc.get_num_threads() == count
        if size == "small":  # small launches run on one thread, so the count really was changed
            assert seen[-1] == 1
    monkeypatch.undo()
    call(x)  # and everything still works
    assert fc.get_num_threads() == count


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a pool of two threads")
def test_thread_count_is_per_thread(restore_thread_count):
    top = numba.config.NUMBA_NUM_THREADS
    fc.set_num_threads(1)
    seen = []

    def worker():
        seen.append(fc.get_num_threads())  # a new thread starts with the whole pool
        fc.set_num_threads(2)
        run_ops(CASES[0], make_inputs(CASES[0], F32))
        seen.append(fc.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [top, 2]
    assert fc.get_num_threads() == 1


# ---------------------------------------------------------------------------------------
# Training and evaluation with a thread pool
# ---------------------------------------------------------------------------------------


def _cnn(dtype=F32):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5, dtype=dtype),
    )  # fmt: skip


def _batch(step, n=16, dtype=F32):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((n, 1, 8, 8)).astype(dtype), rng.integers(0, 5, n)


def _shard_gradients(model, x, y):
    """Loss (summed over the shard) and parameter gradients of one shard, on one replica."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    return loss, [p.grad.copy() for p in model.parameters()]


def _data_parallel_training(executor, steps=3, shards=4):
    nn.manual_seed(7)
    master = _cnn()
    replicas = [_cnn() for _ in range(shards)]
    opt = optim.SGD(master.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = _batch(step)
        state = master.state_dict()
        for r in replicas:
            r.load_state_dict(state)
        jobs = [(replicas[i], x[i::shards], y[i::shards]) for i in range(shards)]
        results = list(executor.map(lambda job: _shard_gradients(*job), jobs)) if executor else [
            _shard_gradients(*job) for job in jobs
        ]
        losses.append(sum(loss for loss, _ in results) / len(y))
        for i, p in enumerate(master.parameters()):
            p.grad[...] = sum(grads[i] for _, grads in results) / len(y)  # shard order: deterministic
        opt.step()
    return losses, master.state_dict()


def test_thread_pool_in_a_training_loop_matches_the_serial_loop():
    serial_losses, serial_state = _data_parallel_training(None)
    count = fc.get_num_threads()
    with concurrent.futures.ThreadPoolExecutor(4, initializer=fc.set_num_threads, initargs=(count,)) as ex:
        losses, state = _data_parallel_training(ex)
    assert losses == serial_losses
    for k in serial_state:
        assert state[k].tobytes() == serial_state[k].tobytes(), k
    assert losses[-1] < losses[0]  # it really trained


def test_one_model_evaluated_from_eight_threads_under_no_grad():
    nn.manual_seed(3)
    model = _cnn()
    batches = [_batch(i, n=6)[0] for i in range(16)]
    with nn.no_grad():
        expected = [model(x) for x in batches]

    def evaluate(x):
        with nn.no_grad():  # per thread
            return model(x)

    count = fc.get_num_threads()
    with concurrent.futures.ThreadPoolExecutor(8, initializer=fc.set_num_threads, initargs=(count,)) as ex:
        got = list(ex.map(evaluate, batches))
    for g, e in zip(got, expected):
        assert g.tobytes() == e.tobytes()


# ---------------------------------------------------------------------------------------
# fork
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_forked_child_computes_what_the_parent_computes():
    run_ops(CASES[-1], make_inputs(CASES[-1], F32))  # the parent has run parallel regions
    assert fork_mismatches() == []


def _evaluate_job(args):
    state, x = args
    model = _cnn()
    model.load_state_dict(state)
    with nn.no_grad():
        return model(x), fc.get_num_threads()


@pytest.mark.skipif(not HAS_FORK, reason="needs the fork start method")
def test_multiprocessing_fork_workers_compute_what_the_parent_computes():
    run_ops(CASES[-1], make_inputs(CASES[-1], F32))  # the parent has run parallel regions
    nn.manual_seed(11)
    model = _cnn()
    state = model.state_dict()
    batches = [_batch(i, n=8)[0] for i in range(4)]
    with nn.no_grad():
        expected = [model(x) for x in batches]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(_evaluate_job, [(state, x) for x in batches], chunksize=1).get(timeout=300)
    for (logits, count), want in zip(got, expected):
        assert count == fc.get_num_threads()
        assert logits.tobytes() == want.tobytes()


FORK_WHILE_LAUNCHING = textwrap.dedent(
    """
    import os, signal, sys, threading
    import numpy as np, numba
    import fastconv.functional as fc
    from fastconv import _runtime

    x, w = np.ones((2, 8, 16, 16), np.float32), np.ones((8, 8, 3, 3), np.float32)
    expected = fc.conv2d(x, w)
    assert numba.threading_layer() == "workqueue", numba.threading_layer()

    # Another thread is inside a kernel launch, holding the launch lock, at the moment of the fork
    # (held here on purpose, so that the test does not depend on timing).
    holding, release = threading.Event(), threading.Event()

    def launching():
        with _runtime._workqueue_lock:
            holding.set()
            release.wait()

    t = threading.Thread(target=launching)
    t.start()
    holding.wait()
    pid = os.fork()
    if pid == 0:
        signal.alarm(4)  # the call takes milliseconds
        ok = np.array_equal(fc.conv2d(x, w), expected)
        os._exit(0 if ok else 3)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    print("child", "signal" if os.WIFSIGNALED(status) else "exit", os.WTERMSIG(status) or os.WEXITSTATUS(status))
    sys.exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)
    """
)


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_fork_while_another_thread_is_launching_on_workqueue():
    proc = subprocess.run([sys.executable, "-c", FORK_WHILE_LAUNCHING], capture_output=True, text=True, timeout=120,
                          env=_subprocess_env(NUMBA_THREADING_LAYER="workqueue"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
