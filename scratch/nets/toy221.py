"""``toy221``: the hand-worked 2-2-2 sigmoid network of the source document "Assignment 4 - Part 1",
part 1 (the backpropagation exercise of "Assignment 4").

Network (as documented; the names are the document's)::

    h1 = w1*i1 + w2*i2 (+ b1)      out_h1 = sigmoid(h1)
    h2 = w3*i1 + w4*i2 (+ b1)      out_h2 = sigmoid(h2)
    o1 = w5*out_h1 + w6*out_h2 (+ b2)     out_o1 = sigmoid(o1)
    o2 = w7*out_h1 + w8*out_h2 (+ b2)     out_o2 = sigmoid(o2)
    E_total = 1/2 (t1 - out_o1)^2 + 1/2 (t2 - out_o2)^2

with i1 = 0.05, i2 = 0.10, t1 = 0.01, t2 = 0.99, w1..w8 = 0.15, 0.20, 0.25,
0.30, 0.40, 0.45, 0.50, 0.55 and no biases. Training: full-batch gradient
descent (one sample), ``new weight = old weight - lr * dE/dw``, 181 steps, for
each lr in 0.1, 0.2, 0.5, 0.8, 1.0, 2.0.

The eight derivatives are written out in ``Toy221.backward`` term by term, as
the document does, so they can be checked against it line by line; the tests
check them against autograd to float64 rounding.

**Other published versions of this net.** Any initial weights, and optional
biases: ``b1`` shared by both hidden units and ``b2`` by both output units (the
form of Matt Mazur's widely copied "A Step by Step Backpropagation Example",
b1 = 0.35, b2 = 0.60), trainable or frozen. Mazur's biases are constants (he
updates only w1..w8), i.e. ``freeze_biases=True``; a frozen bias is a buffer
(in ``state_dict`` under the same name, untouched by the optimizer), a
trainable one a parameter. ``MAZUR`` holds that version; the tests reproduce
its published numbers.

The parameters are scalars named ``w1`` ... ``w8``, ``b1``, ``b2``, on both sides,
so the ``state_dict`` keys are the document's names.

Choices where the document is silent (also in ``RECIPE.choices``):

* **181 steps = 181 updates**: records are kept for steps 0..181, step k holding
  the weights after k updates and the E_total and outputs at them
  (the document's 181 rows are steps 0..180).
* **float64** for the documented run: the exercise's values are compared to
  the 12th decimal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..layers import Sigmoid
from ..losses import HalfSquaredError
from ..module import Module, Parameter
from ..recipe import Recipe

WEIGHTS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8")
BIASES = ("b1", "b2")
DOCUMENT_WEIGHTS = (0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55)
DOCUMENT_LRS = (0.1, 0.2, 0.5, 0.8, 1.0, 2.0)


@dataclass(frozen=True)
class ToyRecipe(Recipe):
    """A ``Recipe`` for the hand-worked net: one sample, full-batch steps.

    ``epochs`` is the number of gradient-descent steps (one batch per epoch) and
    ``lr`` the learning rate of one run; a documented run sweeps ``lrs``.

    Attributes:
        lrs: the learning rates of the sweep.
        weights: initial w1..w8.
        biases: initial (b1, b2), or None for no biases.
        freeze_biases: biases stay constant (buffers) instead of being trained.
        inputs: (i1, i2).
        targets: (t1, t2).
    """

    lrs: tuple = DOCUMENT_LRS
    weights: tuple = DOCUMENT_WEIGHTS
    biases: tuple | None = None
    freeze_biases: bool = False
    inputs: tuple = (0.05, 0.10)
    targets: tuple = (0.01, 0.99)

    def replace(self, **changes) -> "ToyRecipe":
        """``Recipe.replace``; new weights or biases without a new ``init`` rewrite ``init`` to name them."""
        r = super().replace(**changes)
        given = {k for k, v in changes.items() if v is not None}
        if given & {"weights", "biases"} and "init" not in given:
            b = r.biases
            r = dataclasses.replace(r, init=f"w1..w8 = {', '.join(map(repr, r.weights))}; " + (
                "no biases" if b is None else
                f"b1 = {b[0]!r}, b2 = {b[1]!r} ({'frozen' if r.freeze_biases else 'trained'})"))
        return r

    def summary(self) -> str:
        bias = ("no biases" if self.biases is None else
                f"biases b1, b2 = {self.biases[0]}, {self.biases[1]} ({'frozen' if self.freeze_biases else 'trained'})")
        return f"lr {', '.join(map(str, self.lrs))}; {self.epochs} full-batch steps; {bias}; run in {self.dtype}"


RECIPE = ToyRecipe(
    net="toy221",
    source='"Assignment 4 - Part 1" (author not named)',
    lr=DOCUMENT_LRS[0],
    batch_size=1,
    epochs=181,
    loss="half_squared_error",
    reduction="sum",
    init="the document's w1..w8 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55; no biases",
    dtype="float64",
    choices=(
        "181 steps = 181 updates; records for steps 0..181, step k = the weights after k updates with "
        "E_total and the outputs at them (the document's 181 rows are steps 0..180).",
        "Optional biases b1 (shared by h1, h2) and b2 (shared by o1, o2), as in Matt Mazur's example; "
        "frozen biases are constants (buffers), trainable ones parameters.",
        "Gradients of all weights are taken at the same (old) weights, then all are updated at once.",
        "float64, so the two sides can be compared to 1e-12.",
    ),
)

# Matt Mazur, "A Step by Step Backpropagation Example" (2015): the same net and
# numbers, with constant biases b1 = 0.35, b2 = 0.60 and lr 0.5.
MAZUR = RECIPE.replace(biases=(0.35, 0.60), freeze_biases=True, lrs=(0.5,), lr=0.5,
                       init="Mazur's w1..w8 (the document's) and constant biases b1 = 0.35, b2 = 0.60")


class Toy221(Module):
    """The 2-2-2 sigmoid network with scalar parameters ``w1`` ... ``w8`` (and
    ``b1``, ``b2``), forward and backward written out as in the document.

    ``out_h = sigmoid(W_h i + b1)``, ``out_o = sigmoid(W_o out_h + b2)`` with
    ``W_h = [[w1, w2], [w3, w4]]``, ``W_o = [[w5, w6], [w7, w8]]``.

    Args:
        weights: initial w1..w8.
        biases: initial (b1, b2), or None.
        freeze_biases: keep the biases constant (registered as buffers).
        dtype: parameter dtype.

    Shape:
        input (N, 2): columns i1, i2 -> output (N, 2): columns out_o1, out_o2.
        Every parameter is a 0-d array. Gradients are summed over the N samples.
    """

    def __init__(self, weights=DOCUMENT_WEIGHTS, biases=None, freeze_biases: bool = False, dtype=np.float64):
        super().__init__()
        if len(weights) != 8:
            raise ValueError(f"toy221 needs 8 weights w1..w8, got {len(weights)}")
        for name, value in zip(WEIGHTS, weights):
            setattr(self, name, Parameter(np.array(value, dtype=dtype)))
        self.has_bias = biases is not None
        if self.has_bias:
            if len(biases) != 2:
                raise ValueError(f"toy221 takes 2 biases b1, b2 (one per layer), got {len(biases)}")
            for name, value in zip(BIASES, biases):
                if freeze_biases:
                    self.register_buffer(name, np.array(value, dtype=dtype))
                else:
                    setattr(self, name, Parameter(np.array(value, dtype=dtype)))
        self.sigmoid_h = Sigmoid()
        self.sigmoid_o = Sigmoid()
        self.record = False
        self.outputs: dict = {}
        self.upstream: dict = {}

    def _value(self, name):
        v = getattr(self, name)
        return v.data if isinstance(v, Parameter) else v

    def forward(self, x):
        w1, w2, w3, w4, w5, w6, w7, w8 = (self._value(k) for k in WEIGHTS)
        b1, b2 = (self._value("b1"), self._value("b2")) if self.has_bias else (0, 0)
        i1, i2 = x[:, 0], x[:, 1]
        h1 = w1 * i1 + w2 * i2 + b1
        h2 = w3 * i1 + w4 * i2 + b1
        out_h = self.sigmoid_h.forward(np.stack([h1, h2], axis=1))  # (N, 2): out_h1, out_h2
        o1 = w5 * out_h[:, 0] + w6 * out_h[:, 1] + b2
        o2 = w7 * out_h[:, 0] + w8 * out_h[:, 1] + b2
        out_o = self.sigmoid_o.forward(np.stack([o1, o2], axis=1))  # (N, 2): out_o1, out_o2
        self.x, self.out_h, self.out_o = x, out_h, out_o
        if self.record:
            self.outputs = {"sigmoid_h": out_h, "sigmoid_o": out_o}
        return out_o

    def backward(self, dE_dout_o):
        """``dE_dout_o`` (N, 2) is dE/dout_o1, dE/dout_o2 = (out_o1 - t1), (out_o2 - t2)
        for E_total; accumulates the eight (ten) derivatives; returns dE/d(input) (N, 2)."""
        w5, w6, w7, w8 = (self._value(k) for k in ("w5", "w6", "w7", "w8"))
        i1, i2 = self.x[:, 0], self.x[:, 1]
        out_h1, out_h2 = self.out_h[:, 0], self.out_h[:, 1]
        out_o1, out_o2 = self.out_o[:, 0], self.out_o[:, 1]
        dE_dout_o1, dE_dout_o2 = dE_dout_o[:, 0], dE_dout_o[:, 1]  # = (out_o1 - t1), (out_o2 - t2)

        # Output layer: dE/dw = dE/dout_o * dout_o/do * do/dw, with dout_o/do = out_o (1 - out_o).
        # dE/dw5 = (out_o1 - t1) * out_o1 (1 - out_o1) * out_h1
        dE_dw5 = dE_dout_o1 * out_o1 * (1 - out_o1) * out_h1
        # dE/dw6 = (out_o1 - t1) * out_o1 (1 - out_o1) * out_h2
        dE_dw6 = dE_dout_o1 * out_o1 * (1 - out_o1) * out_h2
        # dE/dw7 = (out_o2 - t2) * out_o2 (1 - out_o2) * out_h1
        dE_dw7 = dE_dout_o2 * out_o2 * (1 - out_o2) * out_h1
        # dE/dw8 = (out_o2 - t2) * out_o2 (1 - out_o2) * out_h2
        dE_dw8 = dE_dout_o2 * out_o2 * (1 - out_o2) * out_h2

        # Hidden layer: dE/dw = dE/dout_h * dout_h/dh * dh/dw, with dout_h/dh = out_h (1 - out_h), dh1/dw1 = i1 ...
        # and out_h1 reaches E through o1 (weight w5) and o2 (weight w7), out_h2 through o1 (w6) and o2 (w8):
        # dE/dw1 = [(out_o1 - t1) out_o1 (1 - out_o1) w5 + (out_o2 - t2) out_o2 (1 - out_o2) w7] out_h1 (1 - out_h1) i1
        dE_dw1 = ((dE_dout_o1 * out_o1 * (1 - out_o1) * w5 + dE_dout_o2 * out_o2 * (1 - out_o2) * w7)
                  * out_h1 * (1 - out_h1) * i1)
        # dE/dw2 = [(out_o1 - t1) out_o1 (1 - out_o1) w5 + (out_o2 - t2) out_o2 (1 - out_o2) w7] out_h1 (1 - out_h1) i2
        dE_dw2 = ((dE_dout_o1 * out_o1 * (1 - out_o1) * w5 + dE_dout_o2 * out_o2 * (1 - out_o2) * w7)
                  * out_h1 * (1 - out_h1) * i2)
        # dE/dw3 = [(out_o1 - t1) out_o1 (1 - out_o1) w6 + (out_o2 - t2) out_o2 (1 - out_o2) w8] out_h2 (1 - out_h2) i1
        dE_dw3 = ((dE_dout_o1 * out_o1 * (1 - out_o1) * w6 + dE_dout_o2 * out_o2 * (1 - out_o2) * w8)
                  * out_h2 * (1 - out_h2) * i1)
        # dE/dw4 = [(out_o1 - t1) out_o1 (1 - out_o1) w6 + (out_o2 - t2) out_o2 (1 - out_o2) w8] out_h2 (1 - out_h2) i2
        dE_dw4 = ((dE_dout_o1 * out_o1 * (1 - out_o1) * w6 + dE_dout_o2 * out_o2 * (1 - out_o2) * w8)
                  * out_h2 * (1 - out_h2) * i2)

        # the gradients arriving at the hidden outputs (the brackets above), for the biases and the record
        dE_dout_h1 = dE_dout_o1 * out_o1 * (1 - out_o1) * w5 + dE_dout_o2 * out_o2 * (1 - out_o2) * w7
        dE_dout_h2 = dE_dout_o1 * out_o1 * (1 - out_o1) * w6 + dE_dout_o2 * out_o2 * (1 - out_o2) * w8

        for name, g in zip(WEIGHTS, (dE_dw1, dE_dw2, dE_dw3, dE_dw4, dE_dw5, dE_dw6, dE_dw7, dE_dw8)):
            getattr(self, name).grad += g.sum()  # summed over the samples (one in the document)
        if self.has_bias and isinstance(self.b1, Parameter):
            # b1 feeds h1 and h2 (dh/db1 = 1), b2 feeds o1 and o2 (do/db2 = 1):
            # dE/db1 = dE/dout_h1 out_h1 (1 - out_h1) + dE/dout_h2 out_h2 (1 - out_h2)
            self.b1.grad += (dE_dout_h1 * out_h1 * (1 - out_h1) + dE_dout_h2 * out_h2 * (1 - out_h2)).sum()
            # dE/db2 = (out_o1 - t1) out_o1 (1 - out_o1) + (out_o2 - t2) out_o2 (1 - out_o2)
            self.b2.grad += (dE_dout_o1 * out_o1 * (1 - out_o1) + dE_dout_o2 * out_o2 * (1 - out_o2)).sum()
        if self.record:
            self.upstream = {"sigmoid_o": dE_dout_o, "sigmoid_h": np.stack([dE_dout_h1, dE_dout_h2], axis=1)}
        # dE/di1 = dE/dh1 w1 + dE/dh2 w3, dE/di2 = dE/dh1 w2 + dE/dh2 w4 (not needed for training;
        # returned so the layer check can compare it with autograd)
        w1, w2, w3, w4 = (self._value(k) for k in ("w1", "w2", "w3", "w4"))
        dE_dh1, dE_dh2 = dE_dout_h1 * out_h1 * (1 - out_h1), dE_dout_h2 * out_h2 * (1 - out_h2)
        return np.stack([dE_dh1 * w1 + dE_dh2 * w3, dE_dh1 * w2 + dE_dh2 * w4], axis=1)

    def extra_repr(self):
        bias = ("" if not self.has_bias else
                f", biases=({float(self._value('b1'))}, {float(self._value('b2'))}), "
                f"freeze_biases={not isinstance(self.b1, Parameter)}")
        return f"weights=({', '.join(str(float(self._value(k))) for k in WEIGHTS)}){bias}"


def data(recipe: ToyRecipe = RECIPE, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The one training sample: inputs (1, 2) = [[i1, i2]], targets (1, 2) = [[t1, t2]]."""
    return (np.array([recipe.inputs], dtype=dtype), np.array([recipe.targets], dtype=dtype))


def build(recipe: ToyRecipe = RECIPE, rng: np.random.Generator | None = None, dtype=np.float64) -> Toy221:
    """The network with the recipe's weights and biases (``rng`` is unused: nothing is random).

    Shape: input (N, 2) -> output (N, 2).
    """
    return Toy221(recipe.weights, recipe.biases, recipe.freeze_biases, dtype=dtype)


def loss(recipe: ToyRecipe = RECIPE) -> HalfSquaredError:
    """E_total = 1/2 sum (t - out)^2."""
    return HalfSquaredError()
