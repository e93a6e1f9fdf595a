"""Batch normalisation over (N, H, W) per channel, PyTorch's rules to the letter."""

from __future__ import annotations

import numpy as np

from .conv import channelwise, check_images
from .module import Module, Parameter

_AXES = (0, 2, 3)  # the axes a channel's statistics are taken over: (N, H, W)


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)  # (C,) -> (1, C, 1, 1), broadcasts against (N, C, H, W)


class BatchNorm2d(Module):
    """Per-channel batch normalisation with a learned scale and shift (mirrors
    ``torch.nn.BatchNorm2d(C)``: ``affine=True``, ``track_running_stats=True``).

    Training mode, with M = N*H*W values per channel::

        mu = mean(x),  var = mean((x - mu)^2)            (biased: divided by M)
        y  = gamma * (x - mu) / sqrt(var + eps) + beta
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (UNbiased)
        num_batches_tracked += 1

    Evaluation mode normalises with ``running_mean`` and ``running_var`` instead and
    updates nothing. The running variance uses the unbiased estimate while the
    normalisation uses the biased one: that asymmetry is PyTorch's, reproduced here.
    A channel with M = 1 has no unbiased variance: refused in training, as torch does.

    Args:
        num_features: C.
        eps: added to the variance before the square root (default 1e-5).
        momentum: weight of the new batch in the running statistics (default 0.1).
        dtype: dtype of the parameters and running statistics.

    Shape:
        input (N, C, H, W) -> output (N, C, H, W).
        weight (gamma), bias (beta), running_mean, running_var: (C,);
        num_batches_tracked: int64 scalar (shape ()), as in torch's state_dict.

    Parameters: weight = 1, bias = 0; buffers: running_mean = 0, running_var = 1
    (torch's ``reset_parameters``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, dtype=np.float64):
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.weight = Parameter(np.ones(num_features, dtype=dtype))
        self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self.in_shape = None

    def forward(self, x):
        check_images(x, "BatchNorm2d", self.num_features)
        self.in_shape = x.shape
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel in training, "
                                 f"got input shape {x.shape}; use a batch of at least 2 or eval()")
            # Sums accumulate in float64 whatever the dtype (torch's CPU kernels accumulate in
            # double too): a float32 running sum over N*H*W ~ 40,000 values loses ~1e-4.
            mu = x.mean(axis=_AXES, dtype=np.float64).astype(x.dtype)
            xc = channelwise(np.subtract, x, mu)  # x - mu
            sq_sum = np.einsum("nchw,nchw->c", xc, xc, dtype=np.float64)  # sum of squared deviations
            var = self._batch_var(sq_sum, m, x.dtype)
            # Buffers are updated in place (an augmented assignment would unregister them).
            mom = self.momentum
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mu
            self.running_var[...] = (1 - mom) * self.running_var + mom * self._running_var_sample(sq_sum, m, x.dtype)
            self.num_batches_tracked[...] += 1
        else:
            xc = channelwise(np.subtract, x, self.running_mean)
            var = self.running_var
        self.batch_stats = self.training  # which statistics backward differentiates through
        self.xc = xc  # x - mu: backward forms xhat = xc * inv_std from it
        self.inv_std = 1 / np.sqrt(var + self.eps)  # (C,)
        y = channelwise(np.multiply, xc, self.inv_std * self.weight.data)  # gamma * xhat
        return channelwise(np.add, y, self.bias.data, out=y)  # + beta

    def backward(self, dy):
        # y = gamma xhat + beta  =>  dbeta = sum dy,  dgamma = sum dy xhat  (sums over N, H, W)
        # training, xhat = (x - mu)/sigma with mu, sigma of the batch:
        #   dx = gamma/sigma (dy - mean(dy) - xhat mean(dy xhat));  eval (fixed stats): dx = gamma/sigma dy
        dbeta = dy.sum(axis=_AXES, dtype=np.float64)  # float64 accumulation, as in forward
        dot = np.einsum("nchw,nchw->c", dy, self.xc, dtype=np.float64)  # sum dy (x - mu)
        self._accumulate(self.weight, (dot * self.inv_std).astype(dy.dtype))
        self._accumulate(self.bias, dbeta.astype(dy.dtype))
        scale = self.weight.data * self.inv_std  # gamma / sigma, per channel
        if not self.batch_stats:
            return channelwise(np.multiply, dy, scale)
        m = dy.shape[0] * dy.shape[2] * dy.shape[3]
        # torch's form: dx = (dy - (x - mu) * k - mean(dy)) * gamma / sigma,  k = sum(dy (x - mu)) / (m sigma^2)
        k = (dot * self.inv_std.astype(np.float64) ** 2 / m).astype(dy.dtype)
        dx = channelwise(np.multiply, self.xc, k)
        np.subtract(dy, dx, out=dx)
        channelwise(np.subtract, dx, self._mean_term(dbeta, m, dy.dtype), out=dx)
        return channelwise(np.multiply, dx, scale, out=dx)

    def _batch_var(self, sq_sum, m, dtype):
        """The variance the batch is normalised with, biased: sum (x - mu)^2 / M; a selftest slip may override it."""
        return (sq_sum / m).astype(dtype)

    def _running_var_sample(self, sq_sum, m, dtype):
        """The variance running_var moves to, unbiased: sum (x - mu)^2 / (M - 1); a selftest slip may override it."""
        return (sq_sum / (m - 1)).astype(dtype)

    def _mean_term(self, dbeta, m, dtype):
        """mean(dy) per channel, (1, C, 1, 1): dx's path through the batch mean; a selftest slip may override it."""
        return _per_channel((dbeta / m).astype(dtype))

    def flops_per_sample(self) -> int:
        """Elementwise work per value: 7 forward (mean, centre, square, sum, normalise, scale,
        shift), 8 backward (two sums, a product, and the 5-term dx)."""
        if self.in_shape is None:
            raise RuntimeError("BatchNorm2d.flops_per_sample() needs one forward pass")
        return 15 * int(np.prod(self.in_shape[1:]))

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"
