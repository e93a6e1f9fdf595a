"""Metamorphic checks over every registered network's scratch model (no reference needed):
batch-split invariance of the gradients, and linearity of backward in the upstream gradient.
(``network``: every MNIST network of the registry, extras included; see ``conftest.py``.)"""

import numpy as np
import pytest

from nnparity.diagnosis import metamorphic

from nnparity.training import networks
from nnparity.core.parity import TOLERANCES
from scratch.layers import ReLU
from scratch.losses import CrossEntropyLoss

TOL = TOLERANCES["float64"]


def mnist_net(net):
    """toy221 trains on its one hand-worked sample: there is no batch to split."""
    return net.mnist


def setup(name, mnist, **changes):
    """The network's scratch model (float64, seeded init), its loss and a real batch of 16."""
    net = networks.get(name)
    recipe = net.recipe.replace(**changes)
    small = recipe.replace(batch_size=min(recipe.batch_size, 16), train_size=16, test_size=16)
    ds = networks.prepare(net, small, mnist, "float64", 0)
    x, y = metamorphic.even_batch(*next(iter(networks.first_batches(ds, small, 0, 1))))
    # MNIST's blank borders give cnn18k thousands of exactly tied pool windows in eval mode;
    # a BLAS that rounds rows of a 16- and an 8-sample batch differently could break them
    # differently (here OpenBLAS gives bit-identical rows, so the raw batch passes): untie them
    x = metamorphic.untied(x)
    model = net.scratch.build(recipe, networks.stream(0, "init"), np.dtype("float64"))
    return model, net.scratch.loss(recipe), x, y


@pytest.mark.networks(where=mnist_net)
def test_gradients_are_invariant_to_splitting_the_batch(network, mnist):
    model, loss, x, y = setup(network, mnist)
    comps = metamorphic.batch_split(model, loss, x, y, TOL)
    assert len(comps) == 1 + len(list(model.named_parameters()))
    assert all(c.passed for c in comps), [c.describe() for c in comps if not c.passed]


@pytest.mark.networks(where=mnist_net)
def test_backward_is_linear_in_the_upstream_gradient(network, mnist):
    model, _, x, _ = setup(network, mnist)
    comps = metamorphic.linearity(model, x, TOL)
    assert {c.name for c in comps} >= {f"grad/{k}" for k, _ in model.named_parameters()}
    assert all(c.passed for c in comps), [c.describe() for c in comps if not c.passed]


def test_batch_split_sees_a_missing_1_over_n(mnist, monkeypatch):
    model, loss, x, y = setup("mlp1000", mnist, reduction="mean")

    def backward(self):
        dz = self.p.copy()
        dz[np.arange(len(self.target)), self.target] -= 1
        return dz  # mean reduction without the 1/N

    monkeypatch.setattr(CrossEntropyLoss, "backward", backward)
    comps = metamorphic.batch_split(model, loss, x, y, TOL)
    assert not any(c.passed for c in comps if c.name.startswith("grad/"))


def test_linearity_sees_a_backward_that_is_not_linear(mnist, monkeypatch):
    model, _, x, _ = setup("mlp1000", mnist)
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: np.clip(dy, -1e-3, 1e-3) * self.mask)  # clipped
    comps = metamorphic.linearity(model, x, TOL)
    assert not all(c.passed for c in comps)


def test_even_batch():
    x, y = np.arange(6.0).reshape(3, 2), np.arange(3)
    assert metamorphic.even_batch(x, y)[1].tolist() == [0, 1]
    assert metamorphic.even_batch(x[:1], y[:1])[1].tolist() == [0, 0]
    with pytest.raises(ValueError, match="even batch"):
        metamorphic.batch_split(None, CrossEntropyLoss(), x, y, TOL)
