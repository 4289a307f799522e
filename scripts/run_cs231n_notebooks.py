#!/usr/bin/env python
"""Run a cs231n assignment-2 notebook's code cells with the student's layer files replaced by fastconv.compat.

The assignment folder is copied to a scratch directory (nothing in it is changed), and
there ``cs231n/layers.py``, ``cs231n/fast_layers.py`` and ``cs231n/layer_utils.py`` become
one import each, as a student would write them::

    from fastconv.compat.layers import *        # cs231n/layers.py
    from fastconv.compat.fast_layers import *   # cs231n/fast_layers.py
    from fastconv.compat.layer_utils import *   # cs231n/layer_utils.py

Everything else (``classifiers/fc_net.py``, ``solver.py``, ``gradient_check.py``,
``data_utils.py``...) is the folder's own: the ``FullyConnectedNet`` cells need a completed
``fc_net.py``. Then every code cell of the notebook runs in order in one namespace, as
Jupyter would: IPython lines (``%...``, ``!...``) are dropped, the Colab cell (Google Drive)
is skipped, figures are drawn off screen. Each cell's output is printed beside the output the
notebook file has stored for it (the numbers its author got with their own layers), and a
summary lists the cells that ran, failed or were skipped.

When the folder has no CIFAR-10 (``cs231n/datasets/cifar-10-batches-py``) or with
``--synthetic-data``, ``get_CIFAR10_data`` returns a synthetic data set of the same keys,
shapes and dtypes (49,000/1,000/1,000 float64 images (N, 3, 32, 32), mean-subtracted, int64
labels): a faint per-class pattern under noise, so a network can learn it from the 1,000
images the training cells use, but not at once; accuracies and losses are then not
comparable with the notebook's.

Examples
--------
The batch-norm notebook (every cell) and the spatial batch/group-norm cells of the
convolutional one::

    python scripts/run_cs231n_notebooks.py ~/cs231n/assignment2

Just the quick checks (no ``Solver`` training cells)::

    python scripts/run_cs231n_notebooks.py ~/cs231n/assignment2 --skip-training

Exit status: 0 when every selected cell ran, 1 when one raised, 2 for bad arguments.
"""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

SHIMS = {
    "layers.py": "from fastconv.compat.layers import *\n",
    "fast_layers.py": "from fastconv.compat.fast_layers import *\n",
    "layer_utils.py": "from fastconv.compat.layer_utils import *\n",
}

#: Notebook -> regular expression a cell must match to run (None: every cell). The setup
#: and data cells always run.
DEFAULT_NOTEBOOKS = {
    "BatchNormalization.ipynb": None,
    "ConvolutionalNetworks.ipynb": r"spatial_(batch|group)norm",
}

_SETUP = re.compile(r"^\s*# *Setup cell|get_CIFAR10_data\(\)", re.M)
#: Cells that train with a Solver or use what such a cell trained.
_TRAINING = re.compile(r"[Ss]olver")


def synthetic_cifar10(num_training=49000, num_validation=1000, num_test=1000, subtract_mean=True, seed=0):
    """A stand-in for ``get_CIFAR10_data``: its keys, shapes and dtypes, on learnable synthetic images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.normal(0.0, 3.0, size=(10, 3, 32, 32))  # weak against the noise: not separable at a glance
    sizes = {"train": num_training, "val": num_validation, "test": num_test}
    data = {}
    for split, n in sizes.items():
        y = rng.integers(0, 10, size=n).astype(np.int64)
        data[f"X_{split}"] = 128.0 + patterns[y] + rng.normal(0.0, 60.0, size=(n, 3, 32, 32))
        data[f"y_{split}"] = y
    if subtract_mean:
        mean = data["X_train"].mean(axis=0)
        for split in sizes:
            data[f"X_{split}"] -= mean
    return {k: data[k] for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")}


def prepare(folder, scratch):
    """Copy the assignment folder into ``scratch`` (without data sets or build output) and write the shims."""
    dest = Path(scratch) / "assignment"
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("datasets", "build", "*.so", "*.o", ".git"))
    for name, text in SHIMS.items():
        (dest / "cs231n" / name).write_text(text)
    has_cifar = (Path(folder) / "cs231n" / "datasets" / "cifar-10-batches-py").is_dir()
    if has_cifar:
        os.symlink(Path(folder).resolve() / "cs231n" / "datasets", dest / "cs231n" / "datasets")
    return dest, has_cifar


def _code(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _stored_output(cell):
    out = []
    for o in cell.get("outputs", []):
        if "text" in o:
            out.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
        elif "text/plain" in o.get("data", {}):
            out.append("".join(o["data"]["text/plain"]))
    return "".join(out)


def _python(code):
    """The cell without IPython's ``%`` and ``!`` lines."""
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def run_notebook(path, select, namespace, skip_training, log):
    """Run the selected code cells of one notebook; return ``[(cell index, status, seconds)]``."""
    cells = json.loads(Path(path).read_text())["cells"]
    results = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        code = _code(cell)
        if not code.strip():
            continue
        if "google.colab" in code:
            results.append((index, "skipped (Colab)", 0.0))
            continue
        setup = _SETUP.search(code)
        if not setup and select is not None and not re.search(select, code):
            continue
        if not setup and skip_training and _TRAINING.search(code):
            results.append((index, "skipped (training)", 0.0))
            continue
        log(f"\n===== {Path(path).name} cell {index} =====\n{code}\n----- output (fastconv.compat)")
        buffer = io.StringIO()
        start = time.perf_counter()
        status = "ok"
        with contextlib.redirect_stdout(buffer):
            try:
                exec(compile(_python(code), f"<{Path(path).name} cell {index}>", "exec"), namespace)
            except Exception:
                status = "FAILED"
                traceback.print_exc(file=buffer)
        seconds = time.perf_counter() - start
        log(buffer.getvalue().rstrip())
        stored = _stored_output(cell).rstrip()
        if stored:
            log(f"----- output stored in the notebook (its author's layers)\n{stored}")
        log(f"----- {status} in {seconds:.1f} s")
        results.append((index, status, seconds))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the assignment folder (holds cs231n/ and the notebooks)")
    parser.add_argument("--notebook", action="append", help="run this notebook's every cell (repeatable); "
                        "default: BatchNormalization.ipynb whole and ConvolutionalNetworks.ipynb's norm cells")
    parser.add_argument("--synthetic-data", action="store_true", help="synthetic CIFAR-10 even if the folder has it")
    parser.add_argument("--skip-training", action="store_true", help="skip the cells that train with Solver")
    parser.add_argument("--log", type=Path, help="also write the transcript to this file")
    args = parser.parse_args(argv)
    if not (args.folder / "cs231n").is_dir():
        parser.error(f"{args.folder} has no cs231n/ package: give the assignment folder")
    notebooks = {n: None for n in args.notebook} if args.notebook else DEFAULT_NOTEBOOKS
    missing = [n for n in notebooks if not (args.folder / n).is_file()]
    if args.notebook and missing:
        parser.error(f"no such notebook in {args.folder}: {missing}")

    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)

    os.environ.setdefault("MPLBACKEND", "Agg")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="cs231n-fastconv-") as scratch:
        dest, has_cifar = prepare(args.folder, scratch)
        sys.path.insert(0, str(dest))
        os.chdir(dest)
        import fastconv

        log(f"fastconv {fastconv.__version__} from {Path(fastconv.__file__).parent}; assignment copied to {dest}")
        import cs231n.data_utils

        if args.synthetic_data or not has_cifar:
            cs231n.data_utils.get_CIFAR10_data = synthetic_cifar10
            log("CIFAR-10 is not in the folder: get_CIFAR10_data returns a SYNTHETIC data set of the same shapes")
        namespace = {"__name__": "__main__"}
        with contextlib.suppress(ImportError):
            import matplotlib.pyplot as plt

            plt.show = lambda *a, **k: plt.close("all")
            namespace["plt"] = plt
        summary = []
        for name, select in notebooks.items():
            if (args.folder / name).is_file():
                results = run_notebook(dest / name, select, namespace, args.skip_training, log)
                summary += [(name, *r) for r in results]
            else:
                log(f"\n{name}: not in the folder, skipped")
        sys.path.remove(str(dest))
        os.chdir(cwd)
    log("\n===== summary")
    for name, index, status, seconds in summary:
        log(f"{name} cell {index:3d}: {status} ({seconds:.1f} s)")
    failed = [s for s in summary if s[2] == "FAILED"]
    log(f"{len(summary) - len(failed)} of {len(summary)} cells ok or skipped, {len(failed)} failed")
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
