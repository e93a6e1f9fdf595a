"""PyTorch mirror of ``scratch.nets.mlp16``: same layer names, so the state_dict keys
are ``fc1.weight`` ... ``fc3.bias``; the loss is ``nn.MSELoss`` against
``F.one_hot`` of the labels."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from scratch.nets.mlp16 import RECIPE
from scratch.recipe import Recipe


class OneHotMSELoss(nn.Module):
    """``nn.MSELoss`` against the one-hot encoding of integer labels (input (N, C), target (N,))."""

    def __init__(self, num_classes: int, reduction: str = "mean"):
        super().__init__()
        self.num_classes, self.reduction = num_classes, reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, F.one_hot(target, self.num_classes).to(output.dtype), reduction=self.reduction)


def build(recipe: Recipe = RECIPE) -> nn.Sequential:
    """784 -> fc1 -> ReLU -> fc2 -> ReLU -> fc3 -> sigmoid. Weights are overwritten by the bridge."""
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(784, 16),
        relu1=nn.ReLU(),
        fc2=nn.Linear(16, 16),
        relu2=nn.ReLU(),
        fc3=nn.Linear(16, 10),
        sigmoid=nn.Sigmoid(),
    ))


def loss(recipe: Recipe = RECIPE) -> nn.Module:
    return OneHotMSELoss(10, reduction=recipe.reduction)
