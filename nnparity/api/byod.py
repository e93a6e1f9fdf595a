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

A misuse raises a ``nnparity.training.adapters.UsageError`` whose first line names the
problem and the fix, with nothing from torch or NumPy chained to it:
``ArgumentError`` (an argument's type or value: a shape that is not a tuple of
positive ints, an empty batch, a NaN input, ``steps=-1``), ``ProtocolError`` (an
object that does not follow the protocol: a class instead of an instance, buffers
as a method), ``ParameterMismatch`` (the two sides' names or shapes), ``CallError``
(your code or the torch side raised: the call, the exception, your file and line,
what it was given). A check that passes but leaves something uncompared (a torch
buffer your layer does not expose) says so in ``warnings`` (in the message, and as
a ``NNParityWarning``). ``parity_tests/test_api_misuse.py`` is the table of misuses.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from nnparity.diagnosis import gradcheck as gc
from nnparity.training.adapters import (INPUT_MUTATED, ArgumentError, LayerAdapter, LossAdapter, NNParityWarning, ParameterMismatch,
                       ProtocolError,
                       RandomState, UpdateAdapter, as_layer, buffers_warning, call_torch, call_user, copy_to_torch,
                       input_grad_problem, output_problem, reject_class, unmatched_torch_buffers,
                       upstream_problem)
from nnparity.core.parity import Comparison, ParityError, Tolerance, quantity, tolerance_for
from nnparity.training.sides import StepResult, TorchSide, count_correct

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
    warnings: list = field(default_factory=list)   # what a pass does not cover, in words
    skipped: list = field(default_factory=list)    # comparisons left out on request (skip=)
    arrays: dict = field(default_factory=dict, repr=False)   # {dtype: {name: (scratch, reference)}} of failures
    plot_path: str | None = None                   # the heatmap written for the first failure (plot=)

    def first_failure(self):
        """``(dtype, comparison)`` of the first failing torch comparison, or None."""
        for dt, res in self.results.items():
            if isinstance(res, gc.GradcheckResult):
                continue
            c = next((c for c in res if not c.passed and c.name in self.arrays.get(dt, {})), None)
            if c is not None:
                return dt, c
        return None

    def plot(self, path, where: str = "") -> str | None:
        """Draw the first failing comparison (scratch, reference, scratch - reference) as a PNG
        heatmap at ``path``; returns the path, or None when nothing failed against torch."""
        from nnparity.reporting.heatmap import draw_difference, check_path

        path = check_path(path)
        first = self.first_failure()
        if first is None:
            return None
        dt, c = first
        a, b = self.arrays[dt][c.name]
        draw_difference(path, a, b, f"{self.name} {dt} {c.name}{f' ({where})' if where else ''}", c.pattern)
        self.plot_path = path
        return path

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
        skipped = f"; skipped as asked: {', '.join(self.skipped)}" if self.skipped else ""
        return "; ".join(parts) + skipped + "".join(f"\nwarning: {w}" for w in self.warnings)

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
                more += "".join(f"\n{c.name}: PATTERN: {c.pattern}" for c in failed[1:] if c.pattern)
                hint = ""
                problem = failed[0].problem or ""
                d = dt.split()[0]   # the dtype of a "float64 eval" key (modes=)
                cast = [c for c in res if c.name.endswith(f" as {d}")]
                values = ("" if not cast else
                          f"; your values cast to {d} agree ({', '.join(c.name for c in cast)}), so only the dtype "
                          "is wrong" if all(c.passed for c in cast) else
                          f"; your values cast to {d} disagree too: "
                          f"{next(c for c in cast if not c.passed).describe(self.name, d)}")
                if problem.startswith("dtype mismatch") and not problem.split(" (")[0].endswith(f"reference {d}"):
                    hint = (f"\nthe torch equivalent returned another dtype than its {d} input's: it must compute "
                            "in its input's dtype (no .float() / .double(), no new tensor without dtype=)")
                elif problem.startswith("dtype mismatch"):
                    hint = ("\nyour layer returned another dtype than its input's: a float64 scalar or array mixed "
                            "into a float32 computation promotes it to float64: a NumPy float64 scalar "
                            "(np.finfo(float).eps, np.float64(1e-8), np.sqrt(n) of a float64, "
                            "x.sum(dtype=np.float64)), "
                            "a float64 accumulator (np.zeros(shape) without dtype=x.dtype, then += into it) or a "
                            "constant array (np.ones, np.where(mask, 1.0, a), ...); use x.dtype for each"
                            + values)
                elif failed[0].inconclusive and failed[0].quantity == "parameter gradient":
                    hint = ("\nif this gradient is zero by construction (a bias feeding a normalisation), declare "
                            f"it: allowed_zero=[{failed[0].name.split('/', 1)[1]!r}] compares it with zero")
                drawn = f"\nheatmap of scratch - reference: {self.plot_path}" if self.plot_path else ""
                return f"{failed[0].describe(self.name, dt)}{more}{hint}\n{self.summary()}\n{self.context}{drawn}"
        return f"{self.name} against {self.reference}: {self.summary()}"

    def raise_if_failed(self) -> "LayerReport":
        if not self.ok:
            fd = any(isinstance(r, gc.GradcheckResult) and not r.ok for r in self.results.values())
            raise (gc.GradcheckError if fd else ParityError)(self.message())
        return self


def _check_dtypes(dtypes) -> list:
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = [dtypes]
    if dtypes is None or not isinstance(dtypes, (list, tuple)):
        raise ArgumentError(f"dtypes must be a dtype or a tuple of dtypes such as ('float64', 'float32'), "
                            f"got {type(dtypes).__name__}")
    if not dtypes:
        raise ArgumentError("dtypes is empty: pass e.g. ('float64', 'float32')")
    names = []
    for d in dtypes:
        try:
            if d is None:   # np.dtype(None) is float64: a None would pass for a dtype
                raise TypeError
            names.append(np.dtype(d).name)
        except TypeError:
            raise ArgumentError(f"dtypes: {d!r} is not a dtype: use 'float64' and/or 'float32'") from None
    for d in names:
        try:
            tolerance_for(d)
        except ValueError as e:
            raise ArgumentError(str(e)) from None
    return names


def _check_shape(what: str, shape) -> tuple:
    """A shape is a tuple of ints >= 1: an empty batch has nothing to compare (every
    comparison of an empty array passes), so it is refused rather than passed."""
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                                        for n in shape):
        raise ArgumentError(f"{what} must be a tuple of ints such as (8, 16) (batch first), got {shape!r}")
    shape = tuple(int(n) for n in shape)
    if any(n < 1 for n in shape):
        raise ArgumentError(f"{what} {shape} has a size below 1: every axis needs at least one element "
                            "(an empty batch has nothing to compare), e.g. (8, 16)")
    return shape


def _check_array(what: str, a, *, empty_ok: bool = False) -> np.ndarray:
    """A numeric, finite, non-empty array (a NaN input makes NaN on both sides, which compare equal)."""
    try:
        arr = np.asarray(a)
    except Exception:  # noqa: BLE001 - a ragged list or an object NumPy cannot read
        arr = None
    if arr is None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        tensor = type(a).__module__.startswith("torch")
        raise ArgumentError(f"{what} must be an array of numbers, got {type(a).__name__}"
                            f"{'' if arr is None else ' of dtype ' + str(arr.dtype)}"
                            f"{': pass a NumPy array (tensor.detach().numpy())' if tensor else ''}")
    if np.iscomplexobj(arr):
        raise ArgumentError(f"{what} is complex ({arr.dtype}): the checks compare real arrays")
    if arr.size == 0 and not empty_ok:
        raise ArgumentError(f"{what} has no elements (shape {arr.shape}): there is nothing to compare; "
                            "use at least one sample")
    if np.issubdtype(arr.dtype, np.inexact):
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ArgumentError(f"{what} has a non-finite value ({arr[idx]}) at {idx}: the check needs finite "
                                "values (NaN on both sides compares equal and proves nothing)")
    return arr


def _check_int(what: str, v, low: int, none_ok: bool = False):
    if v is None and none_ok:
        return None
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
        raise ArgumentError(f"{what} must be an int >= {low}{' or None' if none_ok else ''}, got {v!r}")
    return int(v)


def _check_bool(what: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ArgumentError(f"{what} must be True or False, got {v!r}")
    return bool(v)


def _check_name(name):
    if name is not None and not isinstance(name, str):
        raise ArgumentError(f"name must be a string (how messages name your code), got {name!r}")


def _check_fd(samples, eps):
    _check_int("samples", samples, 1)
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not (0 < eps < np.inf):
        raise ArgumentError(f"eps must be a number > 0 (the finite-difference step, e.g. 1e-5), got {eps!r}")


def _tolerances(atol, rtol, dtypes) -> dict:
    """{dtype: Tolerance}: the suite's, with ``atol`` / ``rtol`` (a number, or {dtype: number}) instead."""
    def pick(what, v, dt, default):
        if v is None:
            return default
        if isinstance(v, dict):
            def name_of(k):
                try:
                    return np.dtype(k).name if isinstance(k, str) else None
                except TypeError:
                    return None
            bad = [k for k in v if name_of(k) not in DTYPES]
            if bad:
                raise ArgumentError(f"{what} keys must be dtype names ('float64', 'float32'), got {list(bad)}")
            v = {np.dtype(k).name: x for k, x in v.items()}
            if dt not in v:
                return default
            v = v[dt]
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not (0 <= v < np.inf):
            raise ArgumentError(f"{what} must be a number >= 0 (or {{dtype: number}}), got {v!r}")
        return float(v)

    out = {}
    for dt in dtypes:
        base = tolerance_for(dt)
        out[dt] = Tolerance(pick("atol", atol, dt, base.atol), pick("rtol", rtol, dt, base.rtol))
    return out


def _names(what: str, names) -> tuple:
    """A tuple of strings from a string or an iterable of strings (``skip=``, ``allowed_zero=``)."""
    if names is None:
        return ()
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(names)
    except TypeError:
        raise ArgumentError(f"{what} must be a list of names, got {type(names).__name__}") from None
    if not all(isinstance(n, str) and n for n in names):
        raise ArgumentError(f"{what} must be a list of names (strings), got {list(names)!r}")
    return names


def _zero_names(allowed_zero, params) -> tuple:
    """Parameter names declared zero by construction (``"bias"`` or ``"grad/bias"``), each one yours."""
    names = tuple(n[len("grad/"):] if n.startswith("grad/") else n for n in _names("allowed_zero", allowed_zero))
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ArgumentError(f"allowed_zero names {unknown}, which are not parameters of your layer: "
                            f"it has {list(params)} (name the parameter whose gradient is zero by construction)")
    return names


def _skip(skip, names_seen) -> list:
    """Drop the comparisons named in ``skip`` (``"grad/bias"`` also drops ``"grad/bias as float32"``);
    a name that matches no comparison is an error (a typo would silently skip nothing)."""
    if not skip:
        return []
    unknown = [n for n in skip if n not in names_seen]
    if unknown:
        raise ArgumentError(f"skip names {unknown}, which are not comparisons of this check: it compares "
                            f"{sorted(names_seen)}")
    return [n for n in skip]


def _is_skipped(name: str, skip) -> bool:
    return any(name == n or name.startswith((f"{n} as ", f"{n} after ")) for n in skip)


def _input(what: str, input_shape, given, shape_what: str = "input_shape") -> tuple:
    """The input's shape, from ``input_shape`` or the given array (``x`` / ``z``), which must agree."""
    if input_shape is None and given is None:
        return None
    shape = None if input_shape is None else _check_shape(shape_what, input_shape)
    if given is not None:
        arr = _check_array(what, given)
        if shape is not None and arr.shape != shape:
            raise ArgumentError(f"{shape_what} {shape} and {what}.shape {arr.shape} disagree: give one of them")
        shape = arr.shape
    return shape


def _check_torch_equivalent(t, what: str = "the torch equivalent") -> None:
    import torch

    if t is None or isinstance(t, torch.nn.Module):
        return
    reject_class(t, what)
    _reject_numpy_module(t, what)
    if isinstance(t, np.ufunc) or (getattr(t, "__module__", None) or "").startswith("numpy"):
        raise ProtocolError(f"{what} {getattr(t, '__name__', t)} is a NumPy function: it must compute with torch "
                            f"on a torch tensor (e.g. torch.{getattr(t, '__name__', 'tanh')}), so autograd can "
                            "differentiate it")
    if not callable(t):
        raise ProtocolError(f"{what} must be a torch.nn.Module or a function, got {type(t).__name__}")


def _reject_numpy_module(t, what: str) -> None:
    """A NumPy layer or loss (forward and backward, not torch) given as the torch side: it would
    be called on torch tensors and fail inside NumPy."""
    if (callable(getattr(t, "forward", None)) and callable(getattr(t, "backward", None))
            and not type(t).__module__.startswith("torch")):
        raise ProtocolError(f"{what} {type(t).__name__} has forward and backward: it is a NumPy layer or loss, not "
                            "its torch equivalent: pass the torch module (torch.nn....) or a torch function, "
                            "after your own code")


def _check_torch_loss(t) -> None:
    reject_class(t, "the torch loss")
    _reject_numpy_module(t, "the torch loss")
    if not callable(t):
        raise ProtocolError(f"the torch loss must be a torch loss module or a function (input, target) -> scalar "
                            f"tensor, such as torch.nn.CrossEntropyLoss(), got {type(t).__name__}")


def _warn(report_warnings: list, text: str) -> None:
    report_warnings.append(text)
    warnings.warn(text, NNParityWarning, stacklevel=3)


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


def _skip_in_report(report: LayerReport, skip) -> None:
    seen = {c.name for res in report.results.values() if not isinstance(res, gc.GradcheckResult) for c in res}
    seen |= {t.name for res in report.results.values() if isinstance(res, gc.GradcheckResult) for t in res.tensors}
    report.skipped = _skip(skip, seen)
    for dt, res in report.results.items():
        if isinstance(res, gc.GradcheckResult):
            if any(_is_skipped(t.name, skip) for t in res.tensors):
                raise ArgumentError(f"skip= applies to comparisons with torch, not to the finite-difference check "
                                    f"({', '.join(skip)}): pass a torch equivalent, or check without skip")
            continue
        report.results[dt] = [c for c in res if not _is_skipped(c.name, skip)]


def _against_own_float64(lay, x, upstream, seed, dtype, tol=None, zero=()) -> list:
    """No torch equivalent: your layer in ``dtype`` against your float64 run, which the
    finite-difference check verifies (same seeded input and upstream gradient)."""
    from nnparity.diagnosis.layercheck import _problem, compare_values

    rng = np.random.default_rng(seed)
    x64 = (rng.standard_normal(x) if isinstance(x, tuple) else np.array(x)).astype(np.float64)
    rs = RandomState(lay.generators())
    lay.astype(np.float64)
    rs.replay()
    y = lay.forward(x64.copy())
    problem = output_problem(lay.name, y, x64)
    if problem:
        return [_problem("out", problem)]
    upstream_problem(lay.name, upstream, np.shape(y))
    g = (rng.standard_normal(np.shape(y)) if upstream is None else np.array(upstream)).astype(np.float64)
    ref = _run(lay, x64, g, np.float64, rs)
    got = _run(lay, x64, g, dtype, rs) if not isinstance(ref, list) else ref
    lay.astype(np.float64)
    if isinstance(got, list):
        return [_problem(k, p) for k, p in got]
    tol = tol or tolerance_for(dtype)
    comps = compare_values("out", got[0], ref[0].astype(dtype), tol) + \
        compare_values("din", got[1], ref[1].astype(dtype), tol)
    for k in ref[2]:
        comps += compare_values(f"grad/{k}", got[2][k], ref[2][k].astype(dtype), tol, allowed_zero=k in zero)
    return comps


def check_layer(mine, torch_equivalent, input_shape=None, *, x=None, upstream=None, dtypes=DTYPES,
                seed: int = 0, params="random", train: bool = True, name: str | None = None,
                samples: int = gc.SAMPLES, eps: float = gc.EPS, atol=None, rtol=None, skip=(), allowed_zero=(),
                plot=None, mode: str | None = None, modes=None, train_steps: int = 3, forward_kwargs=None,
                conventions=(), raise_on_failure: bool = True) -> LayerReport:
    """Check your layer's forward and backward against PyTorch autograd, in float64 and float32.

    Args:
        mine: your layer: a scratch-style module, a plain object with ``forward(x)``,
            ``backward(dy) -> dx`` and ``params``/``grads`` dicts, a parameter-free
            object, or a pair of functions ``(forward, backward)`` with
            ``backward(x, dy) -> dx`` (see ``nnparity.training.adapters`` for the exact protocol).
        torch_equivalent: a ``torch.nn.Module`` whose ``named_parameters()`` names match
            yours (they are copied from yours), a function ``fn(x)`` (``fn(x, **params)``
            if your layer has parameters: they arrive as torch tensors under your
            names), or ``None`` for the finite-difference check.
        input_shape: shape of the random standard-normal input (or give ``x``). Several inputs
            (``forward(a, b)``): a list of shapes, or ``x=(a, b)``; several outputs are returned
            as a tuple: packed side by side as one layer (``nnparity.training.multiio``).
        upstream: dL/d(output); default: random standard normal, never uniform (a
            ones upstream gradient hides transposes and wrong-axis sums).
        dtypes: the dtypes to run, each with its tolerance (``nnparity.core.parity.TOLERANCES``).
        seed: seeds the input, the upstream gradient and the parameter values.
        params: ``"random"`` (default) sets every parameter to seeded N(0, 1) values for
            the check; ``"keep"`` checks your current values. Yours are restored after.
            A dict maps your parameter names onto torch's, with their layout
            (``{"W": "weight.T", "b": "bias"}``; values random): ``nnparity.training.conventions``
            says what is detected without it. To keep your values with a map, pass
            ``nnparity.adapt(mine, params={...})`` as ``mine`` and ``params="keep"``.
        train: training (default) or evaluation mode on both sides.
        mode, modes: ``mode="eval"`` is ``train=False``; ``modes=("train", "eval")`` checks both
            (results keyed ``"float64 train"``, ``"float64 eval"``, ...). Each side is switched
            through ``train()`` / ``eval()``, a ``training`` attribute, numpy-ml's
            ``freeze()`` / ``unfreeze()`` or ``trainable``, a CS231n ``bn_param["mode"]``. In eval,
            a backward that raises (no eval backward) leaves a forward-only check, said in
            ``warnings``; with a torch module whose buffers your layer has (running statistics),
            both sides first run ``train_steps`` training forwards on the same seeded batches
            (mean 0.5, std 2) and the buffers are compared (``buffer/running_var after 3 training
            steps``), then the eval forward runs on them.
        samples, eps: coordinates per tensor and step of the finite-difference check.
        atol, rtol: tolerances instead of the suite's (``|a - b| <= atol + rtol |b|``): a
            number, or ``{"float32": 1e-3}`` per dtype (torch comparisons and float32 against
            your own float64; the finite-difference check keeps its own).
        skip: names of comparisons to leave out (``"buffer/running_var"``, ``"grad/bias"``);
            they are listed as skipped in the report.
        allowed_zero: parameters whose gradient is zero by construction (the bias of a
            layer feeding a normalisation): compared with zero instead of being degenerate.
        forward_kwargs: extra keyword arguments of every forward call (``{"retain_derived": True}``).
            A forward argument named ``training``, ``train``, ``is_training`` or ``train_mode``
            (``forward(x, training)``) is given the mode by itself, no lambda needed.
        plot: a ``.png`` path: on a failure against torch, a heatmap of scratch - reference
            over the first failing tensor is written there (and named in the message).
        conventions: your documented choices where torch differs, which the reference then follows
            (``nnparity.training.disagreements``): ``("biased_running_var",)``, ``("eps_outside_sqrt",)``,
            ``{"l2_in_grad": 1e-3}`` (your weight gradient has ``+ 1e-3 * W``); the tensors are still
            compared, against torch doing what you documented.

    A failing tensor whose difference is an exact pattern (a factor N or 1/2, a transpose,
    a shift, a crop, only the last sample: ``nnparity.diagnosis.patterns``) is named in the message.

    Returns a ``LayerReport``; raises ``AssertionError`` (``ParityError``, or
    ``GradcheckError`` for finite differences) naming the first failing tensor.
    Without a torch equivalent, float64 is checked by central finite differences (always,
    whatever ``dtypes`` says) and float32 against your own float64 run.
    """
    import torch

    from nnparity.diagnosis import layercheck

    from nnparity.training import disagreements

    _check_name(name)
    agreed = disagreements.parse(conventions)
    mapping = params if isinstance(params, dict) else None
    if mapping is not None:
        params = "random"
    elif params not in PARAMS:
        raise ArgumentError(f"params must be one of {PARAMS} or a dict mapping your names to torch's "
                            f"({{'W': 'weight.T', 'b': 'bias'}}), got {params!r}")
    skip = _names("skip", skip)
    train = _check_bool("train", train)
    run_modes = _modes(mode, modes, train)
    train_steps = _check_int("train_steps", train_steps, 0)
    raise_on_failure = _check_bool("raise_on_failure", raise_on_failure)
    seed = _check_int("seed", seed, 0)
    if plot is not None:
        from nnparity.reporting.heatmap import check_path

        plot = check_path(plot)
    _check_fd(samples, eps)
    dtypes = _check_dtypes(dtypes)
    tols = _tolerances(atol, rtol, dtypes)
    _check_torch_equivalent(torch_equivalent)
    multi = None
    from nnparity.training import multiio

    if multiio.is_multi(input_shape, x):   # several inputs: packed side by side (nnparity.training.multiio)
        if upstream is not None:
            raise ArgumentError("upstream= is for a one-output layer; several inputs or outputs take random ones")
        x, multi = multiio.inputs(input_shape, x, seed)
        input_shape = None
        if torch_equivalent is not None:
            torch_equivalent = multiio.torch_packed(torch_equivalent, multi)
    shape = _input("x", input_shape, x)
    if shape is None:
        raise ArgumentError("give input_shape=(N, ...) for a random input, or the input itself as x=...")
    if x is not None:
        x, input_shape = np.asarray(x), None
    if upstream is not None:
        upstream = _check_array("upstream", upstream)
    if torch_equivalent is None and "float64" not in dtypes:
        dtypes.insert(0, "float64")   # the finite-difference check itself runs in float64
        tols = _tolerances(atol, rtol, dtypes)
    lay = as_layer(mine, name, mapping) if multi is None else multiio.PackedLayer(mine, multi, name, mapping)
    lay.set_forward_kwargs(forward_kwargs)
    ref_name = _describe_torch(torch_equivalent)
    equivalent = dict.fromkeys(run_modes, torch_equivalent)
    if "train" in run_modes and type(torch_equivalent) is torch.nn.Dropout:   # the mask protocol: torch applies your mask
        from nnparity.training.masks import torch_mask_dropout

        ref_name = f"torch.nn.Dropout(p={torch_equivalent.p}){' with your mask' if len(run_modes) == 1 else ''}"
        equivalent["train"] = torch_mask_dropout(lay, float(torch_equivalent.p))
    train = run_modes[0] == "train"
    if isinstance(torch_equivalent, torch.nn.Module):
        lay.bind(torch_equivalent, train)
    elif torch_equivalent is not None:
        lay.bind_function(torch_equivalent)
    zero = _zero_names(allowed_zero, lay.params())
    layout = f"; {'; '.join(lay.notes)}" if lay.notes else ""
    context = (f"(scratch = your {lay.name}{layout}, reference = {ref_name}; input {shape} "
               f"{'~ N(0, 1)' if x is None else 'given'}, upstream gradient "
               f"{'~ N(0, 1)' if upstream is None else 'given'}, seed {seed}; "
               + ("parameters set to seeded N(0, 1) values, params='keep' checks yours" if params == "random"
                  and lay.params() else "parameters as given")
               + ("; float32 is compared with your own float64 run, which finite differences check)"
                  if torch_equivalent is None else ")"))
    report = LayerReport(lay.name, ref_name, context)
    if isinstance(torch_equivalent, torch.nn.Module):
        unmatched = unmatched_torch_buffers(lay, torch_equivalent)
        if unmatched:
            _warn(report.warnings, buffers_warning(lay.name, ref_name, unmatched))
    if agreed:
        report.context = f"{report.context[:-1]}; the reference follows your conventions: {', '.join(agreed)})"
    snap, was_training = lay.snapshot(), lay.training
    follow = disagreements.follow(agreed, module=torch_equivalent if isinstance(torch_equivalent, torch.nn.Module)
                                  else None)
    try:
        follow.__enter__()
        if params == "random":
            _randomize(lay, seed)
        for md in run_modes:
            train = md == "train"
            for dt in dtypes:
                key = dt if len(run_modes) == 1 else f"{dt} {md}"
                if torch_equivalent is None and dt == "float64":
                    report.results[key] = gc.gradcheck_layer(lay, input_shape, x=x, upstream=upstream,
                                                             samples=samples, eps=eps, seed=seed, train=train)
                elif torch_equivalent is None:
                    lay.train(train)
                    report.results[key] = _against_own_float64(lay, shape if x is None else x, upstream, seed, dt,
                                                               tols[dt], zero)
                else:
                    comps, notes = [], []
                    if not train and train_steps and isinstance(torch_equivalent, torch.nn.Module) and lay.buffers():
                        comps = _after_training_steps(lay, torch_equivalent, shape, dt, seed, train_steps, tols[dt])
                    report.arrays[key] = {}
                    comps += layercheck.check_layer(lay, equivalent[md], input_shape, x=x, dtype=dt,
                                                    seed=seed, train=train, upstream=upstream,
                                                    name=lay.name, tol=tols[dt], allowed_zero=zero,
                                                    raise_on_failure=False, arrays=report.arrays[key],
                                                    forward_only=notes)
                    for n in notes:
                        if n not in report.warnings:
                            _warn(report.warnings, n)
                    report.results[key] = comps
    finally:
        follow.__exit__(None, None, None)
        lay.restore(snap)
        if isinstance(was_training, bool):   # your layer back in the mode it was in
            lay.train(was_training)
    if multi is not None and lay.outputs_note():
        report.context = f"{report.context[:-1]}; {lay.outputs_note()})"
    _skip_in_report(report, skip)
    if plot is not None:
        report.plot(plot)
    if raise_on_failure:
        report.raise_if_failed()
    return report


MODES = ("train", "eval")


def _modes(mode, modes, train: bool) -> list:
    """The modes to check, from ``mode=`` / ``modes=`` / ``train=``."""
    if mode is not None and modes is not None:
        raise ArgumentError("give mode='eval' (one mode) or modes=('train', 'eval') (several), not both")
    if mode is not None:
        if mode not in MODES:
            raise ArgumentError(f"mode must be 'train' or 'eval', got {mode!r}")
        if not train and mode == "train":
            raise ArgumentError("train=False and mode='train' contradict each other: give one of them")
        return [mode]
    if modes is None:
        return ["train" if train else "eval"]
    if isinstance(modes, str) or not isinstance(modes, (tuple, list)) or not modes or \
            any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ArgumentError(f"modes must be a tuple of distinct 'train' / 'eval', e.g. modes=('train', 'eval'), "
                            f"got {modes!r}")
    return list(modes)


def _after_training_steps(lay: LayerAdapter, module, shape, dtype, seed: int, steps: int, tol) -> list:
    """Both sides run ``steps`` training forwards on the same seeded batches (mean 0.5, std 2: the running
    statistics move away from their initial 0 and 1), from the same buffers; the buffers are compared."""
    import torch

    from nnparity.diagnosis.layercheck import compare_values

    dtype = np.dtype(dtype)
    lay.astype(dtype)
    lay.train(True)
    module.train(True)
    copy_to_torch(lay, module, dtype)
    rng = np.random.default_rng([seed, 13])
    for _ in range(steps):
        xb = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
        call_user(f"{lay.name}.forward", lay.forward, xb.copy(), given=f" (training step before the eval check)")
        with torch.no_grad():
            call_torch(f"the torch equivalent {_describe_torch(module)}", module, torch.from_numpy(xb.copy()))
    tbuf = OrderedDict(module.named_buffers())
    comps = []
    for k, b in lay.buffers().items():
        if k in tbuf:
            comps += compare_values(f"buffer/{k} after {steps} training steps", np.array(b, copy=True),
                                    tbuf[k].detach().numpy(), tol)
    return comps


def check_loss(mine, torch_loss, input_shape=None, target=None, *, z=None, dtypes=DTYPES, seed: int = 0,
               name: str | None = None, samples: int = gc.SAMPLES, eps: float = gc.EPS, atol=None, rtol=None,
               skip=(), conventions=(), raise_on_failure: bool = True) -> LayerReport:
    """Check your loss (value and dL/dinput) against a torch loss, in float64 and float32.

    Args:
        mine: an object with ``forward(input, target)`` -> scalar and ``backward()`` ->
            dL/dinput, or a function ``loss(input, target) -> (value, dL/dinput)``.
        torch_loss: a torch loss (``torch.nn.CrossEntropyLoss()``, a function), or
            ``None`` for finite differences.
        input_shape: shape of the random logits ~ 3 N(0, 1) (or give ``z``).
        target: passed to both sides; default: seeded integer class labels in
            ``[0, input_shape[-1])``.
        atol, rtol, skip: as in ``check_layer`` (comparisons: ``loss``, ``din``).
        conventions: ``{"eps_in_log": 1e-7}``: your loss takes ``log(p + 1e-7)``, and the torch loss
            is made to as well (``nnparity.training.disagreements``).
    """
    from nnparity.training import disagreements

    _check_name(name)
    agreed = disagreements.parse(conventions)
    raise_on_failure = _check_bool("raise_on_failure", raise_on_failure)
    seed = _check_int("seed", seed, 0)
    _check_fd(samples, eps)
    dtypes = _check_dtypes(dtypes)
    skip = _names("skip", skip)
    if torch_loss is not None:
        _check_torch_loss(torch_loss)
    shape = _input("z", input_shape, z)
    if shape is None:
        raise ArgumentError("give input_shape=(N, C) for random logits, or the logits themselves as z=...")
    if z is not None:
        z = np.asarray(z)
    if torch_loss is None and "float64" not in dtypes:
        dtypes.insert(0, "float64")   # the finite-difference check itself runs in float64
    tols = _tolerances(atol, rtol, dtypes)
    adapter = LossAdapter(mine, name)
    if target is None:
        if len(shape) != 2:
            raise ArgumentError(f"the default target needs logits of shape (N, C) (it draws N class labels in "
                                f"[0, C)); got {shape}: pass target=... for other shapes")
        target = np.random.default_rng([seed, 11]).integers(0, shape[-1], shape[0])
    target = _check_array("target", target)
    if target.ndim and len(shape) and target.shape[0] != shape[0]:
        raise ArgumentError(f"target has {target.shape[0]} rows, the input {shape[0]}: one target per sample "
                            f"(input {shape}, target {target.shape})")
    ref_name = _describe_torch(torch_loss)
    report = LayerReport(adapter.name, ref_name, f"(scratch = your {adapter.name}, reference = {ref_name}; "
                                                 f"logits {shape}, seed {seed}"
                                                 + (f"; the reference follows your conventions: {', '.join(agreed)})"
                                                    if agreed else ")"))
    with disagreements.follow(agreed, loss=torch_loss) as torch_loss:
        _loss_checks(report, mine, adapter, torch_loss, shape, target, z, dtypes, tols, seed, samples, eps)
    _skip_in_report(report, skip)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _loss_checks(report, mine, adapter, torch_loss, shape, target, z, dtypes, tols, seed, samples, eps) -> None:
    from nnparity.diagnosis import layercheck

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
            report.results[dt] = (layercheck.compare_values("loss", v, v64.astype(dt), tols[dt])
                                  + layercheck.compare_values("din", d, d64.astype(dt), tols[dt]))
        else:
            report.results[dt] = layercheck.check_loss(mine, torch_loss, shape, target, z=z, dtype=dt, seed=seed,
                                                       name=adapter.name, tol=tols[dt], raise_on_failure=False)


def pair(forward, backward, *, params=None, **config):
    """A layer written as two functions with a cache (CS231n ``layers.py``), with its config dicts::

        nnparity.check_layer(nnparity.pair(conv_forward_naive, conv_backward_naive,
                                           conv_param={"stride": 2, "pad": 1}), torch.nn.Conv2d(...), ...)

    ``forward(x, *params, cfg) -> (out, cache)``, ``backward(dout, cache) -> (dx, *dparams)``.
    A plain tuple ``(forward, backward)`` is the same with every config dict read from the
    torch module. ``params``: values for the parameters ({"w": array}); without them, their
    shapes come from the torch module (needed for finite differences, which have none).
    """
    from nnparity.training.conventions import FunctionPair

    for f, what in ((forward, "forward"), (backward, "backward")):
        if not callable(f):
            raise ArgumentError(f"pair: {what} must be a function, got {type(f).__name__}")
    if params is not None and not isinstance(params, dict):
        raise ArgumentError(f"pair: params must be a dict {{name: array}}, got {type(params).__name__}")
    return FunctionPair(forward, backward, params, config)


def adapt(layer, params=None, name=None) -> LayerAdapter:
    """Your layer read through the layer protocol with a name/layout map
    (``nnparity.adapt(mine, params={"W": "weight.T"})``), to combine with ``params="keep"``."""
    return as_layer(layer, name, params)


# --- training steps --------------------------------------------------------------------------

class UserSide:
    """Your network + loss + update rule, driven like ``sides.ScratchSide`` and recorded under
    the names the torch mirror uses: ``out/<layer>`` (``out/output`` for a network checked as
    one piece), ``loss``, ``dout/<layer>``, ``grad/<param>`` (in backward order: last parameter
    first), ``param/<param>``, ``state/<key>`` (if your update rule has a ``state_dict()``),
    ``buffer/<name>``.

    ``layers`` ({name: your layer object}, ``nnparity.training.layered.find_layers``): each one's
    output and upstream gradient are recorded as it passes (your network's own forward and
    backward run), and ``isolate`` re-runs each alone for the own-or-inherited analysis.
    ``mask_layers`` ({name: your dropout layer}, ``nnparity.training.masks.handed_dropouts``):
    each one's mask is read right after its forward (``masks``) and handed to the mirror
    (``draws``)."""

    name = "yours"

    def __init__(self, net: LayerAdapter, loss: LossAdapter, update: UpdateAdapter, dtype=None, *, layers=None,
                 torch_net=None, mode: str = "train", mask_layers=None):
        self.net, self.loss_fn, self.update = net, loss, update
        self.seconds = 0.0
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.dtype_findings = []   # (record key, your dtype) of the last step, recorded cast to the run's dtype
        self.layers = layers
        self.torch_net = torch_net
        self.torch_children = dict(torch_net.named_children()) if torch_net is not None else {}
        self.training = mode == "train"
        self.unlayered = None      # why the layers could not be followed (then the network is one piece)
        self.mask_layers = OrderedDict(mask_layers or {})
        self.masks, self.random_states = {}, {}   # of the last step: {layer: kept (bool)}, np.random before it

    def layer_names(self) -> list:
        return list(self.layers) if self.layers else ["output"]

    def random_layers(self) -> dict:
        """Layers holding a random generator, copied before a step (a re-run alone draws the same)."""
        import copy

        out = {}
        for n, obj in (self.layers or {}).items():
            try:   # a hint for the analysis: a layer that cannot be read here is re-run from its state after
                if as_layer(obj).generators():
                    out[n] = copy.deepcopy(obj)
            except Exception:  # noqa: BLE001
                pass
        return out

    def isolate(self, x, y, t, pre, tol, step, *, snapshots=None, allowed_zero=()):
        from nnparity.diagnosis.localize import isolate_network

        return isolate_network(self, x, y, t, pre, tol, step, snapshots=snapshots, allowed_zero=allowed_zero)

    def step(self, x, y, record: bool = False, draws=None) -> StepResult:
        from nnparity.training.layered import LayerTap
        from nnparity.training.sides import canonical_order

        net = self.net
        net.train(self.training)
        net.zero_grad()
        tap = LayerTap(self.layers if record and self.layers else self.mask_layers, masks=self.mask_layers)
        with tap:
            out = net.forward(x)
            if not isinstance(out, (np.ndarray, np.generic)):
                raise ProtocolError(output_problem(net.name, out, x))
            unread = next((n for n in self.mask_layers if n not in tap.masks), None)
            if unread is not None:
                why = tap.problem() if tap.unwatchable == unread else \
                    f"its forward was not called through the layer object {type(self.mask_layers[unread]).__name__}"
                raise ProtocolError(f"your dropout layer {unread}'s mask could not be read for torch_net's "
                                    f"torch.nn.Dropout {unread} ({why}): call each layer's own forward from your "
                                    "network's, or check with mode='eval'")
            self.masks, self.random_states = tap.masks, tap.random_states
            value, dz = self.loss_fn(out, y)
            net.backward(dz.copy())
        grads = OrderedDict((k, np.array(g, copy=True)) for k, g in net.grads().items())
        self.update.step(grads)
        rec = None
        if record:
            if self.layers and not tap.complete():   # followed as one piece from now on (the mirror too)
                self.unlayered, self.layers = tap.problem(), None
            outs = tap.outputs if self.layers else {"output": out}
            douts = tap.upstream if self.layers else {"output": dz}
            values = {f"out/{k}": v for k, v in outs.items()}
            values["loss"] = value
            values.update((f"dout/{k}", v) for k, v in douts.items())
            values.update((f"grad/{k}", g) for k, g in grads.items())
            values.update((f"param/{k}", v) for k, v in net.params().items())
            state, buffers = self.update.state(), net.buffers()
            values.update((f"state/{k}", v) for k, v in state.items())
            values.update((f"buffer/{k}", v) for k, v in buffers.items())
            if self.layers:
                keys = canonical_order(list(outs), list(grads), list(state), list(buffers))
            else:   # one piece: its gradients in backward order, last parameter first
                keys = (["out/output", "loss", "dout/output"] + [f"grad/{k}" for k in reversed(grads)]
                        + [f"param/{k}" for k in net.params()] + [f"state/{k}" for k in state]
                        + [f"buffer/{k}" for k in buffers])
            rec = OrderedDict((k, np.array(values[k], copy=True)) for k in keys if k in values)
            self.dtype_findings = []
            if self.dtype is not None:   # a wrong dtype is its own finding; the values are still compared
                for k, v in rec.items():
                    if np.issubdtype(v.dtype, np.floating) and v.dtype != self.dtype:
                        self.dtype_findings.append((k, v.dtype))
                        rec[k] = v.astype(self.dtype)
        return StepResult(float(value), len(y), count_correct(out, y), rec)

    def draws(self) -> dict:
        """The step's masks, handed to the mirror: scratch layers' ``draws_mask`` ones and your dropout layers'."""
        return {**self.net.draws(), **self.masks}


class MirrorSide(TorchSide):
    """A torch network recorded under ``UserSide``'s names: its top-level children when your
    network's layers are followed (else its output as ``out/output``), optimizer state only when
    your update rule exposes its own, only your buffers; in ``mode`` (train or eval) at every step."""

    def __init__(self, model, loss_fn, optimizer, keep_state: bool, keep_buffers, user: UserSide = None):
        super().__init__(model, loss_fn, optimizer)
        self.keep_state, self.keep_buffers = keep_state, set(keep_buffers)
        self.user = user

    def recorded_children(self):
        if self.user is not None and self.user.layers:
            return list(self.model.named_children())
        return [("output", self.model)]

    @property
    def training(self):
        return self.user is None or self.user.training

    def step(self, x, y, record: bool = False, draws=None) -> StepResult:
        return call_torch("the torch side (torch_net, torch_loss, torch_optimizer)", super().step, x, y,
                          record=record, draws=draws)

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
                name: str | None = None, params=None, atol=None, rtol=None, skip=(), allowed_zero=(),
                mode: str = "train", conventions=(), raise_on_failure: bool = True):
    """Train your network and its torch mirror side by side from identical weights, comparing
    the output, the loss, dL/doutput, every gradient, every updated parameter (and the
    optimizer state and buffers you expose) after every step.

    Args:
        net: your network (layer protocol, ``nnparity.training.adapters``): ``forward(x)``,
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
        params: a map of your parameter names onto torch's, ``{"fc1.W": "fc1.weight.T"}``
            (``check_layer``; without it the conventions of ``nnparity.training.conventions`` apply).
        atol, rtol: tolerances instead of the suite's for the run's dtype (a number).
        skip: comparisons to leave out at every step (``"buffer/bn.running_var"``).
        allowed_zero: parameters whose gradient is zero by construction (the bias of a Linear
            feeding a BatchNorm): their gradient and momentum are compared with zero, as the
            documented cnn18k declares its conv biases.
        conventions: your documented choices where torch differs, followed by the torch side
            (``biased_running_var``, ``eps_outside_sqrt``, ``{"eps_in_log": eps}``, ``{"l2_in_grad":
            lambda}``: ``nnparity.training.disagreements``), as in ``check_layer`` and ``check_loss``.
        mode: ``"train"`` (default) or ``"eval"``: every step in that mode on both sides (eval:
            a BatchNorm normalises with its running statistics and leaves them alone, dropout is
            off: fine-tuning with frozen statistics).

    Dropout: in training mode each top-level ``torch.nn.Dropout`` child of ``torch_net`` matched with
    one of your layers applies that layer's mask of the step (read right after its forward by the
    mask protocol of ``check_layer``, ``nnparity.training.masks``: ``self.mask``, a cache, ...), for the
    run only (``torch_net`` gets its own module back). A mask that cannot be found, or a torch dropout
    that cannot receive one (your layers not matched, a Dropout nested in a child, a Dropout2d), is one
    ``ProtocolError`` line, not a divergence.

    Own or inherited: when your network's layers can be matched with ``torch_net``'s top-level
    children (a ``layers`` list or dict, attributes named like them, a scratch ``Sequential``:
    ``nnparity.training.layered``), each layer's output and upstream gradient are compared too,
    and at the first failing step every stage (each layer's forward and backward, the loss,
    the update) is re-run alone on the torch side's inputs, upstream gradients and pre-step
    weights, as ``nnparity check`` does: the message and ``trace.diagnosis``
    (``nnparity.diagnosis.localize.Diagnosis``) say which stage is wrong on its own (the
    CULPRIT) and which only passed the error on (inherited). Without layers the network is one
    stage, ``output``, beside the loss and the update.

    Returns the ``parity.Trace``; raises ``ParityError`` naming the first divergence
    (step, tensor, element, both values) unless ``raise_on_failure`` is false.
    """
    import torch

    from nnparity.core.parity import check_steps as harness_check_steps

    from nnparity.diagnosis.localize import Localizer
    from nnparity.training import disagreements
    from nnparity.training.layered import LayeredNetwork, find_layers
    from nnparity.training.masks import handed_dropouts, masks_handed_to

    _check_name(name)
    agreed = disagreements.parse(conventions)
    raise_on_failure = _check_bool("raise_on_failure", raise_on_failure)
    steps = _check_int("steps", steps, 1, none_ok=True)
    if mode not in MODES:
        raise ArgumentError(f"mode must be 'train' or 'eval' (the mode of every step), got {mode!r}")
    if params is not None and not isinstance(params, dict):
        raise ArgumentError(f"params must be a dict mapping your parameter names to torch's "
                            f"({{'W1': 'fc1.weight.T'}}), got {params!r}")
    skip = _names("skip", skip)
    lay = as_layer(net, name, params)
    layers = None
    if isinstance(torch_net, torch.nn.Module) and not isinstance(net, LayerAdapter):
        layers = find_layers(net, torch_net)
        if layers and params is None and lay.kind == "plain":   # the parameters live in the layers
            lay = LayeredNetwork(net, layers, name)
    loss_a = LossAdapter(loss)
    upd = UpdateAdapter(update, lay)
    reject_class(torch_net, "torch_net")
    if not isinstance(torch_net, torch.nn.Module):
        raise ProtocolError(f"torch_net must be a torch.nn.Module (the mirror of your network), "
                            f"got {type(torch_net).__name__}")
    _check_torch_loss(torch_loss)
    lay.bind(torch_net)
    dtypes = lay.dtypes()
    if not lay.params():
        suggestion = lay.suggest_map(OrderedDict((k, tuple(p.shape)) for k, p in torch_net.named_parameters()))
        if suggestion:
            raise ParameterMismatch(f"{lay.name} has array attributes but none with a parameter name nn-parity "
                                    f"knows: map them onto torch_net's, e.g. {suggestion} (check each pairing)")
        raise ProtocolError(f"{lay.name} has no parameters (so no floating dtype to run in): check_steps trains a "
                            "network's parameters; check a parameter-free layer with check_layer")
    if len(dtypes) != 1:
        raise ProtocolError(f"{lay.name}'s parameters must share one floating dtype (float32 or float64), "
                            f"found {sorted(map(str, dtypes)) or 'none'}")
    dtype = dtypes.pop()
    _check_dtypes((dtype,))
    tol = _tolerances(atol, rtol, [np.dtype(dtype).name])[np.dtype(dtype).name]
    zero = _zero_names(allowed_zero, lay.params())
    dropouts = handed_dropouts(torch_net, layers, mode)
    copy_to_torch(lay, torch_net)
    opt = _torch_optimizer(torch_optimizer, torch_net)
    try:
        batch_iter = iter(batches)
    except TypeError:
        raise ArgumentError(f"batches must be an iterable of (x, y) pairs, got {type(batches).__name__}") from None
    keep_state = upd.kind == "optimizer" and callable(getattr(upd.obj, "state_dict", None))
    user = UserSide(lay, loss_a, upd, dtype, layers=layers, torch_net=torch_net, mode=mode, mask_layers=dropouts)
    mirror = MirrorSide(torch_net, torch_loss, opt, keep_state, lay.buffers(), user)
    unmatched = unmatched_torch_buffers(lay, torch_net)
    data = _checked_batches(batch_iter if steps is None else itertools.islice(batch_iter, steps), dtype)

    def leave_out(i, trace):
        step = trace.steps[-1]
        if i == 1:
            _skip(skip, {c.name for c in step})
        step[:] = [c for c in step if not _is_skipped(c.name, skip)]

    def add_dtype_findings(i, trace):
        step = trace.steps[-1]
        for k, theirs in user.dtype_findings:   # its own finding, before the values compared after the cast
            at = next((j for j, c in enumerate(step) if c.name == k), len(step))
            step.insert(at, Comparison(k, quantity(k), tuple(step[at].shape) if at < len(step) else (), math.inf,
                                       math.inf, (), math.nan, math.nan, math.inf, trace.tol, i,
                                       problem=f"dtype mismatch: scratch {theirs}, reference {trace.dtype} (the "
                                               f"values, cast to {trace.dtype}, are compared next)"))

    loc = Localizer(allowed_zero=zero)
    with disagreements.follow(agreed, module=torch_net, loss=torch_loss) as mirror.loss_fn, \
            masks_handed_to(torch_net, dropouts):
        trace = harness_check_steps(user, mirror, data, net=lay.name, dtype=dtype, tol=tol, allowed_zero=zero,
                                    observer=_Observed(loc, leave_out, add_dtype_findings))
    if agreed:
        trace.warnings.append(f"the reference followed your conventions: {', '.join(agreed)}")
    if dropouts:
        trace.warnings.append(f"torch.nn.Dropout applied your layers' masks (the mask protocol): {', '.join(dropouts)}")
    if not trace.steps:
        raise ArgumentError("check_steps got no batches: pass an iterable of (x, y) arrays")
    trace.diagnosis = loc.diagnosis
    if user.unlayered:
        trace.warnings.append(f"your network's layers were not followed one by one ({user.unlayered}): it was "
                              "compared, and re-run at a divergence, as one piece")
    if unmatched:
        _warn(trace.warnings, buffers_warning(lay.name, "torch_net", unmatched))
    if lay.notes:
        trace.warnings.append("layouts mapped: " + "; ".join(lay.notes))
    if raise_on_failure and not trace.ok:
        text = trace.message()
        grads = [c.name.split("/", 1)[1] for c in trace.degenerate if c.name.startswith("grad/")]
        if trace.first_failure is None and grads:
            names = list(dict.fromkeys(grads))
            text += (f"\nif {'these gradients are' if len(names) > 1 else 'this gradient is'} zero by construction "
                     f"(the bias of a layer feeding a BatchNorm), declare it: allowed_zero={names!r} compares "
                     "it with zero at every step")
        elif trace.first_failure is not None and (trace.first_failure.problem or "").startswith("dtype mismatch"):
            text += ("\nyour network computed in another dtype than its parameters': a NumPy float64 scalar "
                     "(np.finfo(float).eps, np.float64(...)) or a float64 accumulator (np.zeros(shape) without "
                     "dtype=) promotes float32 to float64; the values were compared after a cast all the same")
        if trace.diagnosis is not None:
            text += "\n\n" + own_or_inherited(trace.diagnosis)
        raise ParityError(text)
    return trace


_DONE = object()


class _Observed:
    """The ``Localizer`` sees each step after ``skip=`` left its comparisons out (a skipped tensor is
    never diagnosed) and before the dtype findings are added (a dtype is its own finding; the
    analysis is of the values, compared after the cast)."""

    def __init__(self, localizer, leave_out, add_findings):
        self.localizer, self.leave_out, self.add_findings = localizer, leave_out, add_findings

    def before_step(self, i, x, y, scratch_side, torch_side):
        self.localizer.before_step(i, x, y, scratch_side, torch_side)

    def after_step(self, i, x, y, s, t, trace):
        self.leave_out(i, trace)
        self.localizer.after_step(i, x, y, s, t, trace)
        self.add_findings(i, trace)


def own_or_inherited(d) -> str:
    """The analysis part of a ``Diagnosis`` (its table and verdict; the first divergence is above it)."""
    lines = d.render().splitlines()
    return "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("OWN OR INHERITED")):])


def _torch_optimizer(torch_optimizer, torch_net):
    """The torch optimizer, built from a function if need be; it must update ``torch_net``'s
    parameters (one over another model's leaves the mirror untrained: every step diverges)."""
    import torch

    reject_class(torch_optimizer, "torch_optimizer")
    if isinstance(torch_optimizer, torch.optim.Optimizer):
        opt = torch_optimizer
    elif callable(torch_optimizer):
        opt = call_torch("torch_optimizer(params)", torch_optimizer, torch_net.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise ProtocolError(f"torch_optimizer(params) returned {type(opt).__name__}, not a torch.optim.Optimizer: "
                                "pass a function such as lambda p: torch.optim.SGD(p, lr=0.1)")
    else:
        raise ProtocolError("torch_optimizer must be a torch.optim.Optimizer or a function params -> optimizer "
                            f"(lambda p: torch.optim.SGD(p, lr=0.1)), got {type(torch_optimizer).__name__}")
    updated = {id(p) for group in opt.param_groups for p in group["params"]}
    missing = [k for k, p in torch_net.named_parameters() if id(p) not in updated]
    if missing:
        raise ProtocolError(f"torch_optimizer does not update torch_net's parameters {missing}: build it over "
                            "torch_net.parameters(), or pass a function params -> optimizer")
    return opt


def _checked_batches(batches, dtype):
    """Each batch a pair of finite, non-empty arrays with one label per sample, cast to ``dtype``
    (an exception of your batch generator is one ``CallError`` line)."""
    for i in itertools.count(1):
        batch = call_user(f"batches (getting batch {i})", next, batches, _DONE)
        if batch is _DONE:
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ArgumentError(f"batch {i} is {type(batch).__name__}, not a pair (x, y): batches must yield "
                                "(input, labels) pairs")
        x = _check_array(f"batch {i}: x", batch[0])
        y = _check_array(f"batch {i}: y", batch[1])
        if x.ndim and y.ndim and len(x) != len(y):
            raise ArgumentError(f"batch {i}: x has {len(x)} rows, y {len(y)}: one label (or target row) per sample")
        yield _as_batch(x, y, dtype)


__all__ = ["check_layer", "check_loss", "check_steps", "pair", "adapt", "LayerReport", "Comparison"]
