"""Check one scratch layer (or loss) against its PyTorch equivalent with autograd.

The upstream gradient is random and non-uniform, never the ones of ``.sum()``:
a ones upstream gradient hides whole classes of backward bugs (a missing
transpose of a square matrix, a gradient summed over the wrong axis, ...).
Parameters are copied scratch -> torch by name; the output, the input gradient
and every parameter gradient are compared with the suite's tolerances, and a
gradient that is ~0 on both sides fails as degenerate.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from .parity import Comparison, ParityError, Tolerance, compare, tolerance_for


def _torch_params(module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(module.named_parameters()) if isinstance(module, torch.nn.Module) else OrderedDict()


def _copy_params(layer, module):
    """Copy the scratch layer's parameters and buffers into the torch module, by name."""
    from reference import bridge

    has_state = any(True for _ in layer.named_parameters()) or any(True for _ in layer.named_buffers())
    if has_state or any(True for _ in module.state_dict()):
        bridge.mirror(layer, module)


def check_layer(layer, module, input_shape=None, *, x=None, dtype=np.float64, seed: int = 0,
                train: bool = True, tol: Tolerance | None = None, name: str | None = None,
                upstream=None, raise_on_failure: bool = True) -> list[Comparison]:
    """Forward and backward of ``layer`` (scratch) against ``module`` (torch) on one input.

    Args:
        layer: scratch module with ``forward(x)`` and ``backward(dy)``.
        module: the torch equivalent (an ``nn.Module`` or a function of a tensor).
        input_shape: shape of a standard-normal random input (or pass ``x``).
        x: the input itself (copied, cast to ``dtype``).
        dtype: float32 or float64.
        seed: seeds the input and the upstream gradient.
        train: run both in training (True) or evaluation mode.
        upstream: dL/d(output); default: standard normal, non-uniform.

    Returns the comparisons (``out``, ``din``, ``grad/<param>``); raises ``ParityError``
    naming the first failing tensor unless ``raise_on_failure`` is false.
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(input_shape) if x is None else np.array(x)).astype(dtype)
    tol = tol or tolerance_for(dtype)
    name = name or type(layer).__name__
    if hasattr(layer, "astype"):
        layer.astype(dtype)
    layer.train(train)
    if isinstance(module, torch.nn.Module):
        module.train(train)
        _copy_params(layer, module)

    x_before = x.copy()
    if hasattr(layer, "zero_grad"):
        layer.zero_grad()
    if hasattr(layer, "needs_input_grad"):
        layer.needs_input_grad = True
    y = layer.forward(x)
    g = rng.standard_normal(np.shape(y)).astype(dtype) if upstream is None else np.asarray(upstream, dtype)
    dx = layer.backward(g.copy())

    xt = torch.from_numpy(x_before.copy()).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(g))

    comps = [compare("out", y, yt.detach().numpy(), tol), compare("din", dx, xt.grad.numpy(), tol)]
    tparams = _torch_params(module)
    for pname, p in (layer.named_parameters() if hasattr(layer, "named_parameters") else []):
        ref = tparams[pname].grad
        comps.append(compare(f"grad/{pname}", p.grad, ref.numpy() if ref is not None else np.zeros_like(p.grad), tol))
    if not np.array_equal(x, x_before):
        comps.insert(0, Comparison("input", "forward activation", x.shape, 0, 0, (), 0, 0, 0, tol,
                                   problem="forward modified its input in place"))
    _maybe_raise(comps, name, dtype, raise_on_failure)
    return comps


def check_loss(loss, torch_loss, logits_shape, target, *, dtype=np.float64, seed: int = 0,
               tol: Tolerance | None = None, name: str | None = None,
               raise_on_failure: bool = True) -> list[Comparison]:
    """A scratch loss (``forward(input, target)`` -> scalar, ``backward()`` -> dL/dinput)
    against a torch loss, on random logits."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(logits_shape) * 3).astype(dtype)
    tol = tol or tolerance_for(dtype)
    value = loss.forward(z.copy(), target)
    dz = loss.backward()
    zt = torch.from_numpy(z).requires_grad_(True)
    vt = torch_loss(zt, torch.from_numpy(np.asarray(target)))
    vt.backward()
    comps = [compare("loss", np.asarray(value), vt.detach().numpy(), tol),
             compare("din", dz, zt.grad.numpy(), tol)]
    _maybe_raise(comps, name or type(loss).__name__, dtype, raise_on_failure)
    return comps


def _maybe_raise(comps, name, dtype, raise_on_failure):
    failed = [c for c in comps if not c.passed]
    if failed and raise_on_failure:
        more = f"\n({len(failed) - 1} more failing: {', '.join(c.name for c in failed[1:])})" if len(failed) > 1 else ""
        raise ParityError(failed[0].describe(name, np.dtype(dtype).name) + more)
