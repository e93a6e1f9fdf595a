"""A learner's network with inverted dropout, checked a training step at a time with ``nnparity.check_steps``.

``steps_mlp.py``'s layers (``Dense`` stored (in, out), ``ReLU``, the list ``Network``, softmax
cross-entropy, plain SGD) with ``dropout.py``'s inverted dropout between the hidden layer
and the output::

    x (N, 12) -> Dense 12 -> 16 -> ReLU -> Dropout(p = 0.3) -> Dense 16 -> 5 -> softmax CE

``torch.nn.Dropout`` would draw a mask of its own; under ``check_steps`` the mirror's
``drop`` child applies *your* layer's mask of each step instead (read right after your
forward from ``self.mask``: the mask protocol of ``check_layer``), so the two runs stay
comparable step after step, and only your arithmetic is judged::

    nnparity.check_steps(build(), softmax_cross_entropy, sgd(0.1), torch_mirror(),
                         torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches())

The two slips (``build(wrong=...)``), each named by ``check_steps`` as ``drop backward``,
the CULPRIT, with ``act1`` and ``fc1``'s backward and the update right alone (inherited):

* ``"scale"``: the backward routes the gradient through the kept positions but forgets
  the forward's 1/(1-p): ``dx = dout * keep`` where ``dout * keep / (1 - p)`` is due
  (``PATTERN: scratch = 7/10 x reference exactly``);
* ``"fresh mask"``: the backward draws a new mask instead of using the forward's.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from examples.dropout import Dropout
from examples.steps_mlp import Dense, Network, ReLU, batches, sgd, softmax_cross_entropy

P = 0.3   # the drop probability (torch's p); not 0.5, where a keep/drop confusion would not show


class DropoutForgetsTheScale(Dropout):
    """The forward of ``Dropout``; the backward forgets the 1/(1-p) the forward applied."""

    def backward(self, dout):
        return dout * (self.mask != 0) if self.training else dout   # BUG: dout * mask (the scale included)


class DropoutFreshMaskInBackward(Dropout):
    """The forward of ``Dropout``; the backward draws a mask of its own."""

    def backward(self, dout):
        if not self.training:
            return dout
        keep = self.rng.random(dout.shape) >= self.p   # BUG: a new draw; the forward's mask is self.mask
        return dout * keep / (1 - self.p)


SLIPS = {None: Dropout, "scale": DropoutForgetsTheScale, "fresh mask": DropoutFreshMaskInBackward}


def build(wrong: str | None = None, seed: int = 0) -> Network:
    rng = np.random.default_rng(seed)
    return Network([Dense(12, 16, rng), ReLU(), SLIPS[wrong](P, seed=seed + 1), Dense(16, 5, rng)])


def torch_mirror():
    """The same network in torch; ``drop`` applies your dropout's mask during ``check_steps``."""
    from torch import nn

    return nn.Sequential(OrderedDict(fc1=nn.Linear(12, 16), act1=nn.ReLU(), drop=nn.Dropout(P),
                                     fc2=nn.Linear(16, 5)))


__all__ = ["build", "torch_mirror", "batches", "sgd", "softmax_cross_entropy", "P"]
