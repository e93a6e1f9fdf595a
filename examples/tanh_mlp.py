"""784-256-128-10 tanh MLP, softmax cross-entropy: a learner's own network, both sides in one file.

Not a documented network: nn-parity takes it by path, through every tool::

    nnparity run examples/tanh_mlp.py          # step parity, both sides trained on MNIST, report
    nnparity check examples/tanh_mlp.py        # step parity and the first divergence
    nnparity gradcheck examples/tanh_mlp.py    # finite differences, no torch as witness
    nnparity bench examples/tanh_mlp.py        # seconds per epoch, scratch vs torch

Network::

    x (N, 784) -> fc1: Linear 784 -> 256 -> tanh -> fc2: Linear 256 -> 128 -> tanh
               -> fc3: Linear 128 -> 10 -> softmax -> cross-entropy against the label

What nn-parity needs from this file (the contract, README "Your own network"):
``RECIPE``, ``build(recipe, rng, dtype)`` and ``loss(recipe)`` for the scratch side,
``torch_build(recipe)`` and ``torch_loss(recipe)`` for the PyTorch mirror, whose
``state_dict()`` names (``fc1.weight`` ...) are the scratch model's. The mirror's
weights are overwritten by the scratch side's before the first step.

``NETWORK`` is optional: it sets the registry fields a network may need (here
``torch_threads=1``: on a busy 2-core machine a torch step of this net took 30 ms
with 2 intra-op threads and 4 ms with 1; a CNN would add ``flat=False``).

``Tanh`` is written here, by the learner; the linear layers, the loss and the
initialisation come from ``scratch/``. ``tanh_mlp_wrong.py`` is the same network
with a slip in ``Tanh.backward``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from torch import nn

import nnparity
from scratch import init
from scratch.layers import Linear
from scratch.losses import CrossEntropyLoss
from scratch.module import Module, Sequential
from scratch.recipe import Recipe

RECIPE = Recipe(
    net="tanh_mlp",
    source="examples/tanh_mlp.py (a learner's own network; no source document)",
    lr=0.1,
    batch_size=64,
    epochs=15,
    loss="cross_entropy",
    reduction="mean",
    init="Glorot uniform U(-b, b), b = sqrt(6 / (fan_in + fan_out)), for the weights; biases zero",
    dtype="float64",
    choices=(
        "Glorot (Xavier) uniform weights, the initialisation made for tanh; zero biases.",
        "Plain SGD, lr 0.1, batch 64, loss averaged over the batch.",
        "15 epochs: chosen so that the full run takes minutes, not hours, on a shared 2-core machine "
        "(one epoch of both sides: 6 s scratch, 9 s torch there, at load 4.6).",
        "float64, so that the two sides' trajectories stay together over the whole run.",
    ),
)

NETWORK = nnparity.Network("tanh_mlp", "784-256-128-10 tanh MLP, softmax cross-entropy (examples/tanh_mlp.py)",
                           torch_threads=1)


class Tanh(Module):
    """``y = tanh(x)`` elementwise (mirrors ``torch.nn.Tanh``). No parameters.

    Shape: any; the output has the input's shape.
    """

    def forward(self, x):
        self.y = np.tanh(x)  # backward needs only the output
        return self.y

    def backward(self, dy):
        # y = tanh(x)  =>  dy/dx = 1 - tanh(x)^2 = 1 - y^2,  so  dx = dy * (1 - y^2)
        return dy * (1 - self.y ** 2)


def build(recipe: Recipe = RECIPE, rng: np.random.Generator | None = None, dtype=np.float64,
          tanh=Tanh) -> Sequential:
    """The network, Glorot-initialised from ``rng`` (``tanh``: the activation class;
    ``tanh_mlp_wrong.py`` passes its own).

    Shape: input (N, 784) -> logits (N, 10).
    """
    model = Sequential(OrderedDict(
        fc1=Linear(784, 256, dtype=dtype),
        tanh1=tanh(),
        fc2=Linear(256, 128, dtype=dtype),
        tanh2=tanh(),
        fc3=Linear(128, 10, dtype=dtype),
    ))
    rng = rng if rng is not None else np.random.default_rng(0)
    for layer in (model.fc1, model.fc2, model.fc3):
        init.xavier_uniform(layer, rng)
    return model


def loss(recipe: Recipe = RECIPE) -> CrossEntropyLoss:
    """Softmax + cross-entropy, reduced as the recipe says."""
    return CrossEntropyLoss(reduction=recipe.reduction)


# --- the PyTorch mirror: the same names, so the weights copy across key by key ----------

def torch_build(recipe: Recipe = RECIPE) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(784, 256),
        tanh1=nn.Tanh(),
        fc2=nn.Linear(256, 128),
        tanh2=nn.Tanh(),
        fc3=nn.Linear(128, 10),
    ))


def torch_loss(recipe: Recipe = RECIPE) -> nn.Module:
    return nn.CrossEntropyLoss(reduction=recipe.reduction)
