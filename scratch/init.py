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
    """Weights and biases ~ U(-1/sqrt(n), 1/sqrt(n)), n = the layer's fan-in.

    The ``mlp1000`` document's "strategy similar to Xavier but simpler"; it is also
    what ``torch.nn.Linear.reset_parameters`` amounts to for the weight bound.
    """
    for _, layer in model.named_modules():
        if isinstance(layer, layer_types):
            bound = 1 / math.sqrt(layer.weight.shape[1])
            _fill(layer.weight, rng.uniform(-bound, bound, layer.weight.shape))
            if layer.bias is not None:
                _fill(layer.bias, rng.uniform(-bound, bound, layer.bias.shape))
