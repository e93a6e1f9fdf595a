"""``tanh_mlp`` with a derivation slip in its tanh backward, to see how nn-parity reports it::

    nnparity check examples/tanh_mlp_wrong.py

The slip: ``dx = dy * (1 - y)``, the square forgotten (the derivative of tanh is
``1 - y^2``). The forward pass is right, so the loss agrees at step 1 and the first
tensor to differ is the gradient arriving at ``fc2``'s output (``tanh2``'s input
gradient); re-run alone on the reference side's inputs, ``tanh2``'s backward is the
culprit. Everything else is ``tanh_mlp.py``'s, imported from beside this file.
"""

import dataclasses

import tanh_mlp
from tanh_mlp import Tanh, loss, torch_build, torch_loss  # noqa: F401 (the contract: the same as tanh_mlp's)

RECIPE = tanh_mlp.RECIPE.replace(net="tanh_mlp_wrong", source="examples/tanh_mlp_wrong.py (tanh_mlp with a slip)")
NETWORK = dataclasses.replace(tanh_mlp.NETWORK, name="tanh_mlp_wrong",
                              summary="tanh_mlp with the square forgotten in tanh's backward (a slip, on purpose)")


class TanhForgotTheSquare(Tanh):
    """``Tanh`` with the slip: the forward is right, the backward forgets the square."""

    def backward(self, dy):
        return dy * (1 - self.y)  # SLIP: should be 1 - y ** 2


def build(recipe=RECIPE, rng=None, dtype=None):
    """``tanh_mlp``'s network with ``TanhForgotTheSquare`` in both activations."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    return tanh_mlp.build(recipe, rng, tanh=TanhForgotTheSquare, **kwargs)
