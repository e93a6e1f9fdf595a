"""nn-parity: reference-parity verification of from-scratch NumPy networks against PyTorch.

The public API for checking your own derivations (``nnparity.api.byod``)::

    import nnparity
    nnparity.check_layer(mine, torch_equivalent, input_shape=(8, 16))
    nnparity.check_loss(mine, torch_loss, input_shape=(8, 10))
    nnparity.check_steps(net, loss, update, torch_net, torch_loss, torch_optimizer, batches)
    nnparity.check_layer(mine, None, input_shape=(8, 16))  # no torch equivalent: finite differences
    nnparity.sweep_layer(lambda cfg: MyConv(**cfg), grid="conv2d")   # every configuration of a grid
    nnparity.check_battery(lambda cfg: MyConv(**cfg), kind="conv2d")  # the suite's whole battery

``nnparity.Network`` is a registry entry, for a network of your own
(``NETWORK = nnparity.Network(...)`` in its file: README "Your own network").

``nnparity.diagnosis.gradcheck`` is the finite-difference module (``gradcheck_layer``,
``gradcheck_model``, ``gradcheck_network``).

Imported lazily, so ``import nnparity.core.data`` does not pull in torch.
"""

# every public name, and the module it lives in
_HOME = {
    **dict.fromkeys(("check_layer", "check_loss", "check_steps", "pair", "adapt"), "nnparity.api.byod"),
    **dict.fromkeys(("gradcheck_layer", "gradcheck_model", "gradcheck_network"), "nnparity.diagnosis.gradcheck"),
    **dict.fromkeys(("sweep_layer", "GRIDS"), "nnparity.api.sweep"),
    "check_battery": "nnparity.api.battery",
    "check_mask_statistics": "nnparity.training.masks",
    "Network": "nnparity.training.networks",
}
_API = tuple(_HOME)

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from importlib import import_module

        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'nnparity' has no attribute {name!r}")


def __dir__():
    """The lazy API too, so ``dir(nnparity)`` and tab completion show ``check_layer`` & co."""
    return sorted(set(globals()) | set(_API))
