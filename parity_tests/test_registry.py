"""The contract every registry entry keeps, checked for each entry of ``networks.NETWORKS``:
adding a network adds these cases without editing this file. (Its step parity, gradcheck and
metamorphic cases come the same way: ``test_gradcheck.py``, ``test_metamorphic.py``.)"""

import numpy as np
import pytest

from nnparity import networks
from nnparity.networks import NETWORKS


@pytest.mark.parametrize("name", list(NETWORKS))
def test_entry_names_its_recipe_summary_and_choices(name):
    net = networks.get(name)
    assert net is NETWORKS[name] and net.recipe.net == name
    assert net.summary and net.recipe.source and net.recipe.choices  # every silent choice written down
    assert net.recipe.dtype in ("float32", "float64") and net.recipe.lr > 0 and net.recipe.batch_size > 0
    assert networks.spec_of(name) == name  # a documented network is found by name in any process
    if net.variants:
        assert net.recipe.variant in (None, net.variants[0])


@pytest.mark.parametrize("name", list(NETWORKS))
def test_both_sides_start_from_the_same_state(name, dtype):
    """The scratch model and its torch mirror: the same state names, in the same order, the
    same shapes, and after the bridge the same values, floating state in the run's dtype."""
    net = networks.get(name)
    scratch, ref = networks.make_sides(net, net.recipe, dtype, seed=0)
    s, t = scratch.model.state_dict(), ref.model.state_dict()
    assert list(s) == list(t)
    for k, v in s.items():
        assert v.shape == tuple(t[k].shape), k
        assert v.dtype == np.dtype(dtype) if np.issubdtype(v.dtype, np.floating) else v.dtype == np.int64, k
        np.testing.assert_array_equal(v, t[k].numpy(), err_msg=k)
    assert set(net.allowed_zero) <= {k for k, _ in scratch.model.named_parameters()}
