"""PyTorch mirror of ``scratch.nets.toy221``: scalar parameters ``w1`` ... ``w8``
(and ``b1``, ``b2``: parameters when trained, buffers when frozen), the forward
written with torch ops, the gradients left to autograd."""

from __future__ import annotations

import torch
from torch import nn

from scratch.nets.toy221 import BIASES, RECIPE, WEIGHTS, ToyRecipe


class Toy221(nn.Module):
    """The 2-2-2 sigmoid net. Input (N, 2) -> output (N, 2)."""

    def __init__(self, weights, biases=None, freeze_biases: bool = False):
        super().__init__()
        for name, value in zip(WEIGHTS, weights):
            setattr(self, name, nn.Parameter(torch.tensor(float(value), dtype=torch.float64)))
        self.has_bias = biases is not None
        if self.has_bias:
            for name, value in zip(BIASES, biases):
                t = torch.tensor(float(value), dtype=torch.float64)
                if freeze_biases:
                    self.register_buffer(name, t)
                else:
                    setattr(self, name, nn.Parameter(t))
        self.sigmoid_h = nn.Sigmoid()
        self.sigmoid_o = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, b2 = (self.b1, self.b2) if self.has_bias else (0.0, 0.0)
        i1, i2 = x[:, 0], x[:, 1]
        out_h = self.sigmoid_h(torch.stack([self.w1 * i1 + self.w2 * i2 + b1,
                                            self.w3 * i1 + self.w4 * i2 + b1], dim=1))
        return self.sigmoid_o(torch.stack([self.w5 * out_h[:, 0] + self.w6 * out_h[:, 1] + b2,
                                           self.w7 * out_h[:, 0] + self.w8 * out_h[:, 1] + b2], dim=1))


class HalfSquaredError(nn.Module):
    """E_total = 1/2 sum (t - out)^2 = 0.5 * MSELoss(reduction="sum")."""

    reduction = "sum"

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * nn.functional.mse_loss(output, target, reduction="sum")


def build(recipe: ToyRecipe = RECIPE) -> Toy221:
    return Toy221(recipe.weights, recipe.biases, recipe.freeze_biases)


def loss(recipe: ToyRecipe = RECIPE) -> nn.Module:
    return HalfSquaredError()
