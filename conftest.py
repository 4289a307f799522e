"""pytest configuration shared by the test suite and the docstring examples (``--doctest-modules fastconv``).

Every docstring example runs, except, one example at a time and with the reason:

- one that imports PyTorch, when it is not installed (it is optional, never a dependency of fastconv);
- one that reads or writes a safetensors file, when the ``safetensors`` package (the optional extra
  ``fastconv[safetensors]``) is not installed;
- one that calls ``load_mnist``, when the MNIST files are in none of the places it looks without downloading
  (``$FASTCONV_DATA_DIR``, the cache directory): the tests never download;
- likewise one that calls ``load_fashion_mnist`` (``$FASTCONV_FASHION_MNIST_DIR``, its cache directory) or
  ``load_cifar10`` (``$FASTCONV_CIFAR10_DIR``, its cache directory), when that data set's files are absent.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

IMPORTS_TORCH = re.compile(r"^\s*(import torch\b|from torch\b)")
LOADS_MNIST = re.compile(r"\bload_mnist\(")
LOADS_FASHION_MNIST = re.compile(r"\bload_fashion_mnist\(")
LOADS_CIFAR10 = re.compile(r"\bload_cifar10\(")
USES_SAFETENSORS = re.compile(r"\b(save_safetensors|load_safetensors|load_safetensors_metadata)\(|"
                              r"^\s*(import safetensors\b|from safetensors\b)")


def _mnist_files_found():
    from fastconv import datasets

    for folder in (os.environ.get("FASTCONV_DATA_DIR"), datasets.default_cache_dir()):
        if folder and all(any((Path(folder) / (n + ext)).is_file() for ext in ("", ".gz"))
                          for n in datasets.MNIST_FILES):
            return True
    return False


def _files_found(env, cache, names):
    """Whether the folder named by ``$env`` or the cache folder ``cache`` holds every file of ``names``."""
    from fastconv import datasets

    return any(folder and all((Path(folder) / n).is_file() for n in names)
               for folder in (os.environ.get(env), datasets.default_cache_dir(cache)))


def _fashion_mnist_files_found():
    from fastconv import datasets

    return _files_found("FASTCONV_FASHION_MNIST_DIR", "fashion-mnist", [n + ".gz" for n in datasets.MNIST_FILES])


def _cifar10_files_found():
    from fastconv import datasets

    return _files_found("FASTCONV_CIFAR10_DIR", "cifar-10", [datasets.CIFAR10_FILE])


def pytest_collection_modifyitems(config, items):
    doctests = [item for item in items if isinstance(item, DoctestItem)]
    rules = [
        (IMPORTS_TORCH, lambda: importlib.util.find_spec("torch") is not None,
         "this docstring example needs PyTorch (pip install torch)"),
        (LOADS_MNIST, _mnist_files_found,
         "this docstring example needs the MNIST files (set FASTCONV_DATA_DIR to their folder)"),
        (LOADS_FASHION_MNIST, _fashion_mnist_files_found,
         "this docstring example needs the Fashion-MNIST files (set FASTCONV_FASHION_MNIST_DIR to their folder)"),
        (LOADS_CIFAR10, _cifar10_files_found,
         "this docstring example needs cifar-10-binary.tar.gz (set FASTCONV_CIFAR10_DIR to its folder)"),
        (USES_SAFETENSORS, lambda: importlib.util.find_spec("safetensors") is not None,
         "this docstring example needs the safetensors package (pip install 'fastconv[safetensors]')"),
    ]
    for pattern, available, reason in rules:
        uses = [item for item in doctests if any(pattern.search(e.source) for e in item.dtest.examples)]
        if uses and not available():
            for item in uses:
                item.add_marker(pytest.mark.skip(reason=reason))
