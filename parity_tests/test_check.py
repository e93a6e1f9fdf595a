"""``nnparity check``: the per-step table, the first divergence, and the own-or-inherited
verdict, on mlp1000 with injected slips and on a small net with dropout (masks replayed)."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

import scratch
from nnparity.training import networks
from nnparity.diagnosis.check import run_check
from nnparity.cli.main import main
from nnparity.diagnosis.localize import Localizer, Stage, layer_of, locate, producer
from nnparity.core.parity import Tolerance, check_steps, compare
from nnparity.training.sides import ScratchSide, TorchSide
from reference import bridge
from scratch.layers import Linear, ReLU
from scratch.module import Sequential
from scratch.optim import SGD


@pytest.fixture(scope="module")
def small(mnist):
    """mlp1000's recipe on a seeded 400-image subset: real batches of 100, prepared once."""
    net = networks.get("mlp1000")
    recipe = net.recipe.replace(train_size=400, test_size=100)
    return recipe, networks.prepare(net, recipe, mnist, "float64", 0)


def check(small, steps=3, battery=False):
    """Step parity (the diagnosis tests below patch one layer's whole backward: the battery section,
    tested on its own, would fail as well)."""
    recipe, ds = small
    return run_check("mlp1000", steps, "float64", 0, recipe=recipe, ds=ds, battery=battery)


def test_pass_prints_the_table_with_relative_errors_and_margins(small):
    r = check(small, steps=3, battery=True)
    assert r.ok and r.diagnosis is None
    text = r.render()
    assert "BATTERY (4 kinds" in text and "pass  mlp1000 linear" in text
    assert "activation" in text and "param gradient" in text and "margin" in text and "PASS" in text
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [int(line.split()[0]) for line in rows] == [1, 2, 3]
    summary = r.trace.summary()[0]
    assert summary["parameter gradient"]["worst_rel"] >= summary["parameter gradient"]["max_rel"]
    d = json.loads(r.to_json())
    assert d["ok"] and d["steps"] == 3 and d["diagnosis"] is None and d["first_divergence"] is None
    assert d["summary"][0]["step"] == 1 and "parameter gradient" in d["summary"][0]


def test_own_error_bias_gradient_not_summed(small, monkeypatch):
    def backward(self, dy):
        self.weight.grad += dy.T @ self.x
        if self.bias is not None:
            self.bias.grad += dy.mean(axis=0)  # the slip
        return dy @ self.weight.data if self.needs_input_grad else None

    monkeypatch.setattr(Linear, "backward", backward)
    r = check(small)
    d = r.diagnosis
    assert not r.ok and d is not None
    assert (d.step, d.layer, d.first.name, d.first.quantity) == (1, "V", "grad/V.bias", "parameter gradient")
    assert (d.suspect.label, d.culprit.label, d.kind) == ("V backward", "V backward", "own")
    assert d.culprit.impl == "Linear.backward"
    forward_stages = [s for s in d.stages if s.phase == "forward"]
    assert forward_stages and not any(s.off for s in forward_stages)
    text = r.render()
    assert "FIRST DIVERGENCE: step 1, layer V, parameter gradient grad/V.bias[" in text
    assert "scratch " in text and "reference " in text and "abs error" in text and "rel error" in text
    assert "OWN error" in text and "CULPRIT" in text
    c = d.first
    assert c.scratch != c.reference and c.index and c.margin > 1e6


def test_own_error_relu_straight_through_is_the_relu_not_the_linear(small, monkeypatch):
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: dy)
    d = check(small, steps=1).diagnosis
    assert (d.first.name, d.first.quantity, d.layer) == ("dout/U", "upstream gradient", "U")
    # dout/U is computed by relu's backward: relu is the suspect, and the culprit
    assert (d.suspect.label, d.culprit.label, d.kind) == ("relu backward", "relu backward", "own")
    others = [s for s in d.stages if s is not d.culprit]
    assert not any(s.off for s in others), [s.label for s in others if s.off]


def test_own_error_in_the_optimizer_at_step_2(small, monkeypatch):
    """Momentum buffer updated in the wrong order: invisible at step 1, the optimizer's own error at step 2."""
    def step(self):
        for name, p in self.params.items():
            g = p.grad
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = g.copy()
            else:
                buf += g
                buf *= self.momentum
            p.data -= self.lr * buf

    monkeypatch.setattr(SGD, "step", step)
    recipe, ds = small
    r = run_check("mlp1000", 3, "float64", 0, recipe=recipe.replace(momentum=0.9), ds=ds)
    d = r.diagnosis
    assert d.step == 2 and d.first.quantity == "updated parameter"
    assert (d.culprit.label, d.kind) == ("optimizer update", "own")


def test_inherited_from_the_plumbing_when_no_stage_is_wrong_alone(small, monkeypatch):
    def backward(self, dy):
        for name, layer in reversed(self._modules.items()):
            if self.record:
                self.upstream[name] = dy
            dy = layer.backward(dy * 1.001)  # the slip: between the layers, not in any layer
        return dy

    monkeypatch.setattr(Sequential, "backward", backward)
    d = check(small, steps=1).diagnosis
    assert d.first.name == "grad/V.weight" and d.suspect.label == "V backward"
    assert d.kind == "inherited" and d.culprit is None
    assert not any(s.off for s in d.stages)
    assert "put together" in d.verdict


def test_inherited_from_the_state_entering_the_step(small, monkeypatch):
    """An update error below tolerance at step 1 surfaces in step 2's forward: no stage of step 2
    is wrong alone; the verdict points at the state that came in."""
    original = SGD.step
    calls = []

    def step(self):
        original(self)
        calls.append(1)
        if len(calls) == 1:
            w = self.params["U.weight"].data
            w += 0.3 * 1e-10  # a constant shift: margin < 1 on U.weight, same sign everywhere

    monkeypatch.setattr(SGD, "step", step)
    r = check(small, steps=3)
    d = r.diagnosis
    assert r.trace.steps[0] and all(c.passed for c in r.trace.steps[0])
    assert d.step == 2 and d.first.name == "out/U" and d.suspect.label == "U forward"
    assert d.kind == "inherited" and d.culprit is None
    assert d.entering.name == "param/U.weight" and 0 < d.entering.margin <= 1
    assert "entering step 2" in d.verdict


def test_walk_back_names_the_nearest_earlier_stage_that_is_off():
    tol = Tolerance(1e-10, 1e-9)

    def stage(name, off):
        s = Stage(name, "forward", "X.forward")
        s.comparisons.append(compare("out/" + name, np.array([1.0 + off]), np.array([1.0]), tol))
        return s

    stages = [stage("a", 0), stage("b", 1e-3), stage("c", 0), stage("d", 0)]
    assert locate(stages, 3) == (stages[1], "inherited")
    assert locate(stages, 1) == (stages[1], "own")
    assert locate(stages, 0) == (None, "inherited")


def test_record_keys_map_to_the_stage_that_computes_them():
    layers = ["U", "relu", "V"]
    assert producer("out/U", layers) == ("U", "forward")
    assert producer("dout/V", layers) == ("loss", "backward")
    assert producer("dout/relu", layers) == ("V", "backward")
    assert producer("grad/U.bias", layers) == ("U", "backward")
    assert producer("param/V.weight", layers) == ("optimizer", "update")
    assert producer("state/V.weight.momentum_buffer", layers) == ("optimizer", "update")
    assert producer("buffer/bn.running_var", layers) == ("bn", "forward")
    assert producer("loss", layers) == ("loss", "forward")
    assert [layer_of(k) for k in ("dout/U", "grad/V.bias", "state/U.weight.momentum_buffer", "loss")] == \
        ["U", "V", "U", "loss"]


# --- a small net with dropout: the step's masks are replayed when a layer is re-run alone ---

class Drop(scratch.Module):
    """Inverted dropout drawing its own mask from a seeded generator (test double)."""

    draws_mask = True

    def __init__(self, p, seed):
        super().__init__()
        self.p, self.rng, self.mask = p, np.random.default_rng(seed), None

    def forward(self, x):
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask / (1 - self.p)

    def backward(self, dy):
        return dy * self.mask / (1 - self.p)


class TorchDrop(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p, self.mask = p, None

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def dropout_sides():
    rng = np.random.default_rng(3)
    model = Sequential(OrderedDict(fc1=Linear(6, 5), act=ReLU(), drop=Drop(0.3, seed=7), fc2=Linear(5, 3)))
    for _, p in model.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    tm = bridge.mirror(model, torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(6, 5), act=torch.nn.ReLU(), drop=TorchDrop(0.3), fc2=torch.nn.Linear(5, 3))))
    s = ScratchSide(model, scratch.CrossEntropyLoss("mean"), SGD(model.named_parameters(), 0.1, 0.9))
    t = TorchSide(tm, torch.nn.CrossEntropyLoss(), torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9))
    batches = [(rng.standard_normal((8, 6)), rng.integers(0, 3, 8)) for _ in range(3)]
    return s, t, batches


def run_small(loc=None):
    s, t, batches = dropout_sides()
    loc = loc or Localizer()
    return check_steps(s, t, batches, net="drop-net", dtype="float64", observer=loc), loc


def test_dropout_net_passes():
    trace, loc = run_small()
    assert trace.ok, trace.message()
    assert loc.diagnosis is None


def test_dropout_forward_without_scale_is_its_own_error_with_the_mask_replayed(monkeypatch):
    def forward(self, x):
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask  # the slip: no 1/(1-p)

    monkeypatch.setattr(Drop, "forward", forward)
    trace, loc = run_small()
    d = loc.diagnosis
    assert (d.first.name, d.suspect.label, d.culprit.label, d.kind) == ("out/drop", "drop forward",
                                                                         "drop forward", "own")
    assert d.culprit.note is None and d.culprit.comparisons  # compared: the mask was drawn again


def test_dropout_backward_slip_is_found_with_the_steps_mask(monkeypatch):
    monkeypatch.setattr(Drop, "backward", lambda self, dy: dy * self.mask)  # the slip: no 1/(1-p)
    trace, loc = run_small()
    d = loc.diagnosis
    assert (d.first.name, d.culprit.label, d.kind) == ("dout/act", "drop backward", "own")
    drop_forward = next(s for s in d.stages if s.label == "drop forward")
    assert drop_forward.comparisons and not drop_forward.off


# --- the command ----------------------------------------------------------------------

def test_parity_is_the_same_command_under_its_old_name():
    from nnparity.cli.main import build_parser

    a = build_parser().parse_args(["parity", "mlp1000", "--steps", "3", "--json"])
    b = build_parser().parse_args(["check", "mlp1000", "--steps", "3", "--json"])
    assert {k: v for k, v in vars(a).items() if k != "cmd"} == {k: v for k, v in vars(b).items() if k != "cmd"}
    assert a.cmd == "parity" and b.cmd == "check"


def test_cli_check_inject_exits_1_and_names_the_culprit(capsys):
    original = ReLU.backward
    assert main(["check", "mlp1000", "--steps", "1", "--json", "--inject", "relu-straight-through"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["injected"] == "relu-straight-through"
    assert d["diagnosis"]["culprit"] == "relu backward" and d["diagnosis"]["kind"] == "own"
    assert d["diagnosis"]["first_divergence"]["name"] == "dout/U"
    assert ReLU.backward is original  # the patch did not outlive the check


def test_cli_check_battery_section_kills_what_step_parity_cannot_see(capsys):
    """A Linear bias gradient summed in float32 passes float64 step parity and fails the battery
    section's float32 check: exit 1, the kind named; --no-battery leaves the section out. (The other
    three such slips, on cnn18k: parity_tests/test_selftest.py's cnn18k:battery column.)"""
    assert main(["check", "mlp1000", "--steps", "1", "--inject", "linear-db-float32-sum"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: step parity passes" in out and "FAIL  mlp1000 linear" in out and "f32acc: grad/bias" in out
    assert main(["check", "toy221", "--steps", "1", "--no-battery"]) == 0
    assert "BATTERY" not in capsys.readouterr().out


def test_cli_inject_and_noise_floor_do_not_go_together(capsys):
    assert main(["check", "mlp1000", "--noise-floor", "--inject", "relu-straight-through"]) == 2
    assert "do not go together" in capsys.readouterr().err


def test_run_stops_before_training_and_its_report_names_the_culprit(tmp_path, monkeypatch):
    from nnparity.cli.run import EXIT_PARITY, run_network

    monkeypatch.setattr(ReLU, "backward", lambda self, dy: dy)
    status = run_network("mlp1000", epochs=1, train_size=200, test_size=100, parity_steps=2, progress=False,
                         out=tmp_path)
    assert status == EXIT_PARITY
    assert not (tmp_path / "mlp1000").exists()  # a failed run never takes OUT/mlp1000's place
    m = json.loads((tmp_path / "mlp1000.incomplete" / "metrics.json").read_text())
    assert m["status"] == "parity-failed" and m["parity"]["diagnosis"]["culprit"] == "relu backward"
    assert "ReLU.backward" in m["status_detail"]


def test_rounding_at_a_kink_is_named_as_such(monkeypatch):
    """A pre-activation exactly at ReLU's kink on the torch side and 1e-13 above it on the scratch
    side: every stage is right alone, the gradient differs by a whole term, and the verdict says
    it is rounding at a kink."""
    rng = np.random.default_rng(0)
    model = Sequential(OrderedDict(fc1=Linear(3, 4), act=ReLU(), fc2=Linear(4, 2)))
    for _, p in model.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    model.fc1.bias.data[...] = 0  # a zero input row gives pre-activations exactly 0
    tm = bridge.mirror(model, torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(3, 4), act=torch.nn.ReLU(), fc2=torch.nn.Linear(4, 2))))
    s = ScratchSide(model, scratch.CrossEntropyLoss("sum"), SGD(model.named_parameters(), 0.1))
    t = TorchSide(tm, torch.nn.CrossEntropyLoss(reduction="sum"), torch.optim.SGD(tm.parameters(), lr=0.1))
    x = rng.standard_normal((4, 3))
    x[0] = 0
    original = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, x: original(self, x) + 1e-13)  # rounding-sized
    loc = Localizer()
    trace = check_steps(s, t, [(x, np.array([0, 1, 1, 0]))], net="kink-net", dtype="float64", observer=loc)
    d = loc.diagnosis
    assert not trace.ok and d.kind == "inherited" and d.culprit is None
    assert d.kink["name"] == "out/fc1" and d.kink["index"][0] == 0 and d.kink["reference"] == 0
    assert "ROUNDING AT A KINK" in d.verdict
