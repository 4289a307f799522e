"""PyTorch tensors taken as NumPy arrays, without importing PyTorch.

Used where a ``state_dict`` enters fastconv (:meth:`fastconv.nn.Module.load_state_dict`,
:func:`fastconv.serialization.save_safetensors`). A ``torch.Tensor`` can only exist when
``torch`` has been imported, so it is looked up in :data:`sys.modules` and never imported here.
"""

import sys

import numpy as np


def as_array(value, owner, where):
    """``value`` itself if it is an ndarray, a ``torch.Tensor``'s values as an ndarray, else a TypeError.

    A tensor is detached from autograd (``requires_grad`` does not matter: its values are
    read), copied to the CPU if it lives on another device, and has its lazy conjugate and
    negative bits resolved; the result may share memory with the (CPU) tensor, so callers
    copy out of it and never write into it. Sparse, quantized and meta tensors and dtypes
    without a NumPy equivalent (``bfloat16``, the float8 types) are a TypeError or ValueError
    naming ``owner``, ``where`` and the dtype.
    """
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _from_torch(torch, value, owner, where)
    raise TypeError(f"{owner}: {where} must be a numpy.ndarray or a torch.Tensor; got {type(value).__name__}")


def _from_torch(torch, tensor, owner, where):
    described = f"{owner}: {where} is a torch tensor of dtype {tensor.dtype}, shape {tuple(tensor.shape)}"
    if tensor.layout != torch.strided:
        raise TypeError(f"{described} and layout {tensor.layout}; convert it with .to_dense() first")
    if tensor.is_quantized:
        raise TypeError(f"{described}, quantized; convert it with .dequantize() first")
    if tensor.device.type == "meta":
        raise ValueError(f"{described} on the meta device, which holds no values")
    t = tensor.detach().cpu().resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:  # TypeError: a dtype NumPy does not have (bfloat16, float8)
        raise TypeError(f"{described}, which NumPy cannot hold ({exc}); convert it first, for example "
                        f"with .float()") from None
