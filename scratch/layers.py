"""Fully connected building blocks: Linear, ReLU, Sigmoid, Flatten.

Each layer's ``forward`` caches what ``backward`` needs; ``backward(dy)`` takes
dL/d(output) and returns dL/d(input), accumulating parameter gradients into
``Parameter.grad``. Layouts and names follow ``torch.nn``.
"""

from __future__ import annotations

import numpy as np

from .module import Module, Parameter


class Linear(Module):
    """Affine map ``y = x W^T + b`` (mirrors ``torch.nn.Linear``).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to learn an additive bias.
        dtype: parameter dtype.

    Shape:
        input (N, in_features) -> output (N, out_features).
        weight (out_features, in_features), bias (out_features,): PyTorch's layout.

    Parameters start at zero: initialisation is a separate step (``scratch.init``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float64):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None
        self.needs_input_grad = True

    def forward(self, x):
        self.x = x
        y = x @ self.weight.data.T  # (N, in) @ (in, out) -> (N, out)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        # y = x W^T + b  =>  dW = dy^T x,  db = sum_n dy,  dx = dy W
        self._accumulate(self.weight, self._weight_grad(dy))
        if self.bias is not None:
            self._accumulate(self.bias, self._bias_grad(dy))
        return dy @ self.weight.data if self.needs_input_grad else None

    def _weight_grad(self, dy):
        """dW = dy^T x, (out, N) @ (N, in) -> W's (out, in); a selftest slip may override it."""
        return np.matmul(dy.T, self.x, out=self.weight.spare_grad())  # into last step's array after zero_grad

    def _bias_grad(self, dy):
        """db = dy summed over the batch, accumulated in float64; a selftest slip may override it."""
        # float64 accumulation whatever the dtype, as torch's reductions are accurate: a float32 running
        # sum down the batch axis (NumPy adds row after row) drifts by ~sqrt(N) ulp
        return dy.sum(axis=0, dtype=np.float64).astype(dy.dtype, copy=False)

    def flops_per_sample(self) -> int:
        """Training FLOPs per sample: forward, dW and (unless skipped) dx, 2 per multiply-add."""
        return 2 * self.in_features * self.out_features * (3 if self.needs_input_grad else 2)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """``y = max(x, 0)`` elementwise (mirrors ``torch.nn.ReLU``).

    The derivative at exactly 0 is taken as 0, as PyTorch does; a NaN input passes its gradient
    and a non-finite upstream gradient stays where the slope is 1 (exactly 0 elsewhere), as in torch.

    Parity contract (``draws_mask = True``, as for dropout): ``mask`` (``x > 0``) is handed
    to the reference module at the same path. ``torch.nn.ReLU`` ignores it;
    ``reference.layers.AlignedReLU`` uses it during step parity for the inputs that are
    within the parity tolerance of 0, where the two sides' rounding decides the kink.

    Shape: any; output has the input's shape.
    """

    draws_mask = True
    kink_attrs = ("mask",)  # which side of the kink each element is on (finite-difference checks read it)

    def forward(self, x):
        # x > 0, written as not (x <= 0) so that a NaN input passes its gradient, as torch's
        # threshold_backward does (its test is result <= 0)
        self.mask = np.logical_not(x <= 0)
        # np.maximum, not np.where(mask, x, 0): branch-free (several times faster on a random
        # mask), and NaN stays NaN as in torch
        return np.maximum(x, x.dtype.type(0))

    def backward(self, dy):
        # y = max(x, 0)  =>  dx = dy * [x > 0], and exactly 0 where the slope is 0 even for an inf or
        # NaN dy (torch's rule; the product would give 0 * inf = NaN there)
        slope = self._slope()
        if np.isfinite(dy).all():  # the product with the 0/1 mask: branch-free, several times faster than np.where
            return dy * _laid_out_like(slope, dy)
        return np.where(slope, dy, dy.dtype.type(0))

    def _slope(self):
        """dy/dx = [x > 0], 0 at the kink, as a bool mask; a selftest slip may override it."""
        return self.mask


def _laid_out_like(mask, a):
    """``mask`` (bools, or a subclass's slopes) in the memory layout of ``a`` (a copy only when they differ).

    A product of floats with a bool array laid out otherwise (cnn18k's ReLU: its mask has the
    forward's channels-last layout, the gradient that comes back is C-ordered) casts the bools
    in small buffered strided pieces: 0.73 ms on (16, 20, 24, 24), against 0.06 ms for the
    one-byte transposing copy and 0.05 ms for the product of aligned arrays. Same values."""
    if np.shape(mask) != a.shape:
        return mask
    like = np.empty_like(a, dtype=mask.dtype)
    if like.strides == mask.strides:
        return mask
    np.copyto(like, mask)
    return like


class Sigmoid(Module):
    """``y = 1 / (1 + exp(-x))`` elementwise (mirrors ``torch.nn.Sigmoid``).

    Shape: any; output has the input's shape.
    """

    def forward(self, x):
        with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives y = 0, as it should
            self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, dy):
        # y = s(x)  =>  dy/dx = s(x) (1 - s(x)) = y (1 - y): taken at the output, not at x
        s = self._s()
        return dy * s * (1 - s)

    def _s(self):
        """s(x), where s (1 - s) is taken: the cached output y; a selftest slip may override it."""
        return self.y


class Flatten(Module):
    """Flatten every dimension after the first (mirrors ``torch.nn.Flatten()``).

    Shape: (N, *) -> (N, prod(*)).
    """

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)  # (N, C, H, W) -> (N, C*H*W)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
