"""fastconv.serialization: round trips, the no-pickle .npz format, atomic writes, corrupt files."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fastconv import nn, optim
from fastconv.serialization import FORMAT, FORMAT_VERSION, CheckpointError, load, save

REPO = Path(__file__).resolve().parents[1]


def assert_same(a, b, where="root"):
    """Recursive equality that also checks types, dtypes, shapes and key order (NaN == NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (np.isnan(a) and np.isnan(b)) or (a == b and np.copysign(1, a) == np.copysign(1, b)), where
    else:
        assert a == b, where


def _sample():
    gen = np.random.default_rng(0)
    base = gen.standard_normal((4, 6))
    return {
        "model": OrderedDict([("0.weight", gen.standard_normal((3, 1, 3, 3)).astype(np.float32)),
                              ("0.bias", np.zeros(3, np.float32))]),
        "optim": {"state": {0: {"step": 7, "exp_avg": np.ones(3)}, 1: {}},
                  "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "epoch": 3,
        "floats": [0.1, -0.0, float("inf"), float("-inf"), float("nan"), 1e-310, 2.0**1000],
        "ints": [0, -5, 2**100],
        "strings": ["", "héllo / wörld", "a\nb"],
        "flags": (True, False, None),
        "np_scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.uint8(255)],
        "arrays": {
            "0d": np.array(2.5),
            "empty": np.zeros((0, 3), np.int32),
            "bool": np.array([True, False]),
            "uint64": np.array([2**64 - 1], np.uint64),
            "complex": np.array([1 + 2j]),
            "unicode": np.array(["ab", "c"]),
            "big-endian": np.arange(3, dtype=">f8"),
            "strided": base[::2, ::3],
            "fortran": np.asfortranarray(base),
            "nan": np.array([np.nan, 1.0], np.float32),
        },
        "empty": {"dict": {}, "list": [], "tuple": ()},
        "a/b": np.arange(2),  # flattens to the same member name as ["a"]["b"]
        "a": {"b": np.arange(3)},
        "__fastconv__": np.arange(4),
    }


def test_round_trip_preserves_structure_types_and_values(tmp_path):
    obj = _sample()
    path = tmp_path / "ckpt.npz"
    save(obj, path)
    loaded = load(path)
    expected = dict(obj)
    expected["model"] = dict(obj["model"])  # OrderedDict comes back as a dict (same order)
    assert_same(expected, loaded)
    assert loaded["arrays"]["strided"].flags.writeable


def test_file_is_a_plain_npz_without_pickle(tmp_path):
    path = tmp_path / "ckpt.npz"
    save(_sample(), path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}  # every member loads without pickle
    np.testing.assert_array_equal(arrays["model/0.bias"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(arrays["optim/state/0/exp_avg"], np.ones(3))
    meta = json.loads(arrays.pop("__fastconv__").decode("utf-8"))
    assert meta["format"] == FORMAT and meta["version"] == FORMAT_VERSION
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())


def test_model_and_optimizer_checkpoint(tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3, rng=1))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = rng.standard_normal((4, 1, 4, 4)).astype(np.float32), np.array([0, 1, 2, 0])
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, tmp_path / "c.npz")
    ckpt = load(tmp_path / "c.npz")
    model2 = nn.Sequential(nn.Conv2d(1, 2, 3, rng=5), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3, rng=6))
    opt2 = optim.SGD(model2.parameters(), lr=0.5)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    assert ckpt["epoch"] == 3 and opt2.param_groups[0]["momentum"] == 0.9
    np.testing.assert_array_equal(model2(x), model(x))


def test_overwrite_pathlike_str_and_compression(tmp_path):
    path = tmp_path / "c.npz"
    save({"v": 1}, path)
    save({"v": 2, "z": np.zeros(10000)}, str(path))
    assert load(str(path))["v"] == 2
    small = tmp_path / "small.npz"
    save({"z": np.zeros(10000)}, small, compress=True)
    assert small.stat().st_size < path.stat().st_size / 10
    np.testing.assert_array_equal(load(small)["z"], np.zeros(10000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "small.npz"]  # no temp files left


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_file_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        save({"a": 1}, tmp_path / "c.npz")
    finally:
        os.umask(umask)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "obj, exc, match",
    [
        ({"bad": {1, 2}}, TypeError, r"set at \['bad'\]"),
        ({"x": [b"bytes"]}, TypeError, r"bytes at \['x'\]\[0\]"),
        ({"o": np.array([object()])}, TypeError, "pickle"),
        ({(1, 2): 3}, TypeError, "keys must be str or int"),
        ({True: 3}, TypeError, "keys must be str or int"),
        (object(), TypeError, "top level"),
    ],
    ids=["set", "bytes", "object-array", "tuple-key", "bool-key", "object"],
)
def test_unsupported_objects_are_refused_before_writing(obj, exc, match, tmp_path):
    with pytest.raises(exc, match=match):
        save(obj, tmp_path / "c.npz")
    assert list(tmp_path.iterdir()) == []


def test_circular_reference_is_refused(tmp_path):
    obj = {"a": []}
    obj["a"].append(obj)
    with pytest.raises(ValueError, match="circular"):
        save(obj, tmp_path / "c.npz")


def test_bad_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save({}, tmp_path / "missing" / "c.npz")
    with pytest.raises(IsADirectoryError):
        save({}, tmp_path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.npz")


# ---------------------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------------------

OLD = {"epoch": 1, "w": np.arange(6.0)}


def _assert_old_file_intact(path):
    assert_same(load(path), OLD)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def _failing_replace(src, dst):
    raise OSError("disk full (simulated)")


class _Interrupt(BaseException):
    pass


def _writer_failing_after(n, exc):
    original = np.lib.format.write_array
    calls = []

    def write_array(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise exc
        return original(*args, **kwargs)

    return write_array


@pytest.mark.parametrize(
    "target, replacement, exc",
    [
        (os, ("replace", _failing_replace), OSError),
        (os, ("fsync", lambda fd: (_ for _ in ()).throw(OSError("fsync failed"))), OSError),
        (np.lib.format, ("write_array", _writer_failing_after(1, OSError("write failed"))), OSError),
        (np.lib.format, ("write_array", _writer_failing_after(1, _Interrupt())), _Interrupt),
    ],
    ids=["replace-fails", "fsync-fails", "writer-fails-midway", "interrupt-midway"],
)
def test_failed_save_keeps_the_old_file(target, replacement, exc, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save(OLD, path)
    monkeypatch.setattr(target, *replacement)
    with pytest.raises(exc):
        save({"epoch": 2, "w": np.zeros(6), "x": np.ones(100), "y": np.ones(100)}, path)
    monkeypatch.undo()
    _assert_old_file_intact(path)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_process_killed_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save(OLD, path)
    child = textwrap.dedent(
        """
        import os, signal, sys
        import numpy as np
        from fastconv.serialization import save

        original = np.lib.format.write_array
        written = []

        def write_then_die(*args, **kwargs):
            original(*args, **kwargs)
            written.append(1)
            if len(written) == 2:  # part of the new file is on disk
                os.kill(os.getpid(), signal.SIGKILL)

        np.lib.format.write_array = write_then_die
        save({"epoch": 2, "a": np.ones(100000), "b": np.ones(100000), "c": np.ones(10)}, sys.argv[1])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", child, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert_same(load(path), OLD)
    leftovers = [p for p in tmp_path.iterdir() if p.name != path.name]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".ckpt.npz.") and leftovers[0].suffix == ".tmp"
    assert leftovers[0].stat().st_size > 100000 * 8  # the kill really happened mid-write


# ---------------------------------------------------------------------------------------
# Corrupt and foreign files
# ---------------------------------------------------------------------------------------


def _good_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"w": np.arange(100, dtype=np.float64), "epoch": 4}, path)
    return path


def _truncate_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_tail(path):
    data = path.read_bytes()
    path.write_bytes(data[:-10])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(500))


def _flip_array_byte(path):
    data = bytearray(path.read_bytes())
    payload = np.arange(100, dtype=np.float64).tobytes()
    start = bytes(data).find(payload)
    assert start > 0
    data[start + 400] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)


def _npy_bytes(a, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _meta(**fields):
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "tree": {"t": "int", "v": 1}}
    meta.update(fields)
    return json.dumps(meta)


def _foreign_npz(path):
    np.savez(path.with_suffix(".tmp.npz"), w=np.arange(3))
    os.replace(path.with_suffix(".tmp.npz"), path)


def _npy(path):
    with open(path, "wb") as f:
        np.save(f, np.arange(3))


CORRUPTIONS = [
    (_truncate_half, "corrupt or truncated"),
    (_truncate_tail, "corrupt or truncated"),
    (_empty, "corrupt or truncated"),
    (_garbage, "corrupt or truncated"),
    (_flip_array_byte, "CRC"),
    (_foreign_npz, "no '__fastconv__' metadata"),
    (_npy, "corrupt or truncated"),
    (lambda p: _rewrite(p, {"__fastconv__": "{not json"}), "unreadable metadata"),
    (lambda p: _rewrite(p, {"__fastconv__": _meta(format="something-else")}), "does not identify"),
    (lambda p: _rewrite(p, {"__fastconv__": _meta(version=FORMAT_VERSION + 1)}), "upgrade fastconv"),
    (lambda p: _rewrite(p, {"__fastconv__": _meta(tree={"t": "array", "k": "gone"})}), "'gone.npy' is missing"),
    (lambda p: _rewrite(p, {"__fastconv__": _meta(tree={"t": "weird"})}), "unknown entry type"),
    (lambda p: _rewrite(p, {"__fastconv__": _meta(tree={"t": "array", "k": "o"}),
                            "o.npy": _npy_bytes(np.array([{"evil": 1}], dtype=object), allow_pickle=True)}),
     "pickle"),
]


@pytest.mark.parametrize("corrupt, match", CORRUPTIONS,
                         ids=["truncated-half", "truncated-tail", "empty", "garbage", "flipped-byte", "foreign-npz",
                              "npy-file", "bad-json", "wrong-format", "newer-version", "missing-member",
                              "unknown-node", "pickled-member"])
def test_corrupt_or_foreign_files_give_clear_errors(corrupt, match, tmp_path):
    path = _good_file(tmp_path)
    corrupt(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
