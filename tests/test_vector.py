"""The vector kernels' building blocks: the SIMD intrinsics against NumPy, the generated tiles.

The intrinsics of ``fastconv.kernels.simd`` are compiled into small kernels here and
compared with NumPy for float32 and float64 at every register width (512, 256 and 128
bits: AVX-512, AVX2, and what any other CPU LLVM targets gets). The convolution built on
them is compared with the reference through the plan in ``test_conv.py`` and
``test_plan.py`` (both widths, every case-table row); here the fused ReLU of
``vector_forward`` is checked, and that the ``*_tiles.py`` modules are what their generator writes.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from fastconv import plan as P, reference
from fastconv.kernels import flat, simd, vector
from fastconv.kernels.simd import lanes, vadd, vfmab, vload, vmax, vstore, vzero

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [pytest.param(simd.Width(n), id=f"{8 * n}bit") for n in (64, 32, 16)]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


@njit(cache=False)
def _lane_count(width, a):
    return lanes(vzero(width, a))


@njit(cache=False)
def _roundtrip(width, a, i, out, j):
    """out[j:j+L] = a[i:i+L]; returns L."""
    z = vzero(width, a)
    vstore(out, j, vload(z, a, i))
    return lanes(z)


@njit(cache=False)
def _axpy_max(width, alpha, x, y, floor, out):
    """out = max(alpha[0] * x + y, floor) lane by lane, one vector at a time."""
    z = vzero(width, out)
    L = lanes(z)
    for i in range(0, out.shape[0], L):
        acc = vfmab(vload(z, y, i), vload(z, x, i), alpha, 0)
        vstore(out, i, vmax(acc, vload(z, floor, i)))


@njit(cache=False)
def _sum(width, x, y, out):
    z = vzero(width, out)
    for i in range(0, out.shape[0], lanes(z)):
        vstore(out, i, vadd(vload(z, x, i), vload(z, y, i)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_lanes_follow_width_and_dtype(width, dtype):
    assert _lane_count(width, np.zeros(1, dtype)) == width.nbytes // np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_load_and_store_move_one_vector_at_any_offset(width, dtype):
    a = np.arange(40, dtype=dtype)
    for i, j in ((0, 0), (3, 5), (17, 1)):
        out = np.full(40, -1, dtype)
        L = _roundtrip(width, a, i, out, j)
        expected = np.full(40, -1, dtype)
        expected[j:j + L] = a[i:i + L]
        np.testing.assert_array_equal(out, expected, err_msg=f"a[{i}:] -> out[{j}:]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_fma_broadcast_and_max_match_numpy(width, dtype, rng):
    n = 32
    x, y = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    floor = np.zeros(n, dtype)
    x[3], y[5] = np.nan, np.inf
    alpha = np.array([1.5], dtype)
    out = np.empty(n, dtype)
    _axpy_max(width, alpha, x, y, floor, out)
    fma = np.float64(alpha[0]) * x.astype(np.float64) + y  # exact products: the FMA rounds once
    expected = np.where((fma > 0) | np.isnan(fma), fma, 0)  # NaN kept, as ReLU needs
    scale = np.abs(np.float64(alpha[0]) * x) + np.abs(y)
    ok = np.isfinite(expected)
    np.testing.assert_allclose(out[ok], expected[ok], rtol=0, atol=float(np.finfo(dtype).eps * scale[ok].max()))
    assert np.isnan(out[3]) and out[5] == np.inf
    total = np.empty(n, dtype)
    _sum(width, x, y, total)
    np.testing.assert_array_equal(total, x + y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS[:2])
def test_vector_forward_fuses_bias_and_relu(width, dtype, rng):
    """``relu=True`` gives ``max(conv + b, 0)`` with NaN kept, on rows narrower and wider than a tile."""
    cpu = P.CPU("test", width.nbytes)
    for shape in ((2, 5, 6, 3), (2, 5, 6, 17)):
        x = rng.standard_normal(shape).astype(dtype)
        x[0, 0, 2, 2] = np.nan
        w = rng.standard_normal((20, 5, 3, 3)).astype(dtype)
        b = rng.standard_normal(20).astype(dtype)
        xp = P._pack_nhwc(x, 1, 1).array
        wv = P._vector_weights(w, cpu.lanes(dtype))
        plain, fused = (np.empty((2, 20) + shape[2:], dtype) for _ in range(2))
        vector.vector_forward(width, xp, wv, b, (1, 1), (1, 1), False, plain)
        vector.vector_forward(width, xp, wv, b, (1, 1), (1, 1), True, fused)
        expected = np.where((plain > 0) | np.isnan(plain), plain, 0)
        np.testing.assert_array_equal(fused, expected)
        assert np.isnan(fused).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS[:2])
@pytest.mark.parametrize("Wo", list(range(1, 22)) + [28, 56])
def test_vector_forward_covers_every_row_width(width, dtype, Wo, rng):
    """Each row's tiles (full, overlapping, 4-pixel, 1-pixel: ``vector._row_tiles``) cover every output pixel once
    in effect: the kernel matches the reference at every width of 1-21 pixels, with an odd number of filter
    blocks (the 1-block tiles) and a stride of 2 (pixels ``2C`` apart)."""
    cpu = P.CPU("test", width.nbytes)
    for stride in (1, 2):
        x = rng.standard_normal((1, 3, 2 * stride + 1, stride * (Wo - 1) + 3)).astype(dtype)
        F = 3 * cpu.lanes(dtype) - 1
        w = rng.standard_normal((F, 3, 3, 3)).astype(dtype)
        b = rng.standard_normal(F).astype(dtype)
        out = np.full((1, F) + reference.conv2d(x, w, b, stride=stride).shape[2:], np.nan, dtype)
        assert out.shape[3] == Wo
        xp = P._pack_nhwc(x, 0, 0).array
        vector.vector_forward(width, xp, P._vector_weights(w, cpu.lanes(dtype)), b, (stride, stride), (1, 1),
                              False, out)
        tol = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, reference.conv2d(x, w, b, stride=stride), rtol=tol, atol=tol,
                                   err_msg=f"Wo={Wo} stride={stride}")


def test_generated_tiles_are_up_to_date():
    """``fastconv/kernels/{vector,flat,pack}_tiles.py`` are exactly what ``scripts/generate_kernels.py`` writes."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_kernels.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("width, dtype", [pytest.param(simd.W512, np.float32, id="512bit-f32"),
                                          pytest.param(simd.W512, np.float64, id="512bit-f64"),
                                          pytest.param(simd.W256, np.float32, id="256bit-f32")])
def test_nhwc_pack_transposes_tiles_with_channel_and_width_tails(width, dtype, rng):
    from fastconv.kernels.pack import pack_nhwc_padded

    # channels and widths below, at and past a tile (4, 8 or 16 lanes), paddings, and an output larger than x
    for (N, C, H, W), (ph, pw), extra in [((2, 17, 3, 14), (1, 1), 0), ((1, 16, 2, 16), (0, 0), 0),
                                          ((1, 5, 4, 3), (2, 1), 1), ((1, 33, 2, 35), (1, 2), 2)]:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        out = np.full((N, H + 2 * ph + extra, W + 2 * pw + extra, C), np.nan, dtype)
        pack_nhwc_padded(width, x, ph, pw, out)
        want = np.zeros_like(out)
        want[:, ph:ph + H, pw:pw + W] = x.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(out, want, err_msg=f"x {x.shape}, padding {(ph, pw)}, {extra} more")


@njit(cache=False)
def _lane_sums_of(width, vs, V):
    flat._lane_sums(vzero(width, vs), vs, V)


def _pairwise_lane_sums(v):
    """The sums of the rows of ``v`` (V, L) in the tree ``_lane_sums`` promises: adjacent pairs, then their pairs."""
    while v.shape[1] > 1:
        v = v[:, 0::2] + v[:, 1::2]
    return v[:, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("V", [1, 2, 3, 15, 16, 17, 72, 577])
def test_lane_sums_add_each_vector_in_a_fixed_pairwise_tree(width, dtype, V, rng):
    L = width.nbytes // np.dtype(dtype).itemsize
    vs = (rng.standard_normal((V + 1) * L) * 10.0 ** rng.integers(-3, 4, (V + 1) * L)).astype(dtype)
    want = _pairwise_lane_sums(vs[:V * L].reshape(V, L))
    _lane_sums_of(width, vs, V)
    np.testing.assert_array_equal(vs[:V], want, err_msg=f"{V} vectors of {L} lanes")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS[:2])
@pytest.mark.parametrize("shape", [pytest.param((4, 64, 10, 10, 64, 32, 3, (1, 1)), id="grouped32"),
                                   pytest.param((3, 8, 9, 7, 24, 1, 3, (2, 1)), id="dense-dilated"),
                                   pytest.param((2, 12, 6, 6, 12, 4, 5, (1, 1)), id="grouped4-k5")])
def test_flat_weight_grad_serial_build_gives_the_parallel_bits(width, dtype, shape, rng):
    """A forked child of an OpenMP parent runs the serial build: its weight gradient must be bitwise the same."""
    from fastconv import _runtime

    N, C, Hp, Wp, F, groups, K, dil = shape
    Ho, Wo = Hp - dil[0] * (K - 1), Wp - dil[1] * (K - 1)
    xq = rng.standard_normal((N, C, Hp, Wp)).astype(dtype)
    dy = rng.standard_normal((N, F, Ho, Wo)).astype(dtype)
    got = [np.full((2, F, C // groups, K, K), np.nan, dtype) for _ in range(2)]
    flat.flat_weight_grad(width, xq, dy, dil, groups, got[0])
    _runtime._serial(flat.flat_weight_grad)(width, xq, dy, dil, groups, got[1])
    assert got[0].tobytes() == got[1].tobytes()
    want = reference.conv2d_backward_weight(dy.astype(np.float64), xq.astype(np.float64), (F, C // groups, K, K),
                                            dilation=dil, groups=groups)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[0].sum(axis=0), want, rtol=tol, atol=tol)
