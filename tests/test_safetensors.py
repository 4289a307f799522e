"""Weights shared with PyTorch: safetensors files both ways, and torch tensors in ``load_state_dict``.

- A ``state_dict`` written by ``safetensors.torch.save_file`` loads into the matching fastconv model and gives
  PyTorch's logits, and a file from ``fastconv.save_safetensors`` loads into the torch model (``to_torch``'s
  twin) with the same result: the reference CNN and a net with BatchNorm2d (running statistics and the int64
  ``num_batches_tracked``), float32 and float64. Skipped without torch or safetensors.
- The file format is checked independently of the safetensors package (the header parsed by hand).
- ``save_safetensors`` is atomic (a failing write keeps the previous file) and refuses what the format cannot
  hold before writing; a corrupt or truncated file is a CheckpointError naming it.
- ``Module.load_state_dict`` takes torch tensors (float32/float64, int64 buffers, requires_grad, strided),
  checks everything before copying anything, and names the key of a wrong shape or dtype.
"""

import doctest
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.models import reference_cnn
from fastconv.serialization import CheckpointError, load_safetensors, load_safetensors_metadata, save_safetensors

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
SECTION = "## Weights shared with PyTorch"


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def st_torch(torch):
    return pytest.importorskip("safetensors.torch")


needs_safetensors = pytest.mark.skipif(importlib.util.find_spec("safetensors") is None,
                                       reason="needs the safetensors package (pip install 'fastconv[safetensors]')")


# ---------------------------------------------------------------------------------------
# The two networks
# ---------------------------------------------------------------------------------------


def small_reference(seed, dtype):
    """The reference CNN on 12x12 images (two conv blocks, two linear layers): (3, 1, 12, 12) -> (3, 10)."""
    return reference_cnn(dtype, rng=seed, image_size=12, channels=(4, 8), hidden=16)


def bn_net(seed, dtype):
    """Conv (no bias) - BatchNorm2d - ReLU - global average pool - Linear: (3, 1, 12, 12) -> (3, 10)."""
    gen = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False, dtype=dtype, rng=gen),
                          nn.BatchNorm2d(6, dtype=dtype), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 10, dtype=dtype, rng=gen))
    bn = model[1]
    bn.weight.data[...] = gen.uniform(0.5, 1.5, 6)
    bn.bias.data[...] = gen.uniform(-0.5, 0.5, 6)
    return model


NETS = {"reference_cnn": small_reference, "batchnorm": bn_net}
DTYPES = {"float32": np.float32, "float64": np.float64}
#: Logits agree to 1e-5 in float32 (the issue's bound) and to rounding in float64.
ATOL = {np.float32: 1e-5, np.float64: 1e-12}


def _batches(dtype, count=3):
    gen = np.random.default_rng(7)
    return [gen.standard_normal((3, 1, 12, 12)).astype(dtype) for _ in range(count)]


def _trained_torch_twin(torch, make, dtype):
    """A torch model unlike ``make(2, dtype)``: ``make(1, dtype)``'s twin, its weights moved and (with batch
    norm) its running statistics updated by three training batches, then in eval mode."""
    from fastconv.models import to_torch

    twin = to_torch(make(1, dtype))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for p in twin.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        twin.train()
        for x in _batches(dtype):
            twin(torch.from_numpy(x))
    return twin.eval()


def _trained_fastconv(make, dtype):
    """``make(1, dtype)`` after three training batches (running statistics, num_batches_tracked = 3), in eval mode."""
    model = make(1, dtype).train()
    with nn.no_grad():
        for x in _batches(dtype):
            model(x)
    return model.eval()


def _assert_same_logits(torch, ours, theirs, dtype, label):
    x = np.random.default_rng(11).standard_normal((3, 1, 12, 12)).astype(dtype)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = ours(x)
    assert got.dtype == expected.dtype == dtype, label
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL[dtype], err_msg=label)


def _assert_state_equal(ours, theirs_state, label):
    state = ours.state_dict()
    assert sorted(state) == sorted(theirs_state), label
    for name, value in theirs_state.items():
        value = value.numpy() if not isinstance(value, np.ndarray) else value
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, f"{label}: {name}"
        np.testing.assert_array_equal(state[name], value, err_msg=f"{label}: {name}")


def _differs(model, torch_model):
    theirs = torch_model.state_dict()
    return any(not np.array_equal(a, theirs[k].numpy()) for k, a in model.state_dict().items())


# ---------------------------------------------------------------------------------------
# Both directions with PyTorch
# ---------------------------------------------------------------------------------------


@needs_safetensors
@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("make", NETS.values(), ids=NETS.keys())
def test_a_file_saved_by_torch_loads_into_fastconv_with_the_same_logits(make, dtype, torch, st_torch, tmp_path):
    twin = _trained_torch_twin(torch, make, dtype)
    path = tmp_path / "torch.safetensors"
    st_torch.save_file(twin.state_dict(), path)
    model = make(2, dtype).eval()
    assert _differs(model, twin)  # the load below has something to do
    result = model.load_state_dict(load_safetensors(path))
    assert result == ([], [])
    _assert_state_equal(model, twin.state_dict(), make.__name__)
    if make is bn_net:
        assert model[1].num_batches_tracked.dtype == np.int64 and int(model[1].num_batches_tracked) == 3
    _assert_same_logits(torch, model, twin, dtype, make.__name__)


@needs_safetensors
@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("make", NETS.values(), ids=NETS.keys())
def test_a_file_saved_by_fastconv_loads_into_torch_with_the_same_logits(make, dtype, torch, st_torch, tmp_path):
    from fastconv.models import to_torch

    model = _trained_fastconv(make, dtype)
    path = tmp_path / "fastconv.safetensors"
    save_safetensors(model, path)
    twin = to_torch(make(2, dtype)).eval()
    assert _differs(model, twin)
    loaded = st_torch.load_file(path)
    expected_dtypes = {k: v.dtype for k, v in twin.state_dict().items()}
    assert {k: v.dtype for k, v in loaded.items()} == expected_dtypes  # torch gets its own dtypes, int64 included
    twin.load_state_dict(loaded)
    _assert_state_equal(model, twin.state_dict(), make.__name__)
    if make is bn_net:
        assert twin[1].num_batches_tracked.item() == 3
    _assert_same_logits(torch, model, twin, dtype, make.__name__)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("make", NETS.values(), ids=NETS.keys())
def test_load_state_dict_takes_a_torch_state_dict(make, dtype, torch):
    twin = _trained_torch_twin(torch, make, dtype)
    model = make(2, dtype).eval()
    model.load_state_dict(twin.state_dict())
    _assert_state_equal(model, twin.state_dict(), make.__name__)
    _assert_same_logits(torch, model, twin, dtype, make.__name__)


@needs_safetensors
@pytest.mark.torch
def test_save_safetensors_takes_a_torch_module_and_its_tensors(torch, tmp_path):
    twin = _trained_torch_twin(torch, bn_net, np.float32)
    for label, source in [("module", twin), ("state_dict", twin.state_dict())]:
        path = tmp_path / f"{label}.safetensors"
        save_safetensors(source, path)
        model = bn_net(2, np.float32).eval()
        model.load_state_dict(load_safetensors(path))
        _assert_state_equal(model, twin.state_dict(), label)


# ---------------------------------------------------------------------------------------
# Torch tensors in load_state_dict
# ---------------------------------------------------------------------------------------


@pytest.mark.torch
def test_load_state_dict_reads_parameters_that_require_grad_and_strided_tensors(torch):
    layer = nn.Linear(3, 2, rng=0)
    weight = torch.arange(6, dtype=torch.float32).reshape(3, 2).t().requires_grad_(True)  # a strided view
    bias = torch.tensor([0.5, -1.5], requires_grad=True)
    assert not weight.is_contiguous()
    layer.load_state_dict(OrderedDict(weight=weight, bias=bias))
    np.testing.assert_array_equal(layer.weight.data, weight.detach().numpy())
    np.testing.assert_array_equal(layer.bias.data, [0.5, -1.5])
    assert layer.weight.data.flags.c_contiguous and layer.weight.data.dtype == np.float32
    # The model's arrays are its own: later changes to the tensor do not reach them.
    with torch.no_grad():
        bias.add_(1.0)
    np.testing.assert_array_equal(layer.bias.data, [0.5, -1.5])


def _bn_state(torch, **changes):
    """A valid torch state_dict for nn.BatchNorm2d(2) (float32, num_batches_tracked int64), with ``changes``."""
    state = OrderedDict(weight=torch.tensor([2.0, 3.0]), bias=torch.tensor([0.5, -0.5]),
                        running_mean=torch.tensor([1.0, -1.0]), running_var=torch.tensor([4.0, 9.0]),
                        num_batches_tracked=torch.tensor(5))
    state.update(changes)
    return state


@pytest.mark.torch
def test_load_state_dict_takes_the_int64_buffer_of_a_torch_batch_norm(torch):
    bn = nn.BatchNorm2d(2)
    bn.load_state_dict(_bn_state(torch))
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 5
    np.testing.assert_array_equal(bn.running_var, [4.0, 9.0])


BAD_TENSORS = {  # key -> (a function of torch making the bad value, error, what the message names)
    "wrong-shape": ("running_mean", lambda t: t.zeros(3), ValueError, (r"'running_mean'", r"\(3,\)", r"\(2,\)")),
    "float64-into-float32": ("weight", lambda t: t.ones(2, dtype=t.float64), ValueError,
                             (r"'weight'", "float64", "float32")),
    "int32-buffer": ("num_batches_tracked", lambda t: t.tensor(1, dtype=t.int32), ValueError,
                     ("'num_batches_tracked'", "int32", "int64")),
    "bfloat16": ("bias", lambda t: t.ones(2, dtype=t.bfloat16), TypeError, (r"\['bias'\]", "bfloat16")),
    "meta-device": ("weight", lambda t: t.empty(2, device="meta"), ValueError, (r"\['weight'\]", "meta")),
    "sparse": ("weight", lambda t: t.ones(2).to_sparse(), TypeError, (r"\['weight'\]", "sparse")),
    "a-list": ("bias", lambda t: [1.0, 2.0], TypeError, (r"\['bias'\]", "numpy.ndarray or a torch.Tensor", "list")),
}


@pytest.mark.torch
@pytest.mark.parametrize("key, make_bad, error, needles", BAD_TENSORS.values(), ids=BAD_TENSORS.keys())
def test_a_bad_torch_tensor_is_named_and_nothing_is_copied(key, make_bad, error, needles, torch):
    bn = nn.BatchNorm2d(2)
    before = bn.state_dict()
    with pytest.raises(error, match="(?s)BatchNorm2d.load_state_dict" + "".join(f"(?=.*{n})" for n in needles)):
        bn.load_state_dict(_bn_state(torch, **{key: make_bad(torch)}))
    for name, value in bn.state_dict().items():  # the valid entries were not copied either
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_fastconv_never_imports_torch_itself(tmp_path):
    """Reading a state_dict (and a safetensors file when the package is there) leaves torch unimported."""
    code = (
        "import sys, importlib.util\n"
        "import numpy as np\n"
        "import fastconv\n"
        "from fastconv import nn\n"
        "m = nn.BatchNorm2d(2)\n"
        "m.load_state_dict(m.state_dict())\n"
        "if importlib.util.find_spec('safetensors') is not None:\n"
        f"    fastconv.save_safetensors(m, {str(tmp_path / 'm.safetensors')!r})\n"
        f"    m.load_state_dict(fastconv.load_safetensors({str(tmp_path / 'm.safetensors')!r}))\n"
        "assert 'torch' not in sys.modules, 'fastconv imported torch'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------
# The file, read without the safetensors package
# ---------------------------------------------------------------------------------------


def _parse(path):
    """``(header, data)`` of a safetensors file, parsed by hand: an 8-byte little-endian header length, the JSON
    header, then the tensors' bytes."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


ARRAYS = OrderedDict([
    ("conv.weight", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)),
    ("conv.bias", np.array([0.5, -0.25])),
    ("bn.num_batches_tracked", np.array(12345678901, dtype=np.int64)),
    ("strided", np.arange(12.0).reshape(3, 4)[:, ::2].T),  # not contiguous: written by value
    ("big_endian", np.arange(3, dtype=">f4")),
    ("half", np.array([1.5, -2.0], np.float16)),
    ("mask", np.array([True, False])),
    ("pixels", np.array([[0, 255]], np.uint8)),
    ("empty", np.zeros((0, 3), np.float32)),
])
CODES = {"float32": "F32", "float64": "F64", "int64": "I64", "float16": "F16", "bool": "BOOL", "uint8": "U8"}


@needs_safetensors
def test_the_file_is_standard_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(ARRAYS, path, metadata={"source": "fastconv", "epoch": "3"})
    header, data = _parse(path)
    assert header.pop("__metadata__") == {"source": "fastconv", "epoch": "3"}
    assert sorted(header) == sorted(ARRAYS)
    for name, a in ARRAYS.items():
        entry = header[name]
        native = a.astype(a.dtype.newbyteorder("<"))
        assert entry["dtype"] == CODES[native.dtype.name] and entry["shape"] == list(a.shape), name
        start, end = entry["data_offsets"]
        assert data[start:end] == native.tobytes(order="C"), name


@needs_safetensors
def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(ARRAYS, path)
    loaded = load_safetensors(path)
    assert isinstance(loaded, OrderedDict) and list(loaded) == sorted(ARRAYS)
    for name, a in ARRAYS.items():
        b = loaded[name]
        assert b.dtype == a.dtype.newbyteorder("=") and b.shape == a.shape, name
        np.testing.assert_array_equal(b, a, err_msg=name)
        assert b.flags.writeable, name
    assert load_safetensors_metadata(path) == {}


@needs_safetensors
def test_a_module_is_saved_through_its_state_dict_and_loads_back(tmp_path):
    model = _trained_fastconv(bn_net, np.float64)
    path = tmp_path / "bn.safetensors"
    fastconv.save_safetensors(model, path)
    other = bn_net(2, np.float64).eval()
    other.load_state_dict(fastconv.load_safetensors(path))
    _assert_state_equal(other, model.state_dict(), "fastconv round trip")
    x = _batches(np.float64, 1)[0]
    np.testing.assert_array_equal(other(x), model(x))


@needs_safetensors
def test_inputs_are_not_modified(tmp_path):
    state = OrderedDict((k, v.copy()) for k, v in ARRAYS.items())
    flags = {k: v.flags.writeable for k, v in state.items()}
    save_safetensors(state, tmp_path / "w.safetensors")
    for name, a in ARRAYS.items():
        np.testing.assert_array_equal(state[name], a, err_msg=name)
        assert state[name].dtype == a.dtype and state[name].flags.writeable == flags[name], name


# ---------------------------------------------------------------------------------------
# Refusals, atomic writes, corrupt files
# ---------------------------------------------------------------------------------------


@needs_safetensors
@pytest.mark.parametrize(
    "state, metadata, match",
    [
        ({"w": np.zeros(2, np.complex128)}, None, r"state_dict\['w'\] has dtype complex128"),
        ({"w": np.array(["a"])}, None, r"state_dict\['w'\] has dtype <U1"),
        ({"w": np.zeros(2, object)}, None, r"state_dict\['w'\] has dtype object"),
        ({"w": np.zeros(2, np.longdouble)}, None, r"state_dict\['w'\] has dtype float(128|96|64)"),
        ({1: np.zeros(2)}, None, "every key must be a str"),
        ({"__metadata__": np.zeros(2)}, None, "every key must be a str other than '__metadata__'; got '__metadata__'"),
        ({"w": [1.0, 2.0]}, None, r"state_dict\['w'\] must be a numpy.ndarray or a torch.Tensor; got list"),
        ([np.zeros(2)], None, "state_dict must be a mapping"),
        ({"w": np.zeros(2)}, {"epoch": 3}, "metadata must be None or a mapping of str -> str"),
        ({"w": np.zeros(2)}, "epoch 3", "metadata must be None or a mapping of str -> str"),
    ],
    ids=["complex128", "str-array", "object-array", "longdouble", "int-key", "reserved-key", "a-list", "a-list-state",
         "int-metadata", "str-metadata"],
)
def test_what_safetensors_cannot_hold_is_refused_before_writing(state, metadata, match, tmp_path):
    if match.startswith(r"state_dict\['w'\] has dtype float") and np.dtype(np.longdouble) == np.float64:
        pytest.skip("long double is float64 on this platform")
    path = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match="save_safetensors: " + match):
        save_safetensors(state, path, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


@needs_safetensors
def test_bad_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_safetensors: directory .* does not exist"):
        save_safetensors({}, tmp_path / "missing" / "w.safetensors")
    with pytest.raises(IsADirectoryError, match="save_safetensors"):
        save_safetensors({}, tmp_path)
    with pytest.raises(IsADirectoryError, match="load_safetensors"):
        load_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "nothing.safetensors")


OLD = OrderedDict(w=np.arange(6.0), step=np.array(4))


class _HalfWriter:
    """A file that writes half of what it is given, then fails (a full disk)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(bytes(data[: len(data) // 2]))
        self.f.flush()
        raise OSError("disk full (simulated)")


def _failing(message):
    def fail(*args, **kwargs):
        raise OSError(message)
    return fail


@needs_safetensors
@pytest.mark.parametrize(
    "attribute, replacement",
    [
        ("fdopen", lambda real: lambda *a, **k: _HalfWriter(real(*a, **k))),
        ("fsync", lambda real: _failing("fsync failed (simulated)")),
        ("replace", lambda real: _failing("rename failed (simulated)")),
    ],
    ids=["write-fails-midway", "fsync-fails", "replace-fails"],
)
def test_a_failing_write_keeps_the_previous_file(attribute, replacement, tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_safetensors(OLD, path)
    monkeypatch.setattr(os, attribute, replacement(getattr(os, attribute)))
    with pytest.raises(OSError, match="simulated"):
        save_safetensors({"w": np.zeros(1000), "x": np.ones(1000)}, path)
    monkeypatch.undo()
    loaded = load_safetensors(path)
    assert list(loaded) == ["step", "w"] and all(np.array_equal(loaded[k], OLD[k]) for k in OLD)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def _header_file(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


CORRUPT = {
    "truncated": lambda good: good[:-5],
    "empty": lambda good: b"",
    "seven-bytes": lambda good: good[:7],
    "not-safetensors": lambda good: b"PK\x03\x04 this is a zip file, not safetensors" * 4,
    "huge-header-length": lambda good: struct.pack("<Q", 2**62) + good[8:],
    "header-not-json": lambda good: struct.pack("<Q", 8) + b"{{{{{{{{" + good,
    "offsets-past-the-end": lambda good: _header_file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                                      b"\0" * 8),
    "shape-and-offsets-disagree": lambda good: _header_file(
        {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16),
    "unknown-dtype": lambda good: _header_file({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}},
                                               b"\0" * 4),
}


@needs_safetensors
@pytest.mark.parametrize("corrupt", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_file_is_an_error_naming_it(corrupt, tmp_path):
    good = tmp_path / "good.safetensors"
    save_safetensors(OLD, good)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(corrupt(good.read_bytes()))
    for read in (load_safetensors, load_safetensors_metadata):
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a valid safetensors file"):
            read(path)


@needs_safetensors
def test_a_bfloat16_tensor_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(_header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                   "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]}}, b"\0" * 8))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r": tensor 'b' has dtype BF16"):
        load_safetensors(path)


@pytest.mark.parametrize("call", [lambda p: save_safetensors({}, p), load_safetensors, load_safetensors_metadata],
                         ids=["save", "load", "metadata"])
def test_without_the_package_the_error_names_the_extra(call, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes `import safetensors` raise ImportError
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"needs the safetensors package.*pip install 'fastconv\[safetensors\]'"):
        call(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# The guide's example
# ---------------------------------------------------------------------------------------


@pytest.mark.torch
def test_the_guide_example_runs(st_torch):
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(SECTION)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block and ">>>" in block.group(1), "the guide's section lost its python example"
    line = text[:start].count("\n") + text[start:start + block.start()].count("\n") + 1
    test = doctest.DocTestParser().get_doctest(block.group(1), {}, "guide-safetensors", str(GUIDE), line)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted >= 8 and failed == 0, f"{failed} of {attempted} examples of the guide's section failed"
