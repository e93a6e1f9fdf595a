"""A learner's dense layer and ReLU in the convention of the "neural networks from
scratch" book: ``forward(inputs)`` stores ``self.output`` (and returns nothing),
``backward(dvalues)`` stores ``self.dinputs``, ``self.dweights`` and ``self.dbiases``;
weights ``self.weights`` stored (in, out), biases ``self.biases`` of shape (1, out).
The correct backward and a deliberately wrong one (the bias gradient taken from the
first sample of the batch only).

    output = inputs weights + biases  =>  dweights = inputs^T dvalues,
    dbiases = sum over the batch of dvalues,  dinputs = dvalues weights^T

Checked in ``test_conventions.py`` with nothing but the call.
"""

import numpy as np


class Layer_Dense:
    """``output = inputs @ weights + biases`` (mirrors ``torch.nn.Linear``)."""

    def __init__(self, n_inputs, n_neurons, seed=0):
        rng = np.random.default_rng(seed)
        self.weights = 0.01 * rng.standard_normal((n_inputs, n_neurons))
        self.biases = np.zeros((1, n_neurons))

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)


class Layer_DenseFirstSampleBias(Layer_Dense):
    """The same forward; the bias gradient is the first sample's only."""

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = dvalues[:1].copy()   # BUG: every sample adds to the bias gradient
        self.dinputs = np.dot(dvalues, self.weights.T)


class Activation_ReLU:
    """``output = max(0, inputs)`` (mirrors ``torch.nn.ReLU``)."""

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0


class Activation_Softmax_Loss_CategoricalCrossentropy:
    """Softmax and mean cross-entropy fused, as the book does: ``forward(inputs, y_true)`` stores the
    probabilities in ``self.output`` and returns the mean loss; ``backward(dvalues, y_true)`` stores
    dL/dinputs = (softmax - onehot) / N in ``self.dinputs`` (mirrors ``torch.nn.CrossEntropyLoss()``)."""

    def forward(self, inputs, y_true):
        exp = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = exp / np.sum(exp, axis=1, keepdims=True)
        clipped = np.clip(self.output[range(len(inputs)), y_true], 1e-7, 1 - 1e-7)
        return np.mean(-np.log(clipped))

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        self.dinputs = dvalues.copy()
        self.dinputs[range(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples


class Activation_Softmax_Loss_NotAveraged(Activation_Softmax_Loss_CategoricalCrossentropy):
    """The same forward; the backward forgets the 1/N of the mean."""

    def backward(self, dvalues, y_true):
        self.dinputs = dvalues.copy()
        self.dinputs[range(len(dvalues)), y_true] -= 1   # BUG: the loss is a mean, so dinputs / samples
