"""Check one scratch layer (or loss) against its PyTorch equivalent with autograd.

The layer may follow any convention of the layer protocol (``nnparity.training.adapters``):
this project's scratch modules, a user's object with ``params``/``grads`` dicts, a
parameter-free object, or a ``(forward, backward)`` pair of functions; the public
``nnparity.check_layer`` (``nnparity.api.byod``) runs this for both dtypes.

The upstream gradient is random and non-uniform, never the ones of ``.sum()``:
a ones upstream gradient hides whole classes of backward bugs (a missing
transpose of a square matrix, a gradient summed over the wrong axis, ...).
Parameters are copied scratch -> torch by name; the output, the input gradient
and every parameter gradient are compared with the suite's tolerances, and a
gradient that is ~0 on both sides fails as degenerate.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import torch

from nnparity.training.adapters import (INPUT_MUTATED, CallError, LossAdapter, ProtocolError, as_layer, call_torch, copy_to_torch,
                       input_grad_problem, output_problem, torch_function_params, upstream_problem)
from nnparity.core.parity import Comparison, ParityError, Tolerance, compare, quantity, tolerance_for
from nnparity.diagnosis.patterns import detect


def _torch_params(module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(module.named_parameters()) if isinstance(module, torch.nn.Module) else OrderedDict()


def _problem(name, text, shape=()) -> Comparison:
    """A comparison that cannot be made (misuse found before values): fails with ``text``."""
    tol = Tolerance(0.0, 0.0)
    return Comparison(name, quantity(name), tuple(shape), math.inf, math.inf, (), math.nan, math.nan, math.inf,
                      tol, problem=text)


def compare_values(name, scratch, reference, tol, *, allowed_zero: bool = False) -> list:
    """``compare``, and when the dtypes differ, two findings instead of one: the dtype (a finding of
    its own) and the values cast to the reference's dtype (``"<name> as float32"``), so that
    float32 numerics are judged even when a float64 scalar promoted the result."""
    a, b = np.asarray(scratch), np.asarray(reference)
    if allowed_zero:   # zero by construction: compared with zero (both sides' rounding noise need not agree)
        b = np.zeros_like(b)
    c = compare(name, a, b, tol, allowed_zero=allowed_zero)
    if not (c.problem and c.problem.startswith("dtype mismatch")) or \
            not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
        return [c]
    cast = compare(name, a.astype(b.dtype), b, tol, allowed_zero=allowed_zero)
    cast.name = f"{name} as {b.dtype}"
    c.problem += (f" (values cast to {b.dtype}: {'agree' if cast.passed else 'disagree too'}, "
                  f"margin {cast.margin:.3g}; see {cast.name})")
    return [c, cast]


def _torch_name(module) -> str:
    if isinstance(module, torch.nn.Module) and type(module).__module__.startswith("torch.nn"):
        return f"torch.nn.{type(module).__name__}"
    return getattr(module, "__name__", type(module).__name__)


def _torch_forward(module, lay, xt):
    """Run the torch equivalent: an ``nn.Module`` (parameters already copied) or a function,
    called as ``fn(x)`` or, when the layer has parameters, ``fn(x, **params)``. Its output
    must be a tensor that autograd can differentiate with respect to the input."""
    what = f"the torch equivalent {_torch_name(module)}"
    if isinstance(module, torch.nn.Module):
        yt, tparams = call_torch(what, module, xt), _torch_params(module)
    elif not callable(module):
        raise ProtocolError(f"the torch equivalent must be a torch.nn.Module or a function, "
                            f"got {type(module).__name__}")
    else:
        params = lay.params()
        tparams = OrderedDict()
        if params:
            torch_function_params(module, list(params))
            tparams = OrderedDict((k, torch.from_numpy(np.array(v, copy=True)).requires_grad_(True))
                                  for k, v in params.items())
        yt = call_torch(what, module, xt, **tparams)
    if not isinstance(yt, torch.Tensor):
        raise ProtocolError(f"{what} returned {type(yt).__name__}, not a torch tensor: it must return the "
                            "layer's output (a module returning a tuple needs a function picking the output)")
    if not yt.requires_grad:
        raise ProtocolError(f"{what}'s output does not depend on its input through autograd (it does not "
                            "require grad): "
                            "it must compute with torch on the tensor it is given (no .detach(), .numpy(), "
                            "torch.no_grad())")
    return yt, tparams


def check_layer(layer, module, input_shape=None, *, x=None, dtype=np.float64, seed: int = 0,
                train: bool = True, tol: Tolerance | None = None, name: str | None = None,
                upstream=None, allowed_zero=(), raise_on_failure: bool = True,
                arrays: dict | None = None, forward_only: list | None = None) -> list[Comparison]:
    """Forward and backward of ``layer`` (scratch) against ``module`` (torch) on one input.

    Args:
        layer: anything following the layer protocol (``nnparity.training.adapters``): a scratch
            module, a plain object with ``params``/``grads`` dicts, a parameter-free
            object, or a ``(forward, backward)`` pair of functions.
        module: the torch equivalent: an ``nn.Module`` (parameters copied from the layer
            by name) or a function ``fn(x)``, or ``fn(x, **params)`` when the layer has
            parameters (they arrive as torch tensors under the layer's names).
        input_shape: shape of a standard-normal random input (or pass ``x``).
        x: the input itself (copied, cast to ``dtype``).
        dtype: float32 or float64.
        seed: seeds the input and the upstream gradient.
        train: run both in training (True) or evaluation mode.
        upstream: dL/d(output); default: standard normal, non-uniform.
        allowed_zero: parameter names whose gradient is zero by construction: compared with zero.
        arrays: a dict that receives ``{name: (scratch, reference)}`` of every failing
            comparison (to draw it: ``nnparity.reporting.heatmap``).
        forward_only: a list: in evaluation mode, a backward that raises is noted there (in words)
            and only the output and buffers are compared; without it, the error is raised.

    A failing comparison whose difference is an exact pattern (a factor N, a transpose,
    ...: ``nnparity.diagnosis.patterns``) carries it in ``Comparison.pattern``.

    Returns the comparisons (``out``, ``din``, ``grad/<param>``, then ``buffer/<name>`` for
    every buffer the layer has, after the forward); raises ``ParityError``
    naming the first failing tensor unless ``raise_on_failure`` is false. Misuse (a
    forward that mutates its input or returns NaN, a backward returning the wrong
    shape) fails as a comparison with a problem; mismatched parameter names or shapes
    raise ``ParameterMismatch`` listing both sets.
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(input_shape) if x is None else np.array(x)).astype(dtype)
    tol = tol or tolerance_for(dtype)
    lay = as_layer(layer)
    name = name or lay.name
    if isinstance(module, torch.nn.Module):
        lay.bind(module, train)
    lay.astype(dtype)
    lay.train(train)
    if isinstance(module, torch.nn.Module):
        module.train(train)
        copy_to_torch(lay, module, dtype)
        module.zero_grad(set_to_none=True)  # a module checked before (other dtype) must not accumulate
    x_before = x.copy()
    buffers_before = {k: np.array(v, copy=True) for k, v in lay.buffers().items()}
    lay.zero_grad()
    undo_input = lay.input_grad_on()
    no_backward = False
    try:
        y = lay.forward(x)
        problem = output_problem(name, y, x_before)
        if problem:
            comps = [_problem("out", problem, np.shape(y))]
            _maybe_raise(comps, name, dtype, raise_on_failure)
            return comps
        upstream_problem(name, upstream, np.shape(y))
        g = rng.standard_normal(np.shape(y)).astype(dtype) if upstream is None else np.asarray(upstream, dtype)
        try:
            dx = lay.backward(g.copy())
        except CallError as e:   # no eval backward (CS231n's test-mode cache, numpy-ml's frozen layer)
            if train or forward_only is None:
                raise
            forward_only.append(f"{name} has no backward in evaluation mode, so only its forward (and buffers) "
                                f"were compared in eval: {str(e).splitlines()[0]}")
            dx, no_backward = None, True
    finally:
        undo_input()
    grads = lay.grads() if not no_backward else OrderedDict()

    xt = torch.from_numpy(x_before.copy()).requires_grad_(True)
    yt, tparams = _torch_forward(module, lay, xt)
    outs = compare_values("out", y, yt.detach().numpy(), tol)
    out = outs[0]
    if out.problem and out.problem.startswith("shape mismatch"):   # no upstream gradient fits both outputs
        comps = [out]
        _maybe_raise(comps, name, dtype, raise_on_failure)
        return comps
    comps = list(outs)
    pairs = {"out": (y, yt.detach().numpy())}
    if not no_backward:
        call_torch(f"the torch equivalent {_torch_name(module)} (backward)", yt.backward, torch.from_numpy(g))
        din_problem = input_grad_problem(name, dx, x_before)
        din_ref = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x_before)
        comps += [_problem("din", din_problem)] if din_problem else compare_values("din", dx, din_ref, tol)
        pairs["din"] = (dx, din_ref)
    for pname, grad in grads.items():
        ref = tparams[pname].grad
        ref = ref.numpy() if ref is not None else np.zeros_like(grad)
        comps += compare_values(f"grad/{pname}", grad, ref, tol, allowed_zero=pname in allowed_zero)
        pairs[f"grad/{pname}"] = (grad, ref)
    if isinstance(module, torch.nn.Module):  # buffers after the forward (BatchNorm's running statistics)
        tbuf = OrderedDict(module.named_buffers())
        for k, b in lay.buffers().items():
            comps += compare_values(f"buffer/{k}", b, tbuf[k].detach().numpy(), tol)
            pairs[f"buffer/{k}"] = (b, tbuf[k].detach().numpy())
    _name_patterns(comps, pairs, tol, x_before, g, lambda: _last_sample(module, lay, x_before, g, list(grads)),
                   {f"buffer/{k}": v for k, v in buffers_before.items()})
    if arrays is not None:
        arrays.update((c.name, pairs[c.name]) for c in comps if not c.passed and c.name in pairs)
    if not np.array_equal(x, x_before, equal_nan=True):
        comps.insert(0, Comparison("input", "forward activation", x.shape, 0, 0, (), 0, 0, 0, tol,
                                   problem=INPUT_MUTATED))
    _maybe_raise(comps, name, dtype, raise_on_failure)
    return comps


def counts_of(shape) -> dict:
    """The counts a factor slip is named by: the batch size N, and for maps N*H*W and H*W
    (N*L and L for sequences)."""
    shape = tuple(shape)
    counts = {"N": shape[0]} if shape else {}
    spatial = {3: "L", 4: "H*W"}.get(len(shape))
    if spatial:
        counts[f"N*{spatial}"] = int(shape[0] * np.prod(shape[2:]))
        counts[spatial] = int(np.prod(shape[2:]))
    return counts


def _name_patterns(comps, pairs, tol, x, g, alternatives=None, before=None) -> None:
    """Set ``pattern`` on every failing value comparison whose difference is an exact slip."""
    counts = counts_of(np.shape(x))
    alts = None
    for c in comps:
        if c.passed or c.inconclusive or c.name not in pairs:
            continue
        a, b = pairs[c.name]
        if not isinstance(a, (np.ndarray, np.generic)) or (c.problem and np.shape(a) == np.shape(b)):
            continue   # not an array (its own problem), or a dtype / non-finite problem: no value pattern
        try:   # a pattern is a hint: never lose the comparison to it
            if alts is None and alternatives is not None and c.quantity != "forward activation":
                alts = alternatives() or {}
            c.pattern = detect(a, b, tol, counts=counts, upstream=g, before=(before or {}).get(c.name),
                               alternatives={k: v[c.name] for k, v in (alts or {}).items() if c.name in v})
        except Exception:  # noqa: BLE001
            alts = alts or {}


def _last_sample(module, lay, x, g, grads) -> dict:
    """The reference recomputed with only the last sample's upstream gradient (a loop over the
    batch that assigns where it should add keeps the last sample's contribution alone)."""
    if np.shape(g)[0] < 2 or not isinstance(module, torch.nn.Module):
        return {}
    m = copy.deepcopy(module)
    m.zero_grad(set_to_none=True)
    gl = np.zeros_like(g)
    gl[-1] = g[-1]
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = m(xt)
    yt.backward(torch.from_numpy(gl))
    tp = dict(m.named_parameters())
    out = {"din": xt.grad.numpy()}
    out.update((f"grad/{k}", tp[k].grad.numpy()) for k in grads if k in tp and tp[k].grad is not None)
    return {"the reference of the last sample alone (the upstream gradient of every other sample set to 0): "
            "a loop over the batch that assigns (=) where it should add (+=)": out}


def check_loss(loss, torch_loss, logits_shape, target, *, z=None, dtype=np.float64, seed: int = 0,
               tol: Tolerance | None = None, name: str | None = None,
               raise_on_failure: bool = True) -> list[Comparison]:
    """A scratch loss against a torch loss, on random logits (~ 3 N(0, 1)) or the given ``z``.

    ``loss`` is an object with ``forward(input, target)`` -> scalar and ``backward()``
    -> dL/dinput (the scratch convention) or a function ``loss(input, target) ->
    (value, dL/dinput)``; ``target`` is passed to both sides as given (floating
    targets are cast to ``dtype``).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(logits_shape) * 3 if z is None else np.array(z)).astype(dtype)
    tol = tol or tolerance_for(dtype)
    adapter = LossAdapter(loss)
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.floating):
        target = target.astype(dtype)
    value, dz = adapter(z.copy(), target)
    zt = torch.from_numpy(z).requires_grad_(True)
    what = f"the torch loss {_torch_name(torch_loss)}"
    vt = call_torch(what, torch_loss, zt, torch.from_numpy(np.ascontiguousarray(target)))
    if not isinstance(vt, torch.Tensor) or not vt.requires_grad:
        raise ProtocolError(f"{what} returned {type(vt).__name__}"
                            f"{' not computed from its input by autograd' if isinstance(vt, torch.Tensor) else ''}: "
                            "it must return the loss as a torch tensor computed from its input")
    if vt.dim() != 0:
        raise ProtocolError(f"{what} returned shape {tuple(vt.shape)}, not a scalar: use a reduction "
                            "('mean' or 'sum', as your loss) so there is one loss value to compare")
    call_torch(f"{what} (backward)", vt.backward)
    comps = compare_values("loss", np.asarray(value), vt.detach().numpy(), tol) + \
        compare_values("din", dz, zt.grad.numpy(), tol)
    _name_patterns(comps, {"loss": (np.asarray(value), vt.detach().numpy()), "din": (dz, zt.grad.numpy())}, tol, z,
                   None)
    _maybe_raise(comps, name or adapter.name, dtype, raise_on_failure)
    return comps


def _maybe_raise(comps, name, dtype, raise_on_failure):
    failed = [c for c in comps if not c.passed]
    if failed and raise_on_failure:
        more = f"\n({len(failed) - 1} more failing: {', '.join(c.name for c in failed[1:])})" if len(failed) > 1 else ""
        raise ParityError(failed[0].describe(name, np.dtype(dtype).name) + more)
