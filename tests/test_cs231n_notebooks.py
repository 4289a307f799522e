"""scripts/run_cs231n_notebooks.py on a stand-in assignment folder (the real notebooks are not ours to ship).

The folder holds a ``cs231n`` package whose ``layers.py`` is an unfinished student file and whose
data loader has no data, and a notebook with a Colab cell, IPython lines, a setup cell, a data
cell and check cells: the script must run the checks on fastconv.compat in a scratch copy, give
the data cells synthetic CIFAR-10 of the right shapes, leave the folder untouched, print each
cell's output beside the stored one, and exit 1 when a cell fails.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_cs231n_notebooks.py"

CELLS = [
    "from google.colab import drive\ndrive.mount('/content/drive')",
    "# Setup cell.\nimport numpy as np\n%matplotlib inline\nfrom cs231n.data_utils import get_CIFAR10_data",
    "data = get_CIFAR10_data(num_training=40, num_validation=10, num_test=10)\n"
    "print({k: (v.shape, str(v.dtype)) for k, v in data.items()})",
    "from cs231n.layers import *\n!echo this line is IPython's\n"
    "out, _ = spatial_batchnorm_forward(data['X_train'][:8], np.ones(3), np.zeros(3), {'mode': 'train'})\n"
    "print('max |mean|', float(abs(out.mean(axis=(0, 2, 3))).max()) < 1e-12)",
    "from cs231n.layers import conv_forward_naive as mine\nfrom cs231n.fast_layers import *\n"
    "print('fast:', 'conv_forward_fast' in dir(), 'naive still the one from layers:', conv_forward_naive is mine)",
]


def _folder(tmp_path, extra_cells=()):
    folder = tmp_path / "assignment2"
    (folder / "cs231n").mkdir(parents=True)
    (folder / "cs231n" / "__init__.py").write_text("")
    (folder / "cs231n" / "data_utils.py").write_text(
        "def get_CIFAR10_data(*args, **kwargs):\n    raise RuntimeError('no CIFAR-10 here')\n")
    student = "def spatial_batchnorm_forward(x, gamma, beta, bn_param):\n    raise NotImplementedError\n"
    for name in ("layers.py", "fast_layers.py", "layer_utils.py"):
        (folder / "cs231n" / name).write_text(student)
    cells = [{"cell_type": "code", "source": c, "outputs": [], "metadata": {}} for c in (*CELLS, *extra_cells)]
    cells[2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["X_train: (49000, 3, 32, 32)\n"]}]
    cells.insert(1, {"cell_type": "markdown", "source": ["# Batch normalization"], "metadata": {}})
    (folder / "BatchNormalization.ipynb").write_text(json.dumps({"cells": cells, "nbformat": 4}))
    return folder, student


def _run(folder, *args):
    return subprocess.run([sys.executable, str(SCRIPT), str(folder), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_cells_run_on_fastconv_compat_with_synthetic_data(tmp_path):
    folder, student = _folder(tmp_path)
    done = _run(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "SYNTHETIC" in out
    assert "'X_train': ((40, 3, 32, 32), 'float64')" in out and "'y_test': ((10,), 'int64')" in out
    assert "X_train: (49000, 3, 32, 32)" in out  # the stored output, printed beside
    assert "max |mean| True" in out  # fastconv's spatial batch norm, not the student's stub
    assert "fast: True naive still the one from layers: True" in out  # fast_layers' * brings no *_naive name
    assert "cell   0: skipped (Colab)" in out and "ConvolutionalNetworks.ipynb: not in the folder" in out
    assert "0 failed" in out
    assert (folder / "cs231n" / "layers.py").read_text() == student  # the user's folder is untouched


def test_a_failing_cell_is_reported_and_sets_the_exit_status(tmp_path):
    folder, _ = _folder(tmp_path, ["raise ValueError('the check failed')"])
    done = _run(folder, "--notebook", "BatchNormalization.ipynb")
    assert done.returncode == 1
    assert "ValueError: the check failed" in done.stdout and "cell   6: FAILED" in done.stdout


@pytest.mark.parametrize("args, message", [([], "has no cs231n/ package"),
                                           (["--notebook", "Missing.ipynb"], "no such notebook")])
def test_bad_arguments(tmp_path, args, message):
    folder = tmp_path if not args else _folder(tmp_path)[0]
    done = _run(folder, *args)
    assert done.returncode == 2 and message in done.stderr
