"""fastconv: a Numba-JIT CPU engine for convolutional networks.

The functional API (NCHW arrays, PyTorch semantics) is re-exported here::

    import fastconv as fc
    y = fc.conv2d(x, w, b, stride=1, padding=1)
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=1, padding=1)
    y, idx = fc.max_pool2d(x, 2)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
    print(fc.conv2d_plan(x.shape, w.shape, padding=1))   # which strategy each pass takes
"""

from . import functional, nn, optim, plan, serialization, transforms
from .functional import *  # noqa: F401,F403 - the functional API, listed in functional.__all__
from .serialization import CheckpointError, load, save
from .serialization import load_safetensors, load_safetensors_metadata, save_safetensors

__version__ = "0.1.0"

__all__ = list(functional.__all__) + [
    "functional",
    "plan",
    "nn",
    "optim",
    "serialization",
    "transforms",
    "save",
    "load",
    "CheckpointError",
    "save_safetensors",
    "load_safetensors",
    "load_safetensors_metadata",
]
