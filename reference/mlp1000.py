"""PyTorch mirror of ``scratch.nets.mlp1000``: same layer names, so the state_dict
keys are ``U.weight``, ``U.bias``, ``V.weight``, ``V.bias``."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from scratch.nets.mlp1000 import RECIPE
from scratch.recipe import Recipe


def build(recipe: Recipe = RECIPE) -> nn.Sequential:
    """784 -> U -> ReLU -> V -> logits. Weights are overwritten by the bridge."""
    return nn.Sequential(OrderedDict(
        U=nn.Linear(784, 1000),
        relu=nn.ReLU(),
        V=nn.Linear(1000, 10),
    ))


def loss(recipe: Recipe = RECIPE) -> nn.Module:
    return nn.CrossEntropyLoss(reduction=recipe.reduction)
