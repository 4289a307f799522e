"""Batch normalisation: functional ``batch_norm``/``batch_norm_backward`` and ``nn.BatchNorm1d/2d``.

Checked against the pure-NumPy reference (:mod:`fastconv.reference`), float64 finite
differences and PyTorch (outputs, input and parameter gradients, running statistics after
several steps, train/eval switching, ``momentum=None``, ``state_dict`` round trips), with
the error messages and the rule that inputs are never modified.
"""

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn, optim
from fastconv import reference as ref
from benchmarks.cases import NORM_ROWS

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5), np.dtype(np.float64): dict(rtol=1e-11, atol=1e-11)}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _tdtype(torch, dtype):
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


def _inputs(rng, shape, dtype, loc=0.0, scale=1.0):
    C = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, w, b, rm, rv


@pytest.fixture(params=["fused_channels", "by_rows"])
def strategy(request, monkeypatch):
    """Run the test on both batch-norm strategies: channel by channel, and the separate passes split by rows."""
    from fastconv import plan as P

    monkeypatch.setattr(P, "_fused_channels", lambda C: request.param == "fused_channels")
    return request.param


def _close(got, want, dtype, what):
    np.testing.assert_allclose(got, want, err_msg=what, **TOL[np.dtype(dtype)])


# ---------------------------------------------------------------------------------------
# Functional API against the reference and finite differences
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("row", NORM_ROWS, ids=lambda r: r.name)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_matches_reference(row, dtype, training, affine, rng, strategy):
    x, w, b, rm, rv = _inputs(rng, row.shape, dtype, loc=2.0, scale=3.0)
    w, b = (w, b) if affine else (None, None)
    x64 = x.astype(np.float64)
    want, want_rm, want_rv = ref.batch_norm(x64, rm.astype(np.float64), rv.astype(np.float64),
                                            None if w is None else w.astype(np.float64),
                                            None if b is None else b.astype(np.float64), training, 0.3, 1e-4)
    rm_given, rv_given = rm.copy(), rv.copy()
    y, mean, invstd = fc.batch_norm(x, rm_given, rv_given, w, b, training=training, momentum=0.3, eps=1e-4,
                                    return_stats=True)
    assert y.dtype == x.dtype and y.shape == x.shape
    _close(y, want, dtype, "y")
    _close(rm_given, want_rm, dtype, "running_mean")
    _close(rv_given, want_rv, dtype, "running_var")

    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw, db = fc.batch_norm_backward(dy, x, mean, invstd, w, training=training)
    wdx, wdw, wdb = ref.batch_norm_backward(dy.astype(np.float64), x64, None if w is None else w.astype(np.float64),
                                            rm.astype(np.float64), rv.astype(np.float64), training, 1e-4)
    assert dx.dtype == dw.dtype == db.dtype == x.dtype
    _close(dx, wdx, dtype, "dx")
    _close(dw, wdw, dtype, "dweight")
    _close(db, wdb, dtype, "dbias")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("row", NORM_ROWS, ids=lambda r: r.name)
def test_non_temporal_stores_match_reference(row, dtype, rng, monkeypatch):
    """The strategies large activations take, ``affine_stream`` (eval forward) and ``fused_channels_stream``
    (training backward), on every case-table shape: rows of any length (elements before the first aligned
    one and after the last whole vector are stored one by one)."""
    from fastconv import plan as P

    monkeypatch.setattr(P, "_streams", lambda x3, arrays=2: True)
    monkeypatch.setattr(P, "_fused_channels", lambda C: True)
    x, w, b, rm, rv = _inputs(rng, row.shape, dtype, loc=2.0, scale=3.0)
    x64, rm64, rv64, w64 = x.astype(np.float64), rm.astype(np.float64), rv.astype(np.float64), w.astype(np.float64)
    want, _, _ = ref.batch_norm(x64, rm64, rv64, w64, b.astype(np.float64), False, 0.1, 1e-4)
    _close(fc.batch_norm(x, rm, rv, w, b, eps=1e-4), want, dtype, "eval y")
    _, mean, invstd = fc.batch_norm(x, None, None, w, b, training=True, eps=1e-4, return_stats=True)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = fc.batch_norm_backward(dy, x, mean, invstd, w, training=True)
    wants = ref.batch_norm_backward(dy.astype(np.float64), x64, w64, rm64, rv64, True, 1e-4)
    for name, g, want in zip(("dx", "dweight", "dbias"), got, wants):
        _close(g, want, dtype, f"training {name}")
    # An input whose rows start anywhere (a column slice), into the aligned output.
    wide = rng.standard_normal((3, 4, 45)).astype(dtype)[:, :, 1:]
    out = P.norm_affine(wide, np.arange(4.0), np.full(4, 0.5), np.ones(4), stream=True)
    assert out.ctypes.data % P.HOST.vector_bytes == 0 and out.flags.c_contiguous
    _close(out, (wide - np.arange(4.0)[:, None]) * 0.5 + 1, dtype, "sliced rows")


def test_large_eval_forward_streams_and_matches_reference(rng):
    """An output of ``TUNING.stream_store_bytes`` or more (whole-vector rows) takes the non-temporal stores."""
    from fastconv import plan as P

    x, w, b, rm, rv = _inputs(rng, (4, 16, 128, 256), np.float32, loc=1000.0)  # 8 MiB, rows of 32768 values
    assert P._streams(fc.plan.channel_view(x)) and not P._streams(fc.plan.channel_view(x[:2]))
    rm = rm + np.float32(1000)
    want, _, _ = ref.batch_norm(x.astype(np.float64), rm.astype(np.float64), rv.astype(np.float64),
                                w.astype(np.float64), b.astype(np.float64), False, 0.1, 1e-5)
    layer = nn.BatchNorm2d(16).eval()
    layer.running_mean[:] = rm
    layer.running_var[:] = rv
    layer.weight.data[:] = w
    layer.bias.data[:] = b
    _close(layer(x), want, np.float32, "y")


@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4), (2, 2, 3, 2)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_matches_finite_differences(shape, training, rng, numgrad, strategy):
    x, w, b, rm, rv = _inputs(rng, shape, np.float64)
    dy = rng.standard_normal(shape)

    def loss():
        return float((fc.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training) * dy).sum())

    _, mean, invstd = fc.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, return_stats=True)
    dx, dw, db = fc.batch_norm_backward(dy, x, mean, invstd, w, training=training)
    for name, got, arr in (("dx", dx, x), ("dweight", dw, w), ("dbias", db, b)):
        np.testing.assert_allclose(got, numgrad(loss, arr), rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_inputs_are_not_modified_and_running_stats_only_in_training(dtype, rng):
    x, w, b, rm, rv = _inputs(rng, (4, 3, 5), dtype)
    x = np.asfortranarray(x)  # any layout
    dy = rng.standard_normal(x.shape).astype(dtype)
    before = [a.copy() for a in (x, w, b, rm, rv, dy)]
    y, mean, invstd = fc.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    fc.batch_norm_backward(dy, x, mean, invstd, w, training=False)
    for a, c in zip((x, w, b, rm, rv, dy), before):
        np.testing.assert_array_equal(a, c)
    _, mean, invstd = fc.batch_norm(x, rm, rv, w, b, training=True, return_stats=True)
    fc.batch_norm_backward(dy, x, mean, invstd, w)
    for a, c in zip((x, w, b, dy), before[:3] + before[5:]):
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(rm, before[3]) and not np.array_equal(rv, before[4])


def test_read_only_and_strided_inputs(rng):
    x = rng.standard_normal((6, 3, 4, 4))[::2, :, ::-1]
    x.flags.writeable = False
    want = ref.batch_norm(np.ascontiguousarray(x), None, None, training=True)[0]
    np.testing.assert_allclose(fc.batch_norm(x, None, None, training=True), want, rtol=1e-12, atol=1e-12)


def test_empty_batch_leaves_running_stats(rng):
    rm, rv = np.zeros(3), np.ones(3)
    y = fc.batch_norm(np.zeros((0, 3, 2)), rm, rv, training=True)
    assert y.shape == (0, 3, 2)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_nan_stays_in_its_channel(rng):
    x = rng.standard_normal((4, 3, 2))
    x[1, 1, 0] = np.nan
    y = fc.batch_norm(x, None, None, training=True)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


# ---------------------------------------------------------------------------------------
# Numerics: the mean-1000 activation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 8, 30, 30), (4096, 3)], ids=["NCHW", "NC"])
def test_large_mean_float32_matches_float64(shape, rng, strategy):
    """float32, mean 1000, std 1: E[x^2] - E[x]^2 would lose every digit; we stay within 1e-3 (1e-5 here)."""
    x = (1000 + rng.standard_normal(shape)).astype(np.float32)
    rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
    y, mean, invstd = fc.batch_norm(x, rm, rv, training=True, return_stats=True)
    want, want_rm, want_rv = ref.batch_norm(x.astype(np.float64), np.zeros(shape[1]), np.ones(shape[1]),
                                            training=True)
    assert np.abs(y - want).max() < 1e-5
    assert np.abs(rm - want_rm).max() < 1e-4 and np.abs(rv - want_rv).max() < 1e-5
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = fc.batch_norm_backward(dy, x, mean, invstd)
    wdx, wdw, wdb = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64))
    assert np.abs(dx - wdx).max() < 1e-5
    assert np.abs(dw - wdw).max() < 1e-3 * np.sqrt(x.size / shape[1]) / 10


def test_large_mean_float32_matches_torch(torch, rng):
    x = (1000 + rng.standard_normal((8, 16, 20, 20))).astype(np.float32)
    layer, tlayer = nn.BatchNorm2d(16), torch.nn.BatchNorm2d(16)
    y = layer(x)
    ty = tlayer(torch.from_numpy(x))
    assert np.abs(y - ty.detach().numpy()).max() < 1e-3
    np.testing.assert_allclose(layer.running_var, tlayer.running_var.numpy(), rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Layers against PyTorch
# ---------------------------------------------------------------------------------------


LAYER_CASES = [
    pytest.param("BatchNorm2d", (4, 3, 5, 6), {}, id="2d"),
    pytest.param("BatchNorm2d", (2, 3, 3, 3), {"momentum": None}, id="2d-cumulative"),
    pytest.param("BatchNorm2d", (3, 4, 2, 2), {"affine": False}, id="2d-no-affine"),
    pytest.param("BatchNorm2d", (3, 4, 2, 2), {"bias": False}, id="2d-no-bias"),
    pytest.param("BatchNorm2d", (3, 2, 4, 4), {"track_running_stats": False}, id="2d-untracked"),
    pytest.param("BatchNorm1d", (8, 5), {"eps": 1e-3, "momentum": 0.5}, id="1d-NC"),
    pytest.param("BatchNorm1d", (3, 5, 7), {}, id="1d-NCL"),
    pytest.param("BatchNorm1d", (6, 4), {"momentum": None, "affine": False}, id="1d-cumulative-plain"),
]


def _make_pair(torch, name, C, kwargs, dtype, rng):
    ours = getattr(nn, name)(C, dtype=dtype, **kwargs)
    theirs = getattr(torch.nn, name)(C, dtype=_tdtype(torch, dtype), **kwargs)
    if ours.weight is not None:  # non-trivial affine parameters, the same on both sides
        ours.weight.data[...] = rng.uniform(0.5, 1.5, C)
        theirs.weight.data.copy_(torch.from_numpy(ours.weight.data.copy()))
    if ours.bias is not None:
        ours.bias.data[...] = rng.standard_normal(C)
        theirs.bias.data.copy_(torch.from_numpy(ours.bias.data.copy()))
    return ours, theirs


def _compare_buffers(ours, theirs, dtype):
    for name, tb in theirs.named_buffers():
        got = getattr(ours, name)
        if name == "num_batches_tracked":
            assert int(got) == int(tb), name
        else:
            _close(got, tb.numpy(), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name, shape, kwargs", LAYER_CASES)
def test_layer_matches_torch_over_train_and_eval_steps(torch, name, shape, kwargs, dtype, rng):
    C = shape[1]
    ours, theirs = _make_pair(torch, name, C, kwargs, dtype, rng)
    assert repr(ours) == repr(theirs)
    for step, mode in enumerate(["train", "train", "eval", "train", "eval"]):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = (step + (step + 1) * rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = theirs(tx)
        ty.backward(torch.from_numpy(dy))
        y = ours(x)
        dx = ours.backward(dy)
        what = f"step {step} ({mode})"
        _close(y, ty.detach().numpy(), dtype, f"{what}: y")
        _close(dx, tx.grad.numpy(), dtype, f"{what}: dx")
        _compare_buffers(ours, theirs, dtype)
    # parameter gradients accumulate over the steps, as PyTorch's .grad
    for pname, tp in theirs.named_parameters():
        _close(getattr(ours, pname).grad, tp.grad.numpy(), dtype, f"{pname}.grad")
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_state_dict_round_trip_through_save_and_load(torch, tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.BatchNorm2d(3), nn.ReLU())
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
    assert list(model.state_dict()) == list(tmodel.state_dict())
    for _ in range(3):
        model(rng.standard_normal((4, 2, 5, 5)).astype(np.float32))
    path = tmp_path / "bn.npz"
    fc.save(model.state_dict(), path)
    loaded = fc.load(path)
    assert loaded["1.num_batches_tracked"].dtype == np.int64 and int(loaded["1.num_batches_tracked"]) == 3
    fresh = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=1), nn.BatchNorm2d(3), nn.ReLU())
    fresh.load_state_dict(loaded)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(fresh.eval()(x), model.eval()(x))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)
    # and into PyTorch
    tmodel.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in loaded.items()})
    tmodel.eval()
    np.testing.assert_allclose(tmodel(torch.from_numpy(x)).detach().numpy(), model(x), rtol=1e-5, atol=1e-5)


def test_state_dict_load_checks_buffers():
    bn = nn.BatchNorm2d(3)
    state = bn.state_dict()
    state["running_var"] = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="'running_var': shape"):
        bn.load_state_dict(state)
    state = bn.state_dict()
    del state["num_batches_tracked"]
    with pytest.raises(ValueError, match="missing key.*num_batches_tracked"):
        bn.load_state_dict(state)
    assert bn.load_state_dict(state, strict=False).missing_keys == ["num_batches_tracked"]
    assert list(nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []


def test_optimizers_leave_buffers_alone(rng):
    bn = nn.BatchNorm2d(3)
    assert [p.shape for p in bn.parameters()] == [(3,), (3,)]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    opt = optim.SGD(bn.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    bn(x)
    bn.backward(np.ones_like(x))
    stats = [b.copy() for b in bn.buffers()]
    opt.step()
    for b, s in zip(bn.buffers(), stats):
        np.testing.assert_array_equal(b, s)


def test_to_casts_float_buffers_only():
    bn = nn.BatchNorm2d(2).to(np.float64)
    assert bn.running_mean.dtype == bn.running_var.dtype == bn.weight.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    assert bn(np.ones((2, 2, 1, 1))).dtype == np.float64


def test_no_grad_and_backward_without_forward(rng):
    bn = nn.BatchNorm1d(2)
    with pytest.raises(RuntimeError, match="BatchNorm1d.backward"):
        bn.backward(np.ones((2, 2), np.float32))
    with nn.no_grad():
        bn(rng.standard_normal((3, 2)).astype(np.float32))
    assert int(bn.num_batches_tracked) == 1
    with pytest.raises(RuntimeError, match="without a cached forward"):
        bn.backward(np.ones((3, 2), np.float32))


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


F32 = np.float32


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: fc.batch_norm(np.ones((1, 3), F32), None, None, training=True), ValueError,
         r"batch_norm: Expected more than 1 value per channel when training, got input size \(1, 3\)"),
        (lambda: nn.BatchNorm2d(3)(np.ones((1, 3, 1, 1), F32)), ValueError,
         r"BatchNorm2d: Expected more than 1 value per channel when training, got input size \(1, 3, 1, 1\)"),
        (lambda: nn.BatchNorm2d(4)(np.ones((2, 3, 2, 2), F32)), ValueError,
         r"4 channels \(num_features=4\).*\(2, 3, 2, 2\)"),
        (lambda: nn.BatchNorm2d(3)(np.ones((2, 3, 2), F32)), ValueError, r"expected 4D input \(got 3D input\)"),
        (lambda: nn.BatchNorm1d(3)(np.ones((2, 3, 2, 2), F32)), ValueError, r"expected 2D or 3D input \(got 4D"),
        (lambda: nn.BatchNorm1d(3)(np.ones((2, 3))), TypeError, "dtype float64 but the layer's parameters are float32"),
        (lambda: nn.BatchNorm1d(0), ValueError, "num_features must be positive"),
        (lambda: nn.BatchNorm1d(2, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: nn.BatchNorm1d(2, momentum="0.1"), TypeError, "momentum must be a real number"),
        (lambda: fc.batch_norm(np.ones((2, 3)), np.zeros(4), np.ones(4)), ValueError,
         r"running_mean must have shape \(3,\).*x.shape=\(2, 3\); got \(4,\)"),
        (lambda: fc.batch_norm(np.ones((2, 3)), None, None), ValueError, "must be given when training=False"),
        (lambda: fc.batch_norm(np.ones((2, 3)), np.zeros(3), None, training=True), ValueError, "both"),
        (lambda: fc.batch_norm(np.ones((2, 3)), np.zeros(3, F32), np.ones(3, F32)), TypeError, "share one dtype"),
        (lambda: fc.batch_norm(np.ones(3), None, None, training=True), ValueError, "at least 2 dims"),
        (lambda: fc.batch_norm(np.ones((2, 3)), None, None, training=True, momentum=None), TypeError, "momentum"),
        (lambda: fc.batch_norm(np.ones((2, 3), np.int64), None, None, training=True), TypeError, "float32 or float64"),
        (lambda: fc.batch_norm_backward(np.ones((2, 2)), np.ones((2, 3)), np.zeros(3), np.ones(3)), ValueError,
         "dy must have the shape of x"),
        (lambda: fc.batch_norm_backward(np.ones((2, 3)), np.ones((2, 3)), np.zeros(2), np.ones(3)), ValueError,
         r"mean must have shape \(3,\)"),
    ],
    ids=["one-value", "layer-one-value", "num-features", "2d-ndim", "1d-ndim", "layer-dtype", "zero-features",
         "negative-eps", "string-momentum", "running-shape", "eval-no-stats", "half-stats", "mixed-dtype", "1-d",
         "momentum-none", "int-input", "dy-shape", "mean-shape"],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_one_value_error_leaves_the_layer_unchanged():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError):
        bn(np.ones((1, 3), F32))
    assert int(bn.num_batches_tracked) == 0
    bn.eval()
    assert bn(np.ones((1, 3), F32)).shape == (1, 3)  # eval: running statistics, one sample is fine


# ---------------------------------------------------------------------------------------
# Random shapes
# ---------------------------------------------------------------------------------------


def test_hypothesis_shapes_match_reference():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=25, deadline=None)
    @hyp.given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.booleans(), st.integers(0, 2**31))
    def check(shape, training, seed):
        rng = np.random.default_rng(seed)
        if training and shape[0] * int(np.prod(shape[2:])) == 1:
            shape[0] += 1
        x, w, b, rm, rv = _inputs(rng, tuple(shape), np.float64, loc=5.0)
        want = ref.batch_norm(x, rm, rv, w, b, training)
        got = fc.batch_norm(x, rm, rv, w, b, training=training)
        np.testing.assert_allclose(got, want[0], rtol=1e-10, atol=1e-10, err_msg=str(shape))
        np.testing.assert_allclose(rm, want[1], rtol=1e-12, atol=1e-12)

    check()


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_inputs_like_torch(torch, value, rng):
    x = rng.standard_normal((4, 3, 2, 2))
    x[1, 1, 0, 1] = value
    dy = rng.standard_normal(x.shape)
    layer, tlayer = nn.BatchNorm2d(3, dtype=np.float64), torch.nn.BatchNorm2d(3, dtype=torch.float64)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tlayer(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(layer.running_mean, tlayer.running_mean.numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(layer.running_var, tlayer.running_var.numpy(), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("C", [1, 3, 40], ids=["C1", "C3", "C40"])
def test_an_infinite_weight_gives_torchs_infinite_input_gradient(torch, C, dtype, rng):
    """Found by tests/test_fuzz.py (batch_norm_backward, the drop-in's batchnorm_backward): an infinite weight in
    training gave NaN where PyTorch (which multiplies by the weight last) gives +-inf; the reference agrees."""
    x, dy = (rng.standard_normal((3, C, 2)).astype(dtype) for _ in range(2))
    w = rng.standard_normal(C).astype(dtype)
    w[0], w[-1] = np.inf, -np.inf
    mean, var = x.astype(np.float64).mean(axis=(0, 2)), x.astype(np.float64).var(axis=(0, 2))
    invstd = 1 / np.sqrt(var + 1e-5)
    t = [torch.from_numpy(a) for a in (dy, x, w)]
    stats = [torch.from_numpy(a).to(t[1].dtype) for a in (mean, invstd)]
    want = torch.ops.aten.native_batch_norm_backward(t[0], t[1], t[2], None, None, *stats, True, 1e-5, [True] * 3)
    got = fc.batch_norm_backward(dy, x, mean, invstd, w, True)
    assert np.isinf(got[0][:, [0, -1]]).all()
    for g, tw, r, name in zip(got, want, ref.batch_norm_backward(dy, x, w, training=True), ("dx", "dweight", "dbias")):
        np.testing.assert_allclose(g, tw.numpy(), rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"affine": False, "momentum": None}, {"bias": False},
                                    {"track_running_stats": False}], ids=["default", "plain", "no-bias", "untracked"])
def test_to_torch_converts_batch_norm(torch, kwargs, rng):
    from fastconv.models import to_torch

    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.BatchNorm2d(3, **kwargs), nn.Identity(), nn.ReLU(),
                          nn.Flatten(), nn.BatchNorm1d(12, **kwargs))
    x = rng.standard_normal((4, 2, 4, 4)).astype(np.float32)
    model(x)
    model.eval()
    twin = to_torch(model)
    assert repr(twin) == repr(model) and list(twin.state_dict()) == list(model.state_dict())
    np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fastconv.functional.batch_norm", "fastconv.functional.batch_norm_backward",
                                  "fastconv.nn.BatchNorm1d", "fastconv.nn.BatchNorm2d", "fastconv.nn.Residual",
                                  "fastconv.compat.layers.batchnorm_forward"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module, attr = name.rsplit(".", 1)
    obj = getattr(importlib.import_module(module), attr)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted >= 2 and failed == 0, f"{name}: {failed} of {attempted} examples failed"
