"""Drop-in replacements for the cs231n assignment's layer functions, on fastconv's kernels.

One module for one file of the assignment's ``cs231n`` package, so a student replaces each
file by one import:

==============================  ===============================================================
cs231n file                     replacement
==============================  ===============================================================
``cs231n/layers.py``            ``from fastconv.compat.layers import *``: affine, ReLU, losses,
                                batch/layer/group norm, dropout, the ``*_naive`` conv and pool
``cs231n/fast_layers.py``       ``from fastconv.compat.fast_layers import *``: exactly cs231n's
                                fast-layer names, never a ``*_naive`` one
``cs231n/layer_utils.py``       ``from fastconv.compat.layer_utils import *``: the sandwich
                                layers (``conv_bn_relu_forward``, ``affine_bn_relu_forward``...)
==============================  ===============================================================

``from fastconv.compat import *`` provides the names fastconv has always exported here
(the fast, naive and alternative conv/pool layers, affine, ReLU, the losses and the
conv/affine ReLU sandwiches) plus the normalisation layers and sandwiches; it is meant
for new code, not as a file replacement (it would replace a student's naive layers).

Conventions, arguments, caches and the max-pool tie rule are documented in each module.
"""

from . import fast_layers, layer_utils, layers
from .fast_layers import *  # noqa: F401,F403
from .fast_layers import __all__ as _fast_all
from .layer_utils import *  # noqa: F401,F403
from .layer_utils import __all__ as _utils_all
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__all__ = list(dict.fromkeys(_fast_all + _layers_all + _utils_all))
