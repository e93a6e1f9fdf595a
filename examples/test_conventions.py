"""Each from-scratch convention, checked with the user API in a 0-3 line call: the
correct layer passes, the deliberately wrong one fails with a message naming the wrong
tensor and element. Which conventions are detected, and how layouts are mapped:
``nnparity/training/conventions.py``; the README's "Check your own derivation" lists them."""

import re

import pytest
import torch

from affine_attributes import Affine, AffineWrongBias
from cs231n_layers import (affine_backward, affine_forward, batchnorm_backward, batchnorm_forward, conv_backward_naive,
                           conv_backward_naive_ignores_stride, conv_forward_naive, relu_backward, relu_forward)
from dense_methods import DenseTanh, DenseTanhWrongDerivative
from mapped_names import Logistic, LogisticWrongDerivative
from nnfs_dense import Activation_ReLU, Layer_Dense, Layer_DenseFirstSampleBias
from numpy_ml_style import FullyConnected, FullyConnectedWrongScale

# "<name> float64 <tensor> (<what>): max abs ... at (<element>)": the first failing tensor and its element
FIRST = re.compile(r"^(\w+) float64 (\S+) \([^)]*\): max abs \S+ at \(([\d, ]+)\)")


def first_failure(excinfo):
    m = FIRST.match(str(excinfo.value))
    assert m, str(excinfo.value)
    return m.group(2), tuple(int(i) for i in m.group(3).split(","))


# --- attributes: self.W (in, out), self.b, self.dW, self.db ---------------------------------------

def test_attributes_are_found_and_w_stored_in_out_is_mapped(nnparity):
    report = nnparity.layer(Affine(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    assert "W stored (in, out) (5, 3), torch's weight is (out, in) (3, 5): compared as weight.T" in report.context


def test_attributes_wrong_bias_gradient_is_named(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(AffineWrongBias(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    tensor, element = first_failure(e)
    assert tensor == "grad/bias" and len(element) == 1
    assert "float64: 1 of 4 failing (grad/bias)" in str(e.value)


# --- params() / grads() methods ---------------------------------------------------------------------

def test_methods_are_read(nnparity):
    nnparity.layer(DenseTanh(5, 3), torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()), input_shape=(4, 5))


def test_methods_wrong_tanh_derivative_fails_at_the_input_gradient(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(DenseTanhWrongDerivative(5, 3), torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()),
                       input_shape=(4, 5))
    tensor, element = first_failure(e)
    assert tensor == "din" and len(element) == 2
    assert "float64: 3 of 4 failing (din, grad/0.weight, grad/0.bias)" in str(e.value)


# --- numpy-ml: parameters / gradients dicts, accumulated gradients, flush_gradients() -------------

def test_numpy_ml_dicts_with_in_out_weight_and_1_by_out_bias(nnparity):
    report = nnparity.layer(FullyConnected(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    assert "b stored (1, 3), torch's bias is (3,): reshaped" in report.context


def test_numpy_ml_wrong_weight_scale_is_named(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(FullyConnectedWrongScale(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    tensor, element = first_failure(e)
    assert tensor == "grad/weight" and len(element) == 2   # torch's (out, in) index: the message's layout is torch's


# --- the "from scratch" book: self.output, self.dinputs, self.dweights, self.dbiases --------------

def test_nnfs_dense_and_relu(nnparity):
    nnparity.layer(Layer_Dense(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    nnparity.layer(Activation_ReLU(), torch.nn.ReLU(), input_shape=(4, 5))


def test_nnfs_first_sample_bias_is_named(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(Layer_DenseFirstSampleBias(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))
    tensor, element = first_failure(e)
    assert tensor == "grad/bias" and len(element) == 1


# --- CS231n function pairs with a cache and a conv_param dict ---------------------------------------

def test_cs231n_pairs(nnparity):
    flatten_linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))   # affine_forward reshapes x
    nnparity.layer((affine_forward, affine_backward), flatten_linear, input_shape=(4, 2, 3))
    nnparity.layer((relu_forward, relu_backward), torch.nn.ReLU(), input_shape=(4, 5))
    nnparity.layer((conv_forward_naive, conv_backward_naive), torch.nn.Conv2d(2, 3, 3, stride=2, padding=1),
                   input_shape=(2, 2, 7, 6))


def test_cs231n_conv_ignoring_the_stride_fails_at_stride_2_only(nnparity):
    conv = (conv_forward_naive, conv_backward_naive_ignores_stride)
    nnparity.layer(conv, torch.nn.Conv2d(2, 3, 3, stride=1, padding=1), input_shape=(2, 2, 5, 5))   # the slip hides
    with pytest.raises(AssertionError) as e:
        nnparity.layer(conv, torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), input_shape=(2, 2, 5, 5))
    tensor, element = first_failure(e)
    assert tensor == "grad/weight" and len(element) == 4
    assert "float64: 1 of 4 failing (grad/weight)" in str(e.value)


def test_cs231n_batchnorm_reads_bn_param_and_its_biased_running_variance_is_caught(nnparity):
    """bn_param comes from torch.nn.BatchNorm1d; CS231n's running_var uses the biased batch variance,
    torch's the unbiased one: the check names that buffer, and skip= states the convention away."""
    bn = (batchnorm_forward, batchnorm_backward)
    with pytest.raises(AssertionError) as e:
        nnparity.layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4))
    tensor, element = first_failure(e)
    assert tensor == "buffer/running_var" and len(element) == 1
    assert "float64: 1 of 6 failing (buffer/running_var)" in str(e.value)   # running_mean agrees
    report = nnparity.layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), skip=["buffer/running_var"])
    assert "skipped as asked: buffer/running_var" in report.summary()
    with pytest.raises(AssertionError, match="buffer/running_var after 3 training steps"):   # eval: after training
        nnparity.layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), train=False)
    nnparity.layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), train=False, skip=["buffer/running_var"])


# --- a name / layout map for names nn-parity cannot guess ------------------------------------------

MAP = {"theta": "0.weight.T", "theta0": "0.bias"}


def logistic_torch():
    return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Sigmoid())


def test_mapped_names(nnparity):
    nnparity.layer(Logistic(5, 3), logistic_torch(), input_shape=(4, 5), params=MAP)


def test_unknown_names_are_refused_with_the_map_to_pass():
    with pytest.raises(ValueError) as e:   # nnparity.training.adapters.ParameterMismatch
        import nnparity
        nnparity.check_layer(Logistic(5, 3), logistic_torch(), input_shape=(4, 5))
    assert "params={'theta': '0.weight.T', 'theta0': '0.bias'}" in str(e.value)


def test_mapped_names_wrong_sigmoid_derivative_is_named(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(LogisticWrongDerivative(5, 3), logistic_torch(), input_shape=(4, 5), params=MAP)
    tensor, element = first_failure(e)
    assert tensor == "din" and len(element) == 2


def test_nnfs_fused_softmax_cross_entropy_loss(nnparity):
    from nnfs_dense import Activation_Softmax_Loss_CategoricalCrossentropy, Activation_Softmax_Loss_NotAveraged

    nnparity.loss(Activation_Softmax_Loss_CategoricalCrossentropy(), torch.nn.CrossEntropyLoss(), input_shape=(8, 5))
    with pytest.raises(AssertionError) as e:
        nnparity.loss(Activation_Softmax_Loss_NotAveraged(), torch.nn.CrossEntropyLoss(), input_shape=(8, 5))
    tensor, element = first_failure(e)
    assert tensor == "din" and len(element) == 2
