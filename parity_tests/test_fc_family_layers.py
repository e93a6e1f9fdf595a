"""The pieces of mlp16, linear10 and toy221 the battery (``parity_tests/test_battery.py``: every
kind of the layer-case table, its losses and the He/Glorot initialisations against ``torch.nn.init``
included) does not describe: the documents' own layers and losses, toy221's written-out
derivatives, linear10's unit-norm initialisation, and what the losses refuse."""

import numpy as np
import pytest
import torch

from nnparity.diagnosis.layercheck import check_layer, check_loss
from nnparity.core.parity import ParityError
from reference import toy221 as ref_toy
from scratch import init
from scratch.layers import Linear
from scratch.losses import MSELoss, OneHotMSELoss
from scratch.nets import linear10, toy221

LABELS = np.array([3, 0, 9, 9, 1, 4], dtype=np.int64)


# --- losses ---------------------------------------------------------------------------------------------
def test_one_hot_mse_mean_divides_by_every_element():
    """mean = over N * C elements (torch.nn.MSELoss's), not per sample."""
    y = np.full((2, 10), 0.5)
    assert float(OneHotMSELoss(10, "mean").forward(y, np.array([0, 1]))) == pytest.approx(0.25)
    assert float(OneHotMSELoss(10, "sum").forward(y, np.array([0, 1]))) == pytest.approx(5.0)


def test_one_hot_mse_rejects_bad_targets():
    with pytest.raises(ValueError, match="integer class labels"):
        OneHotMSELoss(10).forward(np.zeros((2, 10)), np.eye(10)[:2])
    with pytest.raises(ValueError, match=r"outputs of shape \(N, 10\)"):
        OneHotMSELoss(10).forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="target of the input's shape"):
        MSELoss().forward(np.zeros((2, 3)), np.zeros((3, 2)))


def test_documented_softmax_cross_entropy_matches_on_moderate_logits(dtype):
    """The document's softmax (no max subtracted) is right wherever exp does not overflow."""
    check_loss(linear10.DocumentedSoftmaxCrossEntropy("mean"), torch.nn.CrossEntropyLoss(reduction="mean"),
               (6, 10), LABELS, dtype=dtype)


def test_documented_softmax_overflows_where_the_stable_one_does_not():
    z = np.array([[800.0, 0.0, 1.0]])
    with np.errstate(over="ignore", invalid="ignore"):
        value = linear10.DocumentedSoftmaxCrossEntropy().forward(z, np.array([0]))
    assert not np.isfinite(value)
    assert np.isfinite(linear10.loss(linear10.RECIPE).forward(z, np.array([0])))


# --- layers ---------------------------------------------------------------------------------------------
def test_documented_relu_forward_is_relu_but_backward_is_straight_through(dtype):
    x = np.array([[-1.0, 0.0, 2.0, -3.0], [0.5, -0.5, 0.0, 4.0]], dtype)
    g = np.arange(1.0, 9.0, dtype=dtype).reshape(2, 4)
    relu = linear10.DocumentedReLU()
    np.testing.assert_array_equal(relu.forward(x), np.maximum(x, 0))
    np.testing.assert_array_equal(relu.backward(g.copy()), g)  # mask all ones: the slip


def test_layer_check_catches_the_documented_relu(dtype):
    """Against torch's ReLU the forward passes and the input gradient fails."""
    comps = check_layer(linear10.DocumentedReLU(), torch.nn.ReLU(), (6, 9), dtype=dtype, raise_on_failure=False)
    result = {c.name: c.passed for c in comps}
    assert result == {"out": True, "din": False}
    with pytest.raises(ParityError, match=r"DocumentedReLU \w+ din \(input gradient\)"):
        check_layer(linear10.DocumentedReLU(), torch.nn.ReLU(), (6, 9), dtype=dtype)


@pytest.mark.parametrize("biases,frozen", [(None, False), ((0.35, 0.60), True), ((0.35, 0.60), False)])
def test_toy221_layer(dtype, biases, frozen):
    """The written-out derivatives against autograd, on a random batch with a random upstream gradient."""
    w = np.random.default_rng(7).uniform(-1, 1, 8)
    layer = toy221.Toy221(w, biases, frozen, dtype=dtype)
    comps = check_layer(layer, ref_toy.Toy221(w, biases, frozen), (5, 2), dtype=dtype)
    grads = sorted(c.name for c in comps if c.name.startswith("grad/"))
    expected = [f"grad/w{i}" for i in range(1, 9)] + (["grad/b1", "grad/b2"] if biases and not frozen else [])
    assert grads == sorted(expected)


def test_toy221_rejects_wrong_counts():
    with pytest.raises(ValueError, match="8 weights"):
        toy221.Toy221((0.1, 0.2))
    with pytest.raises(ValueError, match="2 biases"):
        toy221.Toy221(toy221.DOCUMENT_WEIGHTS, (0.1, 0.2, 0.3))


# --- initialisation -------------------------------------------------------------------------------------
def _draw(fn, shape, seed=0):
    layer = Linear(shape[1], shape[0])
    layer.bias.data[...] = 1.0
    fn(layer, np.random.default_rng(seed))
    return layer.weight.data, layer.bias.data


def test_normal_unit_norm():
    w, b = _draw(lambda layer, rng: init.normal_unit_norm(layer, rng, std=0.1), (10, 784))
    assert np.linalg.norm(w) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(b) == pytest.approx(1.0, abs=1e-12)
    assert abs(w.mean()) < 0.05 / np.sqrt(7840)
    assert w.std() == pytest.approx(1 / np.sqrt(7840), rel=0.02)  # a normal direction, all entries alike
    kurtosis = np.mean((w - w.mean()) ** 4) / w.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.25)  # normal, not uniform (1.8)
    w2, _ = _draw(lambda layer, rng: init.normal_unit_norm(layer, rng, std=0.1), (10, 784), seed=1)
    assert not np.allclose(w, w2)
