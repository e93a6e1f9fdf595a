"""One view of a user's layer, network, loss or update rule, whatever its convention.

The checks (``layercheck``, ``gradcheck``, ``byod``) talk to a ``LayerAdapter``,
so the same harness runs this project's scratch modules and a learner's own code.

The layer protocol
------------------
A *layer* (or a whole *network*: the protocol is the same) is one of:

1. **A scratch Module** (this project's convention, or any object that quacks
   like one): ``forward(x) -> y``; ``backward(dy) -> dx``, which *accumulates*
   parameter gradients into ``p.grad``; ``named_parameters()`` yielding
   ``(name, p)`` with ``p.data`` and ``p.grad`` arrays. Optional:
   ``named_buffers()``, ``zero_grad()``, ``astype(dtype)``, ``train(mode)``.
2. **A plain object with dicts**: ``forward(x) -> y``; ``backward(dy) -> dx``;
   ``params``, a dict ``{name: ndarray}``; ``grads``, a dict ``{name: ndarray}``
   that ``backward`` fills, by assigning ``grads[name] = ...`` or by accumulating
   into entries you created (existing entries are reset to zeros, of the
   parameter's dtype, before every backward). Optional: ``buffers`` (dict), ``train(mode)`` or a
   ``training`` attribute. ``forward``/``backward`` must read ``params[name]``
   when they run (not an alias kept from ``__init__``): the checks replace the
   arrays to change their dtype or values.
3. **A plain object without parameters**: ``forward(x)``, ``backward(dy) -> dx``;
   optional ``buffers`` (dict) and ``train(mode)`` / ``training`` as in 2.
4. **A pair of functions** ``(forward, backward)``: ``forward(x) -> y``,
   ``backward(x, dy) -> dx``.
5. **The from-scratch conventions** of ``nnparity.training.conventions`` (kind ``"slots"``):
   attribute parameters (``self.W`` + ``self.dW``), ``params()`` / ``grads()`` methods,
   numpy-ml's ``parameters`` / ``gradients`` dicts, the book's ``self.output`` /
   ``self.dinputs`` / ``self.dweights``, CS231n function pairs with a cache
   (``conventions.FunctionPair``), and any names through a ``params={"W": "weight.T"}``
   map. ``bind(torch_module)`` names them like the module's parameters and maps their
   layouts; from then on ``params()`` / ``grads()`` are in torch's names and layouts
   (views of your arrays where the layout differs, so writing to them writes to yours).

Parameter names in 1 and 2 are the torch equivalent's ``named_parameters()`` names
(``weight``, ``bias``, ``fc1.weight``...), PyTorch layouts included.

Optional, any convention: ``kink_attrs``, a tuple naming the attributes that
``forward`` sets and that decide which piece of a piecewise function is active
(``ReLU.kink_attrs = ("mask",)``; a max-pool's argmax). Finite-difference checks
report a coordinate whose perturbation changes one of them as a *kink*, not a
failure.

Losses: an object with ``forward(input, target) -> scalar`` and
``backward() -> dL/dinput`` (the scratch convention), or a function
``loss(input, target) -> (value, dL/dinput)``.

Update rules: an object with ``step()`` (e.g. ``scratch.SGD`` over the
network's parameters; its ``state_dict()``, if any, is compared with the torch
optimizer's state), or a function ``update(params, grads)`` that changes the
``params`` arrays in place or returns the new ``params`` dict.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import sysconfig
import traceback
from collections import OrderedDict

import numpy as np

from nnparity.training import conventions


class UsageError(Exception):
    """Base of every error saying a check could not run as called (not that a derivation is
    wrong: that is an ``AssertionError``). The message is the whole story, in one first line:
    what is wrong and how to fix it; nothing from torch or NumPy is chained to it."""


class ProtocolError(UsageError, TypeError):
    """A user object does not follow the layer / loss / update protocol (see module doc)."""


class ParameterMismatch(UsageError, ValueError):
    """The two sides do not have the same parameter names or shapes."""


class ArgumentError(UsageError, ValueError):
    """An argument of ``check_layer`` / ``check_loss`` / ``check_steps`` has a type or value the
    check cannot use (a shape that is not a tuple of positive ints, a NaN input, ``steps=-1``...)."""


class CallError(UsageError, RuntimeError):
    """Your code (or the torch side) raised while being checked: the message names the call,
    the exception, where it was raised and what it was given."""


class NNParityWarning(UserWarning):
    """A check passed but left something unchecked (a torch buffer with no counterpart...)."""


def _short(obj) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def describe_array(a) -> str:
    """``shape (2, 5) float64`` (and the range of an integer array: labels)."""
    a = np.asarray(a)
    text = f"shape {a.shape} {a.dtype}"
    if np.issubdtype(a.dtype, np.integer) and a.size:
        text += f" in [{a.min()}, {a.max()}]"
    return text


def _library_dirs() -> tuple:
    """Where library code lives (the standard library, site-packages, NumPy, torch, nn-parity)."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs |= {os.path.dirname(np.__file__),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # nnparity/
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__file__", None):
        dirs.add(os.path.dirname(torch.__file__))
    return tuple(os.path.abspath(d) + os.sep for d in dirs)


def _where(exc) -> str:
    """`` at file.py:31 in forward``: the innermost frame outside libraries (the user's own
    line); empty if there is none (a call with the wrong signature fails at nn-parity's call)."""
    skip = _library_dirs()
    mine = [f for f in traceback.extract_tb(exc.__traceback__) if not os.path.abspath(f.filename).startswith(skip)]
    if not mine:
        return ""
    f = mine[-1]
    path = f.filename
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:  # another drive (Windows)
        pass
    return f" at {path}:{f.lineno} in {f.name}"


def call_user(what: str, fn, *args, given: str = ""):
    """``fn(*args)``; an exception of the user's code becomes one ``CallError`` line naming
    ``what`` raised it, where, and ``given`` (what it was called with)."""
    try:
        return fn(*args)
    except (UsageError, AssertionError):
        raise
    except Exception as e:  # noqa: BLE001 - any exception of user code is reported in words
        first = (str(e).splitlines() or [""])[0]
        if isinstance(e, KeyError):
            first = repr(e.args[0]) if e.args else ""
        raise CallError(f"{what} raised {type(e).__name__}: {first}{_where(e)}{given}") from None


def call_torch(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the torch side; its exception becomes one ``CallError`` line."""
    try:
        return fn(*args, **kwargs)
    except (UsageError, AssertionError):
        raise
    except Exception as e:  # noqa: BLE001 - torch's message, first line, in our words
        first = (str(e).strip().splitlines() or [""])[0]
        raise CallError(f"{what} raised {type(e).__name__}: {first}") from None


def reject_class(obj, what: str) -> None:
    """A class where an instance is needed (``torch.nn.ReLU`` for ``torch.nn.ReLU()``)."""
    if isinstance(obj, type):
        mod = obj.__module__
        name = f"torch.nn.{obj.__name__}" if mod.startswith("torch.nn") else (
            f"torch.optim.{obj.__name__}" if mod.startswith("torch.optim") else obj.__name__)
        raise ProtocolError(f"{what} is the class {name}, not an instance: pass {name}(...) (an object)")


def _check_mapping(params):
    """A ``params={"W": "weight.T", "b": "bias"}`` map: your names -> torch names (and layouts)."""
    if params is None:
        return None
    if not isinstance(params, dict) or not params:
        raise ArgumentError(f"params must be a non-empty dict {{your name: torch name}} such as "
                            f"{{'W': 'weight.T', 'b': 'bias'}}, got {params!r}")
    for k, v in params.items():
        if not isinstance(k, str) or conventions.parse_target(v) is None:
            raise ArgumentError(f"params[{k!r}] = {v!r}: each entry maps your name to a torch parameter name, "
                                "optionally with a layout: 'bias', 'weight.T', 'weight.permute(2, 3, 1, 0)'")
    return dict(params)


class LayerAdapter:
    """A uniform view of a layer or network following any convention of the layer protocol.

    Args:
        obj: the user's layer or network (see the module docstring), or a
            ``(forward, backward)`` pair of functions.
        name: how messages name it (default: its class or function name).
    """

    def __init__(self, obj, name: str | None = None, params: dict | None = None):
        if isinstance(obj, LayerAdapter):
            params = obj.mapping if params is None else params
            obj = obj.obj
        self.obj = obj
        self.mapping = _check_mapping(params)
        self.slots = None          # the parameters of a slots-kind layer (``nnparity.training.conventions``)
        self.convention = None     # which convention was detected, in words
        self.notes = []            # how names and layouts were mapped onto torch's, in words
        self._bound = None
        self.forward_kwargs = {}   # extra keyword arguments of every forward call (forward_kwargs=)
        self._mode = True          # the mode handed to a forward(x, training) argument
        reject_class(obj, "your layer")
        if isinstance(obj, (tuple, list)):
            if len(obj) != 2 or not all(callable(f) for f in obj):
                raise ProtocolError("a layer given as functions must be a pair (forward, backward) with "
                                    "forward(x) -> y and backward(x, dy) -> dx, or forward(x, *params, cfg) -> "
                                    "(out, cache) and backward(dout, cache) -> (dx, *dparams)")
            if conventions.is_cache_pair(*obj):
                self.obj = obj = conventions.FunctionPair(*obj)
            else:
                self.kind = "functions"
                self.convention = "a pair of functions (forward(x), backward(x, dy))"
                self._x = None
                self.name = name or _short(obj[0])
                return
        missing = [m for m in ("forward", "backward") if not callable(getattr(obj, m, None))]
        if missing:
            raise ProtocolError(
                f"{_short(obj)} has no {' and no '.join(missing)} method: a layer needs forward(x) -> y and "
                "backward(dy) -> dx (or pass a pair of functions (forward, backward) with backward(x, dy))")
        self.name = name or _short(obj)
        if callable(getattr(obj, "named_parameters", None)):
            self.kind = "module"
        elif isinstance(obj, conventions.FunctionPair):
            self.kind, self.convention = "slots", "a pair of functions with a cache (CS231n)"
            self.slots = [conventions._dict_slot(obj, "params", "grads", n) for n in obj.param_names if n in obj.params]
        elif hasattr(obj, "params") and not callable(obj.params):
            if not isinstance(obj.params, dict):
                raise ProtocolError(f"{_short(obj)}.params must be a dict {{name: ndarray}}, "
                                    f"got {type(obj.params).__name__}")
            self.kind, self.convention = "dict", "params/grads dicts"
            if self.mapping:
                self._use_slots()
        else:
            self._use_slots()
        buffers = getattr(obj, "buffers", None)
        if self.kind != "module" and buffers is not None and not isinstance(buffers, dict) and \
                not isinstance(obj, conventions.FunctionPair):
            raise ProtocolError(
                f"{self.name}.buffers is {'a method' if callable(buffers) else type(buffers).__name__}: the checks "
                "read buffers (running statistics) from a dict attribute, so they would be ignored: store them "
                "as self.buffers = {'running_mean': ..., 'running_var': ...} (torch's buffer names)")
        if self.kind == "module" and callable(buffers) and not callable(getattr(obj, "named_buffers", None)):
            raise ProtocolError(f"{self.name} has buffers() but no named_buffers(): the checks read buffers "
                                "from named_buffers() yielding (name, array), so they would be ignored")
        if self.mapping and self.kind == "module":
            raise ProtocolError(f"params={{...}} maps the parameters of a plain layer; {self.name} is a scratch "
                                "module (named_parameters()): name its parameters like the torch module's")
        if self.mapping and not isinstance(obj, conventions.FunctionPair):
            known = {s.name for s in self.slots or []}
            unknown = [k for k in self.mapping if k not in known]
            if unknown:
                arrays = sorted(k for k, v in (vars(obj).items() if hasattr(obj, "__dict__") else ())
                                if isinstance(v, np.ndarray))
                raise ProtocolError(f"params={{...}} names {unknown}, which {self.name} does not have as an array "
                                    f"(looked in {self.convention or 'its attributes'}); its array attributes are "
                                    f"{arrays}")

    def _use_slots(self, torch_names=()) -> None:
        """Read the parameters through ``nnparity.training.conventions`` (attributes, methods, dicts)."""
        obj = self.obj
        names = list(self.mapping) if self.mapping else None
        convention, slots = conventions.detect(obj, names)
        if convention == "params()/grads() methods":
            slots, problem = call_user(f"{self.name}.params", conventions.method_slots, obj, torch_names,
                                       given=" (called as params())")
            if problem:
                raise ProtocolError(problem)
            if names is not None:
                slots = [s for s in slots if s.name in names or getattr(s, "attr", None) in names]
        self.kind = "slots" if slots else "plain"
        self.convention = convention if slots else "no parameters"
        self.slots = slots

    def bind(self, module, train: bool = True) -> None:
        """Name (and lay out) your parameters as ``module``'s, a torch ``nn.Module`` (done once per
        module): aliases and layouts as ``nnparity.training.conventions`` says; the mapping is in ``notes``."""
        if self._bound is module or self.kind in ("module", "functions", "plain") and \
                not isinstance(self.obj, conventions.FunctionPair):
            return
        torch_shapes = OrderedDict((k, tuple(p.shape)) for k, p in module.named_parameters())
        if isinstance(self.obj, conventions.FunctionPair):
            try:
                self.obj.bind(module, torch_shapes, train)
            except ValueError as e:
                raise ProtocolError(str(e)) from None
            self.kind, self.slots = "slots", [conventions._dict_slot(self.obj, "params", "grads", n)
                                              for n in self.obj.param_names]
        elif self.kind == "dict":   # torch's names and layouts, as before (a map makes it a slots layer)
            self._bound = module
            return
        elif self.convention == "params()/grads() methods":
            self._use_slots(list(torch_shapes))
        for s in self.slots:
            s.torch, s.layout = s.name, None
        notes, problem = conventions.resolve_names(self.slots, torch_shapes, self.mapping)
        if problem:
            raise ParameterMismatch(f"{self.name}'s parameters do not fit {_short(module)}'s: {problem}")
        self.notes = notes
        self._bound = module

    def bind_function(self, fn) -> None:
        """A torch *function* equivalent ``fn(x, **params)``: only the ``params=`` map renames (and lays
        out) your parameters; unmapped ones keep their names, as the function receives them."""
        if not self.mapping or self._bound is fn or self.kind != "slots":
            return
        torch_shapes = OrderedDict()
        for sl in self.slots:
            shape = tuple(np.shape(sl.raw()))
            target = conventions.parse_target(self.mapping[sl.name]) if sl.name in self.mapping else (sl.name, None)
            how = target[1]
            perm = tuple(reversed(range(len(shape)))) if how == "T" else how if isinstance(how, tuple) else None
            torch_shapes[target[0]] = tuple(shape[i] for i in perm) if perm else shape
        for sl in self.slots:
            sl.torch, sl.layout = sl.name, None
        notes, problem = conventions.resolve_names(self.slots, torch_shapes, self.mapping)
        if problem:
            raise ParameterMismatch(f"{self.name}'s parameters do not fit params={self.mapping}: {problem}")
        self.notes, self._bound = notes, fn

    def suggest_map(self, torch_shapes) -> str:
        if self.kind == "dict":
            return conventions.suggest_map([conventions._dict_slot(self.obj, "params", "grads", n)
                                            for n in self.obj.params], torch_shapes)
        if self.kind == "plain":   # array attributes with names nn-parity does not know
            attrs = [k for k, v in (vars(self.obj).items() if hasattr(self.obj, "__dict__") else ())
                     if conventions.is_float_array(v) and k not in conventions.BUFFER_NAMES]
            return conventions.suggest_map([conventions._attr_slot(self.obj, k) for k in attrs], torch_shapes)
        return conventions.suggest_map(self.slots or [], torch_shapes)

    def _slot(self, torch_name):
        return next(s for s in self.slots if s.torch == torch_name)

    # --- computation -------------------------------------------------------------
    def set_forward_kwargs(self, kwargs) -> None:
        """Extra keyword arguments for every forward call (``forward(x, **kwargs)``)."""
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ArgumentError(f"forward_kwargs must be a dict of keyword arguments of your forward, e.g. "
                                f"forward_kwargs={{'retain_derived': True}}, got {_short(kwargs)}")
        self.forward_kwargs = dict(kwargs)
        fn = self.obj[0] if self.kind == "functions" else getattr(self.obj, "forward", None)
        arg = mode_argument(fn)
        if arg is not None and arg not in self.forward_kwargs:
            self.notes.append(f"forward's {arg!r} argument is given the mode (True in training)")

    def _with_arguments(self, fn):
        """``fn`` with ``forward_kwargs`` and, if its signature has one (``forward(x, training)``), the mode."""
        kw = dict(self.forward_kwargs)
        arg = mode_argument(fn)
        if arg is not None and arg not in kw:
            kw[arg] = self._mode
        return functools.partial(fn, **kw) if kw else fn

    def forward(self, x):
        given = f" on an input of {describe_array(x)}"
        if self.kind == "functions":
            self._x = x
            return call_user(f"{self.name} (your forward function)", self._with_arguments(self.obj[0]), x,
                             given=given)
        if isinstance(self.obj, conventions.FunctionPair):
            missing = [n for n in self.obj.param_names if n not in self.obj.params]
            if missing:
                raise ProtocolError(f"{self.name}: no values for its parameters {missing}: without a torch module "
                                    "to take their shapes from, pass them: "
                                    f"nnparity.pair(forward, backward, params={{{missing[0]!r}: array, ...}})")
            missing = [n for n in self.obj.config_names if n not in self.obj.config]
            if missing:
                raise ProtocolError(f"{self.name}: no value for its config {missing}: without a torch module to read "
                                    f"it from, pass it: nnparity.pair(forward, backward, {missing[0]}={{...}})")
        y = call_user(f"{self.name}.forward", self._with_arguments(self.obj.forward), x, given=given)
        if y is None and isinstance(getattr(self.obj, "output", None), np.ndarray):
            y = self.obj.output   # the "from scratch" book convention: forward stores self.output
        return y

    def backward(self, dy):
        given = f" on an upstream gradient of {describe_array(dy)}"
        if self.kind == "functions":
            return call_user(f"{self.name} (your backward function)", self.obj[1], self._x, dy, given=given)
        dx = call_user(f"{self.name}.backward", self.obj.backward, dy, given=given)
        if dx is None and isinstance(getattr(self.obj, "dinputs", None), np.ndarray):
            dx = self.obj.dinputs   # ... and backward stores self.dinputs
        return dx

    def train(self, mode: bool = True) -> None:
        self._mode = bool(mode)
        if self.kind == "functions":
            return
        if callable(getattr(self.obj, "train", None)):
            call_user(f"{self.name}.train", self.obj.train, mode, given=f" (called as train({mode}))")
        elif hasattr(self.obj, "training"):
            call_user(f"setting {self.name}.training", setattr, self.obj, "training", mode,
                      given=" (the checks switch training and evaluation mode through it)")
        elif callable(getattr(self.obj, "freeze", None)) and callable(getattr(self.obj, "unfreeze", None)):
            call_user(f"{self.name}.{'unfreeze' if mode else 'freeze'}",   # numpy-ml: frozen = eval
                      self.obj.unfreeze if mode else self.obj.freeze, given="")
        elif isinstance(getattr(self.obj, "trainable", None), bool):
            self.obj.trainable = mode

    @property
    def training(self):
        """The layer's mode as it says (``training``, numpy-ml's ``trainable``), or None."""
        if self.kind == "functions":
            return None
        if isinstance(self.obj, conventions.FunctionPair):
            return getattr(self.obj, "training", None)
        t = getattr(self.obj, "training", None)
        return t if t is not None else getattr(self.obj, "trainable", None) \
            if isinstance(getattr(self.obj, "trainable", None), bool) else None

    # --- parameters --------------------------------------------------------------
    def _module_params(self):
        ps = OrderedDict(self.obj.named_parameters())
        for k, p in ps.items():
            if not (isinstance(getattr(p, "data", None), np.ndarray) and hasattr(p, "grad")):
                raise ProtocolError(f"{self.name}.named_parameters() must yield (name, p) with p.data and p.grad "
                                    f"arrays (a scratch Parameter); {k!r} is {type(p).__name__}: wrap the array in "
                                    "scratch.Parameter, or use a params dict {name: ndarray} and a grads dict")
        return ps

    def params(self) -> "OrderedDict[str, np.ndarray]":
        """The live parameter arrays, by name."""
        if self.kind == "module":
            return OrderedDict((k, p.data) for k, p in self._module_params().items())
        if self.kind == "dict":
            if not isinstance(self.obj.params, dict):
                raise ProtocolError(f"{self.name}.params must be a dict {{name: ndarray}}, "
                                    f"got {type(self.obj.params).__name__}")
            out = OrderedDict()
            for k, v in self.obj.params.items():
                try:
                    a = None if v is None else np.asarray(v)
                except Exception:  # noqa: BLE001 - whatever it is, it is not an array
                    a = None
                if a is None or not np.issubdtype(a.dtype, np.number):
                    raise ProtocolError(f"{self.name}.params[{k!r}] is {type(v).__name__}, not an array: every "
                                        "value of the params dict must be a NumPy array")
                out[k] = a
            return out
        if self.kind == "slots":
            out = OrderedDict()
            for sl in self.slots:
                v = sl.raw()
                if not (isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number)):
                    raise ProtocolError(f"{self.name}: {sl.where} is {type(v).__name__}, not an array: every "
                                        "parameter must be a NumPy array")
                out[sl.torch] = sl.value()
            return out
        return OrderedDict()

    def set_params(self, arrays: dict) -> None:
        """Replace parameter arrays (values and dtype); gradients are reset to zeros."""
        if self.kind == "module":
            ps = self._module_params()
            for k, a in arrays.items():
                ps[k].data = a
                ps[k].grad = np.zeros_like(a)
        elif self.kind == "dict":
            for k, a in arrays.items():
                self.obj.params[k] = a
        elif self.kind == "slots":
            for k, a in arrays.items():
                self._slot(k).set(a)

    def grads(self) -> "OrderedDict[str, np.ndarray]":
        """dL/d(param) after ``backward``, by name; a missing or misshapen gradient is a ``ProtocolError``."""
        params = self.params()
        if self.kind == "module":
            out = OrderedDict((k, p.grad) for k, p in self._module_params().items())
        elif self.kind == "dict":
            grads = getattr(self.obj, "grads", None)
            if not isinstance(grads, dict):
                raise ProtocolError(f"{self.name} has a params dict but no grads dict: backward must store "
                                    f"dL/d(param) in self.grads[name] for every name in params {list(params)}")
            absent = [k for k in params if k not in grads]
            if absent:
                raise ProtocolError(f"{self.name}.backward stored no gradient for {absent} in self.grads "
                                    f"(it has {list(grads)}; params has {list(params)})")
            nones = [k for k in params if grads[k] is None]
            if nones:
                raise ProtocolError(f"{self.name}: the gradient of parameter {nones[0]!r} is None: backward must "
                                    f"store dL/d{nones[0]} (an array of its parameter's shape) in "
                                    f"self.grads[{nones[0]!r}]")
            out = OrderedDict((k, np.asarray(grads[k])) for k in params)
        elif self.kind == "slots":
            out = OrderedDict()
            for sl in self.slots:
                g = sl.grad()
                if g is None:
                    raise ProtocolError(f"{self.name}.backward stored no gradient for {sl.where}: store "
                                        f"dL/d{sl.name} in {sl.grad_where} (an array of its shape)")
                raw_shape, g_shape = np.shape(sl.raw()), np.shape(sl._grad())
                if g_shape != raw_shape:
                    raise ProtocolError(f"{self.name}: the gradient of {sl.where} has shape {g_shape}, {sl.where} "
                                        f"has shape {raw_shape}: dL/d{sl.name} must have its parameter's shape "
                                        "(a transposed gradient, or a sum over the wrong axis?)")
                out[sl.torch] = np.asarray(g)
        else:
            return OrderedDict()
        for k, g in out.items():
            if g is None or np.shape(g) != params[k].shape:
                raise ProtocolError(f"{self.name}: the gradient of parameter {k!r} has shape "
                                    f"{None if g is None else np.shape(g)}, the parameter has shape "
                                    f"{params[k].shape}: dL/d{k} must have its parameter's shape")
        return out

    def zero_grad(self) -> None:
        if self.kind == "module":
            if callable(getattr(self.obj, "zero_grad", None)):
                call_user(f"{self.name}.zero_grad", self.obj.zero_grad, given=" (called as zero_grad())")
            else:
                for _, p in self._module_params().items():
                    p.grad = np.zeros_like(p.data)
        elif self.kind == "dict":
            grads = getattr(self.obj, "grads", None)
            if not isinstance(grads, dict):
                grads = {}
                self.obj.grads = grads
            for k, p in self.params().items():
                if k not in grads:   # left missing: a backward that never sets it gets a clear error
                    continue
                g = grads[k]
                if isinstance(g, np.ndarray) and g.shape == p.shape and g.dtype == p.dtype:
                    g[...] = 0
                else:
                    grads[k] = np.zeros_like(p)
        elif self.kind == "slots":
            own = next((m for m in ("zero_grad", "flush_gradients", "zero_grads")
                        if callable(getattr(self.obj, m, None)) and not isinstance(self.obj, conventions.FunctionPair)),
                       None)
            if own:   # your own reset (numpy-ml's flush_gradients also clears the inputs forward kept)
                call_user(f"{self.name}.{own}", getattr(self.obj, own), given=f" (called as {own}())")
                return
            for sl in self.slots:   # gradients accumulated with += start from zeros of the parameter's dtype
                sl.zero()

    # --- buffers -----------------------------------------------------------------
    def buffers(self) -> "OrderedDict[str, np.ndarray]":
        if self.kind == "module" and callable(getattr(self.obj, "named_buffers", None)):
            return OrderedDict((k, np.asarray(b)) for k, b in self.obj.named_buffers())
        if self.kind in ("dict", "plain", "slots") and isinstance(getattr(self.obj, "buffers", None), dict):
            return OrderedDict((k, np.asarray(b)) for k, b in self.obj.buffers.items())
        if self.kind in ("slots", "plain"):
            return OrderedDict((k, np.asarray(v)) for k, (v, _) in conventions.buffer_slots(self.obj).items())
        return OrderedDict()

    def set_buffers(self, arrays: dict) -> None:
        """Replace buffer arrays (values and dtype)."""
        if not arrays:
            return
        if self.kind in ("dict", "plain", "slots") and isinstance(getattr(self.obj, "buffers", None), dict):
            self.obj.buffers.update(arrays)
            return
        if self.kind in ("slots", "plain"):
            slots = conventions.buffer_slots(self.obj)
            for k, a in arrays.items():
                slots[k][1](a)
            return
        if self.kind != "module":
            return
        modules = dict(self._modules())
        for key, a in arrays.items():
            path, _, attr = key.rpartition(".")
            mod = modules[path]
            if callable(getattr(mod, "_set_buffer", None)):
                mod._set_buffer(attr, a)
            else:
                setattr(mod, attr, a)

    # --- state -------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything ``restore`` needs to put the parameters and buffers back as they were."""
        snap = {"params": self.params(), "buffers": OrderedDict((k, np.array(v, copy=True))
                                                                for k, v in self.buffers().items())}
        if self.kind == "module":
            snap["grads"] = OrderedDict((k, p.grad) for k, p in self._module_params().items())
        elif self.kind == "dict" and isinstance(getattr(self.obj, "grads", None), dict):
            snap["grads"] = dict(self.obj.grads)
        elif self.kind == "slots":
            snap["raw"] = [(sl, sl.raw()) for sl in self.slots]
        return snap

    def restore(self, snap: dict) -> None:
        """Put back the original parameter (and gradient) array objects and the buffer values."""
        if self.kind == "module":
            for k, p in self._module_params().items():
                p.data = snap["params"][k]
                p.grad = snap["grads"][k]
        elif self.kind == "dict":
            self.obj.params.update(snap["params"])
            if "grads" in snap:
                self.obj.grads = snap["grads"]
        elif self.kind == "slots":
            for sl, raw in snap["raw"]:
                sl._put(raw)
        self.set_buffers(snap["buffers"])

    def astype(self, dtype) -> None:
        """Convert every parameter and floating buffer to ``dtype``."""
        dtype = np.dtype(dtype)
        if self.kind == "module" and callable(getattr(self.obj, "astype", None)):
            call_user(f"{self.name}.astype", self.obj.astype, dtype, given=f" (called as astype({dtype.name}))")
            return
        self.set_params({k: v.astype(dtype) for k, v in self.params().items()})
        self.set_buffers({k: v.astype(dtype) for k, v in self.buffers().items()
                          if np.issubdtype(v.dtype, np.floating)})

    def dtypes(self) -> set:
        return {a.dtype for a in list(self.params().values()) + list(self.buffers().values())
                if np.issubdtype(a.dtype, np.floating)}

    def input_grad_on(self):
        """Make ``backward`` return dL/d(input) (scratch layers may skip it); returns an undo function."""
        obj = self.obj
        if self.kind == "module" and callable(getattr(obj, "set_input_grad", None)):
            first = next(iter(obj._modules.values()), None) if hasattr(obj, "_modules") else None
            before = getattr(first, "needs_input_grad", None)
            obj.set_input_grad(True)
            return (lambda: obj.set_input_grad(before)) if before is not None else (lambda: None)
        if getattr(obj, "needs_input_grad", None) is not None:
            before = obj.needs_input_grad
            obj.needs_input_grad = True
            return lambda: setattr(obj, "needs_input_grad", before)
        return lambda: None

    # --- discrete decisions --------------------------------------------------------
    def _modules(self):
        if self.kind == "module" and callable(getattr(self.obj, "named_modules", None)):
            return list(self.obj.named_modules())
        return [("", self.obj)] if self.kind != "functions" else []

    def kink_state(self) -> dict:
        """Copies of every declared kink attribute after the last forward (see ``kink_attrs``)."""
        state = {}
        for path, mod in self._modules():
            for attr in getattr(mod, "kink_attrs", ()) or ():
                v = getattr(mod, attr, None)
                if v is not None:
                    state[f"{path}.{attr}" if path else attr] = np.array(v, copy=True)
        return state

    def draws(self) -> dict:
        """Random draws of the last forward (dropout masks, ``draws_mask = True``), by module path."""
        return {path: np.array(mod.mask, copy=True) for path, mod in self._modules()
                if getattr(mod, "draws_mask", False) and getattr(mod, "mask", None) is not None}

    def generators(self) -> list:
        """Every NumPy random generator held by a module (so a check can replay the same draws)."""
        gens, seen = [], set()
        for _, mod in self._modules():
            for v in vars(mod).values() if hasattr(mod, "__dict__") else ():
                if isinstance(v, (np.random.Generator, np.random.RandomState)) and id(v) not in seen:
                    seen.add(id(v))
                    gens.append(v)
        return gens


MODE_ARGUMENTS = ("training", "train", "is_training", "train_mode")


def mode_argument(fn) -> str | None:
    """The name of ``fn``'s mode argument after the input (``forward(x, training)``), or None."""
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return None
    return next((n for n in names[1:] if n in MODE_ARGUMENTS), None)


def as_layer(obj, name: str | None = None, params: dict | None = None) -> LayerAdapter:
    """``obj`` read through the layer protocol; ``params`` maps your parameter names onto torch's."""
    if isinstance(obj, LayerAdapter) and name is None and params is None:
        return obj
    return LayerAdapter(obj, name, params)


class RandomState:
    """Save and replay the state of every generator a model draws from (and NumPy's global one)."""

    def __init__(self, generators):
        self.generators = list(generators)
        self.states = [_get_state(g) for g in self.generators]
        self.global_state = np.random.get_state()

    def replay(self) -> None:
        for g, s in zip(self.generators, self.states):
            _set_state(g, s)
        np.random.set_state(self.global_state)


def _get_state(g):
    return g.bit_generator.state if isinstance(g, np.random.Generator) else g.get_state()


def _set_state(g, s):
    if isinstance(g, np.random.Generator):
        g.bit_generator.state = s
    else:
        g.set_state(s)


# --- the torch side ------------------------------------------------------------------

def check_same_parameters(layer: LayerAdapter, torch_params: dict, what: str = "the torch equivalent") -> None:
    """Raise ``ParameterMismatch`` listing both sets when names or shapes differ."""
    mine = OrderedDict((k, tuple(v.shape)) for k, v in layer.params().items())
    theirs = OrderedDict((k, tuple(v.shape)) for k, v in torch_params.items())
    if set(mine) != set(theirs):
        only_m = [k for k in mine if k not in theirs]
        only_t = [k for k in theirs if k not in mine]
        raise ParameterMismatch(
            f"parameter names differ between {layer.name} and {what}:\n"
            f"  yours: {list(mine)}\n  torch: {list(theirs)}\n"
            f"  only yours: {only_m}; only torch: {only_t}\n"
            "Name your parameters like the torch module's named_parameters() (weight, bias, fc1.weight, ...), "
            + (f"or map them: {layer.suggest_map(theirs)} (your name: torch name, '.T' if stored transposed), "
               if layer.kind in ("slots", "dict", "plain") and layer.suggest_map(theirs) else "")
            + "or pass a function fn(x, **params) as the torch equivalent.")
    bad = [k for k in mine if mine[k] != theirs[k]]
    if bad:
        raise ParameterMismatch(
            f"parameter shapes differ between {layer.name} and {what}: "
            + "; ".join(f"{k}: yours {mine[k]}, torch {theirs[k]}" for k in bad)
            + f"\n  yours: {dict(mine)}\n  torch: {dict(theirs)}\n"
            "Use PyTorch's layouts (Linear weight is (out_features, in_features)), "
            "or pass a function fn(x, **params) as the torch equivalent.")


def copy_to_torch(layer: LayerAdapter, module, dtype=None) -> None:
    """Cast ``module`` to the layer's dtype (or ``dtype``, for a layer without parameters or
    buffers) and copy every parameter (and every buffer the layer has) by name.

    Parameter names and shapes must match exactly (``ParameterMismatch`` lists both
    sets). Buffers the torch module has and the layer lacks are left alone here
    (``unmatched_torch_buffers`` lists them for a warning).
    """
    import torch

    from reference.bridge import torch_dtype

    layer.bind(module)
    check_same_parameters(layer, OrderedDict(module.named_parameters()))
    dtypes = layer.dtypes()
    if len(dtypes) > 1:
        raise ParameterMismatch(f"{layer.name} mixes floating dtypes {sorted(map(str, dtypes))}; "
                                "use one dtype for every parameter")
    if dtypes or dtype is not None:
        # a parameter-free layer (BatchNorm1d(affine=False)) still needs the module's float32
        # buffers in the input's dtype: torch refuses mixed dtypes
        module.to(torch_dtype(dtypes.pop() if dtypes else np.dtype(dtype)))
    tbuf = OrderedDict(module.named_buffers())
    mbuf = layer.buffers()
    unknown = [k for k in mbuf if k not in tbuf]
    bad = [k for k in mbuf if k in tbuf and tuple(tbuf[k].shape) != mbuf[k].shape]
    if unknown or bad:
        raise ParameterMismatch(
            f"buffers differ between {layer.name} and the torch equivalent: only yours {unknown}, "
            f"shapes differ {[(k, mbuf[k].shape, tuple(tbuf[k].shape)) for k in bad]}\n"
            f"  yours: {list(mbuf)}\n  torch: {list(tbuf)}")
    tparams = OrderedDict(module.named_parameters())
    with torch.no_grad():
        for k, a in layer.params().items():
            tparams[k].copy_(torch.from_numpy(np.array(a, order="C")))
        for k, a in mbuf.items():
            tbuf[k].copy_(torch.from_numpy(np.array(a, order="C")).to(tbuf[k].dtype))


def unmatched_torch_buffers(layer: LayerAdapter, module) -> list:
    """Floating buffers of the torch module that the layer does not expose: they are not
    compared, so a check that passes says nothing about them (a warning lists them).
    Integer buffers (``num_batches_tracked``) are counters, not results of a derivation."""
    mine = layer.buffers()
    return [k for k, b in module.named_buffers() if k not in mine and b.is_floating_point()]


def buffers_warning(layer_name: str, what: str, names) -> str:
    return (f"{what} has buffers {list(names)} that {layer_name} does not expose: they were not compared; "
            "expose them under these names (a buffers dict, or named_buffers()) to check them")


def torch_function_params(fn, names) -> None:
    """Check that a torch-equivalent function accepts the layer's parameters as keywords."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    ps = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return
    accepted = {p.name for p in ps if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)}
    missing = [n for n in names if n not in accepted]
    if missing:
        raise ParameterMismatch(
            f"the torch equivalent {_short(fn)}{sig} does not accept the parameter(s) {missing}: your layer "
            f"has parameters {list(names)}, so a function equivalent is called as "
            f"fn(x, {', '.join(f'{n}=...' for n in names)}) with torch tensors")


# --- losses and update rules ------------------------------------------------------------

def _positional_count(fn) -> int:
    """How many positional arguments ``fn`` takes (without defaults); 0 if it cannot be told."""
    try:
        ps = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in ps)


class LossAdapter:
    """``value, dinput = adapter(input, target)`` for either loss convention."""

    def __init__(self, loss, name: str | None = None):
        if isinstance(loss, LossAdapter):
            loss = loss.obj
        self.obj = loss
        reject_class(loss, "your loss")
        if type(loss).__module__.startswith("torch"):
            raise ProtocolError(f"{_short(loss)} is a torch module: pass your NumPy loss first (an object with "
                                "forward(input, target) and backward(), or a function loss(input, target) -> "
                                "(value, dL/dinput)) and the torch loss after it")
        if callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None)):
            self.kind = "module"
        elif callable(loss):
            self.kind = "function"
        else:
            raise ProtocolError(f"{_short(loss)} is not a loss: pass an object with forward(input, target) and "
                                "backward(), or a function loss(input, target) -> (value, dL/dinput)")
        self.name = name or _short(loss)
        self.reduction = getattr(loss, "reduction", None)

    def __call__(self, z, target):
        given = f" (input {describe_array(z)}, target {describe_array(target)})"
        if self.kind == "module":
            value = call_user(f"{self.name}.forward", self.obj.forward, z, target, given=given)
            if np.ndim(value) and callable(getattr(self.obj, "calculate", None)):   # per-sample losses (nnfs)
                value = call_user(f"{self.name}.calculate", self.obj.calculate, z, target, given=given)
            if _positional_count(self.obj.backward) >= 2:
                # the "from scratch" book: backward(dvalues, y_true) with dvalues the forward's output
                # (self.output: a fused softmax's probabilities) or the loss's own input; sets self.dinputs
                out = getattr(self.obj, "output", None)
                dvalues = out if isinstance(out, np.ndarray) and out.shape == np.shape(z) else z
                dz = call_user(f"{self.name}.backward", self.obj.backward, dvalues, target, given=given)
            else:
                dz = call_user(f"{self.name}.backward", self.obj.backward, given=given)
            if dz is None and isinstance(getattr(self.obj, "dinputs", None), np.ndarray):
                dz = self.obj.dinputs
        else:
            out = call_user(self.name, self.obj, z, target, given=given)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ProtocolError(f"the loss function {self.name} must return (value, dL/dinput), "
                                    f"got {type(out).__name__}")
            value, dz = out
        if dz is None:
            raise ProtocolError(f"{self.name}: dL/dinput is None: the loss must return (or backward() must "
                                f"return) the gradient with respect to its input, an array of shape {np.shape(z)}")
        if np.shape(dz) != np.shape(z):
            raise ProtocolError(f"{self.name}: dL/dinput has shape {None if dz is None else np.shape(dz)}, "
                                f"the input has shape {np.shape(z)}: the gradient must have the input's shape")
        return np.asarray(value), np.asarray(dz)


class UpdateAdapter:
    """Apply one update of a user's rule to a network's parameters."""

    def __init__(self, update, net: LayerAdapter):
        self.obj, self.net = update, net
        reject_class(update, "your update rule")
        if type(update).__module__.startswith("torch"):
            raise ProtocolError(f"update is a torch optimizer ({type(update).__name__}): pass your NumPy update "
                                "rule (an object with step(), or a function update(params, grads)); the torch "
                                "optimizer goes in torch_optimizer")
        if callable(getattr(update, "step", None)):
            self.kind = "optimizer"
        elif callable(update):
            self.kind = "function"
        else:
            raise ProtocolError(f"{_short(update)} is not an update rule: pass an object with step() "
                                "(e.g. scratch.SGD) or a function update(params, grads)")

    def step(self, grads) -> None:
        if self.kind == "optimizer":
            call_user(f"the update rule {_short(self.obj)}.step", self.obj.step)
            return
        params = self.net.params()
        new = call_user(f"the update rule {_short(self.obj)}", self.obj, params, grads,
                        given=" (called as update(params, grads) with two dicts)")
        if new is not None:
            if not isinstance(new, dict) or set(new) != set(params):
                raise ProtocolError(f"the update function returned {type(new).__name__}"
                                    f"{' with keys ' + str(list(new)) if isinstance(new, dict) else ''}; "
                                    f"return None (update in place) or a dict with keys {list(params)}")
            bad = [(k, np.shape(v), params[k].shape) for k, v in new.items() if np.shape(v) != params[k].shape]
            if bad:
                raise ProtocolError("the update function returned " + "; ".join(
                    f"{k!r} of shape {got} for a parameter of shape {want}" for k, got, want in bad)
                    + ": each new value must have its parameter's shape")
            self.net.set_params({k: np.asarray(v) for k, v in new.items()})

    def state(self) -> "OrderedDict[str, np.ndarray]":
        sd = getattr(self.obj, "state_dict", None)
        return OrderedDict(sd()) if self.kind == "optimizer" and callable(sd) else OrderedDict()


# --- misuse checks shared by every layer check ---------------------------------------------

INPUT_MUTATED = ("the layer modified its input x in place (in forward or backward): copy it before changing it, "
                 "the caller still needs x")


def output_problem(name: str, y, x) -> str | None:
    """Why a forward output cannot be checked (not an array, or NaN/inf where the input is finite)."""
    if y is None or not isinstance(y, (np.ndarray, np.generic)):
        return (f"{name}.forward returned {type(y).__name__}, not a NumPy array: forward(x) must return "
                "the output array")
    bad = ~np.isfinite(y)
    if bad.any() and np.isfinite(x).all():
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if y.ndim else ()
        n = int(bad.sum())
        return (f"{name}.forward returned {y.flat[int(np.flatnonzero(bad)[0])]} at ({', '.join(map(str, idx))})"
                f"{f' and {n - 1} more non-finite values' if n > 1 else ''} for a finite input: look for "
                "exp overflow, log(0), 0/0 or a division by a variance without eps")
    return None


def upstream_problem(name: str, upstream, out_shape) -> None:
    """A given upstream gradient that cannot be dL/d(output): raise ``ArgumentError``."""
    if upstream is None:
        return
    if np.shape(upstream) != tuple(out_shape):
        raise ArgumentError(f"upstream has shape {np.shape(upstream)}, your {name}'s output has shape "
                            f"{tuple(out_shape)}: upstream is dL/d(output), one value per output element")


def input_grad_problem(name: str, dx, x) -> str | None:
    """Why a backward's return value is not dL/dx for input ``x``."""
    if dx is None:
        return (f"{name}.backward returned None: it must return dL/dx, the gradient with respect to its "
                f"input (shape {x.shape})")
    if not isinstance(dx, (np.ndarray, np.generic)):
        return f"{name}.backward returned {type(dx).__name__}, not a NumPy array: it must return dL/dx"
    if dx.shape != x.shape:
        return (f"{name}.backward returned an array of shape {dx.shape} for an input of shape {x.shape}: "
                "it must return dL/dx, one value per input element (check a missing transpose or a sum "
                "over the wrong axis)")
    return None
