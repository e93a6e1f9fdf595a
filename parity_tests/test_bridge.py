"""The scratch <-> torch bridge copies key by key and refuses any mismatch by name."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

import scratch
from reference import bridge
from reference import mlp1000 as ref_mlp1000
from scratch.nets import mlp1000


def test_round_trip_is_exact(dtype):
    s = mlp1000.build(rng=np.random.default_rng(4), dtype=dtype)
    t = bridge.mirror(s, ref_mlp1000.build())
    assert next(t.parameters()).dtype == bridge.torch_dtype(dtype)
    for k, v in s.state_dict().items():
        np.testing.assert_array_equal(v, t.state_dict()[k].numpy())
    with torch.no_grad():
        t.V.bias.add_(1.0)
    bridge.copy_to_scratch(t, s)
    np.testing.assert_array_equal(s.V.bias.data, t.V.bias.detach().numpy())


def test_name_mismatch_lists_both_sides():
    s = scratch.Sequential(OrderedDict(fc=scratch.Linear(3, 2)))
    t = torch.nn.Sequential(OrderedDict(lin=torch.nn.Linear(3, 2))).double()
    with pytest.raises(bridge.BridgeError, match=r"scratch: \['fc.weight', 'fc.bias'\]\n  torch:   "
                                                 r"\['lin.weight', 'lin.bias'\]"):
        bridge.copy_to_torch(s, t)


def test_shape_mismatch_names_the_key():
    s = scratch.Sequential(OrderedDict(fc=scratch.Linear(3, 2)))
    t = torch.nn.Sequential(OrderedDict(fc=torch.nn.Linear(2, 3))).double()
    with pytest.raises(bridge.BridgeError, match=r"fc.weight: scratch has shape \(2, 3\) .* torch has shape \(3, 2\)"):
        bridge.copy_to_torch(s, t)


def test_dtype_mismatch_names_the_key():
    s = scratch.Sequential(OrderedDict(fc=scratch.Linear(3, 2, dtype=np.float32)))
    t = torch.nn.Sequential(OrderedDict(fc=torch.nn.Linear(3, 2))).double()
    with pytest.raises(bridge.BridgeError, match="fc.weight: scratch has shape .* dtype float32"):
        bridge.copy_to_torch(s, t)


def test_scratch_load_state_dict_refuses_mismatch_without_writing():
    s = scratch.Sequential(OrderedDict(fc=scratch.Linear(3, 2)))
    before = s.state_dict()
    bad = {"fc.weight": np.ones((2, 3)), "fc.bias": np.ones(3)}
    with pytest.raises(ValueError, match="fc.bias: expected shape"):
        s.load_state_dict(bad)
    np.testing.assert_array_equal(s.fc.weight.data, before["fc.weight"])
    with pytest.raises(KeyError, match="missing"):
        s.load_state_dict({"fc.weight": np.ones((2, 3))})
