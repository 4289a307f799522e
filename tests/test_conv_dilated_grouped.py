"""Issue 15: convolutions with dilation, groups and padding 'same'/'valid', and the 1x1 strided fast path.

The case table's rows (``benchmarks.cases.CONV_DILATED_GROUPED`` and the issue's benchmark
rows) run through ``tests/test_conv.py`` and ``tests/test_plan.py`` against the reference
and PyTorch. Here: hypothesis over stride x padding (ints, pairs, 'same', 'valid') x
dilation x groups against PyTorch in float32 and float64 (and against the reference
without torch), float64 finite differences, the asymmetric 'same' padding, memory layouts
and read-only inputs, non-finite values, determinism, concurrency, the plan's choices and
every error of the issue's list that concerns the functional convolution.
"""

import concurrent.futures
import dataclasses
import inspect

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from _layouts import LAYOUTS, relayout

import fastconv.functional as fc
from fastconv import plan as P
from fastconv import reference as ref

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
SETTINGS = hypothesis.settings(max_examples=25, deadline=None)


def _pads(padding, k, d):
    """``((top, bottom), (left, right))`` of a padding argument, as PyTorch resolves it."""
    return ref.conv_padding(padding, tuple(k), d)


def reference(x, w, b, dy, stride, padding, dilation, groups):
    """``(y, dx, dw, db)`` by the textbook loops, an asymmetric padding applied to an explicitly padded copy."""
    (t, bo), (le, ri) = _pads(padding, w.shape[2:], ref._pair(dilation))
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (le, ri)))
    y = ref.conv2d(xp, w, b, stride, 0, dilation, groups)
    dxp, dw, db = ref.conv2d_backward(dy, xp, w, stride, 0, dilation, groups)
    return y, dxp[:, :, t:t + x.shape[2], le:le + x.shape[3]], dw, db


def _close(got, want, dtype, what):
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
    assert got.dtype == dtype and got.shape == want.shape, f"{what}: {got.dtype} {got.shape} vs {want.shape}"
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"




@st.composite
def geometries(draw):
    """A valid call: groups, dilation, stride and padding (ints, pairs, 'same' at stride 1, 'valid')."""
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    per_group = draw(st.integers(1, 3))
    C, F = groups * per_group, groups * draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = draw(st.sampled_from([1, 2, 3, (1, 2), (2, 1), (3, 2)]))
    dh, dw = ref._pair(dilation)
    stride = draw(st.sampled_from([1, 1, 2, 3, (1, 2), (2, 1)]))
    kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if kind == "same":
        stride = 1
    padding = {"int": draw(st.integers(0, 3)), "pair": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "same": "same", "valid": "valid"}[kind]
    (t, b), (le, r) = _pads(padding, (KH, KW), (dh, dw))
    # Large enough for the dilated kernel: H + t + b >= dh * (KH - 1) + 1.
    H = max(dh * (KH - 1) + 1 - t - b, 1) + draw(st.integers(0, 5))
    W = max(dw * (KW - 1) + 1 - le - r, 1) + draw(st.integers(0, 5))
    N = draw(st.integers(1, 2))
    return dict(x_shape=(N, C, H, W), w_shape=(F, C // groups, KH, KW), stride=stride, padding=padding,
                dilation=dilation, groups=groups)


def _draw_inputs(g, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g["x_shape"]).astype(np.float32).astype(np.float64)
    w = rng.standard_normal(g["w_shape"]).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(g["w_shape"][0]).astype(np.float32).astype(np.float64)
    opts = {k: g[k] for k in ("stride", "padding", "dilation", "groups")}
    y_shape = fc.conv2d_plan(g["x_shape"], g["w_shape"], g["stride"], g["padding"], dilation=g["dilation"],
                             groups=g["groups"]).geometry.y_shape
    dy = rng.standard_normal(y_shape).astype(np.float32).astype(np.float64)
    return (x, w, b, dy), tuple(a.astype(dtype) for a in (x, w, b, dy)), opts


# ------------------------------------------------------------------------- against the reference and PyTorch


@SETTINGS
@hypothesis.given(g=geometries(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_matches_reference(g, dtype, seed):
    (x, w, b, dy), (xd, wd, bd, dyd), o = _draw_inputs(g, seed, dtype)
    y_ref, dx_ref, dw_ref, db_ref = reference(x, w, b, dy, **o)
    where = f"{g} {np.dtype(dtype)}"
    _close(fc.conv2d(xd, wd, bd, **o), y_ref, dtype, f"conv2d {where}")
    dx, dw, db = fc.conv2d_backward(dyd, xd, wd, **o)
    _close(dx, dx_ref, dtype, f"dx {where}")
    _close(dw, dw_ref, dtype, f"dw {where}")
    _close(db, db_ref, dtype, f"db {where}")
    np.testing.assert_array_equal(fc.conv2d_backward_input(dyd, wd, xd.shape, **o), dx, err_msg=where)
    np.testing.assert_array_equal(fc.conv2d_backward_weight(dyd, xd, wd.shape, **o), dw, err_msg=where)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(g=geometries(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_matches_torch(g, seed, dtype):
    torch = pytest.importorskip("torch")
    _, (x, w, b, dy), o = _draw_inputs(g, seed, dtype)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, o["stride"], o["padding"], o["dilation"], o["groups"])
    ty.backward(torch.from_numpy(dy))
    where = f"{g} {np.dtype(dtype)}"
    # Both sides round in float32: the tolerance is the reference's, doubled.
    k = 2 if dtype == np.float32 else 1
    for name, got, want in (("y", fc.conv2d(x, w, b, **o), ty), *zip(("dx", "dw", "db"),
                                                                      fc.conv2d_backward(dy, x, w, **o),
                                                                      (tx.grad, tw.grad, tb.grad))):
        want = want.detach().numpy().astype(np.float64)
        scale = max(float(np.max(np.abs(want))), 1.0)
        err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale
        assert got.shape == want.shape and err <= k * TOL[np.dtype(dtype)], f"{name} {where}: error {err:.3g}"


# ------------------------------------------------------------------------- the vector kernels' groups and dilation
#: Geometries the hypothesis draws rarely reach: groups of more than one block of filters (F / G = 17 and 40 in
#: float32: two blocks, and a pair plus an odd one; in float64 with 512 bits 3 and 5 blocks), rows narrower than a
#: tile (5) and wider (23, 17: the last tile overlaps), odd channels per group, strides and dilations per axis.
VECTOR_CASES = {  # name: (x_shape, w_shape, stride, padding, dilation, groups)
    "g3-Fg17-d2-narrow": ((2, 9, 6, 5), (51, 3, 3, 3), 1, 2, 2, 3),
    "g2-Fg40-d23-wide": ((1, 6, 11, 23), (80, 3, 3, 2), 1, (2, 1), (2, 3), 2),
    "g4-Fg5-s2": ((2, 8, 13, 15), (20, 2, 3, 3), 2, 1, 1, 4),
    "d2-F33-s21": ((2, 5, 12, 17), (33, 5, 3, 3), (2, 1), 2, 2, 1),
    "g2-Cg2-d3-same": ((1, 4, 10, 17), (18, 2, 3, 3), 1, "same", 3, 2),
}
WIDTHS = [pytest.param(64, id="512bit"), pytest.param(32, id="256bit")]


@pytest.mark.parametrize("vector_bytes", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(VECTOR_CASES))
def test_the_vector_kernels_with_groups_and_dilation_match_the_reference_and_torch(name, dtype, vector_bytes):
    """Every pass of the plan of a grouped or dilated geometry, on 512- and 256-bit tiles (7 and 6 pixels),
    against the textbook loops and (when installed) PyTorch."""
    x_shape, w_shape, s, p, d, groups = VECTOR_CASES[name]
    rng = np.random.default_rng(5)
    x, w, b = (rng.standard_normal(a).astype(np.float32).astype(np.float64) for a in (x_shape, w_shape, w_shape[:1]))
    o = dict(stride=s, padding=p, dilation=d, groups=groups)
    geometry = fc.conv2d_plan(x_shape, w_shape, s, p, dtype, dilation=d, groups=groups).geometry
    plan = P.plan_conv2d(geometry, np.dtype(dtype), P.CPU("test", vector_bytes))
    vector = {"forward": P.STRATEGIES["conv2d_forward", "vector"],
              "weight_grad": P.STRATEGIES["conv2d_weight_grad", "vector"]}
    if geometry.sh == geometry.sw == 1:
        vector["input_grad"] = P.STRATEGIES["conv2d_input_grad", "vector_full"]
    plan = dataclasses.replace(plan, **vector)  # whichever the plan would choose for these small layers
    dy = rng.standard_normal(geometry.y_shape).astype(np.float32).astype(np.float64)
    want = reference(x, w, b, dy, **o)
    xd, wd, bd, dyd = (a.astype(dtype) for a in (x, w, b, dy))
    got = (plan.run_forward(xd, wd, bd)[0], plan.run_input_grad(dyd, wd), plan.run_weight_grad(dyd, xd),
           plan.run_bias_grad(dyd))
    where = f"{name} {np.dtype(dtype)} {8 * vector_bytes}-bit ({plan.input_grad.name} input grad)"
    for what, g, r in zip(("y", "dx", "dw", "db"), got, want):
        _close(g, r, dtype, f"{what} {where}")
    try:
        import torch
    except ImportError:
        return
    tx, tw = (torch.from_numpy(a.copy()).requires_grad_() for a in (xd, wd))
    tpad = p if isinstance(p, str) else ref._pair(p)
    ty = torch.nn.functional.conv2d(tx, tw, torch.from_numpy(bd), s, tpad, d, groups)
    ty.backward(torch.from_numpy(dyd))
    k = 2 if dtype == np.float32 else 1
    for what, g, t in zip(("y", "dx", "dw"), got, (ty, tx.grad, tw.grad)):
        t = t.detach().numpy().astype(np.float64)
        err = float(np.max(np.abs(g - t))) / max(float(np.max(np.abs(t))), 1.0)
        assert err <= k * TOL[np.dtype(dtype)], f"{what} {where} against torch: error {err:.3g}"


# ------------------------------------------------------------------------- the flat kernels' tiles
#: The flat kernels' register tiles hold 8 (512-bit) or 4 filters x 3 vectors of the plane (4 x 6 for groups of at
#: most 4 filters): filter counts that are not a multiple of the tile (6, 13, and an odd 3), flat planes shorter
#: than one tile (a 3 x 4 map) or not a whole number of them (the masked last vectors), dilation.
FLAT_CASES = {  # name: (x_shape, w_shape, padding, dilation, groups)
    "g2-Fg6-tiny-plane": ((2, 4, 3, 4), (12, 2, 3, 3), 1, 1, 2),
    "g3-Fg3-d2": ((1, 6, 9, 10), (9, 2, 3, 3), 2, 2, 3),
    "F13-C3": ((2, 3, 11, 13), (13, 3, 3, 3), 1, 1, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(FLAT_CASES))
def test_the_flat_kernels_short_tiles_and_plane_tails_match_the_reference(name, dtype):
    x_shape, w_shape, p, d, groups = FLAT_CASES[name]
    rng = np.random.default_rng(6)
    x, w, b = (rng.standard_normal(a).astype(np.float32).astype(np.float64) for a in (x_shape, w_shape, w_shape[:1]))
    o = dict(stride=1, padding=p, dilation=d, groups=groups)
    plan = fc.conv2d_plan(x_shape, w_shape, 1, p, dtype, dilation=d, groups=groups)
    kind = "flat" if groups == 1 and d == 1 else "grouped_flat"
    assert (plan.forward.name, plan.weight_grad.name) == (kind, kind)
    dy = rng.standard_normal(plan.geometry.y_shape).astype(np.float32).astype(np.float64)
    want = reference(x, w, b, dy, **o)
    xd, wd, bd, dyd = (a.astype(dtype) for a in (x, w, b, dy))
    got = (plan.run_forward(xd, wd, bd)[0], plan.run_input_grad(dyd, wd), plan.run_weight_grad(dyd, xd))
    for what, g, r in zip(("y", "dx", "dw"), got, want):
        _close(g, r, dtype, f"{what} {name} {np.dtype(dtype)}")
    _close(plan.run_forward(xd, wd, bd, relu=True)[0], np.maximum(want[0], 0), dtype, f"relu {name}")


# ------------------------------------------------------------------------- finite differences
FD_CASES = {  # name: (x_shape, w_shape, stride, padding, dilation, groups)
    "dilated": ((1, 2, 6, 7), (2, 2, 3, 2), 1, 1, 2, 1),
    "dilated-pad-over-kernel": ((1, 2, 6, 7), (2, 2, 2, 2), 1, 3, 2, 1),  # dx by the dilation phases
    "dilated-strided": ((1, 2, 7, 7), (2, 2, 2, 2), 2, 1, (2, 3), 1),
    "grouped": ((2, 4, 5, 5), (4, 2, 2, 3), (1, 2), (1, 0), 1, 2),
    "grouped-dilated-same-even": ((1, 6, 6, 5), (3, 2, 2, 3), 1, "same", (1, 2), 3),
    "same-even-kernel": ((1, 2, 5, 6), (3, 2, 4, 2), 1, "same", 1, 1),
    "pointwise-s2": ((1, 3, 25, 24), (2, 3, 1, 1), 2, 0, 1, 1),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_gradients_match_finite_differences(name, rng, numgrad, one_thread):
    x_shape, w_shape, s, p, d, groups = FD_CASES[name]
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    dy = rng.standard_normal(fc.conv2d(x, w, b, s, p, d, groups).shape)

    def loss():
        return np.sum(fc.conv2d(x, w, b, s, p, d, groups) * dy)

    dx, dw, db = fc.conv2d_backward(dy, x, w, s, p, d, groups)
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(dw, numgrad(loss, w), rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(db, numgrad(loss, b), rtol=1e-6, atol=1e-7, err_msg=name)


# ------------------------------------------------------------------------- 'same' and 'valid'


@pytest.mark.parametrize("k, d", [((2, 2), 1), ((4, 3), 1), ((2, 3), (3, 2)), ((3, 3), 2), ((1, 5), 1)],
                         ids=["k2", "k4x3", "k2x3-d3x2", "k3-d2", "k1x5"])
def test_same_keeps_the_size_and_pads_the_extra_zero_at_the_bottom_right(k, d, rng):
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3) + k)
    y = fc.conv2d(x, w, padding="same", dilation=d)
    assert y.shape == (2, 4, 7, 6)
    (t, bo), (le, ri) = _pads("same", k, ref._pair(d))
    assert bo - t in (0, 1) and ri - le in (0, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (le, ri)))
    np.testing.assert_allclose(y, ref.conv2d(xp, w, None, 1, 0, d), rtol=1e-12, atol=1e-12)


def test_valid_is_no_padding(rng):
    x, w = rng.standard_normal((1, 2, 6, 7)), rng.standard_normal((3, 2, 3, 2))
    np.testing.assert_array_equal(fc.conv2d(x, w, padding="valid"), fc.conv2d(x, w, padding=0))
    dy = rng.standard_normal((1, 3, 4, 6))
    for got, want in zip(fc.conv2d_backward(dy, x, w, padding="valid"), fc.conv2d_backward(dy, x, w)):
        np.testing.assert_array_equal(got, want)


def test_the_plan_of_an_odd_same_padding_is_that_of_the_extended_input():
    p = fc.conv2d_plan((1, 2, 7, 6), (3, 2, 2, 4), padding="same")
    assert p.geometry.x_shape == (1, 2, 8, 7) and (p.geometry.ph, p.geometry.pw) == (0, 1)
    assert p.geometry.y_shape == (1, 3, 7, 6)
    assert fc.conv2d_plan((1, 2, 7, 6), (3, 2, 3, 5), padding="same").geometry.x_shape == (1, 2, 7, 6)


# ------------------------------------------------------------------------- layouts, purity, non-finite values
def _calls(o):
    return {
        "conv2d": lambda x, w, b, dy: [fc.conv2d(x, w, b, **o)],
        "conv2d_backward": lambda x, w, b, dy: list(fc.conv2d_backward(dy, x, w, **o)),
        "conv2d_backward_input": lambda x, w, b, dy: [fc.conv2d_backward_input(dy, w, x.shape, **o)],
        "conv2d_backward_weight": lambda x, w, b, dy: [fc.conv2d_backward_weight(dy, x, w.shape, **o)],
    }


LAYOUT_GEOMETRIES = {  # one of each strategy family
    "grouped": ((2, 4, 7, 8), (6, 2, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)),
    "grouped-flat": ((2, 6, 7, 8), (6, 2, 3, 2), dict(stride=1, padding=(2, 1), dilation=(1, 2), groups=3)),
    "grouped-vector": ((2, 32, 5, 9), (32, 16, 3, 3), dict(stride=1, padding=1, dilation=(1, 2), groups=2)),
    "dilated-flat": ((2, 3, 13, 12), (4, 3, 3, 3), dict(stride=1, padding="same", dilation=(3, 2), groups=1)),
    "phases-pad-over-kernel": ((2, 3, 7, 8), (4, 3, 2, 3), dict(stride=1, padding=(3, 4), dilation=2, groups=1)),
    "same-even-dilated": ((2, 3, 7, 8), (4, 3, 2, 3), dict(stride=1, padding="same", dilation=(1, 3), groups=1)),
    "pointwise-s2": ((2, 3, 25, 24), (4, 3, 1, 1), dict(stride=2, padding=0, dilation=1, groups=1)),
}


def _layout_inputs(name, dtype):
    x_shape, w_shape, o = LAYOUT_GEOMETRIES[name]
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, w_shape[:1]))
    dy = rng.standard_normal(fc.conv2d(x, w, **o).shape).astype(dtype)
    return (x, w, b, dy), o


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(LAYOUT_GEOMETRIES))
def test_any_memory_layout_gives_the_same_result_and_inputs_are_not_modified(name, layout, dtype):
    inputs, o = _layout_inputs(name, dtype)
    for op, call in _calls(o).items():
        expected = call(*inputs)
        arranged = [relayout(a, layout) for a in inputs]
        before = [a.copy() for a in arranged]
        results = call(*arranged)
        for got, want in zip(results, expected):
            assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous, (op, name)
            np.testing.assert_array_equal(got, want, err_msg=f"{op} {name} {layout}")
            assert not any(np.shares_memory(got, a) for a in arranged), (op, name)
        for a, b in zip(arranged, before):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {name} {layout} modified an input")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in the reference too
@pytest.mark.parametrize("name", list(LAYOUT_GEOMETRIES))
def test_non_finite_values_give_the_reference_answer(name):
    """NaN and infinities in x, w and dy: the same NaN/inf pattern and finite values as the textbook loops."""
    (x, w, b, dy), o = _layout_inputs(name, np.float64)
    x[0, 0, 1, 1], x[1, -1, 2, 0] = np.inf, np.nan
    w[0, 0, 0, 0], w[-1, -1, -1, -1] = -np.inf, np.nan
    dy[1, 0, 0, 1] = np.inf
    want = reference(x, w, b, dy, **o)
    got = (fc.conv2d(x, w, b, **o), *fc.conv2d_backward(dy, x, w, **o))
    for what, g, r in zip(("y", "dx", "dw", "db"), got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{name} {what}: NaN pattern")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(r), err_msg=f"{name} {what}: +inf pattern")
        finite = np.isfinite(r)
        np.testing.assert_allclose(g[finite], r[finite], rtol=1e-12, atol=1e-12, err_msg=f"{name} {what}")


def test_one_non_finite_weight_reaches_only_the_inputs_it_touches():
    """The gather never multiplies padding: an infinite tap of a grouped kernel spreads no NaN over dx."""
    w = np.ones((4, 2, 3, 3))
    w[1, 0, 0, 0] = np.inf
    dx = fc.conv2d_backward_input(np.ones((1, 4, 5, 5)), w, (1, 4, 5, 5), padding=1, groups=2)
    want = ref.conv2d_backward_input(np.ones((1, 4, 5, 5)), w, (1, 4, 5, 5), 1, 1, 1, 2)
    np.testing.assert_array_equal(dx, want)
    assert np.isinf(dx[0, 0]).any() and np.isfinite(dx[0, 1:]).all()


# ------------------------------------------------------------------------- determinism, threads, concurrency


@pytest.mark.parametrize("name", list(LAYOUT_GEOMETRIES))
def test_bitwise_reproducible_and_the_same_on_one_and_two_threads(name):
    """Each thread count gives bitwise the same results call after call; y, dx and db are the same on one
    and two threads, dw (whose rows the vector kernel splits into one partial per thread) close."""
    (x, w, b, dy), o = _layout_inputs(name, np.float32)
    runs = {}
    before = fc.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            fc.set_num_threads(min(threads, before))
            runs.setdefault(threads, []).append((fc.conv2d(x, w, b, **o), *fc.conv2d_backward(dy, x, w, **o)))
    finally:
        fc.set_num_threads(before)
    for threads, (first, again) in runs.items():
        for what, got, want in zip(("y", "dx", "dw", "db"), again, first):
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {what}, {threads} threads")
    for what, got, want in zip(("y", "dx", "dw", "db"), runs[2][0], runs[1][0]):
        if what == "dw":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} dw, 1 and 2 threads")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {what}, 1 and 2 threads")


def test_concurrent_calls_give_the_serial_results():
    inputs = {name: _layout_inputs(name, np.float32) for name in LAYOUT_GEOMETRIES}

    def run(name):
        (x, w, b, dy), o = inputs[name]
        return name, (fc.conv2d(x, w, b, **o), *fc.conv2d_backward(dy, x, w, **o))

    serial = dict(run(name) for name in inputs)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for name, results in pool.map(run, list(inputs) * 3):
            for got, want in zip(results, serial[name]):
                np.testing.assert_array_equal(got, want, err_msg=name)


# ------------------------------------------------------------------------- the plan's choices


@pytest.mark.parametrize("vector_bytes, expected", [(64, "vector"), (32, "grouped_flat")], ids=["512bit", "256bit"])
def test_grouped_convolutions_take_the_flat_kernels_with_16_registers(vector_bytes, expected):
    """16 groups of 16 filters fill a vector either way; with 16 registers the flat kernels are chosen anyway."""
    from fastconv import _validation as V

    g = V.conv_geometry("conv2d", (2, 256, 14, 14), (256, 16, 3, 3), (1, 1), (1, 1), groups=16)
    p = P.plan_conv2d(g, np.float32, P.CPU("test", vector_bytes))
    assert (p.forward.name, p.weight_grad.name) == (expected, expected)
    assert p.input_grad.name == ("vector_full" if expected == "vector" else "grouped_flat")


@pytest.mark.parametrize("x_shape, w_shape, opts, forward, input_grad, weight_grad", [
    ((2, 8, 9, 9), (8, 2, 3, 3), dict(padding=1, groups=4), "grouped_flat", "grouped_flat", "grouped_flat"),
    ((2, 32, 9, 9), (32, 16, 3, 3), dict(padding=1, groups=2), "vector", "vector_full", "vector"),
    ((2, 8, 9, 9), (32, 4, 3, 3), dict(padding=1, groups=2), "vector", "grouped_flat", "vector"),
    ((2, 8, 9, 9), (8, 2, 3, 3), dict(stride=2, padding=1, groups=4), "vector", "grouped_gather", "vector"),
    ((2, 8, 9, 9), (8, 8, 3, 3), dict(stride=2, dilation=2), "vector", "grouped_gather", "vector"),
    ((2, 4, 9, 9), (4, 4, 3, 3), dict(padding="same", dilation=2), "grouped_flat", "grouped_flat",
     "grouped_flat"),
    ((2, 16, 9, 9), (16, 16, 3, 3), dict(padding="same", dilation=2), "vector", "vector_full", "vector"),
    ((2, 4, 20, 20), (4, 4, 3, 3), dict(padding="same", dilation=4), "grouped_flat", "grouped_flat",
     "grouped_flat"),
    ((2, 4, 9, 9), (4, 4, 2, 2), dict(padding=3, dilation=2), "grouped_flat", "dilation_phases",
     "grouped_flat"),
    ((2, 8, 9, 9), (8, 4, 1, 1), dict(padding=1, groups=2), "grouped_flat", "grouped_gather", "grouped_flat"),
    ((2, 8, 28, 28), (16, 8, 1, 1), dict(stride=2), "pointwise_strided", "pointwise_strided",
     "pointwise_strided_nt"),
], ids=["groups-few-filters", "groups", "groups-few-channels", "groups-strided", "dilated-strided", "dilated-few-filters", "dilated",
        "dilated-d4", "dilated-pad-over-kernel", "grouped-pad-over-kernel", "1x1-s2"])
def test_the_plan_picks_and_explains_the_new_strategies(x_shape, w_shape, opts, forward, input_grad, weight_grad):
    """The vector kernels where a group's filters (the input gradient: channels) fill a vector, 512- or 256-bit;
    with 16 vector registers the flat kernels for every grouped convolution at stride 1 (measured faster)."""
    if P.HOST.vector_bytes < 64 and opts.get("groups", 1) > 1 and opts.get("stride", 1) == 1:
        forward = weight_grad = "grouped_flat"
        input_grad = "grouped_flat" if input_grad == "vector_full" else input_grad
    p = fc.conv2d_plan(x_shape, w_shape, dtype=np.float32, **{"stride": 1, **opts})
    assert (p.forward.name, p.input_grad.name, p.weight_grad.name) == (forward, input_grad, weight_grad)
    text = p.explain()
    assert forward in text and input_grad in text and weight_grad in text
    if "groups" in opts or "dilation" in opts:
        assert f"groups {opts.get('groups', 1)}" in text


def test_small_1x1_strided_planes_keep_the_vector_strategies():
    p = fc.conv2d_plan((16, 512, 14, 14), (1024, 512, 1, 1), stride=2)
    assert p.geometry.Ho * p.geometry.Wo < P.TUNING.strided_pointwise_pixels
    assert p.forward.name != "pointwise_strided" and p.weight_grad.name != "pointwise_strided_nt"


def test_the_1x1_strided_input_grad_is_zero_where_no_window_reads():
    dy, w = np.ones((1, 2, 13, 12)), np.ones((2, 3, 1, 1))
    dx = fc.conv2d_backward_input(dy, w, (1, 3, 26, 24), stride=2)
    assert fc.conv2d_plan((1, 3, 26, 24), (2, 3, 1, 1), stride=2).input_grad.name == "pointwise_strided"
    assert np.all(dx[:, :, ::2, ::2] == 2) and np.all(dx[:, :, 1::2, :] == 0) and np.all(dx[:, :, :, 1::2] == 0)


def test_depthwise_is_left_to_its_own_plan():
    """groups == C goes to the depthwise plan, not to these strategies."""
    p = fc.conv2d_plan((1, 4, 8, 8), (8, 1, 3, 3), padding=1, groups=4)
    assert p.forward.name not in ("vector", "grouped_flat")


# ------------------------------------------------------------------------- errors

ERRORS = [  # (call, exception, message pattern)
    (lambda x, w: fc.conv2d(x, w[:, :3], groups=3), ValueError,
     r"conv2d: groups=3 must divide both the input channels \(4\) and the filters \(6\)"),
    (lambda x, w: fc.conv2d(x, np.ones((5, 2, 3, 3)), groups=2), ValueError,
     r"conv2d: groups=2 must divide both the input channels \(4\) and the filters \(5\).*w.shape=\(5, 2, 3, 3\)"),
    (lambda x, w: fc.conv2d(x, w, groups=2), ValueError,
     r"conv2d: w has 4 input channels but x has 4 \(4 / groups=2\).*x.shape=\(2, 4, 9, 9\)"),
    (lambda x, w: fc.conv2d(x, w, groups=0), ValueError, r"conv2d: groups must be positive; got 0"),
    (lambda x, w: fc.conv2d(x, w, groups=2.0), TypeError, r"conv2d: groups must be an int"),
    (lambda x, w: fc.conv2d(x, w, stride=2, padding="same"), ValueError,
     r"conv2d: padding='same' needs stride 1 .*stride=\(2, 2\)"),
    (lambda x, w: fc.conv2d(x, w, stride=(1, 2), padding="same"), ValueError, r"stride=\(1, 2\)"),
    (lambda x, w: fc.conv2d(x, w, padding="full"), ValueError,
     r"conv2d: padding must be an int, a pair \(h, w\), 'same' or 'valid'; got 'full'"),
    (lambda x, w: fc.conv2d(x, w, padding="SAME"), ValueError, r"'same' or 'valid'; got 'SAME'"),
    (lambda x, w: fc.conv2d(x, w, dilation=0), ValueError, r"conv2d: dilation must be positive; got 0"),
    (lambda x, w: fc.conv2d(x, w, dilation=(1, -2)), ValueError, r"conv2d: dilation must be positive"),
    (lambda x, w: fc.conv2d(x, w, dilation=1.5), TypeError, r"conv2d: dilation must be an int"),
    (lambda x, w: fc.conv2d(x, w, dilation=5), ValueError,
     r"conv2d: dilated kernel \(11, 11\) is larger than the padded input \(9, 9\).*dilation=\(5, 5\)"),
    (lambda x, w: fc.conv2d(x, w, padding=1, dilation=(1, 6)), ValueError,
     r"dilated kernel \(3, 13\) is larger than the padded input \(11, 11\)"),
    (lambda x, w: fc.conv2d_backward_input(np.ones((2, 6, 9, 9)), w, (2, 4, 9, 9), stride=2, padding="same"),
     ValueError, r"conv2d_backward_input: padding='same' needs stride 1"),
    (lambda x, w: fc.conv2d_backward_weight(np.ones((2, 6, 5, 5)), x, (6, 4, 3, 3), dilation=5), ValueError,
     r"conv2d_backward_weight: dilated kernel \(11, 11\) is larger than the padded input"),
    (lambda x, w: fc.conv2d_backward(np.ones((2, 6, 9, 9)), x, w[:, :2], padding="valid", groups=4), ValueError,
     r"conv2d_backward: groups=4 must divide both the input channels \(4\) and the filters \(6\)"),
    (lambda x, w: fc.conv2d_backward(np.ones((2, 6, 7, 7)), x, w, padding="same", dilation=2), ValueError,
     r"conv2d_backward: dy must have shape \(2, 6, 9, 9\)"),  # 'same' keeps the input's 9 x 9
    (lambda x, w: fc.conv2d_plan((2, 4, 9, 9), (6, 4, 3, 3), padding="half"), ValueError,
     r"conv2d_plan: padding must be an int, a pair \(h, w\), 'same' or 'valid'; got 'half'"),
    (lambda x, w: fc.conv2d_plan((2, 4, 9, 9), (6, 4, 3, 3), groups=2), ValueError,
     r"conv2d_plan: w_shape has 4 input channels but x_shape has 4 \(4 / groups=2\)"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS, ids=[f"error-{i}" for i in range(len(ERRORS))])
def test_errors_name_the_function_the_argument_and_the_shapes(call, exc, match, rng):
    x, w = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((6, 4, 3, 3))
    with pytest.raises(exc, match=match):
        call(x, w)


def test_the_signature_is_pytorchs():
    assert list(inspect.signature(fc.conv2d).parameters) == ["x", "w", "b", "stride", "padding", "dilation", "groups"]
    for func in (fc.conv2d_backward_input, fc.conv2d_backward_weight, fc.conv2d_backward):
        params = inspect.signature(func).parameters
        assert list(params)[-4:] == ["stride", "padding", "dilation", "groups"], func.__name__
        assert [params[k].default for k in ("stride", "padding", "dilation", "groups")] == [1, 0, 1, 1]
    params = inspect.signature(fc.conv2d_plan).parameters
    assert params["dilation"].kind is inspect.Parameter.KEYWORD_ONLY and params["groups"].default == 1
