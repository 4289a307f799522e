"""Optimizers with PyTorch's update rules: :class:`SGD` and :class:`Adam`.

They update ``Parameter.data`` in place from ``Parameter.grad`` (see :mod:`fastconv.nn`),
accept a list of parameters or PyTorch-style parameter groups (a list of dicts with a
``"params"`` entry and per-group hyper-parameters), and save and restore their complete
state, so a run resumed from a checkpoint is bitwise identical to an uninterrupted one::

    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ...
    fastconv.save({"model": model.state_dict(), "optim": opt.state_dict()}, "ckpt.npz")
    ...
    ckpt = fastconv.load("ckpt.npz")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optim"])

The hyper-parameters of group ``i`` can be changed between steps through
``opt.param_groups[i]["lr"]`` etc., as in PyTorch.
"""

import math
import numbers
from collections.abc import Mapping

import numpy as np

from .nn import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


def _real(value, name, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number; got {value!r} of type {type(value).__name__}")
    return float(value)


def _at_least_zero(value, name, owner, label=None):
    v = _real(value, name, owner)
    if not v >= 0.0:  # also rejects NaN
        raise ValueError(f"{owner}: invalid {label or name}: {value!r} (must be >= 0)")
    return v


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``.

    Parameters
    ----------
    params : iterable of Parameter, or iterable of dict
        The parameters to optimize (e.g. ``model.parameters()``), or parameter groups:
        dicts with a ``"params"`` list plus any hyper-parameters that override the
        defaults for that group.
    defaults : dict
        Default hyper-parameters of every group.

    Attributes
    ----------
    param_groups : list of dict
        Each has ``"params"`` (list of Parameter) and its hyper-parameters.
    state : dict
        Per-parameter state (``Parameter`` -> dict), e.g. momentum buffers.
    """

    #: State entries holding an array shaped like the parameter (subclasses set this).
    _array_state = ()

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        if isinstance(params, (Parameter, Mapping)):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters or of dicts; "
                f"got a single {type(params).__name__} (wrap it in a list)"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: optimizer got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with ``"params"`` and optional hyper-parameters)."""
        owner = type(self).__name__
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{owner}: a parameter group must be a dict; got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{owner}: a parameter group needs a 'params' entry")
        params = param_group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{owner}: can only optimize fastconv.nn.Parameter objects; got {type(p).__name__}")
        if not params:
            raise ValueError(f"{owner}: a parameter group has an empty 'params' list")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{owner}: some parameters appear more than once (in this or another group)")
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"{owner}: unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        group = dict(self.defaults)
        group.update({k: v for k, v in param_group.items() if k != "params"})
        group = self._validate_group(group)
        group["params"] = params
        self.param_groups.append(group)

    def _validate_group(self, group):
        """Check and normalise one group's hyper-parameters (subclasses)."""
        return group

    def zero_grad(self):
        """Reset every parameter's ``.grad`` to zero."""
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad()

    def step(self, closure=None):
        """Update every parameter once; return ``closure()`` if a closure is given."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------
    def state_dict(self):
        """The optimizer's full state, in PyTorch's layout.

        Returns
        -------
        dict
            ``{"state": {index: {name: value}}, "param_groups": [{hyper-parameters...,
            "params": [index, ...]}]}`` where ``index`` numbers the parameters across all
            groups in order. Arrays are copies. Storable with :func:`fastconv.save`.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index[id(p)] = len(index)
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {
                        k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.state[p].items()
                    }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict` (hyper-parameters included).

        The parameters must be the same, in the same order and groups, as when it was saved
        (as in PyTorch). Everything is checked before anything changes.

        Raises
        ------
        TypeError, ValueError
            A malformed state, a different number of groups or parameters, or buffers whose
            shape or dtype differ from their parameter's.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError(f"{owner}: expected a dict with 'state' and 'param_groups' (from state_dict())")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "?"
            raise ValueError(
                f"{owner}: the state has {n} parameter groups but the optimizer has {len(self.param_groups)}"
            )
        by_index = {}
        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise TypeError(f"{owner}: param_groups[{i}] must be a dict with 'params'")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{owner}: param_groups[{i}] has {len(saved['params'])} parameters in the state "
                    f"but {len(group['params'])} in the optimizer"
                )
            for idx, p in zip(saved["params"], group["params"]):
                by_index[idx] = p
            unknown = set(saved) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{owner}: param_groups[{i}] has unknown hyper-parameter(s) {sorted(unknown)}")
            merged = dict(self.defaults)
            merged.update({k: v for k, v in saved.items() if k != "params"})
            new_groups.append(self._validate_group(merged))
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"{owner}: 'state' must be a dict of index -> dict")
        new_state = {}
        for idx, entry in saved_state.items():
            if idx not in by_index:
                raise ValueError(f"{owner}: state refers to parameter index {idx!r}, which no group holds")
            if not isinstance(entry, Mapping):
                raise TypeError(f"{owner}: state[{idx!r}] must be a dict")
            p = by_index[idx]
            restored = {}
            for key, value in entry.items():
                if key in self._array_state and value is not None:
                    if not isinstance(value, np.ndarray):
                        raise TypeError(
                            f"{owner}: state[{idx!r}][{key!r}] must be an ndarray; got {type(value).__name__}"
                        )
                    if value.shape != p.data.shape or value.dtype != p.data.dtype:
                        raise ValueError(
                            f"{owner}: state[{idx!r}][{key!r}] has shape {value.shape} and dtype {value.dtype}, "
                            f"but its parameter has shape {p.data.shape} and dtype {p.data.dtype}"
                        )
                    value = value.copy()
                elif key == "step":
                    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
                        raise ValueError(f"{owner}: state[{idx!r}]['step'] must be a non-negative int; got {value!r}")
                    value = int(value)
                elif key not in self._array_state:
                    raise ValueError(f"{owner}: state[{idx!r}] has unknown entry {key!r}")
                restored[key] = value
            new_state[p] = restored
        for group, new in zip(self.param_groups, new_groups):
            params = group["params"]
            group.clear()
            group.update(new)
            group["params"] = params
        self.state = new_state

    def __repr__(self):
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        return text + ")"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening, Nesterov and weight decay.

    PyTorch's rule, for each parameter ``p`` with gradient ``g``::

        g = g + weight_decay * p                       (if weight_decay != 0)
        if momentum != 0:
            buf = g                    at the first step
            buf = momentum * buf + (1 - dampening) * g  afterwards
            g = g + momentum * buf     if nesterov else   g = buf
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Parameter or of dict
        See :class:`Optimizer`.
    lr : float, default 1e-3
        Learning rate, ``>= 0``.
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    State per parameter (with momentum): ``"momentum_buffer"``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn, optim
    >>> p = nn.Parameter(np.array([1.0, -2.0]))
    >>> opt = optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad[...] = [0.5, 0.5]               # as a backward pass leaves it
    >>> opt.step(); p.data                     # buf = g
    array([ 0.95, -2.05])
    >>> opt.step(); p.data                     # buf = 0.9 * 0.5 + 0.5
    array([ 0.855, -2.145])
    """

    _array_state = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        self._validate_group(dict(defaults))
        super().__init__(params, defaults)

    def _validate_group(self, group):
        owner = "SGD"
        group["lr"] = _at_least_zero(group["lr"], "lr", owner, "learning rate")
        group["momentum"] = _at_least_zero(group["momentum"], "momentum", owner, "momentum value")
        group["dampening"] = _real(group["dampening"], "dampening", owner)
        group["weight_decay"] = _at_least_zero(group["weight_decay"], "weight_decay", owner, "weight_decay value")
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise TypeError(f"{owner}: nesterov must be True or False; got {group['nesterov']!r}")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{owner}: Nesterov momentum requires a momentum > 0 and zero dampening")
        return group

    def step(self, closure=None):
        """Update every parameter in place; return ``closure()`` if given (called first)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if weight_decay != 0:
                    g = g + weight_decay * p.data
                if momentum != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(g, copy=True)
                    else:
                        buf *= momentum
                        buf += (1 - dampening) * g
                    g = g + momentum * buf if nesterov else buf
                p.data -= lr * g
        return loss


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), with PyTorch's update rule and L2 weight decay.

    For each parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...``::

        g = g + weight_decay * p                       (if weight_decay != 0)
        m = m + (1 - beta1) * (g - m)                  (lerp towards g)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                          (amsgrad only; use v_max below)
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps
        p = p - (lr / (1 - beta1**t)) * m / denom

    Parameters
    ----------
    params : iterable of Parameter or of dict
        See :class:`Optimizer`.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8
    weight_decay : float, default 0
        L2 penalty added to the gradient (this is Adam, not AdamW).
    amsgrad : bool, default False

    Notes
    -----
    State per parameter: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"`` and, with
    amsgrad, ``"max_exp_avg_sq"``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn, optim
    >>> p = nn.Parameter(np.array([1.0, -2.0]))
    >>> opt = optim.Adam([p], lr=0.1)
    >>> p.grad[...] = [0.5, -4.0]
    >>> opt.step(); p.data                     # the first step: lr against each gradient's sign
    array([ 0.9, -1.9])
    """

    _array_state = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self._validate_group(dict(defaults))
        super().__init__(params, defaults)

    def _validate_group(self, group):
        owner = "Adam"
        group["lr"] = _at_least_zero(group["lr"], "lr", owner, "learning rate")
        group["eps"] = _at_least_zero(group["eps"], "eps", owner, "epsilon value")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{owner}: betas must be a pair of floats; got {betas!r}")
        b1, b2 = (_real(b, "betas", owner) for b in betas)
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"{owner}: invalid beta parameter at index 0: {b1} (must be in [0, 1))")
        if not 0.0 <= b2 < 1.0:
            raise ValueError(f"{owner}: invalid beta parameter at index 1: {b2} (must be in [0, 1))")
        group["betas"] = (b1, b2)
        group["weight_decay"] = _at_least_zero(group["weight_decay"], "weight_decay", owner, "weight_decay value")
        if not isinstance(group["amsgrad"], (bool, np.bool_)):
            raise TypeError(f"{owner}: amsgrad must be True or False; got {group['amsgrad']!r}")
        group["amsgrad"] = bool(group["amsgrad"])
        return group

    def step(self, closure=None):
        """Update every parameter in place; return ``closure()`` if given (called first)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if weight_decay != 0:
                    g = g + weight_decay * p.data
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {
                        "step": 0,
                        "exp_avg": np.zeros_like(p.data),
                        "exp_avg_sq": np.zeros_like(p.data),
                    }
                if amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = np.zeros_like(p.data)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg += (1 - beta1) * (g - exp_avg)
                exp_avg_sq *= beta2
                exp_avg_sq += (1 - beta2) * (g * g)
                bias_correction1 = 1 - beta1**t
                bias_correction2_sqrt = math.sqrt(1 - beta2**t)
                if amsgrad:
                    np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    denom = np.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
                else:
                    denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
                p.data -= (lr / bias_correction1) * (exp_avg / denom)
        return loss
