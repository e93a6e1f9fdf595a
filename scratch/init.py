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
            fan_in, _ = _fans(layer.weight.data)  # in for (out, in), in * kH * kW for (out, in, kH, kW)
            bound = 1 / math.sqrt(fan_in)
            _fill(layer.weight, rng.uniform(-bound, bound, layer.weight.shape))
            if layer.bias is not None:
                _fill(layer.bias, rng.uniform(-bound, bound, layer.bias.shape))


def _fans(weight) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight in PyTorch's layout (out, in, *kernel); a selftest slip may override it."""
    receptive = int(np.prod(weight.shape[2:])) if weight.ndim > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def kaiming_normal(layer, rng: np.random.Generator, zero_bias: bool = True) -> None:
    """He initialisation for a layer followed by ReLU: ``W ~ N(0, 2 / fan_in)``.

    The same distribution as ``torch.nn.init.kaiming_normal_(w, mode="fan_in",
    nonlinearity="relu")`` (gain sqrt(2)): it keeps the variance of the
    activations constant through ReLU layers. Bias set to zero when ``zero_bias``.
    """
    fan_in, _ = _fans(layer.weight.data)
    _fill(layer.weight, rng.normal(0.0, math.sqrt(2.0 / fan_in), layer.weight.shape))
    if zero_bias and layer.bias is not None:
        layer.bias.data[...] = 0


def xavier_normal(layer, rng: np.random.Generator, zero_bias: bool = True) -> None:
    """Glorot initialisation: ``W ~ N(0, 2 / (fan_in + fan_out))``.

    The same distribution as ``torch.nn.init.xavier_normal_(w)`` (gain 1, the
    gain PyTorch gives sigmoid). Bias set to zero when ``zero_bias``.
    """
    fan_in, fan_out = _fans(layer.weight.data)
    _fill(layer.weight, rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), layer.weight.shape))
    if zero_bias and layer.bias is not None:
        layer.bias.data[...] = 0


def kaiming_uniform(layer, rng: np.random.Generator, zero_bias: bool = True) -> None:
    """He initialisation, uniform form: ``W ~ U(-b, b)``, ``b = sqrt(6 / fan_in)``
    (``torch.nn.init.kaiming_uniform_(w, nonlinearity="relu")``): variance 2 / fan_in."""
    fan_in, _ = _fans(layer.weight.data)
    bound = math.sqrt(6.0 / fan_in)
    _fill(layer.weight, rng.uniform(-bound, bound, layer.weight.shape))
    if zero_bias and layer.bias is not None:
        layer.bias.data[...] = 0


def xavier_uniform(layer, rng: np.random.Generator, zero_bias: bool = True) -> None:
    """Glorot initialisation, uniform form: ``W ~ U(-b, b)``, ``b = sqrt(6 / (fan_in + fan_out))``
    (``torch.nn.init.xavier_uniform_(w)``): variance 2 / (fan_in + fan_out)."""
    fan_in, fan_out = _fans(layer.weight.data)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    _fill(layer.weight, rng.uniform(-bound, bound, layer.weight.shape))
    if zero_bias and layer.bias is not None:
        layer.bias.data[...] = 0


def normal_unit_norm(layer, rng: np.random.Generator, std: float = 0.1) -> None:
    """Draw ``W`` and ``b`` from N(0, std^2), then scale each to unit L2 norm,
    separately: ``W <- W / ||W||_F``, ``b <- b / ||b||_2``.

    The ``linear10`` document's initialisation (``np.random.normal(0, 0.1)``, then
    ``weights * 1 / la.norm(weights)``); after scaling the draw's std no longer
    matters, only the direction. Drawn in float64 and cast, so float32 and float64
    runs start from the same weights up to rounding.
    """
    w = rng.normal(0.0, std, layer.weight.shape)
    _fill(layer.weight, w / np.linalg.norm(w))
    if layer.bias is not None:
        b = rng.normal(0.0, std, layer.bias.shape)
        _fill(layer.bias, b / np.linalg.norm(b))
