"""The drift envelope: float64 scratch vs torch and float32 vs float64 torch over the run's
first steps; drift above the rounding band is named. (That correct code stays inside it, and
that every run's report shows it, is checked for every registered network:
``test_registry.py``.)"""

import numpy as np
import pytest

from nnparity.training import drift

from nnparity.training import networks
from scratch.optim import SGD


@pytest.fixture(scope="module")
def small(mnist):
    net = networks.get("mlp1000")
    recipe = net.recipe.replace(train_size=400, test_size=100)
    return net, recipe, networks.prepare(net, recipe, mnist, "float64", 0)


def test_band_is_twice_the_running_max_scaled_to_the_dtype():
    assert drift.band([1e-7, 5e-8, 2e-7], "float32") == pytest.approx([2e-7, 2e-7, 4e-7])
    ratio = np.finfo(np.float64).eps / np.finfo(np.float32).eps
    assert drift.band([1e-7], "float64") == pytest.approx([2e-7 * ratio])


def test_cnn18k_envelope_leaves_out_the_noise_of_zero_by_construction_gradients(mnist):
    """cnn18k's conv-bias gradients are zero by construction: their momentum buffers hold
    rounding residues (~1e-17 in float64, ~1e-9 in float32) whose relative difference is
    O(1) to 1e9. Left in, they made the envelope meaningless; left out, the float64
    implementations agree to rounding and float32 rounding sits far above them."""
    net = networks.get("cnn18k")
    recipe = net.recipe.replace(train_size=64, test_size=16)
    ds = networks.prepare(net, recipe, mnist, "float32", 0)
    skip = drift.rounding_noise_keys(net)
    assert skip == {f"state/conv{i}.bias.momentum_buffer" for i in range(1, 5)}
    env = drift.measure_envelope(net, recipe, ds, 0, 3)
    assert max(env["impl64"]) < 1e-12, env["impl64"]  # measured 3.3e-14 (5 kernel configurations)
    # impl64 / band64 measured 0.49-0.51 (AVX-512, AVX2, default kernels; OpenBLAS Nehalem)
    assert all(0 <= i <= b for i, b in zip(env["impl64"], env["band64"])), (env["impl64"], env["band64"])
    assert 1e-9 < max(env["chaos32"]) < 1e-2, env["chaos32"]
    # the buffers left out really are noise: rounding residues, on both sides, next to the
    # momentum buffers of the same layers' weights. Their values are each machine's rounding
    # (here, AMD EPYC AVX-512, one float64 step: at most 1.7e-14 against 0.065-0.093 for the
    # weights' buffers, and a relative difference of 2.05 between the sides), so a test
    # asserts their size, not their difference: that holds even where both round to 0.
    s64, t64 = networks.make_sides(net, recipe, "float64", 0)
    x, y = next(iter(networks.first_batches(ds, recipe, 0, 1)))
    s64.step(x.astype(np.float64), y)
    t64.step(x.astype(np.float64), y, draws=s64.draws())
    for state in (s64.state(), t64.state()):
        for key in skip:
            weights = np.abs(np.asarray(state[key.replace(".bias.", ".weight.")])).max()
            assert np.abs(np.asarray(state[key])).max() <= 1e-10 * weights, (key, weights)


def test_an_error_below_the_parity_tolerance_leaves_the_envelope(small, monkeypatch):
    """The update off by 1e-11 relative: parity passes (margin ~1e-3), the envelope does not."""
    original = SGD.step

    def step(self):
        for p in self.params.values():
            p.grad *= 1 + 1e-11
        original(self)

    monkeypatch.setattr(SGD, "step", step)
    net, recipe, ds = small
    assert networks.run_parity("mlp1000", 2, "float64", 0, recipe=recipe, ds=ds).ok
    env = drift.measure_envelope(net, recipe, ds, 0, 2)
    d = drift.assess(env, list(enumerate(env["impl64"], 1)), [], 4, "float64")
    assert d["leaves"]["step"] == 1 and d["impl_leaves"]["step"] == 1
    assert "LEAVES the rounding envelope at step 1 (epoch 1)" in drift.verdict(d)
    d["check_command"] = "nnparity check mlp1000 --seed 0"
    assert "run `nnparity check mlp1000 --seed 0 --steps 1 --dtype float64` to localise it" in drift.verdict(d)


def test_per_epoch_points_inside_the_window_are_judged_too():
    env = {"steps": 4, "impl64": [1e-16] * 4, "chaos32": [1e-7] * 4, "band64": drift.band([1e-7] * 4, "float64"),
           "seconds": 0.0}
    history = [{"epoch": 1, "max_rel_weight_diff": 1e-16}, {"epoch": 2, "max_rel_weight_diff": 1e-9}]
    d = drift.assess(env, [], history, 2, "float64")
    assert d["leaves"] == {"step": 4, "epoch": 2, "drift": 1e-9, "band": pytest.approx(d["band"][3])}
