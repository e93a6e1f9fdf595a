"""The "bring your own derivation" API: a user's layers in every accepted convention,
the canonical derivation bugs caught in a user's layer (against autograd and by finite
differences), clear errors for misuse, training-step checks of a user's network, and
the pytest plugin."""

import os
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch

import nnparity
import scratch
from nnparity.training.adapters import ParameterMismatch, ProtocolError
from nnparity.diagnosis.gradcheck import GradcheckError
from nnparity.core.parity import ParityError

# --- a learner's layers, in the plain-object convention (params / grads dicts) ------------------


class Linear:
    """y = x W^T + b with torch's names and layout."""

    def __init__(self, n_in, n_out, rng=None):
        rng = rng or np.random.default_rng(0)
        self.params = {"weight": rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), "bias": np.zeros(n_out)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy):
        self.grads["weight"] = dy.T @ self.x
        self.grads["bias"] = dy.sum(axis=0)
        return dy @ self.params["weight"]


class Softmax:
    """Softmax over axis 1, no parameters."""

    def forward(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        self.y = e / e.sum(axis=1, keepdims=True)
        return self.y

    def backward(self, dy):
        # dx_i = y_i (dy_i - sum_j dy_j y_j)
        return self.y * (dy - (dy * self.y).sum(axis=1, keepdims=True))


class ReLU:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, dy):
        return dy * (self.x > 0)


class Sigmoid:
    def forward(self, x):
        self.x = x
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, dy):
        return dy * self.y * (1 - self.y)


class GlobalAvgPool:
    """(N, C, H, W) -> (N, C): the mean over the spatial axes (as cnn18k's head)."""

    def forward(self, x):
        self.shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        n, c, h, w = self.shape
        return np.broadcast_to(dy[:, :, None, None] / (h * w), self.shape).copy()


class BatchNorm1d:
    """Batch statistics in training, running statistics (``buffers``) in evaluation, as torch."""

    def __init__(self, n, eps=1e-5, momentum=0.1):
        self.params = {"weight": np.ones(n), "bias": np.zeros(n)}
        self.buffers = {"running_mean": np.zeros(n), "running_var": np.ones(n)}
        self.grads, self.eps, self.momentum, self.training = {}, eps, momentum, True

    def update_running(self, mu, var, n):
        m, b = self.momentum, self.buffers
        b["running_mean"] = (1 - m) * b["running_mean"] + m * mu
        b["running_var"] = (1 - m) * b["running_var"] + m * var * n / (n - 1)   # unbiased, as torch

    def forward(self, x):
        if self.training:
            mu, var = x.mean(axis=0), x.var(axis=0)
            self.update_running(mu, var, len(x))
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        # training: dx = inv (g - mean g - xhat mean(g xhat)), g = dy w;  evaluation: dx = inv g
        self.grads["weight"] = (dy * self.xhat).sum(axis=0)
        self.grads["bias"] = dy.sum(axis=0)
        g = dy * self.params["weight"]
        if not self.training:
            return self.inv * g
        return self.inv * (g - g.mean(axis=0) - self.xhat * (g * self.xhat).mean(axis=0))


def softmax_ce(z, target):
    """Mean softmax cross-entropy and its gradient: a loss function (value, dL/dz)."""
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(target)
    dz = np.exp(logp)
    dz[np.arange(n), target] -= 1
    return -logp[np.arange(n), target].mean(), dz / n


def _with_backward(base, backward):
    """An instance of ``base`` whose backward is replaced (a user's slip)."""
    cls = type(f"{base.__name__}Bug", (base,), {"backward": backward})
    return cls


# --- every convention --------------------------------------------------------------------------

def test_plain_object_with_params_and_grads_dicts():
    report = nnparity.check_layer(Linear(16, 8), torch.nn.Linear(16, 8), input_shape=(8, 16))
    assert list(report.results) == ["float64", "float32"] and report.ok
    assert [c.name for c in report.results["float32"]] == ["out", "din", "grad/weight", "grad/bias"]


def test_scratch_module_convention():
    nnparity.check_layer(scratch.Linear(5, 3), torch.nn.Linear(5, 3), input_shape=(4, 5))


def test_parameter_free_object_against_a_torch_module():
    nnparity.check_layer(Softmax(), torch.nn.Softmax(dim=1), input_shape=(4, 10))


def test_pair_of_functions_against_a_torch_function():
    def forward(x):
        return np.tanh(x)

    def backward(x, dy):
        return dy * (1 - np.tanh(x) ** 2)

    nnparity.check_layer((forward, backward), torch.tanh, input_shape=(3, 7))


def test_torch_function_receives_the_parameters_under_your_names():
    class LinearInOut:  # CS231n layout: W is (in, out), so no torch.nn module matches it
        def __init__(self):
            rng = np.random.default_rng(3)
            self.params = {"W": rng.standard_normal((6, 4)), "b": rng.standard_normal(4)}
            self.grads = {}

        def forward(self, x):
            self.x = x
            return x @ self.params["W"] + self.params["b"]

        def backward(self, dy):
            self.grads["W"] = self.x.T @ dy
            self.grads["b"] = dy.sum(axis=0)
            return dy @ self.params["W"].T

    report = nnparity.check_layer(LinearInOut(), lambda x, W, b: x @ W + b, input_shape=(5, 6))
    assert [c.name for c in report.results["float64"]] == ["out", "din", "grad/W", "grad/b"]


def test_your_parameters_are_restored_after_the_check():
    layer = Linear(4, 3)
    w, b = layer.params["weight"], layer.params["bias"]
    w0 = w.copy()
    nnparity.check_layer(layer, torch.nn.Linear(4, 3), input_shape=(2, 4))
    assert layer.params["weight"] is w and layer.params["bias"] is b
    assert np.array_equal(w, w0) and w.dtype == np.float64


def test_params_keep_checks_your_own_values():
    layer = scratch.Linear(3, 2)   # scratch layers start at zero: dx = dy W = 0 on both sides
    with pytest.raises(ParityError, match="DEGENERATE"):
        nnparity.check_layer(layer, torch.nn.Linear(3, 2), input_shape=(4, 3), params="keep")
    nnparity.check_layer(layer, torch.nn.Linear(3, 2), input_shape=(4, 3))   # random values: fine


def test_random_parameters_expose_a_bug_that_gamma_one_hides():
    """A LayerNorm backward that forgets gamma in dx is exact at gamma = 1 (a fresh layer)."""
    from examples import layer_norm

    def forgets_gamma(self, dy):
        self.grads["weight"] = (dy * self.xhat).sum(axis=0)
        self.grads["bias"] = dy.sum(axis=0)
        g = dy  # BUG: should be dy * weight
        return self.inv_std * (g - g.mean(-1, keepdims=True) - self.xhat * (g * self.xhat).mean(-1, keepdims=True))

    bug = _with_backward(layer_norm.LayerNorm, forgets_gamma)
    nnparity.check_layer(bug(8), torch.nn.LayerNorm(8), input_shape=(4, 8), params="keep")   # passes: hidden
    with pytest.raises(ParityError, match=r"din \(input gradient\)"):
        nnparity.check_layer(bug(8), torch.nn.LayerNorm(8), input_shape=(4, 8))


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_with_buffers_in_both_modes(train):
    report = nnparity.check_layer(BatchNorm1d(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4), train=train)
    names = [c.name for c in report.results["float32"]]
    steps = [] if train else ["buffer/running_mean after 3 training steps", "buffer/running_var after 3 training steps"]
    assert names == steps + ["out", "din", "grad/weight", "grad/bias", "buffer/running_mean", "buffer/running_var"]


def test_batchnorm_running_var_updated_with_the_biased_variance_is_caught():
    def biased(self, mu, var, n):
        m, b = self.momentum, self.buffers
        b["running_mean"] = (1 - m) * b["running_mean"] + m * mu
        b["running_var"] = (1 - m) * b["running_var"] + m * var   # BUG: torch keeps the unbiased variance

    bug = type("BatchNorm1dBug", (BatchNorm1d,), {"update_running": biased})
    with pytest.raises(ParityError, match=r"^BatchNorm1dBug float64 buffer/running_var \(BatchNorm buffer\)"):
        nnparity.check_layer(bug(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4))


class BatchNormNoAffine:
    """BatchNorm1d(affine=False): no parameters, running statistics in a ``buffers`` dict."""

    def __init__(self, n, eps=1e-5, momentum=0.1):
        self.buffers = {"running_mean": np.zeros(n), "running_var": np.ones(n)}
        self.eps, self.momentum, self.training = eps, momentum, True

    def forward(self, x):
        if self.training:
            mu, var = x.mean(axis=0), x.var(axis=0)
            m, b, n = self.momentum, self.buffers, len(x)
            b["running_mean"] = (1 - m) * b["running_mean"] + m * mu
            b["running_var"] = (1 - m) * b["running_var"] + m * var * n / (n - 1)
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.xhat

    def backward(self, dy):
        if not self.training:
            return self.inv * dy
        return self.inv * (dy - dy.mean(axis=0) - self.xhat * (dy * self.xhat).mean(axis=0))


@pytest.mark.parametrize("train", [True, False])
def test_parameter_free_layer_against_a_module_with_float32_buffers(train):
    """BatchNorm1d(affine=False) has no parameters to take the dtype from: its float32 buffers
    are cast to the input's dtype (was torch's ``mixed dtype (CPU)``), and a parameter-free
    layer's buffers dict is compared."""
    report = nnparity.check_layer(BatchNormNoAffine(4), torch.nn.BatchNorm1d(4, affine=False), input_shape=(6, 4),
                                  train=train)
    steps = [] if train else ["buffer/running_mean after 3 training steps", "buffer/running_var after 3 training steps"]
    assert [c.name for c in report.results["float64"]] == steps + ["out", "din", "buffer/running_mean",
                                                                    "buffer/running_var"]
    assert report.warnings == []


def test_parameter_free_layer_with_a_biased_running_variance_is_caught():
    class Biased(BatchNormNoAffine):
        def forward(self, x):
            out = super().forward(x)
            self.buffers["running_var"] = 0.9 + 0.1 * x.var(axis=0)   # BUG: biased variance
            return out

    with pytest.raises(ParityError, match=r"^Biased float64 buffer/running_var"):
        nnparity.check_layer(Biased(4), torch.nn.BatchNorm1d(4, affine=False), input_shape=(6, 4))


def test_buffers_as_a_method_are_refused_not_ignored():
    """The tester's silent pass: buffers() a method (the protocol reads a dict) with the biased
    running variance passed "all 4" (the buffers were never compared)."""
    class BuffersMethod(BatchNorm1d):
        def __init__(self, n):
            super().__init__(n)
            self._running = self.__dict__.pop("buffers")

        def buffers(self):
            return self._running

    with pytest.raises(ProtocolError, match=r"^BuffersMethod\.buffers is a method: .*self\.buffers = \{"):
        nnparity.check_layer(BuffersMethod(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4))


def test_torch_buffers_without_a_counterpart_are_listed_in_a_warning():
    class NoRunningStats(BatchNorm1d):
        def __init__(self, n):
            super().__init__(n)
            del self.buffers

        def update_running(self, mu, var, n):
            pass

    with pytest.warns(nnparity.training.adapters.NNParityWarning, match=r"torch\.nn\.BatchNorm1d has buffers "
                                                              r"\['running_mean', 'running_var'\]"):
        report = nnparity.check_layer(NoRunningStats(4), torch.nn.BatchNorm1d(4), input_shape=(6, 4))
    assert report.ok and report.warnings
    assert "warning: torch.nn.BatchNorm1d has buffers ['running_mean', 'running_var'] that NoRunningStats does " \
           "not expose: they were not compared" in report.message()


def test_an_empty_batch_is_refused_not_passed():
    """A (0, 4) input made every comparison an empty one, which passes: a backward returning
    zeros (or anything) passed."""
    zeros = _with_backward(ReLU, lambda self, dy: np.zeros_like(dy))
    with pytest.raises(nnparity.training.adapters.ArgumentError, match=r"input_shape \(0, 4\) has a size below 1"):
        nnparity.check_layer(zeros(), torch.nn.ReLU(), input_shape=(0, 4))
    with pytest.raises(GradcheckError):   # the same layer on a real batch fails
        nnparity.check_layer(zeros(), None, input_shape=(2, 4))


def test_without_torch_finite_differences_run_even_if_only_float32_is_asked():
    report = nnparity.check_layer(Sigmoid(), None, input_shape=(3, 4), dtypes=("float32",))
    assert list(report.results) == ["float64", "float32"]
    with pytest.raises(GradcheckError):
        nnparity.check_layer(_with_backward(Sigmoid, _sigmoid_at_preactivation)(), None, input_shape=(3, 4),
                             dtypes=("float32",))


def test_fixture_gradcheck_is_finite_differences_in_float64(nnparity):
    report = nnparity.gradcheck(BatchNorm1d(5), input_shape=(7, 5))
    assert list(report.results) == ["float64"] and report.results["float64"].ok


def test_fixture_style_example_from_the_issue(nnparity):
    nnparity.layer(Softmax(), torch.nn.Softmax(dim=1), input_shape=(4, 10))


# --- the canonical derivation bugs, in a user's layer --------------------------------------------

def _transposed_dw(self, dy):
    self.grads["weight"] = self.x.T @ dy   # BUG: missing transpose (square weight: same shape)
    self.grads["bias"] = dy.sum(axis=0)
    return dy @ self.params["weight"]


def _wrong_sign_dx(self, dy):
    self.grads["weight"] = dy.T @ self.x
    self.grads["bias"] = dy.sum(axis=0)
    return -dy @ self.params["weight"]     # BUG: wrong sign


def _bias_not_summed(self, dy):
    self.grads["weight"] = dy.T @ self.x
    self.grads["bias"] = dy.mean(axis=0)   # BUG: averaged, not summed over the batch
    return dy @ self.params["weight"]


def _relu_slope_one(self, dy):
    d = self.x.copy()                      # linear10's slip: negatives set to 0 ...
    d[d < 0] = 0
    d[d >= 0] = 1                          # BUG: ... and then everything >= 0 (all of it) to 1
    return dy * d


def _sigmoid_at_preactivation(self, dy):
    return dy * self.x * (1 - self.x)      # BUG: s'(x) = s(x)(1 - s(x)), taken at x instead of y


def _softmax_extra_factor(self, dy):
    return self.y * (dy - (dy * self.y).sum(axis=1, keepdims=True)) / len(dy)   # BUG: the loss's 1/N here


def _avgpool_missing_1_over_n(self, dy):
    return np.broadcast_to(dy[:, :, None, None], self.shape).copy()   # BUG: missing 1/(H W)


# name: (the correct layer's class and arguments, the buggy backward, torch equivalent, input, failing tensor)
BUGS = {
    "missing transpose": (Linear, (6, 6), _transposed_dw, torch.nn.Linear(6, 6), (5, 6), "grad/weight"),
    "missing 1/N": (GlobalAvgPool, (), _avgpool_missing_1_over_n, lambda x: x.mean(dim=(2, 3)), (2, 3, 4, 4), "din"),
    "wrong sign": (Linear, (6, 4), _wrong_sign_dx, torch.nn.Linear(6, 4), (5, 6), "din"),
    "bias gradient not summed over the batch": (Linear, (6, 4), _bias_not_summed, torch.nn.Linear(6, 4), (5, 6),
                                                "grad/bias"),
    "ReLU slope 1 at or below 0": (ReLU, (), _relu_slope_one, torch.nn.ReLU(), (5, 6), "din"),
    "sigmoid derivative at the pre-activation": (Sigmoid, (), _sigmoid_at_preactivation, torch.nn.Sigmoid(), (5, 6),
                                                 "din"),
    "softmax gradient off by a factor": (Softmax, (), _softmax_extra_factor, torch.nn.Softmax(dim=1), (5, 6), "din"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_bug_is_caught_against_autograd(bug):
    cls, args, backward, torch_equivalent, shape, tensor = BUGS[bug]
    nnparity.check_layer(cls(*args), torch_equivalent, input_shape=shape)   # the correct layer passes
    with pytest.raises(ParityError) as e:
        nnparity.check_layer(_with_backward(cls, backward)(*args), torch_equivalent, input_shape=shape)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{cls.__name__}Bug float64 {tensor} ("), first
    assert "scratch" in first and "reference" in first and "margin" in first


@pytest.mark.parametrize("bug", list(BUGS))
def test_bug_is_caught_by_finite_differences_without_torch(bug):
    cls, args, backward, _, shape, tensor = BUGS[bug]
    nnparity.check_layer(cls(*args), None, input_shape=shape)
    with pytest.raises(GradcheckError) as e:
        nnparity.check_layer(_with_backward(cls, backward)(*args), None, input_shape=shape)
    assert f": {tensor} at (" in str(e.value).splitlines()[0] and "(wrong)" in str(e.value)


def test_softmax_cross_entropy_double_counted_is_caught_in_a_loss():
    def doubled(z, target):
        value, dz = softmax_ce(z, target)
        return value, 2 * dz               # BUG: gradient double-counted

    nnparity.check_loss(softmax_ce, torch.nn.CrossEntropyLoss(), input_shape=(6, 5))
    nnparity.check_loss(softmax_ce, None, input_shape=(6, 5))
    with pytest.raises(ParityError, match=r"^softmax_ce|^doubled float64 din \(input gradient\)"):
        nnparity.check_loss(doubled, torch.nn.CrossEntropyLoss(), input_shape=(6, 5))
    with pytest.raises(GradcheckError, match=r"din at .*\(wrong\)"):
        nnparity.check_loss(doubled, None, input_shape=(6, 5))


def test_loss_missing_1_over_n_is_caught():
    def no_mean(z, target):
        value, dz = softmax_ce(z, target)
        return value, dz * len(target)     # BUG: the mean's 1/N forgotten in the gradient

    with pytest.raises(ParityError, match=r"din \(input gradient\)"):
        nnparity.check_loss(no_mean, torch.nn.CrossEntropyLoss(), input_shape=(6, 5))


# --- misuse: clear errors ----------------------------------------------------------------------

def test_mismatched_parameter_names_list_both_sets():
    class Named(Linear):
        def __init__(self):
            super().__init__(4, 3)
            self.params = {"W": self.params["weight"], "b": self.params["bias"]}

    with pytest.raises(ParameterMismatch) as e:
        nnparity.check_layer(Named(), torch.nn.Linear(4, 3), input_shape=(2, 4))
    msg = str(e.value)
    assert "yours: ['W', 'b']" in msg and "torch: ['weight', 'bias']" in msg
    assert "only yours: ['W', 'b']; only torch: ['weight', 'bias']" in msg


def test_mismatched_parameter_shapes_list_both():
    layer = Linear(4, 3)
    layer.params["weight"] = layer.params["weight"].T.copy()   # (in, out): not torch's layout
    with pytest.raises(ParameterMismatch, match=r"weight: yours \(4, 3\), torch \(3, 4\)"):
        nnparity.check_layer(layer, torch.nn.Linear(4, 3), input_shape=(2, 4))


def test_backward_returning_the_wrong_shape():
    def sums_over_batch(self, dy):
        self.grads["weight"] = dy.T @ self.x
        self.grads["bias"] = dy.sum(axis=0)
        return (dy @ self.params["weight"]).sum(axis=0)   # BUG: summed over the batch

    with pytest.raises(ParityError, match=r"returned an array of shape \(4,\) for an input of shape \(2, 4\)"):
        nnparity.check_layer(_with_backward(Linear, sums_over_batch)(4, 3), torch.nn.Linear(4, 3),
                             input_shape=(2, 4))


def test_backward_returning_none():
    with pytest.raises(ParityError, match="backward returned None: it must return dL/dx"):
        nnparity.check_layer(_with_backward(ReLU, lambda self, dy: None)(), torch.nn.ReLU(), input_shape=(2, 4))


def test_parameter_gradient_of_the_wrong_shape():
    def per_sample_bias(self, dy):
        self.grads["weight"] = dy.T @ self.x
        self.grads["bias"] = dy                # BUG: per-sample, not summed
        return dy @ self.params["weight"]

    with pytest.raises(ProtocolError, match=r"gradient of parameter 'bias' has shape \(2, 3\), the parameter has "
                                            r"shape \(3,\)"):
        nnparity.check_layer(_with_backward(Linear, per_sample_bias)(4, 3), torch.nn.Linear(4, 3), input_shape=(2, 4))


def test_missing_parameter_gradient():
    def no_bias(self, dy):
        self.grads["weight"] = dy.T @ self.x
        return dy @ self.params["weight"]

    with pytest.raises(ProtocolError, match=r"stored no gradient for \['bias'\]"):
        nnparity.check_layer(_with_backward(Linear, no_bias)(4, 3), torch.nn.Linear(4, 3), input_shape=(2, 4))


def test_forward_that_mutates_its_input():
    class InPlaceReLU(ReLU):
        def forward(self, x):
            self.x = x.copy()
            np.maximum(x, 0, out=x)   # BUG: overwrites the caller's array
            return x

    with pytest.raises(ParityError, match=r"input \(forward activation\): the layer modified its input x in place"):
        nnparity.check_layer(InPlaceReLU(), torch.nn.ReLU(), input_shape=(3, 4))
    with pytest.raises(GradcheckError, match=r"InPlaceReLU: the layer modified its input x in place"):
        nnparity.check_layer(InPlaceReLU(), None, input_shape=(3, 4))


def test_nan_in_your_output():
    class NoEpsLayerNorm:
        """Divides by the standard deviation without eps (and silences NumPy's warning)."""

        def forward(self, x):
            with np.errstate(invalid="ignore", divide="ignore"):
                self.y = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
            return self.y

        def backward(self, dy):
            return dy

    x = np.random.default_rng(0).standard_normal((3, 4))
    x[1] = 2.0   # a constant row: 0 / 0
    with pytest.raises(ParityError, match=r"NoEpsLayerNorm.forward returned nan at \(1, 0\) and 3 more non-finite "
                                          r"values for a finite input"):
        nnparity.check_layer(NoEpsLayerNorm(), lambda t: torch.nn.functional.layer_norm(t, (4,)), x=x)


def test_float32_promoted_to_float64_is_explained():
    class PromotingLeakyReLU:
        def forward(self, x):
            self.x = x
            return np.where(x > 0, x, 0.1 * x)

        def backward(self, dy):
            return dy * np.where(self.x > 0, 1.0, 0.1)   # a float64 array: promotes a float32 dy

    with pytest.raises(ParityError) as e:
        nnparity.check_layer(PromotingLeakyReLU(), torch.nn.LeakyReLU(0.1), input_shape=(3, 4))
    msg = str(e.value)
    assert msg.startswith("PromotingLeakyReLU float32 din (input gradient): dtype mismatch: scratch float64, "
                          "reference float32")
    assert "promotes it to float64" in msg and "float64: all 2 pass" in msg


def test_torch_function_that_does_not_take_your_parameters():
    with pytest.raises(ParameterMismatch, match=r"does not accept the parameter\(s\) \['weight'\]"):
        nnparity.check_layer(Linear(4, 3), lambda x, w, bias: x @ w.T + bias, input_shape=(2, 4))


def test_not_a_layer():
    with pytest.raises(ProtocolError, match="has no backward method"):
        nnparity.check_layer(torch.nn.ReLU(), torch.nn.ReLU(), input_shape=(2, 3))  # torch's own: no backward(dy)
    with pytest.raises(ValueError, match="give input_shape"):
        nnparity.check_layer(ReLU(), torch.nn.ReLU())
    with pytest.raises(ValueError, match="no parity tolerance for dtype 'float16'"):
        nnparity.check_layer(ReLU(), torch.nn.ReLU(), input_shape=(2, 3), dtypes=("float16",))


# --- training steps of a user's network ----------------------------------------------------------

class TwoLayerNet:
    """A learner's MLP with its parameters in a dict, named like the torch mirror's."""

    def __init__(self, n_in=12, hidden=16, n_out=5, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {"fc1.weight": rng.standard_normal((hidden, n_in)) / np.sqrt(n_in),
                       "fc1.bias": rng.standard_normal(hidden) * 0.1,
                       "fc2.weight": rng.standard_normal((n_out, hidden)) / np.sqrt(hidden),
                       "fc2.bias": np.zeros(n_out)}
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}
        self.grads = {}

    def forward(self, x):
        p = self.params
        self.x = x
        self.h = x @ p["fc1.weight"].T + p["fc1.bias"]
        self.a = np.maximum(self.h, 0)
        return self.a @ p["fc2.weight"].T + p["fc2.bias"]

    def backward(self, dout):
        p, g = self.params, self.grads
        g["fc2.weight"] = dout.T @ self.a
        g["fc2.bias"] = dout.sum(axis=0)
        dh = (dout @ p["fc2.weight"]) * (self.h > 0)
        g["fc1.weight"] = dh.T @ self.x
        g["fc1.bias"] = dh.sum(axis=0)


def sgd(lr):
    def update(params, grads):
        for k in params:
            params[k] -= lr * grads[k]
    return update


def torch_mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(12, 16), relu=torch.nn.ReLU(),
                                           fc2=torch.nn.Linear(16, 5)))


def batches(n=4, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 12)).astype(dtype), rng.integers(0, 5, 8)) for _ in range(n)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_steps_passes_for_a_correct_network(dtype):
    trace = nnparity.check_steps(TwoLayerNet(dtype=dtype), softmax_ce, sgd(0.5), torch_mirror(),
                                 torch.nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.5),
                                 batches(dtype=dtype))
    assert trace.ok and len(trace.steps) == 4 and trace.dtype == dtype
    names = [c.name for c in trace.steps[0]]
    assert names[:3] == ["out/output", "loss", "dout/output"]
    assert names[3:7] == ["grad/fc2.bias", "grad/fc2.weight", "grad/fc1.bias", "grad/fc1.weight"]  # backward order
    assert names[7:] == ["param/fc1.weight", "param/fc1.bias", "param/fc2.weight", "param/fc2.bias"]


def test_check_steps_names_the_first_divergence_of_an_update_rule_applying_lr_twice():
    def lr_twice(params, grads):
        for k in params:
            params[k] -= 2 * 0.5 * grads[k]   # BUG: lr applied twice

    with pytest.raises(ParityError) as e:
        nnparity.check_steps(TwoLayerNet(), softmax_ce, lr_twice, torch_mirror(), torch.nn.CrossEntropyLoss(),
                             lambda p: torch.optim.SGD(p, lr=0.5), batches())
    assert str(e.value).startswith("TwoLayerNet float64 step 1: param/fc1.weight (updated parameter)")


def test_check_steps_names_the_first_divergence_of_a_wrong_backward():
    class WrongBias(TwoLayerNet):
        def backward(self, dout):
            super().backward(dout)
            self.grads["fc1.bias"] = self.grads["fc1.bias"] / len(dout)   # BUG: averaged

    trace = nnparity.check_steps(WrongBias(), softmax_ce, sgd(0.5), torch_mirror(), torch.nn.CrossEntropyLoss(),
                                 lambda p: torch.optim.SGD(p, lr=0.5), batches(), raise_on_failure=False)
    first = trace.first_failure
    assert (first.step, first.name) == (1, "grad/fc1.bias")


def test_check_steps_with_a_scratch_network_and_momentum_compares_the_optimizer_state():
    net = scratch.Sequential(OrderedDict(fc1=scratch.Linear(12, 16), relu=scratch.ReLU(), fc2=scratch.Linear(16, 5)))
    rng = np.random.default_rng(0)
    for _, p in net.named_parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    trace = nnparity.check_steps(net, scratch.CrossEntropyLoss("mean"), scratch.SGD(net.named_parameters(), 0.1, 0.9),
                                 torch_mirror(), torch.nn.CrossEntropyLoss(),
                                 lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), batches(3))
    assert "state/fc1.weight.momentum_buffer" in {c.name for c in trace.steps[-1]}


def test_check_steps_with_mismatched_names():
    with pytest.raises(ParameterMismatch, match=r"only torch: \['0.weight', '0.bias'\]"):
        nnparity.check_steps(TwoLayerNet(n_out=16), softmax_ce, sgd(0.1),
                             torch.nn.Sequential(torch.nn.Linear(12, 16)), torch.nn.CrossEntropyLoss(),
                             lambda p: torch.optim.SGD(p, lr=0.1), batches())


# --- the pytest plugin ---------------------------------------------------------------------------

USER_TEST = """
    import numpy as np, torch

    class MySoftmax:
        def forward(self, x):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            self.y = e / e.sum(axis=1, keepdims=True)
            return self.y

        def backward(self, dy):
            return self.y * (dy - (dy * self.y).sum(axis=1, keepdims=True))

    class MySoftmaxDiagonalOnly(MySoftmax):
        def backward(self, dy):
            return dy * self.y * (1 - self.y)

    def test_my_softmax(nnparity):
        nnparity.layer(MySoftmax(), torch.nn.Softmax(dim=1), input_shape=(4, 10))

    def test_my_wrong_softmax(nnparity):
        nnparity.layer(MySoftmaxDiagonalOnly(), torch.nn.Softmax(dim=1), input_shape=(4, 10))

    def test_seed(nnparity, pytestconfig):
        assert nnparity.seed == (pytestconfig.getoption("nnparity_seed") or 0)
"""


def test_plugin_fixture_in_process(pytester):
    pytester.makepyfile(test_user=textwrap.dedent(USER_TEST))
    result = pytester.runpytest("-p", "nnparity.api.plugin", "--nnparity-seed", "3")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ParityError: MySoftmaxDiagonalOnly float64 din (input gradient): max abs*"])
    assert "nnparity/diagnosis/layercheck.py" not in result.stdout.str()   # the message, not the harness's frames


def test_plugin_fixture_reports_a_misuse_in_one_line(pytester):
    pytester.makepyfile(test_user=textwrap.dedent("""
        import torch

        class Identity:
            def forward(self, x):
                return x

            def backward(self, dy):
                return dy

        def test_shape_not_a_tuple(nnparity):
            nnparity.layer(Identity(), torch.nn.Identity(), input_shape=5)
    """))
    result = pytester.runpytest("-p", "nnparity.api.plugin")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ArgumentError: input_shape must be a tuple of ints such as (8, 16)*got 5"])
    assert "nnparity/api/byod.py" not in result.stdout.str()


def test_plugin_entry_point_and_local_registration_together(pytester, monkeypatch):
    """Installed (pytest11 entry point) AND enabled locally (-p, and pytest_plugins in a conftest):
    registered once, the fixture works."""
    site = pytester.mkdir("site")
    dist = site / "fake_nnparity_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-nnparity-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nnnparity.api.plugin = nnparity.api.plugin\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), repo]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makeconftest('pytest_plugins = ["nnparity.api.plugin"]')
    pytester.makepyfile(test_user=textwrap.dedent(USER_TEST))
    result = pytester.runpytest_subprocess("-p", "nnparity.api.plugin", "-k", "my_softmax and not wrong")
    result.assert_outcomes(passed=1)
    assert "already registered" not in result.stdout.str() + result.stderr.str()
