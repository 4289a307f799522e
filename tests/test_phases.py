"""The strided input gradient on the phases' vector kernel (``fastconv.kernels.phases``, strategy ``phases_vector``).

Against the pure-NumPy reference (float64 data exactly representable in float32) and PyTorch, in
float32 and float64, on 512- and 256-bit vectors: odd sizes, every stride up to 3 and strides above the
kernel (positions no tap reaches stay 0), channel counts that are not whole vectors, an odd number of
vector blocks, rows shorter than a tile, paddings past the kernel, and the transposed convolution
(``conv_transpose2d``, whose forward pass this is) with ``output_padding``. The layouts of the weight
pack are checked against their definition.
"""

import numpy as np
import pytest

import fastconv as fc
from fastconv import _validation as V
from fastconv import plan as P
from fastconv import reference as R
from fastconv.kernels import phases

import _strategies as walk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CPUS = {f"{8 * cpu.vector_bytes}bit": cpu for cpu in walk.CPUS}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): 3e-6, np.dtype(np.float64): 1e-13}

# (x_shape, F, kernel, stride, padding): the convolution whose input gradient is computed.
CASES = {
    "transposed-4x4-s2": ((2, 20, 8, 8), 33, 4, 2, 1),  # the DCGAN/U-Net decoder layer, C not a vector
    "3x3-s2-odd": ((2, 17, 9, 11), 16, 3, 2, 1),
    "3x3-s2-odd-blocks": ((1, 40, 7, 6), 9, 3, 2, 1),  # 3 blocks of 16 dx channels in float32
    "s3-k5": ((1, 8, 13, 14), 6, 5, 3, 1),
    "s2x3-k4x5": ((1, 5, 12, 13), 7, (4, 5), (2, 3), (2, 1)),
    "stride-over-kernel": ((2, 4, 10, 11), 5, 2, 3, 0),  # phase rows and columns no tap reaches
    "1x2-s3x2": ((1, 3, 8, 9), 4, (1, 2), (3, 2), 0),
    "narrow-rows": ((3, 6, 3, 2), 5, 3, 2, 1),  # rows shorter than a tile
    "padding-past-kernel": ((1, 4, 5, 6), 3, 3, 2, (3, 2)),
    "stem-7x7-s2": ((1, 2, 17, 16), 36, 7, 2, 3),
    "1x1-s2-padded": ((2, 9, 7, 7), 5, 1, 2, 1),
}


def _plan(case, dtype, cpu=None):
    x_shape, F, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    g = V.conv_geometry("test", x_shape, (F, x_shape[1], kh, kw), s, p)
    return P.plan_conv2d(g, dtype, cpu)


def _data(plan, seed=0):
    """dy and w with float64 values that float32 holds exactly, so both dtypes compare with one reference."""
    g = plan.geometry
    rng = np.random.default_rng(seed)
    dy, w = (rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in (g.y_shape, g.w_shape))
    return dy, w


def _check(got, want, dtype, what):
    scale = max(float(np.max(np.abs(want))), 1.0)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("cpu", list(CPUS.values()), ids=list(CPUS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_phases_vector_matches_reference(name, dtype, cpu):
    plan = _plan(CASES[name], dtype, cpu)
    assert plan.input_grad.name == "phases_vector", plan.explain()
    g = plan.geometry
    dy, w = _data(plan)
    want = R.conv2d_backward_input(dy, w, g.x_shape, (g.sh, g.sw), (g.ph, g.pw))
    got = plan.run_input_grad(dy.astype(dtype), w.astype(dtype))
    assert got.dtype == dtype and got.shape == g.x_shape and got.flags.c_contiguous
    _check(got, want, dtype, f"{name} on {cpu.name}")


@st.composite
def strided_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(2, 3))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    H = draw(st.integers(max(1, kh - 2 * ph), 12))
    W = draw(st.integers(max(1, kw - 2 * pw), 12))
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(4, 35)), H, W)
    return x_shape, draw(st.integers(1, 20)), (kh, kw), (sh, sw), (ph, pw)


@settings(max_examples=25, deadline=None)
@given(case=strided_cases(), dtype=st.sampled_from([np.float32, np.float64]), cpu=st.sampled_from(list(CPUS)))
def test_hypothesis_phases_vector_matches_reference(case, dtype, cpu):
    plan = _plan(case, dtype, CPUS[cpu])
    hypothesis.assume(plan.input_grad.name == "phases_vector")
    g = plan.geometry
    dy, w = _data(plan)
    want = R.conv2d_backward_input(dy, w, g.x_shape, (g.sh, g.sw), (g.ph, g.pw))
    _check(plan.run_input_grad(dy.astype(dtype), w.astype(dtype)), want, dtype, f"{case} on {cpu}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["transposed-4x4-s2", "s3-k5", "stride-over-kernel", "s2x3-k4x5"])
def test_phases_vector_matches_torch(name, dtype):
    torch = pytest.importorskip("torch")
    plan = _plan(CASES[name], dtype)
    g = plan.geometry
    dy, w = (a.astype(dtype) for a in _data(plan, seed=1))
    want = torch.nn.grad.conv2d_input(g.x_shape, torch.from_numpy(w), torch.from_numpy(dy), (g.sh, g.sw),
                                      (g.ph, g.pw)).numpy()
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plan.run_input_grad(dy, w), want, **tol, err_msg=name)


# (x_shape of the transposed convolution, C_out, kernel, stride, padding, output_padding, dilation)
TRANSPOSED = {
    "4x4-s2-p1": ((2, 24, 5, 6), 18, 4, 2, 1, 0, 1),
    "3x3-s2-op1": ((1, 20, 4, 5), 17, 3, 2, 1, 1, 1),
    "3x3-s3-op2": ((2, 9, 3, 4), 12, 3, 3, 0, 2, 1),
    "2x3-s(2,3)-op(1,2)": ((1, 10, 3, 3), 16, (2, 3), (2, 3), (0, 1), (1, 2), 1),
    "3x3-s2-dilation2": ((1, 6, 4, 4), 5, 3, 2, 1, 1, 2),  # dilation with stride: the gather, not the phases
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TRANSPOSED))
def test_conv_transpose2d_matches_reference_and_torch(name, dtype):
    x_shape, cout, k, s, p, op, d = TRANSPOSED[name]
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(shape).astype(np.float32).astype(np.float64)
               for shape in (x_shape, (x_shape[1], cout, kh, kw), (cout,)))
    kwargs = dict(stride=s, padding=p, output_padding=op, dilation=d)
    plan = fc.functional.conv_transpose_plan("test", x_shape, w.shape, dtype, s, p, op, 1, d)
    assert (plan.input_grad.name == "phases_vector") == (d == 1), plan.explain()
    got = fc.conv_transpose2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), **kwargs)
    _check(got, R.conv_transpose2d(x, w, b, **kwargs), dtype, name)
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.conv_transpose2d(*(torch.from_numpy(a) for a in (x, w, b)), **kwargs).numpy()
    _check(got, want, dtype, f"{name} against torch")


def test_weight_pack_follows_its_layout():
    """``wv[off(rh, rw) + (blk*th + i)*tw*F + j*F + f, l] = w[f, blk*L + l, rh + sh*(th-1-i), rw + sw*(tw-1-j)]``."""
    rng = np.random.default_rng(4)
    F, C, KH, KW, sh, sw, L = 3, 5, 5, 4, 3, 2, 4
    w = rng.standard_normal((F, C, KH, KW))
    blocks = -(-C // L)
    wv = np.full((blocks * KH * KW * F, L), np.nan)
    phases.phases_weights(w, (sh, sw), wv)
    want = np.zeros_like(wv)
    row = 0
    for rh in range(sh):
        for rw in range(sw):
            th, tw = len(range(rh, KH, sh)), len(range(rw, KW, sw))
            for blk in range(blocks):
                for i in range(th):
                    for j in range(tw):
                        for f in range(F):
                            for lane in range(L):
                                c = blk * L + lane
                                if c < C:
                                    want[row, lane] = w[f, c, rh + sh * (th - 1 - i), rw + sw * (tw - 1 - j)]
                            row += 1
    assert row == wv.shape[0]
    np.testing.assert_array_equal(wv, want)


def test_narrow_dx_keeps_the_tiled_phases():
    """dx with a quarter vector of channels or fewer and 64 channels of dy: the tiled kernel per phase."""
    plan = _plan(((2, 1, 9, 8), 64, 4, 2, 1), np.float32, CPUS["512bit"])
    assert plan.input_grad.name == "phases_shared_pack"
    assert _plan(((2, 8, 9, 8), 64, 4, 2, 1), np.float32, CPUS["512bit"]).input_grad.name == "phases_vector"
    assert _plan(((2, 1, 9, 8), 16, 4, 2, 1), np.float32, CPUS["512bit"]).input_grad.name == "phases_vector"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, strategy", [(CASES["3x3-s2-odd"], "phases_vector"),
                                            (((2, 5, 6, 7), 4, 3, 1, 1), "full_correlation"),
                                            (((2, 1, 9, 8), 64, 4, 2, 1), "phases_shared_pack")],
                         ids=["phases_vector", "full_correlation", "phases_shared_pack"])
def test_input_grad_bias_is_added_per_channel(case, strategy, dtype):
    """``run_input_grad(dy, w, b)`` (the transposed convolution's bias, fused into ``phases_vector``) is dx + b,
    with finite and non-finite weights; a bias of the wrong length is refused."""
    plan = _plan(case, dtype, CPUS["512bit"])
    assert plan.input_grad.name == strategy
    g = plan.geometry
    dy, w = (a.astype(dtype) for a in _data(plan, seed=5))
    b = np.random.default_rng(6).standard_normal(g.C).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.run_input_grad(dy, w, b), plan.run_input_grad(dy, w) + b[:, None, None], **tol)
    w[0, 0, 0, 0] = np.inf
    want = R.conv2d_backward_input(dy.astype(np.float64), w.astype(np.float64), g.x_shape, (g.sh, g.sw),
                                   (g.ph, g.pw)) + b[:, None, None]
    got = plan.run_input_grad(dy, w, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    with pytest.raises(ValueError, match="b must have shape"):
        plan.run_input_grad(dy, w, b[:-1])
