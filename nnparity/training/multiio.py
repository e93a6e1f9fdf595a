"""Layers with several inputs or outputs: ``forward(a, b) -> y`` or ``-> (y1, y2)``,
``backward(dy) -> (da, db)`` or ``backward(dy1, dy2) -> ...``.

``check_layer(mine, torch_equivalent, input_shape=[(8, 16), (8, 4)])`` (or ``x=(a, b)``)
packs the inputs side by side into one (N, sum of features) array, and the outputs and
gradients likewise, so every check of a one-input layer (autograd parity, finite
differences, float32, patterns) runs unchanged on the packed arrays. The torch side
unpacks with differentiable slices, calls ``torch_equivalent(a, b)``, and packs its
outputs with ``torch.cat``. A packed element ``(n, j)`` is named back in the context
(``inputs packed as columns: a [0:16), b [16:20)``). Every input needs the same batch
size N (the first axis).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from nnparity.training.adapters import ArgumentError, LayerAdapter, ProtocolError, call_torch, call_user, describe_array


def is_multi(input_shape, x) -> bool:
    """Several inputs: a list/tuple of shapes, or a list/tuple of arrays as ``x``."""
    if isinstance(input_shape, (list, tuple)) and input_shape and all(isinstance(s, (list, tuple))
                                                                      for s in input_shape):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(a, np.ndarray) for a in x)


def pack(arrays) -> np.ndarray:
    n = arrays[0].shape[0]
    return np.concatenate([np.asarray(a).reshape(n, -1) for a in arrays], axis=1)


def unpack(packed, shapes) -> list:
    out, start = [], 0
    for s in shapes:
        width = int(np.prod(s[1:]))
        out.append(packed[:, start:start + width].reshape((packed.shape[0],) + tuple(s[1:])))
        start += width
    return out


def columns(shapes, what: str) -> str:
    parts, start = [], 0
    for i, s in enumerate(shapes):
        width = int(np.prod(s[1:]))
        parts.append(f"{what}{i} {tuple(s)} [{start}:{start + width})")
        start += width
    return ", ".join(parts)


def inputs(input_shape, x, seed: int):
    """``(packed input, shapes)`` from several shapes (seeded N(0, 1)) or several arrays."""
    if x is not None:
        arrays = [np.asarray(a, dtype=np.float64) for a in x]
    else:
        for s in input_shape:
            if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s) or len(s) < 1:
                raise ArgumentError(f"input_shape {tuple(s)} of one input is not a tuple of positive ints")
        rng = np.random.default_rng(seed)
        arrays = [rng.standard_normal(tuple(s)) for s in input_shape]
    shapes = [a.shape for a in arrays]
    if any(len(s) < 1 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ArgumentError(f"several inputs need the same batch size on their first axis, got shapes {shapes}")
    return pack(arrays), shapes


class PackedLayer(LayerAdapter):
    """Your layer with several inputs or outputs, seen as a one-input, one-output layer on packed arrays."""

    def __init__(self, obj, shapes, name=None, params=None):
        from nnparity.training.conventions import FunctionPair, is_cache_pair

        if isinstance(obj, LayerAdapter):
            obj = obj.obj
        if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj) and is_cache_pair(*obj):
            obj = FunctionPair(*obj)
        if isinstance(obj, FunctionPair):   # f(x1, x2, *params, cfg) -> (out, cache), b(dout, cache) -> (dx1, dx2, ...)
            obj.set_inputs(len(shapes))
        super().__init__(obj, name, params)
        if self.kind == "functions" or not callable(getattr(self.obj, "forward", None)):
            raise ProtocolError(f"{self.name}: several inputs are checked for a layer object with forward(a, b, ...) "
                                "and backward(dy, ...), or a pair with a cache f(a, b, *params) -> (out, cache), "
                                "backward(dout, cache) -> (da, db, *dparams); not for forward(x), backward(x, dy)")
        self.in_shapes = [tuple(s) for s in shapes]
        self.out_shapes = None
        self.packing = f"inputs packed as columns: {columns(self.in_shapes, 'x')}"
        self.notes.append(self.packing)

    def bind(self, module, train: bool = True) -> None:
        super().bind(module, train)
        if self.packing not in self.notes:
            self.notes.insert(0, self.packing)

    def bind_function(self, fn) -> None:
        super().bind_function(fn)
        if self.packing not in self.notes:
            self.notes.insert(0, self.packing)

    def outputs_note(self) -> str:
        """How several outputs were packed (known after a forward), or ''."""
        if not self.out_shapes or len(self.out_shapes) < 2:
            return ""
        return f"outputs packed as columns: {columns(self.out_shapes, 'y')}"

    def forward(self, x):
        xs = unpack(x, self.in_shapes)
        y = call_user(f"{self.name}.forward", self._with_arguments(self.obj.forward), *xs,
                      given=f" on inputs of {', '.join(describe_array(a) for a in xs)}")
        ys = list(y) if isinstance(y, (tuple, list)) else [y]
        if not all(isinstance(a, np.ndarray) and a.ndim >= 1 and a.shape[0] == x.shape[0] for a in ys):
            raise ProtocolError(f"{self.name}.forward returned {[describe_array(a) for a in ys]}: each output must "
                                f"be an array with the batch size {x.shape[0]} on its first axis")
        self.out_shapes = [a.shape for a in ys]
        return pack(ys)

    def backward(self, dy):
        gs = unpack(dy, self.out_shapes)
        dx = call_user(f"{self.name}.backward", self.obj.backward, *gs,
                       given=f" on upstream gradients of {', '.join(describe_array(g) for g in gs)}")
        dxs = list(dx) if isinstance(dx, (tuple, list)) else [dx]
        if len(dxs) != len(self.in_shapes) or not all(isinstance(a, np.ndarray) and a.shape == s
                                                       for a, s in zip(dxs, self.in_shapes)):
            raise ProtocolError(f"{self.name}.backward returned {[describe_array(a) for a in dxs]}: it must return "
                                f"one gradient per input, shaped like them: {self.in_shapes}")
        return pack(dxs)


def torch_packed(torch_equivalent, in_shapes):
    """The torch equivalent on packed inputs: a module delegating to yours, or a function."""
    import torch

    def run(xp, call):
        xs, start = [], 0
        for s in in_shapes:
            width = int(np.prod(s[1:]))
            xs.append(xp[:, start:start + width].reshape((xp.shape[0],) + tuple(s[1:])))
            start += width
        y = call(*xs)
        ys = list(y) if isinstance(y, (tuple, list)) else [y]
        return torch.cat([t.reshape(xp.shape[0], -1) for t in ys], dim=1)

    if not isinstance(torch_equivalent, torch.nn.Module):
        def packed_function(xp, **params):
            return run(xp, lambda *xs: torch_equivalent(*xs, **params))
        packed_function.__name__ = getattr(torch_equivalent, "__name__", "the torch function")
        return packed_function

    class Packed(torch.nn.Module):
        """Delegates parameters, buffers, mode and dtype to your module; packs its inputs and outputs."""

        def __init__(self, inner):
            super().__init__()
            object.__setattr__(self, "inner", inner)   # not registered: parameters keep their names

        def named_parameters(self, *a, **k):
            return self.inner.named_parameters(*a, **k)

        def parameters(self, *a, **k):
            return self.inner.parameters(*a, **k)

        def named_buffers(self, *a, **k):
            return self.inner.named_buffers(*a, **k)

        def train(self, mode=True):
            self.inner.train(mode)
            return super().train(mode)

        def to(self, *a, **k):
            self.inner.to(*a, **k)
            return self

        def zero_grad(self, set_to_none=True):
            self.inner.zero_grad(set_to_none=set_to_none)

        def forward(self, xp):
            return run(xp, lambda *xs: call_torch(f"torch {type(self.inner).__name__}", self.inner, *xs))

    p = Packed(torch_equivalent)
    Packed.__module__ = type(torch_equivalent).__module__
    Packed.__name__ = type(torch_equivalent).__name__
    return p
