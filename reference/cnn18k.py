"""PyTorch mirror of ``scratch.nets.cnn18k``: the same layers under the same names
(``conv1.weight``, ``bn1.running_var``, ``bn1.num_batches_tracked``, ``fc.bias``...),
built from ``torch.nn`` modules, with ``MaskedDropout`` in place of ``nn.Dropout`` so
that the scratch side's dropout masks can be applied here, and ``AlignedMaxPool2d`` /
``AlignedReLU``: ``nn.MaxPool2d`` / ``nn.ReLU`` that, during step parity only, resolve
ties within the parity tolerance (equal maxima; inputs at 0) the way the scratch side
did (see ``reference/layers.py``); otherwise exactly torch's modules."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from scratch.nets.cnn18k import CHANNELS, DROPOUT_BLOCKS, DROPOUT_P, POOL_AFTER, RECIPE
from scratch.recipe import Recipe

from .layers import AlignedMaxPool2d, AlignedReLU, MaskedDropout


def build(recipe: Recipe = RECIPE, *, dropout: float = DROPOUT_P, dropout_blocks=DROPOUT_BLOCKS) -> nn.Sequential:
    """(N, 1, 28, 28) -> log-probabilities (N, 10). Weights are overwritten by the bridge."""
    layers = OrderedDict()
    for b in range(1, 5):
        layers[f"conv{b}"] = nn.Conv2d(CHANNELS[b - 1], CHANNELS[b], 3)
        layers[f"bn{b}"] = nn.BatchNorm2d(CHANNELS[b])
        layers[f"relu{b}"] = AlignedReLU()
        if b in dropout_blocks:
            layers[f"drop{b}"] = MaskedDropout(dropout)
        if b in POOL_AFTER:
            layers[f"pool{b}"] = AlignedMaxPool2d(2)
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(CHANNELS[-1], 10)
    layers["log_softmax"] = nn.LogSoftmax(dim=1)
    return nn.Sequential(layers)


def loss(recipe: Recipe = RECIPE) -> nn.Module:
    return nn.NLLLoss(reduction=recipe.reduction)
