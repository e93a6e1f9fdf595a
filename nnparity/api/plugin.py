"""pytest plugin: the ``nnparity`` fixture, for checking your own layers in your own tests.

    def test_my_softmax(nnparity):
        nnparity.layer(MySoftmax(), torch.nn.Softmax(dim=1), input_shape=(4, 10))

Registered through the ``pytest11`` entry point ``nnparity.api.plugin`` (active once
nn-parity is installed); without installing, enable it with ``-p nnparity.api.plugin``
or ``pytest_plugins = ["nnparity.api.plugin"]`` in your top-level conftest.py. The
entry point carries the module's own name, so pytest registers it once whichever
way it arrives. Nothing heavy is imported until a test asks for the fixture.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("nnparity", "nn-parity derivation checks")
    group.addoption("--nnparity-seed", type=int, default=None, metavar="S",
                    help="seed for the inputs, upstream gradients and parameter values of the nnparity "
                         "fixture's checks (default 0)")


class NNParity:
    """What the ``nnparity`` fixture returns: the checks of ``nnparity.api.byod`` with the session's seed.

    ``layer`` = ``check_layer``, ``loss`` = ``check_loss``, ``steps`` = ``check_steps``,
    ``gradcheck`` = ``check_layer(mine, None, ...)`` in float64 only (finite differences),
    ``sweep`` = ``sweep_layer`` (every configuration of a grid), ``masks`` =
    ``check_mask_statistics`` (a dropout layer's masks), ``battery`` = ``check_battery`` (the
    suite's whole battery, ``nnparity.api.battery``).
    Every keyword of those functions passes through: the controls (``atol``, ``rtol``,
    ``skip``, ``allowed_zero``), ``conventions=``, ``mode=`` and the ``params={...}`` name/layout map included.
    Each raises ``AssertionError`` with the suite's message on a mismatch (a
    ``nnparity.training.adapters.UsageError`` naming the problem on a misuse), and returns its
    report otherwise.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _call(self, fn_name, *args, **kwargs):
        __tracebackhide__ = True
        from nnparity.api import battery, byod, sweep
        from nnparity.training import masks
        from nnparity.training.adapters import UsageError

        if fn_name != "check_steps":
            kwargs.setdefault("seed", self.seed)
        home = {"sweep_layer": sweep, "check_mask_statistics": masks, "check_battery": battery}.get(fn_name, byod)
        try:
            return getattr(home, fn_name)(*args, **kwargs)
        except (AssertionError, UsageError) as e:
            # a failure or a misuse: the message is the whole story; skip the harness's frames
            raise type(e)(str(e)) from None

    def layer(self, mine, torch_equivalent, input_shape=None, **kwargs):
        """``nnparity.check_layer``: your layer against its torch equivalent (None: finite differences)."""
        __tracebackhide__ = True
        return self._call("check_layer", mine, torch_equivalent, input_shape, **kwargs)

    def loss(self, mine, torch_loss, input_shape=None, target=None, **kwargs):
        """``nnparity.check_loss``: your loss against a torch loss (None: finite differences)."""
        __tracebackhide__ = True
        return self._call("check_loss", mine, torch_loss, input_shape, target, **kwargs)

    def steps(self, net, loss, update, torch_net, torch_loss, torch_optimizer, batches, **kwargs):
        """``nnparity.check_steps``: training steps of your network against a torch mirror."""
        __tracebackhide__ = True
        return self._call("check_steps", net, loss, update, torch_net, torch_loss, torch_optimizer, batches, **kwargs)

    def sweep(self, mine, torch_equivalent=None, grid="conv2d", **kwargs):
        """``nnparity.sweep_layer``: your layer in every configuration of a grid (``nnparity.api.sweep.GRIDS``)."""
        __tracebackhide__ = True
        return self._call("sweep_layer", mine, torch_equivalent, grid, **kwargs)

    def masks(self, mine, p, input_shape=(64, 32), **kwargs):
        """``nnparity.check_mask_statistics``: how your dropout draws its masks (keep rate, independence, scale)."""
        __tracebackhide__ = True
        return self._call("check_mask_statistics", mine, p, input_shape, **kwargs)

    def battery(self, mine, torch_equivalent=None, input_shape=None, **kwargs):
        """``nnparity.check_battery``: the suite's whole battery on your layer (or, with ``kind=``, a factory over
        that kind's sweep)."""
        __tracebackhide__ = True
        return self._call("check_battery", mine, torch_equivalent, input_shape, **kwargs)

    def gradcheck(self, mine, input_shape=None, **kwargs):
        """Finite differences only, float64: ``check_layer(mine, None, input_shape, dtypes=("float64",))``."""
        __tracebackhide__ = True
        kwargs.setdefault("dtypes", ("float64",))
        return self._call("check_layer", mine, None, input_shape, **kwargs)


@pytest.fixture
def nnparity(request) -> NNParity:
    """Check your own derivations: ``nnparity.layer(mine, torch_equivalent, input_shape=...)``,
    ``nnparity.loss(...)``, ``nnparity.steps(...)``, ``nnparity.gradcheck(...)``, ``nnparity.battery(...)``."""
    seed = request.config.getoption("nnparity_seed", default=None)
    return NNParity(0 if seed is None else seed)
