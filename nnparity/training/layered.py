"""A user's network as its layers: found, read as one network, and watched layer by layer.

``check_steps`` compares a whole network; to say which layer got it wrong (its OWN
error) and which only passed on an error made before it (INHERITED), the way
``nnparity check`` does for the documented networks (``nnparity.diagnosis.localize``),
it needs the network's layers, matched with the torch mirror's top-level children.
``find_layers`` finds them, in this order (the first that applies wins):

=========================================  ==================================================
your network has                           its layers, and their names
=========================================  ==================================================
children (a scratch ``Sequential``)        ``named_children()``, named as they are
a ``layers`` list or tuple                 in order, named like the torch mirror's children
                                           (``nn.Sequential(fc1=..., act=...)`` or ``0, 1, ...``)
a ``layers`` dict                          its entries, under their keys
attributes named like torch's children     ``self.fc1``, ``self.tanh1`` ...: in torch's order
=========================================  ==================================================

Each layer is any layer convention of ``nnparity.training.adapters``. A network whose
own object holds no parameters (the layers hold them) is read through
``LayeredNetwork``: its parameters are its layers', named ``<layer>.<torch name>``
(``fc1.weight``), so they line up with the mirror's ``state_dict()``.

``LayerTap`` watches a network's forward and backward without changing them: your
network's own ``forward`` / ``backward`` run as written (the plumbing between layers
is part of what is checked), and each layer's input, output and upstream gradient are
kept as it passes.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from nnparity.training.adapters import LayerAdapter
from nnparity.training.masks import step_mask


def _is_layer(v) -> bool:
    return callable(getattr(v, "forward", None)) and callable(getattr(v, "backward", None)) \
        and not type(v).__module__.startswith("torch") and not isinstance(v, type)


def find_layers(obj, torch_net) -> "OrderedDict | None":
    """``{name: your layer object}`` in forward order, named like ``torch_net``'s top-level
    children, or None when the layers cannot be matched with them (see the module docstring)."""
    tnames = [n for n, _ in torch_net.named_children()]
    if not tnames:
        return None
    children = getattr(obj, "_modules", None)
    if callable(getattr(obj, "named_children", None)) and isinstance(children, dict) and children:
        found = OrderedDict(obj.named_children())
        return found if list(found) == tnames else None
    layers = getattr(obj, "layers", None)
    if isinstance(layers, dict) and all(_is_layer(v) for v in layers.values()):
        return OrderedDict(layers) if list(layers) == tnames else None
    if isinstance(layers, (list, tuple)) and layers and all(_is_layer(v) for v in layers):
        if len(layers) != len(tnames) or len({id(v) for v in layers}) != len(layers):
            return None
        return OrderedDict(zip(tnames, layers))
    attrs = vars(obj) if hasattr(obj, "__dict__") else {}
    if all(_is_layer(attrs.get(n)) for n in tnames) and len({id(attrs[n]) for n in tnames}) == len(tnames):
        return OrderedDict((n, attrs[n]) for n in tnames)
    return None


class LayeredNetwork(LayerAdapter):
    """A network whose parameters live in its layers (``self.layers = [Dense(...), ...]``),
    read as one layer: parameters, gradients and buffers are the layers', prefixed by
    the layer's name; forward and backward are your network's own."""

    def __init__(self, obj, layers: "OrderedDict", name: str | None = None):
        super().__init__(obj, name)
        self.kind = "layers"
        self.convention = "a network of layers (" + ", ".join(
            f"{n}: {type(v).__name__}" for n, v in layers.items()) + ")"
        self.children = OrderedDict((n, LayerAdapter(v, n)) for n, v in layers.items())

    def bind(self, module, train: bool = True) -> None:
        if self._bound is module:
            return
        mods = dict(module.named_children())
        self.notes = []
        for n, child in self.children.items():
            child.bind(mods[n], train)
            self.notes += [f"{n}: {note}" for note in child.notes]
        self._bound = module

    def _each(self, method: str, arrays: dict) -> None:
        for n, child in self.children.items():
            mine = {k[len(n) + 1:]: v for k, v in arrays.items() if k.startswith(n + ".")}
            if mine:
                getattr(child, method)(mine)

    def _joined(self, method: str) -> "OrderedDict":
        return OrderedDict((f"{n}.{k}", v) for n, child in self.children.items()
                           for k, v in getattr(child, method)().items())

    def params(self):
        return self._joined("params")

    def grads(self):
        return self._joined("grads")

    def buffers(self):
        return self._joined("buffers")

    def set_params(self, arrays: dict) -> None:
        self._each("set_params", arrays)

    def set_buffers(self, arrays: dict) -> None:
        self._each("set_buffers", arrays)

    def zero_grad(self) -> None:
        for child in self.children.values():
            child.zero_grad()

    def train(self, mode: bool = True) -> None:
        self._mode = bool(mode)
        if callable(getattr(self.obj, "train", None)) or hasattr(self.obj, "training"):
            super().train(mode)
        for child in self.children.values():
            child.train(mode)

    @property
    def training(self):
        return next((c.training for c in self.children.values() if c.training is not None), None)

    def snapshot(self) -> dict:
        return {n: child.snapshot() for n, child in self.children.items()}

    def restore(self, snap: dict) -> None:
        for n, child in self.children.items():
            child.restore(snap[n])

    def astype(self, dtype) -> None:
        for child in self.children.values():
            child.astype(dtype)

    def input_grad_on(self):
        undo = [child.input_grad_on() for child in self.children.values()]
        return lambda: [u() for u in undo]

    def _modules(self):
        return [(f"{n}.{p}" if p else n, m) for n, child in self.children.items() for p, m in child._modules()]

    def suggest_map(self, torch_shapes) -> str:
        return ""


class LayerTap:
    """``with LayerTap(layers): net.forward(x) ...`` keeps, for each layer, its input, output and
    upstream gradient of the step (``inputs``, ``outputs``, ``upstream``), and whether a layer
    was called more than once (``reused``: then its records are its first call's).

    ``masks``: names of dropout layers whose mask is read right after their (first) forward
    (``masks[name]``, the mask protocol of ``nnparity.training.masks``), before your backward can
    draw or overwrite one, with NumPy's global random state just before it (``random_states``:
    a re-run alone draws the same mask from ``np.random`` too)."""

    def __init__(self, layers: "OrderedDict", masks=()):
        self.layers = layers
        self.mask_names = tuple(masks)
        self.masks, self.random_states = OrderedDict(), {}
        self.inputs, self.outputs, self.upstream = OrderedDict(), OrderedDict(), OrderedDict()
        self.reused = []
        self._saved = []

    def __enter__(self):
        self.unwatchable = None
        for name, obj in self.layers.items():
            if not hasattr(obj, "__dict__"):   # __slots__: nothing can be put in front of its methods
                self.unwatchable = name
                continue
            for method, wrap in (("forward", self._forward), ("backward", self._backward)):
                self._saved.append((obj, method, vars(obj).get(method)))
                object.__setattr__(obj, method, wrap(name, obj, getattr(obj, method)))
        return self

    def __exit__(self, *exc):
        for obj, method, own in reversed(self._saved):
            if own is None:
                object.__delattr__(obj, method)
            else:
                object.__setattr__(obj, method, own)
        self._saved = []
        return False

    def _forward(self, name, obj, fn):
        def forward(x, *args, **kwargs):
            wants_mask = name in self.mask_names and name not in self.masks
            if wants_mask:
                self.random_states[name] = np.random.get_state()
            y = fn(x, *args, **kwargs)
            if wants_mask:
                self.masks[name] = step_mask(name, obj, x)
            out = y if y is not None else getattr(obj, "output", None)   # the book's self.output
            if name in self.outputs:
                self.reused.append(name)
            elif isinstance(out, np.ndarray):
                self.inputs[name] = np.array(x, copy=True)
                self.outputs[name] = np.array(out, copy=True)
            return y
        return forward

    def _backward(self, name, obj, fn):
        def backward(dy, *args, **kwargs):
            if name not in self.upstream and isinstance(dy, np.ndarray):
                self.upstream[name] = np.array(dy, copy=True)
            return fn(dy, *args, **kwargs)
        return backward

    def complete(self) -> bool:
        """Every layer was seen once, forward and backward."""
        names = list(self.layers)
        return not self.reused and not getattr(self, "unwatchable", None) and list(self.outputs) == names \
            and set(self.upstream) == set(names)

    def problem(self) -> str:
        if getattr(self, "unwatchable", None):
            return f"layer {self.unwatchable} has __slots__, so its calls cannot be watched"
        if self.reused:
            return f"layer {self.reused[0]} ran more than once in a step"
        missing = [n for n in self.layers if n not in self.outputs or n not in self.upstream]
        if missing:
            return f"layer {missing[0]}'s forward or backward was not called through the layer object"
        return f"the layers ran in the order {list(self.outputs)}, not {list(self.layers)}"
