"""``mlp1000``: the two-layer MLP of "Design and Train Neural Network from Scratch"
("Design and Train Neural Network from Scratch", two copies of one README).

Network (as documented)::

    x (N, 784) -> U: Linear 784 -> 1000 -> ReLU -> V: Linear 1000 -> 10 -> softmax
               -> cross-entropy against the one-hot target

The document names the layers ``U`` and ``V`` (weights ``Uw``, ``Vw``, biases
``Ubias``, ``Vbias``); here they are ``U.weight`` (1000, 784), ``U.bias`` (1000,),
``V.weight`` (10, 1000), ``V.bias`` (10,): PyTorch's layout, so the document's
``Uw`` (784x1000) is ``U.weight.T``.

Recipe: minibatch 100, one update per minibatch, learning rate 0.001, 100 epochs,
pixels divided by 255 and flattened row-major.

Choices where the document is silent or ambiguous (also in ``RECIPE.choices``):

* **Reduction.** The document computes "the gradient of each sample" and
  updates once per minibatch, without saying whether the per-sample gradients
  are summed or averaged. With lr 0.001 only the sum trains to the reported
  ~0% training error in 100 epochs, so the loss is the *sum* over the batch
  (``reduction="sum"``; the recipe field makes ``mean`` one flag away).
* **Initialisation.** "initialized using a normal distribution but between the
  range of [-1/sqrt(n), 1/sqrt(n)]": a distribution bounded to that range is read
  as the uniform U(-1/sqrt(n), 1/sqrt(n)), n = fan-in, for weights *and* biases
  (the document says "weight and bias parameter matrixes ... were initialized").
* **Batch order.** A fresh seeded permutation of the 60,000 images every epoch.
* **Metrics.** Training loss (mean cross-entropy per sample) and training error %
  are accumulated over the epoch's minibatches as they are trained, as the
  document's ``calculate_loss_bs`` / ``getError`` do; test accuracy is measured
  after each epoch (the document reports none).
* **Documented run dtype: float64**, so the two sides' trajectories stay
  together over 60,000 steps and the side-by-side comparison stays meaningful;
  float32 parity is checked too.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import init
from ..layers import Linear, ReLU
from ..losses import CrossEntropyLoss
from ..module import Sequential
from ..recipe import Recipe

RECIPE = Recipe(
    net="mlp1000",
    source=('"Design and Train Neural Network from Scratch", the README of the GitHub repository '
            "rgkannan676/Design-and-Train-Neural-Network-from-Scratch (two copies of it)"),
    lr=0.001,
    batch_size=100,
    epochs=100,
    loss="cross_entropy",
    reduction="sum",
    init="uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases",
    dtype="float64",
    choices=(
        "Loss summed over the minibatch (reduction 'sum'): the document does not say sum or mean; "
        "with lr 0.001 only the sum trains in 100 epochs.",
        "'normal distribution but between [-1/sqrt(n), 1/sqrt(n)]' read as uniform in that range, "
        "for weights and biases, n = fan-in.",
        "A new seeded permutation of the training set every epoch; both sides get the same batches.",
        "Train loss / error are averaged over the epoch's minibatches as they are trained "
        "(as the document's getError); test accuracy after every epoch.",
        "Documented run in float64: the two sides' trajectories stay together over 60,000 steps.",
    ),
)


def build(recipe: Recipe = RECIPE, rng: np.random.Generator | None = None, dtype=np.float64) -> Sequential:
    """The network, initialised from ``rng`` with the documented scheme.

    Shape: input (N, 784) -> logits (N, 10).
    """
    model = Sequential(OrderedDict(
        U=Linear(784, 1000, dtype=dtype),
        relu=ReLU(),
        V=Linear(1000, 10, dtype=dtype),
    ))
    init.uniform_fan_in(model, rng if rng is not None else np.random.default_rng(0))
    return model


def loss(recipe: Recipe = RECIPE) -> CrossEntropyLoss:
    """Softmax + cross-entropy, reduced as the recipe says."""
    return CrossEntropyLoss(reduction=recipe.reduction)
