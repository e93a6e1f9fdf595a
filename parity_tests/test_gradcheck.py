"""Finite differences (float64) against every scratch backward: every layer, the loss,
the whole mlp1000 on a real MNIST batch; a wrong backward is caught, a ReLU kink is
reported as a kink, dropout masks are held fixed and BatchNorm uses batch statistics."""

import json
from collections import OrderedDict

import numpy as np
import pytest

import scratch
from nnparity.diagnosis import gradcheck as gc
from nnparity.cli.main import main
from scratch.layers import Linear
from scratch.module import Module, Parameter, Sequential


def _randomized(layer, seed=0):
    rng = np.random.default_rng(seed)
    for _, p in layer.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    return layer


# --- grading --------------------------------------------------------------------------------

def test_cs231n_grades():
    assert [gc.grade(r) for r in (0.0, 9e-8, 1e-7, 9e-5, 1e-4, 9e-3, 1e-2, 2.0)] == \
        ["good", "good", "ok", "ok", "uncomfortable", "uncomfortable", "wrong", "wrong"]


def test_symmetric_relative_error_and_floor():
    assert gc.symmetric_rel(1.0, 1.5) == pytest.approx(0.5 / 1.5)
    assert gc.symmetric_rel(1.5, 1.0) == gc.symmetric_rel(1.0, 1.5)            # symmetric
    assert gc.symmetric_rel(0.0, 0.0) == 0.0                                    # both exactly 0
    assert gc.symmetric_rel(1e-12, 3e-12, floor=1e-6) == pytest.approx(2e-6)    # both ~0: against the floor
    assert gc.symmetric_rel(-1.0, 1.0) == 2.0                                   # wrong sign


def test_samples_are_seeded_distinct_and_cover_small_tensors():
    a = gc.sample_indices((50, 40), 10, seed=3, name="grad/w")
    assert a == gc.sample_indices((50, 40), 10, seed=3, name="grad/w") and len(set(a)) == 10
    assert a != gc.sample_indices((50, 40), 10, seed=4, name="grad/w")
    assert gc.sample_indices((3,), 10, seed=0, name="grad/b") == [(0,), (1,), (2,)]


# --- every layer ----------------------------------------------------------------------------

# The cases are the layer-case table's (nnparity.diagnosis.layercases, the battery's): per kind, its
# first documented configuration and the first configuration of its sweep it can express. A new
# scratch layer without a table entry fails test_every_scratch_layer_has_a_case.
def _cases(role: str) -> dict:
    from nnparity.diagnosis import layercases

    out = {}
    for kind, case in layercases.cases().items():
        if case.role != role:
            continue
        entries = layercases.documented_configs().get(kind, [])[:1]
        for cfg, shape in case.sweep():
            try:
                case.build(dict(cfg), np.float64)
            except (TypeError, ValueError):   # a configuration the scratch class cannot express
                continue
            entries.append((cfg, shape))
            break
        out[kind] = [(lambda case=case, cfg=cfg: _randomized(case.build(dict(cfg), np.float64)), shape, case, cfg)
                     for cfg, shape in entries]
    return out


LAYER_CASES = {k: [(make, shape) for make, shape, _, _ in v] for k, v in _cases("layer").items()}
_LOSSES = _cases("loss")
LOSS_CASES = {k: [(make, shape, case.target(np.random.default_rng(7), shape)) for make, shape, case, _ in v]
              for k, v in _LOSSES.items()}


def _scratch_classes():
    import importlib
    import inspect
    import pkgutil

    found = {}
    for info in pkgutil.walk_packages(scratch.__path__, prefix="scratch."):
        if info.name.startswith("scratch.nets"):
            continue
        mod = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Module) and cls.__module__ == mod.__name__ and cls not in (Module, Sequential):
                found[name] = cls
    return found


def test_every_scratch_layer_has_a_case():
    from nnparity.diagnosis import layercases

    classes = _scratch_classes()
    table = {c.cls.rpartition(".")[2] for c in layercases.cases().values()}
    assert {"Linear", "ReLU", "Sigmoid", "Flatten", "CrossEntropyLoss"} <= set(classes)
    assert set(classes) <= table, f"add {sorted(set(classes) - table)} to the layer-case table (layercases)"
    assert len(LAYER_CASES) >= 10 and len(LOSS_CASES) >= 5


@pytest.mark.parametrize("make, shape", [c for cases in LAYER_CASES.values() for c in cases],
                         ids=[f"{k}{i}" for k, cases in LAYER_CASES.items() for i in range(len(cases))])
def test_every_layer_passes(make, shape):
    r = gc.gradcheck_layer(make(), shape, samples=12)
    assert r.ok, r.message()
    assert r.tensors[-1].name == "din" and all(len(t.checked) > 0 for t in r.tensors)
    assert r.worst_rel() < gc.THRESHOLD / 10, r.table()   # 10x below the failing grade


def test_linear_covers_every_parameter_tensor():
    r = gc.gradcheck_layer(_randomized(scratch.Linear(7, 5)), (4, 7), samples=3)
    assert [t.name for t in r.tensors] == ["grad/weight", "grad/bias", "din"]
    assert [len(t.probes) for t in r.tensors] == [3, 3, 3]


@pytest.mark.parametrize("make, shape, target", [c for cases in LOSS_CASES.values() for c in cases],
                         ids=[f"{k}{i}" for k, cases in LOSS_CASES.items() for i in range(len(cases))])
def test_every_loss_passes(make, shape, target):
    r = gc.gradcheck_loss(make(), shape, target, samples=20)
    assert r.ok and r.worst_rel() < gc.THRESHOLD / 10, r.table()


# --- wrong backwards ------------------------------------------------------------------------

def test_missing_transpose_in_a_square_linear_is_caught():
    layer = _randomized(scratch.Linear(4, 4))

    def wrong_backward(dy):
        layer.weight.grad += layer.x.T @ dy   # BUG: dW transposed
        layer.bias.grad += dy.sum(axis=0)
        return dy @ layer.weight.data

    layer.backward = wrong_backward
    r = gc.gradcheck_layer(layer, (3, 4), samples=16)
    assert [t.name for t in r.failures] == ["grad/weight"]
    assert r.failures[0].grade == "wrong"
    with pytest.raises(gc.GradcheckError, match=r"grad/weight at \(\d, \d\): analytic .* \(wrong\)"):
        r.raise_if_failed()


def test_sigmoid_derivative_at_the_pre_activation_is_caught(monkeypatch):
    monkeypatch.setattr(scratch.Sigmoid, "backward", lambda self, dy: dy * self.x * (1 - self.x))
    monkeypatch.setattr(scratch.Sigmoid, "forward",
                        lambda self, x: (setattr(self, "x", x), setattr(self, "y", 1 / (1 + np.exp(-x))), self.y)[-1])
    r = gc.gradcheck_layer(scratch.Sigmoid(), (4, 5))
    assert not r.ok and r.failures[0].name == "din" and r.failures[0].grade == "wrong"


def test_wrong_backward_input_shape_is_a_clear_error():
    layer = scratch.Flatten()
    layer.backward = lambda dy: dy            # BUG: forgot to reshape back
    with pytest.raises(gc.GradcheckError, match=r"returned an array of shape \(3, 8\) for an input of shape "
                                                r"\(3, 2, 4\)"):
        gc.gradcheck_layer(layer, (3, 2, 4))


# --- kinks ----------------------------------------------------------------------------------

def test_relu_kink_is_reported_as_a_kink_not_a_failure():
    eps = 1e-5
    x = np.array([[eps / 3, -1.0, 2.0], [0.5, -0.3, 1.5]])   # x[0, 0] + -eps crosses 0
    r = gc.gradcheck_layer(scratch.ReLU(), x=x, eps=eps, samples=6)
    kink = [p for p in r.probes if p.index == (0, 0)][0]
    assert kink.kink == ("mask",) and kink.is_kink
    assert kink.grade == "wrong"                  # the central difference is off by a third there...
    assert r.ok, r.message()                      # ...and it is not a failure: it is a kink
    assert len(r.kinks) == 1 and "KINK: mask switched" in kink.describe()


def test_without_kink_detection_the_same_point_fails(monkeypatch):
    monkeypatch.setattr(scratch.ReLU, "kink_attrs", ())
    eps = 1e-5
    x = np.array([[eps / 3, -1.0, 2.0], [0.5, -0.3, 1.5]])
    r = gc.gradcheck_layer(scratch.ReLU(), x=x, eps=eps, samples=6)
    assert not r.ok and r.failures[0].worst.index == (0, 0)


def test_kink_inside_a_network_is_found_through_the_nested_relu():
    rng = np.random.default_rng(0)
    net = Sequential(OrderedDict(fc1=scratch.Linear(3, 4), relu=scratch.ReLU(), fc2=scratch.Linear(4, 3)))
    _randomized(net, 1)
    x = rng.standard_normal((5, 3))
    # put sample 0's pre-activation of unit 2 at eps / 3: perturbing fc1.bias[2] by -eps crosses the kink
    net.fc1.bias.data[2] = -(x[0] @ net.fc1.weight.data[2]) + 1e-5 / 3
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), x, np.array([0, 1, 2, 0, 1]), samples=20)
    bias = {p.index: p for p in r.tensors[1].probes}
    assert r.tensors[1].name == "grad/fc1.bias" and bias[(2,)].kink == ("relu.mask",)
    assert not any(p.is_kink for p in r.tensors[2].probes + r.tensors[3].probes)   # fc2: after the ReLU
    assert r.ok, r.message()


def test_degenerate_gradient_fails():
    x = -np.abs(np.random.default_rng(0).standard_normal((4, 5))) - 0.1   # every ReLU input negative
    r = gc.gradcheck_layer(scratch.ReLU(), x=x)
    assert not r.ok and "DEGENERATE" in r.message()



def _zero_by_construction_check(b_analytic):
    """f(w, b) = sum(c w^2) / 2 does not depend on b: its true gradient in b is exactly 0,
    so the central difference in b is exactly 0; ``b_analytic`` stands for the backward's
    rounding residues (or a bug). Nothing here depends on how a BLAS kernel rounds."""
    c = np.linspace(1.0, 2.0, 6)
    w, b = np.linspace(-1.0, 1.0, 6), np.zeros(4)

    def objective():
        return float((c * w * w).sum() / 2), float((c * w * w).sum() / 2)

    return gc.finite_differences(objective, OrderedDict(w=w, b=b), {"w": c * w, "b": np.asarray(b_analytic)},
                                 allowed_zero=("b",), name="zero-bias")


def test_zero_by_construction_is_reported_as_such_not_graded():
    # residues of opposite signs to the numeric 0 (as cnn18k's conv1.bias: 9.44e-15 vs -8.88e-11)
    r = _zero_by_construction_check([1e-15, -1e-15, 3e-16, 0.0])
    b = r.tensors[1]
    assert b.zero_by_construction and b.grade == gc.ZERO and b.ok and r.ok
    assert r.worst_rel() == r.tensors[0].worst.rel           # only the graded tensor counts
    row = r.table().splitlines()[2]
    assert row.split()[:1] == ["b"] and " zero " in row and " - " in row   # no relative error shown
    assert "zero by construction" in r.legend() and "1 tensor(s) zero by construction, not graded" in r.message()
    assert r.to_dict()["tensors"][1]["zero_by_construction"] is True


def test_a_zero_by_construction_gradient_made_non_zero_is_still_graded_and_fails():
    r = _zero_by_construction_check([1e-15, -1e-15, 1e-3, 0.0])   # one coordinate far from rounding of 0
    b = r.tensors[1]
    assert not b.zero_by_construction and b.grade == "wrong" and not b.ok and not r.ok


def test_the_legend_explains_every_column_and_the_floor():
    r = _zero_by_construction_check([0.0, 0.0, 0.0, 0.0])
    head, legend = r.table().splitlines()[0], r.legend()
    for column in ("tensor", "shape", "checked", "kinks", "tiny", "worst rel", "grade"):
        assert column in head and f"\n{column}" in "\n" + legend, column
    assert "is a gradient magnitude, not a relative error" in legend
    assert "din = with respect to the input" in " ".join(legend.split())
    assert f"{r.zero_band:.3g}" in legend and r.zero_band == pytest.approx(r.threshold * r.floor)
    assert max(map(len, legend.splitlines())) <= 100


# --- networks, dropout, batch norm ------------------------------------------------------------

class _Dropout(Module):
    """Inverted dropout drawing from a generator it holds (the scratch convention: draws_mask, mask)."""

    draws_mask = True

    def __init__(self, p, rng):
        super().__init__()
        self.p, self.rng, self.mask = p, rng, None

    def forward(self, x):
        if not self.training:
            return x
        self.mask = (self.rng.random(x.shape) >= self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class _BatchNorm1d(Module):
    """Training-mode batch statistics; running statistics updated in place, as torch does."""

    def __init__(self, n, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight, self.bias = Parameter(np.ones(n)), Parameter(np.zeros(n))
        self.register_buffer("running_mean", np.zeros(n))
        self.register_buffer("running_var", np.ones(n))
        self.eps, self.momentum = eps, momentum

    def forward(self, x):
        if self.training:
            mu, var, n = x.mean(0), x.var(0), len(x)
            self.running_mean *= 1 - self.momentum
            self.running_mean += self.momentum * mu
            self.running_var *= 1 - self.momentum
            self.running_var += self.momentum * var * n / (n - 1)
        else:
            mu, var = self.running_mean, self.running_var
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.xhat * self.weight.data + self.bias.data

    def backward(self, dy):
        # y = xhat w + b  =>  dw = sum dy xhat, db = sum dy, dx = inv (g - mean g - xhat mean(g xhat)), g = dy w
        self.weight.grad += (dy * self.xhat).sum(0)
        self.bias.grad += dy.sum(0)
        g = dy * self.weight.data
        return self.inv * (g - g.mean(0) - self.xhat * (g * self.xhat).mean(0))


def _net(dropout_rng=None, bn=False, seed=2):
    layers = OrderedDict(fc1=scratch.Linear(6, 8))
    if bn:
        layers["bn"] = _BatchNorm1d(8)
    layers["relu"] = scratch.ReLU()
    if dropout_rng is not None:
        layers["drop"] = _Dropout(0.3, dropout_rng)
    layers["fc2"] = scratch.Linear(8, 4)
    return _randomized(Sequential(layers), seed)


def test_dropout_mask_is_held_fixed_and_the_generator_restored():
    rng = np.random.default_rng(5)
    net = _net(rng)
    before = rng.bit_generator.state
    x, y = np.random.default_rng(1).standard_normal((10, 6)), np.arange(10) % 4
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), x, y, samples=15)
    assert r.ok, r.message()
    assert rng.bit_generator.state == before      # the check consumed no randomness


def test_dropout_drawing_from_an_unreachable_generator_is_a_clear_error():
    net = _net(np.random.default_rng(5))
    hidden = np.random.default_rng(6)

    def forward(x):  # draws from a generator no module holds: it cannot be replayed
        net.drop.mask = (hidden.random(x.shape) >= 0.3) / 0.7
        return x * net.drop.mask

    net.drop.forward = forward
    with pytest.raises(gc.GradcheckError, match=r"random mask of \['drop'\] changed between evaluations"):
        gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), np.ones((4, 6)), np.arange(4) % 4)


def test_batchnorm_uses_batch_statistics_and_its_buffers_are_restored():
    net = _net(bn=True)
    net.eval()                                  # the check switches to training mode and back
    state = net.state_dict()
    x, y = np.random.default_rng(1).standard_normal((12, 6)) * 3 + 1, np.arange(12) % 4
    # fc1.bias is followed by the BatchNorm: its gradient is 0 by construction, so the check
    # calls it degenerate unless told, as for a documented network's ``allowed_zero``
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("sum"), x, y, samples=15)
    assert [t.name for t in r.failures] == ["grad/fc1.bias"] and "DEGENERATE" in r.message()
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("sum"), x, y, samples=15, allowed_zero=("fc1.bias",))
    assert r.ok, r.message()
    assert [t.name for t in r.tensors] == ["grad/fc1.weight", "grad/fc1.bias", "grad/bn.weight", "grad/bn.bias",
                                           "grad/fc2.weight", "grad/fc2.bias", "din"]
    after = net.state_dict()
    assert all(np.array_equal(state[k], after[k]) for k in state)   # running stats and weights untouched
    assert net.training is False and net.bn.training is False


def test_batchnorm_backward_missing_the_mean_term_is_caught(monkeypatch):
    def no_mean_term(self, dy):
        self.weight.grad += (dy * self.xhat).sum(0)
        self.bias.grad += dy.sum(0)
        g = dy * self.weight.data
        return self.inv * (g - self.xhat * (g * self.xhat).mean(0))   # BUG: - mean(g) missing

    monkeypatch.setattr(_BatchNorm1d, "backward", no_mean_term)
    net = _net(bn=True)
    x, y = np.random.default_rng(1).standard_normal((12, 6)), np.arange(12) % 4
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("sum"), x, y, samples=15, allowed_zero=("fc1.bias",))
    assert {t.name for t in r.failures} == {"grad/fc1.weight", "grad/fc1.bias", "din"}   # upstream of the BN


def test_model_is_restored_bitwise_and_keeps_its_dtype():
    net = _net().astype(np.float32)
    state = net.state_dict()
    r = gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), np.ones((4, 6), np.float32), np.arange(4) % 4,
                           samples=3)
    assert r.ok
    after = net.state_dict()
    assert all(after[k].dtype == np.float32 and np.array_equal(state[k], after[k]) for k in state)
    assert net.fc1.needs_input_grad is False   # the input gradient was switched on for the check only


def test_same_seed_same_numbers():
    net = _net()
    x, y = np.random.default_rng(1).standard_normal((6, 6)), np.arange(6) % 4
    a = gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), x, y, samples=4, seed=9).to_dict()
    b = gc.gradcheck_model(net, scratch.CrossEntropyLoss("mean"), x, y, samples=4, seed=9).to_dict()
    assert a == b


# --- mlp1000 on real MNIST ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp1000_data(mnist):
    from nnparity.training import networks

    net = networks.get("mlp1000")
    return networks.prepare(net, net.recipe, mnist, "float64", 0)


def test_mlp1000_whole_network(mlp1000_data):
    """More than every network gets (``test_registry.py``): 10x below the failing grade, on
    the recipe's whole minibatch."""
    r = gc.gradcheck_network("mlp1000", samples=4, ds=mlp1000_data)
    assert [t.name for t in r.tensors] == ["grad/U.weight", "grad/U.bias", "grad/V.weight", "grad/V.bias", "din"]
    assert r.ok, r.message()
    assert r.worst_rel() < gc.THRESHOLD / 10, r.table()
    assert r.tensors[-1].shape == (100, 784)    # the recipe's whole minibatch
    assert "(100 MNIST images)" in r.notes[0]


def test_mlp1000_bias_gradient_not_summed_over_the_batch_is_caught(mlp1000_data, monkeypatch):
    def bias_from_first_sample(self, dy):
        self.weight.grad += dy.T @ self.x
        self.bias.grad += dy[0]  # BUG: should be dy.sum(axis=0)
        return dy @ self.weight.data if self.needs_input_grad else None

    monkeypatch.setattr(Linear, "backward", bias_from_first_sample)
    r = gc.gradcheck_network("mlp1000", samples=4, ds=mlp1000_data, batch_size=10)
    assert [t.name for t in r.failures] == ["grad/U.bias", "grad/V.bias"]
    assert all(t.grade == "wrong" for t in r.failures)


def test_cli_gradcheck_json(capsys):
    assert main(["gradcheck", "mlp1000", "--samples", "2", "--batch-size", "10", "--burn-in", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["eps"] == 1e-5 and out["samples"] == 2
    assert [t["name"] for t in out["tensors"]] == ["grad/U.weight", "grad/U.bias", "grad/V.weight", "grad/V.bias",
                                                   "din"]
    assert "after 1 SGD step(s)" in out["notes"][0] and "(10 MNIST images)" in out["notes"][0]


def test_cli_gradcheck_fails_with_exit_1_on_a_wrong_backward(capsys, monkeypatch):
    monkeypatch.setattr(scratch.ReLU, "backward", lambda self, dy: dy)   # linear10's slip: slope 1 everywhere
    assert main(["gradcheck", "mlp1000", "--samples", "3", "--batch-size", "10"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "(wrong)" in out and "grad/U.weight" in out
