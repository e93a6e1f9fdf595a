"""``check_steps`` on a user's network with dropout: the mirror's ``torch.nn.Dropout`` applies the
user's mask of each step (``nnparity.training.masks.handed_dropouts``); every way the mask cannot
be handed over is one line naming the layer and the fix, and the mirror gets its own module back."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import nnparity
from examples.dropout import Dropout
from examples.steps_dropout import P, batches, build, sgd, softmax_cross_entropy, torch_mirror
from examples.steps_mlp import Dense, Network, ReLU
from nnparity.training.adapters import ProtocolError


def steps(net, mirror=None, **kwargs):
    return nnparity.check_steps(net, softmax_cross_entropy, sgd(0.1), mirror if mirror is not None else torch_mirror(),
                                nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches(n=3), **kwargs)


def network(drop):
    rng = np.random.default_rng(0)
    return Network([Dense(12, 16, rng), ReLU(), drop, Dense(16, 5, rng)])


class GlobalRandomDropout:
    """A learner's dropout drawing from NumPy's global generator (``np.random.rand``), mask kept as ``self.mask``."""

    def __init__(self, p):
        self.p, self.training = p, True

    def forward(self, x):
        self.mask = (np.random.rand(*x.shape) >= self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class HiddenMaskDropout(Dropout):
    """Keeps its mask under a name the protocol does not read."""

    def forward(self, x):
        self.m = self.rng.random(x.shape) >= self.p
        return x * self.m / (1 - self.p)

    def backward(self, dout):
        return dout * self.m / (1 - self.p)


def test_a_mask_from_numpys_global_generator_is_handed_over_and_drawn_again_alone():
    np.random.seed(3)
    assert steps(network(GlobalRandomDropout(P))).ok

    class NoScale(GlobalRandomDropout):
        def backward(self, dout):
            return dout * (self.mask != 0)   # BUG: the kept positions without 1/(1-p)

    d = steps(network(NoScale(P)), raise_on_failure=False).diagnosis
    # the forward re-run alone draws the step's mask again from the kept global state: right, not blamed
    drop_forward = next(s for s in d.stages if s.label == "drop forward")
    assert drop_forward.comparisons and not drop_forward.off and drop_forward.note is None
    assert (d.kind, d.culprit.label) == ("own", "drop backward")


def test_float32_parameters_run_in_float32_on_the_same_masks():
    net = build()
    for lay in (net.layers[0], net.layers[3]):
        lay.W, lay.b = lay.W.astype(np.float32), lay.b.astype(np.float32)
    trace = steps(net)
    assert trace.ok and trace.dtype == "float32"


def test_a_mask_the_protocol_cannot_find_is_one_line_naming_the_layer_and_the_attribute():
    mirror = torch_mirror()
    with pytest.raises(ProtocolError) as e:
        steps(network(HiddenMaskDropout(P)), mirror)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("your dropout layer drop: no dropout mask of the input's shape (8, 16) after its forward")
    assert "store it as self.mask = ... (nonzero = kept)" in msg and "mode='eval'" in msg
    assert type(mirror.drop) is nn.Dropout   # put back after an error too


def test_a_network_without_layer_objects_is_told_how_to_expose_them():
    class Functional:   # parameters as attributes, the dropout inline: nothing to match with fc1, act1, ...
        def __init__(self):
            rng = np.random.default_rng(0)
            self.W1, self.b1 = rng.standard_normal((12, 16)) * 0.3, np.zeros(16)
            self.W2, self.b2 = rng.standard_normal((16, 5)) * 0.3, np.zeros(5)

        def forward(self, x):
            return np.maximum(x @ self.W1 + self.b1, 0) @ self.W2 + self.b2

        def backward(self, dy):
            return dy

    with pytest.raises(ProtocolError) as e:
        steps(Functional(), params={"W1": "fc1.weight.T", "b1": "fc1.bias", "W2": "fc2.weight.T", "b2": "fc2.bias"})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("torch_net's drop is a torch.nn.Dropout(p=0.3): it cannot receive your dropout's mask")
    assert "keep your layers as objects in a self.layers list" in msg and "['fc1', 'act1', 'drop', 'fc2']" in msg


def test_a_dropout_nested_in_a_child_or_of_another_kind_is_one_line():
    nested = nn.Sequential(OrderedDict(fc1=nn.Linear(12, 16), act1=nn.Sequential(nn.ReLU(), nn.Dropout(P)),
                                       drop=nn.Identity(), fc2=nn.Linear(16, 5)))
    with pytest.raises(ProtocolError, match=r"torch_net's act1.1 is a torch.nn.Dropout\(p=0.3\) inside its top-level "
                                            r"child act1: only a top-level torch.nn.Dropout child receives"):
        steps(build(), nested)
    other = torch_mirror()
    other.drop = nn.AlphaDropout(P)
    with pytest.raises(ProtocolError, match=r"torch_net's drop is a torch.nn.AlphaDropout\(p=0.3\): it draws its own "
                                            r"masks, and only a torch.nn.Dropout applies your layer's"):
        steps(build(), other)


def test_eval_mode_and_p_0_hand_nothing_over():
    assert steps(build(), mode="eval").ok
    zero = torch_mirror()
    zero.drop = nn.Dropout(0.0)
    trace = steps(network(Dropout(0.0)), zero)
    assert trace.ok and not any("mask protocol" in w for w in trace.warnings)


_OUTSIDE = np.random.default_rng(5)   # a generator outside the layer: a copy of the layer cannot replay it


class OutsideGeneratorDropout(GlobalRandomDropout):
    def forward(self, x):
        self.mask = (_OUTSIDE.random(x.shape) >= self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, dout):
        return dout * (self.mask != 0)   # BUG: without 1/(1-p)


def test_a_mask_that_cannot_be_drawn_again_is_said_not_blamed():
    d = steps(network(OutsideGeneratorDropout(P)), raise_on_failure=False).diagnosis
    fwd, bwd = (next(s for s in d.stages if s.label == f"drop {ph}") for ph in ("forward", "backward"))
    assert not fwd.comparisons and "its random mask could not be drawn again" in fwd.note
    assert not bwd.comparisons and bwd.note == "not re-run: its mask could not be drawn again"
    assert "drop backward (OutsideGeneratorDropout.backward), which computes dout/act1, was not compared alone" \
        in d.verdict and "is right when fed" not in d.verdict
