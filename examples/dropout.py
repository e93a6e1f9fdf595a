"""A learner's inverted dropout, correct, and the two slips of CS231n's dropout assignment.

    training:   out = x * mask,  mask = keep / (1 - p),  keep ~ Bernoulli(1 - p) per element
    evaluation: out = x
    backward:   dx = dout * mask (training), dout (evaluation)

``p`` is the probability of *dropping* a unit, as in ``torch.nn.Dropout(p)``. The mask is
kept as ``self.mask``: nn-parity hands it to torch (the mask protocol, README "Dropout and
other random layers"), so ``check_layer(Dropout(0.3), torch.nn.Dropout(0.3))`` compares
your arithmetic on the very same mask, and ``check_mask_statistics(Dropout(0.3), p=0.3)``
tests how you draw it (keep rate, independence, scale).

The slips:

* ``SharedMaskDropout``: one mask of the features' shape for the whole batch
  (``rng.random(x.shape[1:])``): every sample drops the same units.
* ``KeepProbDropout``: ``p`` read as the *keep* probability (CS231n's handout defines it
  so; torch's ``p`` drops): ``mask = (rng.random(x.shape) < p) / p``. At p = 0.5 the two
  readings agree, which is why the checks use p = 0.3.
"""

import numpy as np


class Dropout:
    def __init__(self, p, seed=0):
        self.p, self.training, self.rng = p, True, np.random.default_rng(seed)

    def forward(self, x):
        if not self.training:
            return x
        keep = self.rng.random(x.shape) >= self.p   # one draw per element, kept with probability 1 - p
        self.mask = (keep / (1 - self.p)).astype(x.dtype)   # in x's dtype: a float64 mask would promote float32
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask if self.training else dout


class SharedMaskDropout(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        keep = self.rng.random(x.shape[1:]) >= self.p   # BUG: one mask of the features' shape for the batch
        self.mask = (keep / (1 - self.p)).astype(x.dtype)
        return x * self.mask


class KeepProbDropout(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        keep = self.rng.random(x.shape) < self.p   # BUG: p is torch's drop probability, not the keep one
        self.mask = (keep / self.p).astype(x.dtype)
        return x * self.mask
