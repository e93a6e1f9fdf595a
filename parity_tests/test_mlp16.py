"""mlp16: the recipe, names, initialisation and thread setting, and a wrong sigmoid derivative
found where it is. (Its step parity over 50 steps in float64 and float32, start state, first
batches, gradcheck, drift envelope and a small run: ``test_registry.py``, as for every
registered network.)"""

import numpy as np
import pytest

from nnparity.training.networks import get, run_parity
from scratch.layers import Sigmoid
from scratch.nets import mlp16


def test_recipe():
    r = mlp16.RECIPE
    assert (r.net, r.epochs, r.loss, r.reduction, r.momentum) == ("mlp16", 100, "mse", "mean", 0.0)
    assert r.lr > 0 and r.batch_size > 0 and r.choices
    assert any("Learning rate" in c for c in r.choices)  # the undocumented choice is written down


def test_names_and_shapes_are_the_documents():
    """784 -> 16 -> 16 -> 10 (torch's names and shapes on both sides: test_registry.py)."""
    state = mlp16.build(rng=np.random.default_rng(0)).state_dict()
    assert {k: v.shape for k, v in state.items()} == {"fc1.weight": (16, 784), "fc1.bias": (16,),
                                                      "fc2.weight": (16, 16), "fc2.bias": (16,),
                                                      "fc3.weight": (10, 16), "fc3.bias": (10,)}


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_init_he_for_relu_layers_glorot_for_sigmoid_layer_zero_biases(distribution):
    # many draws of the small layers so the std estimates are tight
    ws = {k: [] for k in ("fc1", "fc2", "fc3")}
    for seed in range(40):
        state = mlp16.build(rng=np.random.default_rng(seed), distribution=distribution).state_dict()
        for k in ws:
            ws[k].append(state[f"{k}.weight"])
            assert not state[f"{k}.bias"].any()
    expected = {"fc1": np.sqrt(2 / 784), "fc2": np.sqrt(2 / 16), "fc3": np.sqrt(2 / (16 + 10))}
    for k, std in expected.items():
        assert np.std(ws[k]) == pytest.approx(std, rel=0.03), k


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="distribution must be one of"):
        mlp16.build(distribution="orthogonal")




def test_parity_sees_a_sigmoid_derivative_taken_at_the_input(mnist, monkeypatch):
    """s'(x) computed as s(x)(1 - s(x)) with x in place of s(x): a classic slip."""
    def forward(self, x):
        self.x = x
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    monkeypatch.setattr(Sigmoid, "forward", forward)
    monkeypatch.setattr(Sigmoid, "backward", lambda self, dy: dy * self.x * (1 - self.x))
    first = run_parity("mlp16", steps=2, dtype="float64", raw=mnist).first_failure
    assert (first.step, first.name) == (1, "dout/fc3")
    assert "the input gradient of layer 'sigmoid' (Sigmoid)" in first.describe()


def test_torch_threads_follow_the_network_and_do_not_leak(monkeypatch):
    import torch

    from nnparity.training import networks

    before = torch.get_num_threads()
    # the test session runs torch on 1 thread (conftest.py): start from 2, as a fresh
    # process on this machine would, so that "restored" is visible
    monkeypatch.setattr(networks, "_default_threads", [])
    torch.set_num_threads(2)
    try:
        networks.apply_threads(get("mlp1000"))
        assert torch.get_num_threads() == 2
        networks.apply_threads(get("mlp16"))
        assert torch.get_num_threads() == 1  # too small to parallelise
        networks.apply_threads(get("mlp1000"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
