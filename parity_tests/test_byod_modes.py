"""Modes and shapes of user layers: the dropout mask protocol and the statistical check of masks
(issue 14 item 4). The layers here are learner-style, written for these tests."""

import math

import numpy as np
import pytest
import torch

import nnparity
from nnparity.training.masks import ALPHA, binomial_interval, binomial_rejects, check_mask_statistics, find_mask


class Dropout:
    """A correct inverted dropout (torch's p = drop probability), mask stored as self.mask."""

    def __init__(self, p, seed=0):
        self.p, self.training, self.rng = p, True, np.random.default_rng(seed)

    def forward(self, x):
        if not self.training:
            return x
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask / (1 - self.p)

    def backward(self, dy):
        return dy * self.mask / (1 - self.p) if self.training else dy


class BatchMaskDropout(Dropout):
    """The slip: one mask for the whole batch (a mask of the features' shape, broadcast)."""

    def forward(self, x):
        self.mask = np.broadcast_to(self.rng.random(x.shape[1:]) >= self.p, x.shape)
        return x * self.mask / (1 - self.p)


class UnscaledDropout(Dropout):
    """The slip: the mask without the 1/(1-p) scale on the forward (backward scales)."""

    def forward(self, x):
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask


def dropout_forward(x, dropout_param):
    """CS231n style; the slip of the CS231n handout read with torch's p: p kept as the keep probability,
    and one mask (of the features' shape) for the whole batch."""
    p = dropout_param["p"]
    mask = (np.random.rand(*x.shape[1:]) < p) / p
    out = x * mask
    return out, (dropout_param, mask)


def dropout_backward(dout, cache):
    _, mask = cache
    return dout * mask


def dropout_forward_ok(x, dropout_param):
    p = dropout_param["p"]
    mask = ((np.random.rand(*x.shape) >= p) / (1 - p)).astype(x.dtype)
    return x * mask, (dropout_param, mask)


def test_a_correct_dropout_passes_every_mask_test():
    r = check_mask_statistics(Dropout(0.3), p=0.3, input_shape=(64, 32))
    assert r.ok and [n for n, _, _ in r.tests] == ["scale", "keep rate", "independence across samples",
                                                   "independence across features", "independence across draws"]


def test_a_correct_cs231n_pair_passes():
    assert check_mask_statistics(nnparity.pair(dropout_forward_ok, dropout_backward, dropout_param={"p": 0.3}),
                                 p=0.3).ok


def test_the_cs231n_slip_is_caught_and_named():
    """One mask for the whole batch and p read as the keep probability: both named."""
    lay = nnparity.pair(dropout_forward, dropout_backward, dropout_param={"p": 0.3})
    with pytest.raises(AssertionError) as e:
        check_mask_statistics(lay, p=0.3)
    msg = str(e.value)
    assert "FAIL keep rate" in msg and "that is p, not 1-p" in msg
    assert "FAIL independence across samples" in msg and "one mask shared by the whole batch" in msg
    assert "FAIL scale" in msg and "not 1/(1-p)" in msg
    assert "ok   independence across features" in msg


def test_a_batch_shared_mask_is_caught_with_the_right_scale():
    r = check_mask_statistics(BatchMaskDropout(0.3), p=0.3, raise_on_failure=False)
    verdict = {n: ok for n, ok, _ in r.tests}
    # the keep-rate count assumes independent positions, so it may fail too; scale and features hold
    assert not verdict["independence across samples"] and verdict["scale"] and verdict["independence across features"]
    assert "the same everywhere: one mask shared by the whole batch" in r.message()


def test_a_missing_scale_is_caught():
    r = check_mask_statistics(UnscaledDropout(0.3), p=0.3, raise_on_failure=False)
    assert [n for n, ok, _ in r.tests if not ok] == ["scale"]


def test_the_same_mask_on_every_draw_is_caught():
    class Reseeded(Dropout):
        def forward(self, x):
            self.rng = np.random.default_rng(0)
            return super().forward(x)
    r = check_mask_statistics(Reseeded(0.3), p=0.3, raise_on_failure=False)
    verdict = {n: ok for n, ok, _ in r.tests}
    assert not verdict["independence across draws"] and verdict["scale"] and "a generator re-seeded?" in r.message()


def test_false_alarms_over_many_seeds():
    """A correct layer over 50 seeds: never rejected (the bound says P <= 4e-9 per run)."""
    fails = [s for s in range(50) if not check_mask_statistics(Dropout(0.2, seed=s), p=0.2, seed=s,
                                                               input_shape=(16, 8), draws=8,
                                                               raise_on_failure=False).ok]
    assert fails == []


def test_the_bound_is_the_chernoff_bound():
    """The accepted interval's tails have exact binomial probability below alpha / 2 each."""
    def pmf(k, n, r):
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(r) + (n - k) * math.log(1 - r))
    n, r = 2000, 0.7
    lo, hi = binomial_interval(n, r, 1e-6)
    below = sum(pmf(k, n, r) for k in range(0, math.ceil(lo * n)))       # P(rejected low)
    above = sum(pmf(k, n, r) for k in range(math.floor(hi * n) + 1, n + 1))
    assert 0 < below <= 0.5e-6 and 0 < above <= 0.5e-6
    assert not binomial_rejects(round(n * r), n, r) and binomial_rejects(round(n * 0.3), n, r)


def test_mask_protocol_gives_torch_your_mask():
    """check_layer with torch.nn.Dropout in training mode: torch applies your mask; a backward
    that forgets the scale is found against autograd on that mask."""
    r = nnparity.check_layer(Dropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))
    assert r.ok and "with your mask" in r.context

    class NoScaleBackward(Dropout):
        def backward(self, dy):
            return dy * self.mask
    with pytest.raises(AssertionError, match="din"):
        nnparity.check_layer(NoScaleBackward(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))


def test_mask_protocol_reads_a_cs231n_cache():
    lay = nnparity.pair(dropout_forward_ok, dropout_backward, dropout_param={"p": 0.25, "mode": "train"})
    assert nnparity.check_layer(lay, torch.nn.Dropout(0.25), input_shape=(8, 16)).ok


def test_no_mask_is_one_clear_line():
    class Hidden(Dropout):
        def forward(self, x):
            m = self.rng.random(x.shape) >= self.p
            self._keep = m
            return x * m / (1 - self.p)

        def backward(self, dy):
            return dy * self._keep / (1 - self.p)
    with pytest.raises(nnparity.training.adapters.ProtocolError, match="store it as self.mask"):
        nnparity.check_layer(Hidden(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))


def test_find_mask_names():
    x = np.ones((2, 3))
    o = type("O", (), {})()
    o._cache = {"dropout_mask": np.ones((2, 3))}
    assert find_mask(o, (2, 3))[1] == "_cache['dropout_mask']"
    ml = type("O", (), {})()   # numpy-ml's wrapper appends one mask per forward
    ml._wrapper_derived_variables = {"dropout_mask": [np.zeros((2, 3)), np.ones((2, 3))]}
    mask, where = find_mask(ml, (2, 3))
    assert where == "_wrapper_derived_variables['dropout_mask']" and mask.all()
    o2 = type("O", (), {})()
    o2.cache = (x, np.zeros((2, 3)))
    assert find_mask(o2, (2, 3), x)[1] == "cache"


@pytest.mark.parametrize("bad", [0, 1, 1.5, "0.3", True])
def test_bad_p(bad):
    with pytest.raises(nnparity.training.adapters.ArgumentError, match="drop probability"):
        check_mask_statistics(Dropout(0.3), p=bad)


def test_a_mask_of_the_features_shape_is_named():
    class FeatureMask(Dropout):
        def forward(self, x):
            self.mask = self.rng.random(x.shape[1:]) >= self.p
            return x * self.mask / (1 - self.p)
    with pytest.raises(nnparity.training.adapters.ProtocolError, match="one mask for the whole batch"):
        nnparity.check_layer(FeatureMask(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))


def test_eval_mode_dropout_is_the_identity_on_both_sides():
    assert nnparity.check_layer(Dropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16), train=False).ok


# --- train and eval modes -------------------------------------------------------------------

def batchnorm_forward(x, gamma, beta, bn_param):
    """CS231n style, with torch's unbiased running variance; test mode keeps no cache."""
    mode, eps, momentum = bn_param["mode"], bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    n, d = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(d, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.ones(d, dtype=x.dtype))
    if mode == "train":
        mu, var = x.mean(axis=0), x.var(axis=0)
        xhat = (x - mu) / np.sqrt(var + eps)
        out, cache = gamma * xhat + beta, (xhat, gamma, var, eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var * (n / (n - 1))
    else:
        out, cache = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta, None
    bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return out, cache


def batchnorm_backward(dout, cache):
    xhat, gamma, var, eps = cache            # test mode: cache is None, as in CS231n (no eval backward)
    n = dout.shape[0]
    dxhat = dout * gamma
    dx = (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0)) / (n * np.sqrt(var + eps))
    return dx, (dout * xhat).sum(0), dout.sum(0)


def batchnorm_forward_batch_stats_in_eval(x, gamma, beta, bn_param):
    """The slip: test mode normalises with the batch's statistics."""
    if bn_param["mode"] == "train":
        return batchnorm_forward(x, gamma, beta, bn_param)
    return batchnorm_forward(x, gamma, beta, dict(bn_param, mode="train"))


def batchnorm_forward_momentum_swapped(x, gamma, beta, bn_param):
    """The slip: running = (1 - momentum) running + momentum batch (torch's momentum read as CS231n's)."""
    m = bn_param.get("momentum", 0.9)
    bn_param["momentum"] = 1 - m
    try:
        return batchnorm_forward(x, gamma, beta, bn_param)
    finally:
        bn_param["momentum"] = m


def test_cs231n_batchnorm_in_both_modes_eval_forward_only():
    bn = nnparity.pair(batchnorm_forward, batchnorm_backward)
    with pytest.warns(nnparity.training.adapters.NNParityWarning, match="no backward in evaluation mode"):
        r = nnparity.check_layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), modes=("train", "eval"))
    assert r.ok and list(r.results) == ["float64 train", "float32 train", "float64 eval", "float32 eval"]
    assert [c.name for c in r.results["float64 eval"]] == [
        "buffer/running_mean after 3 training steps", "buffer/running_var after 3 training steps",
        "out", "buffer/running_mean", "buffer/running_var"]
    assert [c.name for c in r.results["float64 train"]][:2] == ["out", "din"]


def test_eval_with_batch_statistics_is_caught_in_eval_only():
    bn = nnparity.pair(batchnorm_forward_batch_stats_in_eval, batchnorm_backward)
    nnparity.check_layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), mode="train")
    with pytest.raises(AssertionError, match=r"float64 eval out \(forward activation\)"):
        nnparity.check_layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), modes=("train", "eval"))


def test_a_swapped_momentum_is_caught_after_training_steps():
    """One training forward from running_mean 0 hides nothing here either, but the steps make it plain."""
    bn = nnparity.pair(batchnorm_forward_momentum_swapped, batchnorm_backward)
    with pytest.warns(nnparity.training.adapters.NNParityWarning, match="no backward in evaluation mode"), \
            pytest.raises(AssertionError, match="buffer/running_mean after 3 training steps"):
        nnparity.check_layer(bn, torch.nn.BatchNorm1d(4), input_shape=(6, 4), mode="eval")


class FrozenBatchNorm:
    """numpy-ml style: parameters dict, freeze()/unfreeze() and trainable; frozen uses running
    statistics and its backward raises."""

    def __init__(self, d, momentum=0.9, eps=1e-5):
        self.parameters = {"scaler": np.ones(d), "intercept": np.zeros(d),
                           "running_mean": np.zeros(d), "running_var": np.ones(d)}
        self.gradients = {"scaler": np.zeros(d), "intercept": np.zeros(d)}
        self.momentum, self.epsilon, self.trainable = momentum, eps, True

    def freeze(self):
        self.trainable = False

    def unfreeze(self):
        self.trainable = True

    def forward(self, x):
        p = self.parameters
        if not self.trainable:
            return p["scaler"] * (x - p["running_mean"]) / np.sqrt(p["running_var"] + self.epsilon) + p["intercept"]
        n = x.shape[0]
        mu, var = x.mean(0), x.var(0)
        p["running_mean"] = self.momentum * p["running_mean"] + (1 - self.momentum) * mu
        p["running_var"] = self.momentum * p["running_var"] + (1 - self.momentum) * var * (n / (n - 1))
        self.x, self.mu, self.var = x, mu, var
        return p["scaler"] * (x - mu) / np.sqrt(var + self.epsilon) + p["intercept"]

    def backward(self, dy):
        if not self.trainable:
            raise RuntimeError("Layer is frozen")
        n, p = dy.shape[0], self.parameters
        xhat = (self.x - self.mu) / np.sqrt(self.var + self.epsilon)
        self.gradients["scaler"] = (dy * xhat).sum(0)
        self.gradients["intercept"] = dy.sum(0)
        dxhat = dy * p["scaler"]
        return (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0)) / (n * np.sqrt(self.var + self.epsilon))


def test_numpy_ml_frozen_layer_is_eval():
    lay = FrozenBatchNorm(4)
    with pytest.warns(nnparity.training.adapters.NNParityWarning, match="Layer is frozen"):
        r = nnparity.check_layer(lay, torch.nn.BatchNorm1d(4), input_shape=(6, 4), modes=("train", "eval"))
    assert r.ok and "out" in [c.name for c in r.results["float64 eval"]]
    assert lay.trainable   # the check puts your layer back in the mode it found it in

@pytest.mark.parametrize("kwargs, match", [({"mode": "test"}, "mode must be 'train' or 'eval'"),
                                           ({"mode": "eval", "modes": ("train",)}, "not both"),
                                           ({"modes": "eval"}, "modes must be a tuple"),
                                           ({"modes": ("train", "train")}, "modes must be a tuple"),
                                           ({"train": False, "mode": "train"}, "contradict")])
def test_bad_modes(kwargs, match):
    with pytest.raises(nnparity.training.adapters.ArgumentError, match=match):
        nnparity.check_layer(Dropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16), **kwargs)


# --- extra forward arguments ------------------------------------------------------------------

class ArgDropout(Dropout):
    """forward(x, training): the mode as an argument, not an attribute."""

    def __init__(self, p, seed=0):
        super().__init__(p, seed)
        del self.training

    def forward(self, x, training):
        self.on = training
        if not training:
            return x
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask / (1 - self.p)

    def backward(self, dy):
        return dy * self.mask / (1 - self.p) if self.on else dy


def test_a_training_argument_is_given_the_mode():
    r = nnparity.check_layer(ArgDropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16), modes=("train", "eval"))
    assert r.ok and "forward's 'training' argument is given the mode" in r.context
    assert check_mask_statistics(ArgDropout(0.3), p=0.3).ok


def test_forward_kwargs_reach_forward():
    class Scaled:
        def forward(self, x, retain_derived=False, scale=1.0):
            self.s = scale
            return x * scale

        def backward(self, dy):
            return dy * self.s
    nnparity.check_layer(Scaled(), lambda x: 2.0 * x, input_shape=(3, 4), forward_kwargs={"scale": 2.0})
    with pytest.raises(AssertionError, match="out"):
        nnparity.check_layer(Scaled(), lambda x: 2.0 * x, input_shape=(3, 4))
    with pytest.raises(nnparity.training.adapters.ArgumentError, match="forward_kwargs must be a dict"):
        nnparity.check_layer(Scaled(), lambda x: 2.0 * x, input_shape=(3, 4), forward_kwargs=["scale"])


def test_forward_kwargs_a_forward_does_not_take_is_one_line():
    with pytest.raises(nnparity.training.adapters.CallError, match="unexpected keyword argument 'scale'"):
        nnparity.check_layer(Dropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16), forward_kwargs={"scale": 2})


def test_the_fixture_checks_masks(nnparity):
    nnparity.masks(Dropout(0.3), 0.3)
    with pytest.raises(AssertionError, match="one mask shared by the whole batch"):
        nnparity.masks(BatchMaskDropout(0.3), 0.3)


# --- several inputs and outputs ---------------------------------------------------------------

class Bilinear:
    """y = a W b^T + bias per sample (torch.nn.Bilinear with one output feature per k)."""

    def __init__(self, n1, n2, k, bug=False):
        rng = np.random.default_rng(0)
        self.weight, self.bias = rng.standard_normal((k, n1, n2)), np.zeros(k)
        self.dweight, self.dbias, self.bug = np.zeros_like(self.weight), np.zeros_like(self.bias), bug

    def forward(self, a, b):
        self.a, self.b = a, b
        return np.einsum("ni,kij,nj->nk", a, self.weight, b) + self.bias

    def backward(self, dy):
        self.dweight = np.einsum("nk,ni,nj->kij", dy, self.a, self.b)
        self.dbias = dy.sum(0)
        da = np.einsum("nk,kij,nj->ni", dy, self.weight, self.b)
        db = np.einsum("nk,kij,ni->nj", dy, self.weight, self.a)
        return (da, db * 2) if self.bug else (da, db)


def test_two_inputs_against_torch_bilinear():
    r = nnparity.check_layer(Bilinear(3, 4, 2), torch.nn.Bilinear(3, 4, 2), input_shape=[(5, 3), (5, 4)])
    assert r.ok and "inputs packed as columns: x0 (5, 3) [0:3), x1 (5, 4) [3:7)" in r.context
    with pytest.raises(AssertionError, match="din") as e:
        nnparity.check_layer(Bilinear(3, 4, 2, bug=True), torch.nn.Bilinear(3, 4, 2), input_shape=[(5, 3), (5, 4)])
    assert "x1 (5, 4) [3:7)" in str(e.value)


class SplitHalves:
    """Two outputs: twice the first half of the features, tanh of the second; backward(dy1, dy2)."""

    def __init__(self, bug=False):
        self.bug = bug

    def forward(self, x):
        h = x.shape[1] // 2
        self.t = np.tanh(x[:, h:])
        return x[:, :h] * 2.0, self.t

    def backward(self, dy1, dy2):
        return np.concatenate([dy1 * 2.0, dy2 if self.bug else dy2 * (1 - self.t ** 2)], axis=1)


def test_two_outputs_against_a_torch_function_and_finite_differences():
    def torch_split(x):
        h = x.shape[1] // 2
        return x[:, :h] * 2.0, torch.tanh(x[:, h:])
    x = [np.linspace(-1, 1, 24).reshape(4, 6)]
    r = nnparity.check_layer(SplitHalves(), torch_split, x=x)
    assert r.ok and "outputs packed as columns: y0 (4, 3) [0:3), y1 (4, 3) [3:6)" in r.context
    assert nnparity.check_layer(SplitHalves(), None, x=x).ok
    with pytest.raises(AssertionError, match="din"):
        nnparity.check_layer(SplitHalves(bug=True), torch_split, x=x)
    with pytest.raises(AssertionError):
        nnparity.check_layer(SplitHalves(bug=True), None, x=x)


def test_several_inputs_need_one_batch_size():
    with pytest.raises(nnparity.training.adapters.ArgumentError, match="same batch size"):
        nnparity.check_layer(Bilinear(3, 4, 2), torch.nn.Bilinear(3, 4, 2), input_shape=[(5, 3), (6, 4)])


def test_backward_must_return_one_gradient_per_input():
    class OneGrad(Bilinear):
        def backward(self, dy):
            return super().backward(dy)[0]
    with pytest.raises(nnparity.training.adapters.ProtocolError, match="one gradient per input"):
        nnparity.check_layer(OneGrad(3, 4, 2), torch.nn.Bilinear(3, 4, 2), input_shape=[(5, 3), (5, 4)])
