"""pytest configuration shared by the test suite and the docstring examples (``--doctest-modules fastconv``).

PyTorch is optional (never a dependency of fastconv): a docstring example that imports it runs when it is
installed, and is skipped, that example alone and with the reason, when it is not. Every other example always
runs; none is skipped wholesale.
"""

import importlib.util
import re

import pytest
from _pytest.doctest import DoctestItem

IMPORTS_TORCH = re.compile(r"^\s*(import torch\b|from torch\b)")


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="this docstring example needs PyTorch (pip install torch)")
    for item in items:
        if isinstance(item, DoctestItem) and any(IMPORTS_TORCH.match(e.source) for e in item.dtest.examples):
            item.add_marker(skip)
