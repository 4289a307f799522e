"""Checkpoints under concurrent use and hostile files (complements ``test_serialization.py``).

``test_serialization.py`` covers a save that fails or is killed midway, and truncated,
corrupt and foreign ``.npz`` files; ``test_datasets.py`` covers MNIST files that are
truncated or tampered with. Here:

- a reader loading a checkpoint while another *process* keeps re-saving it always gets a
  complete checkpoint (old or new, never a mix), and saves from several threads at once
  leave one complete file and no temporary files;
- files from elsewhere (a ``torch.save`` archive, a pickle -- whose code is never run) and a
  forged array header raise :class:`~fastconv.serialization.CheckpointError`.
"""

import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastconv.serialization import CheckpointError, load, save

REPO = Path(__file__).resolve().parents[1]


def _state(step, n=20000):
    return {"step": step, "w": np.full(n, step, np.float64), "tail": np.full(7, -step, np.int64)}


def _check_consistent(ckpt):
    step = ckpt["step"]
    assert np.all(ckpt["w"] == step) and np.all(ckpt["tail"] == -step), f"a mix of checkpoints around step {step}"
    return step


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fastconv.serialization import save

    path, n = sys.argv[1], int(sys.argv[2])
    for step in range(1, n + 1):
        save({"step": step, "w": np.full(20000, step, np.float64), "tail": np.full(7, -step, np.int64)}, path)
    """
)


def test_reader_never_sees_a_partial_checkpoint_while_another_process_saves(tmp_path):
    path = tmp_path / "ckpt.npz"
    save(_state(0), path)
    n = 300
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], env=env, stderr=subprocess.PIPE)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            seen.append(_check_consistent(load(path)))
    finally:
        if writer.poll() is None:
            writer.kill()
        _, err = writer.communicate()
    assert writer.returncode == 0, err.decode()[-2000:]
    assert seen == sorted(seen)  # never back to an older checkpoint
    assert len(set(seen)) >= 3, "the reader did not overlap the writer"
    assert _check_consistent(load(path)) == n
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_saves_from_several_threads_leave_one_complete_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    errors = []
    barrier = threading.Barrier(4)

    def saver(tid):
        try:
            barrier.wait()
            for i in range(15):
                save(_state(100 * tid + i, n=5000), path)
                _check_consistent(load(path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=saver, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _check_consistent(load(path)) % 100 == 14  # some thread's last save
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _torch_file(path):
    torch = pytest.importorskip("torch")
    torch.save({"0.weight": torch.ones(2, 3)}, path)


def _pickle_file(path):
    with open(path, "wb") as f:
        pickle.dump({"w": _RunsCodeWhenUnpickled(path.parent / "pwned"), "epoch": 1}, f)


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a checkpoint")


@pytest.mark.parametrize("make, match", [(_torch_file, "metadata"), (_pickle_file, "corrupt or truncated"),
                                         (_zip_of_text, "metadata")],
                         ids=["torch.save-archive", "pickle-with-code", "zip-of-text"])
def test_files_from_elsewhere_are_refused_without_running_code(make, match, tmp_path):
    path = tmp_path / "model.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "pwned").exists()


def _forge(path, shape):
    """A checkpoint whose array member has a valid zip CRC but a .npy header that claims ``shape``."""
    save({"w": np.arange(10.0)}, path)
    with zipfile.ZipFile(path) as zf:
        meta = zf.read("__fastconv__")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__fastconv__", meta)
        zf.writestr("w.npy", header.getvalue() + np.arange(10.0).tobytes())


@pytest.mark.parametrize(
    "shape",
    [(11,), (2**28,), (2**62,),
     (2**40,)],
    ids=["11", "2GiB", "beyond-int64-bytes", "8TiB"],
)
def test_forged_array_header_is_refused(shape, tmp_path):
    path = tmp_path / "forged.npz"
    _forge(path, shape)
    with pytest.raises(CheckpointError):
        load(path)
