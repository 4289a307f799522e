"""Depthwise convolution (``groups == C``, any channel multiplier): the plan's kernels against independent answers.

The three kernel families run here: ``depthwise`` (NHWC, the vector over channels),
``depthwise_rows`` (NCHW, the vector along the rows; ``depthwise_rows_strided`` for the input
gradient where the stride-1 form does not apply) and ``depthwise_flat`` (NCHW, the vector along
the flattened plane, masked loads; stride 1 with ``Wo == W`` only), each at both register widths (the
512-bit plan of this machine and the 256-bit AVX2 one, as ``test_vector.py`` does), in
float32 and float64, against

- :mod:`fastconv.reference` (textbook loops that know ``groups`` and ``dilation``), over
  hypothesis-drawn channels, multipliers, kernels, strides, paddings, dilations, batches and
  odd widths;
- float64 central finite differences of the forward pass (dx and dw);
- PyTorch (``torch.nn.functional.conv2d(groups=C)`` and autograd), when installed;

and with non-finite values (the reference's NaN and infinity pattern), memory layouts and
read-only inputs (unchanged, same answer), reproducibility.
"""


import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import njit

import fastconv
from fastconv import _validation as V
from fastconv import plan as P
from fastconv import reference as ref
from fastconv.kernels import simd
from fastconv.kernels.simd import lanes, vfma, vload, vloadz, vmask, vstore, vstorez, vzero

from _layouts import LAYOUTS, relayout

CPUS = [pytest.param(P.CPU("512-bit", 64), id="512bit"), pytest.param(P.CPU("256-bit", 32), id="256bit")]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
FAMILIES = ("depthwise", "depthwise_rows", "depthwise_flat")

#: (N, C, H, W, m, K, stride, padding, dilation): narrow maps (the NHWC kernels) and wide ones (the rows).
CASES = [
    (2, 3, 7, 9, 1, 3, 1, 1, 1),
    (2, 17, 8, 7, 2, 3, 2, 1, 2),
    (1, 16, 6, 5, 2, 2, 1, 0, 2),
    (1, 40, 7, 9, 1, 5, 3, 2, 1),
    (2, 4, 5, 40, 2, 3, 1, 1, 1),
    (1, 3, 9, 37, 1, 5, (1, 2), (2, 0), (2, 1)),
    (2, 5, 6, 8, 3, 3, 1, (1, 2), 2),  # the flat kernels: rows as wide as the input's, Ho != H, dilated
]


def _id(case):
    N, C, H, W, m, K, s, p, d = case
    return f"N{N}-C{C}-{H}x{W}-m{m}-k{K}-s{s}-p{p}-d{d}".replace(" ", "")


def _plan(case, dtype, cpu=None):
    N, C, H, W, m, K, s, p, d = case
    g = V.conv_geometry("test", (N, C, H, W), (C * m, 1, K, K), s, p, dilation=d, groups=C)
    return P.plan_conv2d(g, dtype, cpu)


def _data(g, rng):
    return tuple(rng.standard_normal(s) for s in (g.x_shape, g.w_shape, (g.F,), g.y_shape))


def _reference(g, x, w, b, dy):
    opts = ((g.sh, g.sw), (g.ph, g.pw), g.dilation, g.groups)
    return (ref.conv2d(x, w, b, *opts), ref.conv2d_backward_input(dy, w, x.shape, *opts),
            ref.conv2d_backward_weight(dy, x, w.shape, *opts), ref.conv2d_backward_bias(dy))


def _close(got, want, dtype, what):
    assert got.shape == want.shape and got.dtype == dtype, f"{what}: {got.shape} {got.dtype}"
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"


def _run_all(plan, x, w, b, dy, relu=False):
    y, packed = plan.run_forward(x, w, b, relu=relu)
    return y, plan.run_input_grad(dy, w), plan.run_weight_grad(dy, x, packed), plan.run_bias_grad(dy)


def _with(plan, family):
    """``plan`` with every conv pass on ``family`` (where that family computes the pass)."""
    import dataclasses

    g = plan.geometry
    if family == "depthwise_flat" and not (g.sh == g.sw == 1 and g.Wo == g.W):
        pytest.skip("the flat kernels compute stride 1 with Wo == W only")

    def pick(op, current):
        if op == "conv2d_input_grad" and family == "depthwise_rows":
            g = plan.geometry
            if not (g.sh == g.sw == 1 and min(P._rows_input_grad_padding(g)) >= 0):
                return P.STRATEGIES[op, "depthwise_rows_strided"]
        return P.STRATEGIES[op, family]

    return dataclasses.replace(plan, forward=pick("conv2d_forward", plan.forward),
                               input_grad=pick("conv2d_input_grad", plan.input_grad),
                               weight_grad=pick("conv2d_weight_grad", plan.weight_grad),
                               weight_grad_nonfinite=pick("conv2d_weight_grad", plan.weight_grad))


def test_depthwise_geometries_take_the_depthwise_plan():
    narrow, wide = _plan(CASES[1], np.float32, P.CPU("t", 64)), _plan(CASES[5], np.float32, P.CPU("t", 64))
    assert (narrow.forward.name, narrow.input_grad.name, narrow.weight_grad.name) == ("depthwise",) * 3
    assert (wide.forward.name, wide.input_grad.name, wide.weight_grad.name) == \
        ("depthwise_rows", "depthwise_rows_strided", "depthwise_rows")
    assert wide.bias_grad.name == "plane_sums"
    assert "depthwise_rows" in wide.explain() and "groups == C" in wide.explain()
    for case in (CASES[0], CASES[4]):  # stride 1, 'same' width, 9 and 40 wide: the flat kernels
        same = _plan(case, np.float32, P.CPU("t", 64))
        assert (same.forward.name, same.input_grad.name, same.weight_grad.name) == ("depthwise_flat",) * 3
    wider = _plan((1, 2, 3, 200, 1, 3, 1, 1, 1), np.float32, P.CPU("t", 64))  # 200 > 8 vectors: the rows
    assert (wider.forward.name, wider.input_grad.name, wider.weight_grad.name) == ("depthwise_rows",) * 3
    # groups == C == 1 is a dense convolution: the dense strategies
    assert _plan((2, 1, 7, 9, 2, 3, 1, 1, 1), np.float32).forward.name not in FAMILIES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_each_family_matches_the_reference(case, family, cpu, dtype):
    """Forward (bias, fused ReLU), dx, dw and db of each kernel family on every case."""
    plan = _with(_plan(case, dtype, cpu), family)
    x, w, b, dy = _data(plan.geometry, np.random.default_rng(0))
    want = _reference(plan.geometry, x, w, b, dy)
    got = _run_all(plan, *(a.astype(dtype) for a in (x, w, b, dy)))
    for name, g_, w_ in zip(("y", "dx", "dw", "db"), got, want):
        _close(g_, w_, dtype, f"{name} of {plan.forward.name}/{plan.input_grad.name}/{plan.weight_grad.name}")
    relu = plan.run_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), relu=True)[0]
    _close(relu, np.maximum(want[0], 0), dtype, f"fused ReLU of {plan.forward.name}")
    np.testing.assert_array_equal(plan.run_weight_grad(dy.astype(dtype), x.astype(dtype)), got[2],
                                  err_msg="dw without the forward's packed x")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.sampled_from([0, 1, 3]), C=st.sampled_from([1, 3, 16, 17, 40]), m=st.sampled_from([1, 2]),
       K=st.tuples(st.integers(1, 5), st.integers(1, 5)), s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       p=st.tuples(st.integers(0, 2), st.integers(0, 2)), d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       H=st.integers(1, 8), W=st.sampled_from([1, 3, 5, 7, 9, 13, 19]), wide=st.booleans(),
       f64=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_depthwise_matches_the_reference(N, C, m, K, s, p, d, H, W, wide, f64, seed):
    dtype = np.float64 if f64 else np.float32
    assume(all(dd * (k - 1) + 1 <= n + 2 * pp for k, dd, n, pp in zip(K, d, (H, W), p)))
    cpu = P.CPU("512-bit", 64) if wide else P.CPU("256-bit", 32)
    g = V.conv_geometry("test", (N, C, H, W), (C * m, 1) + K, s, p, dilation=d, groups=C)
    plan = P.plan_conv2d(g, dtype, cpu)
    x, w, b, dy = _data(g, np.random.default_rng(seed))
    want = _reference(g, x, w, b, dy)
    got = _run_all(plan, *(a.astype(dtype) for a in (x, w, b, dy)))
    for name, g_, w_ in zip(("y", "dx", "dw", "db"), got, want):
        _close(g_, w_, dtype, f"{name} of {plan.forward.name}/{plan.input_grad.name}/{plan.weight_grad.name} "
                              f"on {g}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=_id)
def test_gradients_match_finite_differences(case, family):
    """dx and dw of ``sum(y * r)`` against float64 central differences of the forward pass."""
    plan = _with(_plan(case, np.float64), family)
    g = plan.geometry
    rng = np.random.default_rng(1)
    x, w, _, r = _data(g, rng)

    def loss(x_, w_):
        return float(np.sum(plan.run_forward(x_, w_)[0] * r))

    dx, dw = plan.run_input_grad(r, w), plan.run_weight_grad(r, x)
    eps = 1e-6
    for what, a, grad in (("dx", x, dx), ("dw", w, dw)):
        for idx in map(tuple, rng.integers(0, a.shape, size=(12, 4))):
            up, down = a.copy(), a.copy()
            up[idx] += eps
            down[idx] -= eps
            args_up = (up, w) if what == "dx" else (x, up)
            args_down = (down, w) if what == "dx" else (x, down)
            fd = (loss(*args_up) - loss(*args_down)) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 * max(1.0, abs(fd)), f"{what}{idx}: {grad[idx]} vs {fd}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_torch(case, dtype):
    torch = pytest.importorskip("torch")
    plan = _plan(case, dtype)
    g = plan.geometry
    x, w, b, dy = (a.astype(dtype) for a in _data(g, np.random.default_rng(2)))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, (g.sh, g.sw), (g.ph, g.pw), g.dilation, g.groups)
    ty.backward(torch.from_numpy(dy))
    got = _run_all(plan, x, w, b, dy)
    for name, ours, theirs in zip(("y", "dx", "dw", "db"), got, (ty, tx.grad, tw.grad, tb.grad)):
        _close(ours, theirs.detach().numpy().astype(np.float64), dtype, f"{name} ({plan.forward.name}) vs torch")


def _same_nonfinite(got, want, what):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf positions")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf positions")
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-10, err_msg=what)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the reference's own 0 * inf
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=_id)
def test_nonfinite_values_give_the_references_answer(case, family):
    """NaN and infinities in x, w and dy: the reference's pattern (a weight of inf never meets padding in dx)."""
    plan = _with(_plan(case, np.float64), family)
    g = plan.geometry
    x, w, b, dy = _data(g, np.random.default_rng(3))
    x[0, 0, 0, 0], x[-1, -1, g.H // 2, g.W // 2] = np.inf, np.nan
    w[0, 0, 0, 0] = np.inf
    w[-1, 0, -1, -1] = -np.inf
    dy[0, -1, 0, g.Wo - 1] = np.inf
    want = _reference(g, x, w, b, dy)
    for name, got, w_ in zip(("y", "dx", "dw", "db"), _run_all(plan, x, w, b, dy), want):
        _same_nonfinite(got, w_, f"{name} of {family}")
    assert np.isfinite(want[1]).sum() > 0


@pytest.mark.parametrize("kind", LAYOUTS)
def test_layouts_and_read_only_inputs_give_the_same_answer_and_stay_unchanged(kind):
    for case in (CASES[1], CASES[4]):
        plan = _plan(case, np.float64)
        x, w, b, dy = _data(plan.geometry, np.random.default_rng(4))
        want = _run_all(plan, x, w, b, dy)
        views = [relayout(a, kind) for a in (x, w, b, dy)]
        copies = [v.copy() for v in views]
        got = _run_all(plan, *views)
        for name, g_, w_ in zip(("y", "dx", "dw", "db"), got, want):
            np.testing.assert_array_equal(g_, w_, err_msg=f"{name} from {kind} inputs ({plan.forward.name})")
        for v, c in zip(views, copies):
            np.testing.assert_array_equal(v, c, err_msg=f"a {kind} input was modified")


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_gradient_is_reproducible(family):
    plan = _with(_plan(CASES[4], np.float32), family)
    x, w, b, dy = (a.astype(np.float32) for a in _data(plan.geometry, np.random.default_rng(5)))
    first = plan.run_weight_grad(dy, x)
    for _ in range(3):
        np.testing.assert_array_equal(plan.run_weight_grad(dy, x), first)


def test_plan_refuses_mismatched_operands():
    plan = _plan(CASES[0], np.float64)
    g = plan.geometry
    with pytest.raises(ValueError, match=r"w must have shape \(3, 1, 3, 3\)"):
        plan.run_forward(np.zeros(g.x_shape), np.zeros((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="dtype float64"):
        plan.run_input_grad(np.zeros(g.y_shape, np.float32), np.zeros(g.w_shape))


def test_functional_conv2d_with_groups():
    rng = np.random.default_rng(6)
    for N, C, H, W, m, K, s, p, d in CASES:
        x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * m, 1, K, K)), rng.standard_normal(C * m)
        y = fastconv.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=C)
        np.testing.assert_allclose(y, ref.conv2d(x, w, b, s, p, d, C), rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        for got, want in zip(fastconv.conv2d_backward(dy, x, w, stride=s, padding=p, dilation=d, groups=C),
                             ref.conv2d_backward(dy, x, w, s, p, d, C)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@njit(cache=False)
def _fma_mask(width, acc, u, v, m, out):
    """out = vmask(acc + u * v, m), one vector at a time."""
    z = vzero(width, out)
    for i in range(0, out.shape[0], lanes(z)):
        vstore(out, i, vmask(vfma(vload(z, acc, i), vload(z, u, i), vload(z, v, i)), vload(z, m, i)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [pytest.param(simd.Width(n), id=f"{8 * n}bit") for n in (64, 32, 16)])
def test_vfma_and_vmask_intrinsics_match_numpy(width, dtype):
    """The two intrinsics the depthwise kernels add to ``fastconv.kernels.simd``: a masked-off lane is 0,
    even where the value is NaN or infinite (a select, not a product)."""
    rng = np.random.default_rng(7)
    acc, u, v = (rng.standard_normal(32).astype(dtype) for _ in range(3))
    u[3], v[5] = np.inf, np.nan
    m = (rng.random(32) < 0.5).astype(dtype)
    m[3] = m[5] = 0
    out = np.empty(32, dtype)
    _fma_mask(width, acc, u, v, m, out)
    exact = acc.astype(np.float64) + u.astype(np.float64) * v  # the FMA rounds once
    want = np.where(m != 0, exact, 0)
    np.testing.assert_allclose(out, want, rtol=float(np.finfo(dtype).eps) * 4, atol=float(np.finfo(dtype).eps) * 8)
    assert out[3] == 0 and out[5] == 0


@njit(cache=False)
def _masked_and_shuffled(width, a, bits, out):
    """out[0:L] = vloadz(a[3:], bits), out[L:2L] = vstorez of a[:L] over zeros, then vevens, vodds, vziplo and
    vziphi of (a[:L], a[L:2L]); the masked load starts 2 elements before ``a`` (lanes 0-1 must be off)."""
    z = vzero(width, a)
    L = lanes(z)
    vstore(out, 0, vloadz(z, a, -2, bits))
    vstorez(out, L, vload(z, a, 0), bits)
    u, v = vload(z, a, 0), vload(z, a, L)
    vstore(out, 2 * L, simd.vevens(u, v))
    vstore(out, 3 * L, simd.vodds(u, v))
    vstore(out, 4 * L, simd.vziplo(u, v))
    vstore(out, 5 * L, simd.vziphi(u, v))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [pytest.param(simd.Width(n), id=f"{8 * n}bit") for n in (64, 32, 16)])
def test_masked_and_shuffle_intrinsics_match_numpy(width, dtype):
    """The masked load and store and the lane shuffles the depthwise kernels use (deinterleaving a stride-2
    row, writing two column phases back as one row, the padding of the flat-plane kernels)."""
    L = width.nbytes // np.dtype(dtype).itemsize
    a = np.arange(1, 2 * L + 1, dtype=dtype)
    a[1] = np.nan  # a NaN in a masked-off lane stays out
    bits = sum(1 << k for k in range(2, L) if k % 3 != 1)
    on = np.array([(bits >> k) & 1 for k in range(L)], dtype=bool)
    out = np.zeros(6 * L, dtype)
    _masked_and_shuffled(width, a, bits, out)
    np.testing.assert_array_equal(out[:L], np.where(on, np.concatenate([[0, 0], a[:L - 2]]), 0))
    np.testing.assert_array_equal(out[L:2 * L], np.where(on, a[:L], 0))
    np.testing.assert_array_equal(out[2 * L:3 * L], a[0::2])
    np.testing.assert_array_equal(out[3 * L:4 * L], a[1::2])
    zipped = np.empty(2 * L, dtype)
    zipped[0::2], zipped[1::2] = a[:L], a[L:]
    np.testing.assert_array_equal(out[4 * L:], zipped)
