"""Losses. ``forward(input, target)`` returns the loss as a 0-d array of the
input's dtype; ``backward()`` returns dL/d(input) for dL = 1."""

from __future__ import annotations

import numpy as np

from .module import Module

REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_labels(logits, target):
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, C), got {logits.shape}")
    if target.shape != (logits.shape[0],) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"expected integer class labels of shape ({logits.shape[0]},), "
                         f"got {target.dtype} {target.shape}")


def log_softmax(z):
    """Numerically stable ``log softmax(z)`` along the last axis: ``z - max - log sum exp(z - max)``."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class CrossEntropyLoss(Module):
    """Softmax followed by cross-entropy against the one-hot target (mirrors
    ``torch.nn.CrossEntropyLoss``).

    ``L_n = -sum_i t_ni log p_ni = logsumexp(z_n) - z_n[y_n]``, with ``p = softmax(z)``
    computed stably (the maximum is subtracted before exponentiating). Reduced by
    ``sum`` or ``mean`` over the batch.

    Args:
        reduction: ``"sum"`` or ``"mean"``.

    Shape:
        input: logits (N, C); target: integer labels (N,); output: scalar.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, logits, target):
        _check_labels(logits, target)
        logp = log_softmax(logits)
        self.p = np.exp(logp)
        self.target = target
        loss = -logp[np.arange(len(target)), target].sum()
        return np.asarray(loss / len(target) if self.reduction == "mean" else loss, dtype=logits.dtype)

    def backward(self):
        # L = sum_n [logsumexp(z_n) - z_n[y_n]]  =>  dL/dz = softmax(z) - onehot(y)   (/ N for mean)
        dz = self.p.copy()
        dz[np.arange(len(self.target)), self.target] -= 1
        if self.reduction == "mean":
            dz /= len(self.target)
        return dz


class LogSoftmax(Module):
    """``y = z - log sum_j exp(z_j)`` along the class axis (mirrors ``torch.nn.LogSoftmax(dim=1)``).

    Computed stably (the maximum is subtracted first). Pair it with ``NLLLoss``: the two
    together are cross-entropy, kept apart here as the ``cnn18k`` document has them.

    Shape: input (N, C) -> output (N, C).
    """

    def forward(self, z):
        if np.ndim(z) != 2:
            raise ValueError(f"LogSoftmax: expected (N, C) scores, got shape {np.shape(z)}")
        self.y = log_softmax(z)
        return self.y

    def backward(self, dy):
        # y_i = z_i - logsumexp(z)  =>  dz_i = dy_i - softmax(z)_i sum_j dy_j,  softmax(z) = exp(y)
        return dy - np.exp(self.y) * dy.sum(axis=1, keepdims=True)

    def flops_per_sample(self) -> int:
        """About 4 per class forward (max, subtract, exp, log-sum) and 4 backward (exp, sum, mul, sub)."""
        return 8 * self.y.shape[1]


class NLLLoss(Module):
    """Negative log-likelihood of the labelled class (mirrors ``torch.nn.NLLLoss``).

    ``L_n = -logp[n, y_n]``, reduced by ``mean`` (divided by N) or ``sum``; the input is
    meant to be log-probabilities (``LogSoftmax``'s output), but any scores are accepted,
    as in torch.

    Args:
        reduction: ``"sum"`` or ``"mean"``.

    Shape:
        input (N, C); target: integer labels in [0, C), shape (N,); output: scalar.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, logp, target):
        _check_labels(logp, target)
        if len(target) and (target.min() < 0 or target.max() >= logp.shape[1]):
            bad = target[(target < 0) | (target >= logp.shape[1])][0]
            raise ValueError(f"NLLLoss: label {bad} is out of range for {logp.shape[1]} classes")
        self.shape, self.dtype, self.target = logp.shape, logp.dtype, target
        loss = -logp[np.arange(len(target)), target].sum()
        return np.asarray(loss / len(target) if self.reduction == "mean" else loss, dtype=logp.dtype)

    def backward(self):
        # L = -(1/N) sum_n logp[n, y_n]  =>  dL/dlogp[n, j] = -1/N if j == y_n else 0   (-1 for sum)
        d = np.zeros(self.shape, dtype=self.dtype)
        d[np.arange(len(self.target)), self.target] = -1 / len(self.target) if self.reduction == "mean" else -1
        return d
