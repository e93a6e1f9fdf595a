"""Where a from-scratch layer keeps its parameters and gradients, and in which layout:
the conventions learners really write, detected, or named in one argument.

``LayerAdapter`` (``nnparity.training.adapters``) reads every layer through one list of
``Slot`` objects: each says where one parameter lives in your object (a dict entry,
an attribute), where ``backward`` leaves its gradient, which torch parameter it is,
and how its layout maps onto torch's (``Layout``). Detection, in this order (the
first that applies wins):

=====================================  ===========================================================
your layer has                         parameters / gradients are read from
=====================================  ===========================================================
``named_parameters()``                 scratch ``Parameter`` objects (``p.data``, ``p.grad``)
a ``params`` dict                      ``params[name]`` / ``grads[name]``
``parameters`` and ``gradients`` dicts ``parameters[name]`` / ``gradients[name]`` (numpy-ml);
                                       entries named ``running_*`` are buffers
a ``params()`` method                  the arrays it returns (a dict, or a list in the torch
                                       module's order) / the arrays ``grads()`` returns
array attributes with a weight or      ``self.W`` / ``self.dW``: the gradient of ``self.<n>`` is the
bias name (``ATTRIBUTE_NAMES``)        first of ``d<n>``, ``d_<n>``, ``grad_<n>``, ``<n>_grad``,
                                       ``grad<N>``, ``d<N>`` (``<N>``: capitalised) that backward
                                       set, or ``grads[<n>]`` / ``gradients[<n>]``
=====================================  ===========================================================

``forward`` may return its output or store it in ``self.output`` and return None;
``backward`` may return dL/dx or store it in ``self.dinputs`` (the "from scratch"
book convention: ``forward(inputs)`` sets ``self.output``, ``backward(dvalues)``
sets ``self.dinputs``, ``self.dweights``, ``self.dbiases``).

Names: a parameter named like the torch module's is that parameter; otherwise
``ALIASES`` gives the torch name (``W``, ``w``, ``weights``, ``kernel``, ``gamma``,
``scaler`` -> ``weight``; ``b``, ``biases``, ``beta``, ``intercept`` -> ``bias``);
anything else needs the map ``params={"theta": "weight.T", "theta0": "bias"}``
(its keys are your names, in any of the conventions above, and say which
attributes are parameters).

Layouts: your array's shape decides. The torch shape: taken as is. Its reverse
(``W`` stored (in, out), torch's ``weight`` is (out, in)): mapped as ``weight.T``.
The same elements with size-1 axes added or removed (``biases`` of shape (1, out)):
reshaped. Another unique permutation of the axes (a conv kernel stored (kH, kW, in,
out)): permuted. Every mapping is named in the check's context line. A square
matrix fits both ways: a torch name (``weight``) means torch's (out, in); the
from-scratch names (``W``, ``w``, ``weights``, ``kernel``) mean (in, out), the
layout of ``x @ W`` that CS231n, numpy-ml and the from-scratch books use; the map
(``"W": "weight"``) overrides. ``.T`` reverses the axes; ``.permute(a, b, ...)``
gives your axes in torch's order (``"kernel": "weight.permute(2, 3, 1, 0)"``).
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections import OrderedDict

import numpy as np

# your name -> the torch name it stands for (when the torch module has no parameter of your name)
ALIASES = {"W": "weight", "w": "weight", "weights": "weight", "kernel": "weight", "kernels": "weight",
           "filters": "weight", "gamma": "weight", "scaler": "weight", "scale": "weight",
           "b": "bias", "biases": "bias", "beta": "bias", "intercept": "bias", "shift": "bias"}
# names that mean "stored (in, out)" when a square matrix fits both layouts
FROM_SCRATCH_LAYOUT = ("W", "w", "weights", "kernel", "kernels", "filters")
ATTRIBUTE_NAMES = tuple(ALIASES) + ("weight", "bias")
BUFFER_NAMES = ("running_mean", "running_var")
OUTPUT_ATTRS = ("output",)
INPUT_GRAD_ATTRS = ("dinputs",)


def grad_attr_names(n: str) -> list:
    """Where ``backward`` may leave dL/d(self.<n>): ``dW``, ``d_W``, ``grad_W``, ``W_grad``, ``gradW``..."""
    cap = n[:1].upper() + n[1:]
    return list(dict.fromkeys([f"d{n}", f"d_{n}", f"grad_{n}", f"{n}_grad", f"grad{cap}", f"d{cap}"]))


class Layout:
    """How one of your arrays maps onto its torch parameter: ``perm`` (your axes in torch's
    order) and/or a reshape between ``shape`` (yours) and ``torch_shape``."""

    def __init__(self, shape, torch_shape, perm=None):
        self.shape, self.torch_shape = tuple(shape), tuple(torch_shape)
        self.perm = None if perm is None or tuple(perm) == tuple(range(len(perm))) else tuple(perm)

    @property
    def identity(self) -> bool:
        return self.perm is None and self.shape == self.torch_shape

    def to_torch(self, a):
        """Your array in torch's layout (a view: writing to it writes to yours)."""
        if self.perm is not None:
            a = np.transpose(a, self.perm)
        return a.reshape(self.torch_shape) if a.shape != self.torch_shape else a

    def from_torch(self, a):
        if self.perm is not None:
            inv = tuple(np.argsort(self.perm))
            permuted = tuple(self.shape[i] for i in self.perm)
            return np.transpose(a.reshape(permuted), inv)
        return a.reshape(self.shape) if a.shape != self.shape else a

    def describe(self, torch_name: str) -> str:
        if self.perm is not None:
            if len(self.perm) == 2:
                return (f"stored (in, out) {self.shape}, torch's {torch_name} is (out, in) {self.torch_shape}: "
                        f"compared as {torch_name}.T")
            return (f"stored {self.shape}, torch's {torch_name} is {self.torch_shape}: compared as "
                    f"{torch_name}.permute{self.perm}")
        return f"stored {self.shape}, torch's {torch_name} is {self.torch_shape}: reshaped"

    def __repr__(self):
        return f"Layout({self.shape} -> {self.torch_shape}, perm={self.perm})"


_MAP_RE = re.compile(r"^\s*(\w[\w.]*?)\s*(?:\.(T)|\.permute\(([\d,\s]+)\))?\s*$")


def parse_target(text):
    """``"weight.T"`` -> ``("weight", "T")``; ``"weight.permute(2, 3, 1, 0)"`` -> ``("weight", (2, 3, 1, 0))``;
    ``"bias"`` -> ``("bias", None)``; None if it is not such a string."""
    if not isinstance(text, str):
        return None
    m = _MAP_RE.match(text)
    if not m:
        return None
    name, t, perm = m.groups()
    if perm is not None:
        return name, tuple(int(i) for i in perm.split(",") if i.strip())
    return name, "T" if t else None


def layout_for(user_name: str, shape, torch_name: str, torch_shape, how=None):
    """The ``Layout`` of your array of ``shape`` for torch's ``torch_shape``, or a string saying
    why none fits. ``how``: ``"T"``, a permutation, or None (decide from the shapes)."""
    shape, torch_shape = tuple(shape), tuple(torch_shape)
    if how == "T":
        how = tuple(reversed(range(len(shape))))
    if how == "same":   # named in the map without a layout: torch's, up to size-1 axes
        if tuple(d for d in shape if d != 1) == tuple(d for d in torch_shape if d != 1):
            return Layout(shape, torch_shape)
        return (f"{user_name} has shape {shape}, torch's {torch_name} {torch_shape}: map it as "
                f"'{torch_name}.T' or '{torch_name}.permute(...)'")
    if isinstance(how, tuple):
        if sorted(how) != list(range(len(shape))):
            return f"permute{how} is not a permutation of the {len(shape)} axes of {user_name} {shape}"
        permuted = tuple(shape[i] for i in how)
        if int(np.prod(permuted)) != int(np.prod(torch_shape)) or \
                tuple(d for d in permuted if d != 1) != tuple(d for d in torch_shape if d != 1):
            return f"{user_name} {shape} mapped with {how} is {permuted}, torch's {torch_name} is {torch_shape}"
        return Layout(shape, torch_shape, how)
    rev = tuple(reversed(shape))
    if shape == torch_shape:
        if len(shape) == 2 and shape[0] == shape[1] and user_name in FROM_SCRATCH_LAYOUT:
            return Layout(shape, torch_shape, (1, 0))
        return Layout(shape, torch_shape)
    if len(shape) >= 2 and rev == torch_shape:
        return Layout(shape, torch_shape, tuple(reversed(range(len(shape)))))
    if tuple(d for d in shape if d != 1) == tuple(d for d in torch_shape if d != 1):
        return Layout(shape, torch_shape)
    if len(shape) == len(torch_shape) and len(shape) <= 5:
        fits = [p for p in itertools.permutations(range(len(shape))) if tuple(shape[i] for i in p) == torch_shape]
        if len(fits) == 1:
            return Layout(shape, torch_shape, fits[0])
        if len(fits) > 1:
            return (f"{user_name} {shape} fits torch's {torch_name} {torch_shape} in {len(fits)} axis orders: "
                    f"say which with params={{{user_name!r}: '{torch_name}.permute(...)'}} "
                    "(your axes in torch's order)")
    return f"{user_name} has shape {shape}, torch's {torch_name} {torch_shape}"


class Slot:
    """One parameter of your layer: where it lives, where its gradient appears, its torch name and layout."""

    def __init__(self, name, get, put, grad, where, grad_where, zero=None):
        self.name, self._get, self._put, self._grad, self._zero = name, get, put, grad, zero
        self.where, self.grad_where = where, grad_where   # for messages: "self.W", "self.dW or ..."
        self.torch, self.layout = name, None

    def value(self):
        a = self._get()
        return a if self.layout is None else self.layout.to_torch(np.asarray(a))

    def set(self, a) -> None:
        self._put(a if self.layout is None else self.layout.from_torch(a))

    def grad(self):
        g = self._grad()
        if g is None or self.layout is None:
            return g
        g = np.asarray(g)
        return self.layout.to_torch(g) if g.shape == self.layout.shape else g

    def raw(self):
        return self._get()

    def zero(self) -> None:
        """Reset a gradient ``backward`` left before to zeros (so ``+=`` accumulates from zero)."""
        if self._zero is not None:
            self._zero()


def _attr_slot(obj, n, grad_dicts=("grads", "gradients")):
    names = grad_attr_names(n)

    def grad():
        for g in names:
            v = getattr(obj, g, None)
            if isinstance(v, np.ndarray) or isinstance(v, np.generic):
                return v
        for d in grad_dicts:
            v = getattr(obj, d, None)
            if isinstance(v, dict) and n in v:
                return v[n]
        return None

    def zero():
        for g in names:
            if isinstance(getattr(obj, g, None), np.ndarray):
                setattr(obj, g, np.zeros_like(getattr(obj, n)))
                return
        for d in grad_dicts:
            v = getattr(obj, d, None)
            if isinstance(v, dict) and isinstance(v.get(n), np.ndarray):
                v[n] = np.zeros_like(getattr(obj, n))

    return Slot(n, lambda: getattr(obj, n), lambda a: setattr(obj, n, a), grad, f"self.{n}",
                f"self.{' or self.'.join(names[:4])} (or ...)", zero)


def _dict_slot(obj, params_attr, grads_attr, n):
    def grad():
        g = getattr(obj, grads_attr, None)
        return g.get(n) if isinstance(g, dict) else None

    def zero():
        g = getattr(obj, grads_attr, None)
        if isinstance(g, dict) and isinstance(g.get(n), np.ndarray):
            g[n] = np.zeros_like(getattr(obj, params_attr)[n])

    return Slot(n, lambda: getattr(obj, params_attr)[n], lambda a: getattr(obj, params_attr).__setitem__(n, a), grad,
                f"self.{params_attr}[{n!r}]", f"self.{grads_attr}[{n!r}]", zero)


def buffer_slots(obj) -> "OrderedDict":
    """Running statistics: ``{name: (value, setter)}`` from a config dict (CS231n ``bn_param``), a
    ``parameters`` dict (numpy-ml) or attributes (``self.running_mean``)."""
    out = OrderedDict()
    if isinstance(obj, FunctionPair):
        for name in obj.config_names:
            cfg = obj.config.get(name)
            if isinstance(cfg, dict):
                for k in BUFFER_NAMES:
                    if isinstance(cfg.get(k), np.ndarray):
                        out[k] = (cfg[k], lambda a, c=cfg, k=k: c.__setitem__(k, a))
        return out
    d = getattr(obj, "parameters", None)
    if isinstance(d, dict):
        for k in BUFFER_NAMES:
            if is_float_array(d.get(k)):
                out[k] = (d[k], lambda a, k=k: obj.parameters.__setitem__(k, a))
        return out
    attrs = vars(obj) if hasattr(obj, "__dict__") else {}
    for k in BUFFER_NAMES:
        if is_float_array(attrs.get(k)):
            out[k] = (attrs[k], lambda a, k=k: setattr(obj, k, a))
    return out


def is_float_array(v) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)


def method_slots(obj, torch_names=()):
    """``params()`` / ``grads()`` methods: each array ``params()`` returns is found among your
    attributes (so its dtype can be changed); a list is named by the torch module's order."""
    got = obj.params()
    items = list(got.items()) if isinstance(got, dict) else list(enumerate(got)) \
        if isinstance(got, (list, tuple)) else None
    if items is None:
        return None, (f"{type(obj).__name__}.params() returned {type(got).__name__}: it must return a dict "
                      "{name: array} or a list of arrays")
    attrs = {id(v): k for k, v in vars(obj).items() if isinstance(v, np.ndarray)}
    slots = []
    for pos, (key, v) in enumerate(items):
        if id(v) not in attrs:
            return None, (f"{type(obj).__name__}.params() returned an array for {key!r} that is none of its "
                          "attributes: return the attribute itself (self.W, not a copy), so the checks can set it")
        attr = attrs[id(v)]
        name = key if isinstance(key, str) else (list(torch_names)[pos] if pos < len(torch_names) else attr)

        def grad(key=key, pos=pos):
            g = obj.grads() if callable(getattr(obj, "grads", None)) else None
            if isinstance(g, dict):
                return g.get(key)
            if isinstance(g, (list, tuple)):
                return g[pos] if pos < len(g) else None
            return None

        s = Slot(name, lambda a=attr: getattr(obj, a), lambda x, a=attr: setattr(obj, a, x), grad,
                 f"self.params()[{key!r}] (self.{attr})", f"self.grads()[{key!r}]")
        s.attr = attr
        slots.append(s)
    return slots, None


def detect(obj, names=None):
    """``(convention, slots, buffers_getter)`` for a plain object (not a scratch module):
    ``names``, when given, are the keys of a ``params=`` map (which attributes are parameters)."""
    if isinstance(getattr(obj, "params", None), dict):
        keys = list(obj.params) if names is None else [n for n in names if n in obj.params]
        return "params dict", [_dict_slot(obj, "params", "grads", n) for n in keys]
    if isinstance(getattr(obj, "parameters", None), dict) and isinstance(getattr(obj, "gradients", None), dict):
        keys = [k for k in obj.parameters if k not in BUFFER_NAMES] if names is None else \
            [n for n in names if n in obj.parameters]
        return "parameters/gradients dicts", [_dict_slot(obj, "parameters", "gradients", n) for n in keys]
    if callable(getattr(obj, "params", None)):
        return "params()/grads() methods", None
    d = vars(obj) if hasattr(obj, "__dict__") else {}
    keys = [k for k in ATTRIBUTE_NAMES if is_float_array(d.get(k))] if names is None else \
        [n for n in names if n in d]
    if keys:
        return "attributes", [_attr_slot(obj, n) for n in keys]
    return None, []


def alias_target(name, torch_shapes):
    """The torch parameter an alias stands for: ``weight``, or the one ``<path>.weight`` (a
    Sequential's ``0.weight``) when the module has exactly one."""
    t = ALIASES.get(name)
    if t is None:
        return None
    if t in torch_shapes:
        return t
    ends = [k for k in torch_shapes if k.endswith("." + t)]
    return ends[0] if len(ends) == 1 else None


def resolve_names(slots, torch_shapes, mapping) -> tuple:
    """Give each slot its torch name and layout; returns ``(notes, problem)``."""
    notes, problems = [], []
    taken = {}
    for s in slots:
        target = None
        if mapping and s.name in mapping:
            target = parse_target(mapping[s.name])
            target = (target[0], target[1] or "same")
        elif s.name in torch_shapes:   # torch's name: torch's layout (size-1 axes aside)
            target = (s.name, "same")
        elif alias_target(s.name, torch_shapes):
            target = (alias_target(s.name, torch_shapes), None)
        if target is None:
            continue
        tname, how = target
        if tname not in torch_shapes:
            problems.append(f"{s.where} is mapped to {tname!r}, which the torch module has not "
                            f"(it has {list(torch_shapes)})")
            continue
        if tname in taken:
            problems.append(f"{taken[tname]} and {s.where} both map to torch's {tname!r}")
            continue
        taken[tname] = s.where
        shape = np.shape(s.raw())
        lay = layout_for(s.name, shape, tname, torch_shapes[tname], how)
        if isinstance(lay, str):
            problems.append(lay)
            continue
        s.torch = tname
        s.layout = None if lay.identity else lay
        if not lay.identity:
            notes.append(f"{s.name} {lay.describe(tname)}")
        elif tname != s.name:
            notes.append(f"{s.name} is {tname}")
    return notes, "; ".join(problems) or None


def suggest_map(slots, torch_shapes) -> str:
    """A ``params={...}`` map pairing your unmapped parameters with torch's by order."""
    mine = [s for s in slots if s.torch not in torch_shapes or s.torch == s.name and s.name not in torch_shapes]
    free = [t for t in torch_shapes if t not in {s.torch for s in slots}]
    def target(s, t):
        shape = tuple(np.shape(s.raw()))
        return f"{t}.T" if len(shape) == 2 and shape[::-1] == tuple(torch_shapes[t]) and shape[0] != shape[1] else t

    pairs = ", ".join(f"{s.name!r}: {target(s, t)!r}" for s, t in zip(mine, free))
    return f"params={{{pairs}}}" if pairs else ""


# --- function pairs with a cache (CS231n layers.py) -----------------------------------------------

def _config_from_torch(name, module, train: bool):
    """CS231n's config dicts, read from the torch module (``conv_param``, ``pool_param``, ``bn_param``)."""
    def one(v, what):
        v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        if len(set(v)) != 1:
            raise ValueError(f"{what} {v} differs between height and width: pass {name}=... yourself")
        return v[0]

    if name == "conv_param" and hasattr(module, "padding") and hasattr(module, "stride"):
        return {"stride": one(module.stride, "stride"), "pad": one(module.padding, "padding")}
    if name == "pool_param" and hasattr(module, "kernel_size"):
        k = module.kernel_size if isinstance(module.kernel_size, (tuple, list)) else (module.kernel_size,) * 2
        s = module.stride if module.stride is not None else k
        if any(_as_pair(getattr(module, "padding", 0))) or any(d != 1 for d in _as_pair(getattr(module, "dilation", 1))):
            raise ValueError(f"pool_param (pool_height, pool_width, stride) has no padding or dilation, and "
                             f"{type(module).__name__} has padding={module.padding}: check with padding=0 "
                             "(sweep_layer: axes={'padding': [0]})")
        return {"pool_height": k[0], "pool_width": k[1], "stride": one(s, "stride")}
    if name in ("bn_param", "ln_param") and hasattr(module, "eps"):
        cfg = {"mode": "train" if train else "test", "eps": module.eps}
        if getattr(module, "momentum", None) is not None:
            cfg["momentum"] = 1 - module.momentum   # CS231n: running = momentum running + (1 - momentum) batch
        return cfg
    return None


def _as_pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_cache_pair(forward, backward) -> bool:
    """``forward(x, *params, cfg) -> (out, cache)`` / ``backward(dout, cache) -> (dx, *dparams)``:
    backward's second argument is named like ``cache``, or forward takes more than the input."""
    try:
        fsig = [p for p in inspect.signature(forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        bsig = [p for p in inspect.signature(backward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return (len(bsig) >= 2 and "cache" in bsig[1].name) or len(fsig) > 1


class FunctionPair:
    """A layer written as two functions with a cache, CS231n style::

        out, cache = affine_forward(x, w, b)          dx, dw, db = affine_backward(dout, cache)
        out, cache = conv_forward_naive(x, w, b, conv_param)
        out, cache = relu_forward(x)                  dx = relu_backward(dout, cache)

    The arguments after ``x`` are parameters, except config dicts (a name ending in
    ``param``, or given in ``config``): those come from ``config`` or are read from the
    torch module (``conv_param`` = {stride, pad}, ``pool_param`` = {pool_height,
    pool_width, stride}, ``bn_param`` = {mode, eps, momentum}, CS231n's momentum being
    1 - torch's). Parameter values: given in ``params``, or made from the torch module's
    shapes (a 2-D ``w``/``W`` stored (in, out), as CS231n's ``affine_forward``). Running
    statistics your forward stores in a config dict (``bn_param['running_mean']``) are
    buffers.
    """

    def __init__(self, forward, backward, params=None, config=None, inputs: int = 1):
        self.fwd, self.bwd = forward, backward
        self.__name__ = getattr(forward, "__name__", "forward")
        self.config = dict(config or {})
        self.params = OrderedDict((k, np.asarray(v)) for k, v in (params or {}).items())
        self.grads = {}
        self.training = True
        self.cache = None
        self.set_inputs(inputs)

    def set_inputs(self, n: int) -> None:
        """``n`` inputs come first (``rnn_step_forward(x, prev_h, Wx, Wh, b)``: 2); the arguments
        after them are parameters and config dicts, and backward returns ``(dx1, ..., dxn, *dparams)``."""
        sig = [p for p in inspect.signature(self.fwd).parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.inputs = n
        self.input_names = [p.name for p in sig[:n]]
        self.arg_names = [p.name for p in sig[n:]]
        self.config_names = [n for n in self.arg_names
                             if n in self.config or n.endswith("param") or n.endswith("params")]
        self.param_names = [n for n in self.arg_names if n not in self.config_names]

    def bind(self, module, torch_shapes, train: bool = True):
        """Fill missing config dicts and parameter arrays from the torch module."""
        for n in self.config_names:
            if n not in self.config:
                cfg = _config_from_torch(n, module, train)
                if cfg is None:
                    raise ValueError(f"{self.__name__}'s argument {n!r} is a config dict nn-parity cannot read from "
                                     f"{type(module).__name__}: pass it, nnparity.pair(forward, backward, {n}={{...}})")
                self.config[n] = cfg
        torch_names = list(torch_shapes)
        for pos, n in enumerate(self.param_names):
            if n in self.params:
                continue
            t = n if n in torch_shapes else ALIASES.get(n) if ALIASES.get(n) in torch_shapes else \
                torch_names[pos] if pos < len(torch_names) else None
            if t is None:
                raise ValueError(f"{self.__name__}'s argument {n!r} has no torch parameter to take its shape from "
                                 f"(torch has {torch_names}): pass its value, nnparity.pair(..., params={{{n!r}: "
                                 "array}})")
            shape = tuple(torch_shapes[t])
            if len(shape) == 2 and n in FROM_SCRATCH_LAYOUT:
                shape = shape[::-1]
            self.params[n] = np.zeros(shape)
        for name in self.config_names:
            cfg = self.config.get(name)
            if isinstance(cfg, dict) and "mode" in cfg:
                bufs = dict(module.named_buffers()) if hasattr(module, "named_buffers") else {}
                for b in BUFFER_NAMES:
                    if b in bufs and b not in cfg:
                        cfg[b] = bufs[b].detach().numpy().astype(np.float64)

    def train(self, mode: bool = True):
        self.training = mode
        for name in self.config_names:
            cfg = self.config.get(name)
            if isinstance(cfg, dict) and "mode" in cfg:
                cfg["mode"] = "train" if mode else "test"

    def forward(self, *xs):
        args = [self.params[n] if n in self.params else self.config[n] for n in self.arg_names]
        res = self.fwd(*xs, *args)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"{self.__name__} must return (out, cache), got {type(res).__name__}")
        out, self.cache = res
        return out

    def backward(self, dout):
        res = self.bwd(dout, self.cache)
        n = self.inputs
        if not self.param_names and n == 1:
            return res[0] if isinstance(res, tuple) and len(res) == 1 else res
        if not (isinstance(res, tuple) and len(res) == n + len(self.param_names)):
            raise TypeError(f"{getattr(self.bwd, '__name__', 'backward')} must return "
                            f"({', '.join(['d' + i for i in self.input_names] + ['d' + p for p in self.param_names])}),"
                            f" got {len(res) if isinstance(res, tuple) else type(res).__name__}"
                            f"{' values' if isinstance(res, tuple) else ''}")
        for name, g in zip(self.param_names, res[n:]):
            self.grads[name] = g
        return res[0] if n == 1 else tuple(res[:n])
