"""``linear10``: the single linear layer of its source document (an untitled report, author
not named, of a NumPy "Neural Network library" built to work like PyTorch's, the same
problem solved again with PyTorch's predefined layers).

Network (as documented, including the ReLU before the softmax)::

    x (N, 784) -> fc: Linear 784 -> 10 -> relu: ReLU -> softmax -> cross-entropy
               against the one-hot target

The document's ``LinearLayer_t`` stores ``w`` as (784, 10) and computes
``x @ w + b``; here ``fc.weight`` is (10, 784) and ``fc.bias`` (10,): PyTorch's
layout, so the document's ``w`` is ``fc.weight.T``.

Recipe (documented): weights and bias drawn from N(0, 0.1^2), each then scaled to
unit L2 norm; batch 32, learning rate 0.01, gradients averaged over the batch
(the document's ``1/m`` in ``LinearLayer_t.backward``), 200 epochs; a random
50% of the training set (30,000 images) and of the test set (5,000 images,
the "validation" set).

**Two variants** (``RECIPE.variant``):

* ``correct`` (default): the derivative autograd computes. ReLU's backward
  passes the gradient where the input is positive (``dx = dy * [x > 0]``);
  softmax subtracts the maximum before exponentiating.
* ``as-documented``: the document's own backward, slip included.
  ``Relu_t.backward`` first sets the negative inputs to 0, then sets every
  input ``>= 0`` to 1 -- which includes the zeros it has just written -- so its
  mask is all ones and the gradient passes straight through the ReLU
  (``DocumentedReLU``). Its softmax does not subtract the maximum
  (``DocumentedSoftmaxCrossEntropy``); on this data the logits stay far below
  ``exp``'s overflow, so that second slip changes results only at rounding
  level. The forward pass is the same as ``correct``'s, so the two variants
  differ first in the gradient arriving at ``fc`` (the ReLU's input gradient,
  ``dout/fc``) at step 1: that is where ``nnparity run linear10`` and the
  tests see it.

Choices where the document is silent (also in ``RECIPE.choices``):

* **Weights drawn in PyTorch's (10, 784) layout** (the document draws (784, 10));
  only the distribution is documented, and scaling to unit norm is the same.
* **Subsets**: seeded random 30,000 of the 60,000 training images and 5,000 of
  the 10,000 test images, without replacement; the same for both sides. Each
  run seed is a full replicate of the document's procedure (its own subsets,
  initialisation and batch order).
* **Batch order**: a new seeded permutation of the 30,000 every epoch
  (938 batches, the last of 16 images).
* **Metrics as the document computes them**: training loss and accuracy are the
  averages over the epoch's batches as they are trained; validation loss and
  accuracy after each epoch, over batches of 32 of the 5,000 (per-batch curves
  for both).
* **Documented run in float64** (NumPy's default, the document's dtype).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import init
from ..layers import Linear, ReLU
from ..losses import CrossEntropyLoss, _check_labels
from ..module import Sequential
from ..recipe import Recipe

VARIANTS = ("correct", "as-documented")

RECIPE = Recipe(
    net="linear10",
    source=('an untitled report of a NumPy "Neural Network library" built to work like PyTorch\'s '
            '(author not named)'),
    lr=0.01,
    batch_size=32,
    epochs=200,
    loss="cross_entropy",
    reduction="mean",
    init="N(0, 0.1^2) for weights and bias, each then scaled to unit L2 norm",
    train_size=30_000,
    test_size=5_000,
    dtype="float64",
    variant="correct",
    choices=(
        "Variant 'correct' (autograd's derivative) by default; 'as-documented' reproduces the document's "
        "straight-through ReLU backward and its softmax without max subtraction.",
        "Weights drawn directly in PyTorch's (10, 784) layout, then scaled to unit Frobenius norm; bias "
        "drawn and scaled to unit norm separately.",
        "Seeded random subsets without replacement: 30,000 training and 5,000 test ('validation') images, "
        "the same for both sides; each seed is a full replicate (subsets, init, batch order).",
        "A new seeded permutation of the 30,000 training images every epoch (938 batches, the last of 16).",
        "Training loss / accuracy averaged over the epoch's batches as they are trained, validation after "
        "each epoch in batches of 32, as the document does.",
        "Documented run in float64 (NumPy's default, the document's).",
    ),
)


class DocumentedReLU(ReLU):
    """The document's ``Relu_t``: the forward is ReLU's, the backward is the
    document's, slip included (its derivative is 1 everywhere).

    Its backward, transcribed::

        self.Layer_Input[self.Layer_Input < 0 ] = 0
        self.Layer_Input[self.Layer_Input >= 0 ] = 1
        self.dl_dz = (self.Layer_Input*Layer_output)

    The second line also turns the zeros written by the first into ones, so the
    mask is all ones: ``dx = dy`` (straight through), where ReLU's derivative is
    ``dx = dy * [x > 0]``. Kept here, unchanged, to show that the parity check
    finds it (at ``dout/<the layer before>``, the ReLU's input gradient).

    Shape: any; output has the input's shape.
    """

    def forward(self, x):
        self.layer_input = x.copy()  # the document keeps (and later overwrites) its input
        return super().forward(x)

    def backward(self, dy):
        mask = self.layer_input
        mask[mask < 0] = 0
        mask[mask >= 0] = 1  # SLIP: also every 0 just written, so mask == 1 everywhere
        return mask * dy     # = dy: the gradient passes straight through


class DocumentedSoftmaxCrossEntropy(CrossEntropyLoss):
    """The document's ``SoftmaxCrossEntropy_t``: softmax *without* subtracting the
    maximum, then the mean cross-entropy.

    ``p = exp(z) / sum exp(z)``, ``L = -(1/N) sum_n log p_n[y_n]``; its backward is
    ``dL/dz = (p - onehot(y)) / N`` (the document's ``Y_Pred - Targets``, with its
    ``1/m`` applied in the linear layer: the same gradient). ``exp(z)`` overflows
    for z > ~709 (float64) or ~88 (float32), where ``CrossEntropyLoss`` does not.

    Shape: input logits (N, C); target integer labels (N,); output scalar.
    """

    def forward(self, logits, target):
        _check_labels(logits, target)
        e = np.exp(logits)
        self.p = e / e.sum(axis=1, keepdims=True)  # (N, C) / (N, 1)
        self.target = target
        loss = -np.log(self.p[np.arange(len(target)), target]).sum()
        return np.asarray(loss / len(target) if self.reduction == "mean" else loss, dtype=logits.dtype)

    # backward: CrossEntropyLoss's, p - onehot(y) (/ N for mean): the document's Y_Pred - Targets


def _check_variant(recipe: Recipe) -> str:
    variant = recipe.variant or "correct"
    if variant not in VARIANTS:
        raise ValueError(f"linear10 variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def build(recipe: Recipe = RECIPE, rng: np.random.Generator | None = None, dtype=np.float64) -> Sequential:
    """The network of the recipe's variant, initialised from ``rng``.

    Shape: input (N, 784) -> ReLU outputs (N, 10), the softmax's input.
    """
    relu = DocumentedReLU() if _check_variant(recipe) == "as-documented" else ReLU()
    model = Sequential(OrderedDict(fc=Linear(784, 10, dtype=dtype), relu=relu))
    init.normal_unit_norm(model.fc, rng if rng is not None else np.random.default_rng(0), std=0.1)
    return model


def loss(recipe: Recipe = RECIPE):
    """Softmax + cross-entropy: stable for ``correct``, the document's for ``as-documented``."""
    if _check_variant(recipe) == "as-documented":
        return DocumentedSoftmaxCrossEntropy(recipe.reduction)
    return CrossEntropyLoss(recipe.reduction)


def dead_units(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
    """Indices of the output units never positive on any row of ``x``: the ReLU
    gives them 0 on every image, and with the correct derivative (0 there) no
    gradient ever reaches their weights again: they are dead.

    Args:
        weight, bias: ``fc.weight`` (10, 784) and ``fc.bias`` (10,) of either side.
        x: the images, (N, 784).

    Shape: -> int array of unit indices (possibly empty).
    """
    best = np.full(weight.shape[0], -np.inf)
    for s in range(0, len(x), batch_size):
        z = x[s:s + batch_size] @ weight.T + bias  # (B, 784) @ (784, 10) -> (B, 10) pre-activations
        best = np.maximum(best, z.max(axis=0))
    return np.flatnonzero(best <= 0)
