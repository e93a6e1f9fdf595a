"""The two learner-style layers checked with nn-parity's pytest fixture: the correct
backward passes; the wrong one fails with a message naming the wrong gradient.

Run with ``python -m pytest examples``. The ``nnparity`` fixture comes from the
plugin nn-parity installs (``pytest11`` entry point); this repo also enables it in
its root ``conftest.py``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from layer_norm import LayerNorm, LayerNormWrongBackward
from leaky_relu import LeakyReLU, LeakyReLUWrongBackward


def test_leaky_relu(nnparity):
    nnparity.layer(LeakyReLU(0.1), torch.nn.LeakyReLU(0.1), input_shape=(4, 10))


def test_leaky_relu_by_finite_differences(nnparity):
    nnparity.layer(LeakyReLU(0.1), None, input_shape=(4, 10))


def test_leaky_relu_wrong_backward_fails_at_the_input_gradient(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(LeakyReLUWrongBackward(0.1), torch.nn.LeakyReLU(0.1), input_shape=(4, 10))
    msg = str(e.value)
    # the first wrong element: x <= 0 there, so ours is 0 and torch's is 0.1 * dy
    assert msg.startswith("LeakyReLUWrongBackward float64 din (input gradient): max abs"), msg
    assert "(scratch 0, reference 0.18" in msg and "margin" in msg


def test_leaky_relu_wrong_backward_fails_by_finite_differences_too(nnparity):
    with pytest.raises(AssertionError, match=r"din at \(\d+, \d+\): analytic 0, numeric .* \(wrong\)"):
        nnparity.layer(LeakyReLUWrongBackward(0.1), None, input_shape=(4, 10))


def test_leaky_relu_gets_the_whole_battery(nnparity):
    # autograd float64 / float32, finite differences and NaN/inf routing, through the fixture
    report = nnparity.battery(LeakyReLU(0.1), torch.nn.LeakyReLU(0.1), input_shape=(4, 9), routes=True)
    names = [c.name for c in report.comparisons]
    assert report.ok and "input (4, 9): f64 train: din" in names and any("non-finite" in n for n in names), names


def test_leaky_relu_wrong_backward_fails_the_battery_with_the_fixtures_message(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.battery(LeakyReLUWrongBackward(0.1), torch.nn.LeakyReLU(0.1), input_shape=(4, 9), routes=True)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("LeakyReLUWrongBackward battery: ") and lines[0].endswith(" comparisons fail"), lines
    assert lines[1].startswith("LeakyReLUWrongBackward input (4, 9): f64 train: din (input gradient): max abs"), lines
    assert e.value.__cause__ is None and e.value.__suppress_context__   # the message, not the harness's frames


def test_the_fixtures_seed_reaches_the_battery(nnparity):
    from nnparity.api.plugin import NNParity

    def values(report):
        return [(c.name, c.scratch, c.reference) for c in report.comparisons]

    args = (LeakyReLU(0.1), torch.nn.LeakyReLU(0.1), (4, 9))
    seeded = values(NNParity(seed=3).battery(*args))
    assert seeded == values(nnparity.battery(*args, seed=3)) != values(nnparity.battery(*args, seed=0))


def test_layer_norm(nnparity):
    nnparity.layer(LayerNorm(10), torch.nn.LayerNorm(10), input_shape=(4, 10))


def test_layer_norm_over_a_sequence(nnparity):
    nnparity.layer(LayerNorm(6), torch.nn.LayerNorm(6), input_shape=(3, 5, 6))


def test_layer_norm_by_finite_differences(nnparity):
    nnparity.layer(LayerNorm(10), None, input_shape=(4, 10))


def test_layer_norm_wrong_backward_fails_at_the_input_gradient_only(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.layer(LayerNormWrongBackward(10), torch.nn.LayerNorm(10), input_shape=(4, 10))
    msg = str(e.value)
    assert msg.startswith("LayerNormWrongBackward float64 din (input gradient): max abs"), msg
    # the parameter gradients are right, and the summary line says so
    assert "float64: 1 of 4 failing (din)" in msg


def test_layer_norm_wrong_backward_fails_by_finite_differences_too(nnparity):
    with pytest.raises(AssertionError, match=r"gradcheck .*: din at .*\(wrong\)"):
        nnparity.layer(LayerNormWrongBackward(10), None, input_shape=(4, 10))


def test_leaky_relu_kink_is_reported_not_failed(nnparity):
    """An input within eps of 0: the finite difference straddles the kink. LeakyReLU declares
    ``kink_attrs = ("positive",)``, so the check reports that coordinate as a kink instead of failing."""
    x = np.array([[3e-6, -1.0, 0.5], [2.0, -0.2, 1.5]])
    report = nnparity.gradcheck(LeakyReLU(0.1), x=x, samples=6)
    kinks = report.results["float64"].kinks
    assert [(p.tensor, p.index, p.kink) for p in kinks] == [("din", (0, 0), ("positive",))]


# --- tanh_mlp.py / tanh_mlp_wrong.py: a learner's whole network, given to nn-parity by path ---

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def mnist():
    from nnparity.core.data import load_mnist

    return load_mnist()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_mlp_step_parity(mnist, dtype):
    from nnparity.diagnosis import check
    from nnparity.training import networks

    net = networks.get(str(HERE / "tanh_mlp.py"))
    assert (net.name, net.torch_threads) == ("tanh_mlp", 1)
    result = check.run_check(net.name, 3, dtype, 0, mnist)
    assert result.ok, result.render()


def test_tanh_mlp_wrong_is_diagnosed_at_tanh2_backward_as_its_own_error(mnist):
    """The forward and the loss agree; the first tensor off is the gradient arriving at fc2's
    output, and tanh2's backward, fed the reference side's numbers alone, is the culprit."""
    from nnparity.diagnosis import check
    from nnparity.training import networks

    result = check.run_check(networks.get(str(HERE / "tanh_mlp_wrong.py")).name, 2, "float64", 0, mnist)
    d = result.diagnosis
    assert (d.step, d.layer, d.first.name, d.kind) == (1, "fc2", "dout/fc2", "own")
    assert d.culprit.label == "tanh2 backward" and d.culprit.impl == "TanhForgotTheSquare.backward"
    step1 = {c.name: c.passed for c in result.trace.steps[0]}
    assert step1["loss"] and step1["out/fc3"] and step1["dout/tanh2"] and not step1["dout/fc2"]


def test_tanh_mlp_gradcheck_passes_and_the_wrong_one_fails(mnist):
    from nnparity.training import networks
    from nnparity.diagnosis.gradcheck import gradcheck_network

    right = gradcheck_network(networks.get(str(HERE / "tanh_mlp.py")).name, samples=3, batch_size=8, raw=mnist)
    assert right.ok, right.message()
    wrong = gradcheck_network(networks.get(str(HERE / "tanh_mlp_wrong.py")).name, samples=3, batch_size=8,
                              raw=mnist)
    assert "grad/fc1.weight" in [t.name for t in wrong.failures]
    assert "grad/fc3.weight" not in [t.name for t in wrong.failures]  # above the slip: right
