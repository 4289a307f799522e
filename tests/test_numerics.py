"""Numerics and sizes: NaN/Inf through the layers, 64-bit indexing, huge requests, memory, determinism.

- NaN and infinities go through every layer exactly as through the same PyTorch layer (same
  positions of NaN/+inf/-inf, finite values equal to rounding; a NaN in a pool window wins);
- index arithmetic is 64-bit: max-pool indices past 2**31 are exact (on a lazily zeroed
  10 GiB virtual input that costs no memory), and type inference of every kernel finds no
  integer narrower than 64 bits;
- requests that cannot be allocated raise ``MemoryError``/``ValueError``, not a crash;
- 10,000 repeated small calls do not grow the resident memory;
- training with a seed is bitwise reproducible;
- property tests (hypothesis): random -- also invalid -- geometries either raise
  ``ValueError`` naming the function or agree with the reference; every max-pool index points
  at its window's maximum inside the window, and the gradient is routed only there.
"""

import functools
import gc
import os
import re

import hypothesis
import hypothesis.strategies as st
import numba
import numpy as np
import pytest

import fastconv.functional as fc
from fastconv import nn, optim
from fastconv import reference as ref
from benchmarks import cases

import _strategies as walk

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]


# ---------------------------------------------------------------------------------------
# NaN and infinities through the layers, against PyTorch
# ---------------------------------------------------------------------------------------


def assert_same_ieee(ours, theirs, rtol, what):
    """Same NaN, +inf and -inf positions; finite values equal up to ``rtol``."""
    ours, theirs = np.asarray(ours, F64), np.asarray(theirs, F64)
    assert ours.shape == theirs.shape, what
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(test(ours), test(theirs), err_msg=f"{what}: {name} positions")
    finite = np.isfinite(theirs)
    scale = max(1.0, float(np.abs(theirs[finite]).max(initial=0.0)))
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=rtol, atol=rtol * scale, err_msg=what)


def _with_specials(x, kind, rng):
    x = x.copy()
    flat = x.reshape(-1)
    k = max(1, flat.size // 25)
    spots = rng.choice(flat.size, 3 * k, replace=False)
    if kind in ("nan", "mixed"):
        flat[spots[:k]] = np.nan
    if kind in ("+inf", "mixed"):
        flat[spots[k:2 * k]] = np.inf
    if kind in ("-inf", "mixed"):
        flat[spots[2 * k:]] = -np.inf
    return x


def _torch_layer(torch, layer, dtype):
    tdt = torch.float32 if dtype == F32 else torch.float64
    if isinstance(layer, nn.Conv2d):
        m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            dtype=tdt)
    elif isinstance(layer, nn.Linear):
        m = torch.nn.Linear(layer.in_features, layer.out_features, dtype=tdt)
    else:
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    with torch.no_grad():
        for p, tp in zip(layer.parameters(), m.parameters(), strict=True):
            tp.copy_(torch.from_numpy(p.data))
    return m


SPECIAL_LAYERS = {
    "Conv2d": (lambda dt: nn.Conv2d(3, 4, 3, stride=(2, 1), padding=1, dtype=dt, rng=0), (2, 3, 7, 6)),
    "MaxPool2d": (lambda dt: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 6)),
    "MaxPool2d-overlap": (lambda dt: nn.MaxPool2d(3, stride=1), (2, 2, 6, 6)),
    "Linear": (lambda dt: nn.Linear(6, 4, dtype=dt, rng=0), (5, 6)),
}


# conv2d_backward sums the per-thread weight-gradient partials with NumPy, which warns when
# +inf meets -inf there (the result is the IEEE NaN, as in PyTorch, which does not warn).
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["nan", "+inf", "-inf", "mixed"])
@pytest.mark.parametrize("name", list(SPECIAL_LAYERS))
def test_layers_propagate_nan_and_inf_like_torch(name, kind, dtype, rng):
    torch = pytest.importorskip("torch")
    make, shape = SPECIAL_LAYERS[name]
    layer = make(dtype)
    x = _with_specials(rng.standard_normal(shape).astype(dtype), kind, rng)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    m = _torch_layer(torch, layer, dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = m(tx)
    ty.backward(torch.from_numpy(dy))
    rtol = 1e-4 if dtype == F32 else 1e-12
    assert_same_ieee(y, ty.detach().numpy(), rtol, "forward")
    assert_same_ieee(dx, tx.grad.numpy(), rtol, "input gradient")
    for p, tp in zip(layer.parameters(), m.parameters()):
        assert_same_ieee(p.grad, tp.grad.numpy(), rtol, "parameter gradient")
    if kind != "-inf":
        assert not np.isfinite(y).all()  # the specials really reached the output


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # +inf - +inf in the max shift
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "row, value, label",
    [(0, np.nan, "nan-anywhere"), (0, np.inf, "+inf"), (0, -np.inf, "-inf-at-target"), (2, -np.inf, "-inf-elsewhere")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_cross_entropy_with_nan_and_inf_logits_like_torch(row, value, label, dtype, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((4, 5)).astype(dtype)
    target = np.array([1, 0, 3, 4])
    logits[row, 1] = value  # row 0's target is class 1
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, target)
    grad = loss_fn.backward()
    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target))
    tloss.backward()
    rtol = 1e-5 if dtype == F32 else 1e-12
    assert_same_ieee(loss, tloss.item(), rtol, "loss")
    assert_same_ieee(grad, tl.grad.numpy(), rtol, "gradient")


# ---------------------------------------------------------------------------------------
# 64-bit index arithmetic
# ---------------------------------------------------------------------------------------


def test_max_pool_indices_past_two_to_the_31():
    """A plane of 5 x (2**29 + 3) = 2.7e9 > 2**31 elements, with winners whose flat index h*W + w passes 2**31.

    ``np.zeros`` maps untouched pages lazily to the kernel's zero page, and the 1x4 windows
    with a huge stride read only 24 elements: the 10 GiB input costs a few pages.
    """
    H, W = 5, 2**29 + 3
    try:
        x = np.zeros((1, 1, H, W), F32)
    except MemoryError:
        pytest.skip("the OS refuses a 10 GiB virtual allocation")
    try:
        # Windows: rows 0, 2, 4 x columns [0, 4) and [2**28, 2**28 + 4).
        winners = {(0, 0): (0, 3, 1.0), (0, 1): (0, 2**28 + 1, 2.0), (1, 0): (2, 0, 3.0),
                   (1, 1): (2, 2**28 + 3, 4.0), (2, 0): (4, 2, 5.0), (2, 1): (4, 2**28 + 2, np.nan)}
        for h, w, v in winners.values():
            x[0, 0, h, w] = v
        x[0, 0, 4, 2**28] = 9.0  # NaN in the same window wins regardless
        x[0, 0, 4, 3] = 5.0  # a tie after the winner: the first one keeps the index
        y, idx = fc.max_pool2d(x, (1, 4), stride=(2, 2**28))
        assert y.shape == idx.shape == (1, 1, 3, 2)
        for (oh, ow), (h, w, v) in winners.items():
            assert idx[0, 0, oh, ow] == h * W + w
            np.testing.assert_array_equal(y[0, 0, oh, ow], F32(v))
        assert idx.max() == 4 * W + 2**28 + 2 > 2**31
    finally:
        del x


def _typed(kernel, argtypes):
    """Numba's type inference of ``kernel`` (no compilation): the integer types of its variables,
    and ``(dispatcher, argtypes)`` of every compiled function it calls (its inline helpers)."""
    from numba.core import compiler, typed_passes
    from numba.core import ir as numba_ir
    from numba.core.registry import cpu_target

    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
    func_ir = compiler.run_frontend(kernel.py_func)
    result = typed_passes.type_inference_stage(cpu_target.typing_context, cpu_target.target_context, func_ir,
                                               argtypes, None)
    ints = {str(t) for t in result.typemap.values()
            if isinstance(t, numba.types.Integer) and not isinstance(t, numba.types.Literal)}
    callees = []
    for expr, sig in result.calltypes.items():
        if isinstance(expr, numba_ir.Expr) and expr.op == "call":
            ftype = result.typemap.get(expr.func.name)
            if isinstance(ftype, numba.types.Dispatcher):
                callees.append((ftype.dispatcher, tuple(sig.args)))
            elif isinstance(ftype, numba.types.Function):  # an @overload of fastconv's: its implementation
                for template in ftype.templates:
                    func = getattr(template, "_overload_func", None)
                    if func is not None and (func.__module__ or "").startswith("fastconv.kernels"):
                        callees += [(d, tuple(a)) for d, a in template._impl_cache.values() if d is not None]
    return ints, callees


def _kernel_modules():
    import importlib
    import pkgutil

    import fastconv.kernels

    return [importlib.import_module(f"fastconv.kernels.{m.name}") for m in pkgutil.iter_modules(fastconv.kernels.__path__)]


def _defined_kernels():
    """``{"module.function": dispatcher}`` of every compiled function defined in :mod:`fastconv.kernels`."""
    import inspect

    found = {}
    for module in _kernel_modules():
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and inspect.getmodule(obj.py_func) is module:
                found[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = obj
    return found


@functools.lru_cache(maxsize=None)
def _audit():
    """Integer types found in every kernel the strategy registry names, and in every helper they call.

    Every strategy is run once on small float32 inputs (the walk of ``tests/_strategies.py``
    over the case table) so that each registered kernel has a compiled signature to type.
    Returns ``{"module.function": set of integer type names}``.
    """
    from fastconv import plan as P

    rng = np.random.default_rng(0)
    reached, run = set(), set()
    for _, cpu, plan in walk.conv_plans(cases.CONV_PLAN_ROWS, F32):
        if not {(cpu, s) for s in plan.strategies()} <= run:  # each strategy on each CPU (register width)
            run |= {(cpu, s) for s in walk.run_conv(plan, rng)}
    reached |= {s for _, s in run}
    for _, plan in walk.pool_plans(cases.POOL_ROWS, F32):
        reached |= walk.run_pool(plan, rng)
    reached |= walk.run_pool_variants(cases.AVG_POOL_ROWS, cases.ADAPTIVE_POOL_ROWS, F32, rng)
    reached |= walk.run_elementwise_and_dense(F32, rng)
    reached |= walk.run_norm(F32, rng)
    assert reached == set(P.STRATEGIES.values()), "the walk missed some strategies"
    names = {id(d): n for n, d in _defined_kernels().items()}
    todo = [(P.kernel(k), tuple(sig)) for s in P.STRATEGIES.values() for k in s.kernels
            for sig in P.kernel(k).signatures if any(getattr(t, "dtype", None) == numba.float32 for t in sig)]
    # The pack's 4-lane tile serves float64 in 256-bit registers only (the walk is float32): type it too.
    from fastconv.kernels import pack, simd

    x64 = np.zeros((1, 5, 2, 3))
    pack.pack_nhwc_padded(simd.W256, x64, 1, 1, np.empty((1, 4, 5, 5)))
    todo += [(pack.pack_nhwc_padded, tuple(sig)) for sig in pack.pack_nhwc_padded.signatures
             if sig[0] == numba.typeof(simd.W256) and sig[1].dtype == numba.float64]
    found, done = {}, set()
    while todo:
        dispatcher, argtypes = todo.pop()
        if (id(dispatcher), argtypes) in done:
            continue
        done.add((id(dispatcher), argtypes))
        ints, callees = _typed(dispatcher, argtypes)
        # An overload's implementation is a closure, not a module-level kernel: its integers
        # count for the kernel module it is written in.
        name = names.get(id(dispatcher), f"{dispatcher.py_func.__module__.rsplit('.', 1)[1]}.<overload>")
        found.setdefault(name, set()).update(ints)
        todo.extend(callees)
    return found


def test_every_kernel_is_covered_by_the_64_bit_check():
    """The audit reaches, from the registry, every compiled function the kernel modules define."""
    assert {n for n in _audit() if not n.endswith("<overload>")} == set(_defined_kernels())


@pytest.mark.parametrize("name", sorted(_defined_kernels()))
def test_kernel_index_arithmetic_is_64_bit(name):
    """No variable of any kernel is an integer narrower than 64 bits, so no index wraps at 2**31.

    This covers what cannot be run cheaply (a convolution over more than 2**31 elements needs
    tens of GiB): every flat index, loop counter and job number is an ``int64``.
    """
    try:
        found = _audit()
    except (ImportError, AttributeError, TypeError) as exc:  # Numba internals moved
        pytest.skip(f"cannot run Numba's type inference directly: {exc!r}")
    if name not in found:
        pytest.fail(f"{name} is not reached from any strategy of fastconv.plan.STRATEGIES")
    # A scalar helper of float arithmetic only (the activations' functions) has no integer at all.
    assert found[name] <= {"int64", "uint64"}, found[name]
    assert found[name] or name.split(".")[1].startswith("_"), f"{name}: a kernel without an index"


def test_compiled_signatures_use_64_bit_integers(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    y, idx = fc.max_pool2d(x, 2)
    fc.max_pool2d_backward(y, idx.astype(np.int32), x.shape)  # narrower indices are widened first
    fc.conv2d_backward(np.ones((2, 4, 8, 8)), x, rng.standard_normal((4, 3, 3, 3)), padding=np.int32(1))
    for name, obj in _defined_kernels().items():
        for sig in obj.signatures:
            for t in sig:
                dtype = getattr(t, "dtype", t)
                if isinstance(dtype, numba.types.Integer):
                    assert dtype.bitwidth == 64, (name, sig)


# ---------------------------------------------------------------------------------------
# Requests too large to allocate
# ---------------------------------------------------------------------------------------


def _huge(shape, dtype=F32):
    """A read-only broadcast view: any shape, one element of memory."""
    return np.broadcast_to(np.ones((), dtype), shape)


# Every request is beyond the 128 TiB of a 64-bit user address space, so it fails whatever
# the overcommit policy is.
HUGE_REQUESTS = {
    "conv2d-64PiB-output": lambda: fc.conv2d(_huge((2**20, 1, 2**12, 2**12)), np.ones((1024, 1, 1, 1), F32)),
    "max_pool2d-1PiB-output": lambda: fc.max_pool2d(_huge((2**24, 1, 2**12, 2**12)), 1),
    "max_pool2d_backward-input_shape": lambda: fc.max_pool2d_backward(
        np.ones((1, 1, 1, 1), F32), np.zeros((1, 1, 1, 1), np.int64), (1, 1, 2**40, 2**40)),
    "conv2d_backward_input-input_shape": lambda: fc.conv2d_backward_input(
        np.ones((1, 1, 1, 1), F32), np.ones((1, 1, 1, 1), F32), (1, 1, 2**30, 2**30), stride=2**30),
    "conv2d_backward_weight-512TiB": lambda: fc.conv2d_backward_weight(
        np.ones((1, 1, 1, 1)), _huge((1, 1, 2**23, 2**23), F64), (1, 1, 2**23, 2**23)),
    "conv2d-padding-2**40": lambda: fc.conv2d(np.ones((1, 1, 1, 1), F32), np.ones((1, 1, 1, 1), F32), padding=2**40),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HUGE_REQUESTS))
def test_requests_too_large_to_allocate_raise_cleanly(name, rng):
    count = fc.get_num_threads()
    with pytest.raises((MemoryError, ValueError), match=re.compile("allocate|too big|dimension", re.I)):
        HUGE_REQUESTS[name]()
    assert fc.get_num_threads() == count
    x = rng.standard_normal((1, 2, 5, 5))  # the process is fine afterwards
    np.testing.assert_allclose(fc.conv2d(x, np.ones((1, 2, 1, 1))), x.sum(axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize(
    "call, arg",
    [(lambda x: fc.conv2d(x, np.ones((1, 1, 1, 1), F32), stride=2**70), "stride"),
     (lambda x: fc.conv2d(x, np.ones((1, 1, 1, 1), F32), padding=2**70), "padding"),
     (lambda x: fc.max_pool2d(x, 1, stride=2**70), "stride"),
     (lambda x: fc.max_pool2d(x, 2**71, stride=1, padding=2**70), "kernel_size|padding")],
    ids=["conv2d-stride", "conv2d-padding", "max_pool2d-stride", "max_pool2d-kernel_size-and-padding"],
)
def test_parameters_beyond_int64_are_refused_by_name(call, arg):
    with pytest.raises(ValueError, match=rf"\b({arg})\b"):
        call(np.ones((1, 1, 3, 3), F32))


# ---------------------------------------------------------------------------------------
# Memory does not grow over repeated calls
# ---------------------------------------------------------------------------------------


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_ten_thousand_small_calls_do_not_grow_memory(rng):
    x = rng.standard_normal((2, 4, 16, 16)).astype(F32)  # every output is >= 8 KiB
    w = rng.standard_normal((4, 4, 3, 3)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    dy = rng.standard_normal((2, 4, 16, 16)).astype(F32)
    y, idx = fc.max_pool2d(x, 2)
    layer = nn.Conv2d(4, 4, 3, padding=1, rng=0)
    calls = [
        lambda: fc.conv2d(x, w, b, padding=1),
        lambda: fc.conv2d_backward(dy, x, w, padding=1),
        lambda: fc.conv2d_backward_input(dy[:, :, ::2, ::2], w, x.shape, stride=2, padding=1),
        lambda: fc.max_pool2d(x, 3, 1, 1),
        lambda: fc.max_pool2d_backward(y, idx, x.shape),
        lambda: layer.backward(layer(x) * 0),
    ]
    for _ in range(50):  # warm up allocator pools
        for call in calls:
            call()
    gc.collect()
    before = _rss_bytes()
    for i in range(10_000):
        calls[i % len(calls)]()
    gc.collect()
    growth = _rss_bytes() - before
    # A leak of one output per call would be over 13 MiB (1,666 calls x 8 KiB) for every op.
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 10,000 calls"


# ---------------------------------------------------------------------------------------
# Determinism of training
# ---------------------------------------------------------------------------------------


def _train(seed, steps=4, dtype=F32):
    nn.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2, stride=1),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 3 * 3, 5, dtype=dtype),
    )  # fmt: skip
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    data = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x, y = data.standard_normal((16, 1, 8, 8)).astype(dtype), data.integers(0, 5, 16)
        opt.zero_grad()
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        opt.step()
    return losses, model.state_dict()


@pytest.mark.parametrize("dtype", DTYPES)
def test_seeded_training_is_bitwise_reproducible(dtype):
    losses, state = _train(0, dtype=dtype)
    again_losses, again_state = _train(0, dtype=dtype)
    assert again_losses == losses
    for k in state:
        assert again_state[k].tobytes() == state[k].tobytes(), k
    other_losses, _ = _train(1, dtype=dtype)  # the comparison can fail
    assert other_losses != losses


# ---------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------


@st.composite
def pool_geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(max(1, kh - 2 * ph), 9)), draw(st.integers(max(1, kw - 2 * pw), 9))
    return draw(st.integers(1, 2)), draw(st.integers(1, 2)), H, W, (kh, kw), (sh, sw), (ph, pw)


@hypothesis.given(geometry=pool_geometry(), kind=st.sampled_from(["normal", "ties", "nan", "inf"]),
                  dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_pool_indices_point_at_the_window_maximum(geometry, kind, dtype, seed):
    N, C, H, W, (kh, kw), (sh, sw), (ph, pw) = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (N, C, H, W)).astype(dtype) if kind == "ties" else rng.standard_normal((N, C, H, W))
    x = x.astype(dtype)
    if kind == "nan":
        x[rng.random(x.shape) < 0.15] = np.nan
    if kind == "inf":
        x[rng.random(x.shape) < 0.3] = rng.choice([-np.inf, np.inf])
    y, idx = fc.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
    for n, c, oh, ow in np.ndindex(y.shape):
        h0, w0 = oh * sh - ph, ow * sw - pw
        window = x[n, c, max(h0, 0):h0 + kh, max(w0, 0):w0 + kw]
        h, w = divmod(int(idx[n, c, oh, ow]), W)
        assert h0 <= h < h0 + kh and w0 <= w < w0 + kw and 0 <= h < H and 0 <= w < W  # inside the window
        value = y[n, c, oh, ow]
        np.testing.assert_array_equal(value, x[n, c, h, w])  # the value at the index
        if np.isnan(window).any():
            assert np.isnan(value)
        else:
            assert value == window.max()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    t = 1e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(dx.sum(axis=(2, 3)), dy.sum(axis=(2, 3)), rtol=t, atol=t * dy[0, 0].size)
    for n, c in np.ndindex(N, C):
        assert set(np.flatnonzero(dx[n, c])) <= set(idx[n, c].ravel().tolist())


def _conv_is_valid(N, C, Cw, H, W, F, KH, KW, sh, sw, ph, pw):
    return (C == Cw and min(C, H, W, F, KH, KW, sh, sw) > 0 and min(ph, pw, N) >= 0
            and KH <= H + 2 * ph and KW <= W + 2 * pw)


@hypothesis.given(
    dims=st.tuples(*[st.integers(0, 3)] * 2, st.integers(0, 7), st.integers(0, 7), st.integers(0, 3),
                   st.integers(0, 5), st.integers(0, 5)),
    extra_channel=st.booleans(), stride=st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    padding=st.tuples(st.integers(-1, 3), st.integers(-1, 3)), seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_conv2d_raises_or_agrees_with_the_reference(dims, extra_channel, stride, padding, seed):
    N, C, H, W, F, KH, KW = dims
    Cw = C + extra_channel
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((F, Cw, KH, KW)), rng.standard_normal(F)
    if not _conv_is_valid(N, C, Cw, H, W, F, KH, KW, *stride, *padding):
        with pytest.raises(ValueError, match=r"^conv2d: "):
            fc.conv2d(x, w, b, stride, padding)
        return
    y = fc.conv2d(x, w, b, stride, padding)
    Ho, Wo = (H + 2 * padding[0] - KH) // stride[0] + 1, (W + 2 * padding[1] - KW) // stride[1] + 1
    assert y.shape == (N, F, Ho, Wo)
    if N:
        np.testing.assert_allclose(y, ref.conv2d(x, w, b, stride, padding), rtol=1e-10, atol=1e-10)


@hypothesis.given(
    dims=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 7), st.integers(0, 7)),
    kernel=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    stride=st.one_of(st.none(), st.tuples(st.integers(-1, 3), st.integers(-1, 3))),
    padding=st.tuples(st.integers(-1, 2), st.integers(-1, 2)), seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_max_pool2d_raises_or_agrees_with_the_reference(dims, kernel, stride, padding, seed):
    N, C, H, W = dims
    (kh, kw), (ph, pw) = kernel, padding
    sh, sw = kernel if stride is None else stride
    valid = (min(C, H, W, kh, kw, sh, sw) > 0 and min(ph, pw) >= 0 and ph <= kh // 2 and pw <= kw // 2
             and kh <= H + 2 * ph and kw <= W + 2 * pw)
    x = np.random.default_rng(seed).standard_normal((N, C, H, W))
    if not valid:
        with pytest.raises(ValueError, match=r"^max_pool2d: "):
            fc.max_pool2d(x, kernel, stride, padding)
        return
    y, idx = fc.max_pool2d(x, kernel, stride, padding)
    assert y.shape == idx.shape == (N, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
    if N:
        y_ref, idx_ref = ref.max_pool2d(x, kernel, stride, padding)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
