"""PyTorch-style layers on fastconv's kernels, with explicit backward passes.

The layers keep PyTorch's names, arguments, parameter shapes, default initialisation and
``state_dict`` keys, so a network written for ``torch.nn`` reads the same here. There is
no autograd: every layer's :meth:`~Module.forward` caches what its backward pass needs,
and :meth:`~Module.backward` takes the gradient of the loss with respect to the layer's
output, *adds* the parameter gradients into each ``Parameter.grad`` (as PyTorch
accumulates into ``.grad``) and returns the gradient with respect to the input::

    import numpy as np
    from fastconv import nn, optim

    nn.manual_seed(0)                         # seeds every default initialisation
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    logits = model(x)                         # x: float32 (N, 1, 28, 28)
    loss = loss_fn(logits, y)                 # y: integer labels (N,)
    model.backward(loss_fn.backward())        # fills every parameter's .grad
    opt.step()
    opt.zero_grad()

Every computation goes through the functional API: layers check their input once (with
messages that name the layer), then run the plan of :mod:`fastconv.plan` -- the strategy
:mod:`fastconv.functional` would take for the same call. Convolution and pooling layers
plan once per input shape and keep the plan. ``backward(dout, input_grad=True)`` has one
signature across the hierarchy: with ``input_grad=False`` a layer still adds its
parameter gradients but skips (and returns ``None`` for) the input gradient.

Random numbers
--------------
Initialisation and dropout draw from a :class:`numpy.random.Generator`. Every layer that
needs one takes ``rng=None``: an existing ``Generator`` (used as is, so several layers can
share it), an int seed (a new ``Generator`` for that layer), or ``None`` for the
module-wide default generator. :func:`manual_seed` replaces the default generator, so
``nn.manual_seed(s)`` before building a model makes its initialisation reproducible (the
layers draw in construction order), and before training makes default dropout masks
reproducible.

Gradient caching
----------------
Forward passes cache their inputs (or masks/indices) for backward. Under
``with nn.no_grad():`` nothing is cached, which saves memory when evaluating; calling
``backward`` after such a forward raises an error. The cache holds references, not
copies: do not modify an input in place between ``forward`` and ``backward``.
"""

import contextlib
import math
import numbers
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from . import _loss
from . import _tensors
from . import _validation as _V
from . import functional as _F
from . import plan as _plan

__all__ = [
    "Parameter",
    "Module",
    "Sequential",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "ReLU",
    "Flatten",
    "Linear",
    "Dropout",
    "CrossEntropyLoss",
    "LeakyReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "MSELoss",
    "L1Loss",
    "NLLLoss",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "Identity",
    "Residual",
    "manual_seed",
    "default_generator",
    "no_grad",
    "is_grad_enabled",
]

_FLOAT_DTYPES = _V.FLOAT_DTYPES

# ---------------------------------------------------------------------------------------
# Random numbers and grad mode
# ---------------------------------------------------------------------------------------

_default_rng = np.random.default_rng()


def manual_seed(seed):
    """Replace the module-wide default generator by ``numpy.random.default_rng(seed)``.

    Layers built afterwards with ``rng=None`` draw their initial weights from it, in
    construction order, and :class:`Dropout` layers with ``rng=None`` draw their masks
    from it. Layers given their own ``rng`` are not affected.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        Anything :func:`numpy.random.default_rng` accepts, except a ``Generator``.

    Returns
    -------
    numpy.random.Generator
        The new default generator.

    Examples
    --------
    >>> from fastconv import nn
    >>> _ = nn.manual_seed(0); first = nn.Linear(2, 2).weight.data.copy()
    >>> _ = nn.manual_seed(0); again = nn.Linear(2, 2).weight.data
    >>> bool((first == again).all())
    True
    """
    global _default_rng
    if isinstance(seed, (bool, np.bool_)) or isinstance(seed, np.random.Generator):
        raise TypeError(f"manual_seed: seed must be an int or a SeedSequence; got {seed!r}")
    _default_rng = _seeded(seed, "manual_seed", "seed")
    return _default_rng


def _seeded(seed, owner, name):
    """``numpy.random.default_rng(seed)``, with NumPy's errors (negative ints, floats, ...) naming ``owner``."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {name} must be a non-negative int or a SeedSequence; got {seed!r} ({exc})") from None


def default_generator():
    """The module-wide default :class:`numpy.random.Generator` (see :func:`manual_seed`)."""
    return _default_rng


def _generator(rng, owner):
    """Resolve a layer's ``rng`` argument to a Generator (None -> the current default)."""
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        return _seeded(int(rng), owner, "rng")
    raise TypeError(f"{owner}: rng must be None, an int seed or a numpy.random.Generator; got {rng!r}")


_grad_mode = threading.local()


def is_grad_enabled():
    """True unless the calling thread is inside a :class:`no_grad` block."""
    return getattr(_grad_mode, "enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager (or decorator) that stops forward passes from caching for backward.

    Like ``torch.no_grad``: use it for evaluation to save memory. The setting is per
    thread. A ``backward`` call after a forward pass run under ``no_grad`` raises
    ``RuntimeError``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU())
    >>> with nn.no_grad():
    ...     predictions = model(np.ones((4, 3), np.float32)).argmax(axis=1)
    >>> predictions.shape, nn.is_grad_enabled()
    ((4,), True)
    >>> model.backward(np.ones((4, 2), np.float32))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: ReLU.backward() called without a cached forward pass: call forward() first (outside ...)
    """

    def __enter__(self):
        # A per-thread stack, so one instance (e.g. a decorator) is safe to share.
        stack = getattr(_grad_mode, "stack", None)
        if stack is None:
            stack = _grad_mode.stack = []
        stack.append(is_grad_enabled())
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = _grad_mode.stack.pop()
        return False


# ---------------------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------------------


def _positive_int(value, name, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int; got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be positive; got {value}")
    return int(value)


def _check_bool(value, name, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False; got {value!r}")
    return bool(value)


def _check_input(x, owner, ndim=None, layout="", dtype=None):
    """Check a layer input: a float32/float64 ndarray, optionally of ``ndim`` dims and ``dtype``."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{owner}: input must be a numpy.ndarray{' of shape ' + layout if layout else ''}; "
                        f"got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{owner}: input must have dtype float32 or float64; got {x.dtype} (shape {x.shape})")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{owner}: input must be {ndim}-D with shape {layout}; got shape {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{owner}: input has dtype {x.dtype} but the layer's parameters are {dtype}; "
            f"convert the input with x.astype(np.{dtype}) or the model with model.to(np.{x.dtype})"
        )


def _check_dout(dout, owner, shape, dtype):
    """Check that ``dout`` has the shape and dtype of the forward output."""
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{owner}.backward: dout must be a numpy.ndarray of shape {shape}; got {type(dout).__name__}")
    if dout.shape != shape:
        raise ValueError(f"{owner}.backward: dout must have the forward output's shape {shape}; got {dout.shape}")
    if dout.dtype != dtype:
        raise TypeError(f"{owner}.backward: dout must have the forward output's dtype {dtype}; got {dout.dtype}")


def _uniform_parameter(gen, bound, shape, dtype, owner, name):
    """A Parameter drawn from ``U(-bound, bound)``; a MemoryError naming the layer if it cannot be allocated."""
    try:
        return Parameter(gen.uniform(-bound, bound, size=shape).astype(dtype))
    except (MemoryError, ValueError) as exc:  # ValueError: NumPy's "array is too big"
        raise MemoryError(f"{owner}: cannot allocate {name} of shape {shape} "
                          f"({math.prod(shape) * dtype.itemsize:,} bytes of {dtype}): {exc}") from None


def _no_cache_error(owner):
    return RuntimeError(
        f"{owner}.backward() called without a cached forward pass: call forward() first "
        f"(outside fastconv.nn.no_grad())"
    )


# ---------------------------------------------------------------------------------------
# Parameter and Module
# ---------------------------------------------------------------------------------------


class Parameter:
    """A trainable array and its gradient.

    Parameters
    ----------
    data : ndarray, float32 or float64
        The value. Stored as given when it is already a C-contiguous float array (no copy),
        otherwise as a C-contiguous copy.

    Attributes
    ----------
    data : ndarray
        The value; optimizers update it in place.
    grad : ndarray
        Same shape and dtype as ``data``, zero at creation; backward passes *add* into it
        and ``zero_grad()`` resets it to zero.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> p = nn.Parameter(np.zeros((2, 3), np.float32))
    >>> p, p.grad.dtype
    (Parameter(shape=(2, 3), dtype=float32), dtype('float32'))
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Parameter: data must be a numpy.ndarray; got {type(data).__name__}")
        if data.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"Parameter: data must have dtype float32 or float64; got {data.dtype}")
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        """Shape of :attr:`data`."""
        return self.data.shape

    @property
    def dtype(self):
        """dtype of :attr:`data`."""
        return self.data.dtype

    @property
    def size(self):
        """Number of elements of :attr:`data`."""
        return self.data.size

    def zero_grad(self):
        """Reset :attr:`grad` to zeros (reallocated if ``data`` changed shape or dtype)."""
        if self.grad is None or self.grad.shape != self.data.shape or self.grad.dtype != self.data.dtype:
            self.grad = np.zeros_like(self.data)
        else:
            self.grad.fill(0)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


IncompatibleKeys = namedtuple("IncompatibleKeys", "missing_keys unexpected_keys")
IncompatibleKeys.__doc__ = "Keys reported by :meth:`Module.load_state_dict` (as PyTorch's ``_IncompatibleKeys``)."


def _indent(text, spaces):
    lines = text.split("\n")
    return "\n".join(lines[:1] + [" " * spaces + line for line in lines[1:]])


class Module:
    """Base class of every layer and container.

    Subclasses call ``super().__init__()`` first, then assign :class:`Parameter` and
    :class:`Module` attributes, which are registered in assignment order (that order is
    the order of :meth:`parameters` and of the :meth:`state_dict` keys, as in PyTorch).
    Arrays that are state but not trained (running statistics) are registered with
    :meth:`register_buffer`: they are saved in :meth:`state_dict` after the module's own
    parameters but are not in :meth:`parameters`, so optimizers leave them alone.
    They implement :meth:`forward` and :meth:`backward`.

    Attributes
    ----------
    training : bool
        True in training mode (the default), False after :meth:`eval`. :class:`Dropout`
        and the batch norms (running statistics in eval) behave differently.

    Examples
    --------
    A layer of your own is a ``forward`` and a ``backward`` (which adds into its parameters' ``grad``):

    >>> import numpy as np
    >>> from fastconv import nn
    >>> class Scale(nn.Module):
    ...     def __init__(self, features):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(np.ones(features))
    ...     def forward(self, x):
    ...         self._x = x
    ...         return self.weight.data * x
    ...     def backward(self, dout, input_grad=True):
    ...         self.weight.grad += (dout * self._x).sum(axis=0)
    ...         return dout * self.weight.data if input_grad else None
    >>> layer = Scale(3)
    >>> layer(np.array([[1.0, 2.0, 3.0]]))
    array([[1., 2., 3.]])
    >>> layer.backward(np.ones((1, 3))), layer.weight.grad
    (array([[1., 1., 1.]]), array([1., 2., 3.]))
    >>> list(layer.state_dict())
    ['weight']
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # -- attribute registration ------------------------------------------------------
    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(
                    f"cannot assign {type(value).__name__} '{name}' before Module.__init__() was called"
                )
            object.__setattr__(self, name, value)
            return
        modules = self.__dict__["_modules"]
        buffers = self.__dict__["_buffers"]
        if name in buffers and not isinstance(value, (Parameter, Module)):
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer '{name}' (ndarray or None expected)")
            buffers[name] = value
            return
        buffers.pop(name, None)
        # Re-assigning a registered name keeps its place in the order (as in PyTorch).
        if isinstance(value, Parameter):
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        else:
            params.pop(name, None)
            modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        if name in d.get("_buffers", ()):
            return d["_buffers"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent.discard(name)
        else:
            object.__delattr__(self, name)

    def register_buffer(self, name, array, persistent=True):
        """Register ``array`` (an ndarray, or None for "not kept") as the buffer ``name`` (PyTorch's API).

        A buffer is state that is not trained: it is in :meth:`state_dict` (unless
        ``persistent=False`` or it is None), follows :meth:`to` when it is a float array,
        and is not in :meth:`parameters`. Assigning ``self.name = array`` later replaces it.
        """
        owner = f"{type(self).__name__}.register_buffer"
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{owner}: name must be a non-empty str without '.'; got {name!r}")
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"{owner}: buffer {name!r} must be a numpy.ndarray or None; got {type(array).__name__}")
        if name in self._parameters or name in self._modules or (name in self.__dict__ and name not in self._buffers):
            raise KeyError(f"{owner}: attribute {name!r} already exists")
        self._buffers[name] = array
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    # -- computation -----------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Compute the output (and cache what :meth:`backward` needs)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, dout, input_grad=True):
        """Back-propagate ``dout`` (gradient w.r.t. the last forward's output); return the input gradient.

        Parameter gradients are *added* into each ``Parameter.grad``. With
        ``input_grad=False`` the input gradient is not computed and ``None`` is returned
        (the first layer of a network needs only its parameter gradients).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal -------------------------------------------------------------------
    def named_children(self):
        """List of ``(name, module)`` for the direct submodules, in registration order."""
        return list(self._modules.items())

    def children(self):
        """List of the direct submodules."""
        return list(self._modules.values())

    def named_modules(self, prefix=""):
        """List of ``(dotted_name, module)`` for this module and all submodules, depth first."""
        out, seen = [], set()

        def visit(module, name):
            if id(module) in seen:
                return
            seen.add(id(module))
            out.append((name, module))
            for child_name, child in module._modules.items():
                visit(child, f"{name}.{child_name}" if name else child_name)

        visit(self, prefix)
        return out

    def modules(self):
        """List of this module and all its submodules."""
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """List of ``(dotted_name, Parameter)`` in PyTorch's order.

        Parameters
        ----------
        prefix : str
            Prepended (with a dot) to every name.
        recurse : bool
            Include submodules' parameters.
        remove_duplicate : bool
            List a parameter shared by several modules once (under its first name).
        """
        out, seen = [], set()

        def visit(module, name):
            for pname, p in module._parameters.items():
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                out.append((f"{name}.{pname}" if name else pname, p))
            if recurse:
                for child_name, child in module._modules.items():
                    visit(child, f"{name}.{child_name}" if name else child_name)

        visit(self, prefix)
        return out

    def named_buffers(self, prefix="", recurse=True):
        """List of ``(dotted_name, ndarray)`` of the buffers that are not None, module by module."""
        out = []
        for name, module in (self.named_modules(prefix) if recurse else [(prefix, self)]):
            for bname, b in module._buffers.items():
                if b is not None:
                    out.append((f"{name}.{bname}" if name else bname, b))
        return out

    def buffers(self, recurse=True):
        """List of the buffers (running statistics, ...) that are not None."""
        return [b for _, b in self.named_buffers(recurse=recurse)]

    def _state_entries(self):
        """``(dotted_name, module, attribute, kind)`` of every state_dict entry, in PyTorch's order:
        each module's parameters, then its persistent buffers, then its children."""
        out = []

        def visit(module, prefix):
            for pname in module._parameters:
                out.append((prefix + pname, module, pname, "parameter"))
            for bname, b in module._buffers.items():
                if b is not None and bname not in module._non_persistent:
                    out.append((prefix + bname, module, bname, "buffer"))
            for child_name, child in module._modules.items():
                visit(child, f"{prefix}{child_name}.")

        visit(self, "")
        return out

    def _state_array(self, module, attribute, kind):
        return module._parameters[attribute].data if kind == "parameter" else module._buffers[attribute]

    def parameters(self, recurse=True):
        """List of the :class:`Parameter` objects, in PyTorch's order (what optimizers take)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def zero_grad(self):
        """Reset every parameter's ``.grad`` to zero."""
        for p in self.parameters():
            p.zero_grad()

    # -- modes and dtype -------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on this module and all submodules.

        Returns ``self``.
        """
        mode = _check_bool(mode, "mode", f"{type(self).__name__}.train")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode (``train(False)``); returns ``self``."""
        return self.train(False)

    def to(self, dtype):
        """Cast every parameter (and its gradient) and every float buffer to ``dtype`` (float32 or float64).

        The :class:`Parameter` objects are kept, so an optimizer built before still updates
        them; its state (momentum buffers...) is not cast. Float buffers (running statistics)
        are replaced by cast copies; integer ones (``num_batches_tracked``) are kept.
        Returns ``self``.
        """
        dt = _V.float_dtype(dtype, f"{type(self).__name__}.to")
        for p in self.parameters():
            if p.data.dtype != dt:
                p.data = p.data.astype(dt)
                p.grad = p.grad.astype(dt)
        for m in self.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    m._buffers[name] = b.astype(dt)
        return self

    def float(self):
        """Cast the parameters to float32 (see :meth:`to`)."""
        return self.to(np.float32)

    def double(self):
        """Cast the parameters to float64 (see :meth:`to`)."""
        return self.to(np.float64)

    # -- state -----------------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter and persistent buffer, keyed by dotted name (``"0.weight"``, ``"0.bias"``, ...).

        Returns
        -------
        collections.OrderedDict of str -> ndarray
            Copies, so later training does not change a saved state (PyTorch returns
            views instead).
        """
        return OrderedDict(
            (name, self._state_array(m, attr, kind).copy()) for name, m, attr, kind in self._state_entries()
        )

    def load_state_dict(self, state_dict, strict=True):
        """Copy the arrays of ``state_dict`` into the parameters, in place.

        Everything is checked before anything is copied, so a failed load leaves the model
        unchanged. Unlike PyTorch, a dtype mismatch is an error rather than a silent cast.

        Parameters
        ----------
        state_dict : mapping of str -> ndarray or torch.Tensor
            As returned by :meth:`state_dict` (possibly after :func:`fastconv.save` /
            :func:`fastconv.load`), by :func:`fastconv.load_safetensors`, or by a PyTorch
            model's ``state_dict()``: a ``torch.Tensor`` is read through
            ``.detach().cpu().numpy()`` (``requires_grad`` and the device do not matter; a
            ``bfloat16``, sparse, quantized or meta tensor is a TypeError/ValueError naming
            the key). Its dtype must still match the model's (``model.double()`` for a
            float64 torch model).
        strict : bool, default True
            Require the keys to match exactly. With ``strict=False``, missing and
            unexpected keys are reported in the return value instead; shapes and dtypes of
            the keys present are always checked.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, lists of str.

        Raises
        ------
        TypeError
            ``state_dict`` is not a mapping or one of its values is neither an ndarray nor
            a torch tensor.
        ValueError
            Missing or unexpected keys (when ``strict``), or an array whose shape or dtype
            differs from the parameter's; the message lists every problem.

        Examples
        --------
        >>> import torch
        >>> from fastconv import nn
        >>> layer, twin = nn.Linear(3, 2, rng=0), torch.nn.Linear(3, 2)
        >>> layer.load_state_dict(twin.state_dict())
        IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> bool((layer.weight.data == twin.weight.detach().numpy()).all())
        True
        """
        owner = f"{type(self).__name__}.load_state_dict"
        strict = _check_bool(strict, "strict", owner)
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{owner}: state_dict must be a mapping of name -> ndarray; got {type(state_dict).__name__}"
            )
        own = OrderedDict((name, self._state_array(m, attr, kind)) for name, m, attr, kind in self._state_entries())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        values = {}  # the arrays to copy; torch tensors read as arrays (fastconv._tensors.as_array)
        for name, a in own.items():
            if name not in state_dict:
                continue
            value = values[name] = _tensors.as_array(state_dict[name], owner, f"state_dict[{name!r}]")
            if value.shape != a.shape:
                problems.append(f"{name!r}: shape {value.shape} in state_dict, {a.shape} in the model")
            elif value.dtype != a.dtype:
                problems.append(f"{name!r}: dtype {value.dtype} in state_dict, {a.dtype} in the model")
        if strict and missing:
            problems.append("missing key(s): " + ", ".join(map(repr, missing)))
        if strict and unexpected:
            problems.append("unexpected key(s): " + ", ".join(map(repr, unexpected)))
        if problems:
            raise ValueError(f"{owner}: error(s) in loading state_dict:\n    " + "\n    ".join(problems))
        for name, value in values.items():
            np.copyto(own[name], value)
        return IncompatibleKeys(missing, unexpected)

    # -- printing --------------------------------------------------------------------
    def extra_repr(self):
        """The text between the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _indent(repr(m), 2) for name, m in self._modules.items()]
        lines = extra_lines + child_lines
        text = type(self).__name__ + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                text += extra_lines[0]
            else:
                text += "\n  " + "\n  ".join(lines) + "\n"
        return text + ")"


# ---------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------


class Sequential(Module):
    """A chain of modules: ``forward`` feeds each output to the next, ``backward`` runs in reverse.

    Parameters
    ----------
    *modules : Module
        Registered under the names ``"0"``, ``"1"``, ... (so the ``state_dict`` keys are
        ``"0.weight"``, ``"0.bias"``, ... as in PyTorch). A single ``OrderedDict`` of
        name -> module may be given instead.

    Examples
    --------
    >>> from fastconv import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> list(model.state_dict())
    ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: module names must be non-empty strings without '.'; got {name!r}")
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name!r} must be a Module; got {type(m).__name__}")
            self._modules[name] = m

    def append(self, module):
        """Add ``module`` at the end (named ``str(len(self))``); returns ``self``."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: expected a Module; got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, numbers.Integral):
            raise TypeError(f"Sequential indices must be ints or slices; got {type(idx).__name__}")
        n = len(items)
        if not -n <= idx < n:
            raise IndexError(f"Sequential index {idx} out of range for {n} modules")
        return items[idx][1]

    def forward(self, x):
        """Apply every module in order.

        A :class:`Conv2d` followed by a :class:`ReLU` runs as one convolution with the ReLU
        fused into its last pass (the result is the same; the ReLU keeps the output for its
        backward pass, as it does when called alone).
        """
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            m = modules[i]
            if i + 1 < len(modules) and _plain(m, Conv2d) and _plain(modules[i + 1], ReLU):
                x = modules[i + 1]._adopt(m._forward(x, relu=True))
                i += 2
            else:
                x = m(x)
                i += 1
        return x

    def backward(self, dout, input_grad=True):
        """Run every module's backward in reverse order; return the gradient w.r.t. the input.

        With ``input_grad=False`` the gradient w.r.t. the network's input is not needed
        (the usual case in training, as when PyTorch's input does not require grad):
        a first ``Conv2d`` then skips its input-gradient convolution, and ``None`` is
        returned. Parameter gradients are the same either way.

        A :class:`MaxPool2d` (or :class:`AdaptiveMaxPool2d`) whose last input was the last
        output of the :class:`ReLU` before it does that ReLU's backward pass on the pooled gradient, a quarter
        of the activation for 2x2 windows, before routing it (the same gradients; the ReLU's pass over the
        large activation disappears).
        """
        modules = list(self._modules.values())
        i = len(modules) - 1
        while i >= 0:
            m = modules[i]
            if i > 0 and _routes_relu(modules[i - 1], m):
                dout = m._backward(dout, input_grad or i > 1, relu=True)
                i -= 2
            else:
                dout = m.backward(dout, input_grad=input_grad or i > 0)
                i -= 1
        return dout


def _plain(module, cls):
    """``module`` is a ``cls`` whose forward and backward are ``cls``'s own (safe to fuse)."""
    return (isinstance(module, cls) and type(module).forward is cls.forward
            and type(module).backward is cls.backward)


def _routes_relu(relu, pool):
    """The pool's last input was the ReLU's last output, and both kept their caches."""
    return (_plain(relu, ReLU) and _plain(pool, _MaxPool) and relu._cache is not None
            and pool._cache is not None and pool._cache[3] is relu._cache)


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pad_index(n, before, after, mode):
    """The source row of every row of an axis of ``n`` padded by ``before``/``after`` in ``mode`` (PyTorch's F.pad)."""
    i = np.arange(-before, n + after)
    if mode == "reflect":  # the edge is not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...
        i = np.abs(i)
        return np.where(i > n - 1, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return i % n  # circular


def _pad2d(x, pads, mode):
    """``x`` (N, C, H, W) padded by ``pads = (top, bottom, left, right)`` in ``mode``: one gather of each image plane
    by the flat source index of every padded pixel (np.pad for zeros)."""
    top, bottom, left, right = pads
    if mode == "zeros":
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    N, C, H, W = x.shape
    source = _pad_index(H, top, bottom, mode)[:, None] * W + _pad_index(W, left, right, mode)
    return x.reshape(N, C, H * W).take(source.ravel(), axis=2).reshape(N, C, *source.shape)  # C-contiguous


def _fold(d, index, before, n, axis):
    """The adjoint of taking ``index`` along ``axis``: the border rows added onto the rows they were copied from.

    The interior (``n`` rows from ``before``) is the identity; the loop runs over the few border rows only.
    """
    def at(k):
        return (slice(None),) * axis + (k,)

    out = np.array(d[at(slice(before, before + n))], order="C")
    for k in (*range(before), *range(before + n, len(index))):
        out[at(index[k])] += d[at(k)]
    return out


def _unpad2d(dpad, pads, mode, hw):
    """The gradient of :func:`_pad2d`: ``dpad`` of the padded shape folded back onto the ``hw`` input."""
    (top, bottom, left, right), (H, W) = pads, hw
    if mode == "zeros":
        return np.ascontiguousarray(dpad[:, :, top:top + H, left:left + W])
    d = _fold(dpad, _pad_index(W, left, right, mode), left, W, 3)
    return _fold(d, _pad_index(H, top, bottom, mode), top, H, 2)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: arguments, PyTorch's initialisation, the plan cache, backward, repr."""

    _transposed = False

    def _setup(self, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype, rng):
        owner = type(self).__name__
        self.in_channels = _positive_int(in_channels, "in_channels", owner)
        self.out_channels = _positive_int(out_channels, "out_channels", owner)
        self.kernel_size = _V.as_pair(kernel_size, "kernel_size", owner, minimum=1)
        self.stride = _V.as_pair(stride, "stride", owner, minimum=1)
        self.dilation = _V.as_pair(dilation, "dilation", owner, minimum=1)
        self.groups = _positive_int(groups, "groups", owner)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{owner}: groups={self.groups} must divide both in_channels={self.in_channels} "
                             f"and out_channels={self.out_channels}")
        bias = _check_bool(bias, "bias", owner)
        dt = _V.float_dtype(dtype, owner)
        gen = _generator(rng, owner)
        kh, kw = self.kernel_size
        channels = (self.in_channels, self.out_channels)[::1 if self._transposed else -1]
        shape = (channels[0], channels[1] // self.groups, kh, kw)
        # kaiming_uniform_(a=sqrt(5)): bound 1 / sqrt(fan_in), torch's fan_in = weight.size(1) * KH * KW
        bound = 1.0 / math.sqrt(shape[1] * kh * kw)
        self.weight = _uniform_parameter(gen, bound, shape, dt, owner, "weight")
        self.bias = _uniform_parameter(gen, bound, (self.out_channels,), dt, owner, "bias") if bias else None
        self._cache = None
        self._plan = None

    def plan(self, x_shape, dtype=None, **options):
        """The :class:`fastconv.plan.ConvPlan` this layer runs for inputs of ``x_shape``.

        Made once per input shape, dtype and thread count (and ``options``: ConvTranspose2d's
        ``output_size``), and kept.
        """
        dtype = self.weight.data.dtype if dtype is None else np.dtype(dtype)
        key = (tuple(x_shape), dtype, _F.get_num_threads(), self.weight.data.shape, tuple(options.items()))
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, self._make_plan(key[0], dtype, **options))
        return self._plan[1]

    def _check(self, x):
        owner = type(self).__name__
        _check_input(x, owner, 4, "(N, C_in, H, W)", self.weight.data.dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{owner}: expected input with {self.in_channels} channels, shape (N, {self.in_channels}, H, W); "
                f"got shape {x.shape}"
            )

    def backward(self, dout, input_grad=True):
        """Add ``dL/dweight`` (and ``dL/dbias``) into ``.grad``; return ``dL/dx``.

        With ``input_grad=False`` the input gradient is not computed and ``None`` is
        returned (the first layer of a network needs only its parameter gradients).
        """
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        x, out_shape, plan, extra = self._cache
        _check_dout(dout, owner, out_shape, x.dtype)
        dout = _plan.contiguous(dout)
        dx = self._input_grad(dout, x, plan, extra) if input_grad else None
        self.weight.grad += self._weight_grad(dout, x, plan, extra)
        if self.bias is not None:
            self.bias.grad += plan.bias_grad.run(dout)
        return dx

    def extra_repr(self):
        """PyTorch's text: the settings that differ from their defaults, in torch's order."""
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class Conv2d(_ConvNd):
    r"""2-D convolution (a cross-correlation, as in PyTorch) over an ``(N, C_in, H, W)`` batch.

    ``out[n, f] = bias[f] + sum_c weight[f, c] \star x_pad[n, g*C_in/groups + c]`` (``g`` the
    group of filter ``f``), computed by the plan :func:`fastconv.functional.conv2d` takes.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    stride : int or (int, int), default 1
    padding : int, (int, int), 'same' or 'valid', default 0
        Padding on both sides. ``'valid'`` is none; ``'same'`` (stride 1 only) keeps the
        input size, padding ``dilation * (K - 1)`` in all, one more on the bottom/right when
        that is odd (as PyTorch).
    dilation : int or (int, int), default 1
        Spacing of the kernel taps.
    groups : int, default 1
        Input channels and filters split into this many groups; ``groups == in_channels`` is
        the depthwise convolution.
    bias : bool, default True
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
        What the padding holds. For a mode other than ``'zeros'`` (or an uneven ``'same'``
        padding) the input is padded explicitly, as PyTorch does, and the convolution runs
        without padding; backward folds the padding's gradient back onto the input rows it
        copies.
    dtype : float32 or float64, default float32
        dtype of the parameters; inputs must have the same dtype.
    rng : None, int or numpy.random.Generator
        Source of the initial weights (see the module docstring).

    Attributes
    ----------
    weight : Parameter, shape (C_out, C_in / groups, KH, KW)
        Initialised from ``U(-k, k)`` with ``k = 1 / sqrt(C_in / groups * KH * KW)``: PyTorch's
        ``kaiming_uniform_(a=sqrt(5))``.
    bias : Parameter, shape (C_out,), or None
        ``U(-k, k)`` with the same ``k``.

    Raises
    ------
    ValueError, TypeError
        When built: ``groups`` not dividing both channel counts, ``'same'`` with a stride
        above 1, an unknown padding string or ``padding_mode``, ``dilation`` below 1. When
        called: an input of the wrong shape, a dilated kernel larger than the padded input,
        a reflection padding not smaller than the input (circular: not larger).

    Notes
    -----
    Shapes: input ``(N, C_in, H, W)``; output ``(N, C_out, Ho, Wo)`` with
    ``Ho = (H + 2*padding[0] - dilation[0]*(KH - 1) - 1) // stride[0] + 1`` and likewise ``Wo``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> conv = nn.Conv2d(1, 4, 3, padding=1)
    >>> conv(np.zeros((2, 1, 6, 6), np.float32)).shape
    (2, 4, 6, 6)
    >>> conv.weight.shape, conv.bias.shape
    ((4, 1, 3, 3), (4,))
    >>> nn.Conv2d(4, 8, 4, padding="same", padding_mode="reflect", bias=False)
    Conv2d(4, 8, kernel_size=(4, 4), stride=(1, 1), padding=same, bias=False, padding_mode=reflect)
    """

    output_padding = (0, 0)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        owner = "Conv2d"
        if not isinstance(padding_mode, str) or padding_mode not in _PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {_PADDING_MODES}; got {padding_mode!r}")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: padding must be 'same', 'valid', an int or a pair; got {padding!r}")
            self.padding = padding
        else:
            self.padding = _V.as_pair(padding, "padding", owner, minimum=0)
        self._setup(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype, rng)
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError(f"Conv2d: padding='same' is not supported for strided convolutions; got "
                             f"stride={self.stride}")
        self._pads = self._resolve_padding()
        top, bottom, left, right = self._pads
        self._explicit = padding_mode != "zeros" or top != bottom or left != right

    def _resolve_padding(self):
        """``(top, bottom, left, right)``: PyTorch's ``_reversed_padding_repeated_twice``, unreversed."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for d, k in zip(self.dilation, self.kernel_size):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        return (self.padding[0], self.padding[0], self.padding[1], self.padding[1])

    def _padded_shape(self, x_shape):
        """The shape the convolution sees: ``x_shape`` after the explicit padding (or itself)."""
        if not self._explicit:
            return tuple(x_shape)
        N, C, H, W = x_shape
        _V.check_nonempty("Conv2d", "input", tuple(x_shape), (1, 2, 3), "(N, C_in, H, W)")
        top, bottom, left, right = self._pads
        if self.padding_mode in ("reflect", "circular"):
            # PyTorch's F.pad: a reflection repeats no edge, so it needs padding < size; a wrap needs <= size
            most = (H - 1, W - 1) if self.padding_mode == "reflect" else (H, W)
            if max(top, bottom) > most[0] or max(left, right) > most[1]:
                limit = "smaller than" if self.padding_mode == "reflect" else "at most"
                raise ValueError(f"Conv2d: padding_mode={self.padding_mode!r} needs each padding (top, bottom, "
                                 f"left, right)={self._pads} {limit} the input's (H, W)={(H, W)} "
                                 f"(input shape {tuple(x_shape)})")
        return (N, C, H + top + bottom, W + left + right)

    def _make_plan(self, x_shape, dtype):
        padding = (0, 0) if self._explicit else self._pads[::2]
        g = _V.conv_geometry("Conv2d", self._padded_shape(x_shape), self.weight.data.shape, self.stride, padding,
                             dilation=self.dilation, groups=self.groups)
        _V.check_buffers("Conv2d", g, dtype.itemsize)
        return _plan.plan_conv2d(g, dtype)

    def forward(self, x):
        """Convolve ``x`` of shape ``(N, C_in, H, W)``; returns ``(N, C_out, Ho, Wo)``."""
        return self._forward(x, relu=False)

    def _forward(self, x, relu):
        """:meth:`forward`, with the ReLU of a following :class:`ReLU` fused in when ``relu``."""
        self._check(x)
        plan = self.plan(x.shape)
        xp = _pad2d(x, self._pads, self.padding_mode) if self._explicit else x
        b = None if self.bias is None else self.bias.data
        out, packed = plan.run_forward(xp, self.weight.data, b, relu=relu)
        # The packed input is kept for the weight gradient, which reuses it when it reads
        # the same layout (the plan says which): one pass over the input less per step.
        self._cache = (x, out.shape, plan, (xp, packed)) if is_grad_enabled() else None
        return out

    def _input_grad(self, dout, x, plan, extra):
        dx = plan.run_input_grad(dout, self.weight.data)
        return _unpad2d(dx, self._pads, self.padding_mode, x.shape[2:]) if self._explicit else dx

    def _weight_grad(self, dout, x, plan, extra):
        xp, packed = extra
        return plan.run_weight_grad(dout, xp, packed)


class ConvTranspose2d(_ConvNd):
    r"""2-D transposed convolution over an ``(N, C_in, H, W)`` batch: the input gradient of a :class:`Conv2d`.

    Computed by the plan :func:`fastconv.functional.conv_transpose2d` takes: the forward pass
    is a convolution's input-gradient pass, the input gradient a convolution's forward pass.
    PyTorch's ``torch.nn.ConvTranspose2d`` (a U-Net or GAN decoder's upsampling layer).

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
        Rows/columns cropped from each side of the full output.
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right; each smaller than its stride or its dilation.
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int, int), default 1
    padding_mode : 'zeros'
        The only mode, as in PyTorch; another raises ``ValueError``.
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator

    Attributes
    ----------
    weight : Parameter, shape (C_in, C_out / groups, KH, KW)
        ``U(-k, k)`` with ``k = 1 / sqrt(C_out / groups * KH * KW)`` (PyTorch's fan-in of this
        layout, ``weight.size(1) * KH * KW``).
    bias : Parameter, shape (C_out,), or None

    Notes
    -----
    Output ``(N, C_out, Ho, Wo)`` with ``Ho = (H - 1)*stride[0] - 2*padding[0] +
    dilation[0]*(KH - 1) + output_padding[0] + 1``, likewise ``Wo``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    >>> up(np.zeros((2, 8, 7, 7), np.float32)).shape
    (2, 4, 14, 14)
    >>> up.weight.shape
    (8, 4, 4, 4)
    >>> up
    ConvTranspose2d(8, 4, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1))
    """

    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        owner = "ConvTranspose2d"
        if padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: only padding_mode='zeros' is supported (as in PyTorch); "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = _V.as_pair(padding, "padding", owner, minimum=0)
        self._setup(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype, rng)
        self.output_padding = _V.check_output_padding(owner, output_padding, self.stride, self.dilation)

    def _make_plan(self, x_shape, dtype, output_size=None):
        output_padding = self.output_padding if output_size is None else self._output_padding(x_shape, output_size)
        return _F.conv_transpose_plan("ConvTranspose2d", x_shape, self.weight.data.shape, dtype, self.stride,
                                      self.padding, output_padding, self.groups, self.dilation)

    def _output_padding(self, x_shape, output_size):
        """PyTorch's ``_output_padding``: the padding that makes the output ``output_size`` (H, W) or (N, C, H, W)."""
        size = tuple(output_size)[-2:] if len(output_size) in (2, 4) else None
        if size is None or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size):
            raise ValueError(f"ConvTranspose2d: output_size must be 2 or 4 ints (H, W) or (N, C, H, W); "
                             f"got {output_size!r}")
        padding = []
        for axis, (want, n, s, p, d, k) in enumerate(zip(size, x_shape[2:], self.stride, self.padding,
                                                          self.dilation, self.kernel_size)):
            smallest = (n - 1) * s - 2 * p + d * (k - 1) + 1
            if not smallest <= want <= smallest + s - 1:
                raise ValueError(f"ConvTranspose2d: requested an output size of {tuple(size)}, but valid sizes of "
                                 f"axis {axis + 2} range from {smallest} to {smallest + s - 1} (for an input of "
                                 f"shape {tuple(x_shape)})")
            padding.append(int(want) - smallest)
        return tuple(padding)

    def forward(self, x, output_size=None):
        """Transposed convolution of ``x`` of shape ``(N, C_in, H, W)``; returns ``(N, C_out, Ho, Wo)``.

        ``output_size`` ((H, W) or the whole shape), as in PyTorch, picks the ``output_padding`` of this call
        among the ``stride`` output sizes this input can have (instead of the layer's ``output_padding``).
        """
        self._check(x)
        options = {}
        if output_size is not None:
            try:
                options["output_size"] = tuple(output_size)
            except TypeError:
                raise TypeError(f"ConvTranspose2d: output_size must be a sequence of ints (H, W) or (N, C, H, W); "
                                f"got {output_size!r}") from None
        plan = self.plan(x.shape, **options)
        out = _F.transposed_forward(plan, x, self.weight.data, None if self.bias is None else self.bias.data)
        self._cache = (x, out.shape, plan, None) if is_grad_enabled() else None
        return out

    def _input_grad(self, dout, x, plan, extra):
        return _F.transposed_input_grad(plan, dout, self.weight.data, x.shape)

    def _weight_grad(self, dout, x, plan, extra):
        return _F.transposed_weight_grad(plan, dout, x)


class _Pool(Module):
    """What the pooling layers share: one plan per input shape, kept; the forward pass caches what backward needs."""

    def __init__(self):
        super().__init__()
        self._cache = None
        self._plan = None

    def _make_plan(self, x_shape, dtype):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def plan(self, x_shape, dtype):
        """The plan (:mod:`fastconv.plan`) this layer runs for inputs of ``x_shape`` (kept)."""
        key = (tuple(x_shape), np.dtype(dtype))
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, self._make_plan(*key))
        return self._plan[1]

    def _forward_plan(self, x):
        _check_input(x, type(self).__name__, 4, "(N, C, H, W)")
        return self.plan(x.shape, x.dtype)


class _MaxPool(_Pool):
    """Forward and backward of the max-pooling layers (their plans return winners' indices)."""

    return_indices = False

    def forward(self, x):
        """Pool ``x`` of shape ``(N, C, H, W)``; ``(y, indices)`` with ``return_indices=True``."""
        plan = self._forward_plan(x)
        out, indices = plan.run_forward(x)
        # The output (and which input) are kept for the backward pass fused with the
        # ReLU's before it (Sequential).
        self._cache = (indices, plan, out, x) if is_grad_enabled() else None
        return (out, indices) if self.return_indices else out

    def backward(self, dout, input_grad=True):
        """Route ``dout`` to the positions of the maxima; return ``dL/dx``."""
        return self._backward(dout, input_grad, relu=False)

    def _backward(self, dout, input_grad, relu):
        """:meth:`backward`; with ``relu``, also the backward pass of the :class:`ReLU` whose
        output this pool's input was (only maxima that are not ``<= 0`` route)."""
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        indices, plan, out, _ = self._cache
        _check_dout(dout, owner, indices.shape, plan.dtype)
        if not input_grad:
            return None
        return plan.run_backward(dout, indices, relu_output=out if relu else None)


class _AvgPool(_Pool):
    """Forward and backward of the average-pooling layers."""

    def forward(self, x):
        """Pool ``x`` of shape ``(N, C, H, W)``."""
        plan = self._forward_plan(x)
        self._cache = plan if is_grad_enabled() else None
        return plan.run_forward(x)

    def backward(self, dout, input_grad=True):
        """Spread ``dout`` evenly over each window; return ``dL/dx``."""
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        plan = self._cache
        _check_dout(dout, owner, plan.windows.y_shape, plan.dtype)
        return plan.run_backward(dout) if input_grad else None


def _pool_arguments(owner, kernel_size, stride, padding):
    """Check a pooling layer's window now (PyTorch checks it at the first call; the error is clearer here)."""
    kh, kw = _V.as_pair(kernel_size, "kernel_size", owner, minimum=1)
    if stride is not None:
        _V.as_pair(stride, "stride", owner, minimum=1)
    ph, pw = _V.as_pair(padding, "padding", owner, minimum=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{owner}: padding {padding!r} must be at most half the kernel_size {kernel_size!r}")
    return kernel_size if stride is None else stride


class MaxPool2d(_MaxPool):
    """2-D max-pooling over an ``(N, C, H, W)`` batch (:func:`fastconv.functional.max_pool2d`).

    Parameters
    ----------
    kernel_size : int or (int, int)
        Window ``(kh, kw)``.
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int), default 0
        ``-inf`` padding on both sides, at most half the window.
    dilation : int or (int, int), default 1
        Spacing of the window's taps.
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)`` (the winners' flat indices ``h * W + w``).
    ceil_mode : bool, default False
        Round the output size up (PyTorch's rule; see :func:`fastconv.functional.max_pool2d`).

    Notes
    -----
    Shapes: input ``(N, C, H, W)``; output ``(N, C, Ho, Wo)`` with
    ``Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1`` (rounded up with ``ceil_mode``) and likewise ``Wo``.

    Backward routes each output gradient to the window's maximum (the first one on ties);
    where windows overlap, the gradients add up.

    Examples
    --------
    >>> from fastconv import nn
    >>> nn.MaxPool2d(3, 2, ceil_mode=True)
    MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=True)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        owner = "MaxPool2d"
        stride = _pool_arguments(owner, kernel_size, stride, padding)
        _V.as_pair(dilation, "dilation", owner, minimum=1)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = _check_bool(return_indices, "return_indices", owner)
        self.ceil_mode = _check_bool(ceil_mode, "ceil_mode", owner)

    def _make_plan(self, x_shape, dtype):
        g = _V.pool_geometry("MaxPool2d", x_shape, self.kernel_size, self.stride, self.padding, "x",
                             self.dilation, self.ceil_mode)
        _V.check_buffers("MaxPool2d", g, 8)  # the int64 indices are the larger output
        return _plan.plan_max_pool2d(g, dtype)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_AvgPool):
    """2-D average pooling over an ``(N, C, H, W)`` batch (:func:`fastconv.functional.avg_pool2d`).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int), default 0
        Zero padding on both sides, at most half the window.
    ceil_mode : bool, default False
        Round the output size up.
    count_include_pad : bool, default True
        The divisor counts the padding a window covers.
    divisor_override : int, optional
        Divide every window's sum by this instead.

    Examples
    --------
    >>> from fastconv import nn
    >>> nn.AvgPool2d(3, stride=2, padding=1)
    AvgPool2d(kernel_size=3, stride=2, padding=1)
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        owner = "AvgPool2d"
        self.kernel_size = kernel_size
        self.stride = _pool_arguments(owner, kernel_size, stride, padding)
        self.padding = padding
        self.ceil_mode = _check_bool(ceil_mode, "ceil_mode", owner)
        self.count_include_pad = _check_bool(count_include_pad, "count_include_pad", owner)
        if divisor_override is not None and _positive_or_negative_int(divisor_override, owner) == 0:
            raise ValueError(f"{owner}: divisor_override must not be zero")
        self.divisor_override = divisor_override

    def _make_plan(self, x_shape, dtype):
        g = _V.pool_geometry("AvgPool2d", x_shape, self.kernel_size, self.stride, self.padding, "x", 1,
                             self.ceil_mode)
        return _plan.plan_avg_pool2d(g, dtype, self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _positive_or_negative_int(value, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: divisor_override must be an int or None; got {value!r}")
    return int(value)


def _output_size(value, owner):
    """Check an adaptive layer's ``output_size`` (an int or a pair of ints / None) without an input."""
    _V.adaptive_output_size(owner, value, (1, 1, 1, 1))  # None entries are the input's size: 1 here
    return value


class AdaptiveAvgPool2d(_AvgPool):
    """Adaptive average pooling to ``output_size`` (:func:`fastconv.functional.adaptive_avg_pool2d`).

    ``output_size=1`` is the global average pool of a ResNet's head.

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        ``(Ho, Wo)``; a None entry keeps the input's size.

    Examples
    --------
    >>> from fastconv import nn
    >>> nn.AdaptiveAvgPool2d((7, None))
    AdaptiveAvgPool2d(output_size=(7, None))
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _output_size(output_size, "AdaptiveAvgPool2d")

    def _make_plan(self, x_shape, dtype):
        out = _V.adaptive_output_size("AdaptiveAvgPool2d", self.output_size, x_shape)
        return _plan.plan_adaptive_avg_pool2d(x_shape, out, dtype)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(_MaxPool):
    """Adaptive max-pooling to ``output_size`` (:func:`fastconv.functional.adaptive_max_pool2d`).

    Parameters
    ----------
    output_size : int or (int or None, int or None)
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``.

    Examples
    --------
    >>> from fastconv import nn
    >>> nn.AdaptiveMaxPool2d(7)
    AdaptiveMaxPool2d(output_size=7)
    """

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size = _output_size(output_size, "AdaptiveMaxPool2d")
        self.return_indices = _check_bool(return_indices, "return_indices", "AdaptiveMaxPool2d")

    def _make_plan(self, x_shape, dtype):
        out = _V.adaptive_output_size("AdaptiveMaxPool2d", self.output_size, x_shape)
        return _plan.plan_adaptive_max_pool2d(x_shape, out, dtype)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class ReLU(Module):
    """Rectified linear unit, ``max(x, 0)`` elementwise, for inputs of any shape.

    The gradient is ``dout`` where ``x > 0`` and zero where ``x <= 0``; NaN inputs give
    NaN and pass their gradient through, as in PyTorch.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        """``max(x, 0)``, same shape and dtype as ``x``."""
        _check_input(x, "ReLU")
        return self._adopt(_plan.relu_forward(x))

    def _adopt(self, out):
        # Backward needs only where the input was <= 0 (PyTorch's rule, so NaN lets the
        # gradient through), and ``out <= 0`` exactly there: keep the output, as PyTorch
        # does. A fused producer (Sequential: Conv2d then ReLU) hands its output in here.
        self._cache = out if is_grad_enabled() else None
        return out

    def backward(self, dout, input_grad=True):
        """``dout`` where the input was positive (or NaN), else 0."""
        if self._cache is None:
            raise _no_cache_error("ReLU")
        out = self._cache
        _check_dout(dout, "ReLU", out.shape, out.dtype)
        return _plan.relu_backward(dout, out) if input_grad else None


class Flatten(Module):
    """Flatten dimensions ``start_dim`` to ``end_dim`` into one (default: all but the batch axis).

    Parameters
    ----------
    start_dim : int, default 1
    end_dim : int, default -1

    Notes
    -----
    Shapes: ``(N, C, H, W)`` -> ``(N, C*H*W)`` with the defaults. The output is a view of the input
    when possible (as ``numpy.reshape``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.Flatten()(np.zeros((2, 3, 4, 5))).shape, nn.Flatten(0, 1)(np.zeros((2, 3, 4))).shape
    ((2, 60), (6, 4))
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"Flatten: {name} must be an int; got {v!r}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._cache = None

    def forward(self, x):
        """Reshape ``x`` with the flattened axes merged."""
        _check_input(x, "Flatten")
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(
                f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} are invalid for an input "
                f"of shape {x.shape}"
            )
        shape = x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:]
        out = x.reshape(shape)
        self._cache = (x.shape, out.shape, x.dtype) if is_grad_enabled() else None
        return out

    def backward(self, dout, input_grad=True):
        """Reshape ``dout`` back to the input's shape."""
        if self._cache is None:
            raise _no_cache_error("Flatten")
        x_shape, out_shape, dtype = self._cache
        _check_dout(dout, "Flatten", out_shape, dtype)
        return dout.reshape(x_shape) if input_grad else None

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Linear(Module):
    """Affine layer ``y = x @ weight.T + bias`` over the last axis.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (see the module docstring).

    Attributes
    ----------
    weight : Parameter, shape (out_features, in_features)
        ``U(-k, k)`` with ``k = 1 / sqrt(in_features)`` (PyTorch's default).
    bias : Parameter, shape (out_features,), or None
        ``U(-k, k)``.

    Notes
    -----
    Shapes: input ``(*, in_features)``; output ``(*, out_features)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> fc1 = nn.Linear(3, 2, rng=0)
    >>> fc1(np.ones((4, 5, 3), np.float32)).shape
    (4, 5, 2)
    >>> fc1.weight.shape, fc1.bias.shape
    ((2, 3), (2,))
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        owner = "Linear"
        self.in_features = _positive_int(in_features, "in_features", owner)
        self.out_features = _positive_int(out_features, "out_features", owner)
        bias = _check_bool(bias, "bias", owner)
        dt = _V.float_dtype(dtype, owner)
        gen = _generator(rng, owner)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = _uniform_parameter(gen, bound, (self.out_features, self.in_features), dt, owner, "weight")
        self.bias = _uniform_parameter(gen, bound, (self.out_features,), dt, owner, "bias") if bias else None
        self._cache = None

    def forward(self, x):
        """``x @ weight.T + bias`` for ``x`` of shape ``(*, in_features)``."""
        _check_input(x, "Linear", dtype=self.weight.data.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: expected input of shape (*, {self.in_features}) (in_features={self.in_features}); "
                f"got shape {x.shape}"
            )
        b = None if self.bias is None else self.bias.data
        out = _plan.linear_forward(x.reshape(-1, self.in_features), self.weight.data, b)
        self._cache = x if is_grad_enabled() else None
        return out.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dout, input_grad=True):
        """Add ``dL/dweight`` (and ``dL/dbias``) into ``.grad``; return ``dL/dx``."""
        if self._cache is None:
            raise _no_cache_error("Linear")
        x = self._cache
        _check_dout(dout, "Linear", x.shape[:-1] + (self.out_features,), x.dtype)
        dx2, dw, db = _plan.linear_backward(dout.reshape(-1, self.out_features), x.reshape(-1, self.in_features),
                                            self.weight.data, input_grad)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return None if dx2 is None else dx2.reshape(x.shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    In evaluation mode (:meth:`Module.eval`) it is the identity. With ``p = 1`` the output
    is all zeros (as in PyTorch).

    Parameters
    ----------
    p : float, default 0.5
        Drop probability, in ``[0, 1]``.
    rng : None, int or numpy.random.Generator
        Source of the masks. ``None`` uses the module-wide default generator at each
        forward call (see :func:`manual_seed`); an int or a Generator gives this layer its
        own stream.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> drop = nn.Dropout(0.5, rng=0)
    >>> x = np.ones((2, 4), np.float32)
    >>> drop(x)                                    # kept entries scaled by 1 / (1 - p)
    array([[2., 0., 0., 0.],
           [2., 2., 2., 2.]], dtype=float32)
    >>> drop.backward(np.ones_like(x))             # the same mask
    array([[2., 0., 0., 0.],
           [2., 2., 2., 2.]], dtype=float32)
    >>> drop.eval()(x) is x                        # evaluation mode: the identity
    True
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout: p must be a float in [0, 1]; got {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be between 0 and 1; got {p}")
        self.p = float(p)
        self._rng = None if rng is None else _generator(rng, "Dropout")
        self._cache = None

    def forward(self, x):
        """Apply a fresh random mask in training mode; return ``x`` unchanged in eval mode."""
        _check_input(x, "Dropout")
        if not self.training or self.p == 0.0:
            out, mask = x, None
        else:
            gen = self._rng if self._rng is not None else _default_rng
            if self.p == 1.0:
                mask = np.zeros(x.shape, dtype=x.dtype)
            else:
                keep = gen.random(x.shape) >= self.p
                mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
            out = x * mask
        self._cache = (mask, x.shape, x.dtype) if is_grad_enabled() else None
        return out

    def backward(self, dout, input_grad=True):
        """``dout`` times the forward mask (or ``dout`` itself in eval mode)."""
        if self._cache is None:
            raise _no_cache_error("Dropout")
        mask, shape, dtype = self._cache
        _check_dout(dout, "Dropout", shape, dtype)
        if not input_grad:
            return None
        return dout if mask is None else dout * mask

    def extra_repr(self):
        return f"p={self.p}, inplace=False"


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


class _Pointwise(Module):
    """An activation of :data:`fastconv.plan.POINTWISE`: caches its input, as :class:`ReLU`.

    Subclasses set ``_op`` and, where it has variants, ``_strategy``; ``_a`` is the one parameter.
    """

    _op = ""
    _strategy = "pointwise"
    _param = None  # the name of the one parameter, if any
    _a = 0.0

    def __init__(self, a=None, inplace=False):
        super().__init__()
        owner = type(self).__name__
        if self._param is not None:
            self._a = _real(a, self._param, owner)
            setattr(self, self._param, self._a)
        self.inplace = _check_bool(inplace, "inplace", owner)
        self._cache = None

    def forward(self, x):
        """The activation of ``x`` (any shape), a new array of its shape and dtype."""
        _check_input(x, type(self).__name__)
        self._cache = x if is_grad_enabled() else None
        return _plan.pointwise_forward(self._op, x, self._a, self._strategy)

    def backward(self, dout, input_grad=True):
        """``dout`` times the activation's derivative at the forward input."""
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        x = self._cache
        _check_dout(dout, owner, x.shape, x.dtype)
        return _plan.pointwise_backward(self._op, dout, x, self._a, self._strategy) if input_grad else None

    def extra_repr(self):
        parts = [] if self._param is None else [f"{self._param}={self._a}"]
        return ", ".join(parts + (["inplace=True"] if self.inplace else []))


def _real(value, name, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number; got {value!r} of type {type(value).__name__}")
    return float(value)


class LeakyReLU(_Pointwise):
    """``x if x > 0 else negative_slope * x`` elementwise (see :func:`fastconv.functional.leaky_relu`).

    Parameters
    ----------
    negative_slope : float, default 0.01
    inplace : bool, default False
        Accepted for PyTorch compatibility; the output is always a new array (inputs are never modified).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.LeakyReLU(0.1)(np.array([-1.0, 2.0]))
    array([-0.1,  2. ])
    """

    _op = "leaky_relu"
    _param = "negative_slope"

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(negative_slope, inplace)


class ELU(_Pointwise):
    """``x if x > 0 else alpha * (exp(x) - 1)`` elementwise (see :func:`fastconv.functional.elu`).

    Parameters
    ----------
    alpha : float, default 1.0
    inplace : bool, default False
        As for :class:`LeakyReLU`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.ELU()(np.array([-1000.0, 2.0]))
    array([-1.,  2.])
    """

    _op = "elu"
    _param = "alpha"

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__(alpha, inplace)


class GELU(_Pointwise):
    """Gaussian error linear unit, exact (``approximate='none'``) or its tanh form (see
    :func:`fastconv.functional.gelu`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.GELU(approximate="tanh")(np.array([0.0, 10.0]))
    array([ 0., 10.])
    """

    _op = "gelu"

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh'; got {approximate!r}")
        self.approximate = approximate
        self._strategy = "erf" if approximate == "none" else "tanh"

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_Pointwise):
    """``x * sigmoid(x)`` elementwise (see :func:`fastconv.functional.silu`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.SiLU()(np.array([0.0, 1000.0]))
    array([   0., 1000.])
    """

    _op = "silu"

    def __init__(self, inplace=False):
        super().__init__(None, inplace)


class Sigmoid(_Pointwise):
    """``1 / (1 + exp(-x))`` elementwise, without overflow (see :func:`fastconv.functional.sigmoid`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.Sigmoid()(np.array([-1000.0, 0.0]))
    array([0. , 0.5])
    """

    _op = "sigmoid"

    def __init__(self):
        super().__init__()


class Tanh(_Pointwise):
    """Hyperbolic tangent elementwise.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.Tanh()(np.array([0.0]))
    array([0.])
    """

    _op = "tanh"

    def __init__(self):
        super().__init__()


class Softmax(Module):
    """Softmax over axis ``dim`` (see :func:`fastconv.functional.softmax`); caches its output for backward.

    Parameters
    ----------
    dim : int, optional
        The axis. ``None`` (PyTorch's default) picks PyTorch's implicit axis at each call, with its warning.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.Softmax(dim=1)(np.array([[0.0, 0.0]]))
    array([[0.5, 0.5]])
    """

    _log = False

    def __init__(self, dim=None):
        super().__init__()
        owner = type(self).__name__
        if dim is not None and (isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral)):
            raise TypeError(f"{owner}: dim must be an int or None; got {dim!r}")
        self.dim = None if dim is None else int(dim)
        self._cache = None

    def forward(self, x):
        owner = type(self).__name__
        _check_input(x, owner)
        d = _V.softmax_dim(self.dim, x.shape, owner)
        x1 = x.reshape(x.shape or (1,))
        y = _plan.softmax_forward(x1, d, self._log)
        self._cache = (y, d, x.shape) if is_grad_enabled() else None
        return y.reshape(x.shape)

    def backward(self, dout, input_grad=True):
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        y, d, shape = self._cache
        _check_dout(dout, owner, shape, y.dtype)
        if not input_grad:
            return None
        return _plan.softmax_backward(dout.reshape(y.shape), y, d, self._log).reshape(shape)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax over axis ``dim`` (see :func:`fastconv.functional.log_softmax`); caches its output.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.LogSoftmax(dim=1)(np.array([[0.0, -1000.0]]))
    array([[    0., -1000.]])
    """

    _log = True


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


class _Loss(Module):
    """A loss: ``forward(input, target)`` returns it (a Python float, or an array for ``reduction='none'``);
    ``backward(dout=1.0)`` returns its gradient with respect to ``input``, in input's dtype.

    ``dout`` is the gradient of the final objective with respect to the loss: a real scalar, or for
    ``reduction='none'`` a scalar or an array of the loss's shape.
    """

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = _loss.legacy_reduction(size_average, reduce, reduction, type(self).__name__)
        self._cache = None

    def _parts(self, input, target):  # pragma: no cover - every loss defines it
        raise NotImplementedError

    def forward(self, input, target):
        """The loss of ``input`` against ``target``."""
        loss, grad = self._parts(input, target)
        self._cache = (grad, np.shape(loss)) if is_grad_enabled() else None
        return loss

    def backward(self, dout=1.0, input_grad=True):
        """Gradient of the objective with respect to ``input``: ``dL/dinput * dout``.

        Parameters
        ----------
        dout : float or ndarray, default 1.0
        input_grad : bool, default True
            ``False`` checks ``dout`` and returns ``None`` (the signature every module shares).
        """
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        grad, shape = self._cache
        if not input_grad:
            _loss.dout_coefficients(dout, self.reduction, shape, f"{owner}.backward", 1)
            return None
        return grad(dout)

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error (see :func:`fastconv.functional.mse_loss`).

    Parameters
    ----------
    size_average, reduce : deprecated, as in PyTorch (use ``reduction``)
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> loss_fn = nn.MSELoss()
    >>> loss_fn(np.array([1.0, 2.0]), np.zeros(2))
    2.5
    >>> loss_fn.backward()
    array([1., 2.])
    """

    def _parts(self, input, target):
        return _loss.mse_parts("MSELoss", input, target, self.reduction)


class L1Loss(_Loss):
    """Mean absolute error (see :func:`fastconv.functional.l1_loss`); parameters as :class:`MSELoss`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.L1Loss(reduction="none")(np.array([1.0, -2.0]), np.zeros(2))
    array([1., 2.])
    """

    def _parts(self, input, target):
        return _loss.l1_parts("L1Loss", input, target, self.reduction)


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        owner = type(self).__name__
        if weight is not None:
            _V.check_float_array(weight, "weight", owner, weight.ndim if isinstance(weight, np.ndarray) else 1,
                                 "(C,)")
            weight = weight.copy()
        self.weight = weight


def _ignore_index(value, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: ignore_index must be an int; got {value!r}")
    return int(value)


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of class indices (see :func:`fastconv.functional.nll_loss`).

    Parameters
    ----------
    weight : ndarray, shape (C,), optional
        Per-class weights, in input's dtype (a copy is kept).
    size_average, reduce : deprecated, as in PyTorch (use ``reduction``)
    ignore_index : int, default -100
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> loss_fn = nn.NLLLoss()
    >>> loss_fn(np.log(np.array([[0.5, 0.5]])), np.array([1]))  # doctest: +ELLIPSIS
    0.693147...
    >>> loss_fn.backward()
    array([[ 0., -1.]])
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = _ignore_index(ignore_index, "NLLLoss")

    def _parts(self, input, target):
        return _loss.class_loss_parts("NLLLoss", input, target, self.weight, self.ignore_index, self.reduction,
                                      0.0, False)


class CrossEntropyLoss(_WeightedLoss):
    """Softmax cross-entropy between logits and class indices or class probabilities
    (see :func:`fastconv.functional.cross_entropy`).

    ``loss = -mean_n log_softmax(input[n])[target[n]]`` without weights or smoothing (the sum
    with ``reduction="sum"``, per sample with ``"none"``), computed with a max-shifted,
    numerically stable log-softmax in float64. Input ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.

    Parameters
    ----------
    weight : ndarray, shape (C,), optional
        Per-class weights, in input's dtype (a copy is kept).
    size_average, reduce : deprecated, as in PyTorch (use ``reduction``)
    ignore_index : int, default -100
        Class-index targets equal to it add nothing to the loss nor to the mean's denominator.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> logits, labels = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), np.array([0, -100])
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> round(loss_fn(logits, labels), 6)          # a Python float; the second sample is ignored
    0.239545
    >>> loss_fn.backward().round(4)                # (N, C), dtype of logits
    array([[-0.213 ,  0.1065,  0.1065],
           [ 0.    ,  0.    ,  0.    ]])
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = _ignore_index(ignore_index, "CrossEntropyLoss")
        self.label_smoothing = _loss.check_label_smoothing(label_smoothing, "CrossEntropyLoss")

    def _parts(self, input, target):
        return _loss.class_loss_parts("CrossEntropyLoss", input, target, self.weight, self.ignore_index,
                                      self.reduction, self.label_smoothing, True)


class BCEWithLogitsLoss(_WeightedLoss):
    """Sigmoid binary cross-entropy of logits, exact for large logits
    (see :func:`fastconv.functional.binary_cross_entropy_with_logits`).

    Parameters
    ----------
    weight : ndarray, optional
        Broadcastable to the input's shape (a copy is kept).
    size_average, reduce : deprecated, as in PyTorch (use ``reduction``)
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    pos_weight : ndarray, optional
        Broadcastable to the input's shape, usually ``(C,)``: the weight of positive targets (a copy is kept).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> loss_fn = nn.BCEWithLogitsLoss()
    >>> loss_fn(np.array([0.0, 1000.0]), np.array([1.0, 1.0]))  # doctest: +ELLIPSIS
    0.346573...
    >>> loss_fn.backward()
    array([-0.25,  0.  ])
    """

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None):
        super().__init__(weight, size_average, reduce, reduction)
        if pos_weight is not None:
            _V.check_any_float_array(pos_weight, "pos_weight", "BCEWithLogitsLoss")
            pos_weight = pos_weight.copy()
        self.pos_weight = pos_weight

    def _parts(self, input, target):
        return _loss.bce_with_logits_parts("BCEWithLogitsLoss", input, target, self.weight, self.reduction,
                                           self.pos_weight)


# ---------------------------------------------------------------------------------------
# Batch normalisation
# ---------------------------------------------------------------------------------------


class _BatchNorm(Module):
    """Shared code of :class:`BatchNorm1d` and :class:`BatchNorm2d` (PyTorch's ``_BatchNorm``)."""

    _ndims = ()
    _expected = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32, *, bias=True):
        super().__init__()
        owner = type(self).__name__
        self.num_features = _positive_int(num_features, "num_features", owner)
        _V.check_allocation(owner, "per-channel parameters", (4, self.num_features), 8)  # a named error, not NumPy's
        self.eps = _V.check_real(owner, "eps", eps, minimum=0.0)
        self.momentum = None if momentum is None else _V.check_real(owner, "momentum", momentum)
        self.affine = _check_bool(affine, "affine", owner)
        self.track_running_stats = _check_bool(track_running_stats, "track_running_stats", owner)
        has_bias = _check_bool(bias, "bias", owner) and self.affine
        dt = _V.float_dtype(dtype, owner)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype=dt)) if self.affine else None
        self.bias = Parameter(np.zeros(C, dtype=dt)) if has_bias else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype=dt))
            self.register_buffer("running_var", np.ones(C, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self._cache = None

    def reset_running_stats(self):
        """Running mean 0, running variance 1, ``num_batches_tracked`` 0 (in place)."""
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def reset_parameters(self):
        """:meth:`reset_running_stats`, and weight 1 and bias 0."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.data.fill(1)
        if self.bias is not None:
            self.bias.data.fill(0)

    def _dtype(self):
        for a in (self.weight, self.running_mean):
            if a is not None:
                return a.dtype
        return None

    def _check(self, x):
        owner = type(self).__name__
        _check_input(x, owner, dtype=self._dtype())
        if x.ndim not in self._ndims:
            raise ValueError(f"{owner}: expected {self._expected} input (got {x.ndim}D input); got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{owner}: expected input with {self.num_features} channels (num_features="
                             f"{self.num_features}) on axis 1; got shape {x.shape}")

    def forward(self, x):
        """Normalise ``x`` with the batch's statistics (training) or the running ones (eval).

        In training, with ``track_running_stats``, the running statistics are updated and
        ``num_batches_tracked`` counts the batch (``momentum=None``: a cumulative average).
        """
        owner = type(self).__name__
        self._check(x)
        batch_stats = self.training or self.running_mean is None
        if batch_stats:
            _V.check_batch_size(owner, x.shape)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        keep = not self.training or self.track_running_stats
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        x3 = _plan.channel_view(x)
        out, mean, invstd = _plan.batch_norm_forward(
            x3, self.running_mean if keep else None, self.running_var if keep else None, w, b, batch_stats,
            factor, self.eps)
        self._cache = (x3, mean, invstd, batch_stats, x.shape) if is_grad_enabled() else None
        return out.reshape(x.shape)

    def backward(self, dout, input_grad=True):
        """Add ``dL/dweight`` and ``dL/dbias`` into ``.grad``; return ``dL/dx``."""
        owner = type(self).__name__
        if self._cache is None:
            raise _no_cache_error(owner)
        x3, mean, invstd, batch_stats, shape = self._cache
        _check_dout(dout, owner, shape, x3.dtype)
        w = None if self.weight is None else self.weight.data
        dx, dw, db = _plan.batch_norm_backward(_plan.channel_view(dout), x3, mean, invstd, w, batch_stats)
        if self.weight is not None:
            self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx.reshape(shape) if input_grad else None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` inputs over the batch (and length) axes.

    ``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]``, as PyTorch's
    ``BatchNorm1d``: in training ``mean`` and ``var`` are the batch's (biased variance) and
    the running statistics move towards them by ``momentum`` (the running variance is the
    unbiased one); in evaluation the running statistics are used. Computed by
    :func:`fastconv.functional.batch_norm`'s compiled kernels; statistics in float64.

    Parameters
    ----------
    num_features : int
        ``C``.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        ``None``: the running statistics are the cumulative average of every batch seen
        (``momentum = 1 / num_batches_tracked``).
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
        (an int64 0-d array) as buffers. Without them the batch's statistics are used in
        evaluation too.
    dtype : float32 or float64, default float32
    bias : bool, default True (keyword only)
        With ``affine``, whether there is a ``bias``.

    Notes
    -----
    ``state_dict`` keys: ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked`` (as PyTorch). A training batch with one value per channel
    raises PyTorch's ``ValueError``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> bn = nn.BatchNorm1d(2, dtype=np.float64)
    >>> bn(np.array([[1.0, 10.0], [3.0, 30.0]])).round(3)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> bn.running_mean, int(bn.num_batches_tracked)
    (array([0.2, 2. ]), 1)
    >>> bn
    BatchNorm1d(2, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """

    _ndims = (2, 3)
    _expected = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` inputs per channel (PyTorch's ``BatchNorm2d``).

    Parameters and behaviour as :class:`BatchNorm1d`; the statistics of channel ``c`` are
    taken over ``N * H * W`` values.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> bn = nn.BatchNorm2d(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (4, 3, 8, 8)).astype(np.float32)
    >>> y = bn(x)
    >>> bool(abs(y.mean()) < 1e-5), bool(abs(y.std() - 1) < 1e-3)
    (True, True)
    >>> list(bn.state_dict())
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    _ndims = (4,)
    _expected = "4D"


# ---------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------


class Identity(Module):
    """``forward(x)`` returns ``x``; ``backward(dout)`` returns ``dout`` (PyTorch's ``Identity``).

    Any constructor arguments are ignored, as in PyTorch.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> x = np.ones((2, 3), np.float32)
    >>> nn.Identity(54, unused="ignored")(x) is x
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self._cache = None

    def forward(self, x):
        """``x`` itself."""
        self._cache = (np.shape(x), getattr(x, "dtype", None)) if is_grad_enabled() else None
        return x

    def backward(self, dout, input_grad=True):
        """``dout`` itself."""
        if self._cache is None:
            raise _no_cache_error("Identity")
        _check_dout(dout, "Identity", *self._cache)
        return dout if input_grad else None


class Residual(Module):
    """A residual block: ``body(x) + x``, or ``body(x) + shortcut(x)`` with a ``shortcut`` module.

    Parameters
    ----------
    body : Module
        The main branch (e.g. a :class:`Sequential` of convolutions, batch norms, ReLUs).
    shortcut : Module, optional
        The skip branch, e.g. a strided 1x1 :class:`Conv2d` and a :class:`BatchNorm2d`
        when the body changes the shape. None: the identity.

    Notes
    -----
    The backward pass runs both branches' backward on ``dout`` (each adds its parameter
    gradients) and returns the sum of their input gradients. ``state_dict`` keys nest the
    branches' under ``body.`` and ``shortcut.`` (``body.0.weight``, ``shortcut.0.weight``).
    There is no activation after the sum: follow the block with a :class:`ReLU` as ResNet does.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> block = nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=0), nn.BatchNorm2d(4)))
    >>> x = np.ones((2, 4, 5, 5), np.float32)
    >>> block(x).shape, block.backward(np.ones_like(x)).shape
    ((2, 4, 5, 5), (2, 4, 5, 5))
    >>> list(block.state_dict())[:3]
    ['body.0.weight', 'body.0.bias', 'body.1.weight']
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        for name, m in (("body", body), ("shortcut", shortcut)):
            if not isinstance(m, Module) and not (name == "shortcut" and m is None):
                raise TypeError(f"Residual: {name} must be a Module{' or None' if name == 'shortcut' else ''}; "
                                f"got {type(m).__name__}")
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        """``body(x) + (x or shortcut(x))``; the two must have the same shape."""
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if not isinstance(y, np.ndarray) or not isinstance(s, np.ndarray) or y.shape != s.shape:
            branch = "x" if self.shortcut is None else "shortcut(x)"
            raise ValueError(f"Residual: body(x) and {branch} must have the same shape; got "
                             f"{np.shape(y)} and {np.shape(s)} for x.shape={np.shape(x)}")
        return y + s

    def backward(self, dout, input_grad=True):
        """Both branches' backward on ``dout``; returns the sum of their input gradients."""
        dx = self.body.backward(dout, input_grad=input_grad)
        ds = dout if self.shortcut is None else self.shortcut.backward(dout, input_grad=input_grad)
        return dx + ds if input_grad else None
