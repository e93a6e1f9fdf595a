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
