"""A learner's small network, checked a whole training step at a time with ``nnparity.check_steps``.

The network is the kind a course has you write: layer objects in a list, a loop
forward and a loop back, a softmax cross-entropy that returns its value and its
gradient, and plain SGD::

    x (N, 12) -> Dense 12 -> 16 -> Tanh -> Dense 16 -> 16 -> ReLU -> Dense 16 -> 5 -> softmax CE

``Dense`` keeps ``W`` stored (in, out) for ``x @ W`` and ``b`` as (1, out), with
gradients ``dW`` and ``db``: nn-parity reads them, maps ``W`` onto torch's ``weight``
(out, in) and names them after the mirror's children (``fc2.weight``). The layers are
matched with the torch mirror's top-level children by position, so each one's output
and upstream gradient are compared too, and at a divergence every layer is re-run
alone on the torch side's numbers (own error or inherited)::

    nnparity.check_steps(build(), softmax_cross_entropy, sgd(0.1), torch_mirror(),
                         torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches())

``build(wrong=True)`` has a slip deep inside: the middle ``Dense``'s backward
multiplies the upstream gradient by ``W`` where ``W.T`` is due. Its ``W`` is square
(16 x 16), so every shape still fits and nothing crashes; ``check_steps`` names
``fc2 backward`` as the CULPRIT and the stages after it (``act1`` and ``fc1``'s
backward, the update) as right alone: they inherited the error.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Dense:
    """``y = x @ W + b``. Shape: (N, n_in) -> (N, n_out)."""

    def __init__(self, n_in, n_out, rng):
        self.W = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / (n_in + n_out))
        self.b = np.zeros((1, n_out))

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dy):
        # y = x W + b  =>  dW = x^T dy,  db = sum over the batch of dy,  dx = dy W^T
        self.dW = self.x.T @ dy
        self.db = dy.sum(axis=0, keepdims=True)
        return dy @ self.W.T


class DenseWrongInputGradient(Dense):
    """The same forward; dL/dx multiplies by W where W^T is due (only square W lets it run)."""

    def backward(self, dy):
        self.dW = self.x.T @ dy
        self.db = dy.sum(axis=0, keepdims=True)
        return dy @ self.W   # BUG: dx = dy W^T


class Tanh:
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy):
        # y = tanh(x)  =>  dx = dy (1 - y^2)
        return dy * (1 - self.y ** 2)


class ReLU:
    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, dy):
        return dy * self.positive


class Network:
    """The layers in a list, run forward in order and backward in reverse."""

    def __init__(self, layers):
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


def softmax_cross_entropy(z, y):
    """Mean cross-entropy of softmax(z) against integer labels, and dL/dz."""
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    return loss, dz / n


def sgd(lr):
    """Plain SGD on the parameters, in place."""
    def update(params, grads):
        for k in params:
            params[k] -= lr * grads[k]
    return update


def build(wrong: bool = False, seed: int = 0) -> Network:
    rng = np.random.default_rng(seed)
    middle = DenseWrongInputGradient if wrong else Dense
    return Network([Dense(12, 16, rng), Tanh(), middle(16, 16, rng), ReLU(), Dense(16, 5, rng)])


def torch_mirror():
    """The same network in torch; its children's names (fc1, act1, ...) name the layers in messages."""
    from torch import nn

    return nn.Sequential(OrderedDict(fc1=nn.Linear(12, 16), act1=nn.Tanh(), fc2=nn.Linear(16, 16),
                                     act2=nn.ReLU(), fc3=nn.Linear(16, 5)))


def batches(n: int = 3, batch: int = 8, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 12)), rng.integers(0, 5, batch)) for _ in range(n)]
