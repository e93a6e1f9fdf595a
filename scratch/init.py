"""Initialisation schemes, each a separate step applied to a built network.

Every function draws from the NumPy ``Generator`` it is given, layer by layer in
``named_modules()`` order, weight before bias, so one seed gives one set of
weights. Parity never depends on two libraries drawing the same random numbers:
the scratch side initialises and the PyTorch side receives a copy.
"""

from __future__ import annotations

import math

import numpy as np

from .layers import Linear


def _fill(param, values):
    param.data[...] = values.astype(param.data.dtype)


def uniform_fan_in(model, rng: np.random.Generator, layer_types=(Linear,)) -> None:
    """Weights and biases ~ U(-1/sqrt(n), 1/sqrt(n)), n = the layer's fan-in
    (``in_features`` for Linear, ``in_channels * kH * kW`` for Conv2d).

    The ``mlp1000`` document's "strategy similar to Xavier but simpler"; it is also
    what ``torch.nn.Linear.reset_parameters`` and ``torch.nn.Conv2d.reset_parameters``
    amount to (kaiming_uniform with a = sqrt(5) gives the bound 1/sqrt(fan_in)).
    """
    for _, layer in model.named_modules():
        if isinstance(layer, layer_types):
            fan_in = math.prod(layer.weight.shape[1:])  # (out, in) or (out, in, kH, kW)
            bound = 1 / math.sqrt(fan_in)
            _fill(layer.weight, rng.uniform(-bound, bound, layer.weight.shape))
            if layer.bias is not None:
                _fill(layer.bias, rng.uniform(-bound, bound, layer.bias.shape))
