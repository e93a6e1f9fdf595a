"""Named conventions for the known disagreements (``nnparity.training.disagreements``): one
argument makes the torch side follow a documented choice, so the tensor is still compared (and a
slip in it still fails) instead of being skipped. Learner-style layers written here, one per
convention, each failing without its convention and passing with it."""

import numpy as np
import pytest
import torch

import nnparity
from examples.cs231n_layers import batchnorm_backward, batchnorm_forward
from examples.steps_mlp import Dense, Network, Tanh, batches, sgd, softmax_cross_entropy
from nnparity.training.adapters import ArgumentError, NNParityWarning

BN = (batchnorm_forward, batchnorm_backward)   # CS231n: running_var from the biased batch variance


# --- biased_running_var ----------------------------------------------------------------------------

def test_biased_running_var_fails_without_the_convention_and_passes_with_it_in_both_modes():
    with pytest.raises(AssertionError, match=r"^batchnorm_forward float64 buffer/running_var"):
        nnparity.check_layer(BN, torch.nn.BatchNorm1d(4), input_shape=(6, 4))
    report = nnparity.check_layer(BN, torch.nn.BatchNorm1d(4), input_shape=(6, 4), modes=("train", "eval"),
                                  conventions=("biased_running_var",))
    names = [c.name for c in report.results["float64 eval"]]
    assert "buffer/running_var after 3 training steps" in names and "buffer/running_var" in names   # compared
    assert "the reference follows your conventions: biased_running_var" in report.context


def momentum_as_torch_reads_it(x, gamma, beta, bn_param):
    """CS231n's batchnorm with torch's momentum (0.1) used as CS231n's (the weight of the old value)."""
    cfg = dict(bn_param, momentum=1 - bn_param["momentum"])   # BUG: 0.1 keeps a tenth of the old value
    out, cache = batchnorm_forward(x, gamma, beta, cfg)
    bn_param.update(running_mean=cfg["running_mean"], running_var=cfg["running_var"])
    return out, cache


def test_under_the_convention_a_running_var_slip_still_fails():
    with pytest.raises(AssertionError, match=r"buffer/running_var"):
        nnparity.check_layer((momentum_as_torch_reads_it, batchnorm_backward), torch.nn.BatchNorm1d(4),
                             input_shape=(6, 4), conventions=("biased_running_var",))


def test_the_hooks_are_removed_after_the_check():
    bn = torch.nn.BatchNorm1d(4)
    nnparity.check_layer(BN, bn, input_shape=(6, 4), conventions=("biased_running_var",))
    assert not bn._forward_hooks and not bn._forward_pre_hooks


# --- eps_outside_sqrt ----------------------------------------------------------------------------

class LayerNormEpsOutside:
    """y = (x - mean) / (sqrt(var) + eps) * gamma + beta over the last axis."""

    def __init__(self, d, eps=1e-5):
        self.params = {"weight": np.ones(d), "bias": np.zeros(d)}
        self.grads, self.eps = {}, eps

    def forward(self, x):
        self.xc = x - x.mean(axis=-1, keepdims=True)
        self.s = np.sqrt((self.xc ** 2).mean(axis=-1, keepdims=True))
        self.xhat = self.xc / (self.s + self.eps)
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        # d = s + eps:  dxc = gh / d - sum(gh xc) xc / (d^2 D s),  gh = dy gamma;  dx = dxc - mean(dxc)
        self.grads["weight"] = (dy * self.xhat).reshape(-1, dy.shape[-1]).sum(axis=0)
        self.grads["bias"] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
        gh, d, n = dy * self.params["weight"], self.s + self.eps, dy.shape[-1]
        dxc = gh / d - (gh * self.xc).sum(axis=-1, keepdims=True) * self.xc / (d ** 2 * n * self.s)
        return dxc - dxc.mean(axis=-1, keepdims=True)


def test_eps_outside_sqrt_fails_without_the_convention_and_passes_with_it():
    assert nnparity.check_layer(LayerNormEpsOutside(6), None, input_shape=(4, 6)).ok   # the backward is right
    with pytest.raises(AssertionError, match=r"^LayerNormEpsOutside float64 out \(forward activation\)"):
        nnparity.check_layer(LayerNormEpsOutside(6), torch.nn.LayerNorm(6), input_shape=(4, 6))
    report = nnparity.check_layer(LayerNormEpsOutside(6), torch.nn.LayerNorm(6), input_shape=(4, 6),
                                  conventions="eps_outside_sqrt")
    assert [c.name for c in report.results["float64"]] == ["out", "din", "grad/weight", "grad/bias"]


def test_eps_outside_sqrt_follows_a_batchnorm_in_eval_too():
    class BatchNormEpsOutside:
        def __init__(self, d, eps=1e-5):
            self.params = {"weight": np.ones(d), "bias": np.zeros(d)}
            self.buffers = {"running_mean": np.zeros(d), "running_var": np.ones(d)}
            self.grads, self.eps, self.training = {}, eps, True

        def forward(self, x):
            b = self.buffers
            if self.training:
                mu, var = x.mean(axis=0), x.var(axis=0)
                b["running_mean"] = 0.9 * b["running_mean"] + 0.1 * mu
                b["running_var"] = 0.9 * b["running_var"] + 0.1 * var * len(x) / (len(x) - 1)
            else:
                mu, var = b["running_mean"], b["running_var"]
            return (x - mu) / (np.sqrt(var) + self.eps) * self.params["weight"] + self.params["bias"]

        def backward(self, dy):
            raise NotImplementedError("no backward in this sketch")

    with pytest.warns(NNParityWarning, match="only its forward"):   # the sketch has no backward
        with pytest.raises(AssertionError, match=r"^BatchNormEpsOutside float64 eval|^BatchNormEpsOutside float64 out"):
            nnparity.check_layer(BatchNormEpsOutside(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4), mode="eval")
        report = nnparity.check_layer(BatchNormEpsOutside(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4),
                                      mode="eval", conventions=("eps_outside_sqrt",))
    assert report.ok and "buffer/running_var after 3 training steps" in [c.name for c in report.results["float64"]]


# --- eps_in_log --------------------------------------------------------------------------------------

def ce_eps_in_log(z, y, eps=1e-7):
    """-mean log(p_y + eps), p = softmax(z): dL/dz = p_y / (p_y + eps) (p - onehot(y)) / N."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    py = p[np.arange(n), y]
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    return -np.log(py + eps).mean(), dz * (py / (py + eps))[:, None] / n


def test_eps_in_log_fails_without_the_convention_and_passes_with_its_eps():
    with pytest.raises(AssertionError, match=r"^ce_eps_in_log float64 loss"):
        nnparity.check_loss(ce_eps_in_log, torch.nn.CrossEntropyLoss(), input_shape=(8, 5))
    report = nnparity.check_loss(ce_eps_in_log, torch.nn.CrossEntropyLoss(), input_shape=(8, 5),
                                 conventions={"eps_in_log": 1e-7})
    assert report.ok and [c.name for c in report.results["float64"]] == ["loss", "din"]
    with pytest.raises(AssertionError, match=r"^ce_eps_in_log float64 loss"):   # another eps is another loss
        nnparity.check_loss(ce_eps_in_log, torch.nn.CrossEntropyLoss(), input_shape=(8, 5),
                            conventions={"eps_in_log": 1e-5})


# --- l2_in_grad ---------------------------------------------------------------------------------------

class DenseL2(Dense):
    """CS231n's habit: the layer adds the L2 term to its own weight gradient, dW += reg * W."""

    reg = 1e-2

    def backward(self, dy):
        dx = super().backward(dy)
        self.dW = self.dW + self.reg * self.W
        return dx


def test_l2_in_grad_fails_without_the_convention_and_passes_with_its_lambda():
    with pytest.raises(AssertionError, match=r"^DenseL2 float64 grad/weight"):
        nnparity.check_layer(DenseL2(5, 3, np.random.default_rng(0)), torch.nn.Linear(5, 3), input_shape=(4, 5))
    nnparity.check_layer(DenseL2(5, 3, np.random.default_rng(0)), torch.nn.Linear(5, 3), input_shape=(4, 5),
                         conventions={"l2_in_grad": 1e-2})
    with pytest.raises(AssertionError, match=r"^DenseL2 float64 grad/weight"):   # the term is still compared
        nnparity.check_layer(DenseL2(5, 3, np.random.default_rng(0)), torch.nn.Linear(5, 3), input_shape=(4, 5),
                             conventions={"l2_in_grad": 1e-3})


def test_l2_in_grad_in_training_steps_and_through_the_fixture(nnparity):
    rng = np.random.default_rng(0)
    net = Network([DenseL2(12, 16, rng), Tanh(), Dense(16, 16, rng), Tanh(), DenseL2(16, 5, rng)])
    mirror = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                 torch.nn.Linear(16, 5))
    with pytest.raises(AssertionError, match=r"^Network float64 step 1: grad/4.weight"):
        nnparity.steps(net, softmax_cross_entropy, sgd(0.1), mirror, torch.nn.CrossEntropyLoss(),
                       lambda p: torch.optim.SGD(p, lr=0.1), batches())
    rng = np.random.default_rng(0)
    net = Network([DenseL2(12, 16, rng), Tanh(), DenseL2(16, 16, rng), Tanh(), DenseL2(16, 5, rng)])
    trace = nnparity.steps(net, softmax_cross_entropy, sgd(0.1), mirror, torch.nn.CrossEntropyLoss(),
                           lambda p: torch.optim.SGD(p, lr=0.1), batches(), conventions={"l2_in_grad": 1e-2})
    assert trace.ok and "the reference followed your conventions: l2_in_grad" in trace.warnings


# --- misuse: one line each ------------------------------------------------------------------------

@pytest.mark.parametrize("conventions, phrase", [
    (("unbiased_variance",), r"^unknown convention 'unbiased_variance': the known ones are biased_running_var, "
                             r"eps_outside_sqrt, eps_in_log \(with its eps\), l2_in_grad \(with its lambda\)$"),
    (("l2_in_grad",), r"^convention 'l2_in_grad' needs its lambda, a number >= 0: conventions=\{'l2_in_grad': "),
    ({"biased_running_var": 0.5}, r"^convention 'biased_running_var' takes no value"),
    (("biased_running_var",), r"^convention 'biased_running_var' changes a torch BatchNorm, and the torch side here "
                              r"\(LayerNorm\) has none: drop it"),
    (42, r"^conventions must be a name, a tuple of names or a dict"),
])
def test_a_misnamed_or_misplaced_convention_is_one_line(conventions, phrase):
    with pytest.raises(ArgumentError, match=phrase) as e:
        nnparity.check_layer(LayerNormEpsOutside(6), torch.nn.LayerNorm(6), input_shape=(4, 6),
                             conventions=conventions)
    assert "\n" not in str(e.value)


def test_eps_in_log_on_a_layer_is_one_line():
    with pytest.raises(ArgumentError, match=r"^convention 'eps_in_log' changes a torch CrossEntropyLoss"):
        nnparity.check_layer(LayerNormEpsOutside(6), torch.nn.LayerNorm(6), input_shape=(4, 6),
                             conventions={"eps_in_log": 1e-7})
