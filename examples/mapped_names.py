"""A learner's logistic layer with parameter names nn-parity cannot guess: ``self.theta``
stored (in, out) and ``self.theta0``, gradients ``self.grad_theta`` and
``self.grad_theta0``. One argument names them: ``params={"theta": "weight.T",
"theta0": "bias"}``. The correct backward and a deliberately wrong one (the sigmoid's
derivative evaluated at the pre-activation z instead of at the output).

    z = x theta + theta0,  y = sigmoid(z)   =>   dz = dy y (1 - y),
    grad_theta = x^T dz,  grad_theta0 = sum over the batch of dz,  dx = dz theta^T

Checked in ``test_conventions.py`` against ``Linear`` followed by ``Sigmoid``.
"""

import numpy as np


class Logistic:
    """``y = sigmoid(x @ theta + theta0)``. Shape: (N, n_in) -> (N, n_out)."""

    def __init__(self, n_in, n_out, seed=0):
        rng = np.random.default_rng(seed)
        self.theta = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        self.theta0 = np.zeros(n_out)

    def forward(self, x):
        self.x = x
        self.y = 1 / (1 + np.exp(-(x @ self.theta + self.theta0)))
        return self.y

    def backward(self, dy):
        dz = dy * self.y * (1 - self.y)
        self.grad_theta = self.x.T @ dz
        self.grad_theta0 = dz.sum(axis=0)
        return dz @ self.theta.T


class LogisticWrongDerivative(Logistic):
    """The same forward; sigmoid's derivative is taken at z."""

    def backward(self, dy):
        z = self.x @ self.theta + self.theta0
        dz = dy * z * (1 - z)   # BUG: sigmoid'(z) = y (1 - y), with y = sigmoid(z), not z (1 - z)
        self.grad_theta = self.x.T @ dz
        self.grad_theta0 = dz.sum(axis=0)
        return dz @ self.theta.T
