"""A learner's fully connected layer in numpy-ml's convention: ``self.parameters`` and
``self.gradients`` dicts (``W`` stored (in, out), ``b`` of shape (1, out)), inputs kept
in ``self.X`` by ``forward(X, retain_derived=True)``, gradients *accumulated* by
``backward(dLdy, retain_grads=True)``, and ``flush_gradients()`` to reset them. The
correct backward and a deliberately wrong one (the weight gradient divided by the
batch size).

    y = X W + b   =>   dW = X^T dy,   db = sum over the batch of dy,   dX = dy W^T

Checked in ``test_conventions.py`` with nothing but the call: ``W`` is mapped onto
torch's ``weight`` transposed, ``b`` (1, out) onto ``bias`` (out,) reshaped.
"""

import numpy as np


class FullyConnected:
    """``Y = X @ W + b`` (mirrors ``torch.nn.Linear(n_in, n_out)``). Shape: (N, n_in) -> (N, n_out)."""

    def __init__(self, n_in, n_out, seed=0):
        rng = np.random.default_rng(seed)
        self.X = []
        self.parameters = {"W": rng.uniform(-1, 1, (n_in, n_out)) / np.sqrt(n_in), "b": np.zeros((1, n_out))}
        self.gradients = {k: np.zeros_like(v) for k, v in self.parameters.items()}

    def flush_gradients(self):
        self.X = []
        self.gradients = {k: np.zeros_like(v) for k, v in self.parameters.items()}

    def forward(self, X, retain_derived=True):
        if retain_derived:
            self.X.append(X)
        return X @ self.parameters["W"] + self.parameters["b"]

    def backward(self, dLdy, retain_grads=True):
        X = self.X[-1]
        dX, dW, db = self._bwd(dLdy, X)
        if retain_grads:
            self.gradients["W"] += dW
            self.gradients["b"] += db
        return dX

    def _bwd(self, dLdy, X):
        dW = X.T @ dLdy
        db = dLdy.sum(axis=0, keepdims=True)
        return dLdy @ self.parameters["W"].T, dW, db


class FullyConnectedWrongScale(FullyConnected):
    """The same forward; the weight gradient is averaged over the batch."""

    def _bwd(self, dLdy, X):
        dW = X.T @ dLdy / len(X)   # BUG: the loss already carries the 1/N; dW sums over the batch
        db = dLdy.sum(axis=0, keepdims=True)
        return dLdy @ self.parameters["W"].T, dW, db
