"""A learner's dense layer with a tanh activation whose parameters are reached through
``params()`` and ``grads()`` methods (the convention of many course frameworks), with
the weight stored like torch's, (out, in). The correct backward and a deliberately
wrong one (tanh's derivative written 1 - y instead of 1 - y^2).

    z = x W^T + b,  y = tanh(z)   =>   dz = dy (1 - y^2),  dW = dz^T x,  db = sum dz,  dx = dz W

Checked in ``test_conventions.py`` against ``Linear`` followed by ``Tanh``.
"""

import numpy as np


class DenseTanh:
    """``y = tanh(x W^T + b)``. Shape: (N, n_in) -> (N, n_out)."""

    def __init__(self, n_in, n_out, seed=0):
        rng = np.random.default_rng(seed)
        self.W = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
        self.b = np.zeros(n_out)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)

    def params(self):
        return {"W": self.W, "b": self.b}

    def grads(self):
        return {"W": self.dW, "b": self.db}

    def forward(self, x):
        self.x = x
        self.y = np.tanh(x @ self.W.T + self.b)
        return self.y

    def backward(self, dy):
        dz = dy * (1 - self.y ** 2)
        self.dW = dz.T @ self.x
        self.db = dz.sum(axis=0)
        return dz @ self.W


class DenseTanhWrongDerivative(DenseTanh):
    """The same forward; tanh's derivative is taken as 1 - y."""

    def backward(self, dy):
        dz = dy * (1 - self.y)   # BUG: d tanh(z)/dz = 1 - tanh(z)^2
        self.dW = dz.T @ self.x
        self.db = dz.sum(axis=0)
        return dz @ self.W
