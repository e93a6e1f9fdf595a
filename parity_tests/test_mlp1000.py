"""mlp1000: the document's recipe, shapes and initialisation, and proof that the check sees a
wrong derivative at the tensor and step where it is. (Its step parity over 50 steps in float64
and float32, start state, first batches, gradcheck, drift envelope and a small run:
``test_registry.py``, as for every registered network.)"""

import numpy as np
import pytest

from nnparity.training.networks import run_parity
from scratch.layers import Linear
from scratch.nets import mlp1000


def test_recipe_is_the_documented_one():
    r = mlp1000.RECIPE
    assert (r.lr, r.batch_size, r.epochs, r.reduction, r.loss) == (0.001, 100, 100, "sum", "cross_entropy")


def test_names_and_shapes_are_the_documents():
    """784 -> U -> ReLU -> V -> 10 (torch's names and shapes on both sides: test_registry.py)."""
    state = mlp1000.build(rng=np.random.default_rng(0)).state_dict()
    assert {k: v.shape for k, v in state.items()} == {"U.weight": (1000, 784), "U.bias": (1000,),
                                                      "V.weight": (10, 1000), "V.bias": (10,)}


def test_init_is_uniform_within_fan_in_bound():
    model = mlp1000.build(rng=np.random.default_rng(0))
    state = model.state_dict()
    for name, fan_in in (("U", 784), ("V", 1000)):
        bound = 1 / np.sqrt(fan_in)
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        assert np.abs(b).max() <= bound and b.std() > 0
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
        assert abs(w.mean()) < 0.01 * bound
        # uniform, not a clipped normal: half the mass beyond bound / 2, std = bound / sqrt(3)
        assert np.mean(np.abs(w) > 0.5 * bound) == pytest.approx(0.5, abs=0.02)
        assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)




def test_parity_sees_a_bias_gradient_not_summed_over_the_batch(mnist, monkeypatch):
    def bias_from_first_sample(self, dy):
        self.weight.grad += dy.T @ self.x
        self.bias.grad += dy[0]  # BUG: should be dy.sum(axis=0)
        return dy @ self.weight.data if self.needs_input_grad else None

    monkeypatch.setattr(Linear, "backward", bias_from_first_sample)
    trace = run_parity("mlp1000", steps=3, dtype="float64", raw=mnist)
    first = trace.first_failure
    assert (first.step, first.name) == (1, "grad/V.bias")
    msg = trace.message()
    assert msg.startswith("mlp1000 float64 step 1: grad/V.bias (parameter gradient): max abs")
    assert "scratch" in msg and "reference" in msg and "margin" in msg


def test_parity_sees_a_transposed_relu_mask(mnist, monkeypatch):
    """A wrong upstream gradient is reported at the first tensor it reaches."""
    from scratch.layers import ReLU

    monkeypatch.setattr(ReLU, "backward", lambda self, dy: dy * self.mask[::-1])
    first = run_parity("mlp1000", steps=2, dtype="float32", raw=mnist).first_failure
    assert (first.step, first.name, first.quantity) == (1, "dout/U", "upstream gradient")
