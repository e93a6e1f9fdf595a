"""Copy parameters and buffers between a scratch model and its PyTorch mirror,
key by key, asserting names, shapes and dtypes: nothing is transposed, cast or
guessed. A mismatch raises ``BridgeError`` listing both sides."""

from __future__ import annotations

import numpy as np
import torch

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                np.dtype(np.int64): torch.int64}


class BridgeError(ValueError):
    """The two models do not have the same state names, shapes or dtypes."""


def torch_dtype(dtype) -> torch.dtype:
    try:
        return TORCH_DTYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise BridgeError(f"no torch dtype for {dtype!r}; use float32 or float64") from None


def _check_names(scratch_keys, torch_keys):
    scratch_keys, torch_keys = list(scratch_keys), list(torch_keys)
    if scratch_keys != torch_keys:
        only_s = [k for k in scratch_keys if k not in torch_keys]
        only_t = [k for k in torch_keys if k not in scratch_keys]
        raise BridgeError(
            "state names differ between the scratch model and the torch model:\n"
            f"  scratch: {scratch_keys}\n  torch:   {torch_keys}\n"
            f"  only in scratch: {only_s}; only in torch: {only_t}"
            + ("" if only_s or only_t else " (same names, different order)"))


def _scratch_state(model):
    """Live arrays of a scratch model, in torch's state_dict order (module by module)."""
    return dict(model.named_state())


def copy_to_torch(scratch_model, torch_model: torch.nn.Module) -> None:
    """Overwrite the torch model's parameters and buffers with the scratch model's."""
    src = _scratch_state(scratch_model)
    dst = torch_model.state_dict(keep_vars=True)
    _check_names(src.keys(), dst.keys())
    for k, a in src.items():
        t = dst[k]
        a = np.asarray(a)
        if tuple(t.shape) != a.shape or t.dtype != torch_dtype(a.dtype):
            raise BridgeError(f"{k}: scratch has shape {a.shape} dtype {a.dtype}, "
                              f"torch has shape {tuple(t.shape)} dtype {t.dtype}")
    with torch.no_grad():
        for k, a in src.items():
            dst[k].copy_(torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape)))  # keeps 0-d 0-d


def copy_to_scratch(torch_model: torch.nn.Module, scratch_model) -> None:
    """Overwrite the scratch model's parameters and buffers with the torch model's."""
    src = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    dst = _scratch_state(scratch_model)
    _check_names(dst.keys(), src.keys())
    for k, a in src.items():
        if a.shape != np.shape(dst[k]) or a.dtype != np.asarray(dst[k]).dtype:
            raise BridgeError(f"{k}: torch has shape {a.shape} dtype {a.dtype}, "
                              f"scratch has shape {np.shape(dst[k])} dtype {np.asarray(dst[k]).dtype}")
    scratch_model.load_state_dict(src)


def mirror(scratch_model, torch_model: torch.nn.Module) -> torch.nn.Module:
    """Cast the torch model to the scratch model's dtype and copy the weights across."""
    dtypes = {np.asarray(a).dtype for a in _scratch_state(scratch_model).values()
              if np.issubdtype(np.asarray(a).dtype, np.floating)}
    if len(dtypes) != 1:
        raise BridgeError(f"scratch model mixes floating dtypes {sorted(map(str, dtypes))}")
    torch_model.to(torch_dtype(dtypes.pop()))
    copy_to_torch(scratch_model, torch_model)
    return torch_model
