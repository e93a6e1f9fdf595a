"""The layer-case table x the battery (``nnparity.diagnosis.layercases``, ``nnparity.diagnosis.battery``):
every scratch kind passes every check of the battery, in every documented network's configurations and
its sweep; the four slips no single-backward, finite-data, float64, copied-init check can see are each
killed by the check made for them; ``nnparity check``'s battery section is the same comparisons; and
the same battery runs on a user's layer (``nnparity.check_battery``)."""

import numpy as np
import pytest
import torch

import nnparity
from nnparity.core.parity import ParityError
from nnparity.diagnosis import battery, layercases
from nnparity.selftest import bugs
from nnparity.selftest import kill_matrix as selftest
from nnparity.training.networks import NETWORKS

KINDS = list(layercases.cases())


@pytest.fixture(scope="module")
def reports():
    return {}


def _report(reports, kind):
    if kind not in reports:
        reports[kind] = battery.run_battery(kind)
    return reports[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_passes_the_whole_battery(reports, kind):
    r = _report(reports, kind)
    assert r.ok, r.message()
    case = layercases.get_case(kind)
    names = " ".join(c.name for c in r.comparisons)
    expected = {"f64": True, "f32": True, "fd: ": True,
                "accumulate:": case.role == "layer" and kind in ("linear", "conv2d", "batchnorm2d"),
                "non-finite upstream": case.routes, "f32acc": case.accumulation is not None,
                "init: ": bool(case.inits), " eval:": "eval" in case.modes}
    if case.role == "optimizer":
        expected = {"param/w": True, "state/w.momentum_buffer": True}
    for what, present in expected.items():
        assert (what in names) == present, (kind, what)
    for cfg, shape in layercases.documented_configs().get(kind, []):   # every documented configuration is in the run
        assert layercases.describe_config(cfg, shape) in names, (kind, cfg, shape)


NEW_SLIPS = {   # the slip -> the check made for its class, and where it must fail first
    "conv-grad-assigned": "accumulate: grad/weight after 2 backward calls",
    "maxpool-nan-routing": "non-finite upstream: din",
    "linear-db-float32-sum": "f32acc: grad/bias",
    "init-fan-without-receptive-field": "init: uniform_fan_in (10, 1, 3, 3) weight std",
}


@pytest.mark.parametrize("name", NEW_SLIPS)
def test_the_four_classes_that_got_through_are_killed_by_their_check(reports, name):
    bug = bugs.get_bug(name)
    assert bug.unseen_by_parity
    kinds = selftest.bug_kinds(bug)
    for kind in kinds:   # the correct code passes the very check
        assert _report(reports, kind).ok
    with bug.applied():
        comps = [c for kind in kinds for c in battery.run_battery(kind).comparisons]
    killed = [c for c in comps if c.mismatch]
    assert killed, name
    assert killed[0].name.endswith(NEW_SLIPS[name]), (name, killed[0].name)
    assert killed[0].margin >= selftest.FLOOR, (name, killed[0].describe())
    # and nothing else in the battery sees it: each class needed its own check
    assert all(NEW_SLIPS[name].split(":")[0] in c.name for c in killed), [c.name for c in killed]


def test_the_noise_floor_tolerance_keeps_its_margin_on_correct_code(reports):
    """f32acc: correct scratch layers stay within NOISE_FACTOR of torch float32's error against float64
    (margin <= 1); the measured worst is at most a quarter of the allowance on this machine, and the
    float32-summed bias gradient is more than 10 allowances out (the slip test above)."""
    worst = max(c.margin for kind in KINDS for c in _report(reports, kind).comparisons if "f32acc" in c.name)
    assert 0 < worst <= 1


def test_network_battery_is_the_subset_of_the_whole_run(reports):
    """``nnparity check NET`` runs the battery on NET's configurations; the selftest takes the same
    comparisons from the whole run (``BatteryReport.subset``): equal, name for name and value for value."""
    own = battery.run_battery("maxpool2d", "cnn18k")
    sub = _report(reports, "maxpool2d").subset(layercases.network_configs("cnn18k")["maxpool2d"])
    assert [(c.name, c.max_abs, c.margin) for c in own.comparisons] == \
        [(c.name, c.max_abs, c.margin) for c in sub.comparisons]


def test_every_kind_but_one_is_used_by_a_documented_network():
    """MSELoss, the base of mlp16's OneHotMSELoss, is the one kind checked on its sweep alone."""
    assert {k for k in KINDS if not layercases.documented_configs().get(k)} == {"mse"}


def test_every_network_kind_is_in_the_table():
    """The battery section of ``nnparity check`` covers every scratch layer a documented network is
    built from (exact classes: linear10's deliberately wrong DocumentedReLU is its own layer)."""
    from nnparity.training.networks import get, stream

    for name in NETWORKS:
        net = get(name)
        model = net.scratch.build(net.recipe, stream(0, "init"), np.float64)
        kinds = layercases.network_configs(name)
        for _, m in getattr(model, "_modules", {}).items():
            if type(m).__module__.startswith("scratch.") and type(m).__module__ != "scratch.nets." + name:
                assert layercases.case_of(m) is not None, (name, type(m))
        assert "sgd" in kinds, name


# --- the user's layer, through the same battery -----------------------------------------------

class _AssigningLinear:
    """A learner's Linear with attribute parameters that overwrites its gradients at every backward."""

    def __init__(self, accumulate=True):
        rng = np.random.default_rng(0)
        self.weight, self.bias = rng.standard_normal((3, 4)), np.zeros(3)
        self.accumulate = accumulate
        self.dweight, self.dbias = np.zeros((3, 4)), np.zeros(3)

    def forward(self, x):
        self.x = x
        return x @ self.weight.T + self.bias

    def backward(self, dy):
        if self.accumulate:
            self.dweight += dy.T @ self.x
            self.dbias += dy.sum(axis=0)
        else:   # the slip
            self.dweight = dy.T @ self.x
            self.dbias = dy.sum(axis=0)
        return dy @ self.weight

    def zero_grad(self):
        self.dweight, self.dbias = np.zeros_like(self.weight), np.zeros_like(self.bias)


def test_check_battery_on_a_users_layer_finds_the_assignment():
    ok = nnparity.check_battery(_AssigningLinear(), torch.nn.Linear(4, 3), (5, 4), accumulates=True)
    assert ok.ok and any("accumulate" in c.name for c in ok.comparisons)
    with pytest.raises(ParityError, match=r"accumulate: grad/weight after 2 backward calls"):
        nnparity.check_battery(_AssigningLinear(accumulate=False), torch.nn.Linear(4, 3), (5, 4), accumulates=True)
    # a convention that assigns fresh gradients by design is not held to accumulation by default
    assert nnparity.check_battery(_AssigningLinear(accumulate=False), torch.nn.Linear(4, 3), (5, 4)).ok


def test_check_battery_with_a_kind_runs_its_sweep_and_routing():
    from scratch.pool import MaxPool2d

    def pool(cfg):   # a learner's factory: this max-pool has no padding
        if cfg["padding"]:
            raise ValueError("no padding")
        return MaxPool2d(cfg["kernel_size"], cfg["stride"])

    r = nnparity.check_battery(pool, kind="maxpool2d")
    assert r.ok and r.na and any("non-finite upstream" in c.name for c in r.comparisons)
    with bugs.get_bug("maxpool-nan-routing").applied():
        with pytest.raises(ParityError, match="non-finite upstream: din"):
            nnparity.check_battery(pool, kind="maxpool2d")


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "nope"}, "unknown layer kind 'nope'"),
    ({"kind": "cross_entropy"}, "unknown layer kind 'cross_entropy'"),
    ({}, "give your layer, its torch equivalent and input_shape"),
])
def test_check_battery_misuse_is_one_line(kwargs, match):
    from nnparity.training.adapters import ArgumentError

    with pytest.raises(ArgumentError, match=match) as e:
        nnparity.check_battery(lambda cfg: None, **kwargs)
    assert "\n" not in str(e.value)


def test_sweep_layer_takes_mode():
    """A BatchNorm that never leaves training mode passes every training configuration and fails every
    evaluation one: ``mode=`` reaches each configuration's check."""
    from scratch.norm import BatchNorm2d

    class NeverEval(BatchNorm2d):
        def train(self, mode=True):
            return super().train(True)   # the slip: eval() leaves it in training mode

    assert nnparity.sweep_layer(lambda c: NeverEval(**c), grid="batchnorm2d", axes={"num_features": [3]}).ok
    r = nnparity.sweep_layer(lambda c: NeverEval(**c), grid="batchnorm2d", mode="eval", raise_on_failure=False)
    assert r.rows and all(row.status == "FAIL" for row in r.rows)
    r = nnparity.sweep_layer(lambda c: BatchNorm2d(**c), grid="batchnorm2d", modes=("train", "eval"))
    assert all(set(row.report.results) == {"float64 train", "float64 eval"} for row in r.rows)
