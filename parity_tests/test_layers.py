"""What the battery (``parity_tests/test_battery.py``, every kind of the layer-case table against
torch in float64 and float32) leaves to hand-written cases: a Linear without bias, a square weight
with a missing transpose, saturated sigmoids, huge logits, refused arguments, a degenerate
gradient, a forward that mutates its input, ``zero_grad``."""

import numpy as np
import pytest
import torch

import scratch
from nnparity.diagnosis.layercheck import check_layer
from nnparity.core.parity import ParityError


def test_linear_without_bias(dtype):
    layer = scratch.Linear(6, 3, bias=False, dtype=dtype)
    layer.weight.data[...] = np.random.default_rng(1).standard_normal((3, 6))
    check_layer(layer, torch.nn.Linear(6, 3, bias=False), (5, 6), dtype=dtype)


def test_linear_square_catches_missing_transpose(dtype):
    """A square weight is where a forgotten transpose hides: the check must see it."""
    layer = scratch.Linear(4, 4, dtype=dtype)
    layer.weight.data[...] = np.random.default_rng(2).standard_normal((4, 4))

    def wrong_backward(dy):
        layer.weight.grad += layer.x.T @ dy  # transposed dW
        layer.bias.grad += dy.sum(axis=0)
        return dy @ layer.weight.data

    layer.backward = wrong_backward
    with pytest.raises(ParityError, match=r"grad/weight \(parameter gradient\)"):
        check_layer(layer, torch.nn.Linear(4, 4), (3, 4), dtype=dtype)


def test_sigmoid_saturates_without_overflow_warning(dtype):
    # pytest turns RuntimeWarning into errors (pyproject): exp overflow would fail here
    x = np.array([[-800.0, -50.0, 0.0, 50.0, 800.0]])
    check_layer(scratch.Sigmoid(), torch.nn.Sigmoid(), x=x, dtype=dtype,
                upstream=np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]))


def test_cross_entropy_is_stable_for_huge_logits(dtype):
    loss = scratch.CrossEntropyLoss("sum")
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 1.0]], dtype=dtype)
    value = loss.forward(z, np.array([0, 2]))
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(z), torch.tensor([0, 2]), reduction="sum")
    assert np.isfinite(value) and np.isclose(value, ref.item())
    assert np.isfinite(loss.backward()).all()


def test_cross_entropy_rejects_one_hot_targets():
    with pytest.raises(ValueError, match="integer class labels"):
        scratch.CrossEntropyLoss().forward(np.zeros((2, 3)), np.eye(3)[:2])


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction must be one of"):
        scratch.CrossEntropyLoss("avg")


def test_degenerate_gradient_fails():
    """Both gradients ~0 (every ReLU input negative): the comparison proves nothing and must fail."""
    x = -np.abs(np.random.default_rng(0).standard_normal((4, 5))) - 0.1
    with pytest.raises(ParityError, match="DEGENERATE"):
        check_layer(scratch.ReLU(), torch.nn.ReLU(), x=x)


def test_forward_that_mutates_its_input_is_reported():
    class Mutating(scratch.ReLU):
        def forward(self, x):
            out = super().forward(x)
            x[...] = 0
            return out

    with pytest.raises(ParityError, match="modified its input"):
        check_layer(Mutating(), torch.nn.ReLU(), (3, 4))


def test_gradients_accumulate_and_zero_grad_clears(dtype):
    layer = scratch.Linear(3, 2, dtype=dtype)
    layer.weight.data[...] = np.arange(6).reshape(2, 3) / 10
    x, g = np.ones((4, 3), dtype), np.arange(8, dtype=dtype).reshape(4, 2)
    layer.forward(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_zero_grad_is_lazy_but_reads_as_zeros(dtype):
    """``zero_grad`` writes nothing: the next gradient is taken as it is (Linear's dW computed into
    the old array), a read before it gives zeros, and a second backward still adds."""
    layer = scratch.Linear(3, 2, dtype=dtype)
    layer.weight.data[...] = np.arange(6).reshape(2, 3) / 10
    x, g = np.ones((4, 3), dtype), np.arange(8, dtype=dtype).reshape(4, 2)
    layer.forward(x)
    layer.backward(g)
    once, bias_once = layer.weight.grad.copy(), layer.bias.grad.copy()
    old = layer.weight.grad
    layer.zero_grad()
    layer.forward(x)
    layer.backward(g)
    assert layer.weight.grad is old  # computed into the array zero_grad left, no new allocation
    np.testing.assert_array_equal(layer.weight.grad, once)
    np.testing.assert_array_equal(layer.bias.grad, bias_once)
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert not layer.weight.grad.any()  # read before any backward: zeros
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, once)  # and the zeros were added to


def test_accumulate_adds_a_gradient_of_another_dtype():
    """Only an array of the gradient's own shape and dtype is taken as it is; another is added (cast)."""
    p = scratch.module.Parameter(np.zeros(3, np.float32))
    p.zero_grad()
    p.accumulate(np.array([1.0, 2.0, 3.0]))
    assert p.grad.dtype == np.float32
    np.testing.assert_array_equal(p.grad, [1, 2, 3])
