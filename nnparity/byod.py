"""Bring your own derivation: check your own NumPy layers, losses and networks against
PyTorch autograd (or, with no torch equivalent, against finite differences).

    import nnparity, torch
    nnparity.check_layer(MyLayerNorm(16), torch.nn.LayerNorm(16), input_shape=(8, 16))
    nnparity.check_layer(MyLeakyReLU(0.1), None, input_shape=(8, 16))     # finite differences
    nnparity.check_loss(my_softmax_ce, torch.nn.CrossEntropyLoss(), input_shape=(8, 10))
    nnparity.check_steps(net, loss, update, torch_net, torch_loss, torch_optimizer, batches)

A thin layer over the suite's harness: ``layercheck`` runs one layer against
autograd, ``gradcheck`` runs finite differences, ``parity.check_steps`` runs
training steps through ``sides``; the objects you pass are read through
``adapters.LayerAdapter`` (the accepted conventions are documented there). A
failure raises an ``AssertionError`` with the suite's message: the tensor, the
element, both values, the errors, the tolerance. In messages, *scratch* is your
code and *reference* is PyTorch.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from . import gradcheck as gc
from .adapters import (INPUT_MUTATED, LayerAdapter, LossAdapter, ProtocolError, RandomState, UpdateAdapter,
                       as_layer, copy_to_torch, input_grad_problem, output_problem)
from .parity import Comparison, ParityError, compare, tolerance_for
from .sides import StepResult, TorchSide, count_correct

DTYPES = ("float64", "float32")
PARAMS = ("random", "keep")


def _describe_torch(t) -> str:
    if t is None:
        return "finite differences"
    mod = type(t).__module__
    if mod.startswith("torch.nn"):
        return f"torch.nn.{type(t).__name__}"
    return getattr(t, "__name__", type(t).__name__)


@dataclass
class LayerReport:
    """Every comparison of one ``check_layer`` / ``check_loss`` call, per dtype.

    ``results[dtype]`` is a list of ``Comparison`` (against autograd, or against your
    own float64 run for float32 when there is no torch equivalent) or, for float64
    without a torch equivalent, a ``GradcheckResult``.
    """

    name: str
    reference: str
    context: str
    results: "OrderedDict[str, object]" = field(default_factory=OrderedDict)

    @staticmethod
    def _failures(res) -> list:
        if isinstance(res, gc.GradcheckResult):
            return [t.name for t in res.failures]
        return [c.name for c in res if not c.passed]

    @property
    def ok(self) -> bool:
        return not any(self._failures(r) for r in self.results.values())

    def summary(self) -> str:
        parts = []
        for dt, res in self.results.items():
            bad = self._failures(res)
            n = len(res.tensors) if isinstance(res, gc.GradcheckResult) else len(res)
            parts.append(f"{dt}: " + (f"{len(bad)} of {n} failing ({', '.join(bad)})" if bad else f"all {n} pass"))
        return "; ".join(parts)

    def message(self) -> str:
        for dt, res in self.results.items():
            if isinstance(res, gc.GradcheckResult):
                if not res.ok:
                    return f"{res.message()}\n{self.summary()}\n{self.context}"
                continue
            failed = [c for c in res if not c.passed]
            if failed:
                more = (f" ({len(failed) - 1} more failing in {dt}: {', '.join(c.name for c in failed[1:])})"
                        if len(failed) > 1 else "")
                hint = ""
                if (failed[0].problem or "").startswith("dtype mismatch"):
                    hint = ("\nyour layer returned another dtype than its input's: a float64 array or constant "
                            "array (np.ones, np.where(mask, 1.0, a), ...) mixed into a float32 computation "
                            "promotes it to float64")
                return f"{failed[0].describe(self.name, dt)}{more}{hint}\n{self.summary()}\n{self.context}"
        return f"{self.name} against {self.reference}: {self.summary()}"

    def raise_if_failed(self) -> "LayerReport":
        if not self.ok:
            fd = any(isinstance(r, gc.GradcheckResult) and not r.ok for r in self.results.values())
            raise (gc.GradcheckError if fd else ParityError)(self.message())
        return self


def _check_dtypes(dtypes) -> list:
    dtypes = [np.dtype(d).name for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
    for d in dtypes:
        tolerance_for(d)  # a clear ValueError for anything but float32/float64
    if not dtypes:
        raise ValueError("dtypes is empty: pass e.g. ('float64', 'float32')")
    return dtypes


def _randomize(lay: LayerAdapter, seed: int) -> None:
    """Seeded N(0, 1) parameter values: ones and zeros (a fresh LayerNorm's gamma and beta)
    hide bugs, e.g. a backward that forgets to multiply by gamma."""
    rng = np.random.default_rng([seed, 7])
    lay.set_params({k: rng.standard_normal(v.shape).astype(np.float64) for k, v in lay.params().items()})


def _run(lay: LayerAdapter, x, g, dtype, rs):
    """Your layer's forward and backward in ``dtype``: ``(out, din, grads)``, or ``[(tensor, problem)]``."""
    lay.astype(dtype)
    xd = x.astype(dtype)
    x_before = xd.copy()
    lay.zero_grad()
    undo = lay.input_grad_on()
    try:
        rs.replay()
        y = lay.forward(xd)
        problem = output_problem(lay.name, y, x_before)
        if problem:
            return [("out", problem)]
        dx = lay.backward(g.astype(dtype))
    finally:
        undo()
    problem = input_grad_problem(lay.name, dx, x_before)
    if problem:
        return [("din", problem)]
    if not np.array_equal(xd, x_before, equal_nan=True):
        return [("input", INPUT_MUTATED)]
    return y, dx, OrderedDict((k, np.array(v, copy=True)) for k, v in lay.grads().items())


def _against_own_float64(lay, x, upstream, seed, dtype) -> list:
    """No torch equivalent: your layer in ``dtype`` against your float64 run, which the
    finite-difference check verifies (same seeded input and upstream gradient)."""
    from .layercheck import _problem

    rng = np.random.default_rng(seed)
    x64 = (rng.standard_normal(x) if isinstance(x, tuple) else np.array(x)).astype(np.float64)
    rs = RandomState(lay.generators())
    lay.astype(np.float64)
    rs.replay()
    y = lay.forward(x64.copy())
    problem = output_problem(lay.name, y, x64)
    if problem:
        return [_problem("out", problem)]
    g = (rng.standard_normal(np.shape(y)) if upstream is None else np.array(upstream)).astype(np.float64)
    ref = _run(lay, x64, g, np.float64, rs)
    got = _run(lay, x64, g, dtype, rs) if not isinstance(ref, list) else ref
    lay.astype(np.float64)
    if isinstance(got, list):
        return [_problem(k, p) for k, p in got]
    tol = tolerance_for(dtype)
    comps = [compare("out", got[0], ref[0].astype(dtype), tol), compare("din", got[1], ref[1].astype(dtype), tol)]
    comps += [compare(f"grad/{k}", got[2][k], ref[2][k].astype(dtype), tol) for k in ref[2]]
    return comps


def check_layer(mine, torch_equivalent, input_shape=None, *, x=None, upstream=None, dtypes=DTYPES,
                seed: int = 0, params: str = "random", train: bool = True, name: str | None = None,
                samples: int = gc.SAMPLES, eps: float = gc.EPS, raise_on_failure: bool = True) -> LayerReport:
    """Check your layer's forward and backward against PyTorch autograd, in float64 and float32.

    Args:
        mine: your layer: a scratch-style module, a plain object with ``forward(x)``,
            ``backward(dy) -> dx`` and ``params``/``grads`` dicts, a parameter-free
            object, or a pair of functions ``(forward, backward)`` with
            ``backward(x, dy) -> dx`` (see ``nnparity.adapters`` for the exact protocol).
        torch_equivalent: a ``torch.nn.Module`` whose ``named_parameters()`` names match
            yours (they are copied from yours), a function ``fn(x)`` (``fn(x, **params)``
            if your layer has parameters: they arrive as torch tensors under your
            names), or ``None`` for the finite-difference check.
        input_shape: shape of the random standard-normal input (or give ``x``).
        upstream: dL/d(output); default: random standard normal, never uniform (a
            ones upstream gradient hides transposes and wrong-axis sums).
        dtypes: the dtypes to run, each with its tolerance (``nnparity.parity.TOLERANCES``).
        seed: seeds the input, the upstream gradient and the parameter values.
        params: ``"random"`` (default) sets every parameter to seeded N(0, 1) values for
            the check; ``"keep"`` checks your current values. Yours are restored after.
        train: training (default) or evaluation mode on both sides.
        samples, eps: coordinates per tensor and step of the finite-difference check.

    Returns a ``LayerReport``; raises ``AssertionError`` (``ParityError``, or
    ``GradcheckError`` for finite differences) naming the first failing tensor.
    Without a torch equivalent, float64 is checked by central finite differences (always,
    whatever ``dtypes`` says) and float32 against your own float64 run.
    """
    from . import layercheck

    if input_shape is None and x is None:
        raise ValueError("give input_shape=(N, ...) for a random input, or the input itself as x=...")
    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    dtypes = _check_dtypes(dtypes)
    if torch_equivalent is None and "float64" not in dtypes:
        dtypes.insert(0, "float64")   # the finite-difference check itself runs in float64
    lay = as_layer(mine, name)
    ref_name = _describe_torch(torch_equivalent)
    shape = tuple(input_shape) if x is None else np.shape(x)
    context = (f"(scratch = your {lay.name}, reference = {ref_name}; input {shape} "
               f"{'~ N(0, 1)' if x is None else 'given'}, upstream gradient "
               f"{'~ N(0, 1)' if upstream is None else 'given'}, seed {seed}; "
               + ("parameters set to seeded N(0, 1) values, params='keep' checks yours" if params == "random"
                  and lay.params() else "parameters as given")
               + ("; float32 is compared with your own float64 run, which finite differences check)"
                  if torch_equivalent is None else ")"))
    report = LayerReport(lay.name, ref_name, context)
    snap = lay.snapshot()
    try:
        if params == "random":
            _randomize(lay, seed)
        if torch_equivalent is None:
            for dt in dtypes:
                if dt == "float64":
                    report.results[dt] = gc.gradcheck_layer(lay, input_shape, x=x, upstream=upstream, samples=samples,
                                                            eps=eps, seed=seed, train=train)
                else:
                    lay.train(train)
                    report.results[dt] = _against_own_float64(lay, shape if x is None else x, upstream, seed, dt)
        else:
            for dt in dtypes:
                report.results[dt] = layercheck.check_layer(lay, torch_equivalent, input_shape, x=x, dtype=dt,
                                                            seed=seed, train=train, upstream=upstream,
                                                            name=lay.name, raise_on_failure=False)
    finally:
        lay.restore(snap)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def check_loss(mine, torch_loss, input_shape=None, target=None, *, z=None, dtypes=DTYPES, seed: int = 0,
               name: str | None = None, samples: int = gc.SAMPLES, eps: float = gc.EPS,
               raise_on_failure: bool = True) -> LayerReport:
    """Check your loss (value and dL/dinput) against a torch loss, in float64 and float32.

    Args:
        mine: an object with ``forward(input, target)`` -> scalar and ``backward()`` ->
            dL/dinput, or a function ``loss(input, target) -> (value, dL/dinput)``.
        torch_loss: a torch loss (``torch.nn.CrossEntropyLoss()``, a function), or
            ``None`` for finite differences.
        input_shape: shape of the random logits ~ 3 N(0, 1) (or give ``z``).
        target: passed to both sides; default: seeded integer class labels in
            ``[0, input_shape[-1])``.
    """
    from . import layercheck

    if input_shape is None and z is None:
        raise ValueError("give input_shape=(N, C) for random logits, or the logits themselves as z=...")
    dtypes = _check_dtypes(dtypes)
    if torch_loss is None and "float64" not in dtypes:
        dtypes.insert(0, "float64")   # the finite-difference check itself runs in float64
    shape = tuple(input_shape) if z is None else np.shape(z)
    adapter = LossAdapter(mine, name)
    if target is None:
        target = np.random.default_rng([seed, 11]).integers(0, shape[-1], shape[0])
    ref_name = _describe_torch(torch_loss)
    report = LayerReport(adapter.name, ref_name, f"(scratch = your {adapter.name}, reference = {ref_name}; "
                                                 f"logits {shape}, seed {seed})")
    for dt in dtypes:
        if torch_loss is None and dt == "float64":
            report.results[dt] = gc.gradcheck_loss(mine, shape, target, z=z, samples=samples, eps=eps, seed=seed,
                                                   name=adapter.name)
        elif torch_loss is None:
            rng = np.random.default_rng(seed)
            z64 = (rng.standard_normal(shape) * 3 if z is None else np.array(z)).astype(np.float64)
            t = np.asarray(target)
            v64, d64 = adapter(z64.copy(), t.astype(np.float64) if np.issubdtype(t.dtype, np.floating) else t)
            v, d = adapter(z64.astype(dt), t.astype(dt) if np.issubdtype(t.dtype, np.floating) else t)
            tol = tolerance_for(dt)
            report.results[dt] = [compare("loss", v, v64.astype(dt), tol), compare("din", d, d64.astype(dt), tol)]
        else:
            report.results[dt] = layercheck.check_loss(mine, torch_loss, shape, target, z=z, dtype=dt, seed=seed,
                                                       name=adapter.name, raise_on_failure=False)
    if raise_on_failure:
        report.raise_if_failed()
    return report


# --- training steps --------------------------------------------------------------------------

class UserSide:
    """Your network + loss + update rule, driven like ``sides.ScratchSide`` and recorded under
    the names the torch mirror uses: ``out/output``, ``loss``, ``dout/output``,
    ``grad/<param>`` (in backward order: last parameter first), ``param/<param>``,
    ``state/<key>`` (if your update rule has a ``state_dict()``), ``buffer/<name>``."""

    name = "yours"

    def __init__(self, net: LayerAdapter, loss: LossAdapter, update: UpdateAdapter):
        self.net, self.loss_fn, self.update = net, loss, update
        self.seconds = 0.0

    def step(self, x, y, record: bool = False, draws=None) -> StepResult:
        net = self.net
        net.train(True)
        net.zero_grad()
        out = net.forward(x)
        if not isinstance(out, (np.ndarray, np.generic)):
            raise ProtocolError(output_problem(net.name, out, x))
        value, dz = self.loss_fn(out, y)
        net.backward(dz.copy())
        grads = OrderedDict((k, np.array(g, copy=True)) for k, g in net.grads().items())
        self.update.step(grads)
        rec = None
        if record:
            rec = OrderedDict([("out/output", np.array(out, copy=True)), ("loss", np.array(value, copy=True)),
                               ("dout/output", np.array(dz, copy=True))])
            rec.update((f"grad/{k}", grads[k]) for k in reversed(list(grads)))
            rec.update((f"param/{k}", np.array(v, copy=True)) for k, v in net.params().items())
            rec.update((f"state/{k}", np.array(v, copy=True)) for k, v in self.update.state().items())
            rec.update((f"buffer/{k}", np.array(v, copy=True)) for k, v in net.buffers().items())
        return StepResult(float(value), len(y), count_correct(out, y), rec)

    def draws(self) -> dict:
        return self.net.draws()


class MirrorSide(TorchSide):
    """A torch network recorded under ``UserSide``'s names: its output as ``out/output``,
    optimizer state only when your update rule exposes its own, only your buffers."""

    def __init__(self, model, loss_fn, optimizer, keep_state: bool, keep_buffers):
        super().__init__(model, loss_fn, optimizer)
        self.keep_state, self.keep_buffers = keep_state, set(keep_buffers)

    def recorded_children(self):
        return [("output", self.model)]

    def state(self):
        return OrderedDict((k, v) for k, v in super().state().items()
                           if k.startswith("param/") or (k.startswith("state/") and self.keep_state)
                           or (k.startswith("buffer/") and k[len("buffer/"):] in self.keep_buffers))


def _as_batch(x, y, dtype):
    x = np.ascontiguousarray(x, dtype=dtype)
    y = np.asarray(y)
    y = np.ascontiguousarray(y, dtype=dtype if np.issubdtype(y.dtype, np.floating) else np.int64)
    return x, y


def check_steps(net, loss, update, torch_net, torch_loss, torch_optimizer, batches, *, steps: int | None = None,
                name: str | None = None, raise_on_failure: bool = True):
    """Train your network and its torch mirror side by side from identical weights, comparing
    the output, the loss, dL/doutput, every gradient, every updated parameter (and the
    optimizer state and buffers you expose) after every step.

    Args:
        net: your network (layer protocol, ``nnparity.adapters``): ``forward(x)``,
            ``backward(dL/doutput)``, parameters and gradients by name. Its parameters
            are copied into ``torch_net`` first; the run uses their dtype.
        loss: ``forward(out, y)`` + ``backward()``, or ``loss(out, y) -> (value, dL/dout)``.
        update: an optimizer object with ``step()`` (e.g. ``scratch.SGD``), or a
            function ``update(params, grads)`` (in place, or returning the new dict).
        torch_net: the torch mirror, an ``nn.Module`` with the same parameter names.
        torch_loss: a torch loss ``(out, y) -> scalar``.
        torch_optimizer: a ``torch.optim.Optimizer`` over ``torch_net``'s parameters, or
            a function ``params -> optimizer`` (``lambda p: torch.optim.SGD(p, lr=0.1)``).
        batches: an iterable of ``(x, y)`` NumPy arrays (integer labels stay int64,
            floating arrays are cast to the run's dtype).
        steps: use only the first ``steps`` batches.

    Returns the ``parity.Trace``; raises ``ParityError`` naming the first divergence
    (step, tensor, element, both values) unless ``raise_on_failure`` is false.
    """
    import torch

    from .parity import check_steps as harness_check_steps

    lay = as_layer(net, name)
    loss_a = LossAdapter(loss)
    upd = UpdateAdapter(update, lay)
    if not isinstance(torch_net, torch.nn.Module):
        raise ProtocolError(f"torch_net must be a torch.nn.Module (the mirror of your network), "
                            f"got {type(torch_net).__name__}")
    dtypes = lay.dtypes()
    if len(dtypes) != 1:
        raise ProtocolError(f"{lay.name}'s parameters must share one floating dtype (float32 or float64), "
                            f"found {sorted(map(str, dtypes)) or 'none'}")
    dtype = dtypes.pop()
    tolerance_for(dtype)
    copy_to_torch(lay, torch_net)
    if isinstance(torch_optimizer, torch.optim.Optimizer):
        opt = torch_optimizer
    elif callable(torch_optimizer):
        opt = torch_optimizer(torch_net.parameters())
    else:
        raise ProtocolError("torch_optimizer must be a torch.optim.Optimizer or a function params -> optimizer")
    keep_state = upd.kind == "optimizer" and callable(getattr(upd.obj, "state_dict", None))
    user = UserSide(lay, loss_a, upd)
    mirror = MirrorSide(torch_net, torch_loss, opt, keep_state, lay.buffers())
    data = (_as_batch(x, y, dtype) for x, y in (batches if steps is None else itertools.islice(batches, steps)))
    trace = harness_check_steps(user, mirror, data, net=lay.name, dtype=dtype)
    if not trace.steps:
        raise ValueError("check_steps got no batches: pass an iterable of (x, y) arrays")
    if raise_on_failure:
        trace.raise_if_failed()
    return trace


__all__ = ["check_layer", "check_loss", "check_steps", "LayerReport", "Comparison"]
