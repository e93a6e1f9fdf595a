"""Function pairs with a cache and several inputs (CS231n's ``rnn_step_forward(x, prev_h, Wx, Wh, b)
-> (next_h, cache)``, ``rnn_step_backward(dnext_h, cache) -> (dx, dprev_h, dWx, dWh, db)``), checked
with ``input_shape=[...]`` (one shape per input): as a plain tuple with a torch function
equivalent, through ``nnparity.pair`` with parameter values, and by finite differences."""

import numpy as np
import pytest
import torch

import nnparity


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    # h = tanh(a), a = x Wx + h_prev Wh + b  =>  da = dh (1 - h^2); dx = da Wx^T, dh_prev = da Wh^T
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h ** 2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_step_backward_wh_not_transposed(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h ** 2)
    return da @ Wx.T, da @ Wh, x.T @ da, prev_h.T @ da, da.sum(axis=0)   # BUG: dprev_h = da Wh^T


def torch_rnn_step(x, prev_h, Wx, Wh, b):
    return torch.tanh(x @ Wx + prev_h @ Wh + b)


def values(seed=0, d=3, h=4):
    rng = np.random.default_rng(seed)
    return {"Wx": rng.standard_normal((d, h)), "Wh": rng.standard_normal((h, h)), "b": rng.standard_normal(h)}


SHAPES = [(5, 3), (5, 4)]   # x (N, D), prev_h (N, H)


def test_a_two_input_pair_passes_against_a_torch_function():
    report = nnparity.check_layer(nnparity.pair(rnn_step_forward, rnn_step_backward, params=values()),
                                  torch_rnn_step, input_shape=SHAPES)
    assert report.ok
    assert [c.name for c in report.results["float64"]] == ["out", "din", "grad/Wx", "grad/Wh", "grad/b"]
    assert "inputs packed as columns: x0 (5, 3) [0:3), x1 (5, 4) [3:7)" in report.context


def test_a_two_input_pair_passes_by_finite_differences():
    assert nnparity.check_layer(nnparity.pair(rnn_step_forward, rnn_step_backward, params=values()), None,
                                input_shape=SHAPES).ok


def test_the_wrong_hidden_gradient_is_named_in_its_columns():
    with pytest.raises(AssertionError) as e:
        nnparity.check_layer(nnparity.pair(rnn_step_forward, rnn_step_backward_wh_not_transposed, params=values()),
                             torch_rnn_step, input_shape=SHAPES)
    msg = str(e.value)
    assert msg.startswith("rnn_step_forward float64 din (input gradient)"), msg
    col = int(msg.split(" at (")[1].split(")")[0].split(", ")[1])
    assert 3 <= col < 7, msg   # prev_h's columns: dx is right
    assert "float64: 1 of 5 failing (din)" in msg


def test_a_plain_tuple_takes_its_parameter_shapes_from_a_torch_module():
    class Step(torch.nn.Module):   # the parameters under CS231n's names, so the shapes come from here
        def __init__(self):
            super().__init__()
            self.Wx, self.Wh, self.b = (torch.nn.Parameter(torch.zeros(s, dtype=torch.float64))
                                        for s in ((3, 4), (4, 4), (4,)))

        def forward(self, x, prev_h):
            return torch_rnn_step(x, prev_h, self.Wx, self.Wh, self.b)

    assert nnparity.check_layer((rnn_step_forward, rnn_step_backward), Step(), input_shape=SHAPES).ok


def test_a_backward_returning_too_few_gradients_is_one_line():
    def short_backward(dnext_h, cache):
        return rnn_step_backward(dnext_h, cache)[1:]   # dx forgotten

    with pytest.raises(nnparity.training.adapters.CallError,
                       match=r"must return \(dx, dprev_h, dWx, dWh, db\), got 4 values"):
        nnparity.check_layer(nnparity.pair(rnn_step_forward, short_backward, params=values()), torch_rnn_step,
                             input_shape=SHAPES)
