"""A learner's fully connected layer in the attribute convention of the "deep learning
from scratch" books: parameters ``self.W`` (stored (in, out), for ``x @ W``) and
``self.b``, gradients ``self.dW`` and ``self.db``; forward returns the output,
backward returns dL/dx. The correct backward and a deliberately wrong one (the bias
gradient averaged over the batch instead of summed).

    y = x W + b   =>   dW = x^T dy,   db = sum over the batch of dy,   dx = dy W^T

Checked in ``test_conventions.py`` with nothing but the call: nn-parity finds ``W``
and ``b``, maps ``W`` (in, out) onto torch's ``weight`` (out, in) and says so.
"""

import numpy as np


class Affine:
    """``y = x @ W + b`` (mirrors ``torch.nn.Linear(n_in, n_out)``). Shape: (N, n_in) -> (N, n_out)."""

    def __init__(self, n_in, n_out, seed=0):
        rng = np.random.default_rng(seed)
        self.W = 0.01 * rng.standard_normal((n_in, n_out))
        self.b = np.zeros(n_out)
        self.x = self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class AffineWrongBias(Affine):
    """The same forward; the bias gradient is averaged over the batch."""

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.mean(axis=0)   # BUG: the loss sums over the batch here, so db sums too
        return dout @ self.W.T
