"""A learner's LeakyReLU, written from scratch in NumPy: the correct backward and a
deliberately wrong one (the ReLU derivative pasted in, forgetting the slope).

    y = x            where x > 0
    y = slope * x    elsewhere

Checked in ``test_examples.py`` against ``torch.nn.LeakyReLU`` with nn-parity.
"""

import numpy as np


class LeakyReLU:
    """``y = x if x > 0 else negative_slope * x`` (mirrors ``torch.nn.LeakyReLU``). No parameters.

    Shape: any; the output has the input's shape.
    """

    # Optional: the attribute that says which side of the kink at 0 each element is on,
    # so nn-parity's finite-difference check reports a crossing as a kink, not a failure.
    kink_attrs = ("positive",)

    def __init__(self, negative_slope=0.01):
        self.negative_slope = negative_slope

    def forward(self, x):
        self.positive = x > 0
        return np.where(self.positive, x, self.negative_slope * x)

    def backward(self, dy):
        # dy/dx = 1 where x > 0, negative_slope elsewhere (multiplying dy keeps its dtype)
        return np.where(self.positive, dy, self.negative_slope * dy)


class LeakyReLUWrongBackward(LeakyReLU):
    """The same forward; the backward forgets the slope and passes no gradient for x <= 0."""

    def backward(self, dy):
        return dy * self.positive  # BUG: ReLU's derivative; should be negative_slope where x <= 0
