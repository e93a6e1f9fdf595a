"""The controls of the user API (atol/rtol, skip=, allowed_zero=, a wrong dtype judged
apart from the values) on learner-style layers written here: the false positive of a
Linear's bias feeding a BatchNorm in ``check_steps``, and float32 numerics that a
float64 scalar (``np.finfo(float).eps``) used to hide behind a dtype mismatch."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

import nnparity
from nnparity.training.adapters import ArgumentError
from nnparity.core.parity import ParityError


# --- a learner's network whose first bias is zero by construction ----------------------------------

class LinearBatchNormNet:
    """fc1 -> BatchNorm1d -> ReLU -> fc2 with a params dict and torch's names. BatchNorm subtracts
    the batch mean, so fc1's bias has no effect on the loss: its gradient is zero by construction."""

    def __init__(self, n_in=6, hidden=8, n_out=4, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {"fc1.weight": rng.standard_normal((hidden, n_in)) / np.sqrt(n_in),
                       "fc1.bias": rng.standard_normal(hidden) * 0.1,
                       "bn.weight": 1 + 0.1 * rng.standard_normal(hidden), "bn.bias": 0.1 * rng.standard_normal(hidden),
                       "fc2.weight": rng.standard_normal((n_out, hidden)) / np.sqrt(hidden),
                       "fc2.bias": np.zeros(n_out)}
        self.buffers = {"bn.running_mean": np.zeros(hidden), "bn.running_var": np.ones(hidden)}
        self.grads = {}

    def forward(self, x):
        p, b = self.params, self.buffers
        self.x = x
        h = x @ p["fc1.weight"].T + p["fc1.bias"]
        mu, var, n = h.mean(axis=0), h.var(axis=0), len(h)
        b["bn.running_mean"] = 0.9 * b["bn.running_mean"] + 0.1 * mu
        b["bn.running_var"] = 0.9 * b["bn.running_var"] + 0.1 * var * n / (n - 1)
        self.inv = 1 / np.sqrt(var + 1e-5)
        self.xhat = (h - mu) * self.inv
        self.a = self.xhat * p["bn.weight"] + p["bn.bias"]
        self.r = np.maximum(self.a, 0)
        return self.r @ p["fc2.weight"].T + p["fc2.bias"]

    def backward(self, dout):
        p, g = self.params, self.grads
        g["fc2.weight"], g["fc2.bias"] = dout.T @ self.r, dout.sum(axis=0)
        da = (dout @ p["fc2.weight"]) * (self.a > 0)
        g["bn.weight"], g["bn.bias"] = (da * self.xhat).sum(axis=0), da.sum(axis=0)
        gx = da * p["bn.weight"]
        dh = self.inv * (gx - gx.mean(axis=0) - self.xhat * (gx * self.xhat).mean(axis=0))
        g["fc1.weight"], g["fc1.bias"] = dh.T @ self.x, dh.sum(axis=0)   # dh sums to 0 over the batch


def softmax_ce(z, y):
    s = z - z.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    dz = np.exp(logp)
    dz[np.arange(len(y)), y] -= 1
    return -logp[np.arange(len(y)), y].mean(), dz / len(y)


def sgd(params, grads):
    for k in params:
        params[k] -= 0.1 * grads[k]


def bn_mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(6, 8), bn=torch.nn.BatchNorm1d(8),
                                           relu=torch.nn.ReLU(), fc2=torch.nn.Linear(8, 4)))


def bn_batches(n=3):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((10, 6)), rng.integers(0, 4, 10)) for _ in range(n)]


def run_bn(**kwargs):
    return nnparity.check_steps(LinearBatchNormNet(), softmax_ce, sgd, bn_mirror(), torch.nn.CrossEntropyLoss(),
                                lambda p: torch.optim.SGD(p, lr=0.1), bn_batches(), **kwargs)


def test_bias_before_batchnorm_is_inconclusive_and_the_message_says_how_to_declare_it():
    with pytest.raises(ParityError) as e:
        run_bn()
    msg = str(e.value)
    assert "INCONCLUSIVE, no mismatch" in msg and "grad/fc1.bias" in msg
    assert "allowed_zero=['fc1.bias']" in msg   # advice that can be followed


def test_bias_before_batchnorm_declared_zero_passes_and_is_compared_with_zero():
    trace = run_bn(allowed_zero=["fc1.bias"])
    assert trace.ok and len(trace.steps) == 3
    bias = [c for c in trace.steps[0] if c.name == "grad/fc1.bias"][0]
    assert bias.allowed_zero and bias.passed and bias.reference == 0


def test_a_bias_declared_zero_that_is_not_is_a_mismatch():
    """allowed_zero compares with zero: a gradient that is not zero fails (fc2's bias is not)."""
    trace = run_bn(allowed_zero=["fc1.bias", "fc2.bias"], raise_on_failure=False)
    assert trace.first_failure.name == "grad/fc2.bias"


def test_allowed_zero_names_must_be_parameters():
    with pytest.raises(ArgumentError, match=r"allowed_zero names \['fc3.bias'\], which are not parameters"):
        run_bn(allowed_zero=["fc3.bias"])


def test_skip_leaves_out_a_comparison_at_every_step_and_rejects_typos():
    trace = run_bn(allowed_zero="fc1.bias", skip=["buffer/bn.running_var"])
    assert all("buffer/bn.running_var" not in {c.name for c in step} for step in trace.steps)
    assert "buffer/bn.running_mean" in {c.name for c in trace.steps[0]}
    with pytest.raises(ArgumentError, match=r"skip names \['buffer/bn.runing_var'\]"):
        run_bn(allowed_zero="fc1.bias", skip=["buffer/bn.runing_var"])


# --- allowed_zero / skip / atol / rtol in check_layer -----------------------------------------------

class LinearThenNorm:
    """A learner's fused Linear + per-feature normalisation over the batch: the bias cancels."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.W, self.b = rng.standard_normal((3, 4)), np.zeros(3)

    def forward(self, x):
        self.x = x
        h = x @ self.W.T + self.b
        self.c = h - h.mean(axis=0)
        return self.c

    def backward(self, dy):
        dh = dy - dy.mean(axis=0)
        self.dW, self.db = dh.T @ self.x, dh.sum(axis=0)
        return dh @ self.W


def linear_then_center(x, weight, bias):
    h = x @ weight.T + bias
    return h - h.mean(dim=0)


def test_check_layer_allowed_zero():
    with pytest.raises(ParityError, match=r"DEGENERATE.*\nif this gradient is zero by construction.*"
                                          r"allowed_zero=\['bias'\]"):
        nnparity.check_layer(LinearThenNorm(), linear_then_center, input_shape=(5, 4), dtypes=("float64",),
                             params={"W": "weight", "b": "bias"})


def test_check_layer_allowed_zero_with_a_torch_module():
    class Center(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            h = self.lin(x)
            return h - h.mean(dim=0)

    report = nnparity.check_layer(LinearThenNorm(), Center(), input_shape=(5, 4), allowed_zero=["lin.bias"])
    assert report.ok
    with pytest.raises(ParityError, match=r"allowed_zero=\['lin.bias'\]"):
        nnparity.check_layer(LinearThenNorm(), Center(), input_shape=(5, 4))


class SlightlyOffSoftplus:
    """softplus with a series cut short: off by up to ~1e-6, well inside a float32 tolerance."""

    def forward(self, x):
        self.x = x
        return np.log1p(np.exp(x)) + 1e-6 * np.tanh(x)

    def backward(self, dy):
        s = 1 / (1 + np.exp(-self.x))
        return dy * s


def test_atol_rtol_per_dtype_and_skip():
    with pytest.raises(ParityError, match=r"float64 out \(forward activation\)"):
        nnparity.check_layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5))
    report = nnparity.check_layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5),
                                  atol={"float64": 1e-5})
    assert report.ok and report.results["float64"][0].tol.atol == 1e-5
    report = nnparity.check_layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5), skip=["out"])
    assert report.ok and [c.name for c in report.results["float64"]] == ["din"]
    assert "skipped as asked: out" in report.summary()
    with pytest.raises(ArgumentError, match=r"skip names \['dout'\], which are not comparisons"):
        nnparity.check_layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5), skip=["dout"])
    with pytest.raises(ArgumentError, match="atol must be a number >= 0"):
        nnparity.check_layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5), atol=-1)


def test_controls_through_the_fixture(nnparity):
    nnparity.layer(SlightlyOffSoftplus(), torch.nn.Softplus(), input_shape=(4, 5), rtol=1e-4, atol=1e-5)
    nnparity.steps(LinearBatchNormNet(), softmax_ce, sgd, bn_mirror(), torch.nn.CrossEntropyLoss(),
                   lambda p: torch.optim.SGD(p, lr=0.1), bn_batches(2), allowed_zero=["fc1.bias"])


# --- a wrong dtype is its own finding; float32 values are still judged --------------------------------

class OnePassLayerNorm:
    """A learner's LayerNorm, numpy-ml style eps = np.finfo(float).eps (a float64 scalar: the output of a
    float32 input becomes float64) and a one-pass variance E[x^2] - E[x]^2 (float32 cancels on large
    offsets). ``two_pass`` and ``eps`` fix each slip on its own."""

    def __init__(self, two_pass=False, eps=None):
        self.two_pass, self.eps = two_pass, np.finfo(float).eps if eps is None else eps

    def forward(self, x):
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True) if self.two_pass else (x * x).mean(axis=-1, keepdims=True) - mu * mu
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.xhat

    def backward(self, dy):
        return self.inv * (dy - dy.mean(-1, keepdims=True) - self.xhat * (dy * self.xhat).mean(-1, keepdims=True))


def torch_ln(t):
    return torch.nn.functional.layer_norm(t, t.shape[-1:], eps=float(np.finfo(float).eps))


def offset_input():
    return np.random.default_rng(5).standard_normal((4, 16)) + 300.0   # not seed 0: the upstream gradient's


def test_float64_scalar_dtype_only_values_agree_and_the_hint_names_the_scalar():
    with pytest.raises(ParityError) as e:
        nnparity.check_layer(OnePassLayerNorm(two_pass=True), torch_ln, x=offset_input())
    msg = str(e.value)
    assert msg.startswith("OnePassLayerNorm float32 out (forward activation): dtype mismatch: scratch float64, "
                          "reference float32 (values cast to float32: agree")
    assert "np.finfo(float).eps" in msg and "float64 accumulator" in msg
    assert "your values cast to float32 agree (out as float32, din as float32), so only the dtype is wrong" in msg
    assert "float64: all 2 pass" in msg


def test_float32_numerics_are_judged_behind_a_dtype_mismatch():
    """The one-pass variance loses float32 precision on an offset input; the float64 eps makes the output
    float64. Before, only the dtype was reported; now the values, cast to float32, fail too."""
    with pytest.raises(ParityError) as e:
        nnparity.check_layer(OnePassLayerNorm(), torch_ln, x=offset_input())
    msg = str(e.value)
    assert "float32 out (forward activation): dtype mismatch" in msg
    assert "your values cast to float32 disagree too: OnePassLayerNorm float32 out as float32 (forward activation): " \
           "max abs" in msg
    # with the dtype fixed (a Python float eps), the same numerics fail as plain values
    with pytest.raises(ParityError, match=r"^OnePassLayerNorm float32 out \(forward activation\): max abs"):
        nnparity.check_layer(OnePassLayerNorm(eps=float(np.finfo(float).eps)), torch_ln, x=offset_input())
    nnparity.check_layer(OnePassLayerNorm(two_pass=True, eps=float(np.finfo(float).eps)), torch_ln, x=offset_input())


def test_check_steps_dtype_finding_then_values():
    class PromotingNet(LinearBatchNormNet):
        def backward(self, dout):
            super().backward(dout * np.float64(1.0))   # a float64 scalar: every gradient becomes float64

    net = PromotingNet()
    net.params = {k: v.astype(np.float32) for k, v in net.params.items()}
    net.buffers = {k: v.astype(np.float32) for k, v in net.buffers.items()}
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 4, 10)) for _ in range(2)]
    trace = nnparity.check_steps(net, softmax_ce, sgd, bn_mirror(), torch.nn.CrossEntropyLoss(),
                                 lambda p: torch.optim.SGD(p, lr=0.1), data, allowed_zero=["fc1.bias"],
                                 raise_on_failure=False)
    first = trace.first_failure
    assert first.name == "grad/fc2.bias" and first.problem.startswith("dtype mismatch: scratch float64")
    values = [c for c in trace.steps[0] if c.name == "grad/fc2.bias" and c.problem is None]
    assert values and values[0].passed   # the values, cast to float32, agree


# --- check_steps on a network in the attribute convention, W stored (in, out) ---------------------------

class AttributeNet:
    """A learner's two-layer MLP: W1 (in, hidden), b1 (1, hidden), W2, b2 as attributes, dW1 ... as gradients."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.W1, self.b1 = rng.standard_normal((12, 16)) / 4, np.zeros((1, 16))
        self.W2, self.b2 = rng.standard_normal((16, 5)) / 4, np.zeros((1, 5))

    def forward(self, x):
        self.x = x
        self.h = x @ self.W1 + self.b1
        self.a = np.maximum(self.h, 0)
        return self.a @ self.W2 + self.b2

    def backward(self, d):
        self.dW2, self.db2 = self.a.T @ d, d.sum(0, keepdims=True)
        dh = (d @ self.W2.T) * (self.h > 0)
        self.dW1, self.db1 = self.x.T @ dh, dh.sum(0, keepdims=True)


def mlp_mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(12, 16), relu=torch.nn.ReLU(),
                                           fc2=torch.nn.Linear(16, 5)))


def mlp_data():
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 12)), rng.integers(0, 5, 8)) for _ in range(3)]


def test_check_steps_with_attributes_and_a_map():
    mp = {"W1": "fc1.weight.T", "b1": "fc1.bias", "W2": "fc2.weight.T", "b2": "fc2.bias"}
    trace = nnparity.check_steps(AttributeNet(), softmax_ce, sgd, mlp_mirror(), torch.nn.CrossEntropyLoss(),
                                 lambda p: torch.optim.SGD(p, lr=0.1), mlp_data(), params=mp)
    assert trace.ok and "W1 stored (in, out) (12, 16), torch's fc1.weight is (out, in) (16, 12)" in trace.message()
    with pytest.raises(ValueError, match=r"map them onto torch_net's, e.g. params=\{'W1': 'fc1.weight.T', "
                                         r"'b1': 'fc1.bias', 'W2': 'fc2.weight.T', 'b2': 'fc2.bias'\}"):
        nnparity.check_steps(AttributeNet(), softmax_ce, sgd, mlp_mirror(), torch.nn.CrossEntropyLoss(),
                             lambda p: torch.optim.SGD(p, lr=0.1), mlp_data())
