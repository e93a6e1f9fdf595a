"""``check_steps``' own-or-inherited analysis for a user's network (``nnparity.training.layered``,
``nnparity.diagnosis.localize.isolate_network``): at the first failing step every stage is re-run
alone on the torch side's numbers; the stage wrong alone is the culprit, the stages after it
that are right alone inherited the error. Learner-style networks written here, each with one slip."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

import nnparity
import scratch
from examples.steps_mlp import Dense, Network, ReLU, Tanh, batches, sgd, softmax_cross_entropy, torch_mirror
from nnparity.core.parity import ParityError


def run(net, update=None, mirror=None, **kwargs):
    return nnparity.check_steps(net, softmax_cross_entropy, update or sgd(0.1), mirror or torch_mirror(),
                                torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches(),
                                raise_on_failure=False, **kwargs)


def layers(rng, act2=ReLU):
    return [Dense(12, 16, rng), Tanh(), Dense(16, 16, rng), act2(), Dense(16, 5, rng)]


class LeakyForward(ReLU):
    """A ReLU whose forward leaks 0.01 x below zero while its backward is the ReLU's."""

    def forward(self, x):
        self.positive = x > 0
        return np.where(self.positive, x, 0.01 * x)   # BUG: this is LeakyReLU, the mirror has ReLU


def test_a_forward_slip_deep_inside_is_its_own_and_every_later_output_inherits_it():
    trace = run(Network(layers(np.random.default_rng(0), LeakyForward)))
    d = trace.diagnosis
    assert (d.step, d.first.name, d.kind, d.culprit.label) == (1, "out/act2", "own", "act2 forward")
    assert d.culprit.impl == "LeakyForward.forward"
    # what the forward computes after act2 is right when fed torch's numbers: inherited
    assert d.inherited == ["fc3 forward", "loss forward", "loss backward", "fc3 backward", "act2 backward",
                           "fc2 backward", "act1 backward", "fc1 backward", "optimizer update"]
    assert [s.label for s in d.stages if s.off] == ["act2 forward"]


class AttributeNet:
    """Layers as attributes named like the mirror's children, and a forward written out by hand."""

    def __init__(self, rng):
        self.fc1, self.act1, self.fc2, self.act2, self.fc3 = layers(rng)

    def forward(self, x):
        return self.fc3.forward(self.act2.forward(self.fc2.forward(self.act1.forward(self.fc1.forward(x)))))

    def backward(self, dy):
        return self.fc1.backward(self.act1.backward(self.fc2.backward(self.act2.backward(self.fc3.backward(dy)))))


def test_layers_named_like_the_mirrors_children_are_followed_and_a_wrong_update_is_the_culprit():
    def lr_twice(params, grads):
        for k in params:
            params[k] -= 0.2 * grads[k]   # BUG: the mirror's lr is 0.1

    assert run(AttributeNet(np.random.default_rng(0))).ok
    d = run(AttributeNet(np.random.default_rng(0)), lr_twice).diagnosis
    assert (d.first.name, d.kind, d.culprit.label) == ("param/fc1.weight", "own", "optimizer update")
    assert all(not s.off for s in d.stages[:-1])


class OnePiece:
    """A network with its parameters in one dict and no layer objects: one stage, ``output``."""

    def __init__(self, rng):
        self.params = {"fc1.weight": rng.standard_normal((16, 12)) * 0.3, "fc1.bias": np.zeros(16),
                       "fc2.weight": rng.standard_normal((5, 16)) * 0.3, "fc2.bias": np.zeros(5)}
        self.grads = {}

    def forward(self, x):
        p = self.params
        self.x, self.h = x, x @ p["fc1.weight"].T + p["fc1.bias"]
        return np.maximum(self.h, 0) @ p["fc2.weight"].T + p["fc2.bias"]

    def backward(self, dy):
        p, g = self.params, self.grads
        a = np.maximum(self.h, 0)
        g["fc2.weight"], g["fc2.bias"] = dy.T @ a, dy.sum(axis=0)
        dh = dy @ p["fc2.weight"] * (self.h > 0)
        g["fc1.weight"], g["fc1.bias"] = dh.T @ self.x, dh.mean(axis=0)   # BUG: a mean where the sum is due


def mlp_mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(12, 16), relu=torch.nn.ReLU(),
                                           fc2=torch.nn.Linear(16, 5)))


def test_a_network_in_one_piece_is_one_stage_and_its_backward_is_the_culprit():
    trace = run(OnePiece(np.random.default_rng(0)), mirror=mlp_mirror())
    d = trace.diagnosis
    assert (d.first.name, d.kind, d.culprit.label, d.culprit.impl) == ("grad/fc1.bias", "own", "output backward",
                                                                      "OnePiece.backward")
    assert [s.label for s in d.stages] == ["output forward", "loss forward", "loss backward", "output backward",
                                           "optimizer update"]
    assert d.inherited == ["optimizer update"]
    assert d.first.pattern.startswith("scratch = 1/N = 1/8 x reference exactly")


def test_the_message_carries_the_table_and_the_verdict():
    with pytest.raises(ParityError) as e:
        nnparity.check_steps(OnePiece(np.random.default_rng(0)), softmax_cross_entropy, sgd(0.1), mlp_mirror(),
                             torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches())
    msg = str(e.value)
    assert "OWN OR INHERITED: every stage of step 1 re-run alone" in msg
    assert "output backward          OnePiece.backward" in msg and "<- suspect, CULPRIT" in msg
    assert "optimizer update" in msg and "ok alone, inherited" in msg


def test_a_scratch_sequential_and_its_optimizer_are_re_run_alone():
    class SlowSGD(scratch.SGD):
        def step(self):
            super().step()
            for p in self.params.values():
                p.data += 0.01 * p.grad   # BUG: gives back a tenth of the step

    net = scratch.Sequential(OrderedDict(fc1=scratch.Linear(12, 16), relu=scratch.ReLU(), fc2=scratch.Linear(16, 5)))
    rng = np.random.default_rng(0)
    for _, p in net.named_parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    trace = nnparity.check_steps(net, scratch.CrossEntropyLoss("mean"), SlowSGD(net.named_parameters(), 0.1),
                                 mlp_mirror(), torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1),
                                 batches(), raise_on_failure=False)
    d = trace.diagnosis
    assert [c.name for c in trace.steps[0]][:3] == ["out/fc1", "out/relu", "out/fc2"]
    assert (d.kind, d.culprit.label, d.culprit.impl) == ("own", "optimizer update", "SlowSGD.step")


class Bypass(Network):
    """Calls the last layer's arithmetic directly instead of its forward: the layers cannot be followed."""

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer.forward(x)
        last = self.layers[-1]
        last.x = x
        return x @ last.W + last.b


def test_a_network_whose_layers_cannot_be_followed_is_one_piece_and_says_so():
    trace = run(Bypass(layers(np.random.default_rng(0))))
    assert trace.ok
    assert any("layers were not followed one by one (layer fc3's forward or backward was not called through the "
               "layer object)" in w for w in trace.warnings)
    assert [c.name for c in trace.steps[-1]][:3] == ["out/output", "loss", "dout/output"]


# --- mode="eval": every step in evaluation mode on both sides -------------------------------------

class BatchNorm:
    """A learner's BatchNorm1d: gamma, beta, running statistics as attributes, ``training`` flag."""

    def __init__(self, n, rng, momentum=0.1, eps=1e-5):
        self.gamma, self.beta = 1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)
        self.running_mean, self.running_var = rng.standard_normal(n), 1 + rng.random(n)
        self.momentum, self.eps, self.training = momentum, eps, True

    def stats(self, x):
        if not self.training:
            return self.running_mean, self.running_var
        mu, var = x.mean(axis=0), x.var(axis=0)
        m = self.momentum
        self.running_mean = (1 - m) * self.running_mean + m * mu
        self.running_var = (1 - m) * self.running_var + m * var * len(x) / (len(x) - 1)
        return mu, var

    def forward(self, x):
        mu, var = self.stats(x)
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.gamma * self.xhat + self.beta

    def backward(self, dy):
        # train: dx = inv (g - mean g - xhat mean(g xhat)), g = gamma dy;  eval: dx = inv g
        self.dgamma, self.dbeta = (dy * self.xhat).sum(axis=0), dy.sum(axis=0)
        g = dy * self.gamma
        if not self.training:
            return self.inv * g
        return self.inv * (g - g.mean(axis=0) - self.xhat * (g * self.xhat).mean(axis=0))


class BatchStatsInEval(BatchNorm):
    """Normalises with the batch's statistics in eval too (the running ones are only kept)."""

    def stats(self, x):
        mu, var = x.mean(axis=0), x.var(axis=0)   # BUG: eval must use running_mean / running_var
        if self.training:
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mu
            self.running_var = (1 - m) * self.running_var + m * var * len(x) / (len(x) - 1)
        return mu, var


def bn_net(bn=BatchNorm):
    rng = np.random.default_rng(0)
    return Network([Dense(12, 16, rng), bn(16, rng), ReLU(), Dense(16, 5, rng)])


def bn_mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(12, 16), bn=torch.nn.BatchNorm1d(16),
                                           act=torch.nn.ReLU(), fc2=torch.nn.Linear(16, 5)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_batchnorm_network_passes_in_either_mode(mode):
    # in training, fc1's bias feeds a BatchNorm: its gradient is zero by construction
    trace = run(bn_net(), mirror=bn_mirror(), mode=mode, allowed_zero=["fc1.bias"] if mode == "train" else ())
    assert trace.ok, trace.message()
    last = {c.name: c for c in trace.steps[-1]}
    assert "buffer/bn.running_var" in last and "out/bn" in last


def test_batch_statistics_in_eval_pass_in_training_and_fail_in_eval_at_the_batchnorm_forward():
    assert run(bn_net(BatchStatsInEval), mirror=bn_mirror(), allowed_zero=["fc1.bias"]).ok
    d = run(bn_net(BatchStatsInEval), mirror=bn_mirror(), mode="eval").diagnosis
    assert (d.step, d.first.name, d.kind, d.culprit.label) == (1, "out/bn", "own", "bn forward")
    assert d.culprit.impl == "BatchStatsInEval.forward"


def test_eval_steps_leave_the_running_statistics_alone_on_both_sides():
    net = bn_net()
    before = net.layers[1].running_var.copy()
    trace = run(net, mirror=bn_mirror(), mode="eval")
    assert trace.ok and np.array_equal(net.layers[1].running_var, before)


def test_an_unknown_mode_is_one_line():
    with pytest.raises(nnparity.training.adapters.ArgumentError, match=r"^mode must be 'train' or 'eval'"):
        run(bn_net(), mirror=bn_mirror(), mode="test")


def test_a_skipped_tensor_is_never_diagnosed_and_a_convention_compares_it():
    """skip= leaves the BatchNorm's running_var out before the analysis sees the step: with a
    biased running variance skipped the run passes and holds no diagnosis; named as a convention,
    running_var is compared (torch follows) and passes."""
    class BiasedRunningVar(BatchNorm):
        def stats(self, x):
            mu, var = x.mean(axis=0), x.var(axis=0)
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mu
            self.running_var = (1 - m) * self.running_var + m * var   # biased (CS231n's choice)
            return mu, var

    d = run(bn_net(BiasedRunningVar), mirror=bn_mirror(), allowed_zero=["fc1.bias"]).diagnosis
    assert (d.first.name, d.culprit.label) == ("buffer/bn.running_var", "bn forward")
    trace = run(bn_net(BiasedRunningVar), mirror=bn_mirror(), allowed_zero=["fc1.bias"],
                skip=["buffer/bn.running_var"])
    assert trace.ok and trace.diagnosis is None
    trace = run(bn_net(BiasedRunningVar), mirror=bn_mirror(), allowed_zero=["fc1.bias"],
                conventions=("biased_running_var",))
    assert trace.ok and "buffer/bn.running_var" in {c.name for c in trace.steps[-1]}
