"""A learner's LayerNorm, written from scratch in NumPy with its parameters in a dict:
the correct backward and a deliberately wrong one (the variance treated as a constant).

    mu = mean(x), var = mean((x - mu)^2)         over the last axis (biased, as torch)
    xhat = (x - mu) / sqrt(var + eps)
    y = xhat * weight + bias

Checked in ``test_examples.py`` against ``torch.nn.LayerNorm`` with nn-parity.
"""

import numpy as np


class LayerNorm:
    """Normalise over the last axis, then scale and shift (mirrors ``torch.nn.LayerNorm(dim)``).

    Parameters live in ``self.params`` and gradients in ``self.grads``, under torch's
    names (``weight`` = gamma, ``bias`` = beta), so nn-parity copies them across by name.

    Shape: (..., dim) -> (..., dim).
    """

    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.params = {"weight": np.ones(dim), "bias": np.zeros(dim)}
        self.grads = {}

    def forward(self, x):
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        self.inv_std = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv_std
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        # y = xhat w + b  =>  dw = sum dy xhat,  db = sum dy   (over every axis but the last)
        # dx = inv_std (g - mean(g) - xhat mean(g xhat)),  g = dy w   (the mean and the variance paths)
        batch_axes = tuple(range(dy.ndim - 1))
        self.grads["weight"] = (dy * self.xhat).sum(axis=batch_axes)
        self.grads["bias"] = dy.sum(axis=batch_axes)
        g = dy * self.params["weight"]
        return self.inv_std * (g - g.mean(axis=-1, keepdims=True)
                               - self.xhat * (g * self.xhat).mean(axis=-1, keepdims=True))


class LayerNormWrongBackward(LayerNorm):
    """The same forward; the backward drops the variance path (treats 1/std as a constant)."""

    def backward(self, dy):
        batch_axes = tuple(range(dy.ndim - 1))
        self.grads["weight"] = (dy * self.xhat).sum(axis=batch_axes)
        self.grads["bias"] = dy.sum(axis=batch_axes)
        g = dy * self.params["weight"]
        return self.inv_std * (g - g.mean(axis=-1, keepdims=True))  # BUG: missing - xhat mean(g xhat)
