"""Inverted dropout whose mask is drawn here, from a seeded generator, and exposed
so that a reference implementation can apply the very same mask."""

from __future__ import annotations

import numpy as np

from .module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` in training, scale the survivors by
    ``1 / (1 - p)``; the identity in evaluation (mirrors ``torch.nn.Dropout(p)``).

    ``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` elementwise, drawn anew at every
    training forward pass from this layer's own NumPy generator (so one seed gives
    one sequence of masks). The scale is formed exactly as torch forms it
    (``noise = m.to(dtype); noise /= (1 - p); y = x * noise``); ``p = 1`` gives zeros.

    Parity contract: ``draws_mask = True`` and the last training mask is ``mask``
    (bool, the input's shape, True = kept). The parity harness hands it to the
    reference module at the same path (``reference.layers.MaskedDropout``), which
    applies it instead of drawing its own. In evaluation (and for p = 0) nothing is
    drawn and ``mask`` is ``None``.

    Args:
        p: probability of zeroing an element, 0 <= p <= 1.
        rng: the ``numpy.random.Generator`` masks are drawn from; default
            ``default_rng(0)``: pass one per layer (``build`` derives them from its seed).

    Shape: any; output has the input's shape.
    """

    draws_mask = True

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        # kept when bits >= ceil(p 2^32), i.e. bits > ceil(p 2^32) - 1: a uint32 bound for every p in (0, 1]
        # (comparing uint32 with uint32, not with a uint64, spares a cast of every element)
        self._cut = np.uint32(min(2 ** 32, int(np.ceil(self.p * 2 ** 32))) - 1) if self.p > 0 else None
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.mask = None
        self.in_shape = None

    def forward(self, x):
        self.in_shape = x.shape
        if not self.training or self.p == 0:  # torch returns the input itself for p = 0 too
            self.mask, self.noise = None, None
            return x
        # 32 random bits per element, kept when bits >= ceil(p 2^32): P(keep) = 1 - p to within 2^-32
        # (raw bits: half the cost of drawing floats; two 32-bit draws per 64-bit output)
        size = int(np.prod(x.shape))
        bits = self.rng.bit_generator.random_raw((size + 1) // 2).view(np.uint32)[:size]
        self.mask = bits.reshape(x.shape) > self._cut
        # The mask and noise are C-ordered, so the output is C-contiguous whatever x's layout. Noise
        # laid out like a channels-last x would make x * noise several times faster, but the arrays
        # downstream would then be channels-last too, and the float64 sums over them (BatchNorm's
        # backward, the global average pooling) would run in another order: other last bits.
        self.noise = self.mask * self._keep_scale(x.dtype)  # 0 or scale; a product, several times faster than np.where
        return x * self.noise

    def backward(self, dy):
        # y = x m / (1 - p)  =>  dx = dy m / (1 - p)   (identity in evaluation)
        return dy if self.noise is None else dy * self.noise

    def _keep_scale(self, dtype):
        """The survivors' factor 1 / (1 - p), 0 for p = 1, a dtype scalar; a selftest slip may override it."""
        # torch: noise = mask.to(dtype) / (1 - p), the divisor rounded to the dtype; so a kept
        # element's factor is exactly dtype(1) / dtype(1 - p). p = 1 zeroes everything.
        return dtype.type(0) if self.p == 1 else dtype.type(1) / dtype.type(1 - self.p)

    def flops_per_sample(self) -> int:
        """One multiply per element forward, one backward."""
        if self.in_shape is None:
            raise RuntimeError("Dropout.flops_per_sample() needs one forward pass")
        return 2 * int(np.prod(self.in_shape[1:]))

    def extra_repr(self):
        return f"p={self.p:g}"
