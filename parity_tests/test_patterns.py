"""nnparity.diagnosis.patterns: every pattern on constructed inputs (exact), none on unrelated ones, and
the patterns in the user API's messages (learner-style layers written here) and in
``nnparity check``'s first divergence."""

import numpy as np
import pytest
import torch

import nnparity
from nnparity.core.parity import ParityError, TOLERANCES
from nnparity.diagnosis.patterns import detect

T64 = TOLERANCES["float64"]
T32 = TOLERANCES["float32"]
RNG = np.random.default_rng(0)
B = RNG.standard_normal((8, 5))
SQ = RNG.standard_normal((5, 5))
W = RNG.standard_normal((3, 2, 3, 3))
X = RNG.standard_normal((2, 2, 5, 5))


@pytest.mark.parametrize("factor, words", [
    (8, "N = 8 x reference"), (1 / 8, "1/N = 1/8"), (8 / 7, "N/(N-1) = 8/7"), (7 / 8, "(N-1)/N = 7/8"),
    (2, "scratch = 2 x"), (0.5, "scratch = 1/2 x"), (-1, "the sign is flipped")])
def test_a_named_factor(factor, words):
    assert words in detect(factor * B, B, T64, counts={"N": 8})


def test_a_factor_in_float32_within_its_tolerance():
    b = B.astype(np.float32)
    assert "1/N = 1/8" in detect((b / np.float32(8)), b, T32, counts={"N": 8})


def test_a_factor_with_a_constant_offset_is_a_running_average():
    rv_torch = 0.9 + 0.1 * B ** 2
    rv_mine = 0.9 + 0.1 * B ** 2 * 7 / 8
    assert "(N-1)/N = 7/8 x reference + 0.1125 exactly (a constant offset" in detect(rv_mine, rv_torch, T64,
                                                                                     counts={"N": 8})


def test_an_unnamed_exact_factor_and_no_pattern_for_noise():
    assert "scratch = 7/2 x reference exactly (a constant factor)" in detect(3.5 * B, B, T64)
    assert detect(B + 1e-3 * RNG.standard_normal(B.shape), B, T64, counts={"N": 8}) is None
    assert detect(B + 1e-12, B, T64) is None   # within tolerance: no mismatch, no pattern


def test_transposes():
    assert "scratch = the reference transposed" in detect(SQ.T, SQ, T64)          # same shape
    assert "scratch = the reference transposed" in detect(B.T, B, T64)            # (5, 8) vs (8, 5)
    assert "axes permuted (1, 0, 2, 3)" in detect(W.transpose(1, 0, 2, 3), W.transpose(1, 0, 2, 3).transpose(
        1, 0, 2, 3), T64)
    assert "then reshaped to (8, 5): a reshape where a transpose" in detect(B.T.reshape(8, 5), B, T64)


def test_a_flipped_kernel():
    assert "rotated 180 degrees" in detect(W[:, :, ::-1, ::-1], W, T64)
    assert "flipped along axis 3" in detect(W[:, :, :, ::-1], W, T64)


def test_a_shift():
    s = np.zeros_like(X)
    s[..., 1:] = X[..., :-1]
    assert "shifted by +1 along axis 3 (scratch[:, :, :, 1:] = reference[:, :, :, :-1])" in detect(s, X, T64)


def test_crops():
    assert "empty along axis 2, 3" in detect(np.zeros((2, 2, 0, 0)), X, T64)
    assert "cropped to [:, :, 1:4, 1:4]" in detect(X[:, :, 1:-1, 1:-1], X, T64)
    assert "scratch[:, :, 1:6, 1:6] = the reference" in detect(np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1))), X, T64)
    framed = X.copy()
    framed[..., 0, :] = framed[..., -1, :] = framed[..., :, 0] = framed[..., :, -1] = 0
    assert "wrong on a border 1 wide along axis 2, 3 (zero there)" in detect(framed, X, T64)


def test_a_border_pattern_needs_every_side_wrong():
    one_side = X.copy()
    one_side[..., 0, :] = 0   # only the top row: a frame it is not
    assert "border" not in (detect(one_side, X, T64) or "")


def test_a_sum_over_the_wrong_axis():
    g = RNG.standard_normal((5, 5))
    assert "summed over axis 1, the reference over axis 0" in detect(g.sum(1), g.sum(0), T64, upstream=g)
    g2 = RNG.standard_normal((4, 3))
    assert "summed over axis 1" in detect(g2.sum(1), g2.sum(0), T64, upstream=g2)   # shapes differ


def test_all_zero_and_alternatives():
    assert "all zero" in detect(np.zeros(5), SQ[0], T64)
    alt = SQ * 0.25
    assert detect(alt, SQ, T64, alternatives={"the last sample's": alt}) == "scratch = the last sample's"


# --- in the user API's messages (learner-style layers written here) ----------------------------

class SumNotMeanLoss:
    """Softmax cross-entropy whose value is the mean but whose gradient is summed (forgot the 1/N)."""

    def forward(self, z, y):
        e = np.exp(z - z.max(1, keepdims=True))
        self.p, self.y = e / e.sum(1, keepdims=True), y
        return -np.log(self.p[np.arange(len(y)), y]).mean()

    def backward(self):
        d = self.p.copy()
        d[np.arange(len(self.y)), self.y] -= 1
        return d   # the slip: / len(y) missing


class HalfWeightGrad:
    """A Linear layer whose weight gradient carries a stray 0.5 (the derivative of 0.5 x^2 without its 2)."""

    def __init__(self):
        self.params = {"weight": np.zeros((3, 5)), "bias": np.zeros(3)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, g):
        self.grads["weight"] = 0.5 * g.T @ self.x
        self.grads["bias"] = g.sum(0)
        return g @ self.params["weight"]


class LastSampleBias(HalfWeightGrad):
    """The bias gradient in a loop over the batch that assigns where it should add."""

    def backward(self, g):
        self.grads["weight"] = g.T @ self.x
        for i in range(len(g)):
            self.grads["bias"] = g[i]
        return g @ self.params["weight"]


class WrongAxisBias(HalfWeightGrad):
    def backward(self, g):
        self.grads["weight"] = g.T @ self.x
        self.grads["bias"] = g.sum(1)   # over the features, not the batch: passes shapes only when N == out
        return g @ self.params["weight"]


def test_a_sum_vs_mean_slip_is_named_as_the_factor_n():
    with pytest.raises(ParityError, match=r"PATTERN: scratch = N = 8 x reference exactly: a sum where the reference "
                                          r"averages over N"):
        nnparity.check_loss(SumNotMeanLoss(), torch.nn.CrossEntropyLoss(), input_shape=(8, 5))


def test_a_weight_gradient_half_the_reference_is_named():
    with pytest.raises(ParityError, match=r"grad/weight .*PATTERN: scratch = 1/2 x reference exactly"):
        nnparity.check_layer(HalfWeightGrad(), torch.nn.Linear(5, 3), input_shape=(8, 5))


def test_a_loop_that_assigns_keeps_only_the_last_sample():
    with pytest.raises(ParityError, match=r"grad/bias .*PATTERN: scratch = the reference of the last sample alone"):
        nnparity.check_layer(LastSampleBias(), torch.nn.Linear(5, 3), input_shape=(8, 5))


def test_a_bias_summed_over_the_wrong_axis_at_batch_equal_to_features():
    with pytest.raises(ParityError, match=r"grad/bias .*PATTERN: scratch = the upstream gradient summed over axis 1, "
                                          r"the reference over axis 0"):
        nnparity.check_layer(WrongAxisBias(), torch.nn.Linear(5, 3), input_shape=(3, 5))


def test_a_biased_running_variance_is_named_as_the_factor_with_its_offset():
    from examples.cs231n_layers import batchnorm_backward, batchnorm_forward

    report = nnparity.check_layer((batchnorm_forward, batchnorm_backward), torch.nn.BatchNorm1d(4), input_shape=(8, 4),
                                  raise_on_failure=False)
    bad = {c.name: c for c in report.results["float64"] if not c.passed}
    assert set(bad) == {"buffer/running_var"}
    assert "(N-1)/N = 7/8 x reference + 0.1125 exactly" in bad["buffer/running_var"].pattern
    assert "biased variance where the reference uses the unbiased one" in report.message()


def test_a_comparison_that_passes_has_no_pattern():
    report = nnparity.check_layer(LastSampleBias(), torch.nn.Linear(5, 3), input_shape=(8, 5), raise_on_failure=False)
    assert all(c.pattern is None for res in report.results.values() for c in res if c.passed)


def test_nnparity_check_names_the_pattern_of_the_first_divergence():
    from nnparity.selftest.bugs import get_bug
    from nnparity.diagnosis.check import run_check

    with get_bug("linear-dW-not-transposed").applied():
        out = run_check("mlp1000", steps=1).render()
    assert "PATTERN: scratch = the reference transposed, then reshaped to (10, 1000)" in out


def test_a_factor_on_a_running_average_whatever_the_value_kept():
    before = RNG.uniform(0.5, 2.0, 5)
    v = RNG.uniform(0.5, 2.0, 5)
    torch_rv, mine = 0.9 * before + 0.1 * v, 0.9 * before + 0.1 * v * 35 / 36
    assert detect(mine, torch_rv, T64, counts={"N*H*W": 36}) is None   # without the value before: no pattern
    found = detect(mine, torch_rv, T64, counts={"N*H*W": 36}, before=before)
    assert found.startswith("scratch = (N*H*W-1)/(N*H*W) = 35/36 x reference + 0.025 x the value before exactly")


def test_check_steps_names_the_pattern_of_the_first_divergence():
    from parity_tests.test_byod import TwoLayerNet, batches, sgd, softmax_ce, torch_mirror

    class AveragedBias(TwoLayerNet):
        def backward(self, dout):
            super().backward(dout)
            self.grads["fc1.bias"] = self.grads["fc1.bias"] / len(dout)   # the slip: averaged, not summed

    with pytest.raises(ParityError, match=r"step 1: grad/fc1.bias .*PATTERN: scratch = 1/N = 1/8 x reference"):
        nnparity.check_steps(AveragedBias(), softmax_ce, sgd(0.5), torch_mirror(), torch.nn.CrossEntropyLoss(),
                             lambda p: torch.optim.SGD(p, lr=0.5), batches())
