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
        return self._reduced(self._logit_grad())

    def _logit_grad(self):
        """dL_n/dz_n = softmax(z_n) - onehot(y_n), per sample, unreduced; a selftest slip may override it."""
        dz = self.p.copy()
        dz[np.arange(len(self.target)), self.target] -= 1
        return dz

    def _reduced(self, dz):
        """The reduction's factor on dz, in place: 1/N for mean, 1 for sum; a selftest slip may override it."""
        if self.reduction == "mean":
            dz /= len(self.target)
        return dz


def _check_same_shape(y, target):
    if np.shape(y) != np.shape(target):
        raise ValueError(f"expected a target of the input's shape {np.shape(y)}, got {np.shape(target)}")


class MSELoss(Module):
    """Squared error between an output and a real-valued target (mirrors
    ``torch.nn.MSELoss``).

    ``L = sum_k (y_k - t_k)^2`` over every element, divided by the number of
    elements for ``mean`` (N * C for an (N, C) input: PyTorch's convention, not a
    per-sample mean).

    Args:
        reduction: ``"sum"`` or ``"mean"`` (over all elements).

    Shape:
        input: any; target: the input's shape; output: scalar.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def _target(self, y, target):
        target = np.asarray(target)
        _check_same_shape(y, target)
        return target.astype(y.dtype, copy=False)

    def forward(self, y, target):
        self.diff = y - self._target(y, target)
        loss = np.vdot(self.diff, self.diff)  # sum of squares, one BLAS call
        return np.asarray(loss / self.diff.size if self.reduction == "mean" else loss, dtype=y.dtype)

    def backward(self):
        # L = sum (y - t)^2  =>  dL/dy = 2 (y - t)   (/ number of elements for mean)
        scale = 2 / self.diff.size if self.reduction == "mean" else 2
        return self.diff * self.diff.dtype.type(scale)


class OneHotMSELoss(MSELoss):
    """Squared error against the one-hot encoding of integer class labels.

    ``L = sum_{n,c} (y_nc - [c == label_n])^2``, reduced like ``MSELoss`` (``mean``
    divides by N * C). The network's output is compared with the one-hot target,
    so class labels travel through the harness like a cross-entropy's.

    Args:
        num_classes: C, the width of the one-hot encoding.
        reduction: ``"sum"`` or ``"mean"`` (over all N * C elements).

    Shape:
        input: (N, C); target: integer labels (N,); output: scalar.
    """

    def __init__(self, num_classes: int, reduction: str = "mean"):
        super().__init__(reduction)
        self.num_classes = num_classes

    def _target(self, y, target):
        target = np.asarray(target)
        if y.ndim != 2 or y.shape[1] != self.num_classes:
            raise ValueError(f"expected outputs of shape (N, {self.num_classes}), got {y.shape}")
        _check_labels(y, target)
        one_hot = np.zeros_like(y)
        one_hot[np.arange(len(target)), target] = 1  # (N,) labels -> (N, C) one-hot
        return one_hot


class HalfSquaredError(Module):
    """The hand-worked examples' total error ``E = 1/2 sum_k (t_k - y_k)^2``,
    summed over every output and sample (the 1/2 cancels the square's 2).

    Equals ``0.5 * torch.nn.MSELoss(reduction="sum")``.

    Shape:
        input: any; target: the input's shape; output: scalar.
    """

    reduction = "sum"

    def forward(self, y, target):
        target = np.asarray(target)
        _check_same_shape(y, target)
        self.diff = y - target.astype(y.dtype, copy=False)
        return np.asarray(0.5 * np.vdot(self.diff, self.diff), dtype=y.dtype)

    def backward(self):
        # E = 1/2 sum (t - y)^2  =>  dE/dy = -(t - y) = y - t
        return self.diff.copy()


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
