"""The plan layer (``fastconv.plan``): every strategy is reached by the case table and correct.

- The case table (``benchmarks.cases``), planned for 512- and 256-bit vectors, reaches
  every strategy of the registry; each strategy is compared with the pure-NumPy reference
  on the rows that reach it (so the AVX2 kernels are tested on an AVX-512 machine too;
  ``test_conv.py`` runs every test row on both register files).
- Plans are cached, explain themselves, refuse operands that do not match them, and take
  the non-finite fallback of the flat weight gradient when the input holds an infinity.
- Structure: ``nn`` and ``compat`` reach kernels only through the plan and the functional
  API; kernels stay short, take few arguments, are named on one axis and listed in their
  module's docstring.
"""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import numba
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import _validation as V
from fastconv import plan as P
from fastconv import reference as ref
from benchmarks import cases

import _strategies as walk

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}


def _conv_rows_of(strategy):
    """``(row, cpu)`` of the case-table rows whose plan runs ``strategy`` (small rows first)."""
    found = []
    for row, cpu, plan in walk.conv_plans(cases.CONV_PLAN_ROWS, np.float64):
        if strategy in plan.strategies():
            found.append((row, cpu))
    return sorted(found, key=lambda rc: np.prod(rc[0].x_shape) * rc[0].f)


CONV_STRATEGIES = [s for (op, _), s in P.STRATEGIES.items() if op.startswith("conv2d")]


def test_the_case_table_reaches_every_strategy():
    reached = set()
    for _, _, plan in walk.conv_plans(cases.CONV_PLAN_ROWS, np.float32):
        reached.update(plan.strategies())
    for _, plan in walk.pool_plans(cases.POOL_ROWS, np.float32):
        reached.update(plan.strategies())
    for _, plan in walk.avg_pool_plans(cases.AVG_POOL_ROWS, np.float32):
        reached.update(plan.strategies())
    for _, avg, mx in walk.adaptive_pool_plans(cases.ADAPTIVE_POOL_ROWS, np.float32):
        reached.update(avg.strategies() + mx.strategies())
    reached |= walk.run_elementwise_and_dense(np.float32, np.random.default_rng(0))
    reached |= walk.run_norm(np.float32, np.random.default_rng(0))
    missing = sorted(f"{s.op}/{s.name}" for s in set(P.STRATEGIES.values()) - reached)
    assert not missing, f"no row of benchmarks.cases reaches: {missing}"


def _reference(row, x, w, b, dy):
    s, p, o = row.stride_hw, row.pad_hw, row.options
    return ref.conv2d(x, w, b, s, p, **o), *ref.conv2d_backward(dy, x, w, s, p, **o)


def _check(got, want, dtype, what):
    scale = max(float(np.max(np.abs(want))), 1.0)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", CONV_STRATEGIES, ids=lambda s: f"{s.op}/{s.name}")
def test_every_conv_strategy_matches_reference(strategy, dtype):
    """The three smallest rows that reach each strategy, run through the plan that chose it."""
    rows = _conv_rows_of(strategy)[:3]
    assert rows, f"{strategy.op}/{strategy.name} is reached by no row"
    rng = np.random.default_rng(0)
    for row, cpu in rows:
        row = row.with_batch(min(row.n, 2))
        g = V.conv_geometry("test", row.x_shape, row.w_shape, row.stride_hw, row.pad_hw, **row.options)
        plan = P.plan_conv2d(g, dtype, cpu)
        x, w, b, dy = (rng.standard_normal(s).astype(np.float32).astype(np.float64)
                       for s in (row.x_shape, row.w_shape, (row.f,), g.y_shape))
        y_ref, dx_ref, dw_ref, db_ref = _reference(row, x, w, b, dy)
        xd, wd, bd, dyd = (a.astype(dtype) for a in (x, w, b, dy))
        where = f"{row} on {cpu.name}"
        y, packed = plan.run_forward(xd, wd, bd)
        _check(y, y_ref, dtype, f"forward {plan.forward.name} {where}")
        _check(plan.run_forward(xd, wd, bd, relu=True)[0], np.maximum(y_ref, 0), dtype,
               f"forward {plan.forward.name} with the fused ReLU {where}")
        _check(plan.run_input_grad(dyd, wd), dx_ref, dtype, f"input grad {plan.input_grad.name} {where}")
        _check(plan.run_weight_grad(dyd, xd, packed), dw_ref, dtype, f"weight grad {plan.weight_grad.name} {where}")
        _check(plan.run_weight_grad(dyd, xd), dw_ref, dtype, f"weight grad without the packed x {where}")
        _check(plan.run_bias_grad(dyd), db_ref, dtype, f"bias grad {where}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_input_takes_the_fallback_of_the_flat_weight_grad(dtype):
    """``0 * inf`` in the flat kernel's gaps would add NaNs; the plan runs its tiled fallback instead."""
    p = F.conv2d_plan((2, 1, 9, 9), (4, 1, 3, 3), padding=1, dtype=dtype)
    assert p.weight_grad.name == "flat" and p.weight_grad.needs_finite
    assert p.weight_grad_nonfinite.name.startswith("tiled")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 9, 9))
    x[0, 0, 4, 4] = np.inf
    dy = rng.standard_normal((2, 4, 9, 9))
    want = ref.conv2d_backward_weight(dy, x, (4, 1, 3, 3), 1, 1)
    got = p.run_weight_grad(dy.astype(dtype), x.astype(dtype))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=TOL[np.dtype(dtype)] * 10)


def test_plans_are_cached_per_geometry_dtype_cpu_and_threads():
    a = F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    assert F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), padding=(1, 1)) is a
    assert F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), padding=1, dtype=np.float64) is not a
    assert a.threads == F.get_num_threads()
    assert F.max_pool2d_plan((2, 3, 8, 8), 2) is F.max_pool2d_plan((2, 3, 8, 8), (2, 2), 2)


def test_explain_names_every_pass():
    p = F.conv2d_plan((64, 32, 14, 14), (64, 32, 3, 3), padding=1)
    text = str(p)
    for strategy in (p.forward, p.input_grad, p.weight_grad, p.bias_grad):
        assert strategy.name in text and strategy.summary in text
    assert "threads" in text and p.cpu.name in text
    pool = F.max_pool2d_plan((2, 3, 8, 8), 3, 2, 1)
    assert pool.forward.name in str(pool) == pool.explain()


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: F.conv2d_plan((2, 3, 8, 8), (4, 2, 3, 3)), ValueError, "conv2d_plan: w_shape has 2 input channels"),
        (lambda: F.conv2d_plan((2, 3, 2, 2), (4, 3, 3, 3)), ValueError, "conv2d_plan: kernel"),
        (lambda: F.conv2d_plan((2, 3, 8), (4, 3, 3, 3)), ValueError, "conv2d_plan: x_shape must have 4"),
        (lambda: F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), stride=0), ValueError, "stride"),
        (lambda: F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), dtype=np.float16), TypeError, "dtype"),
        (lambda: F.max_pool2d_plan((2, 3, 8, 8), 9), ValueError, "max_pool2d_plan: kernel_size"),
    ],
    ids=["channels", "kernel-too-large", "ndim", "stride", "dtype", "pool-window"],
)
def test_plan_requests_are_validated(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "run, match",
    [
        (lambda p, x, w: p.run_forward(x[:1], w), "x must have shape"),
        (lambda p, x, w: p.run_forward(x.astype(np.float64), w), "dtype float32"),
        (lambda p, x, w: p.run_forward(x, w[:, :2]), "w must have shape"),
        (lambda p, x, w: p.run_forward(x, w, np.zeros(3, np.float32)), "b must have shape"),
        (lambda p, x, w: p.run_input_grad(np.zeros((2, 4, 7, 7), np.float32), w), "dy must have shape"),
        (lambda p, x, w: p.run_weight_grad(np.zeros((2, 4, 8, 8), np.float32), x.tolist()), "x must have shape"),
    ],
    ids=["x-shape", "x-dtype", "w-shape", "b-shape", "dy-shape", "x-list"],
)
def test_plans_refuse_operands_that_do_not_match(run, match):
    """A plan's kernels would read past mismatched arrays: refused with a ValueError instead."""
    p = F.conv2d_plan((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    x, w = np.zeros((2, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        run(p, x, w)


def test_every_tuning_threshold_lives_in_the_plan():
    """The old thresholds are gone from the modules that used to hold them."""
    for module in ("functional", "_runtime", "nn"):
        source = (ROOT / "fastconv" / f"{module}.py").read_text()
        for name in ("_SHORT_REDUCTION", "_SHORT_ROW", "_BIG_PARTIALS", "SMALL_WORK", "isfinite"):
            assert name not in source, f"fastconv/{module}.py still mentions {name}"
    assert set(vars(P.TUNING)) == {"short_reduction", "short_row", "big_partials", "small_work",
                                   "depthwise_rows", "depthwise_rows_backward", "strided_pointwise_pixels",
                                   "stream_store_bytes",
                                   "phase_pixels", "phases_narrow_filters", "strided_pointwise_channels",
                                   "depthwise_flat"}


# ---------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------


def _imports(path):
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.update(f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names)
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found, tree


@pytest.mark.parametrize("module", ["nn", "compat", "compat/layers", "compat/fast_layers", "compat/layer_utils",
                                    "compat/_common", "training", "models", "metrics", "datasets", "optim"])
def test_layers_reach_kernels_only_through_the_plan(module):
    path = ROOT / "fastconv" / f"{module}.py"
    if (ROOT / "fastconv" / module).is_dir():
        path = ROOT / "fastconv" / module / "__init__.py"
    if not path.exists():
        pytest.skip(f"fastconv/{module}.py does not exist")
    imports, tree = _imports(path)
    bad = sorted(i for i in imports if "kernels" in i or "_runtime" in i)
    assert not bad, f"fastconv/{module}.py imports {bad}"
    private = sorted({f"{n.value.id}.{n.attr}" for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                      and n.value.id in ("_F", "F", "functional") and n.attr.startswith("_")})
    assert not private, f"fastconv/{module}.py uses private functional names {private}"


def _kernel_functions():
    import fastconv.kernels

    for info in pkgutil.iter_modules(fastconv.kernels.__path__):
        module = importlib.import_module(f"fastconv.kernels.{info.name}")
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                yield module, node


def _code_lines(node, source_lines):
    body = node.body
    start = body[0].end_lineno if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        else body[0].lineno - 1
    return [ln for ln in source_lines[start:node.end_lineno] if ln.strip() and not ln.strip().startswith("#")]


KERNELS = [pytest.param(m, n, id=f"{m.__name__.rsplit('.', 1)[1]}.{n.name}") for m, n in _kernel_functions()]


@pytest.mark.parametrize("module, node", KERNELS)
def test_kernels_are_short_and_take_few_arguments(module, node):
    lines = _code_lines(node, inspect.getsource(module).split("\n"))
    assert len(lines) <= 80, f"{node.name}: {len(lines)} code lines (at most 80)"
    assert len(node.args.args) <= 8, f"{node.name}: {len(node.args.args)} parameters (at most 8; pass tuples)"


def _public_names():
    import fastconv.compat
    import fastconv.nn

    names = set(fastconv.__all__) | set(F.__all__) | set(fastconv.compat.__all__) | set(fastconv.nn.__all__)
    for cls in vars(fastconv.nn).values():
        if isinstance(cls, type):
            names |= {n for n in vars(cls) if not n.startswith("_")}
    return names


COMPILED = [p for p in KERNELS if isinstance(getattr(p.values[0], p.values[1].name), numba.core.registry.CPUDispatcher)]


@pytest.mark.parametrize("module, node", COMPILED)
def test_kernel_names_are_on_one_axis_and_listed(module, node):
    """A kernel is named ``<family>_<computation>`` after its module, never like a public function."""
    family = module.__name__.rsplit(".", 1)[1]
    assert node.name not in _public_names(), f"{node.name} is also a public name"
    if node.name.startswith("_"):  # inline helpers: named in the module docstring
        assert f":func:`{node.name}`" in module.__doc__, f"{family}'s docstring does not name {node.name}"
        return
    assert node.name.startswith(family + "_"), f"{node.name} does not start with its family {family}_"
    assert re.search(rf"\b{node.name}\b", module.__doc__), f"{family}'s docstring does not list {node.name}"
    assert re.search(rf"\b{node.name}\b", importlib.import_module("fastconv.kernels").__doc__), \
        f"fastconv/kernels/__init__.py does not list {node.name}"


def test_prefer_512_is_reported_only_when_applied():
    """``config.PREFER_512`` is False when another library built Numba's CPU target before fastconv."""
    import subprocess
    import sys

    code = ("import numba\n@numba.njit\ndef f(x):\n    return x\n"
            "import fastconv.config as c\nfrom numba.core import config as n\n"
            "print(c.PREFER_512, '-prefer-256-bit' in (n.CPU_FEATURES or ''))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**__import__("os").environ, "FASTCONV_PREFER_512": "1"}).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (64, 300, 10), (9, 1030, 13)], ids=str)
def test_matmul_matches_numpy_and_refuses_bad_operands(shape, dtype, rng):
    M, K, N = shape
    a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(F.matmul(a, b), a.astype(np.float64) @ b, rtol=tol, atol=tol * np.sqrt(K))
    np.testing.assert_allclose(F.matmul(np.asfortranarray(a), b[::1]), a.astype(np.float64) @ b, rtol=tol,
                               atol=tol * np.sqrt(K))
    with pytest.raises(ValueError, match="matmul: a.shape"):
        F.matmul(a, b.T.copy() if N != K else np.zeros((K + 1, N), dtype))
    with pytest.raises(TypeError, match="matmul: arrays must share one dtype"):
        F.matmul(a, b.astype(np.float64 if dtype == np.float32 else np.float32))


def test_compile_all_runs_every_strategy():
    """``python -m fastconv.compile`` compiles what any call could need on this CPU."""
    import io

    from fastconv import compile as fc_compile

    out = io.StringIO()
    reached = fc_compile.compile_all(("float32", "float64"), file=out)
    missing = sorted(f"{s.op}/{s.name}" for s in set(P.STRATEGIES.values()) - reached)
    assert not missing, f"fastconv.compile misses {missing}"
    assert "compiled fastconv's kernels for float32, float64 in" in out.getvalue()


def test_compile_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fastconv.compile", "--dtype", "float32"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "compiled fastconv's kernels for float32" in done.stderr
