"""Stochastic gradient descent with PyTorch's update rule."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class SGD:
    """Plain or momentum SGD, step for step the rule of ``torch.optim.SGD``
    (no dampening, no Nesterov, no weight decay)::

        buf = grad                      (first step)
        buf = momentum * buf + grad     (later steps)
        p   = p - lr * buf              (p = p - lr * grad when momentum == 0)

    Args:
        named_params: ``(name, Parameter)`` pairs, e.g. ``model.named_parameters()``.
        lr: learning rate (> 0).
        momentum: momentum factor (>= 0).

    The momentum buffers are the optimizer's state: ``state_dict()`` returns them
    keyed ``<param name>.momentum_buffer``.
    """

    def __init__(self, named_params, lr: float, momentum: float = 0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.params = OrderedDict(named_params)
        self.lr, self.momentum = lr, momentum
        self.buffers: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._products: dict = {}  # (shape, dtype) -> the array lr * g is written into, kept between steps

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.zero_grad()

    def step(self) -> None:
        # buf = grad (first step), then momentum * buf + grad;  p = p - lr * buf   (buf = grad without momentum)
        for name, p in self.params.items():
            g = p.grad
            if self.momentum:
                g = self.buffers[name] = self._momentum_buffer(self.buffers.get(name), g)
            p.data -= self._update(g)

    def _momentum_buffer(self, buf, g):
        """The new buffer: g at first (buf None), then momentum * buf + g in place; a selftest slip may override it."""
        if buf is None:
            return g.copy()
        buf *= self.momentum
        buf += g
        return buf

    def _update(self, g):
        """What a step subtracts from a parameter, lr * g; a selftest slip may override it."""
        # a Python-float lr keeps the parameter's dtype (NumPy 2 promotion rules); the product goes
        # into an array kept for g's shape (step() subtracts it at once): the same numbers as
        # self.lr * g, without a fresh allocation of a weight-sized array at every step
        key = (g.shape, g.dtype)
        out = self._products.get(key)
        if out is None:
            out = self._products[key] = np.empty_like(g)
        return np.multiply(g, self.lr, out=out)

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((f"{k}.momentum_buffer", v.copy()) for k, v in self.buffers.items())

    def load_state_dict(self, state: dict) -> None:
        expected = {f"{k}.momentum_buffer": k for k in self.params}
        unknown = [k for k in state if k not in expected]
        if unknown:
            raise KeyError(f"optimizer state has unknown keys {unknown}; expected a subset of {list(expected)}")
        self.buffers = OrderedDict()
        for key, name in expected.items():
            if key in state:
                p = self.params[name]
                buf = np.asarray(state[key])
                if buf.shape != p.data.shape or buf.dtype != p.data.dtype:
                    raise ValueError(f"{key}: expected shape {p.data.shape} dtype {p.data.dtype}, "
                                     f"got {buf.shape} {buf.dtype}")
                self.buffers[name] = buf.copy()
