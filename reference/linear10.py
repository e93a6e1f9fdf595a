"""PyTorch mirror of ``scratch.nets.linear10`` (the document's own "PyTorch
predefined layers" solution): ``fc`` then ``relu``, ``nn.CrossEntropyLoss`` on the
ReLU outputs. Whatever the scratch variant, this side is autograd's derivative:
that is what the as-documented variant is checked against."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from scratch.nets.linear10 import RECIPE
from scratch.recipe import Recipe


def build(recipe: Recipe = RECIPE) -> nn.Sequential:
    """784 -> fc -> ReLU -> (softmax in the loss). Weights are overwritten by the bridge."""
    return nn.Sequential(OrderedDict(fc=nn.Linear(784, 10), relu=nn.ReLU()))


def loss(recipe: Recipe = RECIPE) -> nn.Module:
    return nn.CrossEntropyLoss(reduction=recipe.reduction)
