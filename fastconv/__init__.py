"""fastconv: a Numba-JIT CPU engine for convolutional networks.

The functional API (NCHW arrays, PyTorch semantics) is re-exported here::

    import fastconv as fc
    y = fc.conv2d(x, w, b, stride=1, padding=1)
    dx, dw, db = fc.conv2d_backward(dy, x, w, stride=1, padding=1)
    y, idx = fc.max_pool2d(x, 2)
    dx = fc.max_pool2d_backward(dy, idx, x.shape)
"""

from .functional import (
    conv2d,
    conv2d_backward,
    conv2d_backward_input,
    conv2d_backward_weight,
    get_num_threads,
    max_pool2d,
    max_pool2d_backward,
    set_num_threads,
)

from . import nn, optim, serialization
from .serialization import CheckpointError, load, save

__version__ = "0.1.0"

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
    "get_num_threads",
    "nn",
    "optim",
    "serialization",
    "save",
    "load",
    "CheckpointError",
]
